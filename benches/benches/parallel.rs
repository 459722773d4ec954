//! parallel with 100 agents on one machine: fan-out to fan-in time and memory.
//! Run: cargo bench -p mofa-benches --bench parallel
//!
//! A generated copy of parallel.yml with 100 agents (release nodes, one mofa-llm bridge to a
//! mock that answers at once, mofa-aggregate joining all 100 with `concat`). The source sends
//! 30 tasks 400 ms apart, one at a time; the first 5 warm up and are left out. Per task: from
//! the task's creation (its UUIDv7 id) to the joined result's creation, both the envelopes'
//! own clocks. RSS: each node process's peak, from /proc.

mod common;

use std::time::Duration;

use common::{Sampler, id_ms, percentile};
use mofa_tests::dora;
use mofa_tests::mock_llm::{MockLlm, Script};

const AGENTS: usize = 100;
const TASKS: usize = 30;
const WARM_UP: usize = 5;

fn edge(source: &str) -> String {
    format!("{{source: {source}, queue_size: 1000, queue_policy: backpressure}}")
}

/// The graph: source → 100 agents ↔ llm; source and agents → aggregate → sink.
fn dataflow(bin: &str) -> String {
    let names: Vec<String> = (0..AGENTS).map(|i| format!("a{i:03}")).collect();
    let mut y =
        format!("nodes:\n  - id: source\n    path: {bin}/mofa-source\n    outputs: [task]\n");
    for n in &names {
        y += &format!(
            "  - id: {n}\n    path: {bin}/mofa-agent\n    inputs:\n      task: {}\n      llm: {}\n    outputs: [llm, result, error]\n",
            edge("source/task"),
            edge(&format!("llm/{n}"))
        );
    }
    y += &format!(
        "  - id: aggregate\n    path: {bin}/mofa-aggregate\n    inputs:\n      task: {}\n",
        edge("source/task")
    );
    for n in &names {
        y += &format!("      {n}: {}\n", edge(&format!("{n}/result")));
    }
    y += &format!(
        "    outputs: [result, llm, error]\n    env:\n      MOFA_MEMBERS: {}\n",
        names.join(",")
    );
    y += &format!("  - id: llm\n    path: {bin}/mofa-llm\n    inputs:\n");
    for n in &names {
        y += &format!("      {n}: {}\n", edge(&format!("{n}/llm")));
    }
    y += &format!("    outputs: [{}, token, error]\n", names.join(", "));
    y += &format!(
        "  - id: sink\n    path: {bin}/mofa-sink\n    inputs:\n      result: {}\n      error: {}\n",
        edge("aggregate/result"),
        edge("aggregate/error")
    );
    y
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    eprintln!("building release nodes ...");
    let dir = tempfile::tempdir().unwrap();
    // Builds the release binaries (the copy itself is not used: the graph is generated).
    dora::release_copy("parallel.yml", dir.path());
    let bin = format!("{}/target/release", dora::root().display());
    let yml = dir.path().join("parallel100.yml");
    std::fs::write(&yml, dataflow(&bin)).unwrap();
    let tasks = dir.path().join("tasks.jsonl");
    let lines: String = (0..TASKS)
        .map(|i| format!("{{\"task\": \"question {i}\"}}\n"))
        .collect();
    std::fs::write(&tasks, lines).unwrap();
    let mock = MockLlm::start(Script::default());

    let sampler = Sampler::start(&bin);
    let out = dir.path().join("sink.jsonl");
    let run = dora::run_file(
        &yml,
        &[
            ("OPENAI_BASE_URL", mock.base_url()),
            ("MOFA_TASKS_FILE", tasks.display().to_string()),
            ("MOFA_TASK_INTERVAL_MS", "400".into()),
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
    assert_eq!(results.len(), TASKS, "every task joined");
    for r in &results {
        let payload: serde_json::Value =
            serde_json::from_str(r["payload"].as_str().unwrap()).unwrap();
        assert_eq!(payload["answers"].as_array().unwrap().len(), AGENTS);
    }
    let mut by_start: Vec<(i64, f64)> = results
        .iter()
        .map(|r| {
            let start = id_ms(r["reply_to"].as_str().unwrap());
            (start, (r["ts_ms"].as_i64().unwrap() - start) as f64)
        })
        .collect();
    by_start.sort_by_key(|(s, _)| *s);
    let mut ms: Vec<f64> = by_start[WARM_UP..].iter().map(|(_, m)| *m).collect();
    ms.sort_by(f64::total_cmp);
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;

    let agents: Vec<f64> = procs
        .values()
        .filter(|p| p.binary == "mofa-agent")
        .map(|p| p.peak_rss_mb())
        .collect();
    let others: Vec<(String, f64)> = procs
        .values()
        .filter(|p| p.binary != "mofa-agent")
        .map(|p| (p.binary.clone(), p.peak_rss_mb()))
        .collect();
    let total: f64 = procs.values().map(|p| p.peak_rss_mb()).sum();
    let agent_mean = agents.iter().sum::<f64>() / agents.len() as f64;
    let agent_max = agents.iter().cloned().fold(0.0, f64::max);
    println!(
        "parallel, {AGENTS} agents, release, instant mock, {} warm tasks one at a time, {} node processes",
        ms.len(),
        procs.len()
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| fan-out to fan-in, mean / p50 / p95 / max (ms) | {mean:.1} / {:.0} / {:.0} / {:.0} |",
        percentile(&ms, 0.5),
        percentile(&ms, 0.95),
        percentile(&ms, 1.0)
    );
    println!(
        "| peak RSS per agent process, mean / max (MB) | {agent_mean:.1} / {agent_max:.1} ({} agents) |",
        agents.len()
    );
    for (b, mb) in others {
        println!("| peak RSS {b} (MB) | {mb:.1} |");
    }
    println!("| total peak RSS, all node processes (MB) | {total:.0} |");
    let cpu: f64 = procs.values().map(|p| p.cpu_ms()).sum();
    println!(
        "| CPU, all node processes, start-up included, per task (ms) | {:.1} |",
        cpu / TASKS as f64
    );
}
