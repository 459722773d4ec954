//! mofa-agent's handler under `DoraNode::init_testing`: the LLM's answers are scripted as
//! timed inputs on `llm` (request ids are derived from task ids, so they can be addressed).

use std::time::Duration;

use mofa_agent::{Agent, AgentConfig, request_id, tool_call_id};
use mofa_kernel::llm::{ChatMessage, ChatOptions, ChatRequest, ChatResponse, ToolCall, Usage};
use mofa_kernel::tool::{self as wire, ToolSpec};
use mofa_kernel::{Envelope, Kind, Priority, Role};
use mofa_tests::harness::{self, closed, envelope, envelopes, on, raw};

fn agent(window: usize, timeout_ms: u64) -> Agent {
    agent_with(window, timeout_ms, usize::MAX)
}

fn agent_with(window: usize, timeout_ms: u64, max_concurrent: usize) -> Agent {
    Agent::new(AgentConfig {
        memory_window: window,
        max_concurrent,
        llm_timeout: Duration::from_millis(timeout_ms),
        ..config()
    })
}

/// The writer: window 10, no concurrency limit, 5 s LLM timeout, 3 tool rounds.
fn config() -> AgentConfig {
    AgentConfig {
        name: Some("writer".into()),
        system_prompt: "You are the writer.".into(),
        memory_window: 10,
        max_sessions: 100,
        max_concurrent: usize::MAX,
        llm_timeout: Duration::from_millis(5000),
        options: ChatOptions::default(),
        max_steps: 3,
        await_catalog: false,
        text_react: false,
    }
}

fn in_session(text: &str, session: &str) -> Envelope {
    Envelope::task("source", text).with_session(session)
}

/// What the LLM bridge would answer to the agent's request for `task`.
fn llm_answer(task: &Envelope, text: &str) -> Envelope {
    let mut req = task.reply(Kind::Message, "writer", Role::User, "");
    req.id = request_id(task, 0);
    ChatResponse {
        message: ChatMessage::new(Role::Assistant, text),
        model: "m".into(),
        finish_reason: Some("stop".into()),
        usage: Some(Usage {
            prompt_tokens: 5,
            completion_tokens: 2,
            total_tokens: 7,
        }),
    }
    .to_envelope(&req, "llm")
}

fn request_texts(req: &Envelope) -> Vec<String> {
    ChatRequest::from_envelope(req)
        .unwrap()
        .messages
        .iter()
        .map(|m| format!("{}:{}", m.role, m.content))
        .collect()
}

#[test]
fn a_task_becomes_a_request_and_the_answer_a_result() {
    let task = in_session("facts about otters", "s1");
    let sent = harness::run(
        agent(10, 5000),
        vec![
            envelope(0.0, "task", &task),
            envelopes(0.05, "llm", &[llm_answer(&task, "Otters hold hands.")]),
        ],
    );
    let reqs = on(&sent, "llm");
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        request_texts(&reqs[0]),
        ["system:You are the writer.", "user:facts about otters"]
    );
    assert_eq!(reqs[0].sender, "writer");
    let results = on(&sent, "result");
    assert_eq!(results.len(), 1);
    let r = &results[0];
    assert_eq!(
        (r.kind, r.sender.as_str(), r.content.as_str()),
        (Kind::Result, "writer", "Otters hold hands.")
    );
    assert_eq!(r.reply_to.as_deref(), Some(task.id.as_str()));
    assert_eq!(r.session, "s1");
    assert_eq!(r.payload_json().unwrap()["usage"]["total_tokens"], 7);
}

#[test]
fn memory_is_a_bounded_window_per_session() {
    let (t1, t2, t3) = (
        in_session("u1", "s"),
        in_session("u2", "s"),
        in_session("u3", "s"),
    );
    let other = in_session("elsewhere", "other");
    let sent = harness::run(
        agent(3, 5000),
        vec![
            envelope(0.0, "task", &t1),
            envelopes(0.02, "llm", &[llm_answer(&t1, "a1")]),
            envelope(0.04, "task", &t2),
            envelopes(0.06, "llm", &[llm_answer(&t2, "a2")]),
            envelopes(0.08, "task", &[t3.clone(), other.clone()]),
        ],
    );
    let reqs = on(&sent, "llm");
    assert_eq!(
        request_texts(&reqs[1]),
        [
            "system:You are the writer.",
            "user:u1",
            "assistant:a1",
            "user:u2"
        ]
    );
    // Window 3: u1 and a1 have fallen out by the third task.
    assert_eq!(
        request_texts(&reqs[2]),
        [
            "system:You are the writer.",
            "user:u2",
            "assistant:a2",
            "user:u3"
        ]
    );
    // Another session starts with no memory of this one.
    assert_eq!(
        request_texts(&reqs[3]),
        ["system:You are the writer.", "user:elsewhere"]
    );
}

