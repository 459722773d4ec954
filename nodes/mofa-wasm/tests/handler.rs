//! mofa-wasm's handler under `DoraNode::init_testing`: tool calls and transforms answered,
//! every failure (unknown plugin, wrong kind, a plugin stopped by its limits, a refused plugin,
//! a malformed message) an `error` envelope, and the node still serving afterwards.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mofa_kernel::wasm::{Limits, PluginsDir, Wanted, sha256_hex};
use mofa_kernel::{Envelope, Kind};
use mofa_tests::harness::{self, envelope, on, tool_call as call};
use mofa_wasm::WasmNode;
use serde_json::json;

fn repo_plugins() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins")
}

/// A plugins folder with echo and mask from the repository, a plugin that loops for ever, and
/// a copy of echo whose module was tampered with.
fn plugins() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    for name in ["echo", "mask"] {
        let to = t.path().join(name);
        std::fs::create_dir(&to).unwrap();
        for f in ["plugin.toml", &format!("{name}.wasm")] {
            std::fs::copy(repo_plugins().join(name).join(f), to.join(f)).unwrap();
        }
    }
    // Hostile tools, each with a body for `mofa_handle`: an endless loop, a memory bomb, a trap;
    // and a module that speaks another ABI version.
    let hostile = [
        ("spin", 1, "(loop $l (br $l)) (unreachable)"),
        (
            "bomb",
            1,
            "(loop $l (drop (memory.grow (i32.const 16))) (br $l)) (unreachable)",
        ),
        ("trap", 1, "(unreachable)"),
        ("abi2", 2, "(i64.const 0)"),
    ];
    for (name, abi, body) in hostile {
        let wat = format!(
            r#"(module (memory (export "memory") 1)
              (func (export "mofa_abi_version") (result i32) (i32.const {abi}))
              (func (export "mofa_alloc") (param i32) (result i32) (i32.const 64))
              (func (export "mofa_handle") (param i32 i32) (result i64) {body}))"#
        );
        let dir = t.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("m.wat"), &wat).unwrap();
        std::fs::write(
            dir.join("plugin.toml"),
            format!(
                "name = \"{name}\"\nversion = \"0.1.0\"\nkind = \"tool\"\nabi = \"1\"\nmodule = \"m.wat\"\nsha256 = \"{}\"\n[tool]\ndescription = \"hostile\"\nparameters = {{ type = \"object\" }}\n",
                sha256_hex(wat.as_bytes())
            ),
        )
        .unwrap();
    }
    let tampered = t.path().join("tampered");
    std::fs::create_dir(&tampered).unwrap();
    let manifest = std::fs::read_to_string(repo_plugins().join("echo/plugin.toml")).unwrap();
    std::fs::write(
        tampered.join("plugin.toml"),
        manifest.replace("name = \"echo\"", "name = \"tampered\""),
    )
    .unwrap();
    let mut module = std::fs::read(repo_plugins().join("echo/echo.wasm")).unwrap();
    module.push(0);
    std::fs::write(tampered.join("echo.wasm"), module).unwrap();
    // Saved a while ago: the first scan takes every file.
    for entry in walk(t.path()) {
        let f = std::fs::File::options().write(true).open(entry).unwrap();
        f.set_modified(std::time::SystemTime::now() - Duration::from_secs(1))
            .unwrap();
    }
    t
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            files.extend(walk(&e.path()));
        } else {
            files.push(e.path());
        }
    }
    files
}

fn node(dir: &Path) -> WasmNode {
    let limits = Limits {
        fuel: 20_000_000,
        memory: 16 << 20,
        timeout: Duration::from_millis(500),
    };
    WasmNode::new(PluginsDir::new(dir.to_owned(), limits, Wanted::default()))
}

fn answer_to<'a>(sent: &'a [Envelope], to: &Envelope) -> &'a Envelope {
    sent.iter()
        .find(|e| e.reply_to.as_deref() == Some(to.id.as_str()))
        .unwrap_or_else(|| panic!("no answer to {}: {sent:#?}", to.content))
}

