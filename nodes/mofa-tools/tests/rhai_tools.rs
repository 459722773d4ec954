//! Rhai tools: declarations into schemas, calls through the registry under the script limits,
//! and the folder hot-loaded while the node runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mofa_kernel::node::{Ctx, Failure, Handler};
use mofa_kernel::script::{Limits, ScriptEngine};
use mofa_kernel::tool::{self as wire, ToolError};
use mofa_kernel::watch;
use mofa_kernel::{Envelope, Kind};
use mofa_tests::harness::{self, envelope, on, tool_call as call};
use mofa_tools::builtin::calculator::Calculator;
use mofa_tools::rhai_tools::{RhaiTool, ToolsDir, spec_from_declaration};
use mofa_tools::{Registry, ToolsNode};
use serde_json::json;

fn engine() -> Arc<ScriptEngine> {
    Arc::new(ScriptEngine::new(Limits {
        max_operations: 200_000,
        timeout: Duration::from_millis(300),
        ..Limits::default()
    }))
}

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts/tools")
        .join(name)
}

/// Saves a file as if a moment ago (past `watch::SETTLE`), so the next scan takes it.
fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
    let p = dir.join(file);
    std::fs::write(&p, text).unwrap();
    let f = std::fs::File::options().write(true).open(&p).unwrap();
    f.set_modified(std::time::SystemTime::now() - 2 * watch::SETTLE)
        .unwrap();
    p
}

/// A tool file: `decl` is the map `tool()` returns, `run` the body of `run(args)`.
fn tool_file(decl: &str, run: &str) -> String {
    format!("fn tool() {{ {decl} }}\nfn run(args) {{ {run} }}\n")
}

#[test]
fn a_declaration_becomes_the_json_schema_of_its_parameters() {
    let spec = spec_from_declaration(
        &json!({
            "name": "plan",
            "description": "Plans a trip",
            "parameters": {
                "city": {"type": "string", "description": "Where to"},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
                "budget": {"type": "number", "minimum": 0.5},
                "mode": {"type": "string", "enum": ["train", "bus"]},
                "pets": {"type": "boolean"},
                "stops": {"type": "array", "items": {"type": "string"}},
                "extra": {"type": "object"},
            },
            "required": ["city", "days"],
        }),
        "file_stem",
    )
    .unwrap();
    assert_eq!(spec.name, "plan");
    assert_eq!(spec.description, "Plans a trip");
    assert_eq!(
        spec.parameters,
        json!({
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "Where to"},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
                "budget": {"type": "number", "minimum": 0.5},
                "mode": {"type": "string", "enum": ["train", "bus"]},
                "pets": {"type": "boolean"},
                "stops": {"type": "array", "items": {"type": "string"}},
                "extra": {"type": "object"},
            },
            "required": ["city", "days"],
            "additionalProperties": false,
        })
    );

    // From a real file: the shipped example, its name from the declaration; word_count's from
    // its file name.
    let discount = RhaiTool::load(&engine(), &shipped("discount.rhai")).unwrap();
    let s = mofa_kernel::tool::Tool::spec(&discount);
    assert_eq!(s.name, "discount");
    assert_eq!(s.parameters["properties"]["price"]["minimum"], 0);
    assert_eq!(
        s.parameters["properties"]["tier"]["enum"],
        json!(["gold", "silver"])
    );
    assert_eq!(s.parameters["required"], json!(["price", "tier"]));
    let wc = RhaiTool::load(&engine(), &shipped("word_count.rhai")).unwrap();
    assert_eq!(mofa_kernel::tool::Tool::spec(&wc).name, "word_count");
}

