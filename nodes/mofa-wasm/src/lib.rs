//! mofa-wasm: the WASM plugin host node. Plugins (plugins/<name>/, see docs/plugin-abi.md)
//! answer requests:
//!
//! - a `tool_call` envelope on any input runs the tool plugin it names and is answered with a
//!   `tool_result` on the output named like the input;
//! - any other envelope on input `X` goes through the transform or hook plugin named `X`, and
//!   the envelope it returns goes out on output `X`.
//!
//! A failure of any kind (unknown plugin, a plugin's own error, a trap, fuel or time or memory
//! exhausted, a broken answer) is answered with an `error` envelope, on that output and on
//! `error`; the node goes on.
//!
//! The plugins folder is watched: a new or changed plugin is checked and loaded, a removed one
//! unloaded; calls already running finish on the version they started on. A version that
//! fails its checks is refused (on `error`) and the one before it keeps serving. After each
//! change the node sends the plugins it serves on `plugins` (a `control` envelope, content
//! `plugins`, payload `{"plugins": [{name, version, kind, sha256}], "changes": [...]}`).
//!
//! Env: MOFA_PLUGINS_DIR (required: a folder of plugin folders), MOFA_PLUGINS (which to load
//! and the versions accepted, `name@semver-req,...`; default all), MOFA_WASM_FUEL,
//! MOFA_WASM_MEMORY_MB, MOFA_WASM_TIMEOUT_MS (per-call limits; a manifest may ask for less),
//! MOFA_WASM_GRANT (folders granted to plugins that ask for `fs`: `name=fs:/folder;...`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mofa_kernel::config::ConfigError;
use mofa_kernel::node::{Ctx, Failure, Handler};
use mofa_kernel::plugin::PluginKind;
use mofa_kernel::tool as wire;
use mofa_kernel::tool::Tool;
use mofa_kernel::wasm::{Change, PluginsDir, WasmTool};
use mofa_kernel::watch;
use mofa_kernel::{Envelope, Kind, Role};
use serde_json::json;

pub mod build;

/// How often the plugins folder is looked at.
const WATCH_EVERY: Duration = Duration::from_millis(250);

pub struct WasmNode {
    plugins: Arc<PluginsDir>,
    watcher: Mutex<Option<tokio::task::AbortHandle>>,
}

impl WasmNode {
    pub fn new(plugins: PluginsDir) -> Self {
        WasmNode {
            plugins: Arc::new(plugins),
            watcher: Mutex::default(),
        }
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        PluginsDir::from_env()?
            .map(WasmNode::new)
            .ok_or_else(|| ConfigError::Missing {
                var: "MOFA_PLUGINS_DIR".into(),
                hint: "a folder of plugin folders".into(),
            })
    }
}

/// Looks at the folder once, on a blocking thread. `None` when the node is stopping.
async fn scan(plugins: &Arc<PluginsDir>) -> Option<Vec<Change>> {
    let p = plugins.clone();
    let seen = watch::look_blocking(move || p.scan()).await?;
    Some(seen.unwrap_or_else(|e| {
        vec![Change::Refused {
            dir: plugins.dir().to_owned(),
            reason: format!("the scan failed: {e}"),
        }]
    }))
}

/// Logs each change, sends refusals on `error`.
pub fn report(ctx: &Ctx, changes: &[Change]) {
    for c in changes {
        match c {
            Change::Loaded { name, version } => tracing::info!("plugin {name} {version} loaded"),
            Change::Swapped { name, from, to } => {
                tracing::info!("plugin {name} swapped: {from} -> {to}")
            }
            Change::Unloaded { name } => tracing::info!("plugin {name} unloaded"),
            Change::Refused { dir, reason } => {
                let cause = Envelope::new(Kind::Control, ctx.node_id(), Role::System, "plugins");
                ctx.fail(
                    &cause,
                    Failure::new(format!("plugin refused: {reason}"))
                        .with_details(json!({"dir": dir.display().to_string()})),
                );
            }
        }
    }
}

fn change_json(c: &Change) -> serde_json::Value {
    match c {
        Change::Loaded { name, version } => json!({"loaded": name, "version": version}),
        Change::Swapped { name, from, to } => json!({"swapped": name, "from": from, "to": to}),
        Change::Unloaded { name } => json!({"unloaded": name}),
        Change::Refused { dir, reason } => {
            json!({"refused": dir.display().to_string(), "reason": reason})
        }
    }
}

