//! WASM plugins end to end: dataflows/wasm.yml under `dora run` (the C plugin masks every
//! task before the agent sees it; the WAT tool serves the agent through mofa-tools), a plugin
//! swapped in a running dataflow, and the example plugins built from source as committed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mofa_tests::dora;
use mofa_tests::mock_llm::{MockLlm, Rule, Script};
use serde_json::{Value, json};

fn mofa_plugin() -> Command {
    Command::new(dora::root().join("target/debug/mofa-plugin"))
}

/// A copy of plugins/<name> (manifest, source, module) in `root`.
fn copy_plugin(name: &str, root: &Path) -> PathBuf {
    let (from, to) = (dora::root().join("plugins").join(name), root.join(name));
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(&from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    to
}

fn sha256_line(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("plugin.toml"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("sha256"))
        .unwrap()
        .to_owned()
}

#[test]
fn the_example_plugins_build_from_source_as_committed() {
    let t = tempfile::tempdir().unwrap();
    // WAT assembles to the very bytes committed; the manifest's hash is unchanged.
    let echo = copy_plugin("echo", t.path());
    let before = sha256_line(&echo);
    std::fs::remove_file(echo.join("echo.wasm")).unwrap();
    let out = mofa_plugin().arg("build").arg(&echo).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("(as recorded)"));
    assert_eq!(sha256_line(&echo), before);

    // C through Debian's clang and wasi-libc: the module builds, passes every check of the
    // host, and masks.
    let mask = copy_plugin("mask", t.path());
    std::fs::remove_file(mask.join("mask.wasm")).unwrap();
    let out = mofa_plugin().arg("build").arg(&mask).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check = mofa_plugin().arg("check").arg(&mask).output().unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        said.contains("mask 1.0.0 (transform, ABI 1): sha256"),
        "{said}"
    );
    let call = mofa_plugin()
        .arg("call")
        .arg(&mask)
        .arg("call 555 0100 \"now\"")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&call.stdout),
        "call ### #### \"now\"\n"
    );

    // A define changes the module: the manifest's hash follows, and the old hash would refuse it.
    let first = sha256_line(&mask);
    let out = mofa_plugin()
        .args(["build", mask.to_str().unwrap(), "-D", "MASK='*'"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("plugin.toml updated"));
    let call = mofa_plugin()
        .arg("call")
        .arg(&mask)
        .arg("pin 42")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&call.stdout), "pin **\n");
    let manifest = std::fs::read_to_string(mask.join("plugin.toml")).unwrap();
    let stale = manifest.replace(&sha256_line(&mask), &first);
    std::fs::write(mask.join("plugin.toml"), stale).unwrap();
    let check = mofa_plugin().arg("check").arg(&mask).output().unwrap();
    assert!(!check.status.success());
    assert!(String::from_utf8_lossy(&check.stderr).contains("integrity check failed for mask"));
}

