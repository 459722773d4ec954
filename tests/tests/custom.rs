//! End to end: dataflows/custom.yml under `dora run` against the mock LLM: the router's LLM
//! picks the agent for each task.

use std::time::Duration;

use mofa_tests::dora;
use mofa_tests::mock_llm::{MockLlm, Rule, Script};
use serde_json::json;

fn choose(task: &str, agent: &str) -> Rule {
    Rule {
        matches: format!("Task: {task}"),
        tool_calls: vec![json!({"name": "choose_agent", "arguments": {"agent": agent}})],
        ..Default::default()
    }
}

#[test]
fn the_llm_sends_maths_to_the_maths_agent_and_writing_to_the_writer() {
    let mock = MockLlm::start(Script {
        rules: vec![
            choose("What is 12 * 7?", "maths"),
            choose("Write a haiku about rain.", "writer"),
            choose("Paint me a sunset.", "painter"),
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
            r#"{"task": "What is 12 * 7?", "session": "m"}"#,
            r#"{"task": "Write a haiku about rain.", "session": "w"}"#,
            r#"{"task": "Paint me a sunset.", "session": "p"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let (lines, _) = dora::run_to_sink(
        "custom.yml",
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
    let m = by_session("m");
    assert_eq!(
        (m["input"].as_str(), m["content"].as_str()),
        (Some("maths"), Some("MATHS: 84"))
    );
    let w = by_session("w");
    assert_eq!(w["input"], "writer");
    assert_eq!(w["content"], "WRITER: soft rain on the roof");
    let p = by_session("p");
    assert_eq!(p["input"], "router_error");
    assert_eq!(p["kind"], "error");
    assert!(
        p["content"]
            .as_str()
            .unwrap()
            .contains("`painter`, which is no route")
    );

    // The router asked with the routes as an enum and a required call; each agent got only
    // its own task.
    let reqs = mock.requests();
    let routing = reqs
        .iter()
        .find(|r| r.prompt().contains("Task: What is 12 * 7?") && r.body["tools"].is_array())
        .expect("a routing request");
    assert_eq!(routing.body["tool_choice"], "required");
    assert_eq!(
        routing.body["tools"][0]["function"]["parameters"]["properties"]["agent"]["enum"],
        json!(["maths", "writer"])
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

#[test]
fn on_the_embedded_local_model_the_router_can_only_choose_a_route() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks.jsonl");
    std::fs::write(
        &tasks,
        "{\"task\": \"What is 12 * 7?\", \"session\": \"m\"}\n\
         {\"task\": \"Write a two-line poem about rain.\", \"session\": \"w\"}\n",
    )
    .unwrap();
    let (lines, run) = dora::run_to_sink(
        "custom.yml",
        &[
            ("MOFA_LLM_PROVIDER", "local".into()),
            ("MOFA_TASKS_FILE", tasks.display().to_string()),
            ("MOFA_MAX_TOKENS", "30".into()),
            ("MOFA_SEED", "1".into()),
        ],
        Duration::from_secs(240),
    );
    assert!(run.log.contains("provider local"), "{}", run.log);
    // The grammar made from the enum leaves the model no choice outside the routes: each
    // task reaches an agent, none becomes a routing error. (Which agent is the 135M
    // model's judgement, not asserted.)
    assert_eq!(lines.len(), 2, "{lines:#?}");
    for l in &lines {
        assert_eq!(l["kind"], "result", "{l:#}");
        assert!(["maths", "writer"].contains(&l["input"].as_str().unwrap()));
        assert!(l["content"].as_str().unwrap().trim().len() > 5, "{l:#}");
    }
}
