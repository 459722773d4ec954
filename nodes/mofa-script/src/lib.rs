//! mofa-script: runs a Rhai script on every message (the runtime layer: behaviour changed
//! without a rebuild).
//!
//! The script sees `msg`, the envelope as a map (`msg.content`, `msg.session`, `msg.priority`,
//! …, and `msg.data`: the payload parsed as JSON, or `()`). Modes (MOFA_SCRIPT_MODE):
//! - `task`: the script's value answers the message, as a `result` on `out` (a string is the
//!   content; any other value is the payload, its JSON the content);
//! - `condition`: the message goes on unchanged on `true` or `false` (a boolean), or on the
//!   output the script names (a string among MOFA_SCRIPT_OUTPUTS);
//! - `transform`: a new envelope replying to the message goes on `out`: a string replaces the
//!   content; a map sets any of `content`, `data` (the payload), `kind`, `priority`, `round`;
//! - `rules`: MOFA_SCRIPT is a rules file (kernel::rules: Rhai conditions, priorities, match
//!   modes, set/emit/goto, groups with defaults); each emit goes out on its output. A message
//!   no rule emits for is an `error`, not dropped.
//!
//! The script file (MOFA_SCRIPT) is watched: a changed file takes effect on the next message
//! (checked every MOFA_SCRIPT_POLL_MS, default 200); one that does not compile leaves the
//! previous version running and is reported on `error`. Every output carries the script's
//! version in its dora metadata (`mofa.script_version`: `<n>-<hash>`, n counting the loads).
//! A script error or a tripped limit (kernel::script::Limits, MOFA_SCRIPT_* variables) is an
//! `error` envelope for that message; the node goes on.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mofa_kernel::config::{self, ConfigError};
use mofa_kernel::node::{Ctx, Failure, Handler};
use mofa_kernel::rules::RuleSet;
use mofa_kernel::script::{Limits, ScriptEngine, ScriptError, content_hash};
use mofa_kernel::watch::{FileStamp, file_stamp, read_settled};
use mofa_kernel::{Envelope, Kind, Priority, Role};
use serde_json::{Value, json};

/// The metadata parameter that names the script version an output came from.
pub const VERSION_KEY: &str = "mofa.script_version";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Task,
    Condition,
    Transform,
    Rules,
}

#[derive(Debug, Clone)]
pub struct ScriptConfig {
    pub path: PathBuf,
    pub mode: Mode,
    /// Outputs a condition may name, besides `true` and `false`.
    pub outputs: Vec<String>,
    pub limits: Limits,
    pub poll: Duration,
}

impl ScriptConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let mode = match config::optional("MOFA_SCRIPT_MODE").as_deref() {
            None | Some("task") => Mode::Task,
            Some("condition") => Mode::Condition,
            Some("transform") => Mode::Transform,
            Some("rules") => Mode::Rules,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "MOFA_SCRIPT_MODE",
                    other,
                    "expected task, condition, transform or rules",
                ));
            }
        };
        Ok(ScriptConfig {
            path: config::required("MOFA_SCRIPT", "the Rhai script to run (a .rhai file)")?.into(),
            mode,
            outputs: config::list("MOFA_SCRIPT_OUTPUTS"),
            limits: Limits::from_env()?,
            poll: config::millis_or("MOFA_SCRIPT_POLL_MS", Duration::from_millis(200))?,
        })
    }
}

/// What a file compiles to: a script, or a rule set.
#[derive(Clone)]
enum Program {
    Script(Arc<mofa_kernel::script::AST>),
    Rules(Arc<RuleSet>),
}

/// The script as last loaded.
struct Loaded {
    program: Program,
    version: String,
    loads: u32,
    /// The file's stamp when last looked at: only a new stamp makes it read again.
    stamp: FileStamp,
    /// The hash of the text loaded: a new stamp with the same text is no new version.
    text_hash: u64,
}

pub struct ScriptNode {
    cfg: ScriptConfig,
    engine: Arc<ScriptEngine>,
    loaded: Arc<Mutex<Loaded>>,
}

fn version_of(loads: u32, text_hash: u64) -> String {
    format!("{loads}-{:08x}", text_hash as u32)
}

