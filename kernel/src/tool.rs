//! The one tool contract. Built-in Rust tools, Rhai tools, WASM tools and MCP tools all
//! implement [`Tool`]; the tool executor node hosts them and the agent sees only [`ToolSpec`]s.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::envelope::{Envelope, Kind, Role};
use crate::llm::ToolCall;

/// What a model is told about a tool: its name, what it does, and the JSON Schema of its
/// parameters (the `function` object of OpenAI-style function calling).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
}

/// The tools as prompt text, a line each: `- name: description Parameters: {schema}`. For
/// models that are told about tools in the prompt rather than through function calling.
pub fn describe(tools: &[ToolSpec]) -> String {
    tools
        .iter()
        .map(|t| {
            format!(
                "- {}: {} Parameters: {}\n",
                t.name, t.description, t.parameters
            )
        })
        .collect()
}

/// Why a call failed. The agent returns it to the model as an observation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ToolError {
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    #[error("{0}")]
    Failed(String),
}

#[async_trait]
pub trait Tool: Send + Sync {
    fn spec(&self) -> ToolSpec;
    async fn call(&self, args: serde_json::Value) -> Result<serde_json::Value, ToolError>;
}

/// A call as an envelope (kind `tool_call`, content = the tool's name, payload = the call), as an
/// agent sends it to the tool executor. The executor answers with [`result_envelope`] or an
/// `error` envelope, each replying to this envelope's id.
pub fn call_envelope(cause: &Envelope, sender: &str, call: &ToolCall) -> Envelope {
    cause
        .reply(Kind::ToolCall, sender, Role::Assistant, &call.name)
        .with_payload(
            &serde_json::json!({"id": call.id, "name": call.name, "arguments": call.arguments}),
        )
}

/// The call an envelope carries. `arguments` may be JSON text or a JSON value.
pub fn call_from_envelope(e: &Envelope) -> Result<ToolCall, String> {
    let p = e
        .payload_json()
        .map_err(|err| format!("payload is not JSON: {err}"))?;
    let name = p["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .or(Some(e.content.as_str()).filter(|c| !c.is_empty()))
        .ok_or("a tool call names no tool")?;
    let arguments = match &p["arguments"] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "{}".into(),
        v => v.to_string(),
    };
    Ok(ToolCall {
        id: p["id"].as_str().unwrap_or(&e.id).to_owned(),
        name: name.to_owned(),
        arguments,
    })
}

/// A successful call's result (kind `tool_result`, content = the result as JSON text).
pub fn result_envelope(
    call: &Envelope,
    sender: &str,
    tool_call: &ToolCall,
    result: &serde_json::Value,
) -> Envelope {
    call.reply(Kind::ToolResult, sender, Role::Tool, result.to_string())
        .with_payload(
            &serde_json::json!({"id": tool_call.id, "name": tool_call.name, "result": result}),
        )
}

/// The tool executor's catalog: every tool it offers (kind `control`, content `catalog`).
pub fn catalog_envelope(sender: &str, tools: &[ToolSpec]) -> Envelope {
    Envelope::new(Kind::Control, sender, Role::System, "catalog")
        .with_payload(&serde_json::json!({ "tools": tools }))
}

/// Asks a tool executor for its catalog; it answers with [`catalog_envelope`] on the output
/// paired with the input the request came on.
pub fn catalog_request(sender: &str) -> Envelope {
    Envelope::new(Kind::Control, sender, Role::System, "catalog")
}

/// A catalog or a request for one: a `control` envelope reading `catalog`.
pub fn is_catalog(e: &Envelope) -> bool {
    e.kind == Kind::Control && e.content == "catalog"
}

pub fn catalog_from_envelope(e: &Envelope) -> Result<Vec<ToolSpec>, String> {
    let p = e
        .payload_json()
        .map_err(|err| format!("payload is not JSON: {err}"))?;
    serde_json::from_value(p["tools"].clone()).map_err(|err| format!("not a tool catalog: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_results_and_catalogs_survive_their_envelopes() {
        let task = Envelope::task("src", "q");
        let call = ToolCall {
            id: "call_1".into(),
            name: "calculator".into(),
            arguments: "{\"expression\":\"1+1\"}".into(),
        };
        let env = call_envelope(&task, "agent", &call);
        assert_eq!(env.kind, Kind::ToolCall);
        assert_eq!(call_from_envelope(&env).unwrap(), call);
        let res = result_envelope(&env, "tools", &call, &serde_json::json!({"value": 2}));
        assert_eq!(res.reply_to.as_deref(), Some(env.id.as_str()));
        assert_eq!(res.content, "{\"value\":2}");

        // A hand-written call: arguments as a JSON value, the name in the content.
        let mut raw = Envelope::new(Kind::ToolCall, "py", Role::Assistant, "clock");
        raw.payload = Some("{\"arguments\": {\"zone\": \"UTC\"}}".into());
        let c = call_from_envelope(&raw).unwrap();
        assert_eq!(
            (c.name.as_str(), c.arguments.as_str(), c.id == raw.id),
            ("clock", "{\"zone\":\"UTC\"}", true)
        );

        let spec = ToolSpec {
            name: "clock".into(),
            description: "d".into(),
            parameters: serde_json::json!({"type": "object"}),
        };
        let cat = catalog_envelope("tools", std::slice::from_ref(&spec));
        assert_eq!(catalog_from_envelope(&cat).unwrap(), vec![spec]);
    }
}
