//! Tools written in Rhai: one `.rhai` file per tool in a folder (MOFA_TOOLS_DIR), hot-loaded.
//!
//! A file declares its tool in a function `tool()` returning a map, and implements it in
//! `run(args)`, where `args` is the call's (already validated) arguments as a map:
//!
//! ```rhai
//! fn tool() {
//!     #{
//!         name: "discount",                      // optional: the file's stem by default
//!         description: "Price after a discount",
//!         parameters: #{
//!             price: #{ type: "number", minimum: 0, description: "Price before" },
//!             tier: #{ type: "string", enum: ["gold", "silver"] },
//!         },
//!         required: ["price", "tier"],
//!     }
//! }
//! fn run(args) { if args.tier == "gold" { args.price * 0.8 } else { args.price * 0.9 } }
//! ```
//!
//! A parameter has a `type` (string, number, integer, boolean, array, object) and optionally
//! `description`, `enum`, `minimum`/`maximum` (numbers) and `items` (arrays: a parameter
//! declaration for the elements). The loader turns the declaration into the JSON Schema the model
//! is given and the registry checks calls against; it refuses what it cannot turn into a valid
//! schema, naming the file. Scripts run on the kernel's one Rhai set-up, under its limits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use mofa_kernel::script::{AST, ScriptEngine};
use mofa_kernel::tool::{Tool, ToolError, ToolSpec};
use mofa_kernel::watch;
use serde_json::{Map, Value, json};

use crate::registry::Registry;

/// A tool implemented by a Rhai script's `run(args)`.
pub struct RhaiTool {
    spec: ToolSpec,
    /// The file name, to say whose script failed.
    file: String,
    ast: Arc<AST>,
    engine: Arc<ScriptEngine>,
}

impl RhaiTool {
    /// Reads, compiles and declares the tool in `path`. Errors name the file.
    pub fn load(engine: &Arc<ScriptEngine>, path: &Path) -> Result<RhaiTool, String> {
        let source = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Self::from_source(engine, path, &source)
    }

    fn from_source(
        engine: &Arc<ScriptEngine>,
        path: &Path,
        source: &str,
    ) -> Result<RhaiTool, String> {
        let at = |e: String| format!("{}: {e}", path.display());
        let ast = engine.compile(source).map_err(|e| at(e.to_string()))?;
        let has = |name: &str, arity: usize| {
            ast.iter_functions()
                .any(|f| f.name == name && f.params.len() == arity)
        };
        if !has("tool", 0) {
            return Err(at(
                "no declaration: define `fn tool()` returning a map".into()
            ));
        }
        if !has("run", 1) {
            return Err(at("no implementation: define `fn run(args)`".into()));
        }
        let decl = engine
            .call(&ast, "tool", &[])
            .map_err(|e| at(format!("tool(): {e}")))?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let spec = spec_from_declaration(&decl, stem).map_err(at)?;
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(RhaiTool {
            spec,
            file,
            ast,
            engine: engine.clone(),
        })
    }
}

#[async_trait]
impl Tool for RhaiTool {
    fn spec(&self) -> ToolSpec {
        self.spec.clone()
    }

    async fn call(&self, args: Value) -> Result<Value, ToolError> {
        let (engine, ast) = (self.engine.clone(), self.ast.clone());
        // Evaluation blocks (the script may loop until its limit, or sleep).
        let out = tokio::task::spawn_blocking(move || engine.call(&ast, "run", &[args]))
            .await
            .map_err(|e| ToolError::Failed(format!("{}: {e}", self.file)))?;
        out.map_err(|e| ToolError::Failed(format!("{}: {e}", self.file)))
    }
}

const TYPES: [&str; 6] = ["string", "number", "integer", "boolean", "array", "object"];

