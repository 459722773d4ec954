//! mofa-human: human in the loop. It asks a person each question that comes on `ask` and
//! sends the answer on `answer`.
//!
//! Input `ask`: an envelope whose content is the question. Its payload (JSON, all optional):
//! `{"choices": ["approve", "reject"], "default": "reject", "timeout_ms": 30000,
//! "context": "..."}`. `context` is shown with the question (a string as it is, other JSON as
//! JSON text). With `choices`, the answer must be one of them (matched trimmed and without case,
//! and given back in the offered spelling); without, any non-empty text is an answer.
//!
//! Output `answer`: a `result` envelope replying to the question (same session, role `user`,
//! sender the node), content the answer, payload `{"answer", "source": "person" | "default",
//! "question_id"}`. Each question is answered exactly once. When no answer comes within the
//! question's timeout its default is taken (`"source": "default"`); with no default, the
//! question gets an `error` envelope ("no answer in time and no default"). A question the node
//! cannot ask (payload not the JSON above, an empty question) and the questions still open at
//! stop ("stopped before an answer") are answered by an `error` envelope too; these go on
//! `answer` (to the asker) and on `error`. A question whose id was asked before is refused on
//! `error` only: `answer` carries one reply per question.
//!
//! Front ends (`MOFA_HUMAN_MODE`):
//! - `http`: a server on 127.0.0.1 only ([`http`]): a page for a person at `/`, and a JSON
//!   API for scripts. Requests whose `Host` (or `Origin`) is not a loopback name are refused
//!   (DNS rebinding), answers must be sent as `application/json` (no cross-site form posts).
//! - `terminal`: each question printed on the terminal, the answer read from a line
//!   ([`terminal`]); an empty line takes the default. It uses stdin and stderr, or `/dev/tty`
//!   when stdin is not a terminal (dora starts nodes with stdin on /dev/null).
//! - `auto` (default): `terminal` when stdin is a terminal, else `http`.
//!
//! Env: MOFA_HUMAN_MODE (`auto`), MOFA_HUMAN_PORT (8790; 0 = any free port; the address is
//! printed on stderr as `mofa-human: listening on http://127.0.0.1:PORT`),
//! MOFA_HUMAN_TIMEOUT_MS (per question unless it sets `timeout_ms`; 300000),
//! MOFA_HUMAN_DEFAULT (the answer taken at the timeout unless the question sets `default`;
//! not used for a question whose choices do not include it; none by default).
//!
//! The node ends once `ask` is closed and every question is answered: when the asker ends
//! first, the open questions still wait for their answers or timeouts. On a stop before that,
//! the open questions are answered with an error at once.

pub mod http;
pub mod terminal;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, BufRead, IsTerminal, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::Duration;

use async_trait::async_trait;
use mofa_kernel::config::{self, ConfigError};
use mofa_kernel::envelope::now_ms;
use mofa_kernel::node::{Ctx, Deadline, Failure, Handler};
use mofa_kernel::{Envelope, Kind, Role};
use serde::Serialize;
use serde_json::{Value, json};

/// The longest timeout a question may ask for (30 days).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

/// How many answered question ids are remembered (to refuse a second answer with 409).
const REMEMBERED: usize = 10_000;

/// Where the person is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Http,
    Terminal,
    /// `Terminal` when stdin is a terminal, else `Http`.
    Auto,
}

/// What applies to a question that does not say otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    pub timeout: Duration,
    pub default: Option<String>,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            timeout: Duration::from_secs(300),
            default: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HumanConfig {
    pub mode: Mode,
    pub port: u16,
    pub defaults: Defaults,
}

impl HumanConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let mode = match config::optional("MOFA_HUMAN_MODE")
            .map(|m| m.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("auto") => Mode::Auto,
            Some("http") => Mode::Http,
            Some("terminal") => Mode::Terminal,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "MOFA_HUMAN_MODE",
                    other,
                    "expected http, terminal or auto",
                ));
            }
        };
        let port = config::parse_or::<u16>("MOFA_HUMAN_PORT", 8790)?;
        let timeout = config::millis_or("MOFA_HUMAN_TIMEOUT_MS", Defaults::default().timeout)?;
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            return Err(ConfigError::invalid(
                "MOFA_HUMAN_TIMEOUT_MS",
                timeout.as_millis().to_string(),
                format!("must be 1..={} ms", MAX_TIMEOUT.as_millis()),
            ));
        }
        let default = config::optional("MOFA_HUMAN_DEFAULT").map(|d| d.trim().to_owned());
        Ok(HumanConfig {
            mode,
            port,
            defaults: Defaults { timeout, default },
        })
    }
}

