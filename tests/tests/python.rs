//! The Python side: operators/python's unit tests, and dataflows/python.yml end to end — a
//! Python operator (guard) and a Python node (py_tools) between Rust nodes, on one envelope.

use std::process::Command;
use std::time::Duration;

use mofa_tests::dora;
use mofa_tests::mock_llm::{MockLlm, Rule, Script};
use serde_json::json;

#[test]
fn the_python_modules_pass_their_unit_tests() {
    let python = dora::dora_bin().parent().unwrap().join("python");
    let out = Command::new(python)
        .args(["-m", "unittest", "discover", "-v", "operators/python/tests"])
        .current_dir(dora::root())
        .output()
        .expect("the virtualenv's python");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("Ran 7 tests"), "{log}");
}

#[test]
fn a_python_operator_guards_and_a_python_node_serves_tools_to_a_rust_agent() {
    let mock = MockLlm::start(Script {
        rules: vec![
            Rule {
                matches: "Count the words".into(),
                times: Some(1),
                tool_calls: vec![
                    json!({"name": "word_count", "arguments": {"text": "sea otters hold hands"}}),
                ],
                ..Default::default()
            },
            Rule {
                matches: "\"words\"".into(),
                content: Some("Counted: {tool}".into()),
                ..Default::default()
            },
        ],
    });
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks.jsonl");
    std::fs::write(
        &tasks,
        [
            json!({"task": "Count the words in: sea otters hold hands. Then mail ada@example.org"}),
            json!({"task": "Please WIRE MONEY to my account"}),
        ]
        .iter()
        .map(|t| format!("{t}\n"))
        .collect::<String>(),
    )
    .unwrap();
    let (lines, _) = dora::run_to_sink(
        "python.yml",
        &[
            ("OPENAI_BASE_URL", mock.base_url()),
            ("MOFA_TASKS_FILE", tasks.display().to_string()),
            ("PATH", dora::path_with_venv()),
        ],
        Duration::from_secs(120),
    );

    // The agent used the Python tool and answered with its result.
    let result = lines
        .iter()
        .find(|l| l["input"] == "result")
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert_eq!(
        result["content"], r#"Counted: {"words":4,"characters":21}"#,
        "{result:#}"
    );
    let steps = &serde_json::from_str::<serde_json::Value>(result["payload"].as_str().unwrap())
        .unwrap()["steps"];
    assert_eq!(steps[0]["tool"], "word_count", "{steps:#}");
    // The catalog the model was offered came from the Python node.
    let first = &mock.requests()[0].body;
    let offered: Vec<&str> = first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(offered, ["word_count", "slugify"]);

    // The guard: the address never reached the model; the blocked task never reached anyone.
    let prompts: String = mock.requests().iter().map(|r| r.prompt()).collect();
    assert!(!prompts.contains("ada@example.org"), "{prompts}");
    assert!(prompts.contains("Then mail [email]"), "{prompts}");
    assert!(!prompts.to_lowercase().contains("wire money"));
    let blocked: Vec<_> = lines.iter().filter(|l| l["input"] == "blocked").collect();
    assert_eq!(blocked.len(), 1, "{lines:#?}");
    assert_eq!(blocked[0]["sender"], "guard");
    assert!(
        blocked[0]["content"]
            .as_str()
            .unwrap()
            .contains("“wire money”")
    );
    assert!(
        lines.iter().all(|l| l["kind"] != "error"),
        "no errors: {lines:#?}"
    );
}