#[test]
fn a_slow_llm_call_in_one_session_does_not_hold_up_another() {
    let (slow, quick) = (
        in_session("slow topic", "a"),
        in_session("quick topic", "b"),
    );
    let sent = harness::run(
        agent(10, 5000),
        vec![
            envelope(0.0, "task", &slow),
            envelope(0.02, "task", &quick),
            envelopes(0.05, "llm", &[llm_answer(&quick, "quick answer")]),
            envelopes(0.3, "llm", &[llm_answer(&slow, "slow answer")]),
        ],
    );
    let results: Vec<String> = on(&sent, "result").into_iter().map(|r| r.content).collect();
    assert_eq!(results, ["quick answer", "slow answer"]);
    assert_eq!(on(&sent, "llm").len(), 2, "both requests went out at once");
}

#[test]
fn tasks_in_one_session_wait_their_turn_so_memory_stays_in_order() {
    let (t1, t2) = (in_session("first", "s"), in_session("second", "s"));
    let sent = harness::run(
        agent(10, 5000),
        vec![
            envelopes(0.0, "task", &[t1.clone(), t2.clone()]),
            envelopes(0.1, "llm", &[llm_answer(&t1, "answer one")]),
            envelopes(0.2, "llm", &[llm_answer(&t2, "answer two")]),
        ],
    );
    let reqs = on(&sent, "llm");
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        request_texts(&reqs[1]),
        [
            "system:You are the writer.",
            "user:first",
            "assistant:answer one",
            "user:second"
        ]
    );
    let llm_pos = sent
        .iter()
        .enumerate()
        .filter(|(_, s)| s.output == "llm")
        .map(|(i, _)| i)
        .collect::<Vec<_>>();
    let first_result = sent.iter().position(|s| s.output == "result").unwrap();
    assert!(
        llm_pos[1] > first_result,
        "the second request waits for the first answer"
    );
}

#[test]
fn malformed_arrays_and_foreign_schemas_are_errors_and_the_next_task_goes_through() {
    let good = in_session("real task", "s");
    let foreign = serde_json::json!([{"foo": "bar", "n": 1}]);
    let sent = harness::run(
        agent(10, 5000),
        vec![
            raw(
                0.0,
                "task",
                serde_json::json!([1.5, 2.5]),
                Some(serde_json::json!("Float64")),
            ),
            raw(0.01, "task", foreign, None),
            envelope(0.02, "task", &good),
            envelopes(0.05, "llm", &[llm_answer(&good, "done")]),
        ],
    );
    let errors = on(&sent, "error");
    assert_eq!(errors.len(), 2);
    assert!(
        errors[0]
            .content
            .contains("malformed message on input `task`")
    );
    assert!(
        errors[0].content.contains("got Float64"),
        "{}",
        errors[0].content
    );
    assert!(
        errors[1].content.contains("missing column `id`"),
        "{}",
        errors[1].content
    );
    let details = errors[1].payload_json().unwrap();
    assert!(
        details["preview"].as_str().unwrap().contains("bar"),
        "what was sent is kept: {details}"
    );
    assert_eq!(on(&sent, "result")[0].content, "done");
}

#[test]
fn an_llm_error_fails_the_task_and_the_session_goes_on() {
    let (t1, t2) = (in_session("one", "s"), in_session("two", "s"));
    let mut req = t1.reply(Kind::Message, "writer", Role::User, "");
    req.id = request_id(&t1, 0);
    let llm_error = req.error_reply(
        "llm",
        "openai call failed: HTTP 500",
        serde_json::json!({"retryable": true}),
    );
    let sent = harness::run(
        agent(10, 5000),
        vec![
            envelopes(0.0, "task", &[t1.clone(), t2.clone()]),
            envelopes(0.05, "llm", &[llm_error]),
            envelopes(0.1, "llm", &[llm_answer(&t2, "two done")]),
        ],
    );
    let errors = on(&sent, "error");
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].reply_to.as_deref(),
        Some(t1.id.as_str()),
        "the error answers the task"
    );
    assert!(
        errors[0]
            .content
            .contains("LLM failed: openai call failed: HTTP 500")
    );
    assert_eq!(on(&sent, "result")[0].content, "two done");
}

