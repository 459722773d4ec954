//! mofa-secretary: the secretary's closed loop, with a person at the key decisions.
//!
//! Each idea (a task on `idea`) is a session that goes through five phases:
//! 1. **receive**: the idea is recorded and the model splits it into todos through a forced
//!    `record_todos` call whose `capability` is an enum of the executors' capabilities;
//! 2. **clarify**: the person is asked what to add or change, and the model writes the project
//!    document from the idea, the todos and that answer;
//! 3. **dispatch**: each todo goes to the executor agent that has its capability;
//! 4. **monitor**: results are recorded as they come, then the person approves or rejects them;
//! 5. **report**: the model writes the acceptance report; the node adds a "Decisions" section
//!    saying who decided what, stores it, closes the session and sends it on `report`.
//!
//! All state lives in mofa-store: each step's outcome is kept in the store's memory under
//! `<session>/<step>` and read back before the step runs, so a secretary that is killed and
//! restarted (dora's `restart_policy`) resumes every open session from its last completed
//! step. Side effects are not repeated: a todo's task id is stored before the task is sent, and
//! after a restart a task is sent again only if the store's tap on the executor's edge never
//! saw it; a result that came while the secretary was down is read from the store's tap on the
//! executor's answers.
//!
//! Inputs: `idea`; answers on `llm` (mofa-llm), `store` (mofa-store), `human` and
//! `human_error` (mofa-human), and per executor `<name>` (its `result`) and `<name>_error`.
//! Outputs: `llm`, `store`, `ask`, one per executor (its tasks), `progress` (one message per
//! completed phase), `report`, `error`.
//!
//! Env: MOFA_EXECUTORS (required: `name=capability,capability;name=...`), MOFA_SECRETARY_PROMPT,
//! MOFA_HUMAN_TIMEOUT_MS (how long the person has for each question; 300000),
//! MOFA_CLARIFY_DEFAULT (taken when the person does not answer the clarification; "Proceed as
//! planned."), MOFA_APPROVAL_DEFAULT (`approve` or `reject`; reject), MOFA_TASK_TIMEOUT_MS
//! (how long an executor may take; 600000), MOFA_LLM_TIMEOUT_MS (300000), MOFA_STORE_WAIT_MS
//! (how long a failing store is retried before the session fails; 60000).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::join_all;
use mofa_kernel::calls::Calls;
use mofa_kernel::config::{self, ConfigError};
use mofa_kernel::envelope::new_id;
use mofa_kernel::llm::{ChatMessage, ChatOptions, ChatRequest, ChatResponse};
use mofa_kernel::node::{Ctx, Failure, Handler};
use mofa_kernel::tool::ToolSpec;
use mofa_kernel::{Envelope, Kind, Role};
use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq)]
pub struct Executor {
    pub name: String,
    pub capabilities: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub executors: Vec<Executor>,
    pub prompt: String,
    pub human_timeout: Duration,
    pub clarify_default: String,
    pub approval_default: String,
    pub task_timeout: Duration,
    pub llm_timeout: Duration,
    pub store_wait: Duration,
}

