//! mofa-source and mofa-sink under `DoraNode::init_testing`.

use std::io::Write;
use std::sync::{Arc, Mutex};

use mofa_io::sink::Sink;
use mofa_io::source::{Source, parse_tasks};
use mofa_kernel::{Envelope, Kind, Priority, Role};
use mofa_tests::harness::{self, envelope, envelopes, on, raw};

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buffer {
    fn lines(&self) -> Vec<serde_json::Value> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

#[test]
fn the_source_sends_each_task_in_order_then_ends() {
    let tasks =
        parse_tasks("{\"task\": \"a\", \"session\": \"s1\"}\n{\"task\": \"b\", \"priority\": 3}\n")
            .unwrap();
    let sent = harness::run(Source::new(tasks), vec![]);
    let all = on(&sent, "task");
    assert_eq!(
        all.len(),
        2,
        "a row per task (queued rows may share one array)"
    );
    assert_eq!(
        (all[0].content.as_str(), all[0].session.as_str()),
        ("a", "s1")
    );
    assert_eq!(
        (all[1].content.as_str(), all[1].priority),
        ("b", Priority::Critical)
    );
    assert!(
        all.iter()
            .all(|t| t.kind == Kind::Task && t.sender == "test-node")
    );
}

#[test]
fn the_source_paces_its_tasks_when_asked() {
    let tasks = parse_tasks("{\"task\": \"a\"}\n{\"task\": \"b\"}\n{\"task\": \"c\"}\n").unwrap();
    let sent = harness::run(
        Source::new(tasks).with_pacing(std::time::Duration::from_millis(150), 2),
        vec![],
    );
    let all = on(&sent, "task");
    assert_eq!(all.len(), 3);
    assert!(
        all[1].ts_ms - all[0].ts_ms < 150,
        "a burst of two goes at once"
    );
    assert!(
        all[2].ts_ms - all[1].ts_ms >= 150,
        "{} then {}",
        all[1].ts_ms,
        all[2].ts_ms
    );
}

#[test]
fn the_sink_writes_every_envelope_as_a_json_line_and_ends_after_the_expected_results() {
    let buf = Buffer::default();
    let task = Envelope::task("src", "q");
    let token = task.reply(Kind::Token, "llm", Role::Assistant, "par");
    let r1 = task.reply(Kind::Result, "editor", Role::Assistant, "final one");
    let err = task.error_reply("writer", "LLM failed", serde_json::json!({}));
    let r2 = task.reply(Kind::Result, "editor", Role::Assistant, "after the end");
    harness::run(
        Sink::new(Box::new(buf.clone()), Some(2)),
        vec![
            envelopes(0.0, "tokens", &[token]),
            envelope(0.01, "result", &r1),
            raw(
                0.02,
                "result",
                serde_json::json!(["plain text answer"]),
                Some(serde_json::json!("Utf8")),
            ),
            envelopes(0.03, "errors", &[err]),
            // MOFA_EXPECT=2 outcomes (a result and an error): this one comes after the end.
            envelopes(0.3, "result", &[r2]),
        ],
    );
    let lines = buf.lines();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[0]["kind"], "token");
    assert_eq!(lines[1]["content"], "final one");
    assert_eq!(lines[1]["input"], "result");
    assert_eq!(lines[1]["reply_to"], task.id.as_str());
    assert_eq!(lines[1]["priority"], 1);
    assert_eq!(lines[2]["content"], "plain text answer");
    assert_eq!(lines[3]["kind"], "error");
}
