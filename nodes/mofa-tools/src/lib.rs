//! mofa-tools: the tool executor node.
//!
//! It hosts tools behind the kernel's `Tool` trait, publishes their catalog (names,
//! descriptions, JSON Schemas) on `catalog` at start, checks each call's arguments against the
//! tool's schema before running it, and answers on the output named like the input the call
//! came in on: a `tool_result`, or an `error` envelope (an observation for the agent). Calls
//! run concurrently, each within a time limit; a panicking tool fails only its call.
//!
//! Env: MOFA_TOOLS (comma-separated built-ins to offer; default all that are configured:
//! calculator, clock, json_query, and files with MOFA_SANDBOX_DIR, http_get with
//! MOFA_HTTP_ALLOW), MOFA_SANDBOX_DIR (the folder file_read/file_write/file_list are confined
//! to), MOFA_HTTP_ALLOW (comma-separated hosts, `host` or `host:port`), MOFA_TOOL_TIMEOUT_MS
//! (30000), MOFA_MCP_SERVERS (MCP servers whose tools to add: see [`mcp`]),
//! MOFA_MCP_CONNECT_TIMEOUT_MS (30000), MOFA_TOOLS_DIR (a folder of Rhai tools, `*.rhai`, see
//! [`rhai_tools`]; none by default), with the script limits of `mofa_kernel::script::Limits`
//! (MOFA_SCRIPT_TIMEOUT_MS, MOFA_SCRIPT_MAX_OPERATIONS, ...).
//!
//! MOFA_PLUGINS_DIR (a folder of WASM plugin folders: its tool plugins join the catalog, see
//! [`wasm_tools`]), with MOFA_PLUGINS (which plugins and versions, `name@semver-req,...`) and the
//! plugin limits MOFA_WASM_FUEL, MOFA_WASM_MEMORY_MB, MOFA_WASM_TIMEOUT_MS and grants
//! MOFA_WASM_GRANT. Built without the
//! `wasm` feature (for a smaller binary) the node has no WASM engine and refuses the variable.
//!
//! Both folders are watched while the node runs: new and changed files are (re)loaded, removed
//! ones unloaded, and the catalog is published again on each change. A file that does not load
//! is reported on `error`; an older version of it keeps serving.

pub mod builtin;
pub mod mcp;
pub mod registry;
pub mod rhai_tools;
#[cfg(feature = "wasm")]
pub mod wasm_tools;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mofa_kernel::config::{self, ConfigError};
use mofa_kernel::node::{Ctx, Failure, Handler};
use mofa_kernel::script::{Limits, ScriptEngine};
use mofa_kernel::tool::{self as wire, Tool};
use mofa_kernel::{Envelope, Kind};

pub use registry::Registry;
use rhai_tools::ToolsDir;

/// How often the Rhai tools folder is looked at.
const WATCH_EVERY: Duration = Duration::from_millis(250);

pub struct ToolsNode {
    registry: Arc<Registry>,
    mcp_servers: Vec<mcp::ServerConfig>,
    mcp_connect_timeout: Duration,
    mcp_clients: Mutex<Vec<Arc<mcp::Client>>>,
    watched: Watched,
    watcher: Mutex<Option<tokio::task::AbortHandle>>,
}

impl ToolsNode {
    pub fn new(registry: Registry) -> Self {
        ToolsNode {
            registry: Arc::new(registry),
            mcp_servers: Vec::new(),
            mcp_connect_timeout: Duration::from_secs(30),
            mcp_clients: Default::default(),
            watched: Watched::default(),
            watcher: Mutex::default(),
        }
    }

    /// Rhai tools from `dir` (see [`rhai_tools`]), loaded at start and kept in step with the
    /// folder while the node runs.
    pub fn with_tools_dir(mut self, dir: PathBuf, engine: Arc<ScriptEngine>) -> Self {
        self.watched.rhai = Some(Arc::new(ToolsDir::new(dir, engine, self.registry.clone())));
        self
    }

    /// Tool plugins from a folder of WASM plugin folders (see [`wasm_tools`]), loaded at start
    /// and kept in step with the folder while the node runs.
    #[cfg(feature = "wasm")]
    pub fn with_plugins_dir(mut self, plugins: mofa_kernel::wasm::PluginsDir) -> Self {
        let tools = wasm_tools::WasmTools::new(plugins, self.registry.clone());
        self.watched.wasm = Some(Arc::new(tools));
        self
    }

    /// MCP servers to connect to at start; their tools join the catalog.
    pub fn with_mcp_servers(
        mut self,
        servers: Vec<mcp::ServerConfig>,
        connect_timeout: Duration,
    ) -> Self {
        self.mcp_servers = servers;
        self.mcp_connect_timeout = connect_timeout;
        self
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        let timeout = config::millis_or("MOFA_TOOL_TIMEOUT_MS", Duration::from_secs(30))?;
        let sandbox = config::optional("MOFA_SANDBOX_DIR")
            .map(|dir| {
                builtin::files::Sandbox::new(dir.as_ref())
                    .map(Arc::new)
                    .map_err(|e| ConfigError::invalid("MOFA_SANDBOX_DIR", dir, e))
            })
            .transpose()?;
        let allow =
            config::optional("MOFA_HTTP_ALLOW").map(|a| builtin::http_get::AllowList::parse(&a));
        let wanted: Option<Vec<String>> = config::optional("MOFA_TOOLS")
            .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect());