const INPUTS: [&str; 5] = ["idea", "llm", "store", "human", "human_error"];
const OUTPUTS: [&str; 6] = ["llm", "store", "ask", "progress", "report", "error"];

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let raw = config::required(
            "MOFA_EXECUTORS",
            "the executor agents, e.g. coder=code,tests;writer=docs",
        )?;
        let executors = parse_executors(&raw)?;
        let approval_default =
            config::optional("MOFA_APPROVAL_DEFAULT").unwrap_or_else(|| "reject".into());
        if !["approve", "reject"].contains(&approval_default.as_str()) {
            return Err(ConfigError::invalid(
                "MOFA_APPROVAL_DEFAULT",
                &approval_default,
                "must be approve or reject",
            ));
        }
        Ok(Config {
            executors,
            prompt: config::optional("MOFA_SECRETARY_PROMPT").unwrap_or_else(|| {
                "You are a project secretary. You turn ideas into concrete todos, \
                 write clear project documents and honest acceptance reports."
                    .into()
            }),
            human_timeout: config::millis_or("MOFA_HUMAN_TIMEOUT_MS", Duration::from_secs(300))?,
            clarify_default: config::optional("MOFA_CLARIFY_DEFAULT")
                .unwrap_or_else(|| "Proceed as planned.".into()),
            approval_default,
            task_timeout: config::millis_or("MOFA_TASK_TIMEOUT_MS", Duration::from_secs(600))?,
            llm_timeout: config::millis_or("MOFA_LLM_TIMEOUT_MS", Duration::from_secs(300))?,
            store_wait: config::millis_or("MOFA_STORE_WAIT_MS", Duration::from_secs(60))?,
        })
    }

    fn executor_for(&self, capability: &str) -> Option<&Executor> {
        self.executors
            .iter()
            .find(|e| e.capabilities.iter().any(|c| c == capability))
    }

    fn capabilities(&self) -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        for c in self.executors.iter().flat_map(|e| &e.capabilities) {
            if !all.contains(c) {
                all.push(c.clone());
            }
        }
        all
    }
}

/// `coder=code,tests;writer=docs`: names are dora ids (inputs and outputs), capabilities free
/// words.
pub fn parse_executors(raw: &str) -> Result<Vec<Executor>, ConfigError> {
    let bad = |why: &str| ConfigError::invalid("MOFA_EXECUTORS", raw, why);
    let mut executors = Vec::new();
    for part in raw.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, caps) = part
            .split_once('=')
            .ok_or_else(|| bad("each executor is name=capability,capability"))?;
        let capabilities: Vec<String> = caps
            .split(',')
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .collect();
        if capabilities.is_empty() {
            return Err(bad("an executor without capabilities"));
        }
        executors.push(Executor {
            name: name.trim().to_owned(),
            capabilities,
        });
    }
    let names: Vec<&str> = executors.iter().map(|e| e.name.as_str()).collect();
    let reserved: Vec<&str> = INPUTS.iter().chain(OUTPUTS.iter()).copied().collect();
    config::parse_names("MOFA_EXECUTORS", &names.join(","), 1, &reserved)?;
    Ok(executors)
}

/// Cheap to clone: clones share the node's state (a session's task holds one).
#[derive(Clone)]
pub struct Secretary {
    cfg: Arc<Config>,
    calls: Arc<Calls>,
    /// Sessions being worked on in this process (an idea and a resume must not both run one).
    running: Arc<Mutex<HashSet<String>>>,
    /// No more ideas will come, and the open sessions of a previous run have been taken up:
    /// the node ends when its last session does, so the graph behind it can end too.
    idea_closed: Arc<AtomicBool>,
    resumed: Arc<AtomicBool>,
}

