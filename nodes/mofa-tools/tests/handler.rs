//! mofa-tools' handler under `DoraNode::init_testing`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mofa_kernel::tool::{self as wire, Tool, ToolError, ToolSpec};
use mofa_kernel::{Envelope, Kind};
use mofa_tests::harness::{self, envelope, on, tool_call as call};
use mofa_tools::builtin::{calculator::Calculator, clock::Clock, files, http_get};
use mofa_tools::{Registry, ToolsNode};
use serde_json::{Value, json};

/// A tool that misbehaves on purpose: sleeps for `ms`, or panics when `ms` is 0.
struct Misbehaving(&'static str);

#[async_trait]
impl Tool for Misbehaving {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: self.0.into(),
            description: "test double".into(),
            parameters: json!({"type": "object", "properties": {"ms": {"type": "integer", "minimum": 0}}}),
        }
    }
    async fn call(&self, args: Value) -> Result<Value, ToolError> {
        match args["ms"].as_u64().unwrap_or(0) {
            0 => panic!("boom"),
            ms => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(json!({"slept": ms}))
            }
        }
    }
}

fn node(extra: Vec<Arc<dyn Tool>>) -> ToolsNode {
    // Room for a loaded machine: the slow call below (1.5 s) must finish within it.
    let r = Registry::new(Duration::from_millis(3000));
    r.add(Arc::new(Calculator)).unwrap();
    r.add(Arc::new(Clock)).unwrap();
    for t in extra {
        r.add(t).unwrap();
    }
    ToolsNode::new(r)
}

fn answer_to<'a>(sent: &'a [Envelope], call: &Envelope) -> &'a Envelope {
    sent.iter()
        .find(|e| e.reply_to.as_deref() == Some(call.id.as_str()))
        .unwrap_or_else(|| panic!("no answer to {}: {sent:#?}", call.content))
}

#[test]
fn the_catalog_goes_out_at_start_with_each_schema() {
    let sent = harness::run(node(vec![]), vec![]);
    let cat = on(&sent, "catalog");
    assert_eq!(cat.len(), 1);
    let tools = wire::catalog_from_envelope(&cat[0]).unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["calculator", "clock"]);
    assert_eq!(tools[0].parameters["required"][0], "expression");
}

#[test]
fn an_agent_that_asks_for_the_catalog_gets_it_on_its_input() {
    let sent = harness::run(
        node(vec![]),
        vec![envelope(0.0, "writer", &wire::catalog_request("writer"))],
    );
    let again = on(&sent, "writer");
    assert_eq!(again.len(), 1, "{sent:?}");
    assert!(wire::is_catalog(&again[0]));
    assert_eq!(wire::catalog_from_envelope(&again[0]).unwrap().len(), 2);
    assert!(on(&sent, "error").is_empty(), "{sent:?}");
}

#[test]
fn a_call_is_validated_run_and_answered_on_its_input() {
    let ok = call("calculator", json!({"expression": "17 * 23"}));
    let missing = call("calculator", json!({}));
    let wrong_type = call("calculator", json!({"expression": 5}));
    let out_of_range = call("clock", json!({"utc_offset_minutes": 5000}));
    let unknown = call("teleport", json!({}));
    let not_json = {
        let mut e = call("calculator", json!({}));
        e.payload =
            Some(json!({"id": "c9", "name": "calculator", "arguments": "{oops"}).to_string());
        e
    };
    let batch = [
        ok.clone(),
        missing.clone(),
        wrong_type.clone(),
        out_of_range.clone(),
        unknown.clone(),
        not_json.clone(),
    ];
    let sent = harness::run(node(vec![]), vec![harness::envelopes(0.0, "alice", &batch)]);
    let alice = on(&sent, "alice");
    assert_eq!(alice.len(), 6, "every call answered");

    let r = answer_to(&alice, &ok);
    assert_eq!(r.kind, Kind::ToolResult);
    assert_eq!(r.payload_json().unwrap()["result"]["value"], 391.0);
    assert_eq!(r.payload_json().unwrap()["id"], "call_calculator");

    for (bad, says) in [
        (
            &missing,
            "invalid arguments: \"expression\" is a required property",
        ),
        (
            &wrong_type,
            "invalid arguments: /expression: 5 is not of type \"string\"",
        ),
        (
            &out_of_range,
            "invalid arguments: /utc_offset_minutes: 5000 is greater than the maximum of 840",
        ),
        (
            &unknown,
            "unknown tool `teleport`; available: calculator, clock",
        ),
        (&not_json, "invalid arguments: not JSON"),
    ] {
        let e = answer_to(&alice, bad);
        assert_eq!(e.kind, Kind::Error);
        assert!(e.content.contains(says), "{} vs {says}", e.content);
    }
    assert_eq!(
        on(&sent, "error").len(),
        5,
        "failures also go to the error output"
    );
}

#[test]
fn a_hanging_or_panicking_tool_fails_its_call_only_and_slow_calls_do_not_block_fast_ones() {
    let hang = call("sleepy", json!({"ms": 60_000}));
    let slow = call("sleepy2", json!({"ms": 1500}));
    let panics = call("sleepy", json!({"ms": 0}));
    let fast = call("calculator", json!({"expression": "1+1"}));
    let sent = harness::run(
        node(vec![
            Arc::new(Misbehaving("sleepy")),
            Arc::new(Misbehaving("sleepy2")),
        ]),
        vec![
            envelope(0.0, "a", &hang),
            envelope(0.0, "a", &slow),
            envelope(0.01, "a", &panics),
            envelope(0.02, "a", &fast),
        ],
    );
    let a = on(&sent, "a");
    assert!(
        answer_to(&a, &hang)
            .content
            .contains("no result within 3000 ms")
    );
    assert!(answer_to(&a, &panics).content.contains("it panicked"));
    assert_eq!(answer_to(&a, &slow).kind, Kind::ToolResult);
    let pos = |c: &Envelope| {
        a.iter()
            .position(|e| e.reply_to.as_deref() == Some(c.id.as_str()))
            .unwrap()
    };
    assert!(
        pos(&fast) < pos(&slow),
        "the fast call overtook the slow one"
    );
}

#[test]
fn the_sandbox_and_the_allow_list_hold_through_the_node() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("box");
    std::fs::create_dir(&root).unwrap();
    let sb = Arc::new(files::Sandbox::new(&root).unwrap());
    let tools: Vec<Arc<dyn Tool>> = vec![
        Arc::new(files::FileWrite(sb.clone())),
        Arc::new(http_get::HttpGet::new(
            http_get::AllowList::parse("127.0.0.1:1"),
            Duration::from_secs(1),
        )),
    ];
    let escape = call(
        "file_write",
        json!({"path": "../escaped.txt", "content": "x"}),
    );
    let inside = call("file_write", json!({"path": "ok.txt", "content": "fine"}));
    let off_list = call("http_get", json!({"url": "http://127.0.0.2:8080/"}));
    let sent = harness::run(
        node(tools),
        vec![harness::envelopes(
            0.0,
            "a",
            &[escape.clone(), inside.clone(), off_list.clone()],
        )],
    );
    let a = on(&sent, "a");
    assert!(
        answer_to(&a, &escape)
            .content
            .contains("outside the sandbox")
    );
    assert!(!outer.path().join("escaped.txt").exists());
    assert_eq!(answer_to(&a, &inside).kind, Kind::ToolResult);
    assert_eq!(
        std::fs::read_to_string(root.join("ok.txt")).unwrap(),
        "fine"
    );
    assert!(
        answer_to(&a, &off_list)
            .content
            .contains("127.0.0.2 is not on the allow-list")
    );
}
