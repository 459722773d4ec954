//! The WASM plugin host (feature `wasm`): compile-time plugins as core WASM modules, run with
//! wasmtime under fuel, a wall-clock deadline and a memory limit, after an integrity check.
//! The ABI a module must speak is in docs/plugin-abi.md; in short:
//!
//! - exports `memory`, `mofa_abi_version() -> i32` (1), `mofa_alloc(len: i32) -> i32`,
//!   `mofa_handle(ptr: i32, len: i32) -> i64` (the output's pointer in the high 32 bits, its
//!   length in the low), and optionally `mofa_free(ptr: i32, len: i32)`;
//! - the output starts with a status byte: 0 and the answer, or 1 and an error message (UTF-8);
//! - imports nothing but `mofa.log(level, ptr, len)` and `mofa.now_ms() -> i64`, and WASI
//!   preview 1 only when its manifest asks for `fs` and the operator grants it a folder
//!   ([`Grants`], MOFA_WASM_GRANT), which it then sees as `/data` and nothing else.
//!
//! A plugin is a folder with a `plugin.toml` manifest ([`Manifest`]) beside its module. The
//! host refuses a module whose sha256 differs from the manifest's, one built for another ABI,
//! one that imports anything else, and one that asks for a capability it does not grant. A
//! plugin that traps, runs out of fuel or time, or grows past its memory fails that call only;
//! its instance is dropped and the next call gets a fresh one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use semver::{Version, VersionReq};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use wasmtime::{
    Caller, Engine, Instance, InstancePre, Linker, Memory, Module, ResourceLimiter, Store, Trap,
    TypedFunc,
};

use crate::config::{self, ConfigError};
use crate::envelope::{self, Envelope};
use crate::plugin::{Health, Plugin, PluginError, PluginKind, PluginMetadata};
use crate::tool::{Tool, ToolError, ToolSpec};
use crate::watch;

/// The plugin ABI this host speaks. A manifest's `abi` requirement must match it, and the
/// module's `mofa_abi_version()` must return its major.
pub const ABI: Version = Version::new(1, 0, 0);

/// The host functions a module may import (module `mofa`), and the capability each is.
const HOST_FUNCTIONS: [(&str, &str); 2] = [("log", "log"), ("now_ms", "clock")];

/// The capabilities a manifest may ask for. `log` and `clock` are granted to every plugin;
/// `fs` only by the operator (MOFA_WASM_GRANT).
const CAPABILITIES: [&str; 3] = ["log", "clock", "fs"];

/// Where a granted folder appears inside the plugin.
pub const GUEST_DIR: &str = "/data";

/// The WASI module a granted plugin may import.
const WASI_MODULE: &str = "wasi_snapshot_preview1";

/// How often the deadline clock ticks: a deadline is kept to within one tick.
const TICK: Duration = Duration::from_millis(5);

/// What an answer starts with.
const STATUS_OK: u8 = 0;
const STATUS_ERROR: u8 = 1;

/// The most one log line from a plugin may carry.
const MAX_LOG_BYTES: usize = 4096;

/// The one engine of the process, and the thread that advances its deadline clock.
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut cfg = wasmtime::Config::new();
        cfg.consume_fuel(true).epoch_interruption(true);
        let engine = Engine::new(&cfg).expect("the wasmtime configuration is valid");
        let ticking = engine.clone();
        std::thread::Builder::new()
            .name("mofa-wasm-clock".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(TICK);
                    ticking.increment_epoch();
                }
            })
            .expect("a thread for the plugin deadline clock");
        engine
    })
}

/// How the host passes data to a plugin and reads its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// UTF-8 JSON: a tool's arguments and result, or an envelope's fields.
    #[default]
    Json,
    /// An Arrow IPC stream of one batch in the envelope schema (transforms and hooks).
    Arrow,
}

/// What a plugin may use, per call. A manifest may ask for less than the host allows, never
/// more: the host takes the smaller of the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// WASM instructions, roughly (wasmtime's fuel).
    pub fuel: u64,
    /// Linear memory, bytes.
    pub memory: usize,
    /// Wall-clock time per call.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 100_000_000,
            memory: 64 << 20,
            timeout: Duration::from_secs(1),
        }
    }
}

impl Limits {
    /// The host's limits: MOFA_WASM_FUEL, MOFA_WASM_MEMORY_MB, MOFA_WASM_TIMEOUT_MS.
    pub fn from_env() -> Result<Self, ConfigError> {
        let d = Limits::default();
        let memory_mb: usize = config::parse_or("MOFA_WASM_MEMORY_MB", d.memory >> 20)?;
        Ok(Limits {
            fuel: config::parse_or("MOFA_WASM_FUEL", d.fuel)?,
            memory: memory_mb << 20,
            timeout: config::millis_or("MOFA_WASM_TIMEOUT_MS", d.timeout)?,
        })
    }

