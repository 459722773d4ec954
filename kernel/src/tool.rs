//! The one tool contract. Built-in Rust tools, Rhai tools, WASM tools and MCP tools all
//! implement [`Tool`]; the tool executor node hosts them and the agent sees only [`ToolSpec`]s.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// What a model is told about a tool: its name, what it does, and the JSON Schema of its
/// parameters (the `function` object of OpenAI-style function calling).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
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