/// A question waiting for its answer, as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Question {
    /// The id of the `ask` envelope; the answer replies to it.
    pub id: String,
    pub session: String,
    pub question: String,
    /// The answers allowed; empty: any text.
    pub choices: Vec<String>,
    /// Taken when no answer comes by `deadline_ms`.
    pub default: Option<String>,
    /// When the question times out, Unix milliseconds.
    pub deadline_ms: i64,
    pub context: Option<String>,
}

/// What a question asks for, read from its envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    pub choices: Vec<String>,
    pub default: Option<String>,
    pub timeout: Duration,
    pub context: Option<String>,
}

/// Reads a question's payload, with `defaults` for what it leaves out.
pub fn parse_ask(msg: &Envelope, defaults: &Defaults) -> Result<Ask, Failure> {
    if msg.content.trim().is_empty() {
        return Err(Failure::new("the question is empty"));
    }
    let payload = msg
        .payload_json()
        .map_err(|e| Failure::new(format!("the payload is not JSON: {e}")))?;
    let fields = match &payload {
        Value::Null => serde_json::Map::new(),
        Value::Object(m) => m.clone(),
        other => {
            return Err(bad_payload(format!(
                "the payload must be a JSON object, not {}",
                json_kind(other)
            )));
        }
    };
    let choices = match fields.get("choices") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let mut choices: Vec<String> = Vec::with_capacity(items.len());
            for item in items {
                let Some(c) = item.as_str().map(str::trim) else {
                    return Err(bad_payload(format!(
                        "`choices` must be a list of strings; it holds {}",
                        json_kind(item)
                    )));
                };
                if c.is_empty() {
                    return Err(bad_payload("`choices` holds an empty string".into()));
                }
                if choices.iter().any(|o| same_answer(o, c)) {
                    return Err(bad_payload(format!("`choices` holds `{c}` twice")));
                }
                choices.push(c.to_owned());
            }
            choices
        }
        Some(other) => {
            return Err(bad_payload(format!(
                "`choices` must be a list of strings, not {}",
                json_kind(other)
            )));
        }
    };
    let default =
        match fields.get("default") {
            None | Some(Value::Null) => defaults
                .default
                .as_deref()
                // A node-wide default that is not among this question's choices does not apply.
                .and_then(|d| match_answer(&choices, d).ok()),
            Some(Value::String(d)) => Some(match_answer(&choices, d).map_err(|why| {
                bad_payload(format!("`default` does not fit the question: {why}"))
            })?),
            Some(other) => {
                return Err(bad_payload(format!(
                    "`default` must be a string, not {}",
                    json_kind(other)
                )));
            }
        };
    let timeout = match fields.get("timeout_ms") {
        None | Some(Value::Null) => defaults.timeout,
        Some(v) => match v.as_u64() {
            Some(ms) if ms > 0 && Duration::from_millis(ms) <= MAX_TIMEOUT => {
                Duration::from_millis(ms)
            }
            _ => {
                return Err(bad_payload(format!(
                    "`timeout_ms` must be a whole number of milliseconds, 1..={}; got {v}",
                    MAX_TIMEOUT.as_millis()
                )));
            }
        },
    };
    let context = match fields.get("context") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(serde_json::to_string_pretty(other).unwrap_or_default()),
    };
    Ok(Ask {
        choices,
        default,
        timeout,
        context,
    })
}

