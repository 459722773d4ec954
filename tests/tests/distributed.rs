//! End to end across machines: dataflows/distributed/{react,debate}.yml on a dora cluster of
//! network namespaces (tests::netns) — a coordinator on `coord`, daemons on `gpu`, `edge1` and
//! `edge2` — with the mock LLM served inside `gpu`. Checks the graphs' results, that every node
//! ran in its machine's namespace, and that a machine lost mid-run (its daemon killed) ends the
//! graph with an error naming it instead of a hang. Needs root and iproute2 (bin/setup).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mofa_tests::dora::{self, Guard};
use mofa_tests::mock_llm::{MockLlm, Recorded, Rule, Script, save_then_compute};
use mofa_tests::netns::{self, Cluster};
use serde_json::{Value, json};

const MACHINES: [&str; 3] = ["gpu", "edge1", "edge2"];

/// The folder of the node binaries: this test's own target profile (target/debug).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/debug/deps/<test>")
        .to_owned()
}

/// Builds the node binaries once per test binary: the build line of dataflows/react.yml, the
/// one `cargo test --workspace` makes too. The split dataflows have no build lines.
fn build() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| dora::build("react.yml"));
}

fn yml(name: &str) -> PathBuf {
    dora::root().join("dataflows/distributed").join(name)
}

