//! mofa-agent: one agent, a persona with a bounded memory per session, acting through tools.
//!
//! Inputs: `task` (envelopes, or plain text: each string a task), `llm` (the bridge's answers),
//! `catalog` (the tool executor's catalog) and `tools` (its answers). Outputs: `llm` (chat
//! requests), `tools` (tool calls), `result` (the answer to each task), `error`.
//!
//! ReAct with native function calling: once a catalog has come, requests carry the tools; the
//! model's tool calls (several at once allowed) go to the executor, their results (or errors,
//! as observations) go back to the model, until it answers or MOFA_MAX_STEPS is reached. The
//! result's payload records the steps taken.
//!
//! Sessions are independent: a task whose session is waiting on the LLM queues behind it (so
//! the memory stays in order), while other sessions go ahead at once, up to
//! MOFA_MAX_CONCURRENT tasks in flight; past that, tasks wait in the kernel's priority queue
//! and the highest priority starts first (critical before normal, oldest first among equals).
//! The node ends by itself once `task` is closed and no work is left, so a chain drains from
//! its source to its sink.
//!
//! Across machines: when the kernel reports the `llm` or `tools` input lost with its machine
//! ([`Ctx::lost`]), every task in flight or waiting fails with an error naming the machine, and
//! so does every task that comes after: nothing would ever answer them.
//!
//! Env: MOFA_AGENT_NAME (default: the node id), MOFA_SYSTEM_PROMPT or MOFA_SYSTEM_PROMPT_FILE,
//! MOFA_MEMORY_WINDOW (messages kept per session, default 20), MOFA_MAX_SESSIONS (1000),
//! MOFA_MAX_CONCURRENT (tasks in flight at once; default 0, no limit),
//! MOFA_AGENT_TIMEOUT_MS (how long to wait for the LLM, default 300000), MOFA_TEMPERATURE,
//! MOFA_TOP_P, MOFA_MAX_TOKENS, MOFA_SEED, MOFA_STREAM, MOFA_MAX_STEPS (tool rounds, 8),
//! MOFA_AWAIT_CATALOG (hold tasks until the tool catalog has come, asking for it on `tools`
//! every second; default false),
//! MOFA_REACT_MODE (`native` function calling, or `text`: Thought/Action/Observation in plain
//! text, for endpoints without tool support).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mofa_kernel::config::{self, ConfigError};
use mofa_kernel::llm::{ChatMessage, ChatOptions, ChatRequest, ChatResponse, ToolCall, Usage};
use mofa_kernel::node::{Ctx, Deadline, Failure, Handler};
use mofa_kernel::queue::PriorityQueue;
use mofa_kernel::telemetry;
use mofa_kernel::tool::{self as wire, ToolSpec};
use mofa_kernel::{Envelope, Kind, Role};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// MOFA_AGENT_NAME; `None`: the node id.
    pub name: Option<String>,
    pub system_prompt: String,
    pub memory_window: usize,
    pub max_sessions: usize,
    /// Tasks in flight at once (0: no limit); the rest wait, highest priority first.
    pub max_concurrent: usize,
    pub llm_timeout: Duration,
    pub options: ChatOptions,
    /// Tool rounds before the task fails with the steps so far.
    pub max_steps: u32,
    /// Hold tasks until the tool catalog has come (or its input has closed), so the first
    /// task already sees the tools.
    pub await_catalog: bool,
    /// Text ReAct (Thought/Action/Observation in the text) for endpoints without function
    /// calling, instead of native tool calls.
    pub text_react: bool,
}

