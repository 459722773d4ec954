//! End to end: dataflows/react.yml under `dora run` with Rhai tools from MOFA_TOOLS_DIR — the
//! model is offered the tool with the schema its declaration generates, calls it, and answers
//! with what the script computed.

use std::time::Duration;

use mofa_tests::dora;
use mofa_tests::mock_llm::{MockLlm, Rule, Script};
use serde_json::json;

#[test]
fn the_agent_is_offered_a_rhai_tool_calls_it_and_answers_with_its_result() {
    let mock = MockLlm::start(Script {
        rules: vec![
            Rule {
                matches: "gold customer".into(),
                times: Some(1),
                tool_calls: vec![
                    json!({"name": "discount", "arguments": {"price": 120, "tier": "gold"}}),
                ],
                ..Default::default()
            },
            Rule {
                matches: "\"rate\"".into(),
                content: Some("With the discount: {tool}".into()),
                ..Default::default()
            },
        ],
    });
    // A copy: the node watches the folder, and the test must not depend on the repo's state.
    let tools = tempfile::tempdir().unwrap();
    for f in ["discount.rhai", "word_count.rhai"] {
        std::fs::copy(
            dora::root().join("scripts/tools").join(f),
            tools.path().join(f),
        )
        .unwrap();
    }
    let (lines, _) = dora::run_to_sink(
        "react.yml",
        &[
            ("OPENAI_BASE_URL", mock.base_url()),
            (
                "MOFA_TASK",
                "What does a gold customer pay for a 120 EUR order?".into(),
            ),
            ("MOFA_TOOLS", "calculator".into()),
            ("MOFA_TOOLS_DIR", tools.path().display().to_string()),
        ],
        Duration::from_secs(90),
    );

    // The model was offered the Rhai tools, with the schemas their declarations generate.
    let reqs = mock.requests();
    let offered = reqs[0].body["tools"].as_array().unwrap();
    let names: Vec<&str> = offered
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["calculator", "discount", "word_count"]);
    let discount = &offered[1]["function"];
    assert_eq!(
        discount["description"],
        "The price after the discount of a customer tier (gold 20%, silver 10%)."
    );
    assert_eq!(
        discount["parameters"],
        json!({
            "type": "object",
            "properties": {
                "price": {"type": "number", "minimum": 0, "description": "The price before the discount"},
                "tier": {"type": "string", "enum": ["gold", "silver"], "description": "The customer's tier"},
            },
            "required": ["price", "tier"],
            "additionalProperties": false,
        })
    );

    // The script ran: its result came back as the observation and is quoted in the answer.
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["kind"], "result");
    let answer = lines[0]["content"].as_str().unwrap();
    assert!(answer.starts_with("With the discount:"), "{answer}");
    let quoted: serde_json::Value =
        serde_json::from_str(answer.trim_start_matches("With the discount:").trim()).unwrap();
    assert_eq!(quoted, json!({"price": 96.0, "tier": "gold", "rate": 0.2}));
    let payload: serde_json::Value =
        serde_json::from_str(lines[0]["payload"].as_str().unwrap()).unwrap();
    let steps = payload["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "{payload}");
    assert_eq!(
        (&steps[0]["tool"], &steps[0]["ok"]),
        (&json!("discount"), &json!(true))
    );
    assert_eq!(reqs.len(), 2);
}
