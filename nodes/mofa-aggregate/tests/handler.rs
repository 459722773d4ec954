//! mofa-aggregate's handler without a daemon: joins, quorum, timeout, strategies, faults.

use std::time::Duration;

use mofa_aggregate::{Aggregate, AggregateConfig, Strategy};
use mofa_kernel::llm::{ChatMessage, ChatRequest, ChatResponse};
use mofa_kernel::{Envelope, Kind, Priority, Role};
use mofa_tests::harness::{self, closed, envelope, on};

fn aggregate(quorum: usize, timeout_ms: u64, strategy: Strategy) -> Aggregate {
    Aggregate::new(AggregateConfig {
        members: vec!["a".into(), "b".into(), "c".into()],
        quorum,
        timeout: Duration::from_millis(timeout_ms),
        strategy,
        summary_prompt: "Merge.".into(),
        max_concurrent: 1,
    })
}

fn answer(task: &Envelope, member: &str, text: &str) -> Envelope {
    task.reply(Kind::Result, member, Role::Assistant, text)
}

fn payload(e: &Envelope) -> serde_json::Value {
    e.payload_json().unwrap()
}

#[test]
fn every_answer_joined_in_arrival_order_once_all_members_answered() {
    let task = Envelope::task("source", "name a colour");
    let sent = harness::run(
        aggregate(3, 5000, Strategy::Concat),
        vec![
            envelope(0.0, "task", &task),
            envelope(0.05, "b", &answer(&task, "b", "blue")),
            envelope(0.1, "a", &answer(&task, "a", "amber")),
            envelope(0.15, "c", &answer(&task, "c", "cyan")),
        ],
    );
    let results = on(&sent, "result");
    assert_eq!(results.len(), 1, "{results:#?}");
    let r = &results[0];
    assert_eq!(r.kind, Kind::Result);
    assert_eq!(r.reply_to.as_deref(), Some(task.id.as_str()));
    assert_eq!(r.session, task.session);
    assert_eq!(r.content, "[b]\nblue\n\n[a]\namber\n\n[c]\ncyan");
    assert_eq!(payload(r)["missing"], serde_json::json!([]));
}

#[test]
fn at_the_timeout_a_quorum_is_delivered_with_the_silent_member_missing() {
    let task = Envelope::task("source", "q");
    let sent = harness::run(
        aggregate(2, 300, Strategy::Concat),
        vec![
            envelope(0.0, "task", &task),
            envelope(0.05, "a", &answer(&task, "a", "one")),
            envelope(0.1, "b", &answer(&task, "b", "two")),
            // c answers after the timeout: too late, ignored.
            envelope(0.8, "c", &answer(&task, "c", "three")),
        ],
    );
    let results = on(&sent, "result");
    assert_eq!(results.len(), 1, "{results:#?}");
    assert_eq!(results[0].kind, Kind::Result);
    assert!(!results[0].content.contains("three"));
    assert_eq!(payload(&results[0])["missing"], serde_json::json!(["c"]));
    assert!(on(&sent, "error").is_empty());
}

#[test]
fn without_a_quorum_the_session_is_an_error_naming_who_failed_and_who_is_missing() {
    let task = Envelope::task("source", "q");
    let failed = task.error_reply("c", "LLM failed: 500", serde_json::json!({}));
    let sent = harness::run(
        aggregate(3, 300, Strategy::Concat),
        vec![
            envelope(0.0, "task", &task),
            envelope(0.05, "a", &answer(&task, "a", "one")),
            envelope(0.1, "c_error", &failed),
        ],
    );
    let results = on(&sent, "result");
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].kind, Kind::Error);
    assert!(
        results[0].content.contains("quorum not reached: 1 of 3"),
        "{}",
        results[0].content
    );
    assert!(results[0].content.contains("missing: [b]"));
    assert!(results[0].content.contains("failed: [c]"));
    assert_eq!(on(&sent, "error").len(), 1);
}

#[test]
fn a_member_that_ends_is_missing_at_once_instead_of_at_the_timeout() {
    let task = Envelope::task("source", "q");
    let sent = harness::run(
        aggregate(2, 60_000, Strategy::Concat),
        vec![
            envelope(0.0, "task", &task),
            envelope(0.05, "a", &answer(&task, "a", "one")),
            envelope(0.1, "b", &answer(&task, "b", "two")),
            closed(0.15, "c"),
            closed(0.2, "task"),
        ],
    );
    // With a 60 s timeout, a result at all means it did not wait for it.
    let results = on(&sent, "result");
    assert_eq!(results.len(), 1);
    assert_eq!(payload(&results[0])["missing"], serde_json::json!(["c"]));
}

