//! WASM tool plugins in the tool executor: they join the catalog with their manifest's schema,
//! their calls are validated and run like any tool, a new version replaces the old, and a plugin
//! that would shadow a built-in is refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mofa_kernel::tool as wire;
use mofa_kernel::wasm::{Limits, PluginsDir, Wanted, sha256_hex};
use mofa_tests::harness::{self, on};
use mofa_tools::builtin::calculator::Calculator;
use mofa_tools::wasm_tools::WasmTools;
use mofa_tools::{Registry, ToolsNode};
use serde_json::json;

fn repo_plugin(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../plugins")
        .join(name)
}

/// Copies plugins/<name> into `root` under `as_name` (the manifest's name changed to match).
fn install(root: &Path, name: &str, as_name: &str) -> PathBuf {
    let to = root.join(as_name);
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(repo_plugin(name)).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    let m = std::fs::read_to_string(to.join("plugin.toml")).unwrap();
    std::fs::write(
        to.join("plugin.toml"),
        m.replace(
            &format!("name = \"{name}\""),
            &format!("name = \"{as_name}\""),
        ),
    )
    .unwrap();
    settle(&to);
    to
}

/// Marks every file of `dir` as saved a while ago, so the next scan takes it.
fn settle(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let f = std::fs::File::options().write(true).open(e.path()).unwrap();
        f.set_modified(std::time::SystemTime::now() - Duration::from_secs(1))
            .unwrap();
    }
}

fn registry() -> Arc<Registry> {
    let r = Registry::new(Duration::from_secs(5));
    r.add(Arc::new(Calculator)).unwrap();
    Arc::new(r)
}

fn plugins(root: &Path) -> PluginsDir {
    PluginsDir::new(root.to_owned(), Limits::default(), Wanted::default())
}

#[tokio::test]
async fn tool_plugins_join_the_registry_and_follow_the_folder() {
    let t = tempfile::tempdir().unwrap();
    install(t.path(), "echo", "echo");
    install(t.path(), "mask", "mask"); // a transform: not a tool, left out
    install(t.path(), "echo", "calculator"); // would shadow the built-in
    let reg = registry();
    let tools = WasmTools::new(plugins(t.path()), reg.clone());
    let scan = tools.scan();
    assert!(scan.changed);
    assert_eq!(scan.errors.len(), 1, "{:?}", scan.errors);
    assert!(scan.errors[0].contains("plugin calculator: would replace a built-in"));
    let names: Vec<String> = reg.specs().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["calculator", "echo"]);

    // Validated against the manifest's schema, then run in the plugin.
    assert_eq!(
        reg.call("echo", r#"{"text": "hi"}"#).await.unwrap(),
        json!({"text": "hi"})
    );
    let e = reg.call("echo", r#"{"words": 1}"#).await.unwrap_err();
    assert!(e.to_string().contains("text"), "{e}");
    assert_eq!(
        reg.call("calculator", r#"{"expression": "2+3"}"#)
            .await
            .unwrap()["value"],
        5.0
    );

    // A new version (here: one that answers differently) replaces the old.
    let v2 = r#"(module (memory (export "memory") 1)
      (data (i32.const 16) "\00{\"v\":2}")
      (func (export "mofa_abi_version") (result i32) (i32.const 1))
      (func (export "mofa_alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "mofa_handle") (param i32 i32) (result i64)
        (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 8))))"#;
    let dir = t.path().join("echo");
    std::fs::write(dir.join("echo.wat"), v2).unwrap();
    let m = std::fs::read_to_string(dir.join("plugin.toml")).unwrap();
    let m = m
        .replace("version = \"1.0.0\"", "version = \"2.0.0\"")
        .replace("module = \"echo.wasm\"", "module = \"echo.wat\"");
    let old_hash = m.lines().find(|l| l.starts_with("sha256")).unwrap();
    let m = m.replace(
        old_hash,
        &format!("sha256 = \"{}\"", sha256_hex(v2.as_bytes())),
    );
    std::fs::write(dir.join("plugin.toml"), m).unwrap();
    settle(&dir);
    let scan = tools.scan();
    assert!(scan.changed && scan.errors.is_empty(), "{:?}", scan.errors);
    assert_eq!(
        reg.call("echo", r#"{"text": "hi"}"#).await.unwrap(),
        json!({"v": 2})
    );

    // Removed: gone from the catalog.
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(tools.scan().changed);
    assert!(!reg.contains("echo"));
}

#[test]
fn the_catalog_at_start_holds_the_tool_plugins() {
    let t = tempfile::tempdir().unwrap();
    install(t.path(), "echo", "echo");
    let r = Registry::new(Duration::from_secs(5));
    r.add(Arc::new(Calculator)).unwrap();
    let node = ToolsNode::new(r).with_plugins_dir(plugins(t.path()));
    let sent = harness::run(node, vec![]);
    let cat = on(&sent, "catalog");
    let tools = wire::catalog_from_envelope(&cat[0]).unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["calculator", "echo"]);
    assert_eq!(tools[1].parameters["required"], json!(["text"]));
}
