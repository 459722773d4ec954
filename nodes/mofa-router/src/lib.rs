//! mofa-router: custom routing, by rules or by an LLM's choice.
//!
//! **Rules** (MOFA_ROUTER_RULES set): each task is evaluated against a rules file
//! (`mofa_kernel::rules`: YAML, Rhai conditions) and sent on every output a rule `emit`s —
//! unchanged for an emit without `content`, as a new message answering the task with it. A
//! task no rule emits for, or a rule that fails, is an `error` envelope for that task. The
//! file is polled and hot-reloaded when it changes; a new version that does not load leaves
//! the previous rules running and is reported on `error`. Inputs: `task`. Outputs: the
//! MOFA_ROUTES, `error`.
//!
//! **LLM**: for each task an LLM picks, among described agents, the one to handle it; the
//! task goes out unchanged on that agent's output. Inputs: `task`, `llm` (the bridge's
//! answers). Outputs: one per route (named as in MOFA_ROUTES), `llm` (routing requests),
//! `error`. The model is offered one function, `choose_agent`, whose `agent` parameter is an
//! enum of the route names, with `tool_choice: required`: the local model's grammar then
//! cannot name anything else. An endpoint without function calling may answer in text; its
//! first word is taken. A choice that is no route is an `error` envelope for the task.
//!
//! Env: MOFA_ROUTES (comma-separated route names: the outputs; with rules, every output the
//! rules emit on must be one). Rules: MOFA_ROUTER_RULES (the rules file),
//! MOFA_ROUTER_RULES_POLL_MS (how often the file is checked for changes; 200), the
//! MOFA_SCRIPT_* limits of `kernel::script`. LLM: MOFA_ROUTE_<NAME> (what that agent does,
//! told to the model; NAME upper-cased, `-` as `_`), MOFA_ROUTER_PROMPT (instructions
//! before the list), MOFA_ROUTER_TIMEOUT_MS (how long to wait for the LLM; 120000).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use mofa_kernel::config::{self, ConfigError};
use mofa_kernel::llm::{ChatMessage, ChatOptions, ChatRequest, ChatResponse};
use mofa_kernel::node::{Ctx, Deadline, Failure, Handler};
use mofa_kernel::rules::{RuleError, RuleSet};
use mofa_kernel::script::{Limits, ScriptEngine};
use mofa_kernel::tool::ToolSpec;
use mofa_kernel::watch::{FileStamp, file_stamp};
use mofa_kernel::{Envelope, Kind, Role};
use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub description: String,
}

#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub routes: Vec<Route>,
    pub prompt: String,
    pub timeout: Duration,
}

const PROMPT: &str = "You are a dispatcher. Choose the one agent best suited to the task.";

fn routes_from_env() -> Result<Vec<String>, ConfigError> {
    config::names(
        "MOFA_ROUTES",
        1,
        "the agents to route to (output ids)",
        &["task", "llm"],
    )
}

impl RouterConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let names = routes_from_env()?;
        let mut routes = Vec::new();
        for name in names {
            let var = format!("MOFA_ROUTE_{}", name.to_uppercase().replace('-', "_"));
            let description = config::required(&var, "what this agent does, for the model")?;
            routes.push(Route { name, description });
        }
        Ok(RouterConfig {
            routes,
            prompt: config::optional("MOFA_ROUTER_PROMPT").unwrap_or_else(|| PROMPT.into()),
            timeout: config::millis_or("MOFA_ROUTER_TIMEOUT_MS", Duration::from_secs(120))?,
        })
    }
}

#[derive(Default)]
struct State {
    /// Routing request id → the task waiting for its route, and its deadline.
    pending: HashMap<String, (Envelope, Deadline)>,
    task_closed: bool,
}

/// Rule-based routing's configuration.
#[derive(Debug, Clone)]
pub struct RulesConfig {
    pub path: PathBuf,
    /// The outputs the rules may emit on.
    pub routes: Vec<String>,
    pub limits: Limits,
    /// How often the file is checked for a change.
    pub poll: Duration,
}