/// The tool's spec from its declaration: `{"type": "object", "properties": ..., "required":
/// [...], "additionalProperties": false}`. `default_name` is used when the declaration has none.
pub fn spec_from_declaration(decl: &Value, default_name: &str) -> Result<ToolSpec, String> {
    let decl = decl
        .as_object()
        .ok_or_else(|| format!("tool() must return a map, not {decl}"))?;
    only_keys(
        decl,
        &["name", "description", "parameters", "required"],
        "tool()",
    )?;
    let name = match decl.get("name") {
        None => default_name,
        Some(Value::String(n)) => n,
        Some(other) => return Err(format!("name must be a string, not {other}")),
    };
    // What OpenAI-style function calling accepts as a function name.
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid {
        return Err(format!(
            "name {name:?} must be 1 to 64 letters, digits, `_` or `-`"
        ));
    }
    let description = match decl.get("description") {
        Some(Value::String(d)) if !d.trim().is_empty() => d.clone(),
        _ => return Err("description must be a non-empty string".into()),
    };
    let params = match decl.get("parameters") {
        None => Map::new(),
        Some(Value::Object(p)) => p.clone(),
        Some(other) => return Err(format!("parameters must be a map, not {other}")),
    };
    let mut properties = Map::new();
    for (p, d) in &params {
        properties.insert(
            p.clone(),
            parameter(d).map_err(|e| format!("parameter `{p}`: {e}"))?,
        );
    }
    let required: Vec<String> = match decl.get("required") {
        None => Vec::new(),
        Some(Value::Array(r)) => r
            .iter()
            .map(|v| match v {
                Value::String(s) if params.contains_key(s) => Ok(s.clone()),
                Value::String(s) => Err(format!("required names `{s}`, which is not a parameter")),
                other => Err(format!("required must list names, not {other}")),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("required must be an array, not {other}")),
    };
    let parameters = json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    });
    // The last word: the schema the registry will compile.
    jsonschema::validator_for(&parameters)
        .map_err(|e| format!("the generated schema is invalid: {e}"))?;
    Ok(ToolSpec {
        name: name.to_owned(),
        description,
        parameters,
    })
}

/// One parameter's JSON Schema from its declaration.
fn parameter(d: &Value) -> Result<Value, String> {
    let d = d
        .as_object()
        .ok_or_else(|| format!("must be a map like #{{ type: \"string\" }}, not {d}"))?;
    only_keys(
        d,
        &["type", "description", "enum", "minimum", "maximum", "items"],
        "a parameter",
    )?;
    let ty = match d.get("type") {
        Some(Value::String(t)) if TYPES.contains(&t.as_str()) => t.as_str(),
        Some(t) => return Err(format!("type {t} is not one of {}", TYPES.join(", "))),
        None => return Err(format!("no type (one of {})", TYPES.join(", "))),
    };
    let numeric = ty == "number" || ty == "integer";
    let mut schema = Map::new();
    schema.insert("type".into(), ty.into());
    if let Some(desc) = d.get("description") {
        if !desc.is_string() {
            return Err(format!("description must be a string, not {desc}"));
        }
        schema.insert("description".into(), desc.clone());
    }
    for bound in ["minimum", "maximum"] {
        if let Some(b) = d.get(bound) {
            if !numeric {
                return Err(format!("{bound} applies to numbers, not to type {ty}"));
            }
            if !b.is_number() {
                return Err(format!("{bound} must be a number, not {b}"));
            }
            schema.insert(bound.into(), b.clone());
        }
    }
    if let (Some(lo), Some(hi)) = (
        d.get("minimum").and_then(Value::as_f64),
        d.get("maximum").and_then(Value::as_f64),
    ) && lo > hi
    {
        return Err(format!("minimum {lo} is above maximum {hi}"));
    }
    if let Some(e) = d.get("enum") {
        let values = match e {
            Value::Array(v) if !v.is_empty() => v,
            _ => return Err(format!("enum must be a non-empty array, not {e}")),
        };
        for v in values {
            let fits = match ty {
                "string" => v.is_string(),
                "integer" => v.is_i64() || v.is_u64(),
                "number" => v.is_number(),
                "boolean" => v.is_boolean(),
                _ => false,
            };
            if !fits {
                return Err(format!("enum value {v} is not of type {ty}"));
            }
        }
        schema.insert("enum".into(), e.clone());
    }
    if let Some(items) = d.get("items") {
        if ty != "array" {
            return Err(format!("items applies to arrays, not to type {ty}"));
        }
        schema.insert(
            "items".into(),
            parameter(items).map_err(|e| format!("items: {e}"))?,
        );
    }
    Ok(Value::Object(schema))
}

/// Unknown keys are refused: a misspelt `minimun` would otherwise silently allow anything.
fn only_keys(m: &Map<String, Value>, known: &[&str], what: &str) -> Result<(), String> {
    match m.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(format!(
            "{what} has an unknown key `{k}` (known: {})",
            known.join(", ")
        )),
        None => Ok(()),
    }
}

