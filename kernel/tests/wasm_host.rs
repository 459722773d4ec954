//! The WASM plugin host against hostile and broken plugins: each is refused or stopped with a
//! clear reason, and the host (and the good plugin beside it) keeps working. Plugins are WAT
//! text written into temp folders with their manifests; the host compiles `.wat` modules.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mofa_kernel::Envelope;
use mofa_kernel::plugin::{Health, Plugin, PluginError};
use mofa_kernel::tool::Tool;
use mofa_kernel::wasm::{
    CallError, Change, Limits, PluginsDir, Wanted, WasmPlugin, WasmTool, sha256_hex,
};
use serde_json::json;

const LIMITS: Limits = Limits {
    fuel: 50_000_000,
    memory: 8 << 20,
    timeout: Duration::from_millis(300),
};

/// A module speaking ABI 1 whose `mofa_handle` runs `body` (params `$ptr`, `$len`; returns
/// the packed answer). `extra` goes inside the module (imports, data, helpers).
fn module(body: &str, extra: &str) -> String {
    format!(
        r#"(module
  {extra}
  (memory (export "memory") 1)
  (func (export "mofa_abi_version") (result i32) (i32.const 1))
  (func (export "mofa_alloc") (param i32) (result i32) (i32.const 4096))
  (func (export "mofa_handle") (param $ptr i32) (param $len i32) (result i64) {body}))"#
    )
}

/// `mofa_handle` answering the bytes of `data` (status byte included) from address 16.
fn answering(data: &str, len: usize) -> String {
    module(
        &format!("(i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const {len}))"),
        &format!(r#"(data (i32.const 16) "{data}")"#),
    )
}

/// Writes `<root>/<name>/` with the module and a manifest (its true hash unless `sha256`).
fn plugin_dir(
    root: &Path,
    name: &str,
    version: &str,
    wat: &str,
    extra_manifest: &str,
    sha256: Option<&str>,
) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("m.wat"), wat).unwrap();
    let hash = sha256.map_or_else(|| sha256_hex(wat.as_bytes()), str::to_owned);
    let kind = if extra_manifest.contains("kind") {
        String::new()
    } else {
        "kind = \"transform\"\n".into()
    };
    std::fs::write(
        dir.join("plugin.toml"),
        format!(
            "name = \"{name}\"\nversion = \"{version}\"\n{kind}abi = \"1\"\nmodule = \"m.wat\"\nsha256 = \"{hash}\"\n{extra_manifest}"
        ),
    )
    .unwrap();
    // As if saved a while ago, so a folder scan takes it at once.
    for f in ["m.wat", "plugin.toml"] {
        let file = std::fs::File::options()
            .write(true)
            .open(dir.join(f))
            .unwrap();
        file.set_modified(std::time::SystemTime::now() - Duration::from_secs(1))
            .unwrap();
    }
    dir
}

fn load(dir: &Path) -> Result<Arc<WasmPlugin>, PluginError> {
    WasmPlugin::load(dir, LIMITS).map(Arc::new)
}

fn repo_plugin(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins")
        .join(name)
}

fn fault(r: Result<Vec<u8>, CallError>) -> String {
    match r {
        Err(CallError::Fault(e)) => e.to_string(),
        other => panic!("expected a fault, got {other:?}"),
    }
}

#[test]
fn the_echo_plugin_round_trips_and_a_plugin_error_is_its_answer() {
    let echo = load(&repo_plugin("echo")).expect("plugins/echo loads");
    for input in ["{\"text\":\"hi\"}", "", &"x".repeat(200_000)] {
        assert_eq!(
            echo.call_blocking(input.as_bytes()).unwrap(),
            input.as_bytes()
        );
    }
    let t = tempfile::tempdir().unwrap();
    let dir = plugin_dir(
        t.path(),
        "says-no",
        "1.0.0",
        &answering("\\01no such city", 13),
        "",
        None,
    );
    let p = load(&dir).unwrap();
    assert_eq!(
        p.call_blocking(b"{}"),
        Err(CallError::Plugin("no such city".into()))
    );
    assert_eq!(p.health(), Health::Ready, "an error answer is not a fault");
}