impl Secretary {
    pub fn new(cfg: Config) -> Self {
        Secretary {
            cfg: Arc::new(cfg),
            calls: Arc::new(Calls::new()),
            running: Arc::default(),
            idea_closed: Arc::default(),
            resumed: Arc::default(),
        }
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Secretary::new(Config::from_env()?))
    }

    fn start_session(&self, ctx: &Ctx, idea: Envelope) {
        if !self
            .running
            .lock()
            .expect("running")
            .insert(idea.session.clone())
        {
            return;
        }
        let run = Run {
            ctx: ctx.clone(),
            cfg: self.cfg.clone(),
            calls: self.calls.clone(),
            idea: idea.clone(),
        };
        let this = self.clone();
        ctx.spawn(idea, async move {
            let outcome = run.session().await;
            if outcome.is_err() {
                // Closed as failed, so a restart does not take it up again; best effort, the
                // failure itself is reported either way.
                let _ = run
                    .store(json!({"op": "session.close", "session": run.idea.session, "status": "failed"}))
                    .await;
            }
            this.running
                .lock()
                .expect("running")
                .remove(&run.idea.session);
            this.exit_when_done(&run.ctx);
            outcome
        });
    }

    fn exit_when_done(&self, ctx: &Ctx) {
        if self.idea_closed.load(Ordering::SeqCst)
            && self.resumed.load(Ordering::SeqCst)
            && self.running.lock().expect("running").is_empty()
        {
            tracing::info!("no ideas left and every session ended");
            ctx.exit();
        }
    }

    /// At start: every session the store still holds open is taken up where it stopped.
    fn resume(&self, ctx: &Ctx) {
        let cause = Envelope::new(Kind::Control, ctx.node_id(), Role::System, "resume");
        let lister = Run {
            ctx: ctx.clone(),
            cfg: self.cfg.clone(),
            calls: self.calls.clone(),
            idea: cause.clone(),
        };
        let this = self.clone();
        let ctx2 = ctx.clone();
        ctx.spawn(cause, async move {
            let listed = lister
                .store(json!({"op": "session.list", "status": "open"}))
                .await;
            if let Ok(open) = &listed {
                for s in open["sessions"].as_array().into_iter().flatten() {
                    match serde_json::from_value::<Envelope>(s["meta"]["idea"].clone()) {
                        Ok(idea) => {
                            tracing::info!("resuming session {}", idea.session);
                            this.start_session(&ctx2, idea);
                        }
                        Err(e) => {
                            tracing::warn!("open session {} has no idea: {e}", s["session"])
                        }
                    }
                }
            }
            this.resumed.store(true, Ordering::SeqCst);
            this.exit_when_done(&ctx2);
            listed.map(drop)
        });
    }
}

#[async_trait]
impl Handler for Secretary {
    async fn on_start(&self, ctx: &Ctx) -> Result<(), Failure> {
        self.resume(ctx);
        Ok(())
    }

    async fn on_input_closed(&self, ctx: &Ctx, input: &str) {
        if input == "idea" {
            self.idea_closed.store(true, Ordering::SeqCst);
            self.exit_when_done(ctx);
        }
    }

    async fn on_message(&self, ctx: &Ctx, input: &str, msg: Envelope) -> Result<(), Failure> {
        if input == "idea" {
            if msg.content.trim().is_empty() {
                return Err(Failure::new("empty idea"));
            }
            self.start_session(ctx, msg);
            return Ok(());
        }
        let answers = ["llm", "store", "human", "human_error"].contains(&input)
            || self
                .cfg
                .executors
                .iter()
                .any(|e| input == e.name || input.strip_suffix("_error") == Some(&e.name));
        if !answers {
            return Err(Failure::new(format!("unknown input `{input}`")));
        }
        if let Some(stray) = self.calls.answer(msg) {
            // An answer to a request nobody waits for any more (given up on, or from before a
            // restart): nothing to do with it but say so.
            tracing::info!(
                "answer on `{input}` to {:?}, which nobody waits for",
                stray.reply_to
            );
        }
        Ok(())
    }
}

/// A decision the person made, or the default taken for them.
struct Decision {
    answer: String,
    by_person: bool,
}

impl Decision {
    fn from_memo(v: &Value) -> Option<Decision> {
        Some(Decision {
            answer: v["answer"].as_str()?.to_owned(),
            by_person: v["source"].as_str()? == "person",
        })
    }

    fn memo(&self) -> Value {
        json!({"answer": self.answer, "source": if self.by_person { "person" } else { "default" }})
    }

    fn who(&self) -> &'static str {
        if self.by_person {
            "decided by the person"
        } else {
            "no answer in time: the default was taken"
        }
    }
}

/// One session's work.
struct Run {
    ctx: Ctx,
    cfg: Arc<Config>,
    calls: Arc<Calls>,
    idea: Envelope,
}

impl Run {
    fn session_id(&self) -> &str {
        &self.idea.session
    }

    fn me(&self) -> &str {
        self.ctx.node_id()
    }