impl RulesConfig {
    /// `None` when MOFA_ROUTER_RULES is not set (LLM routing).
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        let Some(path) = config::optional("MOFA_ROUTER_RULES") else {
            return Ok(None);
        };
        Ok(Some(RulesConfig {
            path: path.into(),
            routes: routes_from_env()?,
            limits: Limits::from_env()?,
            poll: config::millis_or("MOFA_ROUTER_RULES_POLL_MS", Duration::from_millis(200))?,
        }))
    }
}

pub struct Router {
    mode: Mode,
}

enum Mode {
    Llm(LlmRouting),
    Rules(Arc<RuleRouting>),
}

struct LlmRouting {
    cfg: Arc<RouterConfig>,
    state: Arc<Mutex<State>>,
}

/// The rules file, loaded and checked against the routes.
fn load_rules(engine: &ScriptEngine, cfg: &RulesConfig) -> Result<RuleSet, String> {
    let set = RuleSet::load_file(engine, &cfg.path).map_err(|e| e.to_string())?;
    let stray: Vec<&str> = set
        .outputs()
        .into_iter()
        .filter(|o| !cfg.routes.iter().any(|r| r == o))
        .collect();
    if !stray.is_empty() {
        return Err(format!(
            "the rules emit on {}, which {} not in MOFA_ROUTES ({})",
            stray.join(", "),
            if stray.len() == 1 { "is" } else { "are" },
            cfg.routes.join(", ")
        ));
    }
    Ok(set)
}

struct RuleRouting {
    cfg: RulesConfig,
    engine: ScriptEngine,
    /// The rules in force; a task is evaluated against those current when it arrived.
    current: RwLock<Arc<RuleSet>>,
    seen: Mutex<FileStamp>,
    poller: Mutex<Option<tokio::task::AbortHandle>>,
}

impl RuleRouting {
    /// Reloads the file if it changed since last seen. A version that does not load is
    /// reported once, and the rules in force stay.
    fn check(&self, ctx: &Ctx) {
        let now = file_stamp(&self.cfg.path);
        {
            let seen = self.seen.lock().expect("rules stamp");
            // Unreadable now (mid-save, removed): the rules in force stay until it is back.
            if now.is_none() || *seen == now {
                return;
            }
        }
        let loaded = load_rules(&self.engine, &self.cfg);
        // Changed while it was read (a save that began just after the look): next poll.
        if file_stamp(&self.cfg.path) != now {
            return;
        }
        *self.seen.lock().expect("rules stamp") = now;
        match loaded {
            Ok(set) => {
                *self.current.write().expect("rules") = Arc::new(set);
                tracing::info!("rules reloaded from {}", self.cfg.path.display());
            }
            Err(e) => {
                let cause = Envelope::new(Kind::Control, ctx.node_id(), Role::System, "reload");
                ctx.fail(
                    &cause,
                    Failure::new(format!("rules not reloaded, the previous ones stay: {e}"))
                        .with_details(json!({"rules": self.cfg.path.display().to_string()})),
                );
            }
        }
    }

    fn on_task(self: &Arc<Self>, ctx: &Ctx, task: Envelope) {
        let set = self.current.read().expect("rules").clone();
        let (me, wctx, cause) = (self.clone(), ctx.clone(), task.clone());
        ctx.spawn(cause, async move {
            let t = task.clone();
            // Scripts block (and may run to their deadline): off the async workers.
            let outcome = tokio::task::spawn_blocking(move || set.evaluate(&me.engine, &t)).await?;
            let outcome = outcome.map_err(|e| {
                let rule = match &e {
                    RuleError::Script { rule, .. } | RuleError::Invalid { rule, .. } => {
                        Value::from(rule.as_str())
                    }
                    _ => Value::Null,
                };
                Failure::new(e.to_string()).with_details(json!({"rule": rule}))
            })?;
            if outcome.emits.is_empty() {
                return Err(Failure::new("no rule routed the task").with_details(json!({
                    "matched": outcome.matched,
                    "vars": outcome.vars,
                })));
            }
            for (output, msg) in outcome.messages(&task, wctx.node_id()) {
                tracing::info!(session = %task.session, "task {} → {output}", task.id);
                wctx.send_one(&output, msg);
            }
            Ok(())
        });
    }
}

