//! Observability end to end: dataflows/react.yml under `dora run` exporting its traces to an
//! OTLP receiver (tests::otlp) and serving Prometheus metrics from every node, checked with
//! Debian's `promtool`; and the kernel's counters under `DoraNode::init_testing`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mofa_kernel::metrics::metrics;
use mofa_kernel::node::{Ctx, Failure, Handler};
use mofa_kernel::{Envelope, Kind, Role};
use mofa_tests::dora;
use mofa_tests::harness::{self, envelopes, raw};
use mofa_tests::mock_llm::{MockLlm, Rule, Script, save_then_compute};
use mofa_tests::otlp::{Receiver, Span};

const TASK: &str = "Save a note about otters, then compute 17 * 23.";

/// The react graph's environment: the mock as the model (named `otter-7b`), a sandbox.
fn react_env(mock: &MockLlm, sandbox: &Path) -> Vec<(&'static str, String)> {
    std::fs::create_dir_all(sandbox).unwrap();
    vec![
        ("OPENAI_BASE_URL", mock.base_url()),
        ("MOFA_MODEL", "otter-7b".into()),
        ("MOFA_SANDBOX_DIR", sandbox.display().to_string()),
    ]
}

/// Waits until `ready` holds for the spans received (at most `limit`), then returns them.
fn spans_when(receiver: &Receiver, limit: Duration, ready: impl Fn(&[Span]) -> bool) -> Vec<Span> {
    let since = Instant::now();
    loop {
        let spans = receiver.spans();
        if ready(&spans) || since.elapsed() > limit {
            return spans;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn one_session_is_one_trace_across_every_process_it_crosses() {
    let receiver = Receiver::start();
    let mock = MockLlm::start(save_then_compute(0));
    let dir = tempfile::tempdir().unwrap();
    let mut env = react_env(&mock, &dir.path().join("sandbox"));
    env.push(("MOFA_TASK", TASK.into()));
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()));
    let (lines, run) = dora::run_to_sink("react.yml", &env, Duration::from_secs(90));
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["kind"], "result");
    let session = lines[0]["session"].as_str().unwrap().to_owned();
    let trace = session.replace('-', "");

    // Each node sends what it still holds as it exits; the run has ended, so all has come.
    let spans = spans_when(&receiver, Duration::from_secs(20), |s| {
        s.iter().filter(|s| s.name.starts_with("chat ")).count() == 3
            && s.iter().any(|s| s.service == "sink")
    });
    let in_session: Vec<&Span> = spans.iter().filter(|s| s.trace_id == trace).collect();
    let services: BTreeSet<&str> = in_session.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services,
        BTreeSet::from(["agent", "llm", "sink", "source", "tools"]),
        "the session's trace holds spans of every process it crossed\n{spans:#?}\n{}",
        run.log
    );
    // One trace per session: nothing about this session went anywhere else.
    for s in &spans {
        if s.attr("mofa.session") == session.as_str() {
            assert_eq!(s.trace_id, trace, "{s:#?}");
        }
    }
    let by_id: BTreeMap<&str, &Span> = in_session
        .iter()
        .map(|s| (s.span_id.as_str(), *s))
        .collect();
    let parent = |s: &Span| by_id.get(s.parent_span_id.as_str()).copied();

    // The source started the session: its root span has the id every node derives from it.
    let roots: Vec<&&Span> = in_session
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "{roots:#?}");
    let (_, root_id) = mofa_kernel::telemetry::session_ids(&session);
    assert_eq!(
        (
            roots[0].service.as_str(),
            roots[0].name.as_str(),
            roots[0].span_id.clone()
        ),
        ("source", "session", root_id.to_string())
    );

    // Across processes, a receive is the child of the send it came from.
    let hops = [
        ("agent", "receive task", "source", "send task"),
        ("llm", "receive agent", "agent", "send llm"),
        ("tools", "receive agent", "agent", "send tools"),
        ("agent", "receive tools", "tools", "send agent"),
        ("sink", "receive result", "agent", "send result"),
    ];
    for (service, name, from, sent) in hops {
        let receives: Vec<&&Span> = in_session
            .iter()
            .filter(|s| s.service == service && s.name == name)
            .collect();
        assert!(
            !receives.is_empty(),
            "no `{name}` in {service}: {in_session:#?}"
        );
        for r in receives {
            assert_eq!(r.kind, 5, "a consumer span");
            let p = parent(r).unwrap_or_else(|| panic!("the parent of {r:#?} was not exported"));
            assert_eq!(
                (p.service.as_str(), p.name.as_str()),
                (from, sent),
                "{r:#?}"
            );
            assert_eq!(p.kind, 4, "a producer span");
        }
    }

    // The agent's work on the task is one `invoke_agent` span; what it sends for the task
    // goes under it.
    let invokes: Vec<&&Span> = in_session
        .iter()
        .filter(|s| s.name == "invoke_agent agent")
        .collect();
    assert_eq!(invokes.len(), 1, "{in_session:#?}");
    let invoke = invokes[0];
    assert_eq!(invoke.service, "agent");
    assert_eq!(invoke.attr("gen_ai.operation.name"), "invoke_agent");
    assert_eq!(invoke.attr("gen_ai.agent.name"), "agent");
    assert_eq!(invoke.attr("mofa.steps"), 2);
    assert_eq!(
        parent(invoke).map(|p| p.name.as_str()),
        Some("receive task")
    );
    for s in in_session
        .iter()
        .filter(|s| s.service == "agent" && s.name.starts_with("send "))
    {
        assert_eq!(s.parent_span_id, invoke.span_id, "{s:#?}");
    }

    // The LLM calls, by the GenAI semantic conventions, under the request they answer.
    let chats: Vec<&&Span> = in_session
        .iter()
        .filter(|s| s.name.starts_with("chat "))
        .collect();
    assert_eq!(chats.len(), 3);
    let mut input_tokens = Vec::new();
    for c in &chats {
        assert_eq!(
            (c.service.as_str(), c.name.as_str(), c.kind),
            ("llm", "chat otter-7b", 3)
        );
        assert_eq!(c.attr("gen_ai.operation.name"), "chat");
        assert_eq!(c.attr("gen_ai.provider.name"), "openai");
        assert_eq!(c.attr("gen_ai.request.model"), "otter-7b");
        assert_eq!(c.attr("gen_ai.response.model"), "otter-7b");
        assert_eq!(c.attr("gen_ai.agent.name"), "agent");
        input_tokens.push(
            c.attr("gen_ai.usage.input_tokens")
                .as_u64()
                .expect("input tokens"),
        );
        assert!(c.attr("gen_ai.usage.output_tokens").is_u64(), "{c:#?}");
        let p = parent(c).expect("the chat's parent");
        assert_eq!(
            (p.service.as_str(), p.name.as_str()),
            ("llm", "receive agent")
        );
    }
    let mut asked: Vec<u64> = mock
        .requests()
        .iter()
        .map(|r| u64::from(r.prompt_tokens()))
        .collect();
    input_tokens.sort();
    asked.sort();
    assert_eq!(
        input_tokens, asked,
        "each span has the usage the model reported"
    );
    let total = |key: &str| -> u64 { chats.iter().map(|c| c.attr(key).as_u64().unwrap()).sum() };
    for key in ["gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"] {
        assert_eq!(
            invoke.attr(key).as_u64(),
            Some(total(key)),
            "the task's {key}"
        );
    }
    let reasons: BTreeSet<String> = chats
        .iter()
        .map(|c| c.attr("gen_ai.response.finish_reasons").to_string())
        .collect();
    assert_eq!(
        reasons,
        BTreeSet::from([r#"["stop"]"#.to_owned(), r#"["tool_calls"]"#.to_owned()])
    );
}

#[test]
fn a_failed_llm_call_is_an_error_in_the_sessions_trace() {
    let receiver = Receiver::start();
    let mock = MockLlm::start(Script {
        rules: vec![Rule {
            status: Some(503),
            ..Default::default()
        }],
    });
    let dir = tempfile::tempdir().unwrap();
    let mut env = react_env(&mock, &dir.path().join("sandbox"));
    env.extend([
        ("MOFA_TASK", "What is 17 * 23?".to_owned()),
        ("MOFA_LLM_RETRIES", "0".into()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
    ]);
    let (lines, _) = dora::run_to_sink("react.yml", &env, Duration::from_secs(90));
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["kind"], "error");
    let trace = lines[0]["session"].as_str().unwrap().replace('-', "");
    let spans = spans_when(&receiver, Duration::from_secs(20), |s| {
        s.iter().any(|s| s.service == "sink")
    });
    let named = |name: &str| -> Span {
        spans
            .iter()
            .find(|s| s.trace_id == trace && s.name == name)
            .unwrap_or_else(|| panic!("no {name}: {spans:#?}"))
            .clone()
    };
    let chat = named("chat otter-7b");
    assert_eq!(chat.attr("error.type"), "503");
    assert_eq!(chat.status.0, 2, "an error status: {chat:#?}");
    assert!(chat.status.1.contains("HTTP 503"), "{chat:#?}");
    assert!(chat.attr("gen_ai.usage.input_tokens").is_null());
    let invoke = named("invoke_agent agent");
    assert_eq!(invoke.status.0, 2, "{invoke:#?}");
    assert!(invoke.status.1.contains("LLM failed"), "{invoke:#?}");
    assert_eq!(named("receive error").service, "sink");
}

/// `GET /metrics` from `addr`; the body.
fn scrape(addr: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics port");
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(
        head.to_lowercase().contains("text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_owned()
}

/// `promtool check metrics` on `text`: its verdict and what it said.
fn promtool(text: &str) -> (bool, String) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package, installed by bin/setup)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// The value of the sample `name{labels}` (labels in the text's order: sorted by name).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn every_node_serves_metrics_that_promtool_accepts_with_tokens_and_cost_per_agent() {
    let mock = MockLlm::start(save_then_compute(0));
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks.jsonl");
    // The second task waits two minutes: the graph stays up while the test scrapes it.
    std::fs::write(
        &tasks,
        format!("{{\"task\": \"{TASK}\"}}\n{{\"task\": \"again\"}}\n"),
    )
    .unwrap();
    let sink = dir.path().join("sink.jsonl");
    let mut env = react_env(&mock, &dir.path().join("sandbox"));
    env.extend([
        ("MOFA_TASKS_FILE", tasks.display().to_string()),
        ("MOFA_TASK_INTERVAL_MS", "120000".into()),
        ("MOFA_OUT", sink.display().to_string()),
        ("MOFA_METRICS_ADDR", "127.0.0.1:0".into()),
        // $2.50 per million prompt tokens, $10 per million answer tokens.
        ("MOFA_LLM_PRICE", "2.5,10".into()),
    ]);
    let running = dora::spawn_run(
        &dora::root().join("dataflows/react.yml"),
        &env,
        Duration::from_secs(150),
    );
    let since = Instant::now();
    while dora::sink_lines_lenient(&sink).is_empty() {
        assert!(
            since.elapsed() < Duration::from_secs(90),
            "no result\n{}",
            running.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Each node logs where it serves; dora passes the lines on as they come.
    let served = || -> BTreeSet<String> {
        running
            .log()
            .split("metrics on http://")
            .skip(1)
            .filter_map(|rest| rest.split_once("/metrics").map(|(a, _)| a.to_owned()))
            .collect()
    };
    while served().len() < 5 && since.elapsed() < Duration::from_secs(90) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let addrs = served();
    assert_eq!(
        addrs.len(),
        5,
        "one metrics port per node\n{}",
        running.log()
    );

    let mut all = String::new();
    for addr in &addrs {
        let text = scrape(addr);
        let (ok, said) = promtool(&text);
        assert!(ok, "promtool check metrics on {addr}: {said}\n{text}");
        all.push_str(&text);
    }
    drop(running);

    let value = |series: &str| sample(&all, series).unwrap_or_else(|| panic!("no {series}\n{all}"));
    assert_eq!(
        value(r#"mofa_messages_sent_total{node="source",output="task"}"#),
        1.0
    );
    assert_eq!(
        value(r#"mofa_messages_received_total{input="task",node="agent"}"#),
        1.0
    );
    assert_eq!(
        value(r#"mofa_messages_received_total{input="agent",node="llm"}"#),
        3.0
    );
    // Two tool results (and a catalog more if the agent asked again for one that was late).
    assert!(value(r#"mofa_messages_sent_total{node="tools",output="agent"}"#) >= 2.0);
    assert!(value(r#"mofa_handle_duration_seconds_count{input="tools",node="agent"}"#) >= 2.0);
    assert_eq!(
        value(r#"mofa_messages_received_total{input="result",node="sink"}"#),
        1.0
    );
    assert!(!all.contains("mofa_errors_total{"), "no errors: {all}");

    let reqs = mock.requests();
    let prompt: u32 = reqs.iter().map(|r| r.prompt_tokens()).sum();
    let input =
        value(r#"mofa_llm_tokens_total{agent="agent",model="otter-7b",node="llm",type="input"}"#);
    let output =
        value(r#"mofa_llm_tokens_total{agent="agent",model="otter-7b",node="llm",type="output"}"#);
    assert_eq!(input, f64::from(prompt));
    assert!(output > 0.0);
    let cost = value(r#"mofa_llm_cost_usd_total{agent="agent",model="otter-7b",node="llm"}"#);
    let expected = (input * 2.5 + output * 10.0) / 1e6;
    assert!((cost - expected).abs() < 1e-12, "{cost} vs {expected}");
    assert_eq!(
        value(r#"mofa_llm_request_duration_seconds_count{model="otter-7b",node="llm"}"#),
        3.0
    );
}

/// Answers "ok" on `out`, fails on "boom".
struct Echo;

#[async_trait]
impl Handler for Echo {
    async fn on_message(&self, ctx: &Ctx, _input: &str, msg: Envelope) -> Result<(), Failure> {
        if msg.content == "boom" {
            return Err(Failure::new("boom"));
        }
        ctx.send_one(
            "out",
            msg.reply(Kind::Result, "echo", Role::Assistant, "ok"),
        );
        Ok(())
    }
}

#[test]
fn the_kernel_counts_messages_errors_and_handling_time_of_every_node() {
    let batch = [
        Envelope::task("t", "a"),
        Envelope::task("t", "boom"),
        Envelope::task("t", "b"),
    ];
    harness::run(
        Echo,
        vec![
            envelopes(0.0, "in", &batch),
            raw(0.05, "in", serde_json::json!([1, 2]), None),
        ],
    );
    let text = metrics().render();
    let value =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series}\n{text}"));
    // The malformed array counts as one message in, answered by an error.
    assert_eq!(
        value(r#"mofa_messages_received_total{input="in",node="test-node"}"#),
        4.0
    );
    assert_eq!(
        value(r#"mofa_messages_sent_total{node="test-node",output="out"}"#),
        2.0
    );
    assert_eq!(
        value(r#"mofa_messages_sent_total{node="test-node",output="error"}"#),
        2.0
    );
    assert_eq!(value(r#"mofa_errors_total{node="test-node"}"#), 2.0);
    assert_eq!(
        value(r#"mofa_handle_duration_seconds_count{input="in",node="test-node"}"#),
        3.0
    );
    let (ok, said) = promtool(&text);
    assert!(ok, "{said}\n{text}");
}
