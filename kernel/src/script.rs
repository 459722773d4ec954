//! The one Rhai set-up every node that runs scripts shares (feature `script`): limits on
//! operations, call depth, string, array and map sizes; a wall-clock deadline that is
//! enforced, sleeping included; no file, network or module access; a compile cache keyed by
//! the script's content; built-ins for JSON, time and sleeping; JSON ⇄ Rhai values both ways.
//!
//! Evaluation blocks its thread (a script may `sleep`): call it from a blocking thread
//! (`tokio::task::spawn_blocking`), not from an async task.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, EvalAltResult, Scope};
use serde_json::Value;

/// A compiled script, as [`ScriptEngine::compile`] gives it.
pub use rhai::AST;

use crate::config::{self, ConfigError};

/// What a script may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_operations: u64,
    pub max_call_levels: usize,
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
    /// Wall-clock time for one evaluation.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_operations: 1_000_000,
            max_call_levels: 64,
            max_string_size: 1 << 20,
            max_array_size: 10_000,
            max_map_size: 10_000,
            timeout: Duration::from_millis(1000),
        }
    }
}

impl Limits {
    /// MOFA_SCRIPT_MAX_OPERATIONS, MOFA_SCRIPT_MAX_CALL_LEVELS, MOFA_SCRIPT_MAX_STRING,
    /// MOFA_SCRIPT_MAX_ARRAY, MOFA_SCRIPT_MAX_MAP, MOFA_SCRIPT_TIMEOUT_MS; defaults above.
    pub fn from_env() -> Result<Self, ConfigError> {
        let d = Limits::default();
        Ok(Limits {
            max_operations: config::parse_or("MOFA_SCRIPT_MAX_OPERATIONS", d.max_operations)?,
            max_call_levels: config::parse_or("MOFA_SCRIPT_MAX_CALL_LEVELS", d.max_call_levels)?,
            max_string_size: config::parse_or("MOFA_SCRIPT_MAX_STRING", d.max_string_size)?,
            max_array_size: config::parse_or("MOFA_SCRIPT_MAX_ARRAY", d.max_array_size)?,
            max_map_size: config::parse_or("MOFA_SCRIPT_MAX_MAP", d.max_map_size)?,
            timeout: config::millis_or("MOFA_SCRIPT_TIMEOUT_MS", d.timeout)?,
        })
    }
}

/// Why a script did not give a value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScriptError {
    #[error("script does not compile: {0}")]
    Compile(String),
    #[error("script failed: {0}")]
    Runtime(String),
    #[error("script stopped at a limit: {0}")]
    Limit(String),
    #[error("script ran past its {0} ms timeout")]
    Timeout(u128),
}