#[test]
fn vote_picks_the_answer_most_members_gave() {
    let task = Envelope::task("source", "capital of France?");
    let sent = harness::run(
        aggregate(3, 5000, Strategy::Vote),
        vec![
            envelope(0.0, "task", &task),
            envelope(0.05, "a", &answer(&task, "a", "Lyon")),
            envelope(0.1, "b", &answer(&task, "b", "Paris")),
            envelope(0.15, "c", &answer(&task, "c", " paris. ")),
        ],
    );
    let r = &on(&sent, "result")[0];
    assert_eq!(r.content, "Paris");
    let tally = &payload(r)["tally"];
    assert_eq!(tally["votes"], 2);
    assert_eq!(tally["tie"], false);
}

fn summary(request: &Envelope, text: &str) -> Envelope {
    ChatResponse {
        message: ChatMessage::new(Role::Assistant, text),
        model: "m".into(),
        finish_reason: Some("stop".into()),
        usage: None,
    }
    .to_envelope(request, "llm")
}

#[test]
fn summarize_asks_the_llm_highest_priority_first_and_delivers_its_merge() {
    let normal = Envelope::task("source", "normal task");
    let critical = Envelope::task("source", "critical task").with_priority(Priority::Critical);
    let later = Envelope::task("source", "later task");
    let all = |t: &Envelope, at: f64| {
        vec![
            envelope(at, "a", &answer(t, "a", "x")),
            envelope(at, "b", &answer(t, "b", "y")),
            envelope(at, "c", &answer(t, "c", "z")),
        ]
    };
    // One summary at a time: `normal` is asked first; while it runs, `later` then `critical`
    // are decided, and `critical` is asked next.
    let mut events = vec![
        envelope(0.0, "task", &normal),
        envelope(0.0, "task", &critical),
        envelope(0.0, "task", &later),
    ];
    events.extend(all(&normal, 0.05));
    events.extend(all(&later, 0.1));
    events.extend(all(&critical, 0.15));
    let req = |t: &Envelope| {
        let mut r = t.reply(Kind::Message, "join", Role::User, "");
        r.id = format!("{}/summary", t.id);
        r
    };
    events.push(envelope(
        0.3,
        "llm",
        &summary(&req(&normal), "merged normal"),
    ));
    events.push(envelope(
        0.4,
        "llm",
        &summary(&req(&critical), "merged critical"),
    ));
    events.push(envelope(0.5, "llm", &summary(&req(&later), "merged later")));
    let sent = harness::run(aggregate(3, 5000, Strategy::Summarize), events);
    let asked: Vec<String> = on(&sent, "llm")
        .iter()
        .map(|r| {
            ChatRequest::from_envelope(r).unwrap().messages[1]
                .content
                .clone()
        })
        .collect();
    assert_eq!(asked.len(), 3, "{asked:#?}");
    assert!(asked[0].starts_with("Task: normal task"));
    assert!(asked[1].starts_with("Task: critical task"), "{asked:#?}");
    assert!(asked[2].starts_with("Task: later task"));
    assert!(asked[0].contains("[a]\nx") && asked[0].contains("[c]\nz"));
    let results: Vec<String> = on(&sent, "result")
        .iter()
        .map(|r| r.content.clone())
        .collect();
    assert_eq!(
        results,
        ["merged normal", "merged critical", "merged later"]
    );
}

#[test]
fn unknown_inputs_and_non_tasks_are_errors_and_the_node_goes_on() {
    let task = Envelope::task("source", "q");
    let not_a_task = Envelope::new(Kind::ToolCall, "x", Role::Assistant, "{}");
    let sent = harness::run(
        aggregate(1, 5000, Strategy::Concat),
        vec![
            envelope(0.0, "task", &not_a_task),
            envelope(0.05, "task", &task),
            envelope(0.1, "stranger", &answer(&task, "stranger", "hi")),
            envelope(0.15, "a", &answer(&task, "a", "one")),
            envelope(0.15, "b", &answer(&task, "b", "two")),
            envelope(0.15, "c", &answer(&task, "c", "three")),
        ],
    );
    let errors = on(&sent, "error");
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].content.contains("not a task"));
    assert!(errors[1].content.contains("belongs to no member"));
    assert_eq!(on(&sent, "result").len(), 1);
}