fn bad_payload(message: String) -> Failure {
    Failure::new(format!("bad question payload: {message}")).with_details(json!({
        "expected": {
            "choices": "a list of strings (optional)",
            "default": "one of the choices, or any text without choices (optional)",
            "timeout_ms": "milliseconds (optional)",
            "context": "text shown with the question (optional)",
        }
    }))
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn same_answer(a: &str, b: &str) -> bool {
    a.trim().to_lowercase() == b.trim().to_lowercase()
}

/// `answer` as the question takes it: one of `choices` (trimmed, without case, given back as
/// offered), or with no choices any non-empty text (trimmed). `Err` says why not.
pub fn match_answer(choices: &[String], answer: &str) -> Result<String, String> {
    let answer = answer.trim();
    if choices.is_empty() {
        if answer.is_empty() {
            return Err("the answer is empty".into());
        }
        return Ok(answer.to_owned());
    }
    choices
        .iter()
        .find(|c| same_answer(c, answer))
        .cloned()
        .ok_or_else(|| {
            format!(
                "`{answer}` is not one of the choices: {}",
                choices.join(", ")
            )
        })
}

/// What became of an answer a person gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Taken, as this text (the offered spelling of the choice).
    Answered(String),
    /// No such question.
    Unknown,
    /// The question has its answer already (a person's, its default's, or an error).
    AlreadyAnswered,
    /// Not an answer to this question; it stays open.
    Refused {
        reason: String,
        choices: Vec<String>,
    },
}

struct Pending {
    question: Question,
    msg: Envelope,
    seq: u64,
    _deadline: Deadline,
}

#[derive(Default)]
struct State {
    pending: HashMap<String, Pending>,
    seq: u64,
    /// Ids of questions answered (bounded: the oldest are forgotten).
    done: HashSet<String>,
    done_order: VecDeque<String>,
    ask_closed: bool,
    stopped: bool,
}

impl State {
    fn remember(&mut self, id: &str) {
        if self.done.insert(id.to_owned()) {
            self.done_order.push_back(id.to_owned());
            if self.done_order.len() > REMEMBERED
                && let Some(old) = self.done_order.pop_front()
            {
                self.done.remove(&old);
            }
        }
    }

    /// Takes the question out of the pending ones: from here it is answered exactly once.
    fn take(&mut self, id: &str) -> Option<Pending> {
        let p = self.pending.remove(id)?;
        self.remember(id);
        Some(p)
    }
}

/// The questions and what answers them, shared by the handler, the deadlines and the front end.
pub(crate) struct Core {
    defaults: Defaults,
    state: Mutex<State>,
    ctx: OnceLock<Ctx>,
    /// Question ids for the terminal front end, in order.
    prompts: Mutex<Option<mpsc::Sender<String>>>,
    /// Signalled each time a question is answered.
    resolved: tokio::sync::Notify,
}

impl Core {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("mofa-human state")
    }

    /// The pending questions, oldest first.
    pub(crate) fn pending(&self) -> Vec<Question> {
        let st = self.lock();
        let mut all: Vec<&Pending> = st.pending.values().collect();
        all.sort_by_key(|p| p.seq);
        all.into_iter().map(|p| p.question.clone()).collect()
    }

    pub(crate) fn question(&self, id: &str) -> Option<Question> {
        self.lock().pending.get(id).map(|p| p.question.clone())
    }

    pub(crate) fn is_pending(&self, id: &str) -> bool {
        self.lock().pending.contains_key(id)
    }

    /// A person's answer to question `id`.
    pub(crate) fn answer(&self, id: &str, text: &str) -> Outcome {
        let Some(ctx) = self.ctx.get() else {
            return Outcome::Unknown;
        };
        let mut st = self.lock();
        let Some(p) = st.pending.get(id) else {
            return if st.done.contains(id) {
                Outcome::AlreadyAnswered
            } else {
                Outcome::Unknown
            };
        };
        let answer = match match_answer(&p.question.choices, text) {
            Ok(a) => a,
            Err(reason) => {
                return Outcome::Refused {
                    reason,
                    choices: p.question.choices.clone(),
                };
            }
        };
        let p = st.take(id).expect("checked above");
        tracing::info!(question = %id, "answered by the person: {answer}");
        ctx.send_one("answer", answer_envelope(ctx, &p.msg, &answer, "person"));
        self.settled(ctx, &st);
        Outcome::Answered(answer)
    }

    /// Question `id` has reached its timeout.
    fn expire(&self, ctx: &Ctx, id: &str) {
        let mut st = self.lock();
        let Some(p) = st.take(id) else {
            return;
        };
        match &p.question.default {
            Some(default) => {
                tracing::info!(question = %id, "no answer in time: took the default `{default}`");
                ctx.send_one("answer", answer_envelope(ctx, &p.msg, default, "default"));
            }
            None => {
                let f = Failure::new("no answer in time and no default").with_details(
                    json!({"question_id": id, "deadline_ms": p.question.deadline_ms}),
                );
                ctx.reply_error("answer", &p.msg, f);
            }
        }
        self.settled(ctx, &st);
    }

    /// After a question is settled (or `ask` closed): wakes whoever waits for the open
    /// questions, and ends the node once `ask` is closed and none is left.
    fn settled(&self, ctx: &Ctx, st: &State) {
        self.resolved.notify_waiters();
        if st.ask_closed && st.pending.is_empty() && !st.stopped {
            ctx.exit();
        }
    }
}