thread_local! {
    /// The running evaluation's deadline on this thread.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Most compiled scripts kept; past it the cache starts again (scripts are few and small).
const CACHE_MAX: usize = 1024;

pub struct ScriptEngine {
    engine: Engine,
    limits: Limits,
    cache: Mutex<HashMap<u64, Arc<AST>>>,
}

impl ScriptEngine {
    pub fn new(limits: Limits) -> Self {
        let mut engine = Engine::new();
        engine
            .set_max_operations(limits.max_operations)
            .set_max_call_levels(limits.max_call_levels)
            .set_max_string_size(limits.max_string_size)
            .set_max_array_size(limits.max_array_size)
            .set_max_map_size(limits.max_map_size)
            .set_max_expr_depths(128, 64);
        // `eval` would compile text at run time, outside the cache and these checks.
        engine.disable_symbol("eval");
        engine.on_progress(|_| {
            let late = DEADLINE.with(|d| d.get().is_some_and(|d| Instant::now() > d));
            late.then(|| Dynamic::from("timeout"))
        });
        engine.on_print(|s| tracing::info!(target: "script", "{s}"));
        engine.on_debug(|s, _, pos| tracing::debug!(target: "script", "{pos:?}: {s}"));
        engine.register_fn("json_parse", json_parse);
        engine.register_fn("json_stringify", json_stringify);
        engine.register_fn("now_ms", crate::envelope::now_ms);
        engine.register_fn("sleep", sleep);
        ScriptEngine {
            engine,
            limits,
            cache: Mutex::default(),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The compiled script, from the cache when this very text was compiled before.
    pub fn compile(&self, source: &str) -> Result<Arc<AST>, ScriptError> {
        let key = content_hash(source);
        if let Some(ast) = self.cache.lock().expect("script cache").get(&key) {
            return Ok(ast.clone());
        }
        let ast = Arc::new(
            self.engine
                .compile(source)
                .map_err(|e| ScriptError::Compile(e.to_string()))?,
        );
        let mut cache = self.cache.lock().expect("script cache");
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, ast.clone());
        Ok(ast)
    }

    /// Runs `ast` with `vars` in scope (as Rhai values) and returns its value as JSON.
    pub fn eval(&self, ast: &AST, vars: &[(&str, &Value)]) -> Result<Value, ScriptError> {
        let mut scope = scope_of(vars)?;
        self.guarded(|| self.engine.eval_ast_with_scope::<Dynamic>(&mut scope, ast))
            .and_then(|d| to_json(&d))
    }

    /// Calls the script's function `name` with `args`, after running the script's top level
    /// (its constants and set-up).
    pub fn call(&self, ast: &AST, name: &str, args: &[Value]) -> Result<Value, ScriptError> {
        let args: Vec<Dynamic> = args.iter().map(to_dynamic).collect::<Result<_, _>>()?;
        let mut scope = Scope::new();
        self.guarded(|| self.engine.call_fn::<Dynamic>(&mut scope, ast, name, args))
            .and_then(|d| to_json(&d))
    }

    /// Runs `f` under this thread's deadline and maps Rhai's errors to ours.
    fn guarded(
        &self,
        f: impl FnOnce() -> Result<Dynamic, Box<EvalAltResult>>,
    ) -> Result<Dynamic, ScriptError> {
        DEADLINE.with(|d| d.set(Some(Instant::now() + self.limits.timeout)));
        let out = f();
        DEADLINE.with(|d| d.set(None));
        out.map_err(|e| self.error(*e))
    }

    fn error(&self, e: EvalAltResult) -> ScriptError {
        match e {
            EvalAltResult::ErrorTerminated(..) => {
                ScriptError::Timeout(self.limits.timeout.as_millis())
            }
            EvalAltResult::ErrorTooManyOperations(pos) => ScriptError::Limit(format!(
                "more than {} operations ({pos})",
                self.limits.max_operations
            )),
            EvalAltResult::ErrorStackOverflow(pos) => ScriptError::Limit(format!(
                "calls nested deeper than {} ({pos})",
                self.limits.max_call_levels
            )),
            EvalAltResult::ErrorDataTooLarge(what, pos) => {
                ScriptError::Limit(format!("{what} too large ({pos})"))
            }
            EvalAltResult::ErrorInFunctionCall(_, _, inner, _) => self.error(*inner),
            other if is_timeout(&other) => ScriptError::Timeout(self.limits.timeout.as_millis()),
            other => ScriptError::Runtime(other.to_string()),
        }
    }
}

/// The key a script's text is known by (the compile cache's, and versions').
pub fn content_hash(text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// `sleep` past the deadline raises this: the script's time is up.
const SLEPT_PAST: &str = "slept past the script's timeout";

fn is_timeout(e: &EvalAltResult) -> bool {
    matches!(e, EvalAltResult::ErrorRuntime(v, _) if v.clone().into_string().is_ok_and(|s| s == SLEPT_PAST))
}

/// `sleep(ms)`: bounded by the deadline, so a script cannot sleep its way past it.
fn sleep(ms: i64) -> Result<(), Box<EvalAltResult>> {
    let want = Duration::from_millis(ms.max(0) as u64);
    let left = DEADLINE
        .with(|d| d.get())
        .map(|d| d.saturating_duration_since(Instant::now()));
    match left {
        Some(left) if left < want => {
            std::thread::sleep(left);
            Err(SLEPT_PAST.into())
        }
        _ => {
            std::thread::sleep(want);
            Ok(())
        }
    }
}

fn json_parse(text: &str) -> Result<Dynamic, Box<EvalAltResult>> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("json_parse: {e}"))?;
    rhai::serde::to_dynamic(v)
}

fn json_stringify(v: Dynamic) -> Result<String, Box<EvalAltResult>> {
    let v: Value = rhai::serde::from_dynamic(&v)?;
    Ok(v.to_string())
}

/// A JSON value as a Rhai value (objects become maps, arrays arrays).
pub fn to_dynamic(v: &Value) -> Result<Dynamic, ScriptError> {
    rhai::serde::to_dynamic(v).map_err(|e| ScriptError::Runtime(e.to_string()))
}

/// A Rhai value as JSON (`()` becomes null).
pub fn to_json(d: &Dynamic) -> Result<Value, ScriptError> {
    rhai::serde::from_dynamic(d)
        .map_err(|e| ScriptError::Runtime(format!("result is not JSON: {e}")))
}

fn scope_of(vars: &[(&str, &Value)]) -> Result<Scope<'static>, ScriptError> {
    let mut scope = Scope::new();
    for (name, v) in vars {
        scope.push_dynamic(name.to_string(), to_dynamic(v)?);
    }
    Ok(scope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn engine() -> ScriptEngine {
        ScriptEngine::new(Limits {
            max_operations: 50_000,
            max_call_levels: 32,
            max_string_size: 10_000,
            max_array_size: 1_000,
            max_map_size: 1_000,
            timeout: Duration::from_millis(300),
        })
    }

    fn run(e: &ScriptEngine, src: &str) -> Result<Value, ScriptError> {
        let ast = e.compile(src)?;
        e.eval(&ast, &[("msg", &json!({"content": "hi", "n": 2}))])
    }

    #[test]
    fn json_goes_in_and_comes_out_and_the_built_ins_work() {
        let e = engine();
        let v = run(
            &e,
            r#"let x = json_parse(`{"a": [1, 2.5, "z"]}`);
               #{ echo: msg.content.to_upper(), twice: msg.n * 2, a: x.a, s: json_stringify(x),
                  root: sqrt(16.0), late: now_ms() > 0 }"#,
        )
        .unwrap();
        assert_eq!(v["echo"], "HI");
        assert_eq!(v["twice"], 4);
        assert_eq!(v["a"], json!([1, 2.5, "z"]));
        assert_eq!(v["s"], r#"{"a":[1,2.5,"z"]}"#);
        assert_eq!(v["root"], 4.0);
        assert_eq!(v["late"], true);
    }

    #[test]
    fn the_same_text_compiles_once() {
        let e = engine();
        let a = e.compile("1 + 1").unwrap();
        let b = e.compile("1 + 1").unwrap();
        let c = e.compile("1 + 2").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
    }

    #[test]
    fn hostile_scripts_stop_at_their_limit_and_the_engine_goes_on() {
        let e = engine();
        let cases = [
            ("loop {}", "operations"),
            ("fn f(n) { f(n + 1) } f(0)", "nested deeper"),
            (r#"let s = "x"; loop { s += s; }"#, "too large"),
            ("let a = []; loop { a.push(1); }", "too large"),
        ];
        for (src, limit) in cases {
            match run(&e, src) {
                Err(ScriptError::Limit(why)) => assert!(why.contains(limit), "{src}: {why}"),
                other => panic!("{src}: {other:?}"),
            }
        }
        let slow = ScriptEngine::new(Limits {
            max_operations: u64::MAX,
            ..engine().limits()
        });
        let start = Instant::now();
        assert_eq!(run(&slow, "loop {}"), Err(ScriptError::Timeout(300)));
        assert_eq!(
            run(&slow, "loop { sleep(100); }"),
            Err(ScriptError::Timeout(300))
        );
        assert_eq!(run(&slow, "sleep(60000)"), Err(ScriptError::Timeout(300)));
        // Each stopped at its deadline, not at its own end.
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(run(&e, "msg.n + 1"), Ok(json!(3)));
    }

    #[test]
    fn no_eval_no_modules_and_errors_are_told_apart() {
        let e = engine();
        assert!(matches!(
            e.compile(r#"eval("1")"#),
            Err(ScriptError::Compile(_))
        ));
        assert!(matches!(
            e.compile(r#"import "x" as y;"#),
            Err(ScriptError::Compile(_))
        ));
        assert!(matches!(e.compile("let = ;"), Err(ScriptError::Compile(_))));
        assert!(matches!(
            run(&e, r#"throw "no""#),
            Err(ScriptError::Runtime(_))
        ));
        assert!(matches!(run(&e, "1 / 0"), Err(ScriptError::Runtime(_))));
    }

    #[test]
    fn a_function_is_called_with_json_arguments() {
        let e = engine();
        let ast = e.compile("fn add(a, b) { a + b.n }").unwrap();
        assert_eq!(
            e.call(&ast, "add", &[json!(1), json!({"n": 2})]),
            Ok(json!(3))
        );
        assert!(matches!(
            e.call(&ast, "missing", &[]),
            Err(ScriptError::Runtime(_))
        ));
    }
}