impl AgentConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let name = config::optional("MOFA_AGENT_NAME");
        let system_prompt = match config::either("MOFA_SYSTEM_PROMPT", "MOFA_SYSTEM_PROMPT_FILE")? {
            Some((true, prompt)) => prompt,
            Some((false, path)) => std::fs::read_to_string(&path)
                .map_err(|e| ConfigError::invalid("MOFA_SYSTEM_PROMPT_FILE", path, e))?,
            None => match &name {
                Some(name) => format!("You are {name}, a helpful assistant."),
                None => "You are a helpful assistant.".to_owned(),
            },
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
            max_concurrent: match config::parse_or("MOFA_MAX_CONCURRENT", 0usize)? {
                0 => usize::MAX,
                n => n,
            },
            llm_timeout: config::millis_or("MOFA_AGENT_TIMEOUT_MS", Duration::from_secs(300))?,
            max_steps: config::parse_or("MOFA_MAX_STEPS", 8u32)?,
            await_catalog: config::flag_or("MOFA_AWAIT_CATALOG", false)?,
            text_react: match config::optional("MOFA_REACT_MODE").as_deref() {
                None | Some("native") => false,
                Some("text") => true,
                Some(other) => {
                    return Err(ConfigError::invalid(
                        "MOFA_REACT_MODE",
                        other,
                        "expected native or text",
                    ));
                }
            },
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

/// The id of the LLM request for step `step` of a task: derived, so an answer can be matched
/// without a lookup table and a test can address it.
pub fn request_id(task: &Envelope, step: u32) -> String {
    format!("{}/llm/{step}", task.id)
}

/// The id of the `i`th tool call of step `step` of a task.
pub fn tool_call_id(task: &Envelope, step: u32, i: usize) -> String {
    format!("{}/tool/{step}/{i}", task.id)
}

enum Awaiting {
    Llm,
    /// Call envelope ids still unanswered, and the tool messages in call order.
    Tools {
        calls: Vec<(String, ToolCall)>,
        results: Vec<Option<ChatMessage>>,
    },
}

struct Pending {
    task: Envelope,
    step: u32,
    /// What the model has seen and said for this task so far.
    messages: Vec<ChatMessage>,
    awaiting: Awaiting,
    /// The id of the phase being waited for (an LLM request, or a step's tool calls).
    phase: String,
    steps: Vec<serde_json::Value>,
    usage: Usage,
    /// The current phase's deadline; dropped with the phase.
    _deadline: Option<Deadline>,
    /// The task's `invoke_agent` span (GenAI conventions); it ends with the task.
    span: tracing::Span,
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
    tools: Vec<ToolSpec>,
    /// Tasks held until the catalog comes (MOFA_AWAIT_CATALOG).
    held: Vec<Envelope>,
    /// Tasks waiting for a slot (MOFA_MAX_CONCURRENT).
    ready: PriorityQueue<Envelope>,
    /// Tasks in flight.
    running: usize,
    catalog_ready: bool,
    clock: u64,
    task_closed: bool,
    /// Why tasks can no longer be done: the LLM's or the tools' machine was lost.
    lost: Option<Failure>,
}

impl State {
    fn busy(&self) -> bool {
        !self.held.is_empty()
            || !self.ready.is_empty()
            || self
                .sessions
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
    /// Asks the tool executor for its catalog until it comes (MOFA_AWAIT_CATALOG).
    catalog_asker: Arc<Mutex<Option<tokio::task::AbortHandle>>>,
}

/// How often a held agent asks for the catalog again. Between machines dora's first
/// messages are best effort: the executor's catalog, published once at its start, is dropped
/// when the subscription on the agent's machine has not reached the executor's yet.
const CATALOG_ASK_EVERY: Duration = Duration::from_secs(1);

impl Agent {
    pub fn new(cfg: AgentConfig) -> Self {
        Agent {
            cfg: Arc::new(cfg),
            state: Arc::default(),
            catalog_asker: Arc::default(),
        }
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Agent::new(AgentConfig::from_env()?))
    }

    /// The name the agent signs its messages with.
    fn name<'a>(&'a self, ctx: &'a Ctx) -> &'a str {
        self.cfg.name.as_deref().unwrap_or(ctx.node_id())
    }

    fn clone_handle(&self) -> Agent {
        Agent {
            cfg: self.cfg.clone(),
            state: self.state.clone(),
            catalog_asker: self.catalog_asker.clone(),
        }
    }

    /// Starts `task` (its session must be free): the first LLM request.
    fn start(&self, ctx: &Ctx, st: &mut State, task: Envelope) {
        st.running += 1;
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
        let span = self.invoke_span(ctx, &task);
        let mut pending = Pending {
            task,
            step: 0,
            messages,
            awaiting: Awaiting::Llm,
            phase: String::new(),
            steps: Vec::new(),
            usage: Usage::default(),
            _deadline: None,
            span,
        };
        self.ask_llm(ctx, &st.tools, &mut pending);
        if let Some(s) = st.sessions.get_mut(&pending.task.session) {
            s.pending = Some(pending);
        }
    }

    /// Sends the conversation so far to the LLM, with the tools when there are any.
    fn ask_llm(&self, ctx: &Ctx, tools: &[ToolSpec], p: &mut Pending) {
        let mut request = ChatRequest {
            messages: p.messages.clone(),
            tools: tools.to_vec(),
            options: self.cfg.options.clone(),
        };
        if self.cfg.text_react && !tools.is_empty() {
            // The tools go in the text; the model stops where the observation belongs.
            request.tools.clear();
            if let Some(system) = request
                .messages
                .first_mut()
                .filter(|m| m.role == Role::System)
            {
                system.content.push_str(&text_react_instructions(tools));
            }
            request.options.stop.push("Observation:".into());
        }
        let mut req = request.to_envelope(&p.task, self.name(ctx));
        req.id = request_id(&p.task, p.step);
        p.awaiting = Awaiting::Llm;
        self.watch(ctx, p, req.id.clone());
        ctx.send_one("llm", req);
    }

    /// Starts the phase `phase` of `p` and fails the task if it does not end in time.
    fn watch(&self, ctx: &Ctx, p: &mut Pending, phase: String) {
        p.phase = phase.clone();
        let (timeout, me, wctx, session) = (
            self.cfg.llm_timeout,
            self.clone_handle(),
            ctx.clone(),
            p.task.session.clone(),
        );
        // Replacing the deadline cancels the previous phase's.
        p._deadline = Some(ctx.deadline(timeout, move || {
            let mut st = me.state.lock().expect("agent state");
            let timed_out = st.sessions.get_mut(&session).and_then(|s| {
                let ours = s.pending.as_ref().is_some_and(|p| p.phase == phase);
                if ours { s.pending.take() } else { None }
            });
            let Some(p) = timed_out else {
                return;
            };
            me.next(&wctx, &mut st, &session);
            let waiting_for = if phase.contains("/tool/") {
                "the tools"
            } else {
                "the LLM"
            };
            let f = Failure::new(format!(
                "no answer from {waiting_for} within {} ms",
                timeout.as_millis()
            ))
            .with_details(serde_json::json!({"steps": p.steps}));
            wctx.fail(&p.task, f);
        }));
    }

    /// A task of `session` has ended: its session's next task competes for the free slot,
    /// the highest-priority waiting task starts, or the node ends if all work is done.
    fn next(&self, ctx: &Ctx, st: &mut State, session: &str) {
        st.running -= 1;
        if let Some(task) = st
            .sessions
            .get_mut(session)
            .and_then(|s| s.queued.pop_front())
        {
            st.ready.push(task.priority, task);
        }
        self.pump(ctx, st);
        st.evict(self.cfg.max_sessions);
        if st.task_closed && !st.busy() {
            ctx.exit();
        }
    }

    /// Starts waiting tasks, highest priority first, while slots are free. A task whose
    /// session is busy waits behind it instead, so a session's memory stays in order.
    fn pump(&self, ctx: &Ctx, st: &mut State) {
        while st.running < self.cfg.max_concurrent {
            let Some(task) = st.ready.pop() else { break };
            let session = st.sessions.entry(task.session.clone()).or_default();
            if session.pending.is_some() {
                session.queued.push_back(task);
            } else {
                self.start(ctx, st, task);
            }
        }
    }

    fn on_task(&self, ctx: &Ctx, task: Envelope) -> Result<(), Failure> {
        if matches!(
            task.kind,
            Kind::Error | Kind::Token | Kind::ToolCall | Kind::ToolResult
        ) {
            return Err(Failure::new(format!(
                "a `{}` envelope is not a task",
                task.kind
            )));
        }
        if task.content.trim().is_empty() {
            return Err(Failure::new("empty task"));
        }
        let mut st = self.state.lock().expect("agent state");
        if let Some(f) = &st.lost {
            return Err(f.clone());
        }
        if self.cfg.await_catalog && !st.catalog_ready {
            st.held.push(task);
            return Ok(());
        }
        st.ready.push(task.priority, task);
        self.pump(ctx, &mut st);
        Ok(())
    }

    /// Takes the session's pending task if `reply_to` answers its current phase.
    fn take_pending(
        st: &mut State,
        session: &str,
        matches: impl Fn(&Pending) -> bool,
    ) -> Option<Pending> {
        let s = st.sessions.get_mut(session)?;
        if s.pending.as_ref().is_some_and(matches) {
            s.pending.take()
        } else {
            None
        }
    }

    fn on_llm(&self, ctx: &Ctx, answer: Envelope) -> Result<(), Failure> {
        let mut st = self.state.lock().expect("agent state");
        let reply_to = answer.reply_to.clone().unwrap_or_default();
        let Some(mut p) = Self::take_pending(&mut st, &answer.session, |p| {
            matches!(p.awaiting, Awaiting::Llm) && p.phase == reply_to
        }) else {
            return Err(Failure::new(format!(
                "an LLM answer to an unknown request {:?} (session {})",
                answer.reply_to, answer.session
            )));
        };
        let response = match answer.kind {
            Kind::Error => Err(Failure::new(format!("LLM failed: {}", answer.content))
                .with_details(answer.payload_json().unwrap_or_default())),
            _ => ChatResponse::from_envelope(&answer)
                .map_err(|e| Failure::new(format!("unreadable LLM answer: {e}"))),
        };
        let response = match response {
            Ok(r) => r,
            Err(f) => return self.finish(ctx, &mut st, p, Err(f)),
        };
        if let Some(u) = response.usage {
            p.usage.prompt_tokens += u.prompt_tokens;
            p.usage.completion_tokens += u.completion_tokens;
            p.usage.total_tokens += u.total_tokens;
        }
        let mut response = response;
        if self.cfg.text_react && !st.tools.is_empty() {
            match parse_text_react(&response.message.content, p.step) {
                TextStep::Final(answer) => response.message.content = answer,
                TextStep::Call(call) => response.message.tool_calls = vec![call],
            }
        }
        let calls = response.message.tool_calls.clone();
        if calls.is_empty() || st.tools.is_empty() {
            let done = Ok((response.message.content, response.model));
            return self.finish(ctx, &mut st, p, done);
        }
        if p.step >= self.cfg.max_steps {
            let f = Failure::new(format!(
                "step limit of {} reached without a final answer",
                self.cfg.max_steps
            ));
            return self.finish(ctx, &mut st, p, Err(f));
        }
        if self.cfg.text_react {
            // An endpoint without tool support knows no tool_calls: the text carries the call.
            response.message.tool_calls.clear();
        }
        p.messages.push(response.message);
        let envelopes: Vec<Envelope> = calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut e = wire::call_envelope(&p.task, self.name(ctx), c);
                e.id = tool_call_id(&p.task, p.step, i);
                e
            })
            .collect();
        p.awaiting = Awaiting::Tools {
            calls: envelopes.iter().map(|e| e.id.clone()).zip(calls).collect(),
            results: vec![None; envelopes.len()],
        };
        let phase = format!("{}/tool/{}", p.task.id, p.step);
        self.watch(ctx, &mut p, phase);
        ctx.send("tools", envelopes);
        let session = p.task.session.clone();
        if let Some(s) = st.sessions.get_mut(&session) {
            s.pending = Some(p);
        }
        Ok(())
    }

    fn on_tool_result(&self, ctx: &Ctx, answer: Envelope) -> Result<(), Failure> {
        let mut st = self.state.lock().expect("agent state");
        let reply_to = answer.reply_to.clone().unwrap_or_default();
        let Some(mut p) = Self::take_pending(&mut st, &answer.session, |p| match &p.awaiting {
            Awaiting::Tools { calls, results } => calls
                .iter()
                .position(|(id, _)| *id == reply_to)
                .is_some_and(|i| results[i].is_none()),
            Awaiting::Llm => false,
        }) else {
            return Err(Failure::new(format!(
                "a tool result for an unknown call {reply_to:?}"
            )));
        };
        let Awaiting::Tools { calls, results } = &mut p.awaiting else {
            unreachable!("matched above")
        };
        let i = calls
            .iter()
            .position(|(id, _)| *id == reply_to)
            .expect("matched above");
        let call = &calls[i].1;
        let (ok, observation) = match answer.kind {
            Kind::ToolResult => (true, answer.content.clone()),
            _ => (false, format!("error: {}", answer.content)),
        };
        p.steps.push(serde_json::json!({
            "step": p.step,
            "tool": call.name,
            "arguments": serde_json::from_str::<serde_json::Value>(&call.arguments).unwrap_or(call.arguments.clone().into()),
            "observation": observation,
            "ok": ok,
        }));
        results[i] = Some(if self.cfg.text_react {
            ChatMessage::new(Role::User, format!("Observation: {observation}"))
        } else {
            ChatMessage {
                role: Role::Tool,
                content: observation,
                tool_calls: Vec::new(),
                tool_call_id: Some(call.id.clone()),
            }
        });
        if results.iter().all(Option::is_some) {
            let done: Vec<ChatMessage> = results.drain(..).flatten().collect();
            p.messages.extend(done);
            p.step += 1;
            let tools = st.tools.clone();
            self.ask_llm(ctx, &tools, &mut p);
        }
        let session = p.task.session.clone();
        if let Some(s) = st.sessions.get_mut(&session) {
            s.pending = Some(p);
        }
        Ok(())
    }

    /// The span of the agent's work on `task`, under the span that received it; the requests
    /// it makes for the task go under it.
    fn invoke_span(&self, ctx: &Ctx, task: &Envelope) -> tracing::Span {
        if !telemetry::on() {
            return tracing::Span::none();
        }
        let name = self.name(ctx);
        let span = tracing::info_span!(
            target: telemetry::TARGET,
            parent: None,
            "invoke_agent",
            otel.name = %format!("invoke_agent {name}"),
            gen_ai.operation.name = "invoke_agent",
            gen_ai.agent.name = name,
        );
        ctx.trace_within(&span, task);
        ctx.trace_replies_under(task, &span);
        span
    }

    /// Ends a task: its result (text, model) or its failure; then the session's next task.
    fn finish(
        &self,
        ctx: &Ctx,
        st: &mut State,
        p: Pending,
        outcome: Result<(String, String), Failure>,
    ) -> Result<(), Failure> {
        let task = &p.task;
        if telemetry::on() {
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            let span = &p.span;
            span.set_attribute(
                "gen_ai.usage.input_tokens",
                i64::from(p.usage.prompt_tokens),
            );
            let output = i64::from(p.usage.completion_tokens);
            span.set_attribute("gen_ai.usage.output_tokens", output);
            span.set_attribute("mofa.steps", p.steps.len() as i64);
            if let Err(f) = &outcome {
                span.set_status(opentelemetry::trace::Status::error(f.message.clone()));
            }
        }
        match outcome {
            Ok((text, model)) => {
                if let Some(s) = st.sessions.get_mut(&task.session) {
                    s.history
                        .push_back(ChatMessage::new(Role::Assistant, &text));
                    while s.history.len() > self.cfg.memory_window {
                        s.history.pop_front();
                    }
                }
                let result = task
                    .reply(Kind::Result, self.name(ctx), Role::Assistant, text)
                    .with_payload(&serde_json::json!({
                        "model": model,
                        "usage": p.usage,
                        "steps": p.steps,
                        "llm_request": p.phase,
                    }));
                ctx.send_one("result", result);
            }
            Err(f) => {
                let mut details = match f.details {
                    serde_json::Value::Object(m) => serde_json::Value::Object(m),
                    _ => serde_json::json!({}),
                };
                details["steps"] = serde_json::json!(p.steps);
                ctx.fail(task, Failure::new(f.message).with_details(details));
            }
        }
        let session = task.session.clone();
        self.next(ctx, st, &session);
        Ok(())
    }

    fn on_catalog(&self, ctx: &Ctx, catalog: Envelope) -> Result<(), Failure> {
        let tools = wire::catalog_from_envelope(&catalog).map_err(Failure::new)?;
        tracing::info!(
            "{} tools: {}",
            tools.len(),
            tools
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.state.lock().expect("agent state").tools = tools;
        self.release_held(ctx);
        Ok(())
    }

    /// `input` (`llm` or `tools`) was lost with its machine: every task fails, now and later.
    fn lost(&self, ctx: &Ctx, input: &str, lost: mofa_kernel::node::Lost) {
        let what = if input == "llm" {
            "the LLM"
        } else {
            "the tools"
        };
        let failure = Failure::new(format!("{what} cannot be reached: {lost}")).with_details(
            serde_json::json!({
                "lost": {"input": input, "node": lost.node, "machine": lost.machine},
            }),
        );
        let mut st = self.state.lock().expect("agent state");
        if st.lost.is_some() {
            return;
        }
        st.lost = Some(failure.clone());
        let mut failed: Vec<(Envelope, serde_json::Value)> = Vec::new();
        for s in st.sessions.values_mut() {
            if let Some(p) = s.pending.take() {
                failed.push((p.task, serde_json::json!(p.steps)));
            }
            failed.extend(s.queued.drain(..).map(|t| (t, serde_json::json!([]))));
        }
        failed.extend(st.held.drain(..).map(|t| (t, serde_json::json!([]))));
        while let Some(t) = st.ready.pop() {
            failed.push((t, serde_json::json!([])));
        }
        st.running = 0;
        for (task, steps) in failed {
            let mut f = failure.clone();
            f.details["steps"] = steps;
            ctx.fail(&task, f);
        }
        if st.task_closed && !st.busy() {
            ctx.exit();
        }
    }

    /// The catalog has come (or never will): start the tasks held for it.
    fn release_held(&self, ctx: &Ctx) {
        if let Some(asker) = self.catalog_asker.lock().expect("asker").take() {
            asker.abort();
        }
        let held = {
            let mut st = self.state.lock().expect("agent state");
            st.catalog_ready = true;
            std::mem::take(&mut st.held)
        };
        for task in held {
            let cause = task.clone();
            if let Err(f) = self.on_task(ctx, task) {
                ctx.fail(&cause, f);
            }
        }
    }
}

