//! The plugin contract shared by both plugin layers: compile-time WASM plugins (plugins/) and
//! runtime Rhai scripts (scripts/). A host loads a plugin, checks its integrity against the
//! recorded sha256, starts it, asks its health, and stops it.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginKind {
    Tool,
    Transform,
    AgentHook,
    Rules,
}

impl PluginKind {
    /// As written in a manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Tool => "tool",
            PluginKind::Transform => "transform",
            PluginKind::AgentHook => "agent_hook",
            PluginKind::Rules => "rules",
        }
    }
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a plugin says about itself (its manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginMetadata {
    pub name: String,
    /// Semantic version of the plugin itself.
    pub version: String,
    pub kind: PluginKind,
    /// Host capabilities it asks for (for example `log`, `clock`); nothing else is granted.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Hex sha256 of the code the host must load; a different file is refused.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum Health {
    Ready,
    Degraded(String),
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    #[error("integrity check failed for {name}: expected sha256 {expected}, found {found}")]
    Integrity {
        name: String,
        expected: String,
        found: String,
    },
    #[error("plugin {name} failed to load: {reason}")]
    Load { name: String, reason: String },
    #[error("plugin {name} fault: {reason}")]
    Fault { name: String, reason: String },
}

#[async_trait]
pub trait Plugin: Send + Sync {
    fn metadata(&self) -> &PluginMetadata;
    async fn load(&mut self) -> Result<(), PluginError>;
    async fn start(&mut self) -> Result<(), PluginError>;
    async fn stop(&mut self) -> Result<(), PluginError>;
    fn health(&self) -> Health;
}
