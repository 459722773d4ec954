//! MCP: tools of Model Context Protocol servers, through the official Rust SDK (rmcp).
//!
//! MOFA_MCP_SERVERS lists the servers, as JSON or as the path of a JSON file:
//! `[{"name": "fs", "command": "npx", "args": ["..."], "env": {"K": "V"}}, {"name": "web",
//! "url": "http://127.0.0.1:3001/mcp"}]` — a stdio server is a command the node starts, a
//! streamable HTTP server a URL. Each server's tools join the catalog as `<name>_<tool>`.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use mofa_kernel::tool::{Tool, ToolError, ToolSpec};
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub name: String,
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub url: Option<String>,
}

/// Parses MOFA_MCP_SERVERS: JSON text, or a path to a JSON file.
pub fn parse_servers(value: &str) -> Result<Vec<ServerConfig>, String> {
    let text = if value.trim_start().starts_with('[') {
        value.to_owned()
    } else {
        std::fs::read_to_string(value).map_err(|e| format!("{value}: {e}"))?
    };
    let servers: Vec<ServerConfig> = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    for s in &servers {
        if s.command.is_some() == s.url.is_some() {
            return Err(format!(
                "server `{}`: give a `command` or a `url`, one of them",
                s.name
            ));
        }
        if s.name.is_empty()
            || !s
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(format!(
                "server name `{}`: letters, digits and `-` only",
                s.name
            ));
        }
    }
    Ok(servers)
}

pub type Client = RunningService<RoleClient, ()>;

/// Connects to a server and lists its tools.
pub async fn connect(cfg: &ServerConfig) -> Result<(Arc<Client>, Vec<McpTool>), String> {
    let client: Client = match (&cfg.command, &cfg.url) {
        (Some(cmd), _) => {
            let mut command = tokio::process::Command::new(cmd);
            command.args(&cfg.args).envs(&cfg.env);
            let transport =
                TokioChildProcess::new(command).map_err(|e| format!("starting `{cmd}`: {e}"))?;
            ().serve(transport).await.map_err(|e| e.to_string())?
        }
        (None, Some(url)) => {
            let transport = StreamableHttpClientTransport::from_uri(url.clone());
            ().serve(transport).await.map_err(|e| e.to_string())?
        }
        (None, None) => return Err("no command and no url".into()),
    };
    let client = Arc::new(client);
    let listed = client
        .list_all_tools()
        .await
        .map_err(|e| format!("listing tools: {e}"))?;
    let tools = listed
        .into_iter()
        .map(|t| McpTool {
            spec: ToolSpec {
                name: format!("{}_{}", cfg.name, t.name),
                description: t.description.map(|d| d.into_owned()).unwrap_or_default(),
                parameters: Value::Object((*t.input_schema).clone()),
            },
            remote: t.name.into_owned(),
            client: client.clone(),
        })
        .collect();
    Ok((client, tools))
}

/// One tool of an MCP server.
pub struct McpTool {
    spec: ToolSpec,
    remote: String,
    client: Arc<Client>,
}

#[async_trait]
impl Tool for McpTool {
    fn spec(&self) -> ToolSpec {
        self.spec.clone()
    }

    async fn call(&self, args: Value) -> Result<Value, ToolError> {
        let Value::Object(args) = args else {
            return Err(ToolError::InvalidArguments(
                "arguments must be an object".into(),
            ));
        };
        let params = CallToolRequestParams::new(self.remote.clone()).with_arguments(args);
        let result = self
            .client
            .call_tool(params)
            .await
            .map_err(|e| ToolError::Failed(format!("MCP server: {e}")))?;
        let content = serde_json::to_value(&result.content).unwrap_or(Value::Null);
        let text: Vec<&str> = content
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["text"].as_str())
            .collect();
        if result.is_error == Some(true) {
            return Err(ToolError::Failed(text.join("\n")));
        }
        let mut out = json!({"text": text.join("\n"), "content": content});
        if let Some(s) = result.structured_content {
            out["structured"] = s;
        }
        Ok(out)
    }
}