#[test]
fn answers_to_unknown_requests_and_silence_are_errors() {
    let stranger = llm_answer(&in_session("never asked", "x"), "hm");
    let task = in_session("will wait", "s");
    let sent = harness::run(
        agent(10, 200),
        vec![
            envelopes(0.0, "llm", &[stranger]),
            envelope(0.01, "task", &task),
            // Keeps the node up past the timeout.
            closed(0.5, "catalog"),
        ],
    );
    let errors = on(&sent, "error");
    assert_eq!(errors.len(), 2);
    assert!(errors[0].content.contains("unknown request"));
    assert_eq!(errors[1].reply_to.as_deref(), Some(task.id.as_str()));
    assert!(
        errors[1]
            .content
            .contains("no answer from the LLM within 200 ms")
    );
}

#[test]
fn the_agent_ends_once_its_task_input_is_closed_and_its_work_is_done() {
    let t = in_session("last one", "s");
    let late = in_session("too late", "s");
    let sent = harness::run(
        agent(10, 5000),
        vec![
            envelope(0.0, "task", &t),
            closed(0.01, "task"),
            envelopes(0.05, "llm", &[llm_answer(&t, "finished")]),
            // Never read: the node has ended after the answer above.
            envelopes(0.3, "llm", &[llm_answer(&late, "x")]),
        ],
    );
    assert_eq!(on(&sent, "result")[0].content, "finished");
    assert!(
        on(&sent, "error").is_empty(),
        "the late message was not handled: {sent:?}"
    );
}

fn catalog() -> Envelope {
    let spec = |name: &str| ToolSpec {
        name: name.into(),
        description: format!("the {name} tool"),
        parameters: serde_json::json!({"type": "object"}),
    };
    wire::catalog_envelope("tools", &[spec("calculator"), spec("file_write")])
}

/// The LLM asking, at `step` of `task`, for these (name, arguments) calls.
fn llm_calls(task: &Envelope, step: u32, calls: &[(&str, &str)]) -> Envelope {
    let mut req = task.reply(Kind::Message, "writer", Role::User, "");
    req.id = request_id(task, step);
    let mut msg = ChatMessage::new(Role::Assistant, "");
    msg.tool_calls = calls
        .iter()
        .enumerate()
        .map(|(i, (name, args))| ToolCall {
            id: format!("call_{step}_{i}"),
            name: (*name).into(),
            arguments: (*args).into(),
        })
        .collect();
    ChatResponse {
        message: msg,
        model: "m".into(),
        finish_reason: Some("tool_calls".into()),
        usage: None,
    }
    .to_envelope(&req, "llm")
}

fn llm_final(task: &Envelope, step: u32, text: &str) -> Envelope {
    let mut e = llm_answer(task, text);
    e.reply_to = Some(request_id(task, step));
    e
}

/// The tool executor's answer to call `i` of `step`: a result, or an error.
fn tool_answer(
    task: &Envelope,
    step: u32,
    i: usize,
    outcome: Result<serde_json::Value, &str>,
) -> Envelope {
    let mut call = task.reply(Kind::ToolCall, "writer", Role::Assistant, "x");
    call.id = tool_call_id(task, step, i);
    match outcome {
        Ok(v) => {
            let c = ToolCall {
                id: format!("call_{step}_{i}"),
                name: "x".into(),
                arguments: "{}".into(),
            };
            wire::result_envelope(&call, "tools", &c, &v)
        }
        Err(e) => call.error_reply("tools", e, serde_json::json!({})),
    }
}

