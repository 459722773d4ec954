//! mofa-aggregate: joins the answers of agents working in parallel, by session.
//!
//! Inputs: `task` (the task fanned out to the members: it opens the session and starts its
//! clock), one input per member named as in MOFA_MEMBERS carrying its `result`s, optionally
//! `<member>_error` carrying its `error`s, and `llm` (answers to summary requests). Outputs:
//! `result` (one per session), `llm` (summary requests), `error`.
//!
//! A session is delivered as soon as every member has answered or failed, or when
//! MOFA_AGGREGATE_TIMEOUT_MS has passed since its task came: with at least MOFA_QUORUM good
//! answers it is a `result` (the members that did not answer in time are listed as missing),
//! otherwise an `error` saying who answered and who did not. Strategies (MOFA_STRATEGY):
//! `concat` (every answer, labelled), `vote` (the answer most members gave, compared without
//! case, spaces and end punctuation; ties go to the earliest), `summarize` (an LLM merges the
//! answers; MOFA_SUMMARY_PROMPT sets its instructions). At most MOFA_MAX_CONCURRENT summaries
//! are asked at once (0: no limit); waiting ones go highest priority first.
//!
//! A member whose input closes (its process ended) counts as missing for the open sessions.
//! The node ends once `task` is closed and every session is delivered.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mofa_kernel::config::{self, ConfigError};
use mofa_kernel::llm::{ChatMessage, ChatRequest, ChatResponse};
use mofa_kernel::node::{Ctx, Deadline, Failure, Handler};
use mofa_kernel::queue::PriorityQueue;
use mofa_kernel::{Envelope, Kind, Role};
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Concat,
    Vote,
    Summarize,
}

#[derive(Debug, Clone)]
pub struct AggregateConfig {
    pub members: Vec<String>,
    pub quorum: usize,
    pub timeout: Duration,
    pub strategy: Strategy,
    pub summary_prompt: String,
    /// Summaries asked at once (usize::MAX: no limit).
    pub max_concurrent: usize,
}

const SUMMARY_PROMPT: &str = "You merge the answers several agents gave to one task into a \
single answer: keep what they agree on, resolve or note disagreements, drop repetition. Answer \
with the merged text only.";

impl AggregateConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let members = config::names(
            "MOFA_MEMBERS",
            1,
            "the agents whose answers to join (comma-separated input ids)",
            &["task", "llm", "result"],
        )?;
        let quorum = config::parse_or("MOFA_QUORUM", members.len())?;
        if quorum == 0 || quorum > members.len() {
            return Err(ConfigError::invalid(
                "MOFA_QUORUM",
                quorum.to_string(),
                format!("must be 1..={} (the number of members)", members.len()),
            ));
        }
        let strategy = match config::optional("MOFA_STRATEGY").as_deref() {
            None | Some("concat") => Strategy::Concat,
            Some("vote") => Strategy::Vote,
            Some("summarize") => Strategy::Summarize,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "MOFA_STRATEGY",
                    other,
                    "expected concat, vote or summarize",
                ));
            }
        };
        Ok(AggregateConfig {
            members,
            quorum,
            timeout: config::millis_or("MOFA_AGGREGATE_TIMEOUT_MS", Duration::from_secs(120))?,
            strategy,
            summary_prompt: config::optional("MOFA_SUMMARY_PROMPT")
                .unwrap_or_else(|| SUMMARY_PROMPT.into()),
            max_concurrent: match config::parse_or("MOFA_MAX_CONCURRENT", 0usize)? {
                0 => usize::MAX,
                n => n,
            },
        })
    }
}

#[derive(Debug, Clone)]
enum Answer {
    Ok(String),
    Failed(String),
}

struct Open {
    task: Envelope,
    /// Member → its answer, in arrival order.
    answers: Vec<(String, Answer)>,
    /// Set once the session has been decided and only awaits its summary.
    summarizing: Option<Decided>,
    /// Cancelled when the session is delivered.
    _deadline: Deadline,
}

/// What a session ended with, before the strategy makes its text.
#[derive(Clone)]
struct Decided {
    good: Vec<(String, String)>,
    failed: Vec<(String, String)>,
    missing: Vec<String>,
}