    fn within(self, asked: &LimitsDecl) -> Limits {
        Limits {
            fuel: asked.fuel.map_or(self.fuel, |f| f.min(self.fuel)),
            memory: asked
                .memory_mb
                .map_or(self.memory, |m| (m << 20).min(self.memory)),
            timeout: asked
                .timeout_ms
                .map_or(self.timeout, |t| Duration::from_millis(t).min(self.timeout)),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsDecl {
    pub fuel: Option<u64>,
    pub memory_mb: Option<usize>,
    pub timeout_ms: Option<u64>,
}

/// A tool plugin's declaration: what the model is told.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolDecl {
    pub description: String,
    /// JSON Schema of the arguments (an object schema).
    pub parameters: toml::Value,
}

/// `plugin.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    /// The plugin's own version (semver).
    pub version: String,
    pub kind: PluginKind,
    /// The plugin ABI versions the module is built for (a semver requirement: "1" means ^1).
    pub abi: String,
    /// The module file, relative to the manifest: `.wasm` (or `.wat`, compiled at load).
    pub module: String,
    /// Hex sha256 of the module file.
    pub sha256: String,
    /// What the module is built from (`.wat` or `.c`), relative to the manifest: for
    /// `mofa-plugin build`; the host reads only the module.
    pub source: Option<String>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub format: Format,
    pub tool: Option<ToolDecl>,
    #[serde(default)]
    pub limits: LimitsDecl,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Manifest, String> {
        let path = dir.join("plugin.toml");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Manifest::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Manifest, String> {
        let m: Manifest = toml::from_str(text).map_err(|e| e.to_string())?;
        let name_ok = !m.name.is_empty()
            && m.name.len() <= 64
            && m.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !name_ok {
            return Err(format!(
                "name {:?} must be 1 to 64 letters, digits, `_` or `-`",
                m.name
            ));
        }
        Version::parse(&m.version)
            .map_err(|e| format!("version {:?} is not semver: {e}", m.version))?;
        let abi = VersionReq::parse(&m.abi)
            .map_err(|e| format!("abi {:?} is not a semver requirement: {e}", m.abi))?;
        if !abi.matches(&ABI) {
            return Err(format!(
                "built for plugin ABI {}, this host speaks {ABI}",
                m.abi
            ));
        }
        let hex = |s: &str| s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit());
        if !hex(&m.sha256) {
            return Err(format!("sha256 {:?} is not 64 hex digits", m.sha256));
        }
        for cap in &m.capabilities {
            if !CAPABILITIES.contains(&cap.as_str()) {
                return Err(format!(
                    "asks for capability `{cap}`; this host offers `log` and `clock`, and `fs` \
                     (one folder) where the operator grants it: no network or environment"
                ));
            }
        }
        match (m.kind, &m.tool, m.format) {
            (PluginKind::Rules, _, _) => {
                return Err("kind `rules` is for Rhai scripts, not WASM plugins".into());
            }
            (PluginKind::Tool, None, _) => {
                return Err("a tool plugin needs a [tool] table (description, parameters)".into());
            }
            (PluginKind::Tool, _, Format::Arrow) => {
                return Err("a tool takes and returns JSON: format must be `json`".into());
            }
            (PluginKind::Transform | PluginKind::AgentHook, Some(_), _) => {
                return Err("only a tool plugin has a [tool] table".into());
            }
            _ => {}
        }
        Ok(m)
    }

    pub fn metadata(&self) -> PluginMetadata {
        PluginMetadata {
            name: self.name.clone(),
            version: self.version.clone(),
            kind: self.kind,
            capabilities: self.capabilities.clone(),
            sha256: self.sha256.clone(),
        }
    }

    fn tool_spec(&self) -> Option<Result<ToolSpec, String>> {
        let decl = self.tool.as_ref()?;
        Some(
            serde_json::to_value(&decl.parameters)
                .map_err(|e| format!("[tool] parameters: {e}"))
                .map(|parameters| ToolSpec {
                    name: self.name.clone(),
                    description: decl.description.clone(),
                    parameters,
                }),
        )
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A folder the operator lets one plugin use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub dir: PathBuf,
    pub write: bool,
}

/// What the operator grants beyond `log` and `clock`, per plugin: MOFA_WASM_GRANT, e.g.
/// `reader=fs:/srv/docs;notes=fs-rw:/var/notes` (`fs` read-only, `fs-rw` read and write). A
/// plugin gets a folder only if its manifest also asks for `fs`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants(BTreeMap<String, Grant>);

impl Grants {
    pub fn parse(text: &str) -> Result<Grants, String> {
        let mut grants = BTreeMap::new();
        for item in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, what) = item
                .split_once('=')
                .ok_or_else(|| format!("{item}: expected plugin=fs:/folder"))?;
            let (kind, dir) = what
                .split_once(':')
                .ok_or_else(|| format!("{item}: expected plugin=fs:/folder"))?;
            let write = match kind {
                "fs" => false,
                "fs-rw" => true,
                other => {
                    return Err(format!(
                        "{item}: `{other}` cannot be granted (only fs and fs-rw)"
                    ));
                }
            };
            let dir = PathBuf::from(dir);
            if !dir.is_dir() {
                return Err(format!("{item}: {} is not a folder", dir.display()));
            }
            grants.insert(name.trim().to_owned(), Grant { dir, write });
        }
        Ok(Grants(grants))
    }

