//! mofa-agent's handler under `DoraNode::init_testing`: the LLM's answers are scripted as
//! timed inputs on `llm` (request ids are derived from task ids, so they can be addressed).

use std::time::Duration;

use mofa_agent::{Agent, AgentConfig, request_id};
use mofa_kernel::llm::{ChatMessage, ChatOptions, ChatRequest, ChatResponse, Usage};
use mofa_kernel::{Envelope, Kind, Role};
use mofa_tests::harness::{self, closed, envelope, envelopes, on, raw};

fn agent(window: usize, timeout_ms: u64) -> Agent {
    Agent::new(AgentConfig {
        name: "writer".into(),
        system_prompt: "You are the writer.".into(),
        memory_window: window,
        max_sessions: 100,
        llm_timeout: Duration::from_millis(timeout_ms),
        options: ChatOptions::default(),
    })
}

fn in_session(text: &str, session: &str) -> Envelope {
    Envelope::task("source", text).with_session(session)
}

/// What the LLM bridge would answer to the agent's request for `task`.
fn llm_answer(task: &Envelope, text: &str) -> Envelope {
    let mut req = task.reply(Kind::Message, "writer", Role::User, "");
    req.id = request_id(task);
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
    req.id = request_id(&t1);
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