/// What one look at the folder changed.
#[derive(Debug, Default)]
pub struct Scan {
    /// Tools were added, replaced or removed: the catalog is to be published again.
    pub changed: bool,
    /// Files that could not be loaded (an older version of the file may still be serving).
    pub errors: Vec<String>,
}

/// A file as last seen.
struct Seen {
    source: String,
    /// The tool it serves (the last version that loaded), if any.
    serving: Option<String>,
}

/// The folder of Rhai tools, kept in step with the registry: new and changed files are
/// (re)loaded, removed files unloaded. A broken version of a file leaves the old one serving.
pub struct ToolsDir {
    dir: PathBuf,
    engine: Arc<ScriptEngine>,
    registry: Arc<Registry>,
    seen: Mutex<BTreeMap<PathBuf, Seen>>,
    /// The folder could not be listed at the last look (reported once, not at every look).
    unlisted: AtomicBool,
}

impl ToolsDir {
    pub fn new(dir: PathBuf, engine: Arc<ScriptEngine>, registry: Arc<Registry>) -> Self {
        ToolsDir {
            dir,
            engine,
            registry,
            seen: Mutex::default(),
            unlisted: AtomicBool::new(false),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Looks at the folder once and brings the registry in step. Blocking (reads files, runs
    /// `tool()`): call from a blocking thread.
    pub fn scan(&self) -> Scan {
        let mut scan = Scan::default();
        let mut now: HashMap<PathBuf, String> = HashMap::new();
        // Files being written are left for a later look, neither loaded nor counted as gone.
        let mut settling: HashSet<PathBuf> = HashSet::new();
        match std::fs::read_dir(&self.dir) {
            Ok(entries) => {
                for path in entries.flatten().map(|e| e.path()) {
                    if path.extension().is_some_and(|x| x == "rhai") && path.is_file() {
                        match watch::read_settled(&path) {
                            Ok(Some((_, s))) => {
                                now.insert(path, s);
                            }
                            Ok(None) => {
                                settling.insert(path);
                            }
                            Err(e) => scan
                                .errors
                                .push(format!("{}: cannot read: {e}", path.display())),
                        }
                    }
                }
            }
            Err(e) => {
                // Keep serving what is loaded: the folder may be back at the next look.
                if !self.unlisted.swap(true, Ordering::Relaxed) {
                    scan.errors
                        .push(format!("{}: cannot list: {e}", self.dir.display()));
                }
                return scan;
            }
        }
        self.unlisted.store(false, Ordering::Relaxed);
        let mut seen = self.seen.lock().expect("tools dir lock");

        let gone: Vec<PathBuf> = seen
            .keys()
            .filter(|p| !now.contains_key(*p) && !settling.contains(*p))
            .cloned()
            .collect();
        for path in gone {
            if let Some(name) = seen.remove(&path).and_then(|s| s.serving) {
                self.registry.remove(&name);
                tracing::info!("rhai tool {name} unloaded ({} removed)", path.display());
                scan.changed = true;
            }
        }

        let mut paths: Vec<PathBuf> = now.keys().cloned().collect();
        paths.sort();
        for path in paths {
            let source = now.remove(&path).expect("listed above");
            if seen.get(&path).is_some_and(|s| s.source == source) {
                continue;
            }
            let serving = seen.get(&path).and_then(|s| s.serving.clone());
            let loaded = RhaiTool::from_source(&self.engine, &path, &source).and_then(|tool| {
                let name = tool.spec.name.clone();
                let other_file = seen
                    .iter()
                    .find(|(p, s)| **p != path && s.serving.as_deref() == Some(name.as_str()));
                if let Some((other, _)) = other_file {
                    return Err(format!(
                        "{}: tool {name} is already declared by {}",
                        path.display(),
                        other.display()
                    ));
                }
                if serving.as_deref() != Some(name.as_str()) && self.registry.contains(&name) {
                    return Err(format!(
                        "{}: tool {name} would replace a built-in or MCP tool of that name",
                        path.display()
                    ));
                }
                self.registry.add(Arc::new(tool))?;
                Ok(name)
            });
            let serving = match loaded {
                Ok(name) => {
                    if let Some(old) = serving.filter(|old| *old != name) {
                        self.registry.remove(&old);
                    }
                    tracing::info!("rhai tool {name} loaded from {}", path.display());
                    scan.changed = true;
                    Some(name)
                }
                Err(e) => {
                    scan.errors.push(e);
                    serving
                }
            };
            seen.insert(path, Seen { source, serving });
        }
        scan
    }
}