/// The id of the routing request for `task`.
pub fn request_id(task: &Envelope) -> String {
    format!("{}/route", task.id)
}

impl Router {
    /// Routing by an LLM's choice.
    pub fn new(cfg: RouterConfig) -> Self {
        Router {
            mode: Mode::Llm(LlmRouting {
                cfg: Arc::new(cfg),
                state: Arc::default(),
            }),
        }
    }

    /// Routing by rules; the rules file must load.
    pub fn with_rules(cfg: RulesConfig) -> Result<Self, ConfigError> {
        let engine = ScriptEngine::new(cfg.limits);
        let seen = file_stamp(&cfg.path);
        let set = load_rules(&engine, &cfg).map_err(|e| {
            ConfigError::invalid("MOFA_ROUTER_RULES", cfg.path.display().to_string(), e)
        })?;
        Ok(Router {
            mode: Mode::Rules(Arc::new(RuleRouting {
                cfg,
                engine,
                current: RwLock::new(Arc::new(set)),
                seen: Mutex::new(seen),
                poller: Mutex::default(),
            })),
        })
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        match RulesConfig::from_env()? {
            Some(rules) => Router::with_rules(rules),
            None => Ok(Router::new(RouterConfig::from_env()?)),
        }
    }
}

impl LlmRouting {
    fn choose_tool(&self) -> ToolSpec {
        let names: Vec<&str> = self.cfg.routes.iter().map(|r| r.name.as_str()).collect();
        ToolSpec {
            name: "choose_agent".into(),
            description: "Hand the task to this agent.".into(),
            parameters: json!({
                "type": "object",
                "properties": {"agent": {"type": "string", "enum": names}},
                "required": ["agent"],
            }),
        }
    }

    fn on_task(&self, ctx: &Ctx, task: Envelope) -> Result<(), Failure> {
        if !matches!(task.kind, Kind::Task | Kind::Message | Kind::Result) {
            return Err(Failure::new(format!(
                "a `{}` envelope is not a task",
                task.kind
            )));
        }
        if task.content.trim().is_empty() {
            return Err(Failure::new("empty task"));
        }
        let agents: String = self
            .cfg
            .routes
            .iter()
            .map(|r| format!("- {}: {}\n", r.name, r.description))
            .collect();
        let request = ChatRequest {
            messages: vec![
                ChatMessage::new(
                    Role::System,
                    format!(
                        "{}\nAgents:\n{agents}Call choose_agent with the agent's name.",
                        self.cfg.prompt
                    ),
                ),
                ChatMessage::new(Role::User, format!("Task: {}", task.content)),
            ],
            tools: vec![self.choose_tool()],
            options: ChatOptions {
                tool_choice: Some("required".into()),
                // A choice, not prose: the most likely name.
                temperature: Some(0.0),
                ..Default::default()
            },
        };
        let mut req = request.to_envelope(&task, ctx.node_id());
        req.id = request_id(&task);
        let (state, wctx, id, timeout) = (
            self.state.clone(),
            ctx.clone(),
            req.id.clone(),
            self.cfg.timeout,
        );
        let deadline = ctx.deadline(timeout, move || {
            let mut st = state.lock().expect("router state");
            if let Some((task, _)) = st.pending.remove(&id) {
                wctx.fail(
                    &task,
                    Failure::new(format!(
                        "no routing answer from the LLM within {} ms",
                        timeout.as_millis()
                    )),
                );
                if st.task_closed && st.pending.is_empty() {
                    wctx.exit();
                }
            }
        });
        self.state
            .lock()
            .expect("router state")
            .pending
            .insert(req.id.clone(), (task, deadline));
        ctx.send_one("llm", req);
        Ok(())
    }

