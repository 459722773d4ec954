//! mofa-script's handler without a daemon: the three modes, errors and limits, hot reload.

use std::path::Path;
use std::time::Duration;

use mofa_kernel::script::Limits;
use mofa_kernel::{Envelope, Kind};
use mofa_script::{Mode, ScriptConfig, ScriptNode};
use mofa_tests::harness::{self, envelope, envelopes, on};

fn node(dir: &Path, mode: Mode, script: &str) -> ScriptNode {
    let path = dir.join("s.rhai");
    std::fs::write(&path, script).unwrap();
    ScriptNode::new(ScriptConfig {
        path,
        mode,
        outputs: vec!["urgent".into()],
        limits: Limits {
            max_operations: 100_000,
            // Rhai re-measures an array as it grows: a small cap trips quickly.
            max_array_size: 1_000,
            timeout: Duration::from_millis(300),
            ..Limits::default()
        },
        poll: Duration::from_millis(50),
    })
    .unwrap()
}

#[test]
fn task_mode_answers_each_message_with_the_scripts_value() {
    let dir = tempfile::tempdir().unwrap();
    let t1 = Envelope::task("src", "otters").with_payload(&serde_json::json!({"n": 3}));
    let t2 = Envelope::task("src", "seals");
    let sent = harness::run(
        node(
            dir.path(),
            Mode::Task,
            r#"if msg.data == () { msg.content.len() } else { `${msg.content} x${msg.data.n}` }"#,
        ),
        vec![envelopes(0.0, "in", &[t1.clone(), t2.clone()])],
    );
    let out = on(&sent, "out");
    assert_eq!(out.len(), 2);
    assert_eq!(
        (out[0].kind, out[0].content.as_str()),
        (Kind::Result, "otters x3")
    );
    assert_eq!(out[0].reply_to.as_deref(), Some(t1.id.as_str()));
    assert_eq!(out[1].content, "5");
    assert_eq!(out[1].payload_json().unwrap(), serde_json::json!(5));
}

#[test]
fn condition_mode_routes_the_message_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"if msg.priority >= 3 { "urgent" } else if msg.content.contains("?") { true } else if msg.content == "odd" { 42 } else { false }"#;
    let q = Envelope::task("src", "why?");
    let s = Envelope::task("src", "statement");
    let c = Envelope::task("src", "fire").with_priority(mofa_kernel::Priority::Critical);
    let odd = Envelope::task("src", "odd");
    let sent = harness::run(
        node(dir.path(), Mode::Condition, script),
        vec![envelopes(
            0.0,
            "in",
            &[q.clone(), s.clone(), c.clone(), odd.clone()],
        )],
    );
    assert_eq!(on(&sent, "true"), vec![q]);
    assert_eq!(on(&sent, "false"), vec![s]);
    assert_eq!(on(&sent, "urgent"), vec![c]);
    let errors = on(&sent, "error");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].reply_to.as_deref(), Some(odd.id.as_str()));
    assert!(
        errors[0].content.contains("gave 42"),
        "{}",
        errors[0].content
    );
}

#[test]
fn transform_mode_makes_a_new_envelope_from_the_scripts_fields() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"if msg.content == "plain" { "PLAIN" } else if msg.content == "bad" { #{ colour: 1 } } else { #{ content: msg.content.to_upper(), data: #{ words: msg.content.split(" ").len() }, priority: 2, kind: "message" } }"#;
    let a = Envelope::task("src", "two words");
    let b = Envelope::task("src", "plain");
    let bad = Envelope::task("src", "bad");
    let sent = harness::run(
        node(dir.path(), Mode::Transform, script),
        vec![envelopes(0.0, "in", &[a.clone(), b.clone(), bad.clone()])],
    );
    let out = on(&sent, "out");
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].content, "TWO WORDS");
    assert_eq!(
        out[0].payload_json().unwrap(),
        serde_json::json!({"words": 2})
    );
    assert_eq!(out[0].priority, mofa_kernel::Priority::High);
    assert_eq!(out[0].kind, Kind::Message);
    assert_eq!(out[0].reply_to.as_deref(), Some(a.id.as_str()));
    assert_eq!(out[0].session, a.session);
    assert_ne!(out[0].id, a.id);
    assert_eq!(
        (out[1].kind, out[1].content.as_str()),
        (Kind::Task, "PLAIN")
    );
    let errors = on(&sent, "error");
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].content.contains("not colour"),
        "{}",
        errors[0].content
    );
}