#[test]
fn a_bad_declaration_is_refused_with_the_file_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ok_run = "1";
    let cases = [
        (
            tool_file(
                r#"#{ description: "d", parameters: #{ x: #{ type: "float" } } }"#,
                ok_run,
            ),
            "parameter `x`: type \"float\" is not one of",
        ),
        (
            tool_file(
                r#"#{ description: "d", parameters: #{ x: #{ type: "string", minimum: 1 } } }"#,
                ok_run,
            ),
            "minimum applies to numbers, not to type string",
        ),
        (
            tool_file(
                r#"#{ description: "d", parameters: #{ x: #{ type: "integer", minimum: 5, maximum: 1 } } }"#,
                ok_run,
            ),
            "minimum 5 is above maximum 1",
        ),
        (
            tool_file(
                r#"#{ description: "d", parameters: #{ x: #{ type: "integer", enum: ["a"] } } }"#,
                ok_run,
            ),
            "enum value \"a\" is not of type integer",
        ),
        (
            tool_file(
                r#"#{ description: "d", parameters: #{ x: #{ type: "number", minimun: 0 } } }"#,
                ok_run,
            ),
            "unknown key `minimun`",
        ),
        (
            tool_file(
                r#"#{ description: "d", parameters: #{ x: #{ type: "string" } }, required: ["y"] }"#,
                ok_run,
            ),
            "required names `y`, which is not a parameter",
        ),
        (
            tool_file(r#"#{ parameters: #{} }"#, ok_run),
            "description must be a non-empty string",
        ),
        (
            tool_file(r#"#{ name: "no spaces", description: "d" }"#, ok_run),
            "must be 1 to 64 letters",
        ),
        (
            tool_file(r#""just text""#, ok_run),
            "tool() must return a map",
        ),
        (
            r#"fn tool() { #{ description: "d" } }"#.to_owned(),
            "no implementation: define `fn run(args)`",
        ),
        (
            "fn run(args) { 1 }".to_owned(),
            "no declaration: define `fn tool()`",
        ),
        ("fn tool( {".to_owned(), "script does not compile"),
        (
            tool_file("loop {}", ok_run),
            "tool(): script stopped at a limit",
        ),
    ];
    for (i, (text, says)) in cases.iter().enumerate() {
        let path = write(dir.path(), &format!("bad{i}.rhai"), text);
        let err = match RhaiTool::load(&engine(), &path) {
            Ok(_) => panic!("{text}: loaded"),
            Err(e) => e,
        };
        assert!(
            err.starts_with(&path.display().to_string()) && err.contains(says),
            "{text}: {err}"
        );
    }
}

fn registry_with(tool: RhaiTool) -> Registry {
    let r = Registry::new(Duration::from_secs(10));
    r.add(Arc::new(tool)).unwrap();
    r
}

#[tokio::test]
async fn arguments_failing_the_schema_never_reach_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "tripwire.rhai",
        &tool_file(
            r#"#{ description: "d", parameters: #{ n: #{ type: "integer", minimum: 0, maximum: 9 },
                 c: #{ type: "string", enum: ["a", "b"] } }, required: ["n"] }"#,
            r#"throw "run was called""#,
        ),
    );
    let r = registry_with(RhaiTool::load(&engine(), &path).unwrap());
    for bad in [
        json!({}),
        json!({"n": 10}),
        json!({"n": "1"}),
        json!({"n": 1, "c": "z"}),
        json!({"n": 1, "other": 1}),
    ] {
        match r.call("tripwire", &bad.to_string()).await {
            Err(ToolError::InvalidArguments(_)) => {}
            other => panic!("{bad}: {other:?}"),
        }
    }
    // Valid arguments do reach it.
    match r.call("tripwire", r#"{"n": 1, "c": "a"}"#).await {
        Err(ToolError::Failed(e)) => assert!(e.contains("run was called"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_hostile_run_fails_its_call_within_the_limit_and_the_next_call_works() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "hostile.rhai",
        &tool_file(
            r#"#{ description: "d", parameters: #{ how: #{ type: "string", enum: ["spin", "sleep", "ok"] } },
                 required: ["how"] }"#,
            r#"if args.how == "spin" { loop {} } else if args.how == "sleep" { sleep(60000) } else { 42 }"#,
        ),
    );
    let r = registry_with(RhaiTool::load(&engine(), &path).unwrap());
    let start = Instant::now();
    match r.call("hostile", r#"{"how": "spin"}"#).await {
        Err(ToolError::Failed(e)) => assert!(
            e.contains("hostile.rhai") && e.contains("operations"),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
    match r.call("hostile", r#"{"how": "sleep"}"#).await {
        Err(ToolError::Failed(e)) => assert!(e.contains("300 ms timeout"), "{e}"),
        other => panic!("{other:?}"),
    }
    // Stopped by the script limits, well before the registry's 10 s.
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(r.call("hostile", r#"{"how": "ok"}"#).await, Ok(json!(42)));
}

#[tokio::test]
async fn the_shipped_tools_compute() {
    let e = engine();
    let r = Registry::new(Duration::from_secs(10));
    for f in ["discount.rhai", "word_count.rhai"] {
        r.add(Arc::new(RhaiTool::load(&e, &shipped(f)).unwrap()))
            .unwrap();
    }
    assert_eq!(
        r.call("discount", r#"{"price": 99.9, "tier": "gold"}"#)
            .await,
        Ok(json!({"price": 79.92, "tier": "gold", "rate": 0.2}))
    );
    assert_eq!(
        r.call("word_count", r#"{"text": "Otters hold\nhands. "}"#)
            .await,
        Ok(json!({"words": 3, "characters": 19, "lines": 2}))
    );
}

fn greet(greeting: &str) -> String {
    tool_file(
        r#"#{ name: "greet", description: "Greets", parameters: #{ who: #{ type: "string" } }, required: ["who"] }"#,
        &format!(r#""{greeting}, " + args.who"#),
    )
}

#[tokio::test]
async fn the_folder_is_kept_in_step_with_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Arc::new(Registry::new(Duration::from_secs(10)));
    registry.add(Arc::new(Calculator)).unwrap();
    let tools = ToolsDir::new(dir.path().to_owned(), engine(), registry.clone());
    let names = || -> Vec<String> { registry.specs().into_iter().map(|s| s.name).collect() };
    let scan = || tools.scan();

    let s = scan();
    assert!(!s.changed && s.errors.is_empty());

    // Still being written: left for a later look, neither loaded nor reported. A look that
    // came a settling time after the write (this thread stalled on a busy machine) would rightly
    // take the empty file: such a try is made again.
    let looked_in_time = (0..20).find_map(|_| {
        let written = Instant::now();
        std::fs::write(dir.path().join("greet.rhai"), "").unwrap();
        let s = scan();
        (written.elapsed() < watch::SETTLE).then_some(s)
    });
    let s = looked_in_time.expect("a look within the settling time");
    assert!(!s.changed && s.errors.is_empty(), "{:?}", s.errors);

    write(dir.path(), "greet.rhai", &greet("Hello"));
    write(dir.path(), "notes.txt", "not a tool");
    assert!(scan().changed);
    assert_eq!(names(), ["calculator", "greet"]);
    assert_eq!(
        registry.call("greet", r#"{"who": "Ada"}"#).await,
        Ok(json!("Hello, Ada"))
    );
    assert!(!scan().changed, "nothing new");

    write(dir.path(), "greet.rhai", &greet("Hi"));
    assert!(scan().changed);
    assert_eq!(
        registry.call("greet", r#"{"who": "Ada"}"#).await,
        Ok(json!("Hi, Ada"))
    );

    // A broken version: reported once, naming the file; the old one keeps serving.
    write(dir.path(), "greet.rhai", "fn tool( {");
    let s = scan();
    assert!(!s.changed);
    assert_eq!(s.errors.len(), 1);
    assert!(s.errors[0].contains("greet.rhai"), "{:?}", s.errors);
    assert!(scan().errors.is_empty(), "reported once, not at every look");
    assert_eq!(
        registry.call("greet", r#"{"who": "Ada"}"#).await,
        Ok(json!("Hi, Ada"))
    );

    // A name taken by a built-in, or by another file, is refused.
    write(
        dir.path(),
        "calc.rhai",
        &tool_file(r#"#{ name: "calculator", description: "d" }"#, "0"),
    );
    write(dir.path(), "greet2.rhai", &greet("Yo"));
    let s = scan();
    assert_eq!(s.errors.len(), 2, "{:?}", s.errors);
    assert!(s.errors.iter().any(|e| e.contains("built-in")));
    assert!(s.errors.iter().any(|e| e.contains("already declared by")));
    let calc = registry
        .call("calculator", r#"{"expression": "1+1"}"#)
        .await;
    assert_eq!(calc.unwrap()["value"], 2.0, "the built-in still serves");

    for f in ["greet.rhai", "calc.rhai", "greet2.rhai"] {
        std::fs::remove_file(dir.path().join(f)).unwrap();
    }
    assert!(scan().changed);
    assert_eq!(names(), ["calculator"]);
}

/// The tools node, telling `started` when its start (the first folder scan and catalog) is
/// done: the test's edits are timed from there, as its events are.
struct Started {
    node: ToolsNode,
    started: std::sync::mpsc::Sender<()>,
}

#[async_trait::async_trait]
impl Handler for Started {
    async fn on_start(&self, ctx: &Ctx) -> Result<(), Failure> {
        let r = self.node.on_start(ctx).await;
        let _ = self.started.send(());
        r
    }

    async fn on_message(&self, ctx: &Ctx, input: &str, msg: Envelope) -> Result<(), Failure> {
        self.node.on_message(ctx, input, msg).await
    }

    async fn on_stop(&self, ctx: &Ctx) {
        self.node.on_stop(ctx).await
    }
}

#[test]
fn the_running_node_reloads_the_folder_and_republishes_its_catalog() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "word_count.rhai",
        &std::fs::read_to_string(shipped("word_count.rhai")).unwrap(),
    );
    let registry = Registry::new(Duration::from_secs(10));
    registry.add(Arc::new(Calculator)).unwrap();
    let (started, started_rx) = std::sync::mpsc::channel();
    let node = Started {
        node: ToolsNode::new(registry).with_tools_dir(dir.path().to_owned(), engine()),
        started,
    };

    // Plain saves (truncate, then write), as an editor does, 2.5 s apart, timed on the
    // harness's clock (which starts with `harness::run`) and never before the node's first scan
    // (an edit before it would merge two catalogs). Each call comes 1.5 s after the edit it
    // needs: the node looks every 250 ms and leaves a file alone for 100 ms after a write.
    let root = dir.path().to_owned();
    let t0 = Instant::now();
    let editor = std::thread::spawn(move || {
        started_rx.recv().expect("the node started");
        let wait_until = |s: f64| {
            let t = Duration::from_secs_f64(s);
            std::thread::sleep(t.saturating_sub(t0.elapsed()));
        };
        let save = |file: &str, text: &str| std::fs::write(root.join(file), text).unwrap();
        wait_until(1.5);
        save("greet.rhai", &greet("Hello"));
        wait_until(4.0);
        save("greet.rhai", &greet("Hi"));
        wait_until(6.5);
        save("greet.rhai", "fn tool( {");
        wait_until(9.0);
        std::fs::remove_file(root.join("word_count.rhai")).unwrap();
    });
    let during_v1 = call("greet", json!({"who": "Ada"}));
    let broken_v3 = call("greet", json!({"who": "Bo"}));
    let sent = harness::run(
        node,
        vec![
            envelope(3.0, "agent", &during_v1),
            envelope(8.0, "agent", &broken_v3),
            // The last event: the node runs until it, 1.5 s after the last edit.
            envelope(
                10.5,
                "agent",
                &call("calculator", json!({"expression": "1"})),
            ),
        ],
    );
    editor.join().unwrap();

    let catalogs: Vec<Vec<String>> = on(&sent, "catalog")
        .iter()
        .map(|c| {
            let specs = wire::catalog_from_envelope(c).unwrap();
            specs.into_iter().map(|s| s.name).collect()
        })
        .collect();
    assert_eq!(
        catalogs,
        [
            vec!["calculator", "word_count"],
            vec!["calculator", "greet", "word_count"],
            vec!["calculator", "greet", "word_count"],
            vec!["calculator", "greet"],
        ],
        "start, added, changed, (broken: no change), removed"
    );
    let agent = on(&sent, "agent");
    let answer = |c: &Envelope| {
        let r = agent
            .iter()
            .find(|e| e.reply_to.as_deref() == Some(c.id.as_str()))
            .unwrap();
        assert_eq!(r.kind, Kind::ToolResult, "{r:?}");
        r.payload_json().unwrap()["result"].clone()
    };
    assert_eq!(answer(&during_v1), "Hello, Ada");
    assert_eq!(answer(&broken_v3), "Hi, Bo", "the last good version serves");
    let errors = on(&sent, "error");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].content.contains("greet.rhai") && errors[0].content.contains("compile"),
        "{}",
        errors[0].content
    );
}