    pub fn from_env() -> Result<Grants, ConfigError> {
        match config::optional("MOFA_WASM_GRANT") {
            Some(v) => Grants::parse(&v).map_err(|e| ConfigError::invalid("MOFA_WASM_GRANT", v, e)),
            None => Ok(Grants::default()),
        }
    }

    pub fn get(&self, plugin: &str) -> Option<&Grant> {
        self.0.get(plugin)
    }
}

/// What a plugin's store holds: who it is (for its logs) and how much memory it may have.
struct HostState {
    plugin: String,
    /// WASI, for a plugin granted a folder.
    wasi: Option<wasmtime_wasi::p1::WasiP1Ctx>,
    memory_limit: usize,
    /// Set when the plugin asked for more memory than its limit.
    refused_growth: Option<usize>,
}

impl ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.refused_growth = Some(desired);
            // An error rather than `false`: a bomb that ignores a failed grow still stops here.
            return Err(wasmtime::Error::msg("memory limit"));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// An instance ready for calls, kept between calls (a warm instance).
struct Warm {
    store: Store<HostState>,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    handle: TypedFunc<(i32, i32), i64>,
    free: Option<TypedFunc<(i32, i32), ()>>,
}

/// Why a call did not give an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The plugin answered with an error (status 1).
    #[error("{0}")]
    Plugin(String),
    /// The plugin was stopped or broke the ABI; the host dropped its instance.
    #[error(transparent)]
    Fault(#[from] PluginError),
}

/// One loaded plugin: its manifest, compiled module and warm instances.
pub struct WasmPlugin {
    manifest: Manifest,
    meta: PluginMetadata,
    dir: PathBuf,
    limits: Limits,
    /// The folder the operator granted, if the manifest asked for one.
    fs: Option<Grant>,
    pre: InstancePre<HostState>,
    idle: Mutex<Vec<Warm>>,
    health: Mutex<Health>,
}

impl WasmPlugin {
    /// Reads the manifest in `dir`, checks the module against it and compiles it, then makes
    /// one instance to check the ABI version. `limits` are the host's; no grants.
    pub fn load(dir: &Path, limits: Limits) -> Result<WasmPlugin, PluginError> {
        Self::load_granted(dir, limits, &Grants::default())
    }

    /// [`load`](Self::load) with what the operator grants.
    pub fn load_granted(
        dir: &Path,
        limits: Limits,
        grants: &Grants,
    ) -> Result<WasmPlugin, PluginError> {
        let manifest = Manifest::read(dir).map_err(|reason| PluginError::Load {
            name: dir_name(dir),
            reason,
        })?;
        let path = dir.join(&manifest.module);
        let bytes = std::fs::read(&path).map_err(|e| PluginError::Load {
            name: manifest.name.clone(),
            reason: format!("{}: cannot read: {e}", path.display()),
        })?;
        Self::from_parts(dir, manifest, &bytes, limits, grants)
    }