#[test]
fn script_errors_and_hostile_scripts_are_errors_and_the_next_message_goes_through() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"fn f(n) { f(n + 1) } switch msg.content { "loop" => { loop {} }, "deep" => f(0), "big" => { let s = "x"; loop { s += s; } }, "many" => { let a = []; loop { a.push(1); } }, "sleepy" => { loop { sleep(50); } }, "throw" => { throw "nope" }, _ => "fine" }"#;
    let msgs: Vec<Envelope> = ["loop", "deep", "big", "many", "sleepy", "throw", "after"]
        .iter()
        .map(|c| Envelope::task("src", *c))
        .collect();
    let sent = harness::run(
        node(dir.path(), Mode::Task, script),
        vec![envelopes(0.0, "in", &msgs)],
    );
    let errors = on(&sent, "error");
    let why: Vec<&str> = errors.iter().map(|e| e.content.as_str()).collect();
    assert_eq!(errors.len(), 6, "{why:#?}");
    for (e, expected) in errors.iter().zip([
        "operations",
        "nested deeper",
        "too large",
        "too large",
        "300 ms timeout",
        "nope",
    ]) {
        assert!(e.content.contains(expected), "{} / {expected}", e.content);
    }
    assert_eq!(
        errors
            .iter()
            .map(|e| e.reply_to.clone().unwrap())
            .collect::<Vec<_>>(),
        msgs[..6].iter().map(|m| m.id.clone()).collect::<Vec<_>>()
    );
    let out = on(&sent, "out");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].content, "fine");
}

#[test]
fn a_changed_script_takes_effect_and_a_broken_one_leaves_the_old_running() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path(), Mode::Task, r#""v1""#);
    let path = dir.path().join("s.rhai");
    // Each version saved whole (written beside, renamed over): a plain save's empty moment is
    // the watcher's own test (kernel::watch), and a stalled test thread could leave it there
    // long enough to be read as a version of its own.
    let save = move |text: &str| {
        let beside = path.with_extension("saving");
        std::fs::write(&beside, text).unwrap();
        std::fs::rename(&beside, &path).unwrap();
    };
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        save(r#""v2""#);
        std::thread::sleep(Duration::from_millis(700));
        save("let = ;");
    });
    let at = |t: f64, c: &str| envelope(t, "in", &Envelope::task("src", c));
    let sent = harness::run(
        n,
        // Each at least 0.3 s past the save before it has settled and been seen (0.15 s).
        vec![at(0.1, "a"), at(0.8, "b"), at(1.5, "c"), at(1.7, "d")],
    );
    writer.join().unwrap();
    let out: Vec<String> = on(&sent, "out").iter().map(|e| e.content.clone()).collect();
    assert_eq!(out, ["v1", "v2", "v2", "v2"]);
    let errors = on(&sent, "error");
    assert_eq!(
        errors.len(),
        1,
        "the broken version is reported once: {errors:#?}"
    );
    assert!(errors[0].content.contains("does not compile"));
    assert!(
        errors[0].content.contains("version 2-"),
        "{}",
        errors[0].content
    );
}

#[test]
fn rules_mode_sends_what_the_rules_emit_and_an_unmatched_message_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let rules = r#"
mode: first
rules:
  - name: spam
    priority: critical
    condition: 'msg.content.to_lower().contains("buy now")'
    actions:
      - set: {reason: '"spam"'}
      - emit: {output: blocked, content: '"blocked: " + vars.reason', kind: result}
  - name: question
    condition: 'msg.content.ends_with("?")'
    actions: [{emit: {output: out}}]
"#;
    let spam = Envelope::task("src", "BUY NOW, cheap?");
    let q = Envelope::task("src", "why?");
    let other = Envelope::task("src", "a statement");
    let sent = harness::run(
        node(dir.path(), Mode::Rules, rules),
        vec![envelopes(
            0.0,
            "in",
            &[spam.clone(), q.clone(), other.clone()],
        )],
    );
    // Critical first: the spam rule wins over the question rule that also matches.
    let blocked = on(&sent, "blocked");
    assert_eq!(blocked.len(), 1);
    assert_eq!(
        (blocked[0].kind, blocked[0].content.as_str()),
        (Kind::Result, "blocked: spam")
    );
    assert_eq!(blocked[0].reply_to.as_deref(), Some(spam.id.as_str()));
    assert_eq!(on(&sent, "out"), vec![q], "forwarded unchanged");
    let errors = on(&sent, "error");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].reply_to.as_deref(), Some(other.id.as_str()));
    assert!(errors[0].content.contains("no rule emitted"));
}