/// A tag unique to one run, passed to every node (MOFA_TEST_RUN) so the test finds its
/// processes among those of the tests running beside it.
fn tag() -> String {
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("dist-{}-{n}-{}", std::process::id(), now_ms())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A cluster with the mock LLM serving inside `gpu`, at `gpu`'s address.
struct Setup {
    cluster: Cluster,
    mock: MockLlm,
    base_url: String,
    out: tempfile::TempDir,
    tag: String,
}

impl Setup {
    fn new(script: Script) -> Setup {
        build();
        let cluster = Cluster::start(&MACHINES, &bin_dir());
        let mock = cluster.net.run_in("gpu", move || {
            MockLlm::start_with(script, TcpListener::bind("0.0.0.0:0").expect("bind"))
        });
        let base_url = format!(
            "http://{}:{}/v1",
            cluster.net.machine("gpu").ip,
            mock.addr.port()
        );
        Setup {
            cluster,
            mock,
            base_url,
            out: tempfile::tempdir().unwrap(),
            tag: tag(),
        }
    }

    fn sink(&self) -> PathBuf {
        self.out.path().join("sink.jsonl")
    }

    /// `dora start <dataflow> --attach` with the LLM, the sink's file, the run's tag and `env`.
    fn start(&self, dataflow: &str, env: &[(&str, String)]) -> Guard {
        let mut all = vec![
            ("OPENAI_BASE_URL", self.base_url.clone()),
            ("MOFA_OUT", self.sink().display().to_string()),
            ("MOFA_TEST_RUN", self.tag.clone()),
        ];
        all.extend_from_slice(env);
        self.cluster.start_dataflow(&yml(dataflow), &all)
    }

    /// Waits until the mock has a request that `pred` takes.
    fn wait_for_request(&self, what: &str, start: &mut Guard, pred: impl Fn(&Recorded) -> bool) {
        let since = Instant::now();
        while !self.mock.requests().iter().any(&pred) {
            let ended = start.child.try_wait().ok().flatten().is_some();
            assert!(
                since.elapsed() < Duration::from_secs(90) && !ended,
                "{what} never reached the LLM\n{}",
                self.cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asserts that the process of each `(binary, extra env var, machine)` of this run is in
    /// that machine's network namespace (and not the test's own).
    fn assert_placed(&self, nodes: &[(&str, Option<&str>, &str)]) {
        let own = netns::ns_inode_of(std::process::id()).unwrap();
        for (binary, var, machine) in nodes {
            let mut vars = vec![format!("MOFA_TEST_RUN={}", self.tag)];
            vars.extend(var.map(str::to_owned));
            let pids = pids_of(binary, &vars);
            assert_eq!(pids.len(), 1, "one {binary} {var:?}: {pids:?}");
            let inode = netns::ns_inode_of(pids[0]).expect("its namespace");
            assert_eq!(
                inode,
                self.cluster.net.inode(machine),
                "{binary} {var:?} runs on {machine}"
            );
            assert_ne!(inode, own);
        }
    }

    /// Waits for `dora start` to end (at most `limit`); returns how long it took and its log.
    fn finish(&self, mut start: Guard, limit: Duration) -> (Duration, String) {
        let since = Instant::now();
        let status = start.wait(limit);
        let took = since.elapsed();
        drop(start);
        assert!(
            status.is_some(),
            "the dataflow did not end within {limit:?}\n{}",
            self.cluster.logs()
        );
        let log = std::fs::read_to_string(self.cluster.start_log()).unwrap_or_default();
        (took, log)
    }
}

/// The running processes of `binary` whose initial environment holds every one of `vars`.
fn pids_of(binary: &str, vars: &[String]) -> Vec<u32> {
    let (first, rest) = vars.split_first().expect("a var");
    let (k, v) = first.split_once('=').unwrap();
    dora::node_pids(binary, k, v)
        .into_iter()
        .filter(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            rest.iter()
                .all(|var| environ.split(|b| *b == 0).any(|kv| kv == var.as_bytes()))
        })
        .collect()
}

fn payload(line: &Value) -> Value {
    serde_json::from_str(line["payload"].as_str().expect("a payload")).unwrap()
}

fn lines_on<'a>(lines: &'a [Value], input: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["input"] == input).collect()
}

/// Fast heartbeats for the fault tests: a lost machine is noticed in about 3 s, not 10.
fn fast_heartbeats() -> Vec<(&'static str, String)> {
    vec![
        ("MOFA_HEARTBEAT_MS", "300".into()),
        ("MOFA_PEER_TIMEOUT_MS", "3000".into()),
    ]
}

#[test]
fn react_across_three_machines_calls_tools_on_edge2_and_the_model_on_gpu() {
    // The first answer waits 1.5 s: time to look at the processes while every node is up.
    let setup = Setup::new(save_then_compute(1500));
    let sandbox = setup.out.path().join("sandbox");
    std::fs::create_dir(&sandbox).unwrap();
    let mut start = setup.start(
        "react.yml",
        &[
            (
                "MOFA_TASK",
                "Save a note about otters, then compute 17 * 23.".into(),
            ),
            ("MOFA_SANDBOX_DIR", sandbox.display().to_string()),
        ],
    );
    setup.wait_for_request("the task", &mut start, |_| true);
    setup.assert_placed(&[
        ("mofa-agent", None, "edge1"),
        ("mofa-sink", None, "edge1"),
        ("mofa-tools", None, "edge2"),
        ("mofa-llm", None, "gpu"),
    ]);
    let (took, log) = setup.finish(start, Duration::from_secs(90));
    eprintln!("react across machines: {took:?}");

    let lines = dora::sink_lines(&setup.sink());
    assert_eq!(lines.len(), 1, "{lines:#?}\n{log}");
    assert_eq!(lines[0]["kind"], "result", "{log}");
    let answer = lines[0]["content"].as_str().unwrap();
    assert!(
        answer.starts_with("Saved. The product is") && answer.contains("391"),
        "{answer}"
    );
    let tools: Vec<Value> = payload(&lines[0])["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["tool"].clone())
        .collect();
    assert_eq!(tools, [json!("file_write"), json!("calculator")]);
    // The tool ran on edge2 and wrote where it was told; the model was asked three times.
    assert_eq!(
        std::fs::read_to_string(sandbox.join("notes/otters.txt")).unwrap(),
        "Otters hold hands."
    );
    assert_eq!(setup.mock.requests().len(), 3);
    assert!(
        log.contains("inputs from other machines"),
        "the nodes saw the placement:\n{log}"
    );
}

/// The persona line that starts each agent's system prompt in debate.yml.
fn persona(who: &str) -> String {
    if who == "judge" {
        "You are the judge of a debate.".into()
    } else {
        format!("You are the {who} in a debate.")
    }
}

fn caller(r: &Recorded) -> String {
    let system = r.system();
    ["optimist", "skeptic", "pragmatist", "judge"]
        .into_iter()
        .find(|who| system.starts_with(&persona(who)))
        .unwrap_or("unknown")
        .to_owned()
}

fn say(who: &str, content: &str) -> Rule {
    Rule {
        matches: persona(who),
        content: Some(content.into()),
        ..Default::default()
    }
}

#[test]
fn debate_across_three_machines_gives_its_verdict() {
    let mut judge = say("judge", "VERDICT: the pragmatist, across three machines.");
    judge.delay_ms = 1500; // time to look at the processes
    let setup = Setup::new(Script {
        rules: vec![
            say("optimist", "OPTIMIST #{n}"),
            say("skeptic", "SKEPTIC #{n}"),
            say("pragmatist", "PRAGMATIST #{n}"),
            judge,
        ],
    });
    let mut start = setup.start(
        "debate.yml",
        &[("MOFA_TASK", "Should cities ban cars downtown?".into())],
    );
    setup.wait_for_request("the verdict", &mut start, |r| caller(r) == "judge");
    setup.assert_placed(&[
        ("mofa-debate", None, "edge1"),
        ("mofa-agent", Some("MOFA_AGENT_NAME=optimist"), "edge1"),
        ("mofa-agent", Some("MOFA_AGENT_NAME=skeptic"), "edge1"),
        ("mofa-agent", Some("MOFA_AGENT_NAME=pragmatist"), "edge2"),
        ("mofa-agent", Some("MOFA_AGENT_NAME=judge"), "edge2"),
        ("mofa-llm", None, "gpu"),
        ("mofa-sink", None, "edge1"),
    ]);
    let (took, log) = setup.finish(start, Duration::from_secs(90));
    eprintln!("debate across machines: {took:?}");

    let callers: Vec<String> = setup.mock.requests().iter().map(caller).collect();
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
        ]
    );
    let lines = dora::sink_lines(&setup.sink());
    assert!(
        lines.iter().all(|l| l["kind"] != "error"),
        "{lines:#?}\n{log}"
    );
    let turns = lines_on(&lines, "turn");
    assert_eq!(turns.len(), 6, "{lines:#?}");
    assert_eq!(turns[2]["sender"], "pragmatist");
    assert_eq!(turns[2]["content"], "PRAGMATIST #3");
    let verdicts = lines_on(&lines, "verdict");
    assert_eq!(verdicts.len(), 1, "{lines:#?}");
    assert_eq!(verdicts[0]["kind"], "result");
    assert_eq!(
        verdicts[0]["content"],
        "VERDICT: the pragmatist, across three machines."
    );
    assert_eq!(
        payload(verdicts[0])["transcript"].as_array().unwrap().len(),
        6
    );
}