    async fn session(&self) -> Result<(), Failure> {
        let s = self.session_id().to_owned();
        self.store(json!({
            "op": "session.open", "session": s, "title": self.idea.content,
            "meta": {"idea": self.idea},
        }))
        .await?;

        let todos = match self.memo("plan").await? {
            Some(_) => self.todos().await?,
            None => {
                let todos = self.plan().await?;
                self.remember("plan", json!({"todos": todos.len()})).await?;
                self.announce(1, "receive", format!("{} todos recorded", todos.len()))
                    .await?;
                todos
            }
        };

        let document = match self.memo("document").await? {
            Some(d) => d["content"].as_str().unwrap_or_default().to_owned(),
            None => {
                let clarification = self.clarify(&todos).await?;
                let content = self.write_document(&todos, &clarification).await?;
                let put = self
                    .store(json!({"op": "doc.put", "session": s, "name": "project", "content": content}))
                    .await?;
                self.remember(
                    "document",
                    json!({"content": content, "version": put["version"]}),
                )
                .await?;
                self.announce(
                    2,
                    "clarify",
                    format!(
                        "project document written ({})",
                        match clarification.by_person {
                            true => "with the person's answer",
                            false => "no answer in time: the default was taken",
                        }
                    ),
                )
                .await?;
                content
            }
        };

        let approval = match self
            .memo("approval")
            .await?
            .as_ref()
            .and_then(Decision::from_memo)
        {
            Some(d) => d,
            None => {
                let results = self.dispatch_and_monitor(&todos, &document).await?;
                let approval = self.approve(&results).await?;
                let status = if approval.answer == "approve" {
                    "accepted"
                } else {
                    "rejected"
                };
                for t in &results {
                    self.store(json!({"op": "todo.update", "id": t["id"], "status": status}))
                        .await?;
                }
                self.remember("approval", approval.memo()).await?;
                self.announce(
                    4,
                    "monitor",
                    format!(
                        "{} results; {} ({})",
                        results.len(),
                        approval.answer,
                        approval.who()
                    ),
                )
                .await?;
                approval
            }
        };

        let report = match self.memo("report").await? {
            Some(r) => r["content"].as_str().unwrap_or_default().to_owned(),
            None => {
                let report = self.write_report(&document, &approval).await?;
                self.store(
                    json!({"op": "doc.put", "session": s, "name": "report", "content": report}),
                )
                .await?;
                self.remember("report", json!({"content": report})).await?;
                report
            }
        };
        self.store(json!({"op": "session.close", "session": s, "status": "done"}))
            .await?;
        self.announce(5, "report", "acceptance report written".into())
            .await?;
        let mut out = self
            .idea
            .reply(Kind::Result, self.me(), Role::Assistant, report)
            .with_payload(&json!({"approval": approval.memo()}));
        out.round = 5;
        self.ctx.send_one("report", out);
        Ok(())
    }

    /// Phase 1: the idea recorded, the todos planned by the model and stored. Idempotent: the
    /// model's plan is kept before any todo is added, and a todo already stored is not added
    /// again.
    async fn plan(&self) -> Result<Vec<Value>, Failure> {
        let s = self.session_id();
        let draft = match self.memo("plan_draft").await? {
            Some(d) => d,
            None => {
                self.store(json!({
                    "op": "message.append", "session": s, "sender": self.idea.sender,
                    "role": "user", "kind": "task", "content": self.idea.content,
                }))
                .await?;
                let draft = self.ask_model_for_todos().await?;
                self.remember("plan_draft", draft.clone()).await?;
                draft
            }
        };
        let stored = self.todos().await?;
        for t in draft.as_array().into_iter().flatten() {
            if stored.iter().any(|s| s["title"] == t["title"]) {
                continue;
            }
            self.store(json!({
                "op": "todo.add", "session": s, "title": t["title"],
                "detail": t["detail"], "capability": t["capability"],
            }))
            .await?;
        }
        self.todos().await
    }