/// Sends what is served now on `plugins`.
fn publish(ctx: &Ctx, plugins: &PluginsDir, changes: &[Change]) {
    let served: Vec<_> = plugins
        .loaded()
        .values()
        .map(|p| {
            let m = p.manifest();
            json!({"name": m.name, "version": m.version, "kind": m.kind, "sha256": m.sha256})
        })
        .collect();
    let missing = plugins.wanted().missing(&plugins.loaded());
    let status =
        Envelope::new(Kind::Control, ctx.node_id(), Role::System, "plugins").with_payload(&json!({
            "plugins": served,
            "changes": changes.iter().map(change_json).collect::<Vec<_>>(),
            "missing": missing,
        }));
    ctx.send_one("plugins", status);
}

#[async_trait]
impl Handler for WasmNode {
    async fn on_start(&self, ctx: &Ctx) -> Result<(), Failure> {
        let Some(changes) = scan(&self.plugins).await else {
            return Ok(());
        };
        report(ctx, &changes);
        let missing = self.plugins.wanted().missing(&self.plugins.loaded());
        if !missing.is_empty() {
            let cause = Envelope::new(Kind::Control, ctx.node_id(), Role::System, "plugins");
            ctx.fail(
                &cause,
                Failure::new(format!(
                    "MOFA_PLUGINS asks for {}, not found in {}",
                    missing.join(", "),
                    self.plugins.dir().display()
                )),
            );
        }
        publish(ctx, &self.plugins, &changes);
        let (ctx, plugins) = (ctx.clone(), self.plugins.clone());
        // Not in-flight work (Ctx::spawn): it never ends, so stop aborts it instead.
        let watch = tokio::spawn(async move {
            let mut tick = tokio::time::interval(WATCH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // The node is stopping: a look that never ran is not a refusal.
                let Some(changes) = scan(&plugins).await else {
                    break;
                };
                if !changes.is_empty() {
                    report(&ctx, &changes);
                    publish(&ctx, &plugins, &changes);
                }
            }
        });
        *self.watcher.lock().expect("watcher") = Some(watch.abort_handle());
        Ok(())
    }

    async fn on_message(&self, ctx: &Ctx, input: &str, msg: Envelope) -> Result<(), Failure> {
        let served = || {
            let names: Vec<String> = self.plugins.loaded().into_keys().collect();
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        };
        if msg.kind == Kind::ToolCall {
            let call = match wire::call_from_envelope(&msg) {
                Ok(c) => c,
                Err(e) => {
                    ctx.reply_error(input, &msg, Failure::new(format!("bad tool call: {e}")));
                    return Ok(());
                }
            };
            let tool = match self.plugins.get(&call.name) {
                None => Err(format!(
                    "no tool plugin `{}` is loaded; loaded: {}",
                    call.name,
                    served()
                )),
                Some(p) => WasmTool::new(p),
            };
            let tool = match tool {
                Ok(t) => t,
                Err(e) => {
                    ctx.reply_error(input, &msg, Failure::new(e));
                    return Ok(());
                }
            };
            let (work, output) = (ctx.clone(), input.to_owned());
            ctx.spawn(msg.clone(), async move {
                let args = match serde_json::from_str(&call.arguments) {
                    Ok(a) => a,
                    Err(e) => {
                        let f = Failure::new(format!("{}: arguments are not JSON: {e}", call.name));
                        work.reply_error(&output, &msg, f);
                        return Ok(());
                    }
                };
                match tool.call(args).await {
                    Ok(result) => {
                        let env = wire::result_envelope(&msg, work.node_id(), &call, &result);
                        work.send_one(&output, env);
                    }
                    Err(e) => {
                        let details = json!({"plugin": call.name, "version": tool.plugin().manifest().version, "call_id": call.id});
                        let f = Failure::new(format!("{}: {e}", call.name)).with_details(details);
                        work.reply_error(&output, &msg, f);
                    }
                }
                Ok(())
            });
            return Ok(());
        }
        let plugin = match self.plugins.get(input) {
            Some(p)
                if matches!(
                    p.manifest().kind,
                    PluginKind::Transform | PluginKind::AgentHook
                ) =>
            {
                p
            }
            Some(_) => {
                let f = Failure::new(format!(
                    "plugin `{input}` is a tool: send it tool_call envelopes"
                ));
                ctx.reply_error(input, &msg, f);
                return Ok(());
            }
            None => {
                let f = Failure::new(format!(
                    "no plugin `{input}` is loaded for input `{input}`; loaded: {}",
                    served()
                ));
                ctx.reply_error(input, &msg, f);
                return Ok(());
            }
        };
        let (work, output) = (ctx.clone(), input.to_owned());
        ctx.spawn(msg.clone(), async move {
            match plugin.transform(&msg).await {
                Ok(out) => work.send_one(&output, out),
                Err(e) => {
                    let details = json!({"plugin": plugin.manifest().name, "version": plugin.manifest().version});
                    let f = Failure::new(format!("{}: {e}", plugin.manifest().name)).with_details(details);
                    work.reply_error(&output, &msg, f);
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
    }
}
