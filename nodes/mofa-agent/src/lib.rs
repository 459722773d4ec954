//! mofa-agent: one agent, a persona with a bounded memory per session.
//!
//! Inputs: `task` (envelopes, or plain text: each string a task) and `llm` (the bridge's
//! answers). Outputs: `llm` (chat requests), `result` (the answer to each task), `error`.
//!
//! Sessions are independent: a task whose session is waiting on the LLM queues behind it (so
//! the memory stays in order), while other sessions go ahead at once. The node ends by itself
//! once `task` is closed and no work is left, so a chain drains from its source to its sink.
//!
//! Env: MOFA_AGENT_NAME (default: the node id), MOFA_SYSTEM_PROMPT or MOFA_SYSTEM_PROMPT_FILE,
//! MOFA_MEMORY_WINDOW (messages kept per session, default 20), MOFA_MAX_SESSIONS (1000),
//! MOFA_AGENT_TIMEOUT_MS (how long to wait for the LLM, default 300000), MOFA_TEMPERATURE,
//! MOFA_TOP_P, MOFA_MAX_TOKENS, MOFA_SEED, MOFA_STREAM.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mofa_kernel::config::{self, ConfigError};
use mofa_kernel::llm::{ChatMessage, ChatOptions, ChatRequest, ChatResponse};
use mofa_kernel::node::{Ctx, Failure, Handler};
use mofa_kernel::{Envelope, Kind, Role};
use tokio::sync::oneshot;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub name: String,
    pub system_prompt: String,
    pub memory_window: usize,
    pub max_sessions: usize,
    pub llm_timeout: Duration,
    pub options: ChatOptions,
}

impl AgentConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let name = config::optional("MOFA_AGENT_NAME")
            .or_else(|| config::optional("DORA_NODE_ID"))
            .unwrap_or_else(|| "agent".into());
        let system_prompt = match config::either("MOFA_SYSTEM_PROMPT", "MOFA_SYSTEM_PROMPT_FILE")? {
            Some((true, prompt)) => prompt,
            Some((false, path)) => std::fs::read_to_string(&path)
                .map_err(|e| ConfigError::invalid("MOFA_SYSTEM_PROMPT_FILE", path, e))?,
            None => format!("You are {name}, a helpful assistant."),
        };
        let memory_window = config::parse_or("MOFA_MEMORY_WINDOW", 20usize)?;
        if memory_window == 0 {
            return Err(ConfigError::invalid(
                "MOFA_MEMORY_WINDOW",
                "0",
                "must keep at least 1 message",
            ));
        }
        Ok(AgentConfig {
            name,
            system_prompt,
            memory_window,
            max_sessions: config::parse_or("MOFA_MAX_SESSIONS", 1000usize)?.max(1),
            llm_timeout: config::millis_or("MOFA_AGENT_TIMEOUT_MS", Duration::from_secs(300))?,
            options: ChatOptions {
                model: None,
                temperature: config::optional("MOFA_TEMPERATURE")
                    .map(|_| config::parse_or("MOFA_TEMPERATURE", 0.0f32))
                    .transpose()?,
                top_p: config::optional("MOFA_TOP_P")
                    .map(|_| config::parse_or("MOFA_TOP_P", 1.0f32))
                    .transpose()?,
                max_tokens: config::optional("MOFA_MAX_TOKENS")
                    .map(|_| config::parse_or("MOFA_MAX_TOKENS", 0u32))
                    .transpose()?,
                seed: config::optional("MOFA_SEED")
                    .map(|_| config::parse_or("MOFA_SEED", 0u64))
                    .transpose()?,
                stop: Vec::new(),
                stream: config::flag_or("MOFA_STREAM", false)?,
                tool_choice: None,
            },
        })
    }
}

/// The LLM request id for a task: derived, so an answer can be matched without a lookup table
/// and a test can address it.
pub fn request_id(task: &Envelope) -> String {
    format!("{}/llm", task.id)
}

struct Pending {
    task: Envelope,
    request_id: String,
    /// Dropped when the answer comes, which ends the timeout watch.
    _answered: oneshot::Sender<()>,
}

#[derive(Default)]
struct Session {
    history: VecDeque<ChatMessage>,
    pending: Option<Pending>,
    queued: VecDeque<Envelope>,
    last_used: u64,
}

#[derive(Default)]
struct State {
    sessions: HashMap<String, Session>,
    clock: u64,
    task_closed: bool,
}

impl State {
    fn busy(&self) -> bool {
        self.sessions
            .values()
            .any(|s| s.pending.is_some() || !s.queued.is_empty())
    }

    /// Forgets the least recently used idle sessions beyond `max`.
    fn evict(&mut self, max: usize) {
        while self.sessions.len() > max {
            let idle = self
                .sessions
                .iter()
                .filter(|(_, s)| s.pending.is_none() && s.queued.is_empty())
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone());
            match idle {
                Some(k) => self.sessions.remove(&k),
                None => break,
            };
        }
    }
}

pub struct Agent {
    cfg: Arc<AgentConfig>,
    state: Arc<Mutex<State>>,
}

