//! chain.yml in release against the mock LLM answering at once: the time each agent adds.
//! Run: cargo bench -p mofa-benches --bench chain
//!
//! The mock's own clock brackets each hop: from the end of the researcher's LLM answer to the
//! start of the writer's LLM request is one agent's whole overhead (LLM bridge → agent →
//! result → next agent → request → LLM bridge → HTTP), with no model time in it.

use std::time::Duration;

use mofa_tests::dora;
use mofa_tests::mock_llm::{MockLlm, Script};

const TASKS: usize = 60;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` / `cargo test --benches`: nothing to list
    }
    eprintln!("building release nodes ...");
    let dir = tempfile::tempdir().unwrap();
    let release_yml = dora::release_copy("chain.yml", dir.path());
    let tasks = dir.path().join("tasks.jsonl");
    let lines: String = (0..TASKS)
        .map(|i| format!("{{\"task\": \"topic {i}\"}}\n"))
        .collect();
    std::fs::write(&tasks, lines).unwrap();

    let mock = MockLlm::start(Script::default());
    let out = dir.path().join("sink.jsonl");
    let run = dora::run_file(
        &release_yml,
        &[
            ("OPENAI_BASE_URL", mock.base_url()),
            ("MOFA_TASKS_FILE", tasks.display().to_string()),
            // One task at a time through the chain, so no hop waits behind another task.
            ("MOFA_TASK_INTERVAL_MS", "40".into()),
            ("MOFA_OUT", out.display().to_string()),
            ("RUST_LOG", "warn".into()),
        ],
        Duration::from_secs(120),
    );
    assert!(
        run.status.is_some_and(|s| s.success()),
        "dora run failed:\n{}",
        run.log
    );

    let reqs = mock.requests();
    assert_eq!(
        reqs.len(),
        3 * TASKS,
        "every task went through three agents"
    );
    let (mut hops, mut mock_ms) = (Vec::new(), Vec::new());
    for triple in reqs.chunks(3) {
        let [r, w, e] = triple else { unreachable!() };
        assert!(
            r.system().contains("researcher")
                && w.system().contains("writer")
                && e.system().contains("editor")
        );
        hops.push((w.start_us - r.end_us) as f64 / 1000.0);
        hops.push((e.start_us - w.end_us) as f64 / 1000.0);
        for x in triple {
            mock_ms.push((x.end_us - x.start_us) as f64 / 1000.0);
        }
    }
    hops.sort_by(f64::total_cmp);
    mock_ms.sort_by(f64::total_cmp);
    let mean = hops.iter().sum::<f64>() / hops.len() as f64;
    println!(
        "chain.yml, release, {TASKS} tasks paced 40 ms apart, {} agent hops",
        hops.len()
    );
    println!("| measure | median | p90 | max | mean |");
    println!("|---|---|---|---|---|");
    println!(
        "| overhead per agent (ms) | {:.3} | {:.3} | {:.3} | {:.3} |",
        percentile(&hops, 0.5),
        percentile(&hops, 0.9),
        hops[hops.len() - 1],
        mean
    );
    println!(
        "| mock's own time per call (ms) | {:.3} | {:.3} | {:.3} | - |",
        percentile(&mock_ms, 0.5),
        percentile(&mock_ms, 0.9),
        mock_ms[mock_ms.len() - 1]
    );
}
