//! End to end: dataflows/debate.yml under `dora run`, against the mock OpenAI server — three
//! debater agents in turns for two rounds, a judge, one LLM bridge; and a debater process
//! killed mid-debate.

use std::path::Path;
use std::time::{Duration, Instant};

use mofa_tests::dora;
use mofa_tests::mock_llm::{MockLlm, Recorded, Rule, Script};
use serde_json::Value;

const DEBATERS: [&str; 3] = ["optimist", "skeptic", "pragmatist"];

/// The persona line that starts each agent's system prompt in debate.yml.
fn persona(who: &str) -> String {
    if who == "judge" {
        "You are the judge of a debate.".into()
    } else {
        format!("You are the {who} in a debate.")
    }
}

fn rule(who: &str, times: Option<u32>, content: &str) -> Rule {
    Rule {
        matches: persona(who),
        times,
        content: Some(content.into()),
        ..Default::default()
    }
}

/// Which agent made the request, by its persona.
fn caller(r: &Recorded) -> &'static str {
    let system = r.system();
    ["optimist", "skeptic", "pragmatist", "judge"]
        .into_iter()
        .find(|who| system.starts_with(&persona(who)))
        .unwrap_or_else(|| panic!("an unknown caller: {system}"))
}

fn payload(line: &Value) -> Value {
    serde_json::from_str(line["payload"].as_str().expect("a payload")).unwrap()
}