#[derive(Default)]
struct State {
    open: HashMap<String, Open>,
    closed_members: Vec<String>,
    summaries_waiting: PriorityQueue<String>,
    summaries_running: usize,
    task_closed: bool,
}

pub struct Aggregate {
    cfg: Arc<AggregateConfig>,
    state: Arc<Mutex<State>>,
}

impl Aggregate {
    pub fn new(cfg: AggregateConfig) -> Self {
        Aggregate {
            cfg: Arc::new(cfg),
            state: Arc::default(),
        }
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Aggregate::new(AggregateConfig::from_env()?))
    }

    fn handle(&self) -> Aggregate {
        Aggregate {
            cfg: self.cfg.clone(),
            state: self.state.clone(),
        }
    }

    fn on_task(&self, ctx: &Ctx, task: Envelope) -> Result<(), Failure> {
        if task.kind != Kind::Task && task.kind != Kind::Message {
            return Err(Failure::new(format!(
                "a `{}` envelope is not a task",
                task.kind
            )));
        }
        let mut st = self.state.lock().expect("aggregate state");
        if st.open.contains_key(&task.session) {
            return Err(Failure::new(format!(
                "session {} is already being joined",
                task.session
            )));
        }
        let session = task.session.clone();
        let (me, wctx, watched) = (self.handle(), ctx.clone(), session.clone());
        let deadline = ctx.deadline(self.cfg.timeout, move || {
            let mut st = me.state.lock().expect("aggregate state");
            me.decide(&wctx, &mut st, &watched, true);
        });
        st.open.insert(
            session.clone(),
            Open {
                task,
                answers: Vec::new(),
                summarizing: None,
                _deadline: deadline,
            },
        );
        // Members that have already ended will not answer.
        self.decide(ctx, &mut st, &session, false);
        Ok(())
    }

    fn on_answer(&self, ctx: &Ctx, input: &str, msg: Envelope) -> Result<(), Failure> {
        let (member, is_error_input) = self.member_of(input)?;
        let answer = match msg.kind {
            Kind::Error => Answer::Failed(msg.content.clone()),
            Kind::Result | Kind::Message if !is_error_input => Answer::Ok(msg.content.clone()),
            other => {
                return Err(Failure::new(format!(
                    "a `{other}` envelope on `{input}` is not an answer"
                )));
            }
        };
        let mut st = self.state.lock().expect("aggregate state");
        let Some(open) = st.open.get_mut(&msg.session) else {
            // The session was delivered already (this member was late) or never opened.
            tracing::warn!(
                "answer from {member} for session {} that is not open (late, or its task never came): ignored",
                msg.session
            );
            return Ok(());
        };
        if open.summarizing.is_some() || open.answers.iter().any(|(m, _)| *m == member) {
            tracing::warn!(
                "second or late answer from {member} in session {}: ignored",
                msg.session
            );
            return Ok(());
        }
        open.answers.push((member, answer));
        self.decide(ctx, &mut st, &msg.session, false);
        Ok(())
    }

    /// The member an input belongs to, and whether it is its error input.
    fn member_of(&self, input: &str) -> Result<(String, bool), Failure> {
        let (name, is_error) = match input.strip_suffix("_error") {
            Some(m) if self.cfg.members.iter().any(|x| x == m) => (m, true),
            _ => (input, false),
        };
        if !self.cfg.members.iter().any(|m| m == name) {
            return Err(Failure::new(format!(
                "input `{input}` belongs to no member (MOFA_MEMBERS: {})",
                self.cfg.members.join(",")
            )));
        }
        Ok((name.to_owned(), is_error))
    }

    /// Delivers `session` if every member is accounted for, or if `timed_out`.
    fn decide(&self, ctx: &Ctx, st: &mut State, session: &str, timed_out: bool) {
        let closed = st.closed_members.clone();
        let Some(open) = st.open.get(session) else {
            return;
        };
        if open.summarizing.is_some() {
            return;
        }
        let answered = |m: &String| open.answers.iter().any(|(a, _)| a == m);
        let everyone = self
            .cfg
            .members
            .iter()
            .all(|m| answered(m) || closed.contains(m));
        if !everyone && !timed_out {
            return;
        }
        let mut d = Decided {
            good: Vec::new(),
            failed: Vec::new(),
            missing: Vec::new(),
        };
        for (m, a) in &open.answers {
            match a {
                Answer::Ok(text) => d.good.push((m.clone(), text.clone())),
                Answer::Failed(why) => d.failed.push((m.clone(), why.clone())),
            }
        }
        d.missing = self
            .cfg
            .members
            .iter()
            .filter(|m| !answered(m))
            .cloned()
            .collect();
        let task = open.task.clone();
        if d.good.len() < self.cfg.quorum {
            st.open.remove(session);
            let f = Failure::new(format!(
                "quorum not reached: {} of {} needed answers came ({}); missing: [{}], failed: [{}]",
                d.good.len(),
                self.cfg.quorum,
                if timed_out {
                    format!("timed out after {} ms", self.cfg.timeout.as_millis())
                } else {
                    "no one else can answer".into()
                },
                d.missing.join(", "),
                d.failed.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>().join(", "),
            ))
            .with_details(self.record(&d, None));
            ctx.reply_error("result", &task, f);
            self.maybe_exit(ctx, st);
            return;
        }
        match self.cfg.strategy {
            Strategy::Concat => {
                let text = d
                    .good
                    .iter()
                    .map(|(m, t)| format!("[{m}]\n{t}"))
                    .collect::<Vec<_>>()
                    .join("\n\n");
                self.deliver(ctx, st, session, text, &d, None);
            }
            Strategy::Vote => {
                let (text, tally) = majority(&d.good);
                self.deliver(ctx, st, session, text, &d, Some(tally));
            }
            Strategy::Summarize => {
                if let Some(open) = st.open.get_mut(session) {
                    open.summarizing = Some(d);
                }
                st.summaries_waiting.push(task.priority, session.to_owned());
                self.pump_summaries(ctx, st);
            }
        }
    }

    /// Asks the LLM for waiting summaries while slots are free, highest priority first.
    fn pump_summaries(&self, ctx: &Ctx, st: &mut State) {
        while st.summaries_running < self.cfg.max_concurrent {
            let Some(session) = st.summaries_waiting.pop() else {
                break;
            };
            let Some(open) = st.open.get(&session) else {
                continue;
            };
            let Some(d) = &open.summarizing else {
                continue;
            };
            let answers = d
                .good
                .iter()
                .map(|(m, t)| format!("[{m}]\n{t}"))
                .collect::<Vec<_>>()
                .join("\n\n");
            let request = ChatRequest {
                messages: vec![
                    ChatMessage::new(Role::System, &self.cfg.summary_prompt),
                    ChatMessage::new(
                        Role::User,
                        format!("Task: {}\n\nAnswers:\n\n{answers}", open.task.content),
                    ),
                ],
                ..Default::default()
            };
            let mut req = request.to_envelope(&open.task, ctx.node_id());
            req.id = summary_request_id(&open.task);
            st.summaries_running += 1;
            ctx.send_one("llm", req);
        }
    }

    fn on_llm(&self, ctx: &Ctx, answer: Envelope) -> Result<(), Failure> {
        let mut st = self.state.lock().expect("aggregate state");
        let ours = st.open.get(&answer.session).is_some_and(|o| {
            o.summarizing.is_some()
                && answer.reply_to.as_deref() == Some(summary_request_id(&o.task).as_str())
        });
        if !ours {
            return Err(Failure::new(format!(
                "an LLM answer to an unknown request {:?} (session {})",
                answer.reply_to, answer.session
            )));
        }
        st.summaries_running -= 1;
        let open = st.open.get(&answer.session).expect("checked above");
        let d = open.summarizing.clone().expect("checked above");
        let task = open.task.clone();
        let session = answer.session.clone();
        let text = match answer.kind {
            Kind::Error => Err(format!("the summary failed: {}", answer.content)),
            _ => ChatResponse::from_envelope(&answer)
                .map(|r| r.message.content)
                .map_err(|e| format!("unreadable summary: {e}")),
        };
        match text {
            Ok(text) => self.deliver(ctx, &mut st, &session, text, &d, None),
            Err(why) => {
                st.open.remove(&session);
                let f = Failure::new(why).with_details(self.record(&d, None));
                ctx.reply_error("result", &task, f);
                self.maybe_exit(ctx, &st);
            }
        }
        self.pump_summaries(ctx, &mut st);
        Ok(())
    }

    /// The payload every outcome carries: who said what, who failed, who is missing.
    fn record(&self, d: &Decided, tally: Option<serde_json::Value>) -> serde_json::Value {
        let mut r = json!({
            "strategy": format!("{:?}", self.cfg.strategy).to_lowercase(),
            "quorum": self.cfg.quorum,
            "members": self.cfg.members,
            "answers": d.good.iter().map(|(m, t)| json!({"member": m, "content": t})).collect::<Vec<_>>(),
            "failed": d.failed.iter().map(|(m, t)| json!({"member": m, "error": t})).collect::<Vec<_>>(),
            "missing": d.missing,
        });
        if let Some(t) = tally {
            r["tally"] = t;
        }
        r
    }

    fn deliver(
        &self,
        ctx: &Ctx,
        st: &mut State,
        session: &str,
        text: String,
        d: &Decided,
        tally: Option<serde_json::Value>,
    ) {
        let Some(open) = st.open.remove(session) else {
            return;
        };
        let result = open
            .task
            .reply(Kind::Result, ctx.node_id(), Role::Assistant, text)
            .with_payload(&self.record(d, tally));
        ctx.send_one("result", result);
        self.maybe_exit(ctx, st);
    }

    fn maybe_exit(&self, ctx: &Ctx, st: &State) {
        if st.task_closed && st.open.is_empty() {
            ctx.exit();
        }
    }
}

