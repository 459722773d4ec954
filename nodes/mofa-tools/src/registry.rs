//! The tools a node offers, each with its compiled argument schema. Tools can join, be replaced
//! and leave while the node runs (an MCP server's once connected; Rhai tools as their files
//! change).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mofa_kernel::tool::{Tool, ToolError, ToolSpec};
use serde_json::Value;

struct Entry {
    tool: Arc<dyn Tool>,
    spec: ToolSpec,
    validator: jsonschema::Validator,
}

pub struct Registry {
    tools: RwLock<BTreeMap<String, Arc<Entry>>>,
    timeout: Duration,
}

impl Registry {
    /// `timeout` bounds every call.
    pub fn new(timeout: Duration) -> Self {
        Registry {
            tools: RwLock::default(),
            timeout,
        }
    }

    /// Adds a tool, or replaces the one of that name; its parameter schema must compile.
    pub fn add(&self, tool: Arc<dyn Tool>) -> Result<(), String> {
        let spec = tool.spec();
        let validator = jsonschema::validator_for(&spec.parameters)
            .map_err(|e| format!("tool {}: its parameter schema is invalid: {e}", spec.name))?;
        let entry = Arc::new(Entry {
            tool,
            spec,
            validator,
        });
        self.tools
            .write()
            .expect("registry lock")
            .insert(entry.spec.name.clone(), entry);
        Ok(())
    }

    /// Removes the tool of that name; false if there was none. Calls already running finish.
    pub fn remove(&self, name: &str) -> bool {
        self.tools
            .write()
            .expect("registry lock")
            .remove(name)
            .is_some()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tools.read().expect("registry lock").contains_key(name)
    }

    pub fn specs(&self) -> Vec<ToolSpec> {
        let tools = self.tools.read().expect("registry lock");
        tools.values().map(|e| e.spec.clone()).collect()
    }

    /// Checks the arguments (JSON text) against the tool's schema, then runs it within the time
    /// limit. A panic in the tool fails this call only.
    pub async fn call(&self, name: &str, arguments: &str) -> Result<Value, ToolError> {
        let entry = {
            let tools = self.tools.read().expect("registry lock");
            tools.get(name).cloned().ok_or_else(|| {
                let known: Vec<&str> = tools.keys().map(String::as_str).collect();
                ToolError::Failed(format!(
                    "unknown tool `{name}`; available: {}",
                    known.join(", ")
                ))
            })?
        };
        let args: Value = if arguments.trim().is_empty() {
            Value::Object(Default::default())
        } else {
            serde_json::from_str(arguments).map_err(|e| {
                ToolError::InvalidArguments(format!("not JSON ({e}): {arguments:?}"))
            })?
        };
        let problems: Vec<String> = entry
            .validator
            .iter_errors(&args)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("{at}: {e}")
                }
            })
            .collect();
        if !problems.is_empty() {
            return Err(ToolError::InvalidArguments(problems.join("; ")));
        }
        let tool = entry.tool.clone();
        let mut run = tokio::spawn(async move { tool.call(args).await });
        match tokio::time::timeout(self.timeout, &mut run).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(ToolError::Failed(format!(
                "the tool failed unexpectedly: {}",
                if join.is_panic() {
                    "it panicked"
                } else {
                    "it was cancelled"
                }
            ))),
            Err(_) => {
                run.abort();
                Err(ToolError::Failed(format!(
                    "no result within {} ms (MOFA_TOOL_TIMEOUT_MS)",
                    self.timeout.as_millis()
                )))
            }
        }
    }
}
