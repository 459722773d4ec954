//! mofa-dashboard without a daemon: the graph it reads from dataflows/dashboard.yml, the
//! figures it adds up (rates, latest per edge, tokens per agent, errors), the handler under the
//! kernel harness with hostile input, and its HTTP API and event stream on a free port.

use std::thread;
use std::time::{Duration, Instant};

use mofa_dashboard::board::{Board, PREVIEW_CHARS, RATE_WINDOW_MS, preview};
use mofa_dashboard::graph::Graph;
use mofa_dashboard::{DashboardConfig, DashboardNode};
use mofa_kernel::{Envelope, Kind, Role};
use mofa_tests::harness::{self, closed, envelope, on, raw};
use serde_json::{Value, json};

/// dataflows/dashboard.yml as JSON, the shape of dora's descriptor.
fn dashboard_yml() -> Value {
    let path = mofa_tests::dora::root().join("dataflows/dashboard.yml");
    let text = std::fs::read_to_string(&path).expect("dataflows/dashboard.yml");
    serde_yaml::from_str(&text).expect("YAML")
}

fn graph() -> Graph {
    Graph::from_descriptor("dashboard", &dashboard_yml())
}

/// An LLM answer as mofa-llm sends it (`ChatResponse::to_envelope`), with extra payload fields.
fn llm_answer(text: &str, prompt: u64, completion: u64, extra: Value) -> Envelope {
    let task = Envelope::task("source", "q");
    let mut payload = json!({
        "tool_calls": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion},
        "model": "mock-model",
        "finish_reason": "stop",
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        payload[k] = v.clone();
    }
    task.reply(Kind::Message, "llm", Role::Assistant, text)
        .with_payload(&payload)
}

fn error_from(sender: &str, text: &str) -> Envelope {
    Envelope::task("source", "q").error_reply(sender, text, json!({}))
}

#[test]
fn the_graph_is_the_whole_dataflow_with_each_input_mapped_to_the_edge_it_taps() {
    let g = graph();
    let nodes: Vec<(&str, usize)> = g.nodes.iter().map(|n| (n.id.as_str(), n.depth)).collect();
    // Columns by depth from the source; the agent ↔ llm and agent ↔ tools cycles do not push
    // anything further right. The dashboard is not drawn.
    assert_eq!(
        nodes,
        [
            ("source", 0),
            ("agent", 1),
            ("tools", 2),
            ("llm", 2),
            ("sink", 2)
        ]
    );
    let mut edges: Vec<&str> = g.edges.iter().map(|e| e.id.as_str()).collect();
    edges.sort();
    assert_eq!(
        edges,
        [
            "agent/error->sink/error",
            "agent/llm->llm/agent",
            "agent/result->sink/result",
            "agent/tools->tools/agent",
            "llm/agent->agent/llm",
            "source/task->agent/task",
            "tools/agent->agent/tools",
            "tools/catalog->agent/catalog",
        ]
    );
    assert!(
        g.edges
            .iter()
            .all(|e| e.tap.as_deref() == Some(&*format!("{}/{}", e.source, e.output)))
    );
    assert_eq!(g.taps.len(), 11, "{:#?}", g.taps);
    assert_eq!(g.taps["llm_agent"].edge, "llm/agent");
    assert_eq!(g.taps["llm_agent"].receivers, ["agent"]);
    assert_eq!(g.taps["agent_result"].receivers, ["sink"]);
    // An output nobody but the dashboard takes is tapped, with no edge drawn.
    assert_eq!(g.taps["llm_error"].edge, "llm/error");
    assert!(g.taps["llm_error"].receivers.is_empty());
    // No descriptor (a test harness): each input stands for itself.
    let none = Graph::from_descriptor("dashboard", &Value::Null);
    assert!(none.nodes.is_empty() && none.edges.is_empty());
    assert_eq!(none.tap("x").edge, "x");
}

#[test]
fn timers_are_not_nodes_and_unreached_cycles_start_at_column_zero() {
    let d = json!({"nodes": [
        {"id": "a", "inputs": {"tick": "dora/timer/millis/100", "back": "b/out"}, "outputs": ["out"]},
        {"id": "b", "inputs": {"in": {"source": "a/out"}}, "outputs": ["out"]},
        {"id": "watch", "inputs": {"t": "a/out"}},
    ]});
    let g = Graph::from_descriptor("watch", &d);
    let nodes: Vec<(&str, usize)> = g.nodes.iter().map(|n| (n.id.as_str(), n.depth)).collect();
    assert_eq!(nodes, [("a", 0), ("b", 1)]);
    let edges: Vec<(&str, Option<&str>)> = g
        .edges
        .iter()
        .map(|e| (e.id.as_str(), e.tap.as_deref()))
        .collect();
    assert_eq!(
        edges,
        [("b/out->a/back", None), ("a/out->b/in", Some("a/out"))]
    );
    let mut inputs = g.nodes[0].inputs.clone();
    inputs.sort();
    assert_eq!(inputs, ["back", "tick"]);
}

