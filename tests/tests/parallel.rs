//! End to end: dataflows/parallel.yml under `dora run` against the mock LLM: five agents at
//! once, joined by mofa-aggregate.

use std::time::Duration;

use mofa_tests::dora;
use mofa_tests::mock_llm::{MockLlm, Recorded, Rule, Script};

const AGENTS: [&str; 5] = ["historian", "economist", "engineer", "ethicist", "futurist"];

fn persona(name: &str, delay_ms: u64) -> Rule {
    Rule {
        matches: format!("You are the {name}."),
        delay_ms,
        content: Some(format!("{name} says: {{last}}")),
        ..Default::default()
    }
}

fn run(mock: &MockLlm, env: &[(&str, String)]) -> (Vec<serde_json::Value>, String) {
    let mut env = env.to_vec();
    env.push(("OPENAI_BASE_URL", mock.base_url()));
    env.push(("MOFA_TASK", "Should cities ban cars?".into()));
    let (lines, run) = dora::run_to_sink("parallel.yml", &env, Duration::from_secs(120));
    (lines, run.log)
}

fn agent_requests(mock: &MockLlm) -> Vec<(String, Recorded)> {
    mock.requests()
        .into_iter()
        .filter_map(|r| {
            let who = AGENTS
                .iter()
                .find(|a| r.system().contains(&format!("You are the {a}.")))?;
            Some((who.to_string(), r))
        })
        .collect()
}

#[test]
fn five_agents_work_at_once_and_a_slow_one_is_timed_out_but_the_quorum_answers() {
    let mut rules: Vec<Rule> = AGENTS[..4].iter().map(|a| persona(a, 600)).collect();
    rules.push(persona("futurist", 8000));
    rules.push(Rule {
        matches: "You merge the answers".into(),
        content: Some("MERGED: cars out, trams in".into()),
        ..Default::default()
    });
    let mock = MockLlm::start(Script { rules });
    let (lines, log) = run(
        &mock,
        &[
            ("MOFA_STRATEGY", "summarize".into()),
            ("MOFA_QUORUM", "4".into()),
            ("MOFA_AGGREGATE_TIMEOUT_MS", "3000".into()),
        ],
    );

    // All five were asked, and their requests were in flight at the same time.
    let reqs = agent_requests(&mock);
    assert_eq!(reqs.len(), 5, "{reqs:#?}");
    let last_start = reqs.iter().map(|(_, r)| r.start_us).max().unwrap();
    let first_end = reqs.iter().map(|(_, r)| r.end_us).min().unwrap();
    assert!(
        last_start < first_end,
        "the five requests did not overlap: last start {last_start} ≥ first end {first_end}"
    );

    // One result: the summary of the four answers that came in time.
    assert_eq!(lines.len(), 1, "{lines:#?}\n{log}");
    let result = &lines[0];
    assert_eq!(result["kind"], "result", "{result:#}");
    assert_eq!(result["content"], "MERGED: cars out, trams in");
    let payload: serde_json::Value =
        serde_json::from_str(result["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["missing"], serde_json::json!(["futurist"]));
    assert_eq!(payload["answers"].as_array().unwrap().len(), 4);

    // The summarizer saw those four answers, and not the late one.
    let merge = mock
        .requests()
        .into_iter()
        .find(|r| r.system().contains("You merge the answers"))
        .expect("a summary request");
    let prompt = merge.prompt();
    for a in &AGENTS[..4] {
        assert!(prompt.contains(&format!("{a} says:")), "{prompt}");
    }
    assert!(!prompt.contains("futurist says:"));
}

#[test]
fn without_a_quorum_in_time_the_sink_gets_a_clear_error() {
    let mut rules: Vec<Rule> = AGENTS[..3].iter().map(|a| persona(a, 0)).collect();
    rules.push(persona("ethicist", 6000));
    rules.push(persona("futurist", 6000));
    let mock = MockLlm::start(Script { rules });
    let (lines, log) = run(
        &mock,
        &[
            ("MOFA_QUORUM", "4".into()),
            ("MOFA_AGGREGATE_TIMEOUT_MS", "1500".into()),
        ],
    );
    let results: Vec<_> = lines.iter().filter(|l| l["input"] == "result").collect();
    assert_eq!(results.len(), 1, "{lines:#?}\n{log}");
    assert_eq!(results[0]["kind"], "error");
    let text = results[0]["content"].as_str().unwrap();
    assert!(text.contains("quorum not reached: 3 of 4"), "{text}");
    assert!(
        text.contains("ethicist") && text.contains("futurist"),
        "{text}"
    );
}

#[test]
fn vote_returns_the_answer_most_agents_gave() {
    let answer = |name: &str, text: &str| Rule {
        matches: format!("You are the {name}."),
        content: Some(text.into()),
        ..Default::default()
    };
    let mock = MockLlm::start(Script {
        rules: vec![
            answer("historian", "Yes."),
            answer("economist", "no"),
            answer("engineer", "yes"),
            answer("ethicist", "It depends"),
            answer("futurist", "YES"),
        ],
    });
    let (lines, log) = run(&mock, &[("MOFA_STRATEGY", "vote".into())]);
    assert_eq!(lines.len(), 1, "{lines:#?}\n{log}");
    // The form given first wins among equals: which agent was first varies.
    let winner = lines[0]["content"].as_str().unwrap();
    assert_eq!(
        winner.trim_end_matches('.').to_lowercase(),
        "yes",
        "{winner}"
    );
    let payload: serde_json::Value =
        serde_json::from_str(lines[0]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["tally"]["votes"], 3);
}
