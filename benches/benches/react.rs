//! ReAct framework overhead, measured as the pyox-agents benchmark does: each run is one task
//! whose agent makes one tool call then answers, against a mock LLM that answers at once;
//! 500 runs, 100 in flight at a time. Release nodes under `dora run`.
//! Run: cargo bench -p mofa-benches --bench react
//!
//! Per run: task to result (the envelopes' own clocks). CPU: user+system time of every node
//! process, sampled from /proc while they run (start-up included), over the runs. RSS: the sum
//! of each node process's peak.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mofa_tests::dora;
use mofa_tests::mock_llm::{MockLlm, Rule, Script};
use serde_json::json;

const RUNS: usize = 500;
const IN_FLIGHT: usize = 100;

#[derive(Default, Clone, Copy)]
struct Proc {
    cpu_ticks: u64,
    peak_rss_kb: u64,
}

/// Node processes (our release binaries) → their CPU ticks and peak RSS, as last seen.
fn sample(bin_dir: &str, seen: &mut HashMap<u32, Proc>) {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if !exe.to_string_lossy().starts_with(bin_dir) {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name: utime is the 14th field, stime the 15th.
        let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let hwm = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0);
        let p = seen.entry(pid).or_default();
        p.cpu_ticks = p.cpu_ticks.max(ticks);
        p.peak_rss_kb = p.peak_rss_kb.max(hwm);
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    eprintln!("building release nodes ...");
    let dir = tempfile::tempdir().unwrap();
    let release_yml = dora::release_copy("react.yml", dir.path());
    let bin_dir = format!("{}/target/release/", dora::root().display());
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

    let seen = Arc::new(Mutex::new(HashMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (seen, stop, bin_dir) = (seen.clone(), stop.clone(), bin_dir.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                sample(&bin_dir, &mut seen.lock().unwrap());
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
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
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
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
        .map(|r| {
            let session = r["session"].as_str().unwrap().replace('-', "");
            let start = i64::from_str_radix(&session[..12], 16).unwrap();
            (r["ts_ms"].as_i64().unwrap() - start) as f64
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    // Throughput inside each wave: its runs over the time from its first task to its last result.
    let mut waves: Vec<(i64, i64)> = Vec::new();
    let mut starts: Vec<(i64, i64)> = results
        .iter()
        .map(|r| {
            let session = r["session"].as_str().unwrap().replace('-', "");
            (
                i64::from_str_radix(&session[..12], 16).unwrap(),
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
    let procs = seen.lock().unwrap();
    let tick = 100.0; // USER_HZ on Linux
    let cpu_ms: f64 = procs
        .values()
        .map(|p| p.cpu_ticks as f64 * 1000.0 / tick)
        .sum();
    let rss_mb: f64 = procs.values().map(|p| p.peak_rss_kb as f64 / 1024.0).sum();
    let pct = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
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