    fn on_llm(&self, ctx: &Ctx, answer: Envelope) -> Result<(), Failure> {
        let mut st = self.state.lock().expect("router state");
        let key = answer.reply_to.clone().unwrap_or_default();
        let Some((task, _done)) = st.pending.remove(&key) else {
            return Err(Failure::new(format!(
                "an LLM answer to an unknown request {:?}",
                answer.reply_to
            )));
        };
        let outcome = self.choice(&answer).and_then(|choice| {
            self.cfg
                .routes
                .iter()
                .find(|r| r.name.eq_ignore_ascii_case(&choice))
                .map(|r| r.name.clone())
                .ok_or_else(|| {
                    Failure::new(format!(
                        "the LLM chose `{choice}`, which is no route ({})",
                        self.route_names()
                    ))
                    .with_details(json!({"choice": choice}))
                })
        });
        match outcome {
            Ok(route) => {
                tracing::info!(session = %task.session, "task {} → {route}", task.id);
                ctx.send_one(&route, task);
            }
            Err(f) => ctx.fail(&task, f),
        }
        if st.task_closed && st.pending.is_empty() {
            ctx.exit();
        }
        Ok(())
    }

    /// The agent the model named: the `choose_agent` call's argument, or the first word of
    /// a text answer.
    fn choice(&self, answer: &Envelope) -> Result<String, Failure> {
        if answer.kind == Kind::Error {
            return Err(Failure::new(format!(
                "the routing LLM failed: {}",
                answer.content
            )));
        }
        let response = ChatResponse::from_envelope(answer)
            .map_err(|e| Failure::new(format!("unreadable LLM answer: {e}")))?;
        if let Some(call) = response.message.tool_calls.first() {
            let args: serde_json::Value = serde_json::from_str(&call.arguments)
                .map_err(|e| Failure::new(format!("choose_agent arguments are not JSON: {e}")))?;
            return args["agent"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| Failure::new(format!("choose_agent without an agent: {args}")));
        }
        response
            .message
            .content
            .split_whitespace()
            .next()
            .map(|w| {
                w.trim_matches(|c: char| !c.is_alphanumeric() && c != '_' && c != '-')
                    .to_owned()
            })
            .filter(|w| !w.is_empty())
            .ok_or_else(|| Failure::new("the LLM named no agent"))
    }

    fn route_names(&self) -> String {
        self.cfg
            .routes
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[async_trait]
impl Handler for Router {
    async fn on_start(&self, ctx: &Ctx) -> Result<(), Failure> {
        if let Mode::Rules(r) = &self.mode {
            let (r2, ctx) = (r.clone(), ctx.clone());
            let poll = r.cfg.poll;
            // Not `ctx.spawn`: it never ends, and a stopping node must not wait for it.
            let task = tokio::spawn(async move {
                let mut tick = tokio::time::interval(poll);
                loop {
                    tick.tick().await;
                    r2.check(&ctx);
                }
            });
            *r.poller.lock().expect("poller") = Some(task.abort_handle());
        }
        Ok(())
    }

    async fn on_message(&self, ctx: &Ctx, input: &str, msg: Envelope) -> Result<(), Failure> {
        match (&self.mode, input) {
            (Mode::Rules(r), _) => {
                r.on_task(ctx, msg);
                Ok(())
            }
            (Mode::Llm(l), "llm") => l.on_llm(ctx, msg),
            (Mode::Llm(l), _) => l.on_task(ctx, msg),
        }
    }

    /// Tasks still waiting for a route when the node stops are answered with an error.
    async fn on_stop(&self, ctx: &Ctx) {
        match &self.mode {
            Mode::Rules(r) => {
                if let Some(p) = r.poller.lock().expect("poller").take() {
                    p.abort();
                }
            }
            Mode::Llm(l) => {
                let mut st = l.state.lock().expect("router state");
                for (_, (task, _)) in st.pending.drain() {
                    ctx.fail(
                        &task,
                        Failure::new("the router stopped before the LLM chose"),
                    );
                }
            }
        }
    }

    async fn on_input_closed(&self, ctx: &Ctx, input: &str) {
        if input != "task" {
            return;
        }
        match &self.mode {
            // Evaluations in flight are drained before the node ends.
            Mode::Rules(_) => ctx.exit(),
            Mode::Llm(l) => {
                let mut st = l.state.lock().expect("router state");
                st.task_closed = true;
                if st.pending.is_empty() {
                    ctx.exit();
                }
            }
        }
    }
}