#[test]
fn an_endless_loop_runs_out_of_fuel_or_time_and_the_host_goes_on() {
    let t = tempfile::tempdir().unwrap();
    let spin = module("(loop $l (br $l)) (unreachable)", "");
    let dir = plugin_dir(t.path(), "spin", "1.0.0", &spin, "", None);
    let p = load(&dir).unwrap();
    let e = fault(p.call_blocking(b"x"));
    assert!(e.contains("ran out of fuel (50000000 units)"), "{e}");
    assert!(matches!(p.health(), Health::Degraded(r) if r.contains("fuel")));

    // With more fuel than it can burn in its time, the deadline stops it.
    let mut lots = LIMITS;
    lots.fuel = u64::MAX / 2;
    let p = Arc::new(WasmPlugin::load(&dir, lots).unwrap());
    let t0 = Instant::now();
    let e = fault(p.call_blocking(b"x"));
    assert!(e.contains("exceeded its time limit of 300 ms"), "{e}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "stopped, not left running"
    );
    // The plugin's next call gets a fresh instance (and is stopped again); the host serves
    // others meanwhile.
    assert!(fault(p.call_blocking(b"x")).contains("time limit"));
    let echo = load(&repo_plugin("echo")).unwrap();
    assert_eq!(echo.call_blocking(b"{}").unwrap(), b"{}");
}

#[test]
fn a_memory_bomb_stops_at_its_limit() {
    let t = tempfile::tempdir().unwrap();
    // Grows a page at a time and ignores failure: only the host's limit can stop it.
    let bomb = module(
        "(loop $l (drop (memory.grow (i32.const 1))) (br $l)) (unreachable)",
        "",
    );
    let dir = plugin_dir(t.path(), "bomb", "1.0.0", &bomb, "", None);
    let p = load(&dir).unwrap();
    let e = fault(p.call_blocking(b"x"));
    assert!(e.contains("memory limit exceeded"), "{e}");
    assert!(e.contains("the limit is 8 MB"), "{e}");

    // One that asks for 128 MB up front is refused at load.
    let big = module("(i64.const 0)", "").replace(
        "(memory (export \"memory\") 1)",
        "(memory (export \"memory\") 2048)",
    );
    let dir = plugin_dir(t.path(), "big", "1.0.0", &big, "", None);
    let e = load(&dir).err().expect("refused").to_string();
    assert!(e.contains("memory limit exceeded: asked for 128 MB"), "{e}");

    // A manifest may ask for less than the host allows, not more.
    let dir = plugin_dir(
        t.path(),
        "small",
        "1.0.0",
        &bomb,
        "[limits]\nmemory_mb = 2\n",
        None,
    );
    assert!(fault(load(&dir).unwrap().call_blocking(b"x")).contains("the limit is 2 MB"));
    let dir = plugin_dir(
        t.path(),
        "greedy",
        "1.0.0",
        &bomb,
        "[limits]\nmemory_mb = 4096\n",
        None,
    );
    assert_eq!(load(&dir).unwrap().limits().memory, 8 << 20);
}

#[test]
fn traps_and_broken_answers_fail_the_call_only() {
    let t = tempfile::tempdir().unwrap();
    let trap = plugin_dir(
        t.path(),
        "trap",
        "1.0.0",
        &module("(unreachable)", ""),
        "",
        None,
    );
    let e = fault(load(&trap).unwrap().call_blocking(b"x"));
    assert!(e.contains("plugin trap fault: mofa_handle: trapped"), "{e}");
    assert!(e.contains("unreachable"), "{e}");

    let div = module(
        "(drop (i32.div_u (i32.const 1) (i32.const 0))) (i64.const 0)",
        "",
    );
    let e = fault(
        load(&plugin_dir(t.path(), "div", "1.0.0", &div, "", None))
            .unwrap()
            .call_blocking(b"x"),
    );
    assert!(e.contains("divide by zero"), "{e}");

    // An answer pointing outside the plugin's memory, an empty one, an unknown status.
    let outside = module("(i64.const 0x7fff000000000010)", "");
    let e = fault(
        load(&plugin_dir(
            t.path(),
            "outside",
            "1.0.0",
            &outside,
            "",
            None,
        ))
        .unwrap()
        .call_blocking(b"x"),
    );
    assert!(e.contains("outside its memory"), "{e}");
    let empty = module("(i64.const 0)", "");
    let e = fault(
        load(&plugin_dir(t.path(), "empty", "1.0.0", &empty, "", None))
            .unwrap()
            .call_blocking(b"x"),
    );
    assert!(e.contains("no status byte"), "{e}");
    let status = answering("\\07x", 2);
    let e = fault(
        load(&plugin_dir(t.path(), "status", "1.0.0", &status, "", None))
            .unwrap()
            .call_blocking(b"x"),
    );
    assert!(e.contains("status 7"), "{e}");

    // The host is fine: a good plugin still answers.
    let echo = load(&repo_plugin("echo")).unwrap();
    assert_eq!(echo.call_blocking(b"1").unwrap(), b"1");
}