#[test]
fn react_calls_tools_feeds_back_observations_and_records_the_steps() {
    let task = in_session("write 17*23 to a file", "s");
    let sent = harness::run(
        agent(10, 5000),
        vec![
            envelope(0.0, "catalog", &catalog()),
            envelope(0.01, "task", &task),
            envelope(
                0.05,
                "llm",
                &llm_calls(
                    &task,
                    0,
                    &[
                        ("calculator", "{\"expression\":\"17*23\"}"),
                        ("file_write", "{\"path\":\"../x\"}"),
                    ],
                ),
            ),
            envelope(
                0.08,
                "tools",
                &tool_answer(
                    &task,
                    0,
                    1,
                    Err("file_write: `../x` is outside the sandbox"),
                ),
            ),
            envelope(
                0.09,
                "tools",
                &tool_answer(&task, 0, 0, Ok(serde_json::json!({"value": 391.0}))),
            ),
            envelope(
                0.15,
                "llm",
                &llm_final(&task, 1, "17*23 = 391; the file could not be written."),
            ),
        ],
    );
    let reqs = on(&sent, "llm");
    assert_eq!(reqs.len(), 2);
    let first = ChatRequest::from_envelope(&reqs[0]).unwrap();
    assert_eq!(
        first.tools.len(),
        2,
        "the catalog's tools go with the request"
    );
    let calls = on(&sent, "tools");
    assert_eq!(calls.len(), 2, "both calls at once");
    assert!(calls.iter().all(|c| c.kind == Kind::ToolCall));
    assert_eq!(
        wire::call_from_envelope(&calls[0]).unwrap().name,
        "calculator"
    );
    assert_eq!(calls[1].id, tool_call_id(&task, 0, 1));

    // Step 1 sees the model's calls and both observations, in call order.
    let second = ChatRequest::from_envelope(&reqs[1]).unwrap();
    let n = second.messages.len();
    assert_eq!(second.messages[n - 3].tool_calls.len(), 2);
    assert_eq!(second.messages[n - 2].role, Role::Tool);
    assert_eq!(second.messages[n - 2].content, "{\"value\":391.0}");
    assert_eq!(
        second.messages[n - 2].tool_call_id.as_deref(),
        Some("call_0_0")
    );
    assert_eq!(
        second.messages[n - 1].content,
        "error: file_write: `../x` is outside the sandbox"
    );

    let result = &on(&sent, "result")[0];
    assert_eq!(
        result.content,
        "17*23 = 391; the file could not be written."
    );
    let steps = result.payload_json().unwrap()["steps"].clone();
    assert_eq!(steps.as_array().unwrap().len(), 2);
    assert_eq!(steps[0]["tool"], "file_write");
    assert_eq!(steps[0]["ok"], false);
    assert_eq!(steps[1]["tool"], "calculator");
    assert_eq!(steps[1]["arguments"]["expression"], "17*23");
    assert!(on(&sent, "error").is_empty());
}