impl ScriptNode {
    /// Loads the script; one that is missing or does not compile stops the node at start.
    pub fn new(cfg: ScriptConfig) -> Result<Self, ConfigError> {
        let engine = Arc::new(ScriptEngine::new(cfg.limits));
        let path = cfg.path.display().to_string();
        let stamp = file_stamp(&cfg.path);
        let text = std::fs::read_to_string(&cfg.path)
            .map_err(|e| ConfigError::invalid("MOFA_SCRIPT", &path, e))?;
        let program = compile(&engine, cfg.mode, &text)
            .map_err(|e| ConfigError::invalid("MOFA_SCRIPT", &path, e))?;
        let text_hash = content_hash(&text);
        let loaded = Loaded {
            program,
            version: version_of(1, text_hash),
            loads: 1,
            stamp,
            text_hash,
        };
        Ok(ScriptNode {
            cfg,
            engine,
            loaded: Arc::new(Mutex::new(loaded)),
        })
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        ScriptNode::new(ScriptConfig::from_env()?)
    }

    /// The version of the script now running (`<n>-<hash>`).
    pub fn version(&self) -> String {
        self.loaded.lock().expect("script").version.clone()
    }

    /// Reloads the script if its file changed. A version that does not compile is not used:
    /// the running one is kept and the message saying so is returned.
    pub fn reload(&self) -> Option<String> {
        // A stat per look (every message, every poll); the text is read only when it moved.
        let stamp = file_stamp(&self.cfg.path);
        let mut l = self.loaded.lock().expect("script");
        if stamp.is_none() || stamp == l.stamp {
            return None; // unchanged, or unreadable now (mid-save, removed): keep what runs
        }
        // Being saved right now (or gone): keep what runs and look again later.
        let Ok(Some((stamp, text))) = read_settled(&self.cfg.path) else {
            return None;
        };
        l.stamp = Some(stamp);
        let text_hash = content_hash(&text);
        if text_hash == l.text_hash {
            return None;
        }
        l.text_hash = text_hash;
        match compile(&self.engine, self.cfg.mode, &text) {
            Ok(program) => {
                l.loads += 1;
                l.program = program;
                l.version = version_of(l.loads, text_hash);
                tracing::info!(
                    "script {} reloaded: version {}",
                    self.cfg.path.display(),
                    l.version
                );
                None
            }
            Err(e) => Some(format!(
                "the new {} is not used: {e}; version {} goes on running",
                self.cfg.path.display(),
                l.version
            )),
        }
    }

    /// [`reload`](Self::reload) in the node: a broken version is reported on `error`.
    fn reload_reporting(&self, ctx: &Ctx) {
        if let Some(message) = self.reload() {
            let cause = Envelope::new(Kind::Control, ctx.node_id(), Role::System, "reload");
            ctx.fail(&cause, Failure::new(message));
        }
    }

    /// Runs the script on one message (the script as now loaded; call [`reload`](Self::reload)
    /// first to pick up edits): what to send, on which output, and the version that made it.
    /// Blocks while the script runs (bounded by its limits). `sender` names the outputs' sender.
    pub fn process(&self, msg: &Envelope, sender: &str) -> Result<Processed, Failure> {
        let (program, version) = {
            let l = self.loaded.lock().expect("script");
            (l.program.clone(), l.version.clone())
        };
        let ast = match program {
            Program::Script(ast) => ast,
            Program::Rules(rules) => {
                let outcome = rules.evaluate(&self.engine, msg).map_err(|e| {
                    Failure::new(e.to_string()).with_details(json!({"script_version": version}))
                })?;
                let sends = outcome.messages(msg, sender);
                if sends.is_empty() {
                    return Err(Failure::new("no rule emitted anything for the message")
                        .with_details(json!({"matched": outcome.matched, "vars": outcome.vars})));
                }
                return Ok(Processed { sends, version });
            }
        };
        let seen = as_script_value(msg);
        match self.engine.eval(&ast, &[("msg", &seen)]) {
            Ok(v) => Ok(Processed {
                sends: self.act(sender, msg, v)?,
                version,
            }),
            Err(e) => {
                let limit = matches!(e, ScriptError::Limit(_) | ScriptError::Timeout(_));
                Err(Failure::new(e.to_string())
                    .with_details(json!({"script_version": version, "limit": limit})))
            }
        }
    }

