//! Runs whole dataflows under the real dora CLI, and cleans up after itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// The pinned dora CLI: $DORA_BIN, else the project's virtualenv (bin/setup).
pub fn dora_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("DORA_BIN") {
        return p.into();
    }
    let venv = root().join(".venv/bin/dora");
    assert!(
        venv.exists(),
        "the dora CLI is not installed: run bin/setup (looked for {})",
        venv.display()
    );
    venv
}

/// PATH with the project's virtualenv first: dora 1.1 starts operator runtimes as
/// `python -uc "import dora; ..."` and Python nodes with `python`, so the interpreter that has
/// the pinned `dora-rs` and `pyarrow` (bin/setup) must be the one found.
pub fn path_with_venv() -> String {
    let venv_bin = dora_bin()
        .parent()
        .expect("dora in a bin folder")
        .to_owned();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![venv_bin];
    dirs.extend(std::env::split_paths(&path));
    std::env::join_paths(dirs)
        .expect("PATH")
        .to_string_lossy()
        .into_owned()
}

/// A child process (and its process group) killed when dropped, even if the test panics.
pub struct Guard {
    pub child: Child,
}

impl Guard {
    /// Waits for the process to end, at most `limit`; kills it past that.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pgid = format!("-{}", self.child.id());
            let _ = Command::new("kill").args(["-TERM", "--", &pgid]).status();
            std::thread::sleep(Duration::from_millis(300));
            let _ = Command::new("kill").args(["-KILL", "--", &pgid]).status();
            let _ = self.child.wait();
        }
    }
}

/// A dora CLI command with the variables `cargo test` sets for test processes removed: the
/// dataflows' `build:` lines run cargo, and with them inherited their builds would differ
/// from the test command's own and rebuild it.
pub(crate) fn dora_command() -> Command {
    let mut cmd = clean_command(dora_bin());
    cmd.env("DORA_ZENOH_MULTICAST", "off");
    cmd
}

/// `program` without the variables `cargo test` sets for test processes, so a cargo run inside
/// it (a dataflow's build line, a guide's `cargo build`) builds as a user's would.
pub fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        let from_cargo_test =
            (k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR")
                || k == "CARGO"
                || k.starts_with("RUSTUP_TOOLCHAIN")
                || k == "RUST_RECURSION_COUNT"
                || k == "LD_LIBRARY_PATH";
        if from_cargo_test {
            cmd.env_remove(k.as_ref());
        }
    }
    cmd
}

/// The outcome of `dora run`.
pub struct Finished {
    pub status: Option<ExitStatus>,
    /// What dora printed (stdout and stderr, the nodes' logs among them).
    pub log: String,
    /// The folder it ran in (holds `out/`, dora's per-node log files).
    pub dir: tempfile::TempDir,
}

/// `dora run <dataflow> --stop-after <limit>` from a scratch copy of the dataflow folder, with
/// `env` added to the environment the nodes inherit. Waits for it to end.
pub fn run(dataflow: &str, env: &[(&str, String)], limit: Duration) -> Finished {
    run_file(&root().join("dataflows").join(dataflow), env, limit)
}

/// [`run`] for a dataflow file anywhere.
pub fn run_file(yml: &Path, env: &[(&str, String)], limit: Duration) -> Finished {
    spawn_run(yml, env, limit).finish()
}

/// A `dora run` going on in the background (see [`spawn_run`]).
pub struct Running {
    guard: Guard,
    log_path: PathBuf,
    limit: Duration,
    pub dir: tempfile::TempDir,
}

impl Running {
    /// What dora has printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits for the run to end (killing it past its limit and a margin).
    pub fn finish(mut self) -> Finished {
        let status = self.guard.wait(self.limit + Duration::from_secs(30));
        drop(self.guard);
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        Finished {
            status,
            log,
            dir: self.dir,
        }
    }
}

/// [`run_file`] without waiting: the test acts on the running graph (kills a node, stops a
/// server), then calls [`Running::finish`]. Dropped, it kills the run.
pub fn spawn_run(yml: &Path, env: &[(&str, String)], limit: Duration) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("dora.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut cmd = dora_command();
    cmd.arg("run")
        .arg(yml)
        .arg("--stop-after")
        .arg(format!("{}s", limit.as_secs()))
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    Running {
        guard: Guard {
            child: cmd.spawn().expect("spawn dora"),
        },
        log_path,
        limit,
        dir,
    }
}