#[test]
fn the_rate_counts_the_last_ten_seconds_and_the_latest_message_is_kept_per_edge() {
    let mut b = Board::new(graph());
    let t0 = 1_000_000;
    let first = Envelope::task("source", "first task");
    let second = Envelope::task("source", "second task");
    b.record("source_task", &first, t0);
    b.record("source_task", &second, t0 + 1_000);
    let mut result = Envelope::task("agent", "the answer").with_session("s9");
    result.kind = Kind::Result;
    b.record("agent_result", &result, t0 + 9_500);

    let s = b.snapshot(t0 + 9_500);
    assert_eq!(s.messages, 3);
    let task = &s.edges["source/task"];
    assert_eq!(task.total, 2);
    assert_eq!(task.rate, 0.2);
    let last = task.last.as_ref().unwrap();
    assert_eq!(
        (last.preview.as_str(), last.kind.as_str()),
        ("second task", "task")
    );
    assert_eq!(last.input, "source_task");
    assert_eq!(last.seen_ms, t0 + 1_000);
    let r = s.edges["agent/result"].last.as_ref().unwrap();
    assert_eq!(
        (r.sender.as_str(), r.session.as_str(), r.kind.as_str()),
        ("agent", "s9", "result")
    );
    // Every tapped output is listed, quiet ones too.
    assert_eq!(s.edges.len(), 11);
    assert_eq!(s.edges["llm/token"].total, 0);
    assert!(s.edges["llm/token"].last.is_none());

    // The first task leaves the window at t0 + 10 s; totals and latest stay.
    let s = b.snapshot(t0 + RATE_WINDOW_MS);
    assert_eq!(s.edges["source/task"].rate, 0.1);
    let s = b.snapshot(t0 + 1_000 + RATE_WINDOW_MS);
    assert_eq!(s.edges["source/task"].rate, 0.0);
    assert_eq!(s.edges["source/task"].total, 2);
    assert_eq!(s.edges["agent/result"].rate, 0.1);
    assert_eq!(
        s.edges["source/task"].last.as_ref().unwrap().preview,
        "second task"
    );
}

