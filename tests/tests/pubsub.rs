//! End to end: dataflows/pubsub.yml under `dora run` against the mock LLM: every item
//! published on the topic reaches every subscriber; answers pair with requests by reply_to.

use std::time::Duration;

use mofa_tests::dora;
use mofa_tests::mock_llm::{MockLlm, Rule, Script};

const SUBSCRIBERS: [&str; 3] = ["summarizer", "critic", "headliner"];

#[test]
fn every_subscriber_answers_every_item_and_replies_pair_with_their_requests() {
    let mock = MockLlm::start(Script {
        rules: SUBSCRIBERS
            .iter()
            .map(|s| Rule {
                matches: format!("You are the {s}."),
                content: Some(format!("{s}: {{last}}")),
                ..Default::default()
            })
            .collect(),
    });
    let dir = tempfile::tempdir().unwrap();
    let items = dir.path().join("items.jsonl");
    std::fs::write(
        &items,
        "{\"task\": \"Rain is forecast for Tuesday.\", \"session\": \"rain\"}\n\
         {\"task\": \"The bridge reopens in May.\", \"session\": \"bridge\"}\n",
    )
    .unwrap();
    let (lines, _) = dora::run_to_sink(
        "pubsub.yml",
        &[
            ("OPENAI_BASE_URL", mock.base_url()),
            ("MOFA_TASKS_FILE", items.display().to_string()),
        ],
        Duration::from_secs(120),
    );
    for (session, item) in [
        ("rain", "Rain is forecast for Tuesday."),
        ("bridge", "The bridge reopens in May."),
    ] {
        let of = |input: &str| -> Vec<&serde_json::Value> {
            lines
                .iter()
                .filter(|l| l["session"] == session && l["input"] == input)
                .collect()
        };
        // Gathered: one result per item, answering the published item, holding all three.
        let gathered = of("result");
        assert_eq!(gathered.len(), 1, "{lines:#?}");
        let item_id = gathered[0]["reply_to"].as_str().unwrap();
        for s in SUBSCRIBERS {
            assert!(
                gathered[0]["content"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("{s}: {item}")),
                "{:#}",
                gathered[0]
            );
            // Each subscriber got the very item published (its answer replies to its id).
            let answers = of(s);
            assert_eq!(answers.len(), 1, "{s} in {session}: {lines:#?}");
            assert_eq!(answers[0]["reply_to"], item_id);
        }
        // Request-response: the bridge's answer to the summarizer names the request.
        let replies = of("summarizer_llm");
        assert_eq!(replies.len(), 1, "{lines:#?}");
        assert_eq!(replies[0]["reply_to"], format!("{item_id}/llm/0"));
        assert_eq!(replies[0]["content"], format!("summarizer: {item}"));
    }
    assert_eq!(mock.requests().len(), 6, "three subscribers × two items");
}