        let mut available: Vec<(&str, Vec<Arc<dyn Tool>>)> = vec![
            (
                "calculator",
                vec![Arc::new(builtin::calculator::Calculator)],
            ),
            ("clock", vec![Arc::new(builtin::clock::Clock)]),
            ("json_query", vec![Arc::new(builtin::json_query::JsonQuery)]),
        ];
        if let Some(sb) = &sandbox {
            available.push((
                "files",
                vec![
                    Arc::new(builtin::files::FileRead(sb.clone())),
                    Arc::new(builtin::files::FileWrite(sb.clone())),
                    Arc::new(builtin::files::FileList(sb.clone())),
                ],
            ));
        }
        if let Some(allow) = allow {
            available.push((
                "http_get",
                vec![Arc::new(builtin::http_get::HttpGet::new(allow, timeout))],
            ));
        }
        if let Some(wanted) = &wanted {
            for w in wanted {
                if !available.iter().any(|(name, _)| name == w) {
                    let why = match w.as_str() {
                        "files" => "needs MOFA_SANDBOX_DIR".to_owned(),
                        "http_get" => "needs MOFA_HTTP_ALLOW".to_owned(),
                        _ => "no such built-in (calculator, clock, json_query, files, http_get)"
                            .to_owned(),
                    };
                    return Err(ConfigError::invalid("MOFA_TOOLS", w, why));
                }
            }
        }
        let mcp_servers = match config::optional("MOFA_MCP_SERVERS") {
            Some(v) => mcp::parse_servers(&v)
                .map_err(|e| ConfigError::invalid("MOFA_MCP_SERVERS", v, e))?,
            None => Vec::new(),
        };
        let registry = Registry::new(timeout);
        for (name, tools) in available {
            if wanted.as_ref().is_none_or(|w| w.iter().any(|x| x == name)) {
                for t in tools {
                    registry
                        .add(t)
                        .map_err(|e| ConfigError::invalid("MOFA_TOOLS", name, e))?;
                }
            }
        }
        let connect_timeout =
            config::millis_or("MOFA_MCP_CONNECT_TIMEOUT_MS", Duration::from_secs(30))?;
        let mut node = ToolsNode::new(registry).with_mcp_servers(mcp_servers, connect_timeout);
        if let Some(dir) = config::optional("MOFA_TOOLS_DIR") {
            if !Path::new(&dir).is_dir() {
                return Err(ConfigError::invalid(
                    "MOFA_TOOLS_DIR",
                    dir,
                    "not a folder (of *.rhai tools)",
                ));
            }
            let engine = Arc::new(ScriptEngine::new(Limits::from_env()?));
            node = node.with_tools_dir(dir.into(), engine);
        }
        with_plugins_from_env(node)
    }
}

#[cfg(feature = "wasm")]
fn with_plugins_from_env(node: ToolsNode) -> Result<ToolsNode, ConfigError> {
    Ok(match mofa_kernel::wasm::PluginsDir::from_env()? {
        Some(plugins) => node.with_plugins_dir(plugins),
        None => node,
    })
}

#[cfg(not(feature = "wasm"))]
fn with_plugins_from_env(node: ToolsNode) -> Result<ToolsNode, ConfigError> {
    match config::optional("MOFA_PLUGINS_DIR") {
        Some(dir) => Err(ConfigError::invalid(
            "MOFA_PLUGINS_DIR",
            dir,
            "this mofa-tools is built without the `wasm` feature (no WASM engine)",
        )),
        None => Ok(node),
    }
}

