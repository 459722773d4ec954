//! ReAct framework overhead, measured as the pyox-agents benchmark does: each run is one task
//! whose agent makes one tool call then answers, against a mock LLM that answers at once;
//! 500 runs, 100 in flight at a time. Release nodes under `dora run`.
//! Run: cargo bench -p mofa-benches --bench react
//!
//! Per run: task to result (the envelopes' own clocks). CPU: user+system time of every node
//! process, sampled from /proc while they run (start-up included), over the runs. RSS: the sum
//! of each node process's peak.

mod common;

use std::time::Duration;

use common::{Sampler, id_ms, percentile};
use mofa_tests::dora;
use mofa_tests::mock_llm::{MockLlm, Rule, Script};
use serde_json::json;

const RUNS: usize = 500;
const IN_FLIGHT: usize = 100;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    eprintln!("building release nodes ...");
    let dir = tempfile::tempdir().unwrap();
    let release_yml = dora::release_copy("react.yml", dir.path());
    let bin_dir = format!("{}/target/release", dora::root().display());
    let tasks = dir.path().join("tasks.jsonl");
    let lines: String = (0..RUNS)
        .map(|i| format!("{{\"task\": \"compute {i} + 1\"}}\n"))
        .collect();
    std::fs::write(&tasks, lines).unwrap();

    let mock = MockLlm::start(Script {
        rules: vec![
            Rule {
                matches: "\"value\"".into(),
                content: Some("done: {tool}".into()),
                ..Default::default()
            },
            Rule {
                matches: "compute".into(),
                tool_calls: vec![
                    json!({"name": "calculator", "arguments": {"expression": "1 + 1"}}),
                ],
                ..Default::default()
            },
        ],
    });

    let sampler = Sampler::start(&bin_dir);
    let out = dir.path().join("sink.jsonl");
    let run = dora::run_file(
        &release_yml,
        &[
            ("OPENAI_BASE_URL", mock.base_url()),
            ("MOFA_TASKS_FILE", tasks.display().to_string()),
            ("MOFA_TOOLS", "calculator".into()),
            // 100 tasks at once, then the next 100 once those are long done.
            ("MOFA_TASK_BURST", IN_FLIGHT.to_string()),
            ("MOFA_TASK_INTERVAL_MS", "1000".into()),
            ("MOFA_OUT", out.display().to_string()),
            ("RUST_LOG", "warn".into()),
        ],
        Duration::from_secs(300),
    );
    let procs = sampler.stop();
    assert!(
        run.status.is_some_and(|s| s.success()),
        "dora run failed:\n{}",
        run.log
    );

    let results: Vec<serde_json::Value> = dora::sink_lines(&out)
        .into_iter()
        .filter(|l| l["kind"] == "result")
        .collect();
    assert_eq!(results.len(), RUNS, "every run answered");
    // Task time: the session is the task's id, a UUIDv7 whose first 48 bits are its ms clock.
    let mut ms: Vec<f64> = results
        .iter()
        .map(|r| (r["ts_ms"].as_i64().unwrap() - id_ms(r["session"].as_str().unwrap())) as f64)
        .collect();
    ms.sort_by(f64::total_cmp);
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    // Throughput inside each wave: its runs over the time from its first task to its last result.
    let mut waves: Vec<(i64, i64)> = Vec::new();
    let mut starts: Vec<(i64, i64)> = results
        .iter()
        .map(|r| {
            (
                id_ms(r["session"].as_str().unwrap()),
                r["ts_ms"].as_i64().unwrap(),
            )
        })
        .collect();
    starts.sort();
    for chunk in starts.chunks(IN_FLIGHT) {
        let first = chunk.iter().map(|c| c.0).min().unwrap();
        let last = chunk.iter().map(|c| c.1).max().unwrap();
        waves.push((first, last));
    }
    let busy_ms: i64 = waves.iter().map(|(a, b)| (b - a).max(1)).sum();
    let runs_per_s = RUNS as f64 / (busy_ms as f64 / 1000.0);
    let cpu_ms: f64 = procs.values().map(|p| p.cpu_ms()).sum();
    let rss_mb: f64 = procs.values().map(|p| p.peak_rss_mb()).sum();
    let pct = |p: f64| percentile(&ms, p);
    println!(
        "react.yml, release, {RUNS} runs, {IN_FLIGHT} in flight, one calculator call per run, {} node processes",
        procs.len()
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| run time mean / p50 / p95 (ms) | {mean:.1} / {:.0} / {:.0} |",
        pct(0.5),
        pct(0.95)
    );
    println!("| runs/s (within the waves) | {runs_per_s:.0} |");
    println!(
        "| CPU per run, all nodes, start-up included (ms) | {:.2} |",
        cpu_ms / RUNS as f64
    );
    println!("| total peak RSS of the node processes (MB) | {rss_mb:.1} |");
}
