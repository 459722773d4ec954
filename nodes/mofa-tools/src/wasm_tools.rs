//! Tools written as WASM plugins (docs/plugin-abi.md): the tool plugins of a folder of plugin
//! folders (MOFA_PLUGINS_DIR), kept in step with the folder like the Rhai tools. Plugins of
//! other kinds in the folder are left to mofa-wasm. A new version of a plugin replaces the old
//! in the registry; calls already running finish on the old one.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use mofa_kernel::plugin::PluginKind;
use mofa_kernel::wasm::{Change, PluginsDir, WasmTool};

use crate::registry::Registry;
use crate::rhai_tools::Scan;

pub struct WasmTools {
    plugins: PluginsDir,
    registry: Arc<Registry>,
    /// The tools this folder put in the registry.
    serving: Mutex<BTreeSet<String>>,
}

impl WasmTools {
    pub fn new(plugins: PluginsDir, registry: Arc<Registry>) -> Self {
        WasmTools {
            plugins,
            registry,
            serving: Mutex::default(),
        }
    }

    pub fn plugins(&self) -> &PluginsDir {
        &self.plugins
    }

    /// Looks at the folder once and brings the registry in step. Blocking (compiles modules).
    pub fn scan(&self) -> Scan {
        let mut scan = Scan::default();
        let mut serving = self.serving.lock().expect("wasm tools");
        for change in self.plugins.scan() {
            let name = match change {
                Change::Loaded { name, .. } | Change::Swapped { name, .. } => name,
                Change::Unloaded { name } => {
                    if serving.remove(&name) {
                        self.registry.remove(&name);
                        scan.changed = true;
                    }
                    continue;
                }
                Change::Refused { reason, .. } => {
                    scan.errors.push(format!("plugin refused: {reason}"));
                    continue;
                }
            };
            let Some(plugin) = self.plugins.get(&name) else {
                continue;
            };
            if plugin.manifest().kind != PluginKind::Tool {
                // Now another kind: it leaves the catalog.
                if serving.remove(&name) {
                    self.registry.remove(&name);
                    scan.changed = true;
                }
                continue;
            }
            if !serving.contains(&name) && self.registry.contains(&name) {
                scan.errors.push(format!(
                    "plugin {name}: would replace a built-in, MCP or Rhai tool of that name"
                ));
                continue;
            }
            let version = plugin.manifest().version.clone();
            match WasmTool::new(plugin).and_then(|t| self.registry.add(Arc::new(t))) {
                Ok(()) => {
                    tracing::info!("wasm tool {name} {version} loaded");
                    serving.insert(name);
                    scan.changed = true;
                }
                Err(e) => scan.errors.push(format!("plugin {name}: {e}")),
            }
        }
        scan
    }
}
