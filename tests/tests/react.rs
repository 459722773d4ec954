//! End to end: dataflows/react.yml under `dora run` — an agent using real tools.

use std::time::Duration;

use mofa_tests::dora;
use mofa_tests::mock_llm::{MockLlm, save_then_compute};

#[test]
fn the_agent_calls_two_tools_in_turn_and_answers_with_their_results() {
    // The mock plays the model: write a file, then compute, then answer quoting the result.
    let mock = MockLlm::start(save_then_compute(0));
    let dir = tempfile::tempdir().unwrap();
    let sandbox = dir.path().join("sandbox");
    std::fs::create_dir(&sandbox).unwrap();
    let (lines, _) = dora::run_to_sink(
        "react.yml",
        &[
            ("OPENAI_BASE_URL", mock.base_url()),
            (
                "MOFA_TASK",
                "Save a note about otters, then compute 17 * 23.".into(),
            ),
            ("MOFA_SANDBOX_DIR", sandbox.display().to_string()),
        ],
        Duration::from_secs(90),
    );

    // The tools really ran: the file is in the sandbox, the product in the answer.
    assert_eq!(
        std::fs::read_to_string(sandbox.join("notes/otters.txt")).unwrap(),
        "Otters hold hands."
    );
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["kind"], "result");
    let answer = lines[0]["content"].as_str().unwrap();
    assert!(
        answer.starts_with("Saved. The product is") && answer.contains("391"),
        "{answer}"
    );
    let payload: serde_json::Value =
        serde_json::from_str(lines[0]["payload"].as_str().unwrap()).unwrap();
    let steps = payload["steps"].as_array().unwrap();
    let tools: Vec<&str> = steps.iter().map(|s| s["tool"].as_str().unwrap()).collect();
    assert_eq!(tools, ["file_write", "calculator"]);
    assert!(steps.iter().all(|s| s["ok"] == true));

    // The model was offered the catalog and saw each observation.
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 3);
    let offered: Vec<&str> = reqs[0].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert!(
        offered.contains(&"calculator") && offered.contains(&"file_write"),
        "{offered:?}"
    );
    assert!(reqs[2].prompt().contains("391"));
}

#[test]
fn react_runs_on_the_local_model_with_grammar_constrained_tool_calls() {
    let (lines, _) = dora::run_to_sink(
        "react.yml",
        &[
            ("MOFA_LLM_PROVIDER", "local".into()),
            ("MOFA_TOOLS", "calculator,clock,json_query".into()),
            (
                "MOFA_TASK",
                "What is 17 * 23? Use the calculator tool.".into(),
            ),
            ("MOFA_MAX_STEPS", "3".into()),
            // One thread: the same sums in the same order, so greedy decoding picks the same
            // tokens on every run (with two, rounding can tip the 135M model's first choice).
            ("MOFA_THREADS", "1".into()),
        ],
        Duration::from_secs(240),
    );
    assert_eq!(lines.len(), 1, "one outcome for the task: {lines:#?}");
    // Whatever the 135M model makes of it, its calls were well-formed and really ran.
    let payload: serde_json::Value =
        serde_json::from_str(lines[0]["payload"].as_str().unwrap()).unwrap();
    let steps = payload["steps"].as_array().expect("the steps are recorded");
    assert!(!steps.is_empty(), "the model called a tool: {payload}");
    let first = &steps[0];
    assert_eq!(first["tool"], "calculator", "{payload}");
    assert_eq!(
        first["ok"], true,
        "the arguments passed the schema and the tool ran: {payload}"
    );
    let observed: serde_json::Value =
        serde_json::from_str(first["observation"].as_str().unwrap()).unwrap();
    assert!(observed["value"].is_number());
}