    fn from_parts(
        dir: &Path,
        manifest: Manifest,
        bytes: &[u8],
        limits: Limits,
        grants: &Grants,
    ) -> Result<WasmPlugin, PluginError> {
        let name = manifest.name.clone();
        let load_err = |reason: String| PluginError::Load {
            name: name.clone(),
            reason,
        };
        let found = sha256_hex(bytes);
        if !found.eq_ignore_ascii_case(&manifest.sha256) {
            return Err(PluginError::Integrity {
                name: name.clone(),
                expected: manifest.sha256.to_ascii_lowercase(),
                found,
            });
        }
        let fs = match (
            manifest.capabilities.iter().any(|c| c == "fs"),
            grants.get(&name),
        ) {
            (true, Some(g)) => Some(g.clone()),
            (true, None) => {
                return Err(load_err(format!(
                    "asks for capability `fs`, which the operator has not granted \
                     (MOFA_WASM_GRANT={name}=fs:/some/folder)"
                )));
            }
            (false, _) => None,
        };
        let module = Module::new(engine(), bytes)
            .map_err(|e| load_err(format!("{}: not a valid module: {e:#}", manifest.module)))?;
        for import in module.imports() {
            let offered = (import.module() == "mofa"
                && HOST_FUNCTIONS.iter().any(|(f, _)| *f == import.name()))
                || (import.module() == WASI_MODULE && fs.is_some());
            if !offered {
                return Err(load_err(format!(
                    "imports `{}.{}`, which this host does not offer (mofa.log and mofa.now_ms; \
                     WASI only to a plugin that asks for `fs` and is granted a folder)",
                    import.module(),
                    import.name()
                )));
            }
        }
        let mut linker: Linker<HostState> = Linker::new(engine());
        linker
            .func_wrap("mofa", "log", host_log)
            .and_then(|l| l.func_wrap("mofa", "now_ms", envelope::now_ms))
            .map_err(|e| load_err(format!("host functions: {e:#}")))?;
        if fs.is_some() {
            wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut HostState| {
                s.wasi.as_mut().expect("a granted plugin's store has WASI")
            })
            .map_err(|e| load_err(format!("WASI: {e:#}")))?;
        }
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| load_err(format!("{e:#}")))?;
        let limits = limits.within(&manifest.limits);
        let plugin = WasmPlugin {
            meta: manifest.metadata(),
            manifest,
            dir: dir.to_owned(),
            limits,
            fs,
            pre,
            idle: Mutex::default(),
            health: Mutex::new(Health::Ready),
        };
        let warm = plugin.instantiate()?;
        plugin.idle.lock().expect("idle instances").push(warm);
        Ok(plugin)
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn fault(&self, reason: String) -> PluginError {
        PluginError::Fault {
            name: self.manifest.name.clone(),
            reason,
        }
    }

    /// A new instance, its exports checked and its ABI version asked.
    fn instantiate(&self) -> Result<Warm, PluginError> {
        let name = &self.manifest.name;
        let load_err = |reason: String| PluginError::Load {
            name: name.clone(),
            reason,
        };
        let wasi = match &self.fs {
            None => None,
            Some(g) => {
                use wasmtime_wasi::{FsPerms, WasiCtxBuilder};
                let perms = if g.write {
                    FsPerms::ReadWrite
                } else {
                    FsPerms::ReadOnly
                };
                // Nothing else of the host: no environment, arguments or standard streams.
                let mut b = WasiCtxBuilder::new();
                b.preopened_dir(&g.dir, GUEST_DIR, perms).map_err(|e| {
                    load_err(format!("the granted folder {}: {e:#}", g.dir.display()))
                })?;
                Some(b.build_p1())
            }
        };
        let mut store = Store::new(
            engine(),
            HostState {
                plugin: name.clone(),
                wasi,
                memory_limit: self.limits.memory,
                refused_growth: None,
            },
        );
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        self.arm(&mut store)?;
        let instance: Instance = self.pre.instantiate(&mut store).map_err(|e| {
            load_err(match store.data().refused_growth {
                Some(asked) => self.memory_message(asked),
                None => format!("cannot instantiate: {e:#}"),
            })
        })?;
        let export = |what: &str, e: wasmtime::Error| {
            load_err(format!(
                "does not speak plugin ABI {}: export {what}: {e:#}",
                ABI.major
            ))
        };
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| export("`memory`", wasmtime::Error::msg("missing")))?;
        let version = instance
            .get_typed_func::<(), i32>(&mut store, "mofa_abi_version")
            .map_err(|e| export("`mofa_abi_version() -> i32`", e))?;
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, "mofa_alloc")
            .map_err(|e| export("`mofa_alloc(i32) -> i32`", e))?;
        let handle = instance
            .get_typed_func::<(i32, i32), i64>(&mut store, "mofa_handle")
            .map_err(|e| export("`mofa_handle(i32, i32) -> i64`", e))?;
        let free = match instance.get_export(&mut store, "mofa_free") {
            None => None,
            Some(_) => Some(
                instance
                    .get_typed_func::<(i32, i32), ()>(&mut store, "mofa_free")
                    .map_err(|e| export("`mofa_free(i32, i32)`", e))?,
            ),
        };
        // A WASI reactor (a C plugin built with `-mexec-model=reactor`) sets itself up here.
        if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
            init.call(&mut store, ())
                .map_err(|e| load_err(format!("_initialize(): {}", self.explain(&store, &e))))?;
        }
        let speaks = version
            .call(&mut store, ())
            .map_err(|e| load_err(format!("mofa_abi_version(): {}", self.explain(&store, &e))))?;
        if i64::from(speaks) != ABI.major as i64 {
            return Err(load_err(format!(
                "the module speaks plugin ABI {speaks}, this host speaks {}",
                ABI.major
            )));
        }
        Ok(Warm {
            store,
            memory,
            alloc,
            handle,
            free,
        })
    }

    /// Fuel and deadline for one call (or one instantiation).
    fn arm(&self, store: &mut Store<HostState>) -> Result<(), PluginError> {
        store
            .set_fuel(self.limits.fuel)
            .map_err(|e| self.fault(format!("{e:#}")))?;
        let ticks = self.limits.timeout.as_nanos().div_ceil(TICK.as_nanos()) as u64;
        store.set_epoch_deadline(ticks.max(1));
        store.data_mut().refused_growth = None;
        Ok(())
    }

    fn memory_message(&self, asked: usize) -> String {
        format!(
            "memory limit exceeded: asked for {} MB, the limit is {} MB",
            asked.div_ceil(1 << 20),
            self.limits.memory >> 20
        )
    }

    /// Says why a call into the module stopped.
    fn explain(&self, store: &Store<HostState>, e: &wasmtime::Error) -> String {
        if let Some(asked) = store.data().refused_growth {
            return self.memory_message(asked);
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => {
                format!("ran out of fuel ({} units): stopped", self.limits.fuel)
            }
            Some(Trap::Interrupt) => format!(
                "exceeded its time limit of {} ms: stopped",
                self.limits.timeout.as_millis()
            ),
            Some(trap) => format!("trapped: {trap}"),
            None => format!("{e:#}"),
        }
    }

    /// One call: `input` in, the answer out. Blocking (the plugin runs on this thread, up to
    /// its time limit).
    pub fn call_blocking(&self, input: &[u8]) -> Result<Vec<u8>, CallError> {
        let taken = self.idle.lock().expect("idle instances").pop();
        let mut warm = match taken {
            Some(w) => w,
            None => self.instantiate()?,
        };
        self.arm(&mut warm.store)?;
        match self.run(&mut warm, input) {
            Ok(answer) => {
                self.idle.lock().expect("idle instances").push(warm);
                *self.health.lock().expect("health") = Health::Ready;
                answer
            }
            // The instance may be half-way through anything: it is not used again.
            Err(reason) => {
                *self.health.lock().expect("health") = Health::Degraded(reason.clone());
                Err(CallError::Fault(self.fault(reason)))
            }
        }
    }

    /// The ABI round trip. `Err` is a fault (the instance is dropped); `Ok(Err)` is the
    /// plugin's own error answer.
    fn run(&self, warm: &mut Warm, input: &[u8]) -> Result<Result<Vec<u8>, CallError>, String> {
        let Warm {
            store,
            memory,
            alloc,
            handle,
            free,
        } = warm;
        let len = i32::try_from(input.len()).map_err(|_| "input over 2 GiB".to_owned())?;
        let ptr = alloc
            .call(&mut *store, len)
            .map_err(|e| format!("mofa_alloc: {}", self.explain(store, &e)))?;
        memory
            .write(&mut *store, ptr as u32 as usize, input)
            .map_err(|_| format!("mofa_alloc({len}) returned {ptr}, outside its memory"))?;
        let packed = handle
            .call(&mut *store, (ptr, len))
            .map_err(|e| format!("mofa_handle: {}", self.explain(store, &e)))?;
        let (out_ptr, out_len) = ((packed >> 32) as u32 as usize, packed as u32 as usize);
        let mut out = vec![0u8; out_len];
        memory.read(&*store, out_ptr, &mut out).map_err(|_| {
            format!("mofa_handle returned {out_len} bytes at {out_ptr}, outside its memory")
        })?;
        if let Some(free) = free {
            for (p, l) in [(ptr, len), (out_ptr as i32, out_len as i32)] {
                free.call(&mut *store, (p, l))
                    .map_err(|e| format!("mofa_free: {}", self.explain(store, &e)))?;
            }
        }
        match out.split_first() {
            Some((&STATUS_OK, answer)) => Ok(Ok(answer.to_vec())),
            Some((&STATUS_ERROR, message)) => Ok(Err(CallError::Plugin(
                String::from_utf8_lossy(message).into_owned(),
            ))),
            Some((other, _)) => Err(format!(
                "answer starts with status {other}, not 0 (ok) or 1 (error)"
            )),
            None => Err("empty answer (no status byte)".into()),
        }
    }

    /// [`call_blocking`](Self::call_blocking) on a blocking thread.
    pub async fn call(self: &Arc<Self>, input: Vec<u8>) -> Result<Vec<u8>, CallError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.call_blocking(&input))
            .await
            .unwrap_or_else(|e| Err(CallError::Fault(self.fault(format!("host thread: {e}")))))
    }

    /// A transform or hook: the envelope in, the envelope it returns out.
    pub async fn transform(self: &Arc<Self>, msg: &Envelope) -> Result<Envelope, CallError> {
        let input = encode(msg, self.manifest.format).map_err(CallError::Plugin)?;
        let out = self.call(input).await?;
        decode(&out, self.manifest.format, &self.manifest.name)
            .map_err(|e| CallError::Fault(self.fault(format!("its answer: {e}"))))
    }
}