/// The transcript of a verdict line as (round, debater, content).
fn transcript(line: &Value) -> Vec<(u64, String, String)> {
    payload(line)["transcript"]
        .as_array()
        .expect("a transcript")
        .iter()
        .map(|t| {
            (
                t["round"].as_u64().unwrap(),
                t["debater"].as_str().unwrap().to_owned(),
                t["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn lines_on<'a>(lines: &'a [Value], input: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["input"] == input).collect()
}

fn run_debate(env: &[(&str, String)], sink: &Path, limit: Duration) -> (dora::Finished, Duration) {
    let mut env = env.to_vec();
    env.push(("MOFA_OUT", sink.display().to_string()));
    let started = Instant::now();
    let run = dora::run("debate.yml", &env, limit);
    (run, started.elapsed())
}

#[test]
fn three_debaters_speak_in_turn_for_two_rounds_and_the_judge_gives_a_reasoned_verdict() {
    // A distinct answer for every debater and round, so each prompt can be checked for them.
    let answers = |who: &str| {
        let tag = who.to_uppercase();
        (format!("{tag}-R1 opening"), format!("{tag}-R2 rebuttal"))
    };
    let mut rules = Vec::new();
    for who in DEBATERS {
        let (r1, r2) = answers(who);
        rules.push(rule(who, Some(1), &r1));
        rules.push(rule(who, Some(1), &r2));
    }
    rules.push(rule(
        "judge",
        None,
        "VERDICT: the pragmatist wins, because the plan answered both sides.",
    ));
    let mock = MockLlm::start(Script { rules });
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink.jsonl");
    let (run, _) = run_debate(
        &[
            ("OPENAI_BASE_URL", mock.base_url()),
            ("MOFA_TASK", "Should cities ban cars downtown?".into()),
        ],
        &sink,
        Duration::from_secs(90),
    );
    assert!(
        run.status.is_some_and(|s| s.success()),
        "dora run failed:\n{}",
        run.log
    );

    // Exactly 6 debater calls in strict turn order, then 1 judge call, one after the other.
    let reqs = mock.requests();
    let callers: Vec<&str> = reqs.iter().map(caller).collect();
    assert_eq!(
        callers,
        [
            "optimist",
            "skeptic",
            "pragmatist",
            "optimist",
            "skeptic",
            "pragmatist",
            "judge"
        ],
        "{reqs:#?}"
    );
    for pair in reqs.windows(2) {
        assert!(
            pair[0].end_us <= pair[1].start_us,
            "turn {} began before turn {} was answered",
            pair[1].n,
            pair[0].n
        );
    }
    // Memory window 1: each agent sees its persona and the moderator's turn, nothing else.
    for r in &reqs {
        let messages = r.body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 2, "{:#?}", r.body);
        assert!(
            r.prompt().contains("Should cities ban cars downtown?"),
            "{}",
            r.prompt()
        );
    }
    // Round 2 sees all three round-1 answers; the judge sees all six, labelled.
    for r in &reqs[3..6] {
        for who in DEBATERS {
            let label = format!("[round 1] {who}: {}", answers(who).0);
            assert!(r.prompt().contains(&label), "{label} in\n{}", r.prompt());
        }
    }
    assert!(
        reqs[5]
            .prompt()
            .contains("[round 2] skeptic: SKEPTIC-R2 rebuttal")
    );
    let judge = reqs[6].prompt();
    for who in DEBATERS {
        let (r1, r2) = answers(who);
        assert!(judge.contains(&format!("[round 1] {who}: {r1}")), "{judge}");
        assert!(judge.contains(&format!("[round 2] {who}: {r2}")), "{judge}");
    }
    assert!(judge.contains("give your verdict"));

    // The sink got every turn as it happened, then the verdict with the transcript.
    let lines = dora::sink_lines(&sink);
    assert!(
        lines.iter().all(|l| l["kind"] != "error"),
        "{lines:#?}\n{}",
        run.log
    );
    let turns: Vec<(u64, &str, &str)> = lines_on(&lines, "turn")
        .iter()
        .map(|l| {
            (
                l["round"].as_u64().unwrap(),
                l["sender"].as_str().unwrap(),
                l["content"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(turns.len(), 6, "{lines:#?}");
    assert_eq!(turns[0], (1, "optimist", "OPTIMIST-R1 opening"));
    assert_eq!(turns[5], (2, "pragmatist", "PRAGMATIST-R2 rebuttal"));
    let verdicts = lines_on(&lines, "verdict");
    assert_eq!(verdicts.len(), 1, "{lines:#?}");
    let v = verdicts[0];
    assert_eq!(v["kind"], "result");
    assert_eq!(
        v["content"],
        "VERDICT: the pragmatist wins, because the plan answered both sides."
    );
    assert_eq!(v["round"], 2);
    let t = transcript(v);
    assert_eq!(t.len(), 6);
    assert_eq!(
        t[4],
        (2, "skeptic".to_owned(), "SKEPTIC-R2 rebuttal".to_owned())
    );
    let p = payload(v);
    assert_eq!(p["topic"], "Should cities ban cars downtown?");
    assert_eq!(p["absent"], serde_json::json!([]));
    assert_eq!(
        lines.last().unwrap()["input"],
        "verdict",
        "the verdict comes after the turns"
    );
}

#[test]
fn two_topics_debate_concurrently_in_their_own_sessions() {
    // Every answer is unique ({n}: the request's number), so each can be traced to its call.
    let mut rules: Vec<Rule> = DEBATERS
        .iter()
        .map(|who| rule(who, None, &format!("{who} answer #{{n}}")))
        .collect();
    rules.push(rule("judge", None, "verdict #{n}"));
    let mock = MockLlm::start(Script { rules });
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("topics.jsonl");
    std::fs::write(
        &tasks,
        "{\"task\": \"TOPIC-MARS\", \"session\": \"mars\"}\n{\"task\": \"TOPIC-MOON\", \"session\": \"moon\"}\n",
    )
    .unwrap();
    let sink = dir.path().join("sink.jsonl");
    let (run, _) = run_debate(
        &[
            ("OPENAI_BASE_URL", mock.base_url()),
            ("MOFA_TASKS_FILE", tasks.display().to_string()),
        ],
        &sink,
        Duration::from_secs(90),
    );
    assert!(
        run.status.is_some_and(|s| s.success()),
        "dora run failed:\n{}",
        run.log
    );
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 14, "2 × (6 turns + 1 verdict)");
    let lines = dora::sink_lines(&sink);
    let verdicts = lines_on(&lines, "verdict");
    assert_eq!(verdicts.len(), 2, "{lines:#?}");
    for v in verdicts {
        let topic = payload(v)["topic"].as_str().unwrap().to_owned();
        let session = if topic == "TOPIC-MARS" {
            "mars"
        } else {
            "moon"
        };
        assert_eq!(v["session"], session);
        // Every answer in this transcript came from a call about this topic.
        let t = transcript(v);
        assert_eq!(t.len(), 6);
        for (_, who, content) in &t {
            let n: usize = content
                .strip_prefix(&format!("{who} answer #"))
                .unwrap_or_else(|| panic!("{content}"))
                .parse()
                .unwrap();
            assert!(reqs[n - 1].prompt().contains(&topic), "{content}");
        }
        let n: usize = v["content"]
            .as_str()
            .unwrap()
            .strip_prefix("verdict #")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(caller(&reqs[n - 1]), "judge");
        assert!(reqs[n - 1].prompt().contains(&topic));
    }
}

/// The pids of the processes whose environment holds every one of `vars`.
///
/// How the test finds the debater to kill: every node of one `dora run` inherits the test's
/// environment, so a tag unique to the run (MOFA_TEST_RUN) picks out its processes, and the
/// agent name the YAML gives the node (MOFA_AGENT_NAME) picks out the one. Both are in the
/// process's initial environment, /proc/<pid>/environ. Command lines would not do: all four
/// agents run the same binary with the same arguments.
fn pids_with_env(vars: &[String]) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let has = |var: &String| environ.split(|b| *b == 0).any(|kv| kv == var.as_bytes());
        if vars.iter().all(has) {
            pids.push(pid);
        }
    }
    pids
}

/// Runs debate.yml with the skeptic's first answer held back by the mock, kills the skeptic's
/// process while its turn is open, and lets the debate finish.
fn debate_with_the_skeptic_killed(on_absent: &str) -> Killed {
    let mock = MockLlm::start(Script {
        rules: vec![
            // Long enough to kill the process mid-turn; far shorter than the turn timeout
            // (default 120 s), so an answer that came anyway would show in the transcript.
            Rule {
                matches: persona("skeptic"),
                delay_ms: 8000,
                content: Some("SKEPTIC never heard".into()),
                ..Default::default()
            },
            rule("optimist", None, "OPTIMIST #{n}"),
            rule("pragmatist", None, "PRAGMATIST #{n}"),
            rule("judge", None, "VERDICT without the skeptic"),
        ],
    });
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink.jsonl");
    // Unique to this run, even among the runs of this test binary's parallel tests.
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run_no = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tag = format!("debate-{}-{run_no}-{}", std::process::id(), now_ms());
    let env = vec![
        ("OPENAI_BASE_URL", mock.base_url()),
        ("MOFA_TASK", "Is nuclear power the answer?".into()),
        ("MOFA_ON_ABSENT", on_absent.into()),
        ("MOFA_TEST_RUN", tag.clone()),
    ];
    let sink_path = sink.clone();
    let runner = std::thread::spawn(move || run_debate(&env, &sink_path, Duration::from_secs(90)));

    // Wait for the skeptic's turn to reach the LLM, then kill the skeptic's process.
    let asked = Instant::now();
    while !mock.requests().iter().any(|r| caller(r) == "skeptic") {
        assert!(
            asked.elapsed() < Duration::from_secs(60) && !runner.is_finished(),
            "the skeptic was never asked"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pids = pids_with_env(&[
        format!("MOFA_TEST_RUN={tag}"),
        "MOFA_AGENT_NAME=skeptic".into(),
    ]);
    assert_eq!(pids.len(), 1, "one skeptic process: {pids:?}");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pids[0].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let killed_at_ms = now_ms();

    let (run, took) = runner.join().unwrap();
    // A killed node makes `dora run` report a failure, so its exit status is not asserted:
    // what matters is what reached the sink and that the run ended in bounded time.
    let lines = dora::sink_lines(&sink);
    assert!(!lines.is_empty(), "the sink wrote nothing:\n{}", run.log);
    Killed {
        lines,
        reqs: mock.requests(),
        took,
        killed_at_ms,
    }
}

struct Killed {
    /// What the sink wrote.
    lines: Vec<Value>,
    reqs: Vec<Recorded>,
    /// How long `dora run` took.
    took: Duration,
    /// When the skeptic was killed, Unix milliseconds (as the envelopes' `ts_ms`).
    killed_at_ms: i64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// How long after the kill the sink's line was made. Acted on at once, it is a fraction of a
/// second; the bound (6 s) leaves room for a loaded machine and is still far below the 120 s
/// turn timeout that would otherwise have moved the debate on.
fn after_kill(k: &Killed, line: &Value) -> Duration {
    Duration::from_millis((line["ts_ms"].as_i64().unwrap() - k.killed_at_ms).max(0) as u64)
}

#[test]
fn a_killed_debater_is_recorded_absent_and_the_debate_goes_on_with_skip() {
    let k = debate_with_the_skeptic_killed("skip");
    let (lines, reqs) = (&k.lines, &k.reqs);
    // Not the 90 s limit, nor the 120 s turn timeout: the closed input moved the debate on.
    assert!(
        k.took < Duration::from_secs(45),
        "dora run took {:?}",
        k.took
    );
    let callers: Vec<&str> = reqs.iter().map(caller).collect();
    assert_eq!(
        callers,
        [
            "optimist",
            "skeptic",
            "pragmatist",
            "optimist",
            "pragmatist",
            "judge"
        ],
        "the skeptic is not asked again"
    );
    // The pragmatist was asked at once, not after the skeptic's held-back answer would have come.
    assert!(
        reqs[2].start_us < reqs[1].start_us + 8_000_000,
        "{} µs after the skeptic's call",
        reqs[2].start_us - reqs[1].start_us
    );
    assert!(reqs[2].prompt().contains("[round 1] skeptic: (absent)"));

    let absent_turn = lines_on(lines, "turn")
        .into_iter()
        .find(|l| l["sender"] == "skeptic")
        .expect("the skeptic's turn is published");
    assert_eq!(absent_turn["content"], "(absent)");
    let delay = after_kill(&k, absent_turn);
    assert!(
        delay < Duration::from_secs(6),
        "recorded {delay:?} after the kill"
    );

    let verdicts = lines_on(lines, "verdict");
    assert_eq!(verdicts.len(), 1, "{lines:#?}");
    let v = verdicts[0];
    assert_eq!(v["kind"], "result");
    assert_eq!(v["content"], "VERDICT without the skeptic");
    let t = transcript(v);
    let skeptic: Vec<&str> = t
        .iter()
        .filter(|(_, who, _)| who == "skeptic")
        .map(|(_, _, c)| c.as_str())
        .collect();
    assert_eq!(skeptic, ["(absent)", "(absent)"]);
    assert_eq!(t.len(), 6);
    let absent = &payload(v)["absent"];
    assert_eq!(absent[0]["debater"], "skeptic");
    let reason = absent[0]["reason"].as_str().unwrap();
    assert!(reason.contains("closed"), "{reason}");
}

#[test]
fn a_killed_debater_fails_the_debate_with_a_clear_error_with_fail() {
    let k = debate_with_the_skeptic_killed("fail");
    let (lines, reqs) = (&k.lines, &k.reqs);
    assert!(
        k.took < Duration::from_secs(45),
        "dora run took {:?}",
        k.took
    );
    let callers: Vec<&str> = reqs.iter().map(caller).collect();
    assert_eq!(callers, ["optimist", "skeptic"], "nobody is asked after");
    let verdicts = lines_on(lines, "verdict");
    assert_eq!(verdicts.len(), 1, "{lines:#?}");
    let v = verdicts[0];
    assert_eq!(v["kind"], "error");
    let delay = after_kill(&k, v);
    assert!(
        delay < Duration::from_secs(6),
        "failed {delay:?} after the kill"
    );
    let message = v["content"].as_str().unwrap();
    assert!(
        message.contains("debater `skeptic` is absent in round 1") && message.contains("closed"),
        "{message}"
    );
    assert_eq!(
        lines_on(lines, "moderator_error")[0]["id"],
        v["id"],
        "the same error on the moderator's `error`"
    );
    assert_eq!(
        transcript(v),
        [(1, "optimist".to_owned(), "OPTIMIST #1".to_owned())]
    );
}

#[test]
fn the_debate_runs_on_the_embedded_local_model() {
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink.jsonl");
    let (run, _) = run_debate(
        &[
            ("MOFA_LLM_PROVIDER", "local".into()),
            (
                "MOFA_TASK",
                "Should cities ban cars from their centres?".into(),
            ),
            ("MOFA_MAX_TOKENS", "40".into()),
            ("MOFA_SEED", "1".into()),
            // One thread: the same sums in the same order, so every run decodes the same.
            ("MOFA_THREADS", "1".into()),
        ],
        &sink,
        Duration::from_secs(300),
    );
    assert!(
        run.status.is_some_and(|s| s.success()),
        "dora run failed:\n{}",
        run.log
    );
    assert!(run.log.contains("provider local"), "{}", run.log);
    let lines = dora::sink_lines(&sink);
    assert!(lines.iter().all(|l| l["kind"] != "error"), "{lines:#?}");
    let turns = lines_on(&lines, "turn");
    assert_eq!(turns.len(), 6, "{lines:#?}");
    for t in &turns {
        let text = t["content"].as_str().unwrap();
        assert!(
            text.trim().len() > 10 && text != "(absent)",
            "a real turn: {t}"
        );
    }
    let verdicts = lines_on(&lines, "verdict");
    assert_eq!(verdicts.len(), 1, "{lines:#?}");
    assert!(verdicts[0]["content"].as_str().unwrap().trim().len() > 10);
    assert_eq!(transcript(verdicts[0]).len(), 6);
}