/// How long a graph may take to end after its machine was killed: the peer timeout (3 s), a
/// check period, the nodes' drain and dora's teardown, with room for a loaded machine; far
/// below the LLM's delay (60 s) and the agent's timeout (300 s) that would end it otherwise.
const ENDS_WITHIN: Duration = Duration::from_secs(30);

#[test]
fn react_with_the_gpu_machine_lost_mid_request_ends_with_an_error_naming_it() {
    let mut setup = Setup::new(Script {
        rules: vec![Rule {
            delay_ms: 60_000,
            content: Some("never sent".into()),
            ..Default::default()
        }],
    });
    let mut env = fast_heartbeats();
    env.push(("MOFA_TASK", "What is 17 * 23?".into()));
    let mut start = setup.start("react.yml", &env);
    setup.wait_for_request("the task", &mut start, |_| true);
    setup.cluster.kill_daemon("gpu");
    let killed = Instant::now();
    let killed_at_ms = now_ms();
    let (_, log) = setup.finish(start, ENDS_WITHIN + Duration::from_secs(30));
    let took = killed.elapsed();
    eprintln!("react, gpu lost: ended {took:?} after the kill");
    assert!(took < ENDS_WITHIN, "ended {took:?} after the kill\n{log}");

    let lines = dora::sink_lines(&setup.sink());
    assert_eq!(lines.len(), 1, "{lines:#?}\n{log}");
    let e = &lines[0];
    assert_eq!(e["kind"], "error", "{e}");
    let message = e["content"].as_str().unwrap();
    assert!(
        message.contains("the LLM cannot be reached: machine `gpu` was lost"),
        "{message}"
    );
    assert_eq!(payload(e)["lost"]["machine"], "gpu");
    assert_eq!(payload(e)["lost"]["input"], "llm");
    assert!(e["ts_ms"].as_i64().unwrap() - killed_at_ms < ENDS_WITHIN.as_millis() as i64);
    assert!(
        log.contains("machine `gpu` was lost"),
        "the agent's log names the machine:\n{log}"
    );
}

#[test]
fn debate_with_edge2_lost_mid_turn_ends_with_an_error_naming_it() {
    let mut setup = Setup::new(Script {
        rules: vec![
            say("optimist", "OPTIMIST #{n}"),
            say("skeptic", "SKEPTIC #{n}"),
            Rule {
                matches: persona("pragmatist"),
                delay_ms: 60_000,
                content: Some("PRAGMATIST never heard".into()),
                ..Default::default()
            },
            say("judge", "VERDICT never given"),
        ],
    });
    let mut env = fast_heartbeats();
    env.push(("MOFA_TASK", "Is nuclear power the answer?".into()));
    let mut start = setup.start("debate.yml", &env);
    setup.wait_for_request("the pragmatist's turn", &mut start, |r| {
        caller(r) == "pragmatist"
    });
    setup.cluster.kill_daemon("edge2");
    let killed = Instant::now();
    let (_, log) = setup.finish(start, ENDS_WITHIN + Duration::from_secs(30));
    let took = killed.elapsed();
    eprintln!("debate, edge2 lost: ended {took:?} after the kill");
    assert!(took < ENDS_WITHIN, "ended {took:?} after the kill\n{log}");

    let lines = dora::sink_lines(&setup.sink());
    let verdicts = lines_on(&lines, "verdict");
    assert_eq!(verdicts.len(), 1, "{lines:#?}\n{log}");
    let v = verdicts[0];
    assert_eq!(v["kind"], "error", "{v}");
    let message = v["content"].as_str().unwrap();
    assert!(
        message.contains("debate failed") && message.contains("machine `edge2` was lost"),
        "{message}"
    );
    // The pragmatist, on edge2 too, was absent from its turn for the same reason.
    let absent = &payload(v)["absent"];
    assert_eq!(absent[0]["debater"], "pragmatist", "{v}");
    assert!(
        absent[0]["reason"]
            .as_str()
            .unwrap()
            .contains("machine `edge2` was lost"),
        "{absent}"
    );
    // Nobody was asked after the pragmatist: the judge was lost with it.
    let callers: Vec<String> = setup.mock.requests().iter().map(caller).collect();
    assert_eq!(callers, ["optimist", "skeptic", "pragmatist"]);
    assert!(log.contains("machine `edge2` was lost"), "{log}");
    // The bridge on gpu dropped the call it was making for the lost pragmatist.
    assert!(
        log.contains("dropped: its requester's machine was lost"),
        "{log}"
    );
}