/// What the model is told in text ReAct mode.
fn text_react_instructions(tools: &[ToolSpec]) -> String {
    "\n\nYou can use tools. To use one, reply exactly:\nThought: <your reasoning>\nAction: <tool name>\nAction Input: <JSON arguments>\nThen wait for the Observation. When you know the answer, reply:\nFinal Answer: <the answer>\nTools:\n".to_owned()
        // `.as_str()`: with rhai in the build, smartstring's `Add` impl makes `+ &String` ambiguous.
        + wire::describe(tools).as_str()
}

enum TextStep {
    Call(ToolCall),
    Final(String),
}

/// Reads a text ReAct reply: a call (`Action:` + `Action Input:`), or the final answer (after
/// `Final Answer:`, or the whole text when it follows neither form).
fn parse_text_react(text: &str, step: u32) -> TextStep {
    if let Some((_, answer)) = text.split_once("Final Answer:") {
        return TextStep::Final(answer.trim().to_owned());
    }
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    match field("Action:") {
        Some(name) if !name.is_empty() => {
            let input = text
                .split_once("Action Input:")
                .map(|(_, rest)| rest.trim().to_owned())
                .unwrap_or_else(|| "{}".into());
            TextStep::Call(ToolCall {
                id: format!("text_call_{step}"),
                name,
                arguments: input,
            })
        }
        _ => TextStep::Final(text.trim().to_owned()),
    }
}