fn dir_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

/// `mofa.log(level, ptr, len)`: 0 error, 1 warn, 2 info, 3 and above debug.
fn host_log(mut caller: Caller<'_, HostState>, level: i32, ptr: i32, len: i32) {
    let Some(memory) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
        return;
    };
    let len = (len.max(0) as usize).min(MAX_LOG_BYTES);
    let mut buf = vec![0u8; len];
    if memory.read(&caller, ptr as u32 as usize, &mut buf).is_err() {
        return;
    }
    let text = String::from_utf8_lossy(&buf);
    let plugin = &caller.data().plugin;
    match level {
        0 => tracing::error!(plugin, "{text}"),
        1 => tracing::warn!(plugin, "{text}"),
        2 => tracing::info!(plugin, "{text}"),
        _ => tracing::debug!(plugin, "{text}"),
    }
}

/// An envelope as a transform plugin reads it.
pub fn encode(msg: &Envelope, format: Format) -> Result<Vec<u8>, String> {
    match format {
        Format::Json => serde_json::to_vec(msg).map_err(|e| e.to_string()),
        Format::Arrow => {
            use crate::arrow::array::{AsArray, RecordBatch};
            use crate::arrow::ipc::writer::StreamWriter;
            let array = envelope::to_arrow(std::slice::from_ref(msg));
            let batch = RecordBatch::from(array.as_struct().clone());
            let mut w =
                StreamWriter::try_new(Vec::new(), &batch.schema()).map_err(|e| e.to_string())?;
            w.write(&batch).map_err(|e| e.to_string())?;
            w.into_inner().map_err(|e| e.to_string())
        }
    }
}

