//! End to end: dataflows/rules.yml under `dora run` against the mock LLM: the router's
//! moderation rules (scripts/rules/moderation.yml) block spam before any agent sees it and
//! route the rest by content. (Hot reload in a running router: nodes/mofa-router/tests/rules.rs.)

use std::time::Duration;

use mofa_tests::dora;
use mofa_tests::mock_llm::{MockLlm, Rule, Script};

#[test]
fn spam_is_blocked_before_any_agent_and_the_rest_reaches_the_right_agent() {
    let mock = MockLlm::start(Script {
        rules: vec![
            Rule {
                matches: "You are the maths agent.".into(),
                content: Some("MATHS: 84".into()),
                ..Default::default()
            },
            Rule {
                matches: "You are the writer.".into(),
                content: Some("WRITER: soft rain on the roof".into()),
                ..Default::default()
            },
        ],
    });
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks.jsonl");
    std::fs::write(
        &tasks,
        [
            r#"{"task": "BUY NOW: free money for the first 100 readers", "session": "s"}"#,
            r#"{"task": "What is 12 * 7?", "session": "m"}"#,
            r#"{"task": "Write a haiku about rain.", "session": "w"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let (lines, _) = dora::run_to_sink(
        "rules.yml",
        &[
            ("OPENAI_BASE_URL", mock.base_url()),
            ("MOFA_TASKS_FILE", tasks.display().to_string()),
        ],
        Duration::from_secs(120),
    );
    let by_session = |s: &str| {
        lines
            .iter()
            .find(|l| l["session"] == s)
            .unwrap_or_else(|| panic!("nothing for session {s}: {lines:#?}"))
    };
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let s = by_session("s");
    assert_eq!(
        (s["input"].as_str(), s["kind"].as_str()),
        (Some("blocked"), Some("result"))
    );
    assert_eq!(
        s["content"],
        "Blocked by moderation (spam): the task was not passed to an agent."
    );
    let m = by_session("m");
    assert_eq!(
        (m["input"].as_str(), m["content"].as_str()),
        (Some("maths"), Some("MATHS: 84"))
    );
    let w = by_session("w");
    assert_eq!(w["input"], "writer");
    assert_eq!(w["content"], "WRITER: soft rain on the roof");

    // No LLM routed anything, the spam reached no agent, each agent got only its own task.
    let reqs = mock.requests();
    assert_eq!(
        reqs.len(),
        2,
        "{:#?}",
        reqs.iter().map(|r| r.prompt()).collect::<Vec<_>>()
    );
    assert!(
        reqs.iter()
            .all(|r| !r.prompt().to_lowercase().contains("free money"))
    );
    let asked = |persona: &str| {
        reqs.iter()
            .filter(|r| r.system().contains(persona))
            .map(|r| r.prompt())
            .collect::<Vec<_>>()
    };
    let maths = asked("You are the maths agent.");
    assert_eq!(maths.len(), 1);
    assert!(maths[0].contains("What is 12 * 7?"));
    let writer = asked("You are the writer.");
    assert_eq!(writer.len(), 1);
    assert!(writer[0].contains("haiku"));
}