#[test]
fn the_step_limit_ends_a_task_that_keeps_calling_tools() {
    let task = in_session("loop forever", "s");
    let mut events = vec![
        envelope(0.0, "catalog", &catalog()),
        envelope(0.01, "task", &task),
    ];
    for step in 0..4u32 {
        let t = 0.05 + step as f64 * 0.05;
        events.push(envelope(
            t,
            "llm",
            &llm_calls(&task, step, &[("calculator", "{}")]),
        ));
        events.push(envelope(
            t + 0.02,
            "tools",
            &tool_answer(&task, step, 0, Ok(serde_json::json!(1))),
        ));
    }
    let sent = harness::run(agent(10, 5000), events);
    assert!(on(&sent, "result").is_empty());
    let err = &on(&sent, "error")[0];
    assert_eq!(err.reply_to.as_deref(), Some(task.id.as_str()));
    assert!(
        err.content.contains("step limit of 3 reached"),
        "{}",
        err.content
    );
    assert_eq!(
        err.payload_json().unwrap()["steps"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn text_react_reads_actions_from_the_text_and_answers_with_observations() {
    let text_agent = Agent::new(AgentConfig {
        text_react: true,
        ..config()
    });
    let task = in_session("what is 2+2?", "s");
    let action = llm_final(
        &task,
        0,
        "Thought: I need arithmetic.\nAction: calculator\nAction Input: {\"expression\": \"2+2\"}",
    );
    let sent = harness::run(
        text_agent,
        vec![
            envelope(0.0, "catalog", &catalog()),
            envelope(0.01, "task", &task),
            envelope(0.05, "llm", &action),
            envelope(
                0.08,
                "tools",
                &tool_answer(&task, 0, 0, Ok(serde_json::json!({"value": 4.0}))),
            ),
            envelope(
                0.12,
                "llm",
                &llm_final(&task, 1, "Thought: done.\nFinal Answer: 4"),
            ),
        ],
    );
    let reqs = on(&sent, "llm");
    let first = ChatRequest::from_envelope(&reqs[0]).unwrap();
    assert!(
        first.tools.is_empty(),
        "text mode sends no tool definitions"
    );
    assert!(
        first.messages[0].content.contains("Action Input:")
            && first.messages[0].content.contains("- calculator:")
    );
    assert_eq!(first.options.stop, ["Observation:"]);
    let call = wire::call_from_envelope(&on(&sent, "tools")[0]).unwrap();
    assert_eq!(
        (call.name.as_str(), call.arguments.as_str()),
        ("calculator", "{\"expression\": \"2+2\"}")
    );
    let second = ChatRequest::from_envelope(&reqs[1]).unwrap();
    let last = second.messages.last().unwrap();
    assert_eq!(
        (last.role, last.content.as_str()),
        (Role::User, "Observation: {\"value\":4.0}")
    );
    assert!(second.messages.iter().all(|m| m.tool_calls.is_empty()));
    assert_eq!(on(&sent, "result")[0].content, "4");
}

#[test]
fn at_the_concurrency_limit_waiting_tasks_start_highest_priority_first() {
    let n1 = in_session("n1", "a");
    let n2 = in_session("n2", "b");
    let c = in_session("c", "c").with_priority(Priority::Critical);
    let n3 = in_session("n3", "a"); // behind n1 in its own session
    let sent = harness::run(
        agent_with(10, 5000, 1),
        vec![
            envelopes(
                0.0,
                "task",
                &[n1.clone(), n2.clone(), c.clone(), n3.clone()],
            ),
            envelopes(0.1, "llm", &[llm_answer(&n1, "1")]),
            envelopes(0.2, "llm", &[llm_answer(&c, "c")]),
            envelopes(0.3, "llm", &[llm_answer(&n2, "2")]),
            envelopes(0.4, "llm", &[llm_answer(&n3, "3")]),
        ],
    );
    let started: Vec<String> = on(&sent, "llm")
        .iter()
        .map(|r| request_texts(r).last().cloned().unwrap())
        .collect();
    assert_eq!(started, ["user:n1", "user:c", "user:n2", "user:n3"]);
    assert_eq!(on(&sent, "result").len(), 4);
}

#[test]
fn tasks_not_done_at_stop_are_answered_with_an_error() {
    let running = in_session("waits for the LLM", "a");
    let queued = in_session("behind it", "a");
    let sent = harness::run(
        agent(10, 60_000),
        vec![envelopes(0.0, "task", &[running.clone(), queued.clone()])],
    );
    let errors = on(&sent, "error");
    let answered: Vec<_> = errors.iter().map(|e| e.reply_to.clone().unwrap()).collect();
    assert_eq!(answered.len(), 2, "{errors:#?}");
    assert!(answered.contains(&running.id) && answered.contains(&queued.id));
    assert!(
        errors
            .iter()
            .all(|e| e.content.contains("stopped before the task was done"))
    );
}

#[test]
fn a_held_agent_asks_for_the_catalog_until_it_comes_then_starts_its_task() {
    let held = Agent::new(AgentConfig {
        await_catalog: true,
        ..config()
    });
    let task = in_session("what is 17*23?", "s");
    let sent = harness::run(
        held,
        vec![
            envelope(0.0, "task", &task),
            // The executor's first catalog was lost; it answers the agent's request on `tools`.
            envelope(2.5, "tools", &catalog()),
            // Keeps the node up long enough to see that the asking stopped.
            envelope(6.0, "llm", &llm_answer(&task, "391")),
        ],
    );
    let asks = on(&sent, "tools");
    assert!(
        !asks.is_empty() && asks.len() <= 3,
        "asked about once a second until the catalog came at 2.5 s, not after: {asks:?}"
    );
    assert!(asks.iter().all(wire::is_catalog), "{asks:?}");
    assert_eq!(asks[0].sender, "writer");
    let reqs = on(&sent, "llm");
    assert_eq!(reqs.len(), 1, "the task waited for the catalog: {reqs:?}");
    assert_eq!(ChatRequest::from_envelope(&reqs[0]).unwrap().tools.len(), 2);
    assert_eq!(on(&sent, "result")[0].content, "391");
    assert!(on(&sent, "error").is_empty(), "{sent:?}");
}
