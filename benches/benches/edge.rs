//! Edge deployment (issue 8): every node's release binary size and idle RSS.
//! Run: cargo bench -p mofa-benches --bench edge
//!
//! Builds the node binaries (`cargo build --profile <profile> --workspace --bins`; the profile is
//! `MOFA_BENCH_PROFILE`, default `release`; `edge` is the size-oriented one), records the size of
//! each node binary, then starts every node once under one `dora run` of a generated dataflow
//! in which nothing happens: each node has the inputs it needs, wired to outputs that only
//! answer requests nobody makes (a person's answers, a store's replies), and the minimal env it
//! needs to start (a SQLite file for the store, any free port for the person's page, an
//! unreachable OpenAI-compatible URL so the LLM bridge loads no model, ...). The source sends
//! one task to the sink and then waits an hour before its next. Once every node is up, the
//! benchmark waits `IDLE` and reads VmRSS, RssAnon, RssFile and Threads from
//! /proc/<pid>/status, and the CPU each used in that window (it must be idle), then stops the
//! run.
//!
//! The graph also runs `dora-floor` (benches/src/bin/dora-floor.rs), a node that is dora alone:
//! init, then wait for events. Built in the same profile, with the same process defaults as
//! `mofa_kernel::node::main` sets (SHM pool, zero-copy threshold, zenoh runtimes), it is the floor no
//! node built on dora 1.1 can go below.
//!
//! `MOFA_BENCH_PROFILE=debug` measures the debug binaries instead, and `MOFA_BENCH_BIN_DIR`
//! the binaries in that folder (built by the caller: no build here), for comparison.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mofa_kernel::node;
use mofa_tests::dora;

/// How long every node has been running with nothing to do before it is measured.
const IDLE: Duration = Duration::from_secs(3);
/// Targets for the nodes without an embedded model or WASM engine.
const RSS_TARGET_MB: f64 = 10.0;
const SIZE_TARGET_MB: f64 = 20.0;

/// What the targets say about a binary.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Held to the targets.
    Node,
    /// Embeds a model or a WASM engine: exempt.
    Exempt,
    /// dora alone (`dora-floor`): the reference, not one of our nodes.
    Floor,
}

/// The binaries measured.
const BINARIES: [(&str, Kind); 14] = [
    ("mofa-agent", Kind::Node),
    ("mofa-tools", Kind::Node),
    ("mofa-aggregate", Kind::Node),
    ("mofa-debate", Kind::Node),
    ("mofa-consensus", Kind::Node),
    ("mofa-script", Kind::Node),
    ("mofa-router", Kind::Node),
    ("mofa-secretary", Kind::Node),
    ("mofa-human", Kind::Node),
    ("mofa-store", Kind::Node),
    ("mofa-source", Kind::Node),
    ("mofa-sink", Kind::Node),
    // llama.cpp is linked in (the local GGUF model); idle with an OpenAI-compatible URL it
    // loads no model.
    ("mofa-llm", Kind::Exempt),
    ("dora-floor", Kind::Floor),
];

/// One node of the generated dataflow.
struct Node {
    id: &'static str,
    binary: &'static str,
    inputs: &'static [(&'static str, &'static str)],
    outputs: &'static [&'static str],
    env: Vec<(&'static str, String)>,
}