impl Agent {
    pub fn new(cfg: AgentConfig) -> Self {
        Agent {
            cfg: Arc::new(cfg),
            state: Arc::default(),
        }
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Agent::new(AgentConfig::from_env()?))
    }

    /// Sends the LLM request for `task` (its session must be free) and watches the time.
    fn start(&self, ctx: &Ctx, st: &mut State, task: Envelope) {
        st.clock += 1;
        let clock = st.clock;
        let session = st.sessions.entry(task.session.clone()).or_default();
        session.last_used = clock;
        session
            .history
            .push_back(ChatMessage::new(Role::User, &task.content));
        while session.history.len() > self.cfg.memory_window {
            session.history.pop_front();
        }
        let mut messages = vec![ChatMessage::new(Role::System, &self.cfg.system_prompt)];
        messages.extend(session.history.iter().cloned());
        let request = ChatRequest {
            messages,
            tools: Vec::new(),
            options: self.cfg.options.clone(),
        };
        let mut req = request.to_envelope(&task, &self.cfg.name);
        req.id = request_id(&task);

        let (answered, watch) = oneshot::channel::<()>();
        session.pending = Some(Pending {
            task: task.clone(),
            request_id: req.id.clone(),
            _answered: answered,
        });
        ctx.send_one("llm", req);

        let (timeout, state, me) = (
            self.cfg.llm_timeout,
            self.state.clone(),
            self.clone_handle(),
        );
        let (wctx, request_id, session_key) =
            (ctx.clone(), request_id(&task), task.session.clone());
        ctx.spawn(task, async move {
            if tokio::time::timeout(timeout, watch).await.is_ok() {
                return Ok(()); // answered (or the node is stopping)
            }
            let mut st = state.lock().expect("agent state");
            let still_waiting = st.sessions.get_mut(&session_key).and_then(|s| {
                let ours = s
                    .pending
                    .as_ref()
                    .is_some_and(|p| p.request_id == request_id);
                if ours { s.pending.take() } else { None }
            });
            if still_waiting.is_none() {
                return Ok(());
            }
            me.next(&wctx, &mut st, &session_key);
            Err(Failure::new(format!(
                "no answer from the LLM within {} ms",
                timeout.as_millis()
            )))
        });
    }

    /// Starts the session's next queued task, or ends the node if all work is done.
    fn next(&self, ctx: &Ctx, st: &mut State, session: &str) {
        let queued = st
            .sessions
            .get_mut(session)
            .and_then(|s| s.queued.pop_front());
        match queued {
            Some(task) => self.start(ctx, st, task),
            None => {
                st.evict(self.cfg.max_sessions);
                if st.task_closed && !st.busy() {
                    ctx.exit();
                }
            }
        }
    }

    fn clone_handle(&self) -> Agent {
        Agent {
            cfg: self.cfg.clone(),
            state: self.state.clone(),
        }
    }

    fn on_task(&self, ctx: &Ctx, task: Envelope) -> Result<(), Failure> {
        if task.kind == Kind::Error || task.kind == Kind::Token {
            return Err(Failure::new(format!(
                "a `{}` envelope is not a task",
                task.kind
            )));
        }
        if task.content.trim().is_empty() {
            return Err(Failure::new("empty task"));
        }
        let mut st = self.state.lock().expect("agent state");
        let session = st.sessions.entry(task.session.clone()).or_default();
        if session.pending.is_some() {
            session.queued.push_back(task);
        } else {
            self.start(ctx, &mut st, task);
        }
        Ok(())
    }

    fn on_llm(&self, ctx: &Ctx, answer: Envelope) -> Result<(), Failure> {
        let mut st = self.state.lock().expect("agent state");
        let pending = st.sessions.get_mut(&answer.session).and_then(|s| {
            let matches = s
                .pending
                .as_ref()
                .map(|p| Some(&p.request_id) == answer.reply_to.as_ref());
            if matches == Some(true) {
                s.pending.take()
            } else {
                None
            }
        });
        let Some(pending) = pending else {
            return Err(Failure::new(format!(
                "an LLM answer to an unknown request {:?} (session {})",
                answer.reply_to, answer.session
            )));
        };
        let task = pending.task;
        let outcome = match answer.kind {
            Kind::Error => Err(Failure::new(format!("LLM failed: {}", answer.content))
                .with_details(answer.payload_json().unwrap_or_default())),
            _ => ChatResponse::from_envelope(&answer)
                .map_err(|e| Failure::new(format!("unreadable LLM answer: {e}"))),
        };
        match outcome {
            Ok(response) => {
                if let Some(s) = st.sessions.get_mut(&task.session) {
                    s.history.push_back(response.message.clone());
                    while s.history.len() > self.cfg.memory_window {
                        s.history.pop_front();
                    }
                }
                let result = task
                    .reply(
                        Kind::Result,
                        &self.cfg.name,
                        Role::Assistant,
                        &response.message.content,
                    )
                    .with_payload(&serde_json::json!({
                        "model": response.model,
                        "usage": response.usage,
                        "llm_request": answer.reply_to,
                    }));
                ctx.send_one("result", result);
            }
            Err(f) => ctx.fail(&task, f),
        }
        self.next(ctx, &mut st, &task.session);
        Ok(())
    }
}

#[async_trait]
impl Handler for Agent {
    async fn on_message(&self, ctx: &Ctx, input: &str, msg: Envelope) -> Result<(), Failure> {
        match input {
            "llm" => self.on_llm(ctx, msg),
            _ => self.on_task(ctx, msg),
        }
    }

    async fn on_input_closed(&self, ctx: &Ctx, input: &str) {
        if input == "task" {
            let mut st = self.state.lock().expect("agent state");
            st.task_closed = true;
            if !st.busy() {
                ctx.exit();
            }
        }
    }
}