#[test]
fn modules_that_fail_the_checks_are_refused_with_the_reason() {
    let t = tempfile::tempdir().unwrap();
    let good = answering("\\00{}", 3);

    // Hash mismatch: the file is not the one the manifest vouches for.
    let dir = plugin_dir(
        t.path(),
        "swapped",
        "1.0.0",
        &good,
        "",
        Some(&"ab".repeat(32)),
    );
    match load(&dir).err().expect("refused") {
        PluginError::Integrity {
            name,
            expected,
            found,
        } => {
            assert_eq!((name.as_str(), expected), ("swapped", "ab".repeat(32)));
            assert_eq!(found, sha256_hex(good.as_bytes()));
        }
        other => panic!("{other}"),
    }

    // Wrong ABI: the module says 2; or the manifest is built for ^2.
    let v2 = good.replace("(result i32) (i32.const 1))", "(result i32) (i32.const 2))");
    let e = load(&plugin_dir(t.path(), "abi2", "1.0.0", &v2, "", None))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("the module speaks plugin ABI 2, this host speaks 1"),
        "{e}"
    );
    let dir = plugin_dir(t.path(), "abi-req", "1.0.0", &good, "", None);
    let m = std::fs::read_to_string(dir.join("plugin.toml")).unwrap();
    std::fs::write(
        dir.join("plugin.toml"),
        m.replace("abi = \"1\"", "abi = \"^2\""),
    )
    .unwrap();
    let e = load(&dir).err().unwrap().to_string();
    assert!(
        e.contains("built for plugin ABI ^2, this host speaks 1.0.0"),
        "{e}"
    );

    // Missing export, and an import the host does not offer (WASI without a grant).
    let no_alloc = good.replace("\"mofa_alloc\"", "\"alloc\"");
    let e = load(&plugin_dir(
        t.path(),
        "no-alloc",
        "1.0.0",
        &no_alloc,
        "",
        None,
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("export `mofa_alloc(i32) -> i32`"), "{e}");
    let wasi = module(
        "(i64.const 0)",
        r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#,
    );
    let e = load(&plugin_dir(t.path(), "wasi", "1.0.0", &wasi, "", None))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("imports `wasi_snapshot_preview1.fd_write`"),
        "{e}"
    );
    let e = load(&plugin_dir(
        t.path(),
        "fs",
        "1.0.0",
        &good,
        "capabilities = [\"fs\"]\n",
        None,
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("asks for capability `fs`, which the operator has not granted"),
        "{e}"
    );

    // Not WASM at all.
    let e = load(&plugin_dir(
        t.path(),
        "junk",
        "1.0.0",
        "(module (oops))",
        "",
        None,
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("not a valid module"), "{e}");
}

#[test]
fn host_functions_log_and_clock_work_inside_a_plugin() {
    let t = tempfile::tempdir().unwrap();
    // Answers `\00` followed by 8 bytes: the clock, as little-endian i64, and logs a line.
    let clock = module(
        r#"(call $log (i32.const 2) (i32.const 32) (i32.const 5))
           (i32.store8 (i32.const 16) (i32.const 0))
           (i64.store (i32.const 17) (call $now))
           (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 9))"#,
        r#"(import "mofa" "now_ms" (func $now (result i64)))
           (import "mofa" "log" (func $log (param i32 i32 i32)))
           (data (i32.const 32) "hello")"#,
    );
    let p = load(&plugin_dir(
        t.path(),
        "clock",
        "1.0.0",
        &clock,
        "capabilities = [\"log\", \"clock\"]\n",
        None,
    ))
    .unwrap();
    let out = p.call_blocking(b"").unwrap();
    let ms = i64::from_le_bytes(out[..8].try_into().unwrap());
    let now = mofa_kernel::envelope::now_ms();
    assert!((now - 5_000..=now).contains(&ms), "{ms} vs {now}");
}

#[tokio::test]
async fn wasm_tools_and_the_mask_transform_run_behind_the_kernel_traits() {
    let echo = WasmTool::new(load(&repo_plugin("echo")).unwrap()).unwrap();
    assert_eq!(echo.spec().name, "echo");
    assert_eq!(echo.spec().parameters["required"], json!(["text"]));
    let args = json!({"text": "héllo \"q\""});
    assert_eq!(echo.call(args.clone()).await.unwrap(), args);

    let mask = load(&repo_plugin("mask")).expect("plugins/mask loads");
    let msg = Envelope::task("src", "card 4111 1111, \u{1F600} call +33 6 12").with_round(7);
    let out = mask.transform(&msg).await.unwrap();
    assert_eq!(out.content, "card #### ####, \u{1F600} call +## # ##");
    assert_eq!(
        (out.id.as_str(), out.round),
        (msg.id.as_str(), 7),
        "the rest unchanged"
    );
    let mut odd = msg.clone();
    // serde_json writes U+0001 as `\u0001`: its hex digits are not content digits.
    odd.content = "a\u{0001}2".into();
    assert_eq!(mask.transform(&odd).await.unwrap().content, "a\u{0001}#");
    assert!(WasmTool::new(mask).is_err(), "a transform is not a tool");
}