#[test]
fn the_c_plugin_masks_tasks_before_the_agent_and_the_wat_tool_serves_it() {
    let mock = MockLlm::start(Script {
        rules: vec![
            Rule {
                matches: "Echo my card".into(),
                times: Some(1),
                tool_calls: vec![json!({"name": "echo", "arguments": {"text": "card on file"}})],
                ..Default::default()
            },
            Rule {
                matches: "card on file".into(),
                content: Some("The tool said {tool}".into()),
                ..Default::default()
            },
        ],
    });
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks.jsonl");
    std::fs::write(
        &tasks,
        format!(
            "{}\n",
            json!({"task": "Echo my card 4111 1111 1111 1111 please"})
        ),
    )
    .unwrap();
    let plugins = dora::root().join("plugins").display().to_string();
    let yml = dora::copy_of(
        "wasm.yml",
        dir.path(),
        "debug",
        &[(
            "MOFA_PLUGINS_DIR: ../plugins",
            format!("MOFA_PLUGINS_DIR: {plugins}"),
        )],
    );
    let sink = dir.path().join("sink.jsonl");
    let run = dora::run_file(
        &yml,
        &[
            ("OPENAI_BASE_URL", mock.base_url()),
            ("MOFA_TASKS_FILE", tasks.display().to_string()),
            ("MOFA_OUT", sink.display().to_string()),
        ],
        Duration::from_secs(90),
    );
    assert!(run.status.is_some_and(|s| s.success()), "{}", run.log);
    let lines = dora::sink_lines(&sink);
    let result = lines
        .iter()
        .find(|l| l["input"] == "result")
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert_eq!(
        result["content"],
        r#"The tool said {"text":"card on file"}"#
    );

    // The model never saw a digit of the card; it was offered the WASM tool beside the
    // built-ins, with the manifest's schema.
    let requests = mock.requests();
    let first = requests[0].body.to_string();
    assert!(
        first.contains("Echo my card #### #### #### #### please"),
        "{first}"
    );
    assert!(!requests.iter().any(|r| r.body.to_string().contains("4111")));
    let offered: Vec<&str> = requests[0].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(offered, ["calculator", "clock", "echo"]);
    let echo = &requests[0].body["tools"][2]["function"];
    assert_eq!(echo["parameters"]["required"], json!(["text"]));

    let status = lines
        .iter()
        .find(|l| l["input"] == "plugins")
        .expect("plugins status");
    let p: Value = serde_json::from_str(status["payload"].as_str().unwrap()).unwrap();
    assert_eq!(p["plugins"].as_array().unwrap().len(), 2, "{p:#}");
    assert!(
        !lines
            .iter()
            .any(|l| l["input"] == "wasm_error" || l["input"] == "tools_error"),
        "{lines:#?}"
    );
}