#[async_trait]
impl Handler for ToolsNode {
    async fn on_start(&self, ctx: &Ctx) -> Result<(), Failure> {
        for server in &self.mcp_servers {
            // A server that never answers must not keep the catalog (and the agents) waiting.
            let connected = tokio::time::timeout(self.mcp_connect_timeout, mcp::connect(server))
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "no answer within {} ms (MOFA_MCP_CONNECT_TIMEOUT_MS)",
                        self.mcp_connect_timeout.as_millis()
                    ))
                });
            match connected {
                Ok((client, tools)) => {
                    tracing::info!("MCP server {}: {} tools", server.name, tools.len());
                    for t in tools {
                        if let Err(e) = self.registry.add(Arc::new(t)) {
                            tracing::warn!("MCP server {}: {e}", server.name);
                        }
                    }
                    self.mcp_clients.lock().expect("clients").push(client);
                }
                Err(e) => {
                    let cause = Envelope::new(
                        Kind::Control,
                        ctx.node_id(),
                        mofa_kernel::Role::System,
                        "mcp connect",
                    );
                    ctx.fail(
                        &cause,
                        Failure::new(format!("MCP server {}: {e}", server.name)),
                    );
                }
            }
        }
        self.watched.rescan(ctx).await;
        publish_catalog(ctx, &self.registry);
        if self.watched.any() {
            let (ctx, watched, registry) =
                (ctx.clone(), self.watched.clone(), self.registry.clone());
            // Not in-flight work (Ctx::spawn): it never ends, so stop aborts it instead.
            let watch = tokio::spawn(async move {
                let mut tick = tokio::time::interval(WATCH_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if watched.rescan(&ctx).await {
                        publish_catalog(&ctx, &registry);
                    }
                }
            });
            *self.watcher.lock().expect("watcher") = Some(watch.abort_handle());
        }
        Ok(())
    }

    async fn on_message(&self, ctx: &Ctx, input: &str, msg: Envelope) -> Result<(), Failure> {
        if wire::is_catalog(&msg) {
            // Asked again (a late subscriber): answer with the catalog.
            let cat = wire::catalog_envelope(ctx.node_id(), &self.registry.specs());
            ctx.send_one(input, cat);
            return Ok(());
        }
        if msg.kind != Kind::ToolCall {
            let f = Failure::new(format!(
                "expected a tool_call, got a `{}` envelope",
                msg.kind
            ));
            ctx.reply_error(input, &msg, f);
            return Ok(());
        }
        let call = match wire::call_from_envelope(&msg) {
            Ok(c) => c,
            Err(e) => {
                ctx.reply_error(input, &msg, Failure::new(format!("bad tool call: {e}")));
                return Ok(());
            }
        };
        let (registry, work_ctx, output) = (self.registry.clone(), ctx.clone(), input.to_owned());
        ctx.spawn(msg.clone(), async move {
            match registry.call(&call.name, &call.arguments).await {
                Ok(result) => {
                    let env = wire::result_envelope(&msg, work_ctx.node_id(), &call, &result);
                    work_ctx.send_one(&output, env);
                }
                Err(e) => {
                    let details = serde_json::json!({"tool": call.name, "call_id": call.id});
                    let f = Failure::new(format!("{}: {e}", call.name)).with_details(details);
                    work_ctx.reply_error(&output, &msg, f);
                }
            }
            Ok(())
        });
        Ok(())
    }

    async fn on_stop(&self, _ctx: &Ctx) {
        if let Some(watch) = self.watcher.lock().expect("watcher").take() {
            watch.abort();
        }
        // Ends the MCP sessions; stdio servers are child processes and end with them.
        for client in self.mcp_clients.lock().expect("clients").drain(..) {
            client.cancellation_token().cancel();
        }
    }
}

/// The folders whose tools the node keeps in step with the registry.
#[derive(Clone, Default)]
struct Watched {
    rhai: Option<Arc<ToolsDir>>,
    #[cfg(feature = "wasm")]
    wasm: Option<Arc<wasm_tools::WasmTools>>,
}

impl Watched {
    fn any(&self) -> bool {
        #[cfg(feature = "wasm")]
        if self.wasm.is_some() {
            return true;
        }
        self.rhai.is_some()
    }

    /// Looks at each folder once; reports what did not load on `error`. True if the catalog
    /// changed.
    async fn rescan(&self, ctx: &Ctx) -> bool {
        let mut changed = false;
        if let Some(dir) = self.rhai.clone() {
            let what = dir.dir().display().to_string();
            changed |= report_scan(ctx, "rhai tools", &what, move || dir.scan()).await;
        }
        #[cfg(feature = "wasm")]
        if let Some(tools) = self.wasm.clone() {
            let what = tools.plugins().dir().display().to_string();
            changed |= report_scan(ctx, "wasm tools", &what, move || tools.scan()).await;
        }
        changed
    }
}

/// Runs one folder's scan on a blocking thread and sends what did not load on `error`. A scan
/// that never ran because the node is stopping reports nothing.
async fn report_scan(
    ctx: &Ctx,
    label: &str,
    dir: &str,
    scan: impl FnOnce() -> rhai_tools::Scan + Send + 'static,
) -> bool {
    let scan = match mofa_kernel::watch::look_blocking(scan).await {
        None => return false,
        Some(Ok(scan)) => scan,
        Some(Err(e)) => rhai_tools::Scan {
            changed: false,
            errors: vec![format!("{dir}: the scan failed: {e}")],
        },
    };
    for e in scan.errors {
        let cause = Envelope::new(
            Kind::Control,
            ctx.node_id(),
            mofa_kernel::Role::System,
            label,
        );
        ctx.fail(&cause, Failure::new(e));
    }
    scan.changed
}

/// Sends the catalog (every tool's spec) on `catalog`.
fn publish_catalog(ctx: &Ctx, registry: &Registry) {
    let specs = registry.specs();
    tracing::info!(
        "tools: {}",
        specs
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    ctx.send_one("catalog", wire::catalog_envelope(ctx.node_id(), &specs));
}