/// The envelope a transform plugin answered with.
pub fn decode(bytes: &[u8], format: Format, sender: &str) -> Result<Envelope, String> {
    let mut all = match format {
        Format::Json => {
            return serde_json::from_slice(bytes).map_err(|e| format!("not an envelope: {e}"));
        }
        Format::Arrow => {
            use crate::arrow::array::StructArray;
            use crate::arrow::ipc::reader::StreamReader;
            let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None)
                .map_err(|e| format!("not an Arrow IPC stream: {e}"))?;
            let mut all = Vec::new();
            for batch in reader {
                let batch = batch.map_err(|e| format!("not an Arrow IPC stream: {e}"))?;
                let array = StructArray::from(batch);
                all.extend(envelope::from_arrow(&array, sender).map_err(|e| e.to_string())?);
            }
            all
        }
    };
    match all.len() {
        1 => Ok(all.remove(0)),
        n => Err(format!("{n} envelopes, not one")),
    }
}

#[async_trait]
impl Plugin for WasmPlugin {
    fn metadata(&self) -> &PluginMetadata {
        &self.meta
    }

    /// Reloads from the folder: a fresh check and compile.
    async fn load(&mut self) -> Result<(), PluginError> {
        let dir = self.dir.clone();
        let limits = self.limits;
        *self = tokio::task::spawn_blocking(move || WasmPlugin::load(&dir, limits))
            .await
            .map_err(|e| self.fault(format!("host thread: {e}")))??;
        Ok(())
    }

    async fn start(&mut self) -> Result<(), PluginError> {
        let mut idle = self.idle.lock().expect("idle instances");
        if idle.is_empty() {
            idle.push(self.instantiate()?);
        }
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), PluginError> {
        self.idle.lock().expect("idle instances").clear();
        Ok(())
    }

    fn health(&self) -> Health {
        self.health.lock().expect("health").clone()
    }
}

/// A tool plugin behind the kernel's one tool trait.
pub struct WasmTool {
    plugin: Arc<WasmPlugin>,
    spec: ToolSpec,
}

impl WasmTool {
    pub fn new(plugin: Arc<WasmPlugin>) -> Result<WasmTool, String> {
        let spec = plugin.manifest.tool_spec().ok_or_else(|| {
            format!(
                "{} is a {} plugin, not a tool",
                plugin.meta.name, plugin.meta.kind
            )
        })??;
        Ok(WasmTool { plugin, spec })
    }

    pub fn plugin(&self) -> &Arc<WasmPlugin> {
        &self.plugin
    }
}

#[async_trait]
impl Tool for WasmTool {
    fn spec(&self) -> ToolSpec {
        self.spec.clone()
    }

    async fn call(&self, args: serde_json::Value) -> Result<serde_json::Value, ToolError> {
        let input = serde_json::to_vec(&args).map_err(|e| ToolError::Failed(e.to_string()))?;
        let out = self
            .plugin
            .call(input)
            .await
            .map_err(|e| ToolError::Failed(e.to_string()))?;
        serde_json::from_slice(&out).map_err(|e| {
            ToolError::Failed(format!("{}: its answer is not JSON: {e}", self.spec.name))
        })
    }
}

/// Which plugin versions an operator accepts: `name@req` pairs (MOFA_PLUGINS, e.g.
/// `echo@^1,text-stats@>=0.2`; a bare name takes any version). Empty: every plugin found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Wanted(BTreeMap<String, VersionReq>);

impl Wanted {
    pub fn parse(text: &str) -> Result<Wanted, String> {
        let mut wanted = BTreeMap::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, req) = item.split_once('@').unwrap_or((item, "*"));
            let req = VersionReq::parse(req)
                .map_err(|e| format!("{item}: {req:?} is not a semver requirement: {e}"))?;
            wanted.insert(name.trim().to_owned(), req);
        }
        Ok(Wanted(wanted))
    }

    fn check(&self, m: &Manifest) -> Result<bool, String> {
        if self.0.is_empty() {
            return Ok(true);
        }
        let Some(req) = self.0.get(&m.name) else {
            return Ok(false);
        };
        let v = Version::parse(&m.version).map_err(|e| e.to_string())?;
        if req.matches(&v) {
            Ok(true)
        } else {
            Err(format!(
                "{} {} is outside the required version range {req} (MOFA_PLUGINS)",
                m.name, m.version
            ))
        }
    }

    /// The names asked for that no folder provided.
    pub fn missing<'a>(&'a self, loaded: &BTreeMap<String, Arc<WasmPlugin>>) -> Vec<&'a str> {
        self.0
            .keys()
            .filter(|n| !loaded.contains_key(*n))
            .map(String::as_str)
            .collect()
    }
}

/// What one look at a plugins folder changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Loaded {
        name: String,
        version: String,
    },
    Swapped {
        name: String,
        from: String,
        to: String,
    },
    Unloaded {
        name: String,
    },
    /// A folder whose plugin did not load; an older version of it keeps serving.
    Refused {
        dir: PathBuf,
        reason: String,
    },
}

/// What was last seen of one plugin folder.
struct SeenDir {
    stamps: (watch::FileStamp, watch::FileStamp),
    /// The module file the manifest named, to stat it at the next look.
    module: Option<PathBuf>,
    serving: Option<String>,
}

