//! End to end: dataflows/chain.yml under `dora run`, against the mock OpenAI server.

use std::collections::BTreeMap;
use std::time::Duration;

use mofa_tests::dora;
use mofa_tests::mock_llm::{MockLlm, Rule, Script};

fn persona_rule(persona: &str, reply: &str) -> Rule {
    Rule {
        matches: format!("You are the {persona}."),
        content: Some(reply.into()),
        ..Default::default()
    }
}

fn script() -> Script {
    Script {
        rules: vec![
            persona_rule("researcher", "FACTS[{last}] otters use tools"),
            persona_rule("writer", "DRAFT[{last}]"),
            persona_rule("editor", "FINAL[{last}]"),
        ],
    }
}

/// Runs chain.yml under `dora run` with `env` and a sink file; returns the sink's lines and
/// dora's log, after asserting that the run succeeded.
fn run_chain(env: &[(&str, String)], limit: Duration) -> (Vec<serde_json::Value>, String) {
    let (lines, run) = dora::run_to_sink("chain.yml", env, limit);
    (lines, run.log)
}

/// `node <id> started, pid=<n>` lines from the nodes' logs: node id → pid.
fn started_nodes(log: &str) -> BTreeMap<String, u32> {
    log.lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once("node ")?;
            let (id, rest) = rest.split_once(" started, pid=")?;
            Some((id.to_owned(), rest.trim().parse().ok()?))
        })
        .collect()
}

#[test]
fn three_agents_in_a_chain_each_see_the_previous_answer() {
    let mock = MockLlm::start(script());
    let (lines, log) = run_chain(
        &[
            ("OPENAI_BASE_URL", mock.base_url()),
            ("MOFA_TASK", "sea otters".into()),
        ],
        Duration::from_secs(90),
    );

    // The agents were called in chain order, each prompt holding the previous answer.
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 3, "{reqs:#?}");
    let personas: Vec<String> = reqs.iter().map(|r| r.system()).collect();
    assert!(personas[0].starts_with("You are the researcher."));
    assert!(personas[1].starts_with("You are the writer."));
    assert!(personas[2].starts_with("You are the editor."));
    assert!(reqs[0].prompt().contains("sea otters"));
    assert!(
        reqs[1]
            .prompt()
            .contains("FACTS[sea otters] otters use tools")
    );
    assert!(
        reqs[2]
            .prompt()
            .contains("DRAFT[FACTS[sea otters] otters use tools]")
    );
    assert!(reqs[0].end_us <= reqs[1].start_us && reqs[1].end_us <= reqs[2].start_us);

    // The sink got the final answer, in the task's session.
    let finals: Vec<_> = lines.iter().filter(|l| l["input"] == "result").collect();
    assert_eq!(finals.len(), 1, "{lines:#?}");
    assert_eq!(finals[0]["kind"], "result");
    assert_eq!(finals[0]["sender"], "editor");
    assert_eq!(
        finals[0]["content"],
        "FINAL[DRAFT[FACTS[sea otters] otters use tools]]"
    );
    assert!(lines.iter().all(|l| l["kind"] != "error"), "{lines:#?}");
    let senders: Vec<&str> = lines
        .iter()
        .map(|l| l["sender"].as_str().unwrap())
        .collect();
    assert_eq!(
        senders,
        ["researcher", "writer", "editor"],
        "each agent's answer is recorded"
    );

    // dora really ran six processes.
    let nodes = started_nodes(&log);
    let ids: Vec<&str> = nodes.keys().map(String::as_str).collect();
    assert_eq!(
        ids,
        ["editor", "llm", "researcher", "sink", "source", "writer"],
        "{log}"
    );
    let mut pids: Vec<u32> = nodes.values().copied().collect();
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 6, "six distinct processes: {nodes:?}");
    assert!(!pids.contains(&std::process::id()));
}

