//! The kernel's node lifecycle (`node::run`) under `DoraNode::init_testing`: failures become
//! error envelopes, in-flight work drains on stop within the bound, text outputs.
//!
//! One test function: the lifecycle reads its settings from the environment, which the tests
//! of one binary share.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use mofa_kernel::node::{Ctx, Deadline, Failure, Handler};
use mofa_kernel::{Envelope, Kind, Role};
use mofa_tests::harness::{self, envelopes, on};

/// Echoes after `delay` (spawned), fails on "fail", answers "text" on the text output.
struct Echo {
    delay: Duration,
}

#[async_trait]
impl Handler for Echo {
    async fn on_message(&self, ctx: &Ctx, _input: &str, msg: Envelope) -> Result<(), Failure> {
        match msg.content.as_str() {
            "fail" => {
                Err(Failure::new("refused").with_details(serde_json::json!({"why": "asked to"})))
            }
            "text" => {
                ctx.send_one(
                    "plain",
                    msg.reply(Kind::Result, "echo", Role::Assistant, "as text"),
                );
                Ok(())
            }
            _ => {
                let (ctx2, delay) = (ctx.clone(), self.delay);
                ctx.spawn(msg.clone(), async move {
                    tokio::time::sleep(delay).await;
                    if msg.content == "late failure" {
                        return Err(Failure::new("failed later"));
                    }
                    ctx2.send_one(
                        "out",
                        msg.reply(Kind::Result, "echo", Role::Assistant, "done"),
                    );
                    Ok(())
                });
                Ok(())
            }
        }
    }
}

/// "deadline N" sets an N ms deadline that answers "timed out"; "cancel" drops it.
#[derive(Default)]
struct Waits {
    deadline: std::sync::Mutex<Option<Deadline>>,
}

#[async_trait]
impl Handler for Waits {
    async fn on_message(&self, ctx: &Ctx, _input: &str, msg: Envelope) -> Result<(), Failure> {
        let mut slot = self.deadline.lock().unwrap();
        match msg.content.strip_prefix("deadline ") {
            Some(ms) => {
                let (ctx2, msg2) = (ctx.clone(), msg.clone());
                *slot = Some(
                    ctx.deadline(Duration::from_millis(ms.parse().unwrap()), move || {
                        ctx2.send_one(
                            "out",
                            msg2.reply(Kind::Result, "waits", Role::Assistant, "timed out"),
                        )
                    }),
                );
            }
            None if msg.content == "cancel" => *slot = None,
            None => {}
        }
        Ok(())
    }
}

#[test]
fn lifecycle() {
    unsafe {
        std::env::set_var("MOFA_STOP_TIMEOUT_MS", "1500");
        std::env::set_var("MOFA_TEXT_OUTPUTS", "plain");
    }

    // A failure answers its message on `error`, and the next message is still handled.
    let (bad, good) = (Envelope::task("t", "fail"), Envelope::task("t", "fine"));
    let sent = harness::run(
        Echo {
            delay: Duration::ZERO,
        },
        vec![envelopes(0.0, "in", &[bad.clone(), good.clone()])],
    );
    let errors = on(&sent, "error");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].reply_to.as_deref(), Some(bad.id.as_str()));
    assert_eq!(errors[0].session, bad.session);
    assert_eq!(errors[0].content, "refused");
    let details = errors[0].payload_json().unwrap();
    assert_eq!(
        (details["why"].as_str(), details["input_kind"].as_str()),
        (Some("asked to"), Some("task"))
    );
    assert_eq!(
        on(&sent, "out")[0].reply_to.as_deref(),
        Some(good.id.as_str())
    );

    // Work in flight when the inputs end is finished (within the bound) and its output sent;
    // spawned work that fails later answers its own message.
    let (slow, later) = (
        Envelope::task("t", "slow"),
        Envelope::task("t", "late failure"),
    );
    let sent = harness::run(
        Echo {
            delay: Duration::from_millis(400),
        },
        vec![envelopes(0.0, "in", &[slow.clone(), later.clone()])],
    );
    assert_eq!(
        on(&sent, "out")[0].reply_to.as_deref(),
        Some(slow.id.as_str())
    );
    let errors = on(&sent, "error");
    assert_eq!(errors[0].reply_to.as_deref(), Some(later.id.as_str()));
    assert_eq!(errors[0].content, "failed later");

    // Work that outlives the bound is cancelled: the node does not wait for it.
    let start = Instant::now();
    let sent = harness::run(
        Echo {
            delay: Duration::from_secs(30),
        },
        vec![envelopes(0.0, "in", &[Envelope::task("t", "forever")])],
    );
    assert!(on(&sent, "out").is_empty());
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "stopped at the bound, not after the work"
    );

    // Outputs listed in MOFA_TEXT_OUTPUTS carry plain Utf8 for dora-hub nodes.
    let sent = harness::run(
        Echo {
            delay: Duration::ZERO,
        },
        vec![envelopes(0.0, "in", &[Envelope::task("t", "text")])],
    );
    let plain: Vec<_> = sent.iter().filter(|s| s.output == "plain").collect();
    assert_eq!(plain[0].rows, vec![serde_json::json!("as text")]);

    // A deadline fires once its time has passed; dropped before, it never does; and a stopping
    // node does not wait for one (the stop bound here is 1.5 s).
    let fired = harness::run(
        Waits::default(),
        vec![
            envelopes(0.0, "in", &[Envelope::task("t", "deadline 100")]),
            envelopes(0.4, "in", &[Envelope::task("t", "keep the node up")]),
        ],
    );
    assert_eq!(on(&fired, "out")[0].content, "timed out");
    let cancelled = harness::run(
        Waits::default(),
        vec![
            envelopes(0.0, "in", &[Envelope::task("t", "deadline 200")]),
            envelopes(0.05, "in", &[Envelope::task("t", "cancel")]),
            envelopes(0.4, "in", &[Envelope::task("t", "keep the node up")]),
        ],
    );
    assert!(on(&cancelled, "out").is_empty());
    let start = Instant::now();
    let pending = harness::run(
        Waits::default(),
        vec![envelopes(
            0.0,
            "in",
            &[Envelope::task("t", "deadline 60000")],
        )],
    );
    assert!(on(&pending, "out").is_empty());
    assert!(
        start.elapsed() < Duration::from_millis(1400),
        "the stop waited for a deadline"
    );
}