/// A folder of plugin folders (`<dir>/<name>/plugin.toml`), kept in step with what is on
/// disk: new and changed plugins are loaded, removed ones unloaded. A plugin that fails its
/// checks leaves the version before it serving. Swapping replaces the `Arc`: calls already
/// running finish on the old version.
pub struct PluginsDir {
    dir: PathBuf,
    limits: Limits,
    wanted: Wanted,
    grants: Grants,
    seen: Mutex<BTreeMap<PathBuf, SeenDir>>,
    loaded: Mutex<BTreeMap<String, Arc<WasmPlugin>>>,
}

impl PluginsDir {
    pub fn new(dir: PathBuf, limits: Limits, wanted: Wanted) -> Self {
        PluginsDir {
            dir,
            limits,
            wanted,
            grants: Grants::default(),
            seen: Mutex::default(),
            loaded: Mutex::default(),
        }
    }

    /// The plugins folder a node is configured with: MOFA_PLUGINS_DIR (None when unset), with
    /// MOFA_PLUGINS, the limits (MOFA_WASM_*) and MOFA_WASM_GRANT.
    pub fn from_env() -> Result<Option<PluginsDir>, ConfigError> {
        let Some(dir) = config::optional("MOFA_PLUGINS_DIR") else {
            return Ok(None);
        };
        if !Path::new(&dir).is_dir() {
            return Err(ConfigError::invalid(
                "MOFA_PLUGINS_DIR",
                dir,
                "not a folder (of plugin folders, each with a plugin.toml)",
            ));
        }
        let wanted = match config::optional("MOFA_PLUGINS") {
            Some(v) => Wanted::parse(&v).map_err(|e| ConfigError::invalid("MOFA_PLUGINS", v, e))?,
            None => Wanted::default(),
        };
        let plugins = PluginsDir::new(dir.into(), Limits::from_env()?, wanted);
        Ok(Some(plugins.with_grants(Grants::from_env()?)))
    }