/// The idle graph. `human/answer` is the silent output most inputs hang on: the person is
/// asked nothing, so it never sends. The request/response pairs (secretary ↔ store, llm,
/// human; agent ↔ llm, tools) are wired as in the real dataflows.
fn nodes(scratch: &Path) -> Vec<Node> {
    const SILENT: &str = "human/answer";
    let s = |p: &str| scratch.join(p).display().to_string();
    // The floor gets what `node::main` gives our nodes, unless the caller set it for all.
    let kernel_default =
        |var: &'static str, default: String| (var, std::env::var(var).unwrap_or(default));
    vec![
        Node {
            id: "floor",
            binary: "dora-floor",
            inputs: &[("in", SILENT)],
            outputs: &[],
            env: vec![
                kernel_default(
                    "DORA_NODE_SHM_POOL_SIZE",
                    node::SHM_POOL_DEFAULT.to_string(),
                ),
                kernel_default(
                    "DORA_ZERO_COPY_THRESHOLD",
                    node::ZERO_COPY_THRESHOLD_DEFAULT.to_string(),
                ),
                kernel_default("ZENOH_RUNTIME", node::ZENOH_RUNTIME_DEFAULT.into()),
            ],
        },
        Node {
            id: "source",
            binary: "mofa-source",
            inputs: &[],
            outputs: &["task"],
            env: vec![
                ("MOFA_TASKS_FILE", s("tasks.jsonl")),
                ("MOFA_TASK_INTERVAL_MS", "3600000".into()),
            ],
        },
        Node {
            id: "sink",
            binary: "mofa-sink",
            inputs: &[("task", "source/task")],
            outputs: &[],
            env: vec![("MOFA_OUT", s("sink.jsonl"))],
        },
        Node {
            id: "human",
            binary: "mofa-human",
            inputs: &[("ask", "secretary/ask")],
            outputs: &["answer", "error"],
            env: vec![
                ("MOFA_HUMAN_MODE", "http".into()),
                ("MOFA_HUMAN_PORT", "0".into()),
            ],
        },
        Node {
            id: "secretary",
            binary: "mofa-secretary",
            inputs: &[
                ("idea", SILENT),
                ("llm", "llm/secretary"),
                ("store", "store/secretary"),
                ("human", "human/answer"),
                ("human_error", "human/error"),
                ("coder", "agent/result"),
                ("coder_error", "agent/error"),
            ],
            outputs: &[
                "llm", "store", "ask", "coder", "progress", "report", "error",
            ],
            env: vec![("MOFA_EXECUTORS", "coder=code".into())],
        },
        Node {
            id: "store",
            binary: "mofa-store",
            inputs: &[("secretary", "secretary/store")],
            outputs: &["secretary", "error"],
            env: vec![(
                "MOFA_DATABASE_URL",
                format!("sqlite://{}?mode=rwc", s("edge.db")),
            )],
        },
        Node {
            id: "llm",
            binary: "mofa-llm",
            inputs: &[
                ("secretary", "secretary/llm"),
                ("agent", "agent/llm"),
                ("router", "router/llm"),
            ],
            outputs: &["secretary", "agent", "router", "token", "error"],
            // Nothing listens there; nothing is asked either.
            env: vec![("OPENAI_BASE_URL", "http://127.0.0.1:9/v1".into())],
        },
        Node {
            id: "agent",
            binary: "mofa-agent",
            inputs: &[
                ("task", "secretary/coder"),
                ("llm", "llm/agent"),
                ("catalog", "tools/catalog"),
                ("tools", "tools/agent"),
            ],
            outputs: &["llm", "tools", "result", "error"],
            env: vec![],
        },
        Node {
            id: "tools",
            binary: "mofa-tools",
            inputs: &[("agent", "agent/tools")],
            outputs: &["agent", "catalog", "error"],
            env: vec![],
        },
        Node {
            id: "aggregate",
            binary: "mofa-aggregate",
            inputs: &[("task", SILENT), ("a", SILENT), ("b", SILENT)],
            outputs: &["result", "llm", "error"],
            env: vec![("MOFA_MEMBERS", "a,b".into())],
        },
        Node {
            id: "debate",
            binary: "mofa-debate",
            inputs: &[
                ("task", SILENT),
                ("a", SILENT),
                ("b", SILENT),
                ("judge", SILENT),
            ],
            outputs: &["a", "b", "judge", "turn", "verdict", "error"],
            env: vec![("MOFA_DEBATERS", "a,b".into())],
        },
        Node {
            id: "consensus",
            binary: "mofa-consensus",
            inputs: &[("task", SILENT), ("a", SILENT), ("b", SILENT)],
            outputs: &["a", "b", "decision", "votes", "tally", "error"],
            env: vec![("MOFA_MEMBERS", "a,b".into())],
        },
        Node {
            id: "script",
            binary: "mofa-script",
            inputs: &[("in", SILENT)],
            outputs: &["out", "error"],
            env: vec![
                ("MOFA_SCRIPT", s("idle.rhai")),
                ("MOFA_SCRIPT_MODE", "transform".into()),
            ],
        },
        Node {
            id: "router",
            binary: "mofa-router",
            inputs: &[("task", SILENT), ("llm", "llm/router")],
            outputs: &["a", "b", "llm", "error"],
            env: vec![
                ("MOFA_ROUTES", "a,b".into()),
                ("MOFA_ROUTE_A", "answers questions about a".into()),
                ("MOFA_ROUTE_B", "answers questions about b".into()),
            ],
        },
    ]
}