#[test]
fn tools_and_transforms_are_answered_and_every_failure_is_an_error_envelope() {
    let dir = plugins();
    let echo = call("echo", json!({"text": "hi"}));
    let spin = call("spin", json!({}));
    let bomb = call("bomb", json!({}));
    let trap = call("trap", json!({}));
    let abi2 = call("abi2", json!({}));
    let unknown = call("nope", json!({}));
    let mask_as_tool = call("mask", json!({}));
    let tampered = call("tampered", json!({"text": "x"}));
    let task = Envelope::task("src", "PIN 1234");
    let echo_after = call("echo", json!({"text": "still here"}));
    let on_unknown_input = Envelope::task("src", "to nowhere");
    let sent = harness::run(
        node(dir.path()),
        vec![
            envelope(0.2, "tools", &echo),
            envelope(0.3, "tools", &spin),
            envelope(0.32, "tools", &bomb),
            envelope(0.34, "tools", &trap),
            envelope(0.36, "tools", &abi2),
            envelope(0.4, "tools", &unknown),
            envelope(0.5, "tools", &mask_as_tool),
            envelope(0.6, "tools", &tampered),
            envelope(0.7, "mask", &task),
            envelope(0.8, "echo", &on_unknown_input),
            envelope(0.9, "other", &on_unknown_input),
            harness::raw(1.0, "mask", json!([1, 2, 3]), None),
            envelope(1.5, "tools", &echo_after),
        ],
    );
    let tools = on(&sent, "tools");
    let ok = answer_to(&tools, &echo);
    assert_eq!(ok.kind, Kind::ToolResult);
    assert_eq!(ok.payload_json().unwrap()["result"], json!({"text": "hi"}));

    let stopped = answer_to(&tools, &spin);
    assert_eq!(stopped.kind, Kind::Error);
    assert!(
        stopped.content.contains("ran out of fuel"),
        "{}",
        stopped.content
    );
    let bombed = answer_to(&tools, &bomb);
    assert!(
        bombed.content.contains("memory limit exceeded"),
        "{}",
        bombed.content
    );
    let trapped = answer_to(&tools, &trap);
    assert!(
        trapped.content.contains("trapped") && trapped.content.contains("unreachable"),
        "{}",
        trapped.content
    );
    assert!(
        answer_to(&tools, &abi2)
            .content
            .contains("no tool plugin `abi2`")
    );
    assert!(
        answer_to(&tools, &unknown)
            .content
            .contains("no tool plugin `nope` is loaded; loaded: bomb, echo, mask, spin, trap")
    );
    assert!(
        answer_to(&tools, &mask_as_tool)
            .content
            .contains("is a transform plugin, not a tool")
    );
    assert!(
        answer_to(&tools, &tampered)
            .content
            .contains("no tool plugin `tampered`")
    );
    let after = answer_to(&tools, &echo_after);
    assert_eq!(
        after.payload_json().unwrap()["result"]["text"],
        "still here",
        "the host goes on"
    );

    let masked = on(&sent, "mask");
    let out = masked
        .iter()
        .find(|e| e.id == task.id)
        .expect("the task, masked");
    assert_eq!(out.content, "PIN ####");
    let on_echo = on(&sent, "echo");
    assert!(
        on_echo[0]
            .content
            .contains("plugin `echo` is a tool: send it tool_call envelopes")
    );
    let on_other = on(&sent, "other");
    assert!(
        on_other[0]
            .content
            .contains("no plugin `other` is loaded for input `other`")
    );

    // The refused plugin was reported at start, and the status names what is served.
    let errors = on(&sent, "error");
    assert!(
        errors
            .iter()
            .any(|e| e.content.contains("malformed message on input `mask`")),
        "{errors:#?}"
    );
    assert!(
        errors.iter().any(|e| e
            .content
            .contains("the module speaks plugin ABI 2, this host speaks 1")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.content.contains("integrity check failed for tampered")),
        "{errors:#?}"
    );
    let status = on(&sent, "plugins");
    let p = status[0].payload_json().unwrap();
    let names: Vec<&str> = p["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bomb", "echo", "mask", "spin", "trap"]);
    assert_eq!(p["plugins"][1]["version"], "1.0.0", "echo's");
}
