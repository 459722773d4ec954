//! MCP: tools of Model Context Protocol servers, through the official Rust SDK (rmcp).
//!
//! MOFA_MCP_SERVERS lists the servers, as JSON or as the path of a JSON file:
//! `[{"name": "fs", "command": "npx", "args": ["..."], "env": {"K": "V"}}, {"name": "web",
//! "url": "http://127.0.0.1:3001/mcp"}]` — a stdio server is a command the node starts, a
//! streamable HTTP server a URL. Each server's tools join the catalog as `<name>_<tool>`.
//!
//! A server may ask for input mid-call (elicitation). Nobody answers inside a dataflow, so by
//! default the client declines; `"elicitation": "defaults"` on a server accepts forms whose
//! required fields all have defaults, with those defaults (an unattended run that takes the
//! server's suggested values).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use mofa_kernel::tool::{Tool, ToolError, ToolSpec};
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, ElicitRequestParams, ElicitResult,
    ElicitationAction, ElicitationCapability, FormElicitationCapability, Implementation,
    ProtocolVersion,
};
use rmcp::service::{RequestContext, RoleClient, RunningService};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, ErrorData, ServiceExt};
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
    #[serde(default)]
    pub elicitation: Elicitation,
}

/// How the client answers a server's request for input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Elicitation {
    #[default]
    Decline,
    Defaults,
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

/// Our side of an MCP session: who we are, and how elicitations are answered.
pub struct Session {
    elicitation: Elicitation,
}

impl ClientHandler for Session {
    fn get_info(&self) -> ClientConfig {
        let mut capabilities = ClientCapabilities::default();
        if self.elicitation == Elicitation::Defaults {
            capabilities.elicitation =
                Some(ElicitationCapability::new().with_form(FormElicitationCapability::new()));
        }
        // We open sessions with an `initialize` handshake, so we offer the newest version that
        // has one; a server on an older version answers with its own.
        ClientConfig::new(
            capabilities,
            Implementation::new(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION")),
        )
        .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let form = match (&self.elicitation, request) {
            (
                Elicitation::Defaults,
                ElicitRequestParams::FormElicitationParams {
                    requested_schema, ..
                },
            ) => serde_json::to_value(requested_schema).ok(),
            _ => None,
        };
        Ok(match form.as_ref().and_then(schema_defaults) {
            Some(content) => ElicitResult::new(ElicitationAction::Accept).with_content(content),
            None => ElicitResult::new(ElicitationAction::Decline),
        })
    }
}

/// The form filled with every property's default; `None` when a required one has none.
fn schema_defaults(schema: &Value) -> Option<Value> {
    let props = schema["properties"].as_object()?;
    let content: serde_json::Map<String, Value> = props
        .iter()
        .filter_map(|(k, p)| Some((k.clone(), p.get("default")?.clone())))
        .collect();
    let required = schema["required"].as_array().into_iter().flatten();
    for r in required {
        if !content.contains_key(r.as_str()?) {
            return None;
        }
    }
    Some(Value::Object(content))
}

pub type Client = RunningService<RoleClient, Session>;

/// Connects to a server and lists its tools.
pub async fn connect(cfg: &ServerConfig) -> Result<(Arc<Client>, Vec<McpTool>), String> {
    let session = Session {
        elicitation: cfg.elicitation,
    };
    let client: Client = match (&cfg.command, &cfg.url) {
        (Some(cmd), _) => {
            let mut command = tokio::process::Command::new(cmd);
            command.args(&cfg.args).envs(&cfg.env);
            let transport =
                TokioChildProcess::new(command).map_err(|e| format!("starting `{cmd}`: {e}"))?;
            session.serve(transport).await.map_err(|e| e.to_string())?
        }
        (None, Some(url)) => {
            let transport = StreamableHttpClientTransport::from_uri(url.clone());
            session.serve(transport).await.map_err(|e| e.to_string())?
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_is_filled_with_defaults_only_when_every_required_field_has_one() {
        let schema = json!({
            "type": "object",
            "properties": {"name": {"type": "string", "default": "Ada"}, "age": {"type": "integer"}},
            "required": ["name"]
        });
        assert_eq!(schema_defaults(&schema), Some(json!({"name": "Ada"})));
        let mut strict = schema.clone();
        strict["required"] = json!(["name", "age"]);
        assert_eq!(schema_defaults(&strict), None);
    }

    #[test]
    fn elicitation_is_declined_unless_configured() {
        let servers = parse_servers(r#"[{"name": "a", "url": "http://127.0.0.1:1/mcp"}, {"name": "b", "url": "http://127.0.0.1:1/mcp", "elicitation": "defaults"}]"#).unwrap();
        assert_eq!(servers[0].elicitation, Elicitation::Decline);
        assert_eq!(servers[1].elicitation, Elicitation::Defaults);
        assert!(parse_servers(r#"[{"name": "a", "url": "u", "elicitation": "ask"}]"#).is_err());
        let info = |e| Session { elicitation: e }.get_info();
        assert!(
            info(Elicitation::Decline)
                .capabilities
                .elicitation
                .is_none()
        );
        assert!(
            info(Elicitation::Defaults)
                .capabilities
                .elicitation
                .is_some()
        );
        assert_eq!(
            info(Elicitation::Decline).protocol_version,
            ProtocolVersion::LATEST_WITH_INITIALIZE
        );
    }
}