/// The dataflow YAML running `nodes` from `bin_dir`.
fn yaml(nodes: &[Node], bin_dir: &Path) -> String {
    let mut y = String::from("nodes:\n");
    for n in nodes {
        y += &format!("  - id: {}\n", n.id);
        y += &format!("    path: {}\n", bin_dir.join(n.binary).display());
        if !n.inputs.is_empty() {
            y += "    inputs:\n";
            for (input, source) in n.inputs {
                // As in the project's dataflows: lossless, on dora's daemon path.
                y += &format!(
                    "      {input}: {{source: {source}, queue_size: 1000, queue_policy: backpressure}}\n"
                );
            }
        }
        if !n.outputs.is_empty() {
            y += &format!("    outputs: [{}]\n", n.outputs.join(", "));
        }
        if !n.env.is_empty() {
            y += "    env:\n";
            for (k, v) in &n.env {
                y += &format!("      {k}: {}\n", serde_json::to_string(v).unwrap());
            }
        }
    }
    y
}

/// The running processes of binaries in `bin_dir` (not its subfolders), by binary name.
fn node_pids(bin_dir: &Path) -> BTreeMap<String, Vec<u32>> {
    let mut found: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let exe = std::fs::read_link(e.path().join("exe")).unwrap_or_default();
        if exe.parent() != Some(bin_dir) {
            continue;
        }
        if let Some(name) = exe.file_name() {
            found
                .entry(name.to_string_lossy().into_owned())
                .or_default()
                .push(pid);
        }
    }
    found
}