    /// What to send for one message, given the script's value.
    fn act(&self, sender: &str, msg: &Envelope, value: Value) -> Result<Sends, Failure> {
        match self.cfg.mode {
            Mode::Task => {
                let mut out = msg.reply(Kind::Result, sender, Role::Assistant, "");
                match value {
                    Value::String(s) => out.content = s,
                    v => {
                        out.content = v.to_string();
                        out = out.with_payload(&v);
                    }
                }
                Ok(vec![("out".into(), out)])
            }
            Mode::Condition => {
                let output = match &value {
                    Value::Bool(b) => b.to_string(),
                    Value::String(s) if self.cfg.outputs.contains(s) => s.clone(),
                    other => {
                        return Err(Failure::new(format!(
                            "a condition gives true, false or one of [{}]; this one gave {other}",
                            self.cfg.outputs.join(", ")
                        )));
                    }
                };
                Ok(vec![(output, msg.clone())])
            }
            Mode::Transform => Ok(vec![("out".into(), transformed(msg, sender, value)?)]),
            Mode::Rules => unreachable!("rules give an outcome, not a value"),
        }
    }
}

/// The file's text as the mode reads it.
fn compile(engine: &ScriptEngine, mode: Mode, text: &str) -> Result<Program, String> {
    match mode {
        Mode::Rules => RuleSet::load(engine, text)
            .map(|r| Program::Rules(Arc::new(r)))
            .map_err(|e| e.to_string()),
        _ => engine
            .compile(text)
            .map(Program::Script)
            .map_err(|e| e.to_string()),
    }
}

/// Envelopes to send, each with its output.
pub type Sends = Vec<(String, Envelope)>;

/// What one message made: the envelopes to send and the script version that made them (for
/// the outputs' [`VERSION_KEY`] metadata).
#[derive(Debug, Clone, PartialEq)]
pub struct Processed {
    pub sends: Sends,
    pub version: String,
}

/// The envelope a transform makes from `msg` and the script's value.
fn transformed(msg: &Envelope, sender: &str, value: Value) -> Result<Envelope, Failure> {
    let mut out = msg.reply(msg.kind, sender, msg.role, msg.content.clone());
    out.payload = msg.payload.clone();
    match value {
        Value::String(s) => out.content = s,
        Value::Object(fields) => {
            for (k, v) in fields {
                match (k.as_str(), v) {
                    ("content", Value::String(s)) => out.content = s,
                    ("data", Value::Null) => out.payload = None,
                    ("data", v) => out.payload = Some(v.to_string()),
                    ("kind", Value::String(s)) => {
                        out.kind = serde_json::from_value(json!(s))
                            .map_err(|_| Failure::new(format!("no envelope kind `{s}`")))?
                    }
                    ("priority", v) => {
                        let n = v.as_u64().and_then(|n| u8::try_from(n).ok());
                        out.priority = n
                            .and_then(|n| Priority::try_from(n).ok())
                            .ok_or_else(|| Failure::new(format!("priority {v} is not 0..=3")))?
                    }
                    ("round", v) => {
                        out.round = v
                            .as_u64()
                            .and_then(|n| u32::try_from(n).ok())
                            .ok_or_else(|| Failure::new(format!("round {v} is not a count")))?
                    }
                    (k, v) => {
                        return Err(Failure::new(format!(
                            "a transform sets content, data, kind, priority or round; not {k} = {v}"
                        )));
                    }
                }
            }
        }
        other => {
            return Err(Failure::new(format!(
                "a transform gives a string or a map; this one gave {other}"
            )));
        }
    }
    Ok(out)
}

/// The envelope as the script sees it.
fn as_script_value(msg: &Envelope) -> Value {
    let mut v = serde_json::to_value(msg).unwrap_or(Value::Null);
    v["data"] = msg.payload_json().unwrap_or(Value::Null);
    v
}

#[async_trait]
impl Handler for ScriptNode {
    async fn on_start(&self, ctx: &Ctx) -> Result<(), Failure> {
        // Checks the file between messages too, so an idle node reports a broken edit.
        let (me, wctx, poll) = (self.handle(), ctx.clone(), self.cfg.poll);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(poll).await;
                me.reload_reporting(&wctx);
            }
        });
        Ok(())
    }

    async fn on_message(&self, ctx: &Ctx, _input: &str, msg: Envelope) -> Result<(), Failure> {
        self.reload_reporting(ctx);
        // In order, message after message; the script may block (it is bounded by its limits).
        let done = tokio::task::block_in_place(|| self.process(&msg, ctx.node_id()))?;
        for (output, out) in done.sends {
            let meta = vec![(VERSION_KEY.to_owned(), done.version.clone())];
            ctx.send_with_meta(&output, vec![out], meta);
        }
        Ok(())
    }
}

impl ScriptNode {
    fn handle(&self) -> ScriptNode {
        ScriptNode {
            cfg: self.cfg.clone(),
            engine: self.engine.clone(),
            loaded: self.loaded.clone(),
        }
    }
}