#[test]
fn tokens_and_cost_count_toward_the_named_agent_else_the_node_the_edge_feeds() {
    let mut b = Board::new(graph());
    b.record("llm_agent", &llm_answer("one", 10, 2, json!({})), 1);
    b.record(
        "llm_agent",
        &llm_answer(
            "two",
            100,
            20,
            json!({"agent": "alice", "cost_usd": 0.0025}),
        ),
        2,
    );
    b.record(
        "llm_agent",
        &llm_answer(
            "three",
            1,
            1,
            json!({"agent": "alice", "cost_usd": 0.0005, "model": "other"}),
        ),
        3,
    );
    // Not an LLM answer: a task, an agent's result with its task's summed usage, a usage that
    // is not an object, a payload that is not JSON.
    b.record("source_task", &Envelope::task("source", "q"), 4);
    let mut result = llm_answer("done", 500, 50, json!({}));
    result.kind = Kind::Result;
    b.record("agent_result", &result, 4);
    let mut odd = llm_answer("x", 1, 1, json!({}));
    odd.payload = Some(r#"{"usage": 12}"#.into());
    b.record("llm_agent", &odd, 5);
    odd.payload = Some("not json {".into());
    b.record("llm_agent", &odd, 6);

    let s = b.snapshot(10);
    assert_eq!(s.agents.len(), 2, "{:#?}", s.agents);
    let agent = &s.agents["agent"];
    assert_eq!(
        (
            agent.calls,
            agent.prompt_tokens,
            agent.completion_tokens,
            agent.total_tokens
        ),
        (1, 10, 2, 12)
    );
    assert_eq!(agent.cost_usd, 0.0, "no cost_usd: 0");
    assert_eq!(agent.model, "mock-model");
    let alice = &s.agents["alice"];
    assert_eq!(
        (alice.calls, alice.prompt_tokens, alice.completion_tokens),
        (2, 101, 21)
    );
    assert!((alice.cost_usd - 0.003).abs() < 1e-12, "{}", alice.cost_usd);
    assert_eq!(alice.model, "other");
    assert_eq!(s.edges["llm/agent"].total, 5);
    // The payload shows when there is no content.
    let mut calls = llm_answer("", 1, 1, json!({}));
    calls.payload = Some(r#"{"tool_calls":[{"name":"calculator"}]}"#.into());
    let view = b.record("llm_agent", &calls, 11);
    assert!(view.preview.contains("calculator"), "{view:?}");
}

#[test]
fn errors_count_for_their_sender_and_the_last_five_are_kept() {
    let mut b = Board::new(graph());
    for i in 0..7 {
        b.record(
            "tools_error",
            &error_from("tools", &format!("bad call {i}")),
            i,
        );
    }
    b.record("agent_error", &error_from("agent", "llm timed out"), 8);
    b.record("agent_result", &error_from("agent", "step limit"), 9);
    // The same text as a plain message is not an error.
    b.record("agent_result", &Envelope::task("agent", "fine"), 10);
    let s = b.snapshot(10);
    let tools = &s.errors["tools"];
    assert_eq!(tools.count, 7);
    let last: Vec<&str> = tools.last.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        last,
        [
            "bad call 2",
            "bad call 3",
            "bad call 4",
            "bad call 5",
            "bad call 6"
        ]
    );
    assert_eq!(tools.last[0].edge, "tools/error");
    assert_eq!(s.errors["agent"].count, 2);
    assert_eq!(s.errors["agent"].last[1].edge, "agent/result");
    assert_eq!(s.errors.len(), 2);
}

#[test]
fn previews_are_cut_to_200_characters() {
    assert_eq!(preview("short"), "short");
    let long = "é".repeat(500);
    let cut = preview(&long);
    assert_eq!(cut.chars().count(), PREVIEW_CHARS);
    assert!(cut.ends_with('…'));
    let exact = "x".repeat(PREVIEW_CHARS);
    assert_eq!(preview(&exact), exact);
}

fn free_node() -> DashboardNode {
    let cfg = DashboardConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
    };
    DashboardNode::new(&cfg)
        .expect("bind a free port")
        .with_descriptor("dashboard", dashboard_yml())
}

#[test]
fn the_handler_takes_any_envelope_and_survives_malformed_input() {
    let node = free_node();
    let dash = node.dashboard();
    let events = vec![
        envelope(
            0.0,
            "source_task",
            &Envelope::task("source", "What is 2+2?"),
        ),
        // Not an envelope: an Int64 array (the kernel reports it; the node goes on).
        raw(0.1, "agent_result", json!([1, 2, 3]), Some(json!("Int64"))),
        // Plain text from a hub node: a task each.
        raw(0.2, "agent_result", json!(["plain answer"]), None),
        envelope(0.3, "llm_agent", &llm_answer("4", 7, 1, json!({}))),
        envelope(0.4, "llm_error", &error_from("llm", "HTTP 500")),
        // An input the descriptor does not know: shown under its own id.
        envelope(0.5, "stray", &Envelope::task("x", "hello")),
        closed(0.6, "source_task"),
    ];
    let sent = harness::run(node, events);
    // The kernel reported the array it could not read, and nothing else went wrong.
    let errors = on(&sent, "error");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0]
            .content
            .contains("malformed message on input `agent_result`"),
        "{}",
        errors[0].content
    );
    let s = dash.snapshot(mofa_kernel::envelope::now_ms());
    assert_eq!(s.messages, 5, "{s:#?}");
    assert_eq!(s.edges["source/task"].total, 1);
    assert_eq!(
        s.edges["agent/result"].total, 1,
        "the Int64 array is not one"
    );
    assert_eq!(
        s.edges["agent/result"].last.as_ref().unwrap().preview,
        "plain answer"
    );
    assert_eq!(s.agents["agent"].prompt_tokens, 7);
    assert_eq!(s.errors["llm"].count, 1);
    assert_eq!(s.errors["llm"].last[0].message, "HTTP 500");
    assert_eq!(s.edges["stray"].total, 1);
}

#[test]
fn a_taken_port_or_a_bad_address_stops_the_node_naming_the_variable() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    // The only test that sets it.
    unsafe { std::env::set_var("MOFA_DASHBOARD_ADDR", &addr) };
    let err = DashboardNode::from_env().err().expect("the port is taken");
    assert!(
        err.to_string().starts_with("MOFA_DASHBOARD_ADDR=")
            && err.to_string().contains("cannot listen there"),
        "{err}"
    );
    unsafe { std::env::set_var("MOFA_DASHBOARD_ADDR", "localhost") };
    let err = DashboardConfig::from_env().unwrap_err().to_string();
    assert!(
        err.starts_with("MOFA_DASHBOARD_ADDR=\"localhost\""),
        "{err}"
    );
    unsafe { std::env::remove_var("MOFA_DASHBOARD_ADDR") };
    assert_eq!(
        DashboardConfig::from_env().unwrap().addr.to_string(),
        "127.0.0.1:7070"
    );
}