/// The pids of the running processes of `binary` (file name) whose environment holds
/// `var=value`: a node of one test's graph, when several tests run graphs at once.
pub fn node_pids(binary: &str, var: &str, value: &str) -> Vec<u32> {
    let wanted = format!("{var}={value}");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let exe = std::fs::read_link(entry.path().join("exe")).unwrap_or_default();
        if exe.file_name().and_then(|n| n.to_str()) != Some(binary) {
            continue;
        }
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if environ.split(|b| *b == 0).any(|kv| kv == wanted.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

/// [`run`] with the sink writing to a scratch file (`MOFA_OUT`); asserts that dora ended
/// well. Returns the sink's JSON lines and the run (its log, its folder).
pub fn run_to_sink(
    dataflow: &str,
    env: &[(&str, String)],
    limit: Duration,
) -> (Vec<serde_json::Value>, Finished) {
    let out = tempfile::tempdir().expect("tempdir");
    let sink = out.path().join("sink.jsonl");
    let mut env = env.to_vec();
    env.push(("MOFA_OUT", sink.display().to_string()));
    let run = run(dataflow, &env, limit);
    assert!(
        run.status.is_some_and(|s| s.success()),
        "dora run {dataflow} failed:\n{}",
        run.log
    );
    (sink_lines(&sink), run)
}

/// `dora build <dataflow>`: runs its `build:` lines, as a user does before `dora start`.
pub fn build(dataflow: &str) {
    let out = dora_command()
        .arg("build")
        .arg(root().join("dataflows").join(dataflow))
        .output()
        .expect("dora build");
    assert!(
        out.status.success(),
        "dora build failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Brings a coordinator and daemon down when dropped (`dora down`), even if the test panics.
struct Up;

impl Drop for Up {
    fn drop(&mut self) {
        let _ = dora_command()
            .arg("down")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The user's path: `dora up`, then `dora start <dataflow> --attach` with `env` passed as
/// `--env K=V` (nodes inherit the daemon's environment, not the CLI's), then `dora down`.
pub fn up_and_start(dataflow: &str, env: &[(&str, String)], limit: Duration) -> Finished {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("dora.log");
    let up = dora_command()
        .arg("up")
        .current_dir(dir.path())
        .output()
        .expect("dora up");
    assert!(
        up.status.success(),
        "dora up failed: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let _down = Up;
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut cmd = dora_command();
    cmd.arg("start")
        .arg(root().join("dataflows").join(dataflow))
        .arg("--attach")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    for (k, v) in env {
        cmd.arg("--env").arg(format!("{k}={v}"));
    }
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut guard = Guard {
        child: cmd.spawn().expect("spawn dora start"),
    };
    let status = guard.wait(limit);
    drop(guard);
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    Finished { status, log, dir }
}

/// The JSON lines a sink wrote (none if it wrote nothing).
pub fn sink_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// [`sink_lines`] while the sink is still writing: a partly written last line is left out.
pub fn sink_lines_lenient(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// For benchmarks: builds the release nodes and writes into `dir` a copy of
/// `dataflows/<dataflow>` that runs them (no build lines). Returns the copy's path.
pub fn release_copy(dataflow: &str, dir: &Path) -> PathBuf {
    let ok = Command::new(env!("CARGO"))
        .args(["build", "--release", "--workspace", "--bins"])
        .current_dir(root())
        .status()
        .expect("cargo")
        .success();
    assert!(ok, "release build failed");
    copy_of(dataflow, dir, "release", &[])
}

/// A copy of `dataflows/<dataflow>` in `dir` that runs the `profile` ("debug" or "release")
/// node binaries by absolute path, without build lines (the caller has built them), and with
/// each `(from, to)` text replacement made. Returns the copy's path.
pub fn copy_of(dataflow: &str, dir: &Path, profile: &str, replace: &[(&str, String)]) -> PathBuf {
    let mut yml = std::fs::read_to_string(root().join("dataflows").join(dataflow))
        .expect("the dataflow")
        .replace(
            "../target/debug/",
            &format!("{}/target/{profile}/", root().display()),
        );
    for (from, to) in replace {
        assert!(yml.contains(from), "{dataflow} has no `{from}`");
        yml = yml.replace(from, to);
    }
    let yml: Vec<&str> = yml
        .lines()
        .filter(|l| !l.trim_start().starts_with("build:"))
        .collect();
    let copy = dir.join(dataflow);
    std::fs::write(&copy, yml.join("\n")).expect("write the copy");
    copy
}