    async fn ask_model_for_todos(&self) -> Result<Value, Failure> {
        let caps = self.cfg.capabilities();
        let tool = ToolSpec {
            name: "record_todos".into(),
            description: "Record the todos that carry out the idea.".into(),
            parameters: json!({
                "type": "object",
                "properties": {"todos": {
                    "type": "array", "minItems": 1, "maxItems": 8,
                    "items": {
                        "type": "object",
                        "properties": {
                            "title": {"type": "string"},
                            "detail": {"type": "string"},
                            "capability": {"type": "string", "enum": caps},
                        },
                        "required": ["title", "capability"],
                    },
                }},
                "required": ["todos"],
            }),
        };
        let executors: String = self
            .cfg
            .executors
            .iter()
            .map(|e| format!("- {}: {}\n", e.name, e.capabilities.join(", ")))
            .collect();
        let request = ChatRequest {
            messages: vec![
                ChatMessage::new(
                    Role::System,
                    format!(
                        "{}\nThe team and what each can do:\n{executors}Split the idea into \
                         todos with record_todos, each with the capability it needs.",
                        self.cfg.prompt
                    ),
                ),
                ChatMessage::new(Role::User, format!("Idea: {}", self.idea.content)),
            ],
            tools: vec![tool],
            options: ChatOptions {
                tool_choice: Some("required".into()),
                temperature: Some(0.0),
                ..Default::default()
            },
        };
        let response = self.chat(request).await?;
        let call = response
            .message
            .tool_calls
            .iter()
            .find(|c| c.name == "record_todos")
            .ok_or_else(|| Failure::new("the model did not call record_todos"))?;
        let args: Value = serde_json::from_str(&call.arguments)
            .map_err(|e| Failure::new(format!("record_todos arguments are not JSON: {e}")))?;
        let todos = args["todos"]
            .as_array()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Failure::new("record_todos gave no todos"))?;
        let mut out = Vec::new();
        for t in todos {
            let title = t["title"].as_str().map(str::trim).unwrap_or_default();
            let capability = t["capability"].as_str().unwrap_or_default();
            if title.is_empty() {
                return Err(Failure::new("record_todos gave a todo without a title"));
            }
            // A small model repeats itself: the same todo twice is one todo.
            if out.iter().any(|t: &Value| {
                t["title"]
                    .as_str()
                    .is_some_and(|o| o.eq_ignore_ascii_case(title))
            }) {
                continue;
            }
            if self.cfg.executor_for(capability).is_none() {
                return Err(Failure::new(format!(
                    "the plan's todo `{title}` needs `{capability}`, which no executor has \
                     (capabilities: {})",
                    caps.join(", ")
                )));
            }
            out.push(json!({
                "title": title,
                "detail": t["detail"].as_str().unwrap_or_default(),
                "capability": capability,
            }));
        }
        Ok(Value::Array(out))
    }

    async fn todos(&self) -> Result<Vec<Value>, Failure> {
        let list = self
            .store(json!({"op": "todo.list", "session": self.session_id()}))
            .await?;
        Ok(list["todos"].as_array().cloned().unwrap_or_default())
    }

    /// Phase 2, first half: the person says what to add or change.
    async fn clarify(&self, todos: &[Value]) -> Result<Decision, Failure> {
        if let Some(d) = self
            .memo("clarify")
            .await?
            .as_ref()
            .and_then(Decision::from_memo)
        {
            return Ok(d);
        }
        let list = lines(todos, |t| format!("- {}", field(t, "title")));
        let question = format!(
            "Before I write the project document for “{}”: anything to add or change?\n\
             The plan:\n{list}",
            self.idea.content
        );
        let d = self
            .ask_person(question, &[], &self.cfg.clarify_default)
            .await?;
        self.remember("clarify", d.memo()).await?;
        Ok(d)
    }

    async fn write_document(
        &self,
        todos: &[Value],
        clarification: &Decision,
    ) -> Result<String, Failure> {
        let list = lines(todos, |t| {
            format!(
                "- {} ({}): {}",
                field(t, "title"),
                field(t, "capability"),
                field(t, "detail")
            )
        });
        self.write(format!(
            "Write the project document: goal, scope, the todos, and what counts as done.\n\
             Idea: {}\nTodos:\n{list}The person's requirements: {}",
            self.idea.content, clarification.answer
        ))
        .await
    }

    /// Phases 3 and 4 (first half): every todo that has no result yet goes to its executor
    /// (at most once), and every result is recorded as it comes. Returns the todos as stored.
    async fn dispatch_and_monitor(
        &self,
        todos: &[Value],
        document: &str,
    ) -> Result<Vec<Value>, Failure> {
        let mut waits = Vec::new();
        for todo in todos {
            let status = todo["status"].as_str().unwrap_or_default();
            if ["done", "failed", "accepted", "rejected"].contains(&status) {
                continue;
            }
            let id = todo["id"].as_str().unwrap_or_default().to_owned();
            let capability = todo["capability"].as_str().unwrap_or_default();
            let executor = self.cfg.executor_for(capability).ok_or_else(|| {
                Failure::new(format!(
                    "todo {id} needs `{capability}`, which no executor has"
                ))
            })?;
            // Write-ahead: the task's id is kept before the task goes out.
            let key = format!("task/{id}");
            let (task_id, fresh) = match self.memo(&key).await? {
                Some(m) => (m["task"].as_str().unwrap_or_default().to_owned(), false),
                None => {
                    let task_id = new_id();
                    self.remember(&key, json!({"task": task_id, "executor": executor.name}))
                        .await?;
                    (task_id, true)
                }
            };
            if status != "dispatched" {
                self.store(json!({"op": "todo.update", "id": id, "status": "dispatched", "assignee": executor.name}))
                    .await?;
            }
            let waiter = self.calls.expect(&task_id);
            let already_sent = !fresh
                && self
                    .store(
                        json!({"op": "message.seen", "session": self.session_id(), "id": task_id}),
                    )
                    .await?["seen"]
                    .as_bool()
                    .unwrap_or(false);
            let early = if already_sent {
                // It went out before a restart: its answer may have come while we were down.
                let log = self
                    .store(json!({"op": "message.list", "session": self.session_id()}))
                    .await?;
                log["messages"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|m| m["reply_to"] == task_id.as_str() && !m["tap"].is_null())
                    .cloned()
                    .unwrap_or(Value::Null)
            } else {
                let mut task = self.idea.reply(
                    Kind::Task,
                    self.me(),
                    Role::User,
                    format!(
                        "Todo: {}\n{}\n\nProject document:\n{document}",
                        todo["title"].as_str().unwrap_or_default(),
                        todo["detail"].as_str().unwrap_or_default()
                    ),
                );
                task.id = task_id.clone();
                task = task.with_payload(&json!({"todo": id}));
                self.ctx.send_one(&executor.name, task);
                Value::Null
            };
            waits.push((id, executor.name.clone(), waiter, early));
        }
        // Announced once every task is out, by whichever run of the secretary got there.
        if !waits.is_empty() && self.memo("dispatched").await?.is_none() {
            self.remember("dispatched", json!({"tasks": waits.len()}))
                .await?;
            self.announce(
                3,
                "dispatch",
                format!("{} tasks sent to the executors", waits.len()),
            )
            .await?;
        }
        let outcomes = join_all(waits.into_iter().map(
            |(id, executor, waiter, early)| async move {
                let (status, result) = if early.is_object() {
                    let failed = early["kind"] == "error";
                    let content = early["content"].as_str().unwrap_or_default().to_owned();
                    (if failed { "failed" } else { "done" }, content)
                } else {
                    match waiter.wait(self.cfg.task_timeout).await {
                        Ok(r) if r.kind == Kind::Error => {
                            ("failed", format!("error: {}", r.content))
                        }
                        Ok(r) => ("done", r.content),
                        Err(e) => ("failed", format!("{executor}: {e}")),
                    }
                };
                self.store(
                    json!({"op": "todo.update", "id": id, "status": status, "result": result}),
                )
                .await
            },
        ))
        .await;
        for o in outcomes {
            o?;
        }
        self.todos().await
    }

    /// Phase 4, second half: the person approves or rejects the results.
    async fn approve(&self, todos: &[Value]) -> Result<Decision, Failure> {
        let list = lines(todos, |t| {
            let short: String = field(t, "result").chars().take(300).collect();
            format!(
                "- {} [{} by {}]: {short}",
                field(t, "title"),
                field(t, "status"),
                field(t, "assignee"),
            )
        });
        let question = format!(
            "Do you approve the results for “{}”?\n{list}",
            self.idea.content
        );
        self.ask_person(question, &["approve", "reject"], &self.cfg.approval_default)
            .await
    }

    async fn write_report(&self, document: &str, approval: &Decision) -> Result<String, Failure> {
        let todos = self.todos().await?;
        let list = lines(&todos, |t| {
            format!(
                "- {} [{}, by {}]: {}",
                field(t, "title"),
                field(t, "status"),
                field(t, "assignee"),
                field(t, "result")
            )
        });
        let verdict = if approval.answer == "approve" {
            "approved"
        } else {
            "rejected"
        };
        let mut text = self
            .write(format!(
                "Write the acceptance report: what was asked, what was done, what is left.\n\
                 Idea: {}\nProject document:\n{document}\nTodos and results:\n{list}\
                 The results were {verdict}.",
                self.idea.content
            ))
            .await?;
        // Written by the node, not the model: who decided is a fact, not prose.
        let clarify = self
            .memo("clarify")
            .await?
            .as_ref()
            .and_then(Decision::from_memo);
        let mut decisions = String::from("\n\n## Decisions\n");
        if let Some(c) = clarify {
            decisions += &format!("- Requirements: “{}” ({})\n", c.answer, c.who());
        }
        decisions += &format!(
            "- Results {} ({})\n",
            if approval.answer == "approve" {
                "approved"
            } else {
                "rejected"
            },
            approval.who()
        );
        text.push_str(&decisions);
        Ok(text)
    }

    /// A text the model writes on the secretary's instructions.
    async fn write(&self, instruction: String) -> Result<String, Failure> {
        let request = ChatRequest {
            messages: vec![
                ChatMessage::new(Role::System, self.cfg.prompt.clone()),
                ChatMessage::new(Role::User, instruction),
            ],
            ..Default::default()
        };
        Ok(self.chat(request).await?.message.content)
    }

    async fn ask_person(
        &self,
        question: String,
        choices: &[&str],
        default: &str,
    ) -> Result<Decision, Failure> {
        let mut payload = json!({
            "default": default,
            "timeout_ms": self.cfg.human_timeout.as_millis() as u64,
        });
        if !choices.is_empty() {
            payload["choices"] = json!(choices);
        }
        let ask = self
            .idea
            .reply(Kind::Task, self.me(), Role::Assistant, question)
            .with_payload(&payload);
        // The person's own timeout ends the wait; the margin is for a lost answer.
        let answer = self
            .calls
            .call(&self.ctx, "ask", ask)
            .wait(self.cfg.human_timeout + Duration::from_secs(30))
            .await
            .map_err(|e| Failure::new(format!("asking the person: {e}")))?;
        if answer.kind == Kind::Error {
            return Err(Failure::new(format!(
                "asking the person failed: {}",
                answer.content
            )));
        }
        let p = answer.payload_json().unwrap_or(Value::Null);
        Ok(Decision {
            answer: p["answer"]
                .as_str()
                .map_or_else(|| answer.content.clone(), str::to_owned),
            by_person: p["source"] != "default",
        })
    }

    async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, Failure> {
        let env = request.to_envelope(&self.idea, self.me());
        let answer = self
            .calls
            .call(&self.ctx, "llm", env)
            .wait(self.cfg.llm_timeout)
            .await
            .map_err(|e| Failure::new(format!("the LLM: {e}")))?;
        if answer.kind == Kind::Error {
            return Err(Failure::new(format!("the LLM failed: {}", answer.content)));
        }
        ChatResponse::from_envelope(&answer)
            .map_err(|e| Failure::new(format!("unreadable LLM answer: {e}")))
    }

    /// One store operation. A store that answers with an error (its own retries spent) or not
    /// at all is asked again until MOFA_STORE_WAIT_MS has passed: the session waits for the
    /// database rather than lose a step.
    async fn store(&self, op: Value) -> Result<Value, Failure> {
        let started = Instant::now();
        let name = op["op"].as_str().unwrap_or_default().to_owned();
        loop {
            let request = self
                .idea
                .reply(Kind::Task, self.me(), Role::System, name.clone())
                .with_payload(&op);
            let last = match self
                .calls
                .call(&self.ctx, "store", request)
                .wait(self.cfg.store_wait)
                .await
            {
                Ok(answer) if answer.kind != Kind::Error => {
                    return answer
                        .payload_json()
                        .map_err(|e| Failure::new(format!("store answer to {name}: {e}")));
                }
                Ok(error) => error.content,
                Err(e) => e.to_string(),
            };
            if started.elapsed() >= self.cfg.store_wait {
                return Err(Failure::new(format!(
                    "the store failed `{name}` for {} ms: {last}",
                    self.cfg.store_wait.as_millis()
                )));
            }
            tracing::warn!("store `{name}` failed, asking again: {last}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn memo(&self, step: &str) -> Result<Option<Value>, Failure> {
        let v = self
            .store(json!({"op": "memory.get", "agent": self.me(), "key": format!("{}/{step}", self.session_id())}))
            .await?;
        Ok(Some(v["value"].clone()).filter(|v| !v.is_null()))
    }

    async fn remember(&self, step: &str, value: Value) -> Result<(), Failure> {
        self.store(json!({"op": "memory.put", "agent": self.me(), "key": format!("{}/{step}", self.session_id()), "value": value}))
            .await
            .map(drop)
    }

    /// A completed phase: sent on `progress` and kept as a message of the session.
    async fn announce(&self, phase: u32, name: &str, what: String) -> Result<(), Failure> {
        let content = format!("phase {phase}/5 {name}: {what}");
        tracing::info!("session {}: {content}", self.session_id());
        self.store(json!({
            "op": "message.append", "session": self.session_id(), "sender": self.me(),
            "role": "assistant", "kind": "progress", "content": content,
        }))
        .await?;
        let mut msg = self
            .idea
            .reply(Kind::Message, self.me(), Role::Assistant, content);
        msg.round = phase;
        self.ctx.send_one("progress", msg);
        Ok(())
    }
}

/// A todo's text field ("" when absent).
fn field<'a>(todo: &'a Value, key: &str) -> &'a str {
    todo[key].as_str().unwrap_or_default()
}

/// The todos as prompt lines, one each.
fn lines(todos: &[Value], line: impl Fn(&Value) -> String) -> String {
    todos.iter().map(|t| line(t) + "\n").collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executors_parse_with_their_capabilities() {
        let e = parse_executors("coder=code, tests; writer=docs").unwrap();
        assert_eq!(e[0].name, "coder");
        assert_eq!(e[0].capabilities, ["code", "tests"]);
        assert_eq!(e[1].capabilities, ["docs"]);
        for bad in ["", "coder", "coder=", "store=x", "a=x;a=y", "c d=x"] {
            let err = parse_executors(bad).unwrap_err().to_string();
            assert!(err.contains("MOFA_EXECUTORS"), "{bad}: {err}");
        }
    }
}
