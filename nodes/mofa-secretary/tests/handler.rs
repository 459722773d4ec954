//! The secretary's handler without a daemon: what it asks of the store first, and bad input.
//! The five phases against a real store, person, model and executors are end to end, in
//! tests/tests/secretary.rs.

use std::time::Duration;

use mofa_kernel::{Envelope, Kind};
use mofa_secretary::{Config, Secretary, parse_executors};
use mofa_tests::harness::{self, closed, envelope, on};

fn secretary(store_wait_ms: u64) -> Secretary {
    Secretary::new(Config {
        executors: parse_executors("coder=code;writer=docs").unwrap(),
        prompt: "You are a secretary.".into(),
        human_timeout: Duration::from_secs(5),
        clarify_default: "Proceed.".into(),
        approval_default: "reject".into(),
        task_timeout: Duration::from_secs(5),
        llm_timeout: Duration::from_secs(5),
        store_wait: Duration::from_millis(store_wait_ms),
    })
}

#[test]
fn it_resumes_open_sessions_first_then_opens_one_per_idea_with_the_idea_kept() {
    let idea = Envelope::task("source", "a CSV to Markdown tool");
    let sent = harness::run(
        secretary(300),
        vec![envelope(0.1, "idea", &idea), closed(0.2, "idea")],
    );
    let asked = on(&sent, "store");
    let ops: Vec<String> = asked
        .iter()
        .map(|e| e.payload_json().unwrap()["op"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ops[0], "session.list", "{ops:?}");
    let open = asked
        .iter()
        .find(|e| e.payload_json().unwrap()["op"] == "session.open")
        .expect("the idea opens a session");
    let p = open.payload_json().unwrap();
    assert_eq!(p["session"], idea.session.as_str());
    assert_eq!(p["title"], "a CSV to Markdown tool");
    // The idea itself is kept, so a restarted secretary can take the session up again.
    let kept: Envelope = serde_json::from_value(p["meta"]["idea"].clone()).unwrap();
    assert_eq!(kept, idea);
    assert_eq!(open.session, idea.session);
}

#[test]
fn a_store_that_never_answers_fails_the_session_after_the_wait_naming_the_operation() {
    let idea = Envelope::task("source", "an idea");
    let sent = harness::run(
        secretary(300),
        vec![envelope(0.0, "idea", &idea), closed(0.1, "idea")],
    );
    let errors = on(&sent, "error");
    let session_error = errors
        .iter()
        .find(|e| e.reply_to.as_deref() == Some(idea.id.as_str()))
        .expect("the idea is answered with an error");
    assert!(
        session_error
            .content
            .contains("the store failed `session.open` for 300 ms"),
        "{}",
        session_error.content
    );
}

#[test]
fn bad_input_is_an_error_envelope_and_the_node_goes_on() {
    let empty = Envelope::task("source", "  ");
    let stray = Envelope::task("someone", "hello");
    let good = Envelope::task("source", "an idea");
    let sent = harness::run(
        secretary(200),
        vec![
            envelope(0.0, "idea", &empty),
            envelope(0.05, "bogus", &stray),
            envelope(0.1, "idea", &good),
            closed(0.15, "idea"),
        ],
    );
    let errors = on(&sent, "error");
    let answering = |id: &str| errors.iter().find(|e| e.reply_to.as_deref() == Some(id));
    assert_eq!(answering(&empty.id).unwrap().content, "empty idea");
    assert!(
        answering(&stray.id)
            .unwrap()
            .content
            .contains("unknown input `bogus`")
    );
    assert!(errors.iter().all(|e| e.kind == Kind::Error));
    // The good idea after them was taken up.
    assert!(
        on(&sent, "store")
            .iter()
            .any(|e| e.session == good.session && e.payload_json().unwrap()["op"] == "session.open")
    );
}