#[test]
fn a_plugin_rebuilt_while_the_dataflow_runs_serves_the_next_message() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    let mask = copy_plugin("mask", &plugins);
    let tasks = dir.path().join("tasks.jsonl");
    let lines: String = (0..30)
        .map(|i| format!("{}\n", json!({"task": format!("task {i} of 30")})))
        .collect();
    std::fs::write(&tasks, lines).unwrap();
    let sink = dir.path().join("sink.jsonl");
    let target = dora::root().join("target/debug");
    let yml = dir.path().join("swap.yml");
    std::fs::write(
        &yml,
        format!(
            r#"nodes:
  - id: source
    path: {t}/mofa-source
    outputs: [task]
    env: {{MOFA_TASKS_FILE: {tasks}, MOFA_TASK_INTERVAL_MS: "200"}}
  - id: wasm
    path: {t}/mofa-wasm
    inputs:
      mask: {{source: source/task, queue_size: 1000, queue_policy: backpressure}}
    outputs: [mask, plugins, error]
    env: {{MOFA_PLUGINS_DIR: {plugins}}}
  - id: sink
    path: {t}/mofa-sink
    inputs:
      masked: {{source: wasm/mask, queue_size: 1000, queue_policy: backpressure}}
      plugins: {{source: wasm/plugins, queue_size: 1000, queue_policy: backpressure}}
      error: {{source: wasm/error, queue_size: 1000, queue_policy: backpressure}}
"#,
            t = target.display(),
            tasks = tasks.display(),
            plugins = plugins.display(),
        ),
    )
    .unwrap();
    // Version 1.1.0 masks with `*` instead of `#`. Built beside the live folder before the run
    // (a C build is seconds under load, and the source would be done by then), copied in once
    // three tasks are through: the host takes the pair once both settle.
    let staging = copy_plugin("mask", &dir.path().join("staging"));
    let manifest = std::fs::read_to_string(staging.join("plugin.toml")).unwrap();
    std::fs::write(
        staging.join("plugin.toml"),
        manifest.replace("version = \"1.0.0\"", "version = \"1.1.0\""),
    )
    .unwrap();
    let out = mofa_plugin()
        .args(["build", staging.to_str().unwrap(), "-D", "MASK='*'"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let running = dora::spawn_run(
        &yml,
        &[("MOFA_OUT", sink.display().to_string())],
        Duration::from_secs(60),
    );
    let start = Instant::now();
    while dora::sink_lines_lenient(&sink)
        .iter()
        .filter(|l| l["input"] == "masked")
        .count()
        < 3
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no results: {}",
            running.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for f in ["mask.wasm", "plugin.toml"] {
        std::fs::copy(staging.join(f), mask.join(f)).unwrap();
    }
    let run = running.finish();
    assert!(run.status.is_some_and(|s| s.success()), "{}", run.log);

    let lines = dora::sink_lines(&sink);
    let masked: Vec<&str> = lines
        .iter()
        .filter(|l| l["input"] == "masked")
        .map(|l| l["content"].as_str().unwrap())
        .collect();
    // Every task came through once, in order, the early ones by 1.0.0 and the rest by 1.1.0:
    // one switch, nothing lost or doubled.
    assert_eq!(masked.len(), 30, "{masked:#?}");
    let by_v2: Vec<bool> = masked.iter().map(|c| c.contains('*')).collect();
    let switch = by_v2
        .iter()
        .position(|v| *v)
        .expect("the new version served");
    assert!(switch >= 3, "{masked:#?}");
    assert!(by_v2[switch..].iter().all(|v| *v), "{masked:#?}");
    assert_eq!(masked[0], "task # of ##");
    assert_eq!(masked[29], "task ** of **");
    let swapped = lines.iter().filter(|l| l["input"] == "plugins").any(|l| {
        let p: Value = serde_json::from_str(l["payload"].as_str().unwrap()).unwrap();
        p["changes"][0] == json!({"swapped": "mask", "from": "1.0.0", "to": "1.1.0"})
    });
    assert!(swapped, "{lines:#?}");
    assert!(!lines.iter().any(|l| l["input"] == "error"), "{lines:#?}");
}

#[test]
fn a_plugin_gets_files_only_from_the_folder_the_operator_grants() {
    let t = tempfile::tempdir().unwrap();
    let plugin = t.path().join("reader");
    std::fs::create_dir(&plugin).unwrap();
    let fixture = dora::root().join("tests/fixtures/plugins/reader");
    for f in ["plugin.toml", "reader.c"] {
        std::fs::copy(fixture.join(f), plugin.join(f)).unwrap();
    }
    let out = mofa_plugin().arg("build").arg(&plugin).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let granted = t.path().join("granted");
    std::fs::create_dir(&granted).unwrap();
    std::fs::write(granted.join("note.txt"), "first \"line\"\n").unwrap();
    std::fs::write(t.path().join("secret.txt"), "not for plugins").unwrap();
    let call = |grant: Option<String>, args: Value| {
        let mut cmd = mofa_plugin();
        cmd.arg("call").arg(&plugin).arg(args.to_string());
        match grant {
            Some(g) => cmd.env("MOFA_WASM_GRANT", g),
            None => cmd.env_remove("MOFA_WASM_GRANT"),
        };
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ro = Some(format!("reader=fs:{}", granted.display()));
    let rw = Some(format!("reader=fs-rw:{}", granted.display()));

    // The manifest asks for `fs`; without a grant the plugin is refused at load.
    let (ok, _, err) = call(None, json!({"file": "note.txt"}));
    assert!(
        !ok && err.contains("asks for capability `fs`, which the operator has not granted"),
        "{err}"
    );
    // Granted read-only: it reads the folder, not beyond it, and cannot write.
    let (ok, said, err) = call(ro.clone(), json!({"file": "note.txt"}));
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&said).unwrap(),
        json!({"text": "first \"line\"\n"})
    );
    let (ok, _, err) = call(ro.clone(), json!({"file": "../secret.txt"}));
    assert!(
        !ok && err.contains("cannot open /data/../secret.txt"),
        "{err}"
    );
    let (ok, _, err) = call(ro, json!({"file": "note.txt", "append": "more"}));
    assert!(!ok && err.contains("cannot write"), "{err}");
    assert_eq!(
        std::fs::read_to_string(granted.join("note.txt")).unwrap(),
        "first \"line\"\n"
    );
    // Granted read-write: it can.
    let (ok, said, err) = call(rw, json!({"file": "note.txt", "append": "more"}));
    assert!(ok, "{err}");
    assert!(said.contains("more"), "{said}");
    assert_eq!(
        std::fs::read_to_string(granted.join("note.txt")).unwrap(),
        "first \"line\"\nmore"
    );
    // A grant for what cannot be granted is refused.
    let (ok, _, err) = call(Some("reader=net:example.org".into()), json!({"file": "x"}));
    assert!(!ok && err.contains("cannot be granted"), "{err}");
}
