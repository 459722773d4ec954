//! mofa-router's rule-based routing, without a daemon.

use std::path::Path;
use std::time::Duration;

use mofa_kernel::script::Limits;
use mofa_kernel::{Envelope, Kind, Role};
use mofa_router::{Router, RulesConfig};
use mofa_tests::harness::{self, closed, envelope, on};

const RULES: &str = r#"
mode: first
rules:
  - name: spam
    priority: critical
    condition: 'msg.content.to_lower().contains("buy now")'
    actions:
      - set: {reason: '"spam"'}
      - emit: {output: blocked, content: '"blocked: " + vars.reason', kind: result}
  - name: sums
    condition: 'msg.content.contains("+")'
    actions: [{emit: {output: maths}}]
  - name: hostile
    condition: 'msg.content == "loop" && loop {}'
  - name: poems
    condition: 'msg.content.contains("poem")'
    actions: [{emit: {output: writer}}]
"#;

fn config(path: &Path) -> RulesConfig {
    RulesConfig {
        path: path.to_owned(),
        routes: vec!["maths".into(), "writer".into(), "blocked".into()],
        limits: Limits {
            max_operations: 20_000,
            timeout: Duration::from_millis(300),
            ..Limits::default()
        },
        poll: Duration::from_millis(50),
    }
}

fn router_on(rules: &str) -> (tempfile::TempDir, std::path::PathBuf, Router) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yml");
    std::fs::write(&path, rules).unwrap();
    let router = Router::with_rules(config(&path)).unwrap();
    (dir, path, router)
}

#[test]
fn rules_route_forward_unchanged_or_answer_and_failures_are_errors() {
    let (_dir, _, router) = router_on(RULES);
    let sums = Envelope::task("src", "2+2?");
    let poem = Envelope::task("src", "a poem");
    let spam = Envelope::task("src", "BUY NOW 2+2");
    let lost = Envelope::task("src", "nothing matches");
    let hostile = Envelope::task("src", "loop");
    let sent = harness::run(
        router,
        vec![
            envelope(0.0, "task", &sums),
            envelope(0.0, "task", &poem),
            envelope(0.0, "task", &spam),
            envelope(0.0, "task", &lost),
            envelope(0.0, "task", &hostile),
            closed(0.1, "task"),
        ],
    );
    assert_eq!(on(&sent, "maths"), vec![sums]);
    assert_eq!(on(&sent, "writer"), vec![poem]);
    let blocked = on(&sent, "blocked");
    assert_eq!(blocked.len(), 1);
    let b = &blocked[0];
    assert_eq!(
        (b.kind, b.role, b.content.as_str()),
        (Kind::Result, Role::Assistant, "blocked: spam")
    );
    assert_eq!(b.reply_to.as_deref(), Some(spam.id.as_str()));
    assert_eq!(b.session, spam.session);
    let payload = b.payload_json().unwrap();
    assert_eq!(payload["rules"], serde_json::json!(["spam"]));
    assert_eq!(payload["vars"]["reason"], "spam");

    let errors = on(&sent, "error");
    assert_eq!(errors.len(), 2, "{errors:#?}");
    let about = |t: &Envelope| {
        errors
            .iter()
            .find(|e| e.reply_to.as_deref() == Some(t.id.as_str()))
            .unwrap_or_else(|| panic!("no error for {}", t.content))
            .content
            .clone()
    };
    assert_eq!(about(&lost), "no rule routed the task");
    let h = about(&hostile);
    assert!(
        h.starts_with("rule `hostile`: script stopped at a limit"),
        "{h}"
    );
}

#[test]
fn a_rules_file_that_does_not_load_or_emits_outside_the_routes_stops_the_node_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yml");
    std::fs::write(&path, "rules: [{name: a, condition: '(('}]").unwrap();
    let err = Router::with_rules(config(&path)).err().unwrap().to_string();
    assert!(err.starts_with("MOFA_ROUTER_RULES="), "{err}");
    assert!(err.contains("rule `a`: condition"), "{err}");
    std::fs::write(
        &path,
        "rules: [{name: a, actions: [{emit: {output: painter}}]}]",
    )
    .unwrap();
    let err = Router::with_rules(config(&path)).err().unwrap().to_string();
    assert!(
        err.contains(
            "the rules emit on painter, which is not in MOFA_ROUTES (maths, writer, blocked)"
        ),
        "{err}"
    );
}

#[test]
fn a_changed_rules_file_takes_effect_and_a_broken_one_leaves_the_old_rules_running() {
    let (_dir, path, router) = router_on(RULES);
    let tasks: Vec<Envelope> = (0..3).map(|_| Envelope::task("src", "2+2")).collect();
    // While the node runs: a broken version at 0.3 s, a working one (sums to the writer) at
    // 0.9 s. Each saved whole (written beside, renamed over): a plain save's empty moment is
    // the watcher's own test (kernel::watch), and a stalled test thread could leave it there
    // long enough to be read as a third version.
    let editor = {
        let path = path.clone();
        let save = move |text: &str| {
            let beside = path.with_extension("saving");
            std::fs::write(&beside, text).unwrap();
            std::fs::rename(&beside, &path).unwrap();
        };
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            save("rules: [{name: broken, condition: '(('}]");
            std::thread::sleep(Duration::from_millis(600));
            save(
                "rules: [{name: sums, condition: 'msg.content.contains(\"+\")', \
                 actions: [{emit: {output: writer}}]}]",
            );
        })
    };
    let sent = harness::run(
        router,
        vec![
            envelope(0.0, "task", &tasks[0]),
            envelope(0.6, "task", &tasks[1]),
            envelope(1.5, "task", &tasks[2]),
            closed(1.6, "task"),
        ],
    );
    editor.join().unwrap();
    // Before, and with the broken version on disk: the first rules.
    assert_eq!(on(&sent, "maths"), tasks[..2].to_vec());
    // Within 0.6 s of the good version: the new rules.
    assert_eq!(on(&sent, "writer"), vec![tasks[2].clone()]);
    let errors = on(&sent, "error");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0]
            .content
            .starts_with("rules not reloaded, the previous ones stay:"),
        "{}",
        errors[0].content
    );
    assert!(errors[0].content.contains("rule `broken`: condition"));
}

#[test]
fn the_shipped_moderation_rules_block_spam_and_route_the_rest() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/rules/moderation.yml");
    let router = Router::with_rules(config(&path)).unwrap();
    let spam = Envelope::task("src", "Click HERE for free money");
    let sums = Envelope::task("src", "What is 12 * 7?");
    let poem = Envelope::task("src", "Write a haiku about rain.");
    let sent = harness::run(
        router,
        vec![
            envelope(0.0, "task", &spam),
            envelope(0.0, "task", &sums),
            envelope(0.0, "task", &poem),
            closed(0.1, "task"),
        ],
    );
    let blocked = on(&sent, "blocked");
    assert_eq!(blocked.len(), 1);
    assert_eq!(
        blocked[0].content,
        "Blocked by moderation (spam): the task was not passed to an agent."
    );
    assert_eq!(blocked[0].reply_to.as_deref(), Some(spam.id.as_str()));
    assert_eq!(on(&sent, "maths"), vec![sums]);
    assert_eq!(on(&sent, "writer"), vec![poem]);
    assert!(on(&sent, "error").is_empty());
}