fn answer_envelope(ctx: &Ctx, question: &Envelope, answer: &str, source: &str) -> Envelope {
    question
        .reply(Kind::Result, ctx.node_id(), Role::User, answer)
        .with_payload(&json!({
            "answer": answer,
            "source": source,
            "question_id": question.id,
        }))
}

/// Where the person is reached, until the node starts it.
enum FrontEnd {
    Http(std::net::TcpListener),
    Terminal(Box<dyn BufRead + Send>, Box<dyn Write + Send>),
}

/// The node's handler.
pub struct HumanNode {
    core: Arc<Core>,
    front: Mutex<Option<FrontEnd>>,
    http_addr: Option<SocketAddr>,
    shutdown: Arc<tokio::sync::Notify>,
}

impl HumanNode {
    fn new(defaults: Defaults, front: FrontEnd, http_addr: Option<SocketAddr>) -> Self {
        HumanNode {
            core: Arc::new(Core {
                defaults,
                state: Mutex::default(),
                ctx: OnceLock::new(),
                prompts: Mutex::new(None),
                resolved: tokio::sync::Notify::new(),
            }),
            front: Mutex::new(Some(front)),
            http_addr,
            shutdown: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Asks over HTTP on 127.0.0.1:`port` (0: any free port; see [`http_addr`](Self::http_addr)).
    /// The socket is bound here, so the address is known before the node runs.
    pub fn http(defaults: Defaults, port: u16) -> io::Result<Self> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
        let addr = listener.local_addr()?;
        Ok(HumanNode::new(
            defaults,
            FrontEnd::Http(listener),
            Some(addr),
        ))
    }

    /// Asks on a terminal: questions written to `output`, answers read from `input`, a line each.
    pub fn terminal(
        defaults: Defaults,
        input: impl BufRead + Send + 'static,
        output: impl Write + Send + 'static,
    ) -> Self {
        HumanNode::new(
            defaults,
            FrontEnd::Terminal(Box::new(input), Box::new(output)),
            None,
        )
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        let cfg = HumanConfig::from_env()?;
        let terminal = match cfg.mode {
            Mode::Terminal => true,
            Mode::Http => false,
            Mode::Auto => io::stdin().is_terminal(),
        };
        if terminal {
            let (input, output) = terminal::open();
            return Ok(HumanNode::terminal(cfg.defaults, input, output));
        }
        let node = HumanNode::http(cfg.defaults, cfg.port).map_err(|e| {
            ConfigError::invalid(
                "MOFA_HUMAN_PORT",
                cfg.port.to_string(),
                format!("cannot listen on 127.0.0.1:{}: {e}", cfg.port),
            )
        })?;
        if let Some(addr) = node.http_addr {
            eprintln!("mofa-human: listening on http://{addr}");
        }
        Ok(node)
    }

    /// The address the HTTP front end listens on (`None` in terminal mode).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Opens the question. A question that cannot be asked is answered by an error; one whose
    /// id was asked already is refused on `error` only, so `answer` has one reply per question.
    fn ask(&self, ctx: &Ctx, msg: Envelope) -> Result<(), Failure> {
        let ask = match parse_ask(&msg, &self.core.defaults) {
            Ok(ask) => ask,
            Err(f) => {
                ctx.reply_error("answer", &msg, f);
                return Ok(());
            }
        };
        let id = msg.id.clone();
        let mut st = self.core.lock();
        if st.pending.contains_key(&id) || st.done.contains(&id) {
            return Err(Failure::new(format!(
                "question {id} has been asked already: each question is answered once"
            )));
        }
        let question = Question {
            id: id.clone(),
            session: msg.session.clone(),
            question: msg.content.clone(),
            choices: ask.choices,
            default: ask.default,
            deadline_ms: now_ms().saturating_add(ask.timeout.as_millis() as i64),
            context: ask.context,
        };
        let (core, dctx, did) = (self.core.clone(), ctx.clone(), id.clone());
        let deadline = ctx.deadline(ask.timeout, move || core.expire(&dctx, &did));
        tracing::info!(question = %id, session = %msg.session, "asking: {}", msg.content);
        st.seq += 1;
        let seq = st.seq;
        st.pending.insert(
            id.clone(),
            Pending {
                question,
                msg,
                seq,
                _deadline: deadline,
            },
        );
        drop(st);
        if let Some(tx) = &*self.core.prompts.lock().expect("prompt queue") {
            let _ = tx.send(id);
        }
        Ok(())
    }
}

#[async_trait]
impl Handler for HumanNode {
    async fn on_start(&self, ctx: &Ctx) -> Result<(), Failure> {
        let _ = self.core.ctx.set(ctx.clone());
        let front = self.front.lock().expect("front end").take();
        match front {
            Some(FrontEnd::Http(listener)) => {
                listener.set_nonblocking(true)?;
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let app = http::router(self.core.clone());
                let shutdown = self.shutdown.clone();
                tokio::spawn(async move {
                    let serve = axum::serve(listener, app)
                        .with_graceful_shutdown(async move { shutdown.notified().await });
                    if let Err(e) = serve.await {
                        tracing::error!("the HTTP front end failed: {e}");
                    }
                });
            }
            Some(FrontEnd::Terminal(input, output)) => {
                let (tx, rx) = mpsc::channel();
                *self.core.prompts.lock().expect("prompt queue") = Some(tx);
                let core = self.core.clone();
                std::thread::Builder::new()
                    .name("mofa-human-terminal".into())
                    .spawn(move || terminal::serve(&core, rx, input, output))?;
            }
            None => {}
        }
        Ok(())
    }

