//! The client the MCP conformance suite drives (`conformance client --command ...`): mofa-tools'
//! MCP client connects to the URL the suite appends, lists the server's tools through the tool
//! registry, and calls each one with arguments made from its JSON Schema. Prints one JSON line
//! per call; exits 1 if connecting or any call failed. Elicitations are answered with the
//! schema's defaults (`"elicitation": "defaults"`, the unattended setting; the node's default is
//! to decline).

use std::sync::Arc;
use std::time::Duration;

use mofa_tools::{Registry, mcp};
use serde_json::{Map, Value, json};

#[tokio::main]
async fn main() {
    let url = std::env::args()
        .next_back()
        .expect("the server URL as last argument");
    let server = mcp::parse_servers(
        &json!([{"name": "conformance", "url": url, "elicitation": "defaults"}]).to_string(),
    )
    .expect("server config");
    let (_client, tools) = match mcp::connect(&server[0]).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("connect: {e}");
            std::process::exit(1);
        }
    };
    let registry = Registry::new(Duration::from_secs(20));
    for t in tools {
        registry.add(Arc::new(t)).expect("unique tool names");
    }
    let mut failed = false;
    for spec in registry.specs() {
        let args = example(&spec.parameters).to_string();
        let outcome = registry.call(&spec.name, &args).await;
        failed |= outcome.is_err();
        let line = match outcome {
            Ok(result) => json!({"tool": spec.name, "arguments": args, "result": result}),
            Err(e) => json!({"tool": spec.name, "arguments": args, "error": e.to_string()}),
        };
        println!("{line}");
    }
    std::process::exit(i32::from(failed));
}

/// A value the schema accepts: its default, its first enum member, or one made from its type
/// (objects get every property, numbers count up so that arguments differ).
fn example(schema: &Value) -> Value {
    if let Some(v) = schema.get("default") {
        return v.clone();
    }
    if let Some(first) = schema.get("enum").and_then(|e| e.get(0)) {
        return first.clone();
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") | None => {
            let props = schema.get("properties").and_then(Value::as_object);
            let mut out = Map::new();
            for (i, (name, prop)) in props.into_iter().flatten().enumerate() {
                let value = match prop.get("type").and_then(Value::as_str) {
                    Some("number" | "integer") if prop.get("default").is_none() => {
                        let min = prop.get("minimum").and_then(Value::as_i64).unwrap_or(0);
                        json!(min + i as i64 + 1)
                    }
                    _ => example(prop),
                };
                out.insert(name.clone(), value);
            }
            Value::Object(out)
        }
        Some("array") => json!([]),
        Some("string") => json!("mofa"),
        Some("boolean") => json!(true),
        Some("number" | "integer") => json!(schema.get("minimum").cloned().unwrap_or(json!(1))),
        _ => Value::Null,
    }
}