fn summary_request_id(task: &Envelope) -> String {
    format!("{}/summary", task.id)
}

/// The answer most members gave (compared loosely), the earliest among ties, and the tally.
fn majority(good: &[(String, String)]) -> (String, serde_json::Value) {
    let norm = |t: &str| {
        t.trim()
            .trim_end_matches(['.', '!', '?'])
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase()
    };
    // key → (first position, count, first text, voters)
    let mut groups: BTreeMap<String, (usize, usize, String, Vec<String>)> = BTreeMap::new();
    for (i, (m, t)) in good.iter().enumerate() {
        let g = groups
            .entry(norm(t))
            .or_insert_with(|| (i, 0, t.trim().to_owned(), Vec::new()));
        g.1 += 1;
        g.3.push(m.clone());
    }
    let best = groups
        .values()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        .expect("a quorum of at least one answer");
    let top = best.1;
    let tie = groups.values().filter(|g| g.1 == top).count() > 1;
    let tally = json!({
        "winner": best.2,
        "votes": top,
        "tie": tie,
        "groups": groups.values().map(|g| json!({"answer": g.2, "count": g.1, "members": g.3})).collect::<Vec<_>>(),
    });
    (best.2.clone(), tally)
}

#[async_trait]
impl Handler for Aggregate {
    async fn on_message(&self, ctx: &Ctx, input: &str, msg: Envelope) -> Result<(), Failure> {
        match input {
            "task" => self.on_task(ctx, msg),
            "llm" => self.on_llm(ctx, msg),
            _ => self.on_answer(ctx, input, msg),
        }
    }

    /// At stop, open sessions are decided on what has come (a quorum is delivered); those
    /// still waiting for their summary get an error.
    async fn on_stop(&self, ctx: &Ctx) {
        let mut st = self.state.lock().expect("aggregate state");
        let sessions: Vec<String> = st.open.keys().cloned().collect();
        for s in &sessions {
            self.decide(ctx, &mut st, s, true);
        }
        for (_, open) in st.open.drain() {
            let f = Failure::new("the aggregator stopped before the summary came");
            ctx.reply_error("result", &open.task, f);
        }
    }

    async fn on_input_closed(&self, ctx: &Ctx, input: &str) {
        let mut st = self.state.lock().expect("aggregate state");
        if input == "task" {
            st.task_closed = true;
            self.maybe_exit(ctx, &st);
            return;
        }
        if self.cfg.members.iter().any(|m| m == input)
            && !st.closed_members.iter().any(|m| m == input)
        {
            tracing::warn!("member {input} has ended: missing from the open sessions");
            st.closed_members.push(input.to_owned());
            let sessions: Vec<String> = st.open.keys().cloned().collect();
            for s in sessions {
                self.decide(ctx, &mut st, &s, false);
            }
        }
    }
}