    async fn on_message(&self, ctx: &Ctx, input: &str, msg: Envelope) -> Result<(), Failure> {
        if input != "ask" {
            return Err(Failure::new(format!(
                "unknown input `{input}`: questions come on `ask`"
            )));
        }
        if msg.kind == Kind::Error {
            return Err(Failure::new("an `error` envelope is not a question"));
        }
        self.ask(ctx, msg)
    }

    /// When `ask` closes, the node's inputs are all closed and dora ends its event stream next
    /// (`Stop(AllInputsClosed)`): the open questions are waited for here, each until its answer
    /// or its timeout, so a person can still answer after the asker has gone.
    async fn on_input_closed(&self, ctx: &Ctx, input: &str) {
        if input != "ask" {
            return;
        }
        self.core.lock().ask_closed = true;
        let mut told = false;
        loop {
            let resolved = self.core.resolved.notified();
            tokio::pin!(resolved);
            resolved.as_mut().enable();
            {
                let st = self.core.lock();
                if st.pending.is_empty() {
                    self.core.settled(ctx, &st);
                    return;
                }
                if !told {
                    tracing::info!(
                        "`ask` is closed: waiting for {} open question(s) to be answered or to time out",
                        st.pending.len()
                    );
                    told = true;
                }
            }
            resolved.await;
        }
    }

    /// Questions still open get an error: nobody will answer them now.
    async fn on_stop(&self, ctx: &Ctx) {
        let open: Vec<Pending> = {
            let mut st = self.core.lock();
            st.stopped = true;
            let ids: Vec<String> = st.pending.keys().cloned().collect();
            let mut open: Vec<Pending> = ids.iter().filter_map(|id| st.take(id)).collect();
            open.sort_by_key(|p| p.seq);
            open
        };
        for p in open {
            let f = Failure::new("stopped before an answer")
                .with_details(json!({"question_id": p.question.id}));
            ctx.reply_error("answer", &p.msg, f);
        }
        self.shutdown.notify_one();
        self.core.prompts.lock().expect("prompt queue").take();
    }
}