#[test]
fn several_tasks_flow_through_the_chain_in_their_own_sessions() {
    let mock = MockLlm::start(script());
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks.jsonl");
    std::fs::write(
        &tasks,
        "{\"task\": \"alpha\", \"session\": \"s-alpha\"}\n{\"task\": \"beta\", \"session\": \"s-beta\"}\n{\"task\": \"gamma\"}\n",
    )
    .unwrap();
    let (lines, _) = run_chain(
        &[
            ("OPENAI_BASE_URL", mock.base_url()),
            ("MOFA_TASKS_FILE", tasks.display().to_string()),
        ],
        Duration::from_secs(90),
    );
    assert_eq!(mock.requests().len(), 9);
    let mut finals: Vec<(String, String)> = lines
        .iter()
        .filter(|l| l["input"] == "result")
        .map(|l| {
            (
                l["content"].as_str().unwrap().to_owned(),
                l["session"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    finals.sort();
    assert_eq!(finals.len(), 3, "{lines:#?}");
    assert_eq!(
        finals[0],
        (
            "FINAL[DRAFT[FACTS[alpha] otters use tools]]".into(),
            "s-alpha".into()
        )
    );
    assert_eq!(
        finals[1],
        (
            "FINAL[DRAFT[FACTS[beta] otters use tools]]".into(),
            "s-beta".into()
        )
    );
    assert!(finals[2].0.contains("FACTS[gamma]"));
}

#[test]
fn an_llm_failure_mid_chain_reaches_the_sink_as_an_error_and_the_dataflow_ends() {
    let mut s = script();
    s.rules.insert(
        0,
        Rule {
            matches: "You are the writer.".into(),
            status: Some(400),
            ..Default::default()
        },
    );
    let mock = MockLlm::start(s);
    let (lines, _) = run_chain(
        &[
            ("OPENAI_BASE_URL", mock.base_url()),
            ("MOFA_TASK", "doomed".into()),
        ],
        Duration::from_secs(90),
    );
    let inputs: Vec<&str> = lines.iter().map(|l| l["input"].as_str().unwrap()).collect();
    assert_eq!(inputs, ["researcher", "writer_error"], "{lines:#?}");
    assert_eq!(lines[1]["kind"], "error");
    assert!(lines[1]["content"].as_str().unwrap().contains("HTTP 400"));
    assert_eq!(
        mock.requests().len(),
        2,
        "a 400 is not retried and the editor is never asked"
    );
}

#[test]
fn the_chain_runs_under_dora_up_and_dora_start_with_env_passed_by_flag() {
    dora::build("chain.yml");
    let mock = MockLlm::start(script());
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink.jsonl");
    let run = dora::up_and_start(
        "chain.yml",
        &[
            ("OPENAI_BASE_URL", mock.base_url()),
            ("MOFA_TASK", "river otters".into()),
            ("MOFA_OUT", sink.display().to_string()),
        ],
        Duration::from_secs(90),
    );
    assert!(
        run.status.is_some_and(|s| s.success()),
        "dora start failed:\n{}",
        run.log
    );
    let lines = dora::sink_lines(&sink);
    let last = lines.last().expect("the sink wrote lines");
    assert_eq!(last["input"], "result");
    assert_eq!(
        last["content"],
        "FINAL[DRAFT[FACTS[river otters] otters use tools]]"
    );
    assert_eq!(mock.requests().len(), 3);
}

#[test]
fn the_chain_runs_on_the_embedded_local_model() {
    let (lines, log) = run_chain(
        &[
            ("MOFA_LLM_PROVIDER", "local".into()),
            ("MOFA_TASK", "Why do otters hold hands?".into()),
            ("MOFA_MAX_TOKENS", "40".into()),
            ("MOFA_SEED", "1".into()),
        ],
        Duration::from_secs(240),
    );
    assert!(log.contains("provider local"), "{log}");
    let senders: Vec<&str> = lines
        .iter()
        .map(|l| l["sender"].as_str().unwrap())
        .collect();
    assert_eq!(senders, ["researcher", "writer", "editor"], "{lines:#?}");
    for l in &lines {
        assert_eq!(l["kind"], "result");
        assert!(
            l["content"].as_str().unwrap().trim().len() > 10,
            "a real answer: {l}"
        );
        let payload: serde_json::Value =
            serde_json::from_str(l["payload"].as_str().unwrap()).unwrap();
        assert_eq!(payload["model"], "SmolLM2-135M-Instruct.Q4_1");
        assert!(payload["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    }
}

#[test]
fn with_work_queued_a_critical_task_is_served_before_earlier_normal_ones() {
    // One task at a time per agent, and a slow LLM: the first task runs, the rest queue.
    let mock = MockLlm::start(Script {
        rules: vec![Rule {
            delay_ms: 300,
            ..persona_rule("researcher", "FACTS[{last}]")
        }],
    });
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks.jsonl");
    let lines = [
        r#"{"task": "first normal", "session": "n1"}"#,
        r#"{"task": "second normal", "session": "n2"}"#,
        r#"{"task": "third normal", "session": "n3", "priority": "normal"}"#,
        r#"{"task": "the critical one", "session": "c", "priority": "critical"}"#,
        r#"{"task": "a low one", "session": "l", "priority": "low"}"#,
    ];
    std::fs::write(&tasks, lines.join("\n")).unwrap();
    let (out, log) = run_chain(
        &[
            ("OPENAI_BASE_URL", mock.base_url()),
            ("MOFA_TASKS_FILE", tasks.display().to_string()),
            ("MOFA_MAX_CONCURRENT", "1".into()),
        ],
        Duration::from_secs(120),
    );
    let finals = out.iter().filter(|l| l["input"] == "result").count();
    assert_eq!(finals, 5, "{out:#?}\n{log}");
    let mut researcher: Vec<_> = mock
        .requests()
        .into_iter()
        .filter(|r| r.system().contains("You are the researcher."))
        .collect();
    researcher.sort_by_key(|r| r.start_us);
    let order: Vec<String> = researcher.iter().map(|r| r.prompt()).collect();
    let position = |task: &str| {
        order
            .iter()
            .position(|p| p.contains(task))
            .unwrap_or_else(|| panic!("{task} never reached the LLM: {order:#?}"))
    };
    // The first task starts at once; of those that queued, critical goes first and low last.
    assert_eq!(position("first normal"), 0, "{order:#?}");
    assert_eq!(position("the critical one"), 1, "{order:#?}");
    assert!(
        position("second normal") < position("third normal"),
        "{order:#?}"
    );
    assert_eq!(position("a low one"), 4, "{order:#?}");
    // One at a time: no two researcher requests overlapped.
    for w in researcher.windows(2) {
        assert!(w[0].end_us <= w[1].start_us, "requests overlapped");
    }
}