#[test]
fn a_plugins_folder_swaps_versions_and_calls_in_flight_finish_on_the_old_one() {
    let t = tempfile::tempdir().unwrap();
    // v1 waits 400 ms on the host clock, then answers "v1"; v2 answers "v2" at once.
    let slow = module(
        r#"(local $until i64)
           (local.set $until (i64.add (call $now) (i64.const 400)))
           (loop $l (br_if $l (i64.lt_s (call $now) (local.get $until))))
           (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 3))"#,
        r#"(import "mofa" "now_ms" (func $now (result i64))) (data (i32.const 16) "\00v1")"#,
    );
    let root = t.path().join("plugins");
    plugin_dir(&root, "greet", "1.0.0", &slow, "", None);
    let mut limits = LIMITS;
    limits.fuel = u64::MAX / 2;
    limits.timeout = Duration::from_secs(5);
    let dir = PluginsDir::new(root.clone(), limits, Wanted::default());
    assert_eq!(
        dir.scan(),
        vec![Change::Loaded {
            name: "greet".into(),
            version: "1.0.0".into()
        }]
    );
    assert_eq!(dir.scan(), vec![], "nothing changed");

    let v1 = dir.get("greet").unwrap();
    let in_flight = std::thread::spawn(move || v1.call_blocking(b""));
    std::thread::sleep(Duration::from_millis(100));
    plugin_dir(&root, "greet", "1.1.0", &answering("\\00v2", 3), "", None);
    assert_eq!(
        dir.scan(),
        vec![Change::Swapped {
            name: "greet".into(),
            from: "1.0.0".into(),
            to: "1.1.0".into()
        }]
    );
    assert_eq!(dir.get("greet").unwrap().call_blocking(b"").unwrap(), b"v2");
    assert_eq!(
        in_flight.join().unwrap().unwrap(),
        b"v1",
        "finished on the old version"
    );

    // A broken v3 (hash mismatch) is refused and v2 keeps serving.
    plugin_dir(
        &root,
        "greet",
        "1.2.0",
        &answering("\\00v3", 3),
        "",
        Some(&"0".repeat(64)),
    );
    let changes = dir.scan();
    assert!(
        matches!(&changes[..], [Change::Refused { reason, .. }] if reason.contains("integrity check failed for greet")),
        "{changes:?}"
    );
    assert_eq!(dir.get("greet").unwrap().manifest().version, "1.1.0");
    assert_eq!(dir.get("greet").unwrap().call_blocking(b"").unwrap(), b"v2");

    // Removed: unloaded.
    std::fs::remove_dir_all(root.join("greet")).unwrap();
    assert_eq!(
        dir.scan(),
        vec![Change::Unloaded {
            name: "greet".into()
        }]
    );
    assert!(dir.get("greet").is_none());
}

#[test]
fn an_operator_pins_plugin_versions() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("plugins");
    let ok = answering("\\00{}", 3);
    plugin_dir(&root, "old", "0.9.0", &ok, "", None);
    plugin_dir(&root, "new", "1.3.0", &ok, "", None);
    plugin_dir(&root, "other", "1.0.0", &ok, "", None);
    let dir = PluginsDir::new(root, LIMITS, Wanted::parse("old@^1, new@^1.2").unwrap());
    let changes = dir.scan();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(changes.contains(&Change::Loaded {
        name: "new".into(),
        version: "1.3.0".into()
    }));
    assert!(changes.iter().any(|c| matches!(c, Change::Refused { reason, .. } if reason.contains("old 0.9.0 is outside the required version range ^1"))));
    assert!(dir.get("other").is_none(), "not asked for");
    assert_eq!(dir.wanted().missing(&dir.loaded()), vec!["old"]);
}

#[tokio::test]
async fn a_transform_can_take_the_envelope_as_arrow_ipc() {
    // plugins/echo's module as a transform in the Arrow format: it returns the IPC stream it
    // got, which the host must read back as the same envelope.
    let t = tempfile::tempdir().unwrap();
    let wat = std::fs::read_to_string(repo_plugin("echo").join("echo.wat")).unwrap();
    let dir = plugin_dir(
        t.path(),
        "same",
        "1.0.0",
        &wat,
        "format = \"arrow\"\n",
        None,
    );
    let p = load(&dir).unwrap();
    let msg = Envelope::task("src", "rows and columns").with_round(2);
    assert_eq!(p.transform(&msg).await.unwrap(), msg);
    // The bytes really were Arrow IPC, not JSON.
    let bytes = mofa_kernel::wasm::encode(&msg, mofa_kernel::wasm::Format::Arrow).unwrap();
    assert!(serde_json::from_slice::<serde_json::Value>(&bytes).is_err());
    assert_eq!(p.call_blocking(&bytes).unwrap(), bytes);
}