/// Reads server-sent events from `resp` until `want` says stop (or 20 s pass): (event, data).
async fn read_events(
    resp: &mut reqwest::Response,
    mut want: impl FnMut(&[(String, Value)]) -> bool,
) -> Vec<(String, Value)> {
    let start = Instant::now();
    let (mut buf, mut events) = (String::new(), Vec::new());
    while !want(&events) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "events so far: {events:#?}"
        );
        let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
            .await
            .expect("an event within 5 s (stats come every second)")
            .expect("read the stream")
            .expect("the stream is open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut name = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event:") {
                    name = n.trim().to_owned();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            if !name.is_empty() {
                events.push((name, serde_json::from_str(&data).expect("JSON data")));
            }
        }
    }
    events
}

#[test]
fn the_http_api_serves_the_graph_the_state_and_a_live_event_stream() {
    let node = free_node();
    let addr = node.addr();
    // Results every 100 ms for 8 s: whenever the client subscribes, more follow.
    let mut events: Vec<_> = (0..80)
        .map(|i| {
            let mut r = Envelope::task("agent", format!("answer {i}"));
            r.kind = Kind::Result;
            envelope(0.5 + f64::from(i) * 0.1, "agent_result", &r)
        })
        .collect();
    events.push(closed(8.6, "agent_result"));
    let client = thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let http = reqwest::Client::new();
            let base = format!("http://{addr}");
            let graph: Value = http
                .get(format!("{base}/api/graph"))
                .send()
                .await
                .expect("GET /api/graph")
                .json()
                .await
                .unwrap();
            let ids: Vec<&str> = graph["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["id"].as_str().unwrap())
                .collect();
            assert_eq!(ids, ["source", "agent", "tools", "llm", "sink"], "{graph}");
            let result_edge = graph["edges"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["id"] == "agent/result->sink/result")
                .expect("the result edge");
            assert_eq!(result_edge["tap"], "agent/result");

            let page = http.get(&base).send().await.unwrap();
            assert_eq!(page.status(), 200);
            let html = page.text().await.unwrap();
            assert!(
                html.contains("<svg id=\"graph\"") && html.contains("/app.js"),
                "{html}"
            );
            let js = http.get(format!("{base}/app.js")).send().await.unwrap();
            assert!(js.text().await.unwrap().contains("data-node"));

            // A foreign Host (DNS rebinding) is refused.
            let foreign = http
                .get(format!("{base}/api/state"))
                .header("Host", "evil.example:80")
                .send()
                .await
                .unwrap();
            assert_eq!(foreign.status(), 403);

            let mut stream = http
                .get(format!("{base}/events"))
                .send()
                .await
                .expect("GET /events");
            assert_eq!(stream.status(), 200);
            assert!(
                stream.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("text/event-stream")
            );
            let seen = read_events(&mut stream, |evs| {
                evs.iter().filter(|(n, _)| n == "msg").count() >= 3
                    && evs.iter().filter(|(n, _)| n == "stats").count() >= 2
            })
            .await;
            let first_stats = &seen.iter().find(|(n, _)| n == "stats").unwrap().1;
            assert!(first_stats["edges"]["agent/result"]["total"].is_u64());
            let msgs: Vec<&Value> = seen
                .iter()
                .filter(|(n, _)| n == "msg")
                .map(|(_, v)| v)
                .collect();
            for m in &msgs {
                assert_eq!(m["edge"], "agent/result");
                assert_eq!(m["input"], "agent_result");
                assert_eq!(m["kind"], "result");
                assert!(m["preview"].as_str().unwrap().starts_with("answer "));
            }
            // In order, none skipped.
            let n = |m: &Value| -> u32 { m["preview"].as_str().unwrap()[7..].parse().unwrap() };
            assert!(msgs.windows(2).all(|w| n(w[1]) == n(w[0]) + 1), "{msgs:#?}");
            // The state agrees with the stream: the latest stats count at least every
            // message seen before it.
            let state: Value = http
                .get(format!("{base}/api/state"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert!(
                state["edges"]["agent/result"]["total"].as_u64().unwrap()
                    > u64::from(n(msgs[msgs.len() - 1])),
                "{state}"
            );
        });
    });
    harness::run(node, events);
    client.join().expect("the client's checks");
}
