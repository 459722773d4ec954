//! mofa-router: custom routing. For each task an LLM picks, among described agents, the one
//! to handle it; the task goes out unchanged on that agent's output.
//!
//! Inputs: `task`, `llm` (the bridge's answers). Outputs: one per route (named as in
//! MOFA_ROUTES), `llm` (routing requests), `error`.
//!
//! The model is offered one function, `choose_agent`, whose `agent` parameter is an enum of
//! the route names, with `tool_choice: required`: the local model's grammar then cannot name
//! anything else. An endpoint without function calling may answer in text; its first word is
//! taken. A choice that is no route is an `error` envelope for the task.
//!
//! Env: MOFA_ROUTES (comma-separated route names), MOFA_ROUTE_<NAME> (what that agent does,
//! told to the model; NAME upper-cased, `-` as `_`), MOFA_ROUTER_PROMPT (instructions before
//! the list), MOFA_ROUTER_TIMEOUT_MS (how long to wait for the LLM; 120000).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mofa_kernel::config::{self, ConfigError};
use mofa_kernel::llm::{ChatMessage, ChatOptions, ChatRequest, ChatResponse};
use mofa_kernel::node::{Ctx, Deadline, Failure, Handler};
use mofa_kernel::tool::ToolSpec;
use mofa_kernel::{Envelope, Kind, Role};
use serde_json::json;

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

impl RouterConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let names = config::names(
            "MOFA_ROUTES",
            1,
            "the agents to route to (output ids)",
            &["task", "llm"],
        )?;
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

pub struct Router {
    cfg: Arc<RouterConfig>,
    state: Arc<Mutex<State>>,
}

/// The id of the routing request for `task`.
pub fn request_id(task: &Envelope) -> String {
    format!("{}/route", task.id)
}

impl Router {
    pub fn new(cfg: RouterConfig) -> Self {
        Router {
            cfg: Arc::new(cfg),
            state: Arc::default(),
        }
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Router::new(RouterConfig::from_env()?))
    }

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
    async fn on_message(&self, ctx: &Ctx, input: &str, msg: Envelope) -> Result<(), Failure> {
        match input {
            "llm" => self.on_llm(ctx, msg),
            _ => self.on_task(ctx, msg),
        }
    }

    /// Tasks still waiting for a route when the node stops are answered with an error.
    async fn on_stop(&self, ctx: &Ctx) {
        let mut st = self.state.lock().expect("router state");
        for (_, (task, _)) in st.pending.drain() {
            ctx.fail(
                &task,
                Failure::new("the router stopped before the LLM chose"),
            );
        }
    }

    async fn on_input_closed(&self, ctx: &Ctx, input: &str) {
        if input == "task" {
            let mut st = self.state.lock().expect("router state");
            st.task_closed = true;
            if st.pending.is_empty() {
                ctx.exit();
            }
        }
    }
}