    /// What the operator grants beyond `log` and `clock`.
    pub fn with_grants(mut self, grants: Grants) -> Self {
        self.grants = grants;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn get(&self, name: &str) -> Option<Arc<WasmPlugin>> {
        self.loaded.lock().expect("plugins").get(name).cloned()
    }

    pub fn loaded(&self) -> BTreeMap<String, Arc<WasmPlugin>> {
        self.loaded.lock().expect("plugins").clone()
    }

    pub fn wanted(&self) -> &Wanted {
        &self.wanted
    }

    /// Looks at the folder once. Blocking (reads and compiles modules).
    pub fn scan(&self) -> Vec<Change> {
        let mut changes = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                changes.push(Change::Refused {
                    dir: self.dir.clone(),
                    reason: format!("cannot list: {e}"),
                });
                return changes;
            }
        };
        let mut dirs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("plugin.toml").is_file())
            .collect();
        dirs.sort();
        let mut seen = self.seen.lock().expect("plugins seen");
        let gone: Vec<PathBuf> = seen.keys().filter(|p| !dirs.contains(p)).cloned().collect();
        for path in gone {
            if let Some(name) = seen.remove(&path).and_then(|s| s.serving) {
                self.loaded.lock().expect("plugins").remove(&name);
                changes.push(Change::Unloaded { name });
            }
        }
        for path in dirs {
            let manifest_path = path.join("plugin.toml");
            // Unchanged since the last look: nothing is read (the folder is looked at 4 times a
            // second, and a module may be megabytes).
            if let Some(s) = seen.get(&path) {
                let module = s.module.as_deref().and_then(watch::file_stamp);
                if (watch::file_stamp(&manifest_path), module) == s.stamps {
                    continue;
                }
            }
            let manifest = match watch::read_settled(&manifest_path) {
                Ok(Some((stamp, text))) => (stamp, text),
                // Being written: looked at again next time.
                Ok(None) => continue,
                Err(e) => {
                    changes.push(Change::Refused {
                        dir: path.clone(),
                        reason: format!("{}: cannot read: {e}", manifest_path.display()),
                    });
                    continue;
                }
            };
            let parsed = Manifest::parse(&manifest.1)
                .map_err(|e| format!("{}: {e}", manifest_path.display()));
            let module_path = parsed.as_ref().ok().map(|m| path.join(&m.module));
            let module = match &module_path {
                Some(p) => match watch::read_settled_bytes(p) {
                    Ok(Some(m)) => Some(m),
                    Ok(None) => continue,
                    Err(e) => {
                        changes.push(Change::Refused {
                            dir: path.clone(),
                            reason: format!("{}: cannot read: {e}", p.display()),
                        });
                        continue;
                    }
                },
                None => None,
            };
            let stamps = (Some(manifest.0), module.as_ref().map(|m| m.0));
            let before = seen.get(&path);
            if before.is_some_and(|s| s.stamps == stamps) {
                continue;
            }
            let serving = before.and_then(|s| s.serving.clone());
            let loaded = parsed.and_then(|m| {
                let name = m.name.clone();
                match self.wanted.check(&m) {
                    Ok(true) => {}
                    Ok(false) => return Ok(None),
                    Err(e) => return Err(e),
                }
                let owner = seen
                    .iter()
                    .find(|(p, s)| **p != path && s.serving.as_deref() == Some(name.as_str()));
                if let Some((other, _)) = owner {
                    return Err(format!(
                        "plugin {name} is already loaded from {}",
                        other.display()
                    ));
                }
                let bytes = &module.as_ref().expect("read with the manifest").1;
                WasmPlugin::from_parts(&path, m, bytes, self.limits, &self.grants)
                    .map(|p| Some(Arc::new(p)))
                    .map_err(|e| e.to_string())
            });
            let serving = match loaded {
                Ok(Some(plugin)) => {
                    let (name, to) = (plugin.meta.name.clone(), plugin.meta.version.clone());
                    let mut all = self.loaded.lock().expect("plugins");
                    if let Some(old) = serving.as_ref().filter(|old| **old != name) {
                        all.remove(old);
                        changes.push(Change::Unloaded { name: old.clone() });
                    }
                    match all.insert(name.clone(), plugin) {
                        Some(old) => changes.push(Change::Swapped {
                            name: name.clone(),
                            from: old.meta.version.clone(),
                            to,
                        }),
                        None => changes.push(Change::Loaded {
                            name: name.clone(),
                            version: to,
                        }),
                    }
                    Some(name)
                }
                Ok(None) => {
                    if let Some(old) = serving {
                        self.loaded.lock().expect("plugins").remove(&old);
                        changes.push(Change::Unloaded { name: old });
                    }
                    None
                }
                Err(reason) => {
                    changes.push(Change::Refused {
                        dir: path.clone(),
                        reason,
                    });
                    serving
                }
            };
            seen.insert(
                path,
                SeenDir {
                    stamps,
                    module: module_path,
                    serving,
                },
            );
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_are_checked_before_any_module_is_read() {
        let ok = r#"
            name = "echo"
            version = "1.2.0"
            kind = "tool"
            abi = "1"
            module = "echo.wasm"
            sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
            [tool]
            description = "d"
            parameters = { type = "object" }
        "#;
        let m = Manifest::parse(ok).unwrap();
        assert_eq!((m.kind, m.format), (PluginKind::Tool, Format::Json));
        let bad = |from: &str, to: &str| Manifest::parse(&ok.replace(from, to)).unwrap_err();
        assert!(bad("1.2.0", "one").contains("not semver"));
        assert!(bad("abi = \"1\"", "abi = \"^2\"").contains("this host speaks 1.0.0"));
        assert!(bad("\"0000", "\"zz00").contains("64 hex digits"));
        assert!(
            bad(
                "kind = \"tool\"",
                "kind = \"tool\"\ncapabilities = [\"net\"]"
            )
            .contains("no network")
        );
        assert!(bad("[tool]", "[tool]\nextra = 1").contains("unknown field"));
        assert!(bad("name = \"echo\"", "name = \"e cho\"").contains("letters, digits"));
        assert!(bad("\"echo.wasm\"", "\"echo.wasm\"\nformat = \"arrow\"").contains("JSON"));
    }

    #[test]
    fn limits_are_the_smaller_of_host_and_manifest() {
        let host = Limits::default();
        let asked = LimitsDecl {
            fuel: Some(10),
            memory_mb: Some(1 << 20),
            timeout_ms: None,
        };
        let l = host.within(&asked);
        assert_eq!(
            (l.fuel, l.memory, l.timeout),
            (10, host.memory, host.timeout)
        );
    }

    #[test]
    fn wanted_versions_filter_and_refuse() {
        let w = Wanted::parse("echo@^1, stats").unwrap();
        let m = |name: &str, version: &str| Manifest {
            name: name.into(),
            version: version.into(),
            kind: PluginKind::Transform,
            abi: "1".into(),
            module: "m.wasm".into(),
            sha256: "0".repeat(64),
            source: None,
            capabilities: vec![],
            format: Format::Json,
            tool: None,
            limits: LimitsDecl::default(),
        };
        assert_eq!(w.check(&m("echo", "1.4.0")), Ok(true));
        assert!(w.check(&m("echo", "2.0.0")).unwrap_err().contains("^1"));
        assert_eq!(w.check(&m("stats", "0.0.1")), Ok(true));
        assert_eq!(w.check(&m("other", "1.0.0")), Ok(false));
        assert!(Wanted::parse("echo@one").is_err());
        assert_eq!(Wanted::parse("").unwrap().check(&m("x", "9.0.0")), Ok(true));
    }

    #[test]
    fn envelopes_cross_to_plugins_in_both_formats() {
        let e = Envelope::task("src", "hello").with_round(3);
        for f in [Format::Json, Format::Arrow] {
            let bytes = encode(&e, f).unwrap();
            assert_eq!(decode(&bytes, f, "src").unwrap(), e);
        }
        assert!(
            decode(b"{}", Format::Json, "x")
                .unwrap_err()
                .contains("not an envelope")
        );
        assert!(
            decode(b"nope", Format::Arrow, "x")
                .unwrap_err()
                .contains("Arrow IPC")
        );
    }
}