#[async_trait]
impl Handler for Agent {
    /// Held for the catalog: asks the executor for it (on `tools`) every second until it comes,
    /// in case the one it published at its start was lost on the way.
    async fn on_start(&self, ctx: &Ctx) -> Result<(), Failure> {
        if self.cfg.await_catalog {
            let (ctx, state) = (ctx.clone(), self.state.clone());
            let ask = wire::catalog_request(self.name(&ctx));
            // Not in-flight work (Ctx::spawn): it ends when the catalog comes, or stop aborts it.
            let asker = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(CATALOG_ASK_EVERY).await;
                    if state.lock().expect("agent state").catalog_ready {
                        break;
                    }
                    ctx.send_one("tools", ask.clone());
                }
            });
            *self.catalog_asker.lock().expect("asker") = Some(asker.abort_handle());
        }
        Ok(())
    }

    async fn on_message(&self, ctx: &Ctx, input: &str, msg: Envelope) -> Result<(), Failure> {
        match input {
            "llm" => self.on_llm(ctx, msg),
            "tools" if wire::is_catalog(&msg) => self.on_catalog(ctx, msg),
            "tools" => self.on_tool_result(ctx, msg),
            "catalog" => self.on_catalog(ctx, msg),
            _ => self.on_task(ctx, msg),
        }
    }

    /// Tasks not done when the node stops are answered with an error, not dropped.
    async fn on_stop(&self, ctx: &Ctx) {
        if let Some(asker) = self.catalog_asker.lock().expect("asker").take() {
            asker.abort();
        }
        let mut st = self.state.lock().expect("agent state");
        let mut left: Vec<(Envelope, serde_json::Value)> = Vec::new();
        for s in st.sessions.values_mut() {
            if let Some(p) = s.pending.take() {
                left.push((p.task, serde_json::json!(p.steps)));
            }
            left.extend(s.queued.drain(..).map(|t| (t, serde_json::json!([]))));
        }
        left.extend(st.held.drain(..).map(|t| (t, serde_json::json!([]))));
        while let Some(t) = st.ready.pop() {
            left.push((t, serde_json::json!([])));
        }
        for (task, steps) in left {
            let f = Failure::new("the agent stopped before the task was done")
                .with_details(serde_json::json!({ "steps": steps }));
            ctx.fail(&task, f);
        }
    }

    async fn on_input_closed(&self, ctx: &Ctx, input: &str) {
        if (input == "llm" || input == "tools")
            && let Some(lost) = ctx.lost(input)
        {
            self.lost(ctx, input, lost);
        }
        if input == "catalog" {
            self.release_held(ctx);
        }
        if input == "task" {
            let mut st = self.state.lock().expect("agent state");
            st.task_closed = true;
            if !st.busy() {
                ctx.exit();
            }
        }
    }
}