/// A `/proc/<pid>/status` field's first number (kB for the memory fields).
fn status_field(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of `pid`, in clock ticks (100 per second).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

struct Measured {
    size: u64,
    rss_kb: u64,
    anon_kb: u64,
    file_kb: u64,
    shmem_kb: u64,
    threads: u64,
    idle_cpu_ms: u64,
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` / `cargo test --benches`: nothing to list
    }
    let profile = std::env::var("MOFA_BENCH_PROFILE").unwrap_or_else(|_| "release".into());
    let root = dora::root();
    let bin_dir_var = std::env::var_os("MOFA_BENCH_BIN_DIR").map(PathBuf::from);
    if profile != "debug" && bin_dir_var.is_none() {
        eprintln!("building {profile} nodes ...");
        let ok = Command::new(env!("CARGO"))
            .args(["build", "--profile", &profile, "--workspace", "--bins"])
            .current_dir(&root)
            .status()
            .expect("cargo")
            .success();
        assert!(ok, "{profile} build failed");
        // mofa-tools as an edge device gets it: without its default `wasm` feature (WASM tool
        // plugins bring the wasmtime engine, which the targets exempt). Replaces the binary above.
        let ok = Command::new(env!("CARGO"))
            .args([
                "build",
                "--profile",
                &profile,
                "-p",
                "mofa-tools",
                "--no-default-features",
            ])
            .current_dir(&root)
            .status()
            .expect("cargo")
            .success();
        assert!(ok, "{profile} build of mofa-tools without wasm failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin_dir = bin_dir_var.unwrap_or_else(|| target.join(&profile));

    let scratch = tempfile::tempdir().unwrap();
    std::fs::write(
        scratch.path().join("tasks.jsonl"),
        "{\"task\": \"the first task, to the sink\"}\n{\"task\": \"an hour later\"}\n",
    )
    .unwrap();
    std::fs::write(scratch.path().join("idle.rhai"), "msg.content\n").unwrap();
    let graph = nodes(scratch.path());
    let yml = scratch.path().join("edge.yml");
    std::fs::write(&yml, yaml(&graph, &bin_dir)).unwrap();

    assert!(
        node_pids(&bin_dir).is_empty(),
        "node binaries of {} are running already: the pids would be ambiguous",
        bin_dir.display()
    );
    let run = dora::spawn_run(&yml, &[], Duration::from_secs(300));
    let started = Instant::now();
    let pids = loop {
        let pids = node_pids(&bin_dir);
        let log = run.log();
        if pids.len() == BINARIES.len() && log.contains("all nodes are ready") {
            break pids;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not every node came up within 60 s (running: {:?}):\n{log}",
            pids.keys().collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "all {} nodes up after {:.1} s; idle for {} s ...",
        pids.len(),
        started.elapsed().as_secs_f64(),
        IDLE.as_secs()
    );
    // Start-up work (connecting, the store's schema, the catalog) settles first; then the
    // window in which the CPU used is counted.
    std::thread::sleep(Duration::from_secs(1));
    let pid_of = |bin: &str| -> u32 {
        let p = &pids[bin];
        assert_eq!(p.len(), 1, "{bin}: one process expected, got {p:?}");
        p[0]
    };
    let before: BTreeMap<&str, u64> = BINARIES
        .iter()
        .map(|(b, _)| (*b, cpu_ticks(pid_of(b))))
        .collect();
    std::thread::sleep(IDLE);

    let mut measured = BTreeMap::new();
    for (bin, _) in BINARIES {
        let pid = pid_of(bin);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("{bin} (pid {pid}) is gone: {e}\n{}", run.log()));
        let size = std::fs::metadata(bin_dir.join(bin)).unwrap().len();
        measured.insert(
            bin,
            Measured {
                size,
                rss_kb: status_field(&status, "VmRSS"),
                anon_kb: status_field(&status, "RssAnon"),
                file_kb: status_field(&status, "RssFile"),
                shmem_kb: status_field(&status, "RssShmem"),
                threads: status_field(&status, "Threads"),
                idle_cpu_ms: (cpu_ticks(pid) - before[bin]) * 10,
            },
        );
    }
    drop(run); // stops dora and the nodes

    println!(
        "every node idle under one `dora run` (binaries in {}, {} s idle after start)",
        bin_dir.display(),
        IDLE.as_secs()
    );
    println!(
        "| node | binary (MB) | idle VmRSS (MB) | RssAnon (MB) | RssFile (MB) | RssShmem (MB) | threads | CPU in the {} s (ms) | targets (≤ {SIZE_TARGET_MB} MB binary, ≤ {RSS_TARGET_MB} MB RSS) |",
        IDLE.as_secs()
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let (mut size_missed, mut rss_missed) = (Vec::new(), Vec::new());
    for (bin, kind) in BINARIES {
        let m = &measured[bin];
        let size_mb = m.size as f64 / 1024.0 / 1024.0;
        let verdict = if kind == Kind::Exempt {
            "exempt (embedded model)".to_owned()
        } else if kind == Kind::Floor {
            "reference: dora alone".to_owned()
        } else {
            let size_ok = size_mb <= SIZE_TARGET_MB;
            let rss_ok = mb(m.rss_kb) <= RSS_TARGET_MB;
            if !size_ok {
                size_missed.push(bin);
            }
            if !rss_ok {
                rss_missed.push(bin);
            }
            format!(
                "size {}, RSS {}",
                if size_ok { "met" } else { "**missed**" },
                if rss_ok { "met" } else { "**missed**" }
            )
        };
        println!(
            "| {bin} | {size_mb:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {verdict} |",
            mb(m.rss_kb),
            mb(m.anon_kb),
            mb(m.file_kb),
            mb(m.shmem_kb),
            m.threads,
            m.idle_cpu_ms,
        );
    }
    println!(
        "binary ≤ {SIZE_TARGET_MB} MB: {}; idle RSS ≤ {RSS_TARGET_MB} MB: {}",
        if size_missed.is_empty() {
            "met by every node".to_owned()
        } else {
            format!("missed by {}", size_missed.join(", "))
        },
        if rss_missed.is_empty() {
            "met by every node".to_owned()
        } else {
            format!("missed by {}", rss_missed.join(", "))
        },
    );
}
