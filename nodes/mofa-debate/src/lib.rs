//! mofa-debate: the moderator of a debate between agents, judged by another agent.
//!
//! Each task on `task` is a topic (an envelope, or plain text). For it, the N debaters speak in
//! turns for R rounds, in a fixed order (the first debater, the second, ..., the first again):
//! the moderator sends one debater its turn, a `task` envelope on the output named like the
//! debater, holding the topic, the round and the whole transcript so far, and waits for that
//! turn's answer before it sends the next. Then the judge gets the topic and the full
//! transcript and is asked for a verdict with reasons; its answer goes out on `verdict` as a
//! `result` answering the topic's task, the payload holding the transcript, the absent
//! debaters and the judge's text. Every turn also goes out on `turn` as it is recorded.
//!
//! Debaters and the judge are plain agents (mofa-agent): the moderator's output `<name>` feeds
//! the agent's `task`; the agent's `result` comes back on the input `<name>` and its `error` on
//! `<name>_error`. Answers are matched by `reply_to`, which is the turn's id ([`turn_id`],
//! [`judge_id`]). Sessions debate concurrently; a second topic in a session that is still
//! debating waits for that debate to end.
//!
//! Absence: a debater that answers its turn with an `error`, does not answer within
//! MOFA_TURN_TIMEOUT_MS, or whose process ends (its input closes) is absent. With
//! MOFA_ON_ABSENT=skip the transcript records "(absent)" for that turn and its later turns and
//! the debate goes on; with `fail` the debate ends in an `error` naming the debater. A judge
//! that fails the same ways always fails the debate, as does a debate in which nobody spoke.
//! A debate that can no longer succeed (the judge's process has ended; with `fail`, the process
//! of a debater with a turn left) fails at once, before more turns are asked for.
//! A failed debate's `error` goes out on `verdict` as well as on `error`, so whoever waits for
//! verdicts gets one outcome for every topic.
//!
//! Across machines, a participant whose machine is lost (the kernel closes its inputs, see
//! [`Ctx::lost`]) is gone like one whose process ended, and the reason names the machine: an
//! absent debater (skipped or failing the debate, per MOFA_ON_ABSENT), or a judge that cannot
//! give its verdict.
//!
//! The node ends by itself once `task` is closed and no debate is left, so `dora run` ends.
//!
//! Env: MOFA_DEBATERS (names, comma-separated, at least 2), MOFA_ROUNDS (default 2),
//! MOFA_TURN_TIMEOUT_MS (per turn and for the verdict, default 120000), MOFA_ON_ABSENT
//! (`skip`, the default, or `fail`), MOFA_JUDGE (the judge's name, default `judge`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mofa_kernel::config::{self, ConfigError};
use mofa_kernel::node::{Ctx, Deadline, Failure, Handler};
use mofa_kernel::{Envelope, Kind, Role};
use serde::Serialize;

/// What a debater's absence does to the debate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnAbsent {
    /// Record "(absent)" for its turns and go on.
    Skip,
    /// End the debate with an error naming the debater.
    Fail,
}

#[derive(Debug, Clone)]
pub struct DebateConfig {
    /// In speaking order. Each name is an output (its turns) and an input (its answers).
    pub debaters: Vec<String>,
    pub rounds: u32,
    /// How long one turn, or the verdict, may take.
    pub turn_timeout: Duration,
    pub on_absent: OnAbsent,
    pub judge: String,
}

/// The moderator's own inputs and outputs: no debater or judge may be named like them.
const RESERVED: [&str; 4] = ["task", "turn", "verdict", "error"];

/// What the transcript says for a turn nobody took.
pub const ABSENT: &str = "(absent)";

impl DebateConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let debaters = config::names(
            "MOFA_DEBATERS",
            2,
            "the debaters' names, comma-separated, at least 2 (each an output for its turns \
             and an input for its answers)",
            &RESERVED,
        )?;
        let rounds = config::parse_or("MOFA_ROUNDS", 2u32)?;
        if rounds == 0 {
            return Err(ConfigError::invalid(
                "MOFA_ROUNDS",
                "0",
                "a debate has at least 1 round",
            ));
        }
        let turn_timeout = config::millis_or("MOFA_TURN_TIMEOUT_MS", Duration::from_secs(120))?;
        if turn_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "MOFA_TURN_TIMEOUT_MS",
                "0",
                "a turn needs some time",
            ));
        }
        let on_absent = match config::optional("MOFA_ON_ABSENT").as_deref() {
            None | Some("skip") => OnAbsent::Skip,
            Some("fail") => OnAbsent::Fail,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "MOFA_ON_ABSENT",
                    other,
                    "expected skip or fail",
                ));
            }
        };
        let cfg = DebateConfig {
            debaters,
            rounds,
            turn_timeout,
            on_absent,
            judge: config::optional("MOFA_JUDGE").unwrap_or_else(|| "judge".into()),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the names: they become dora input and output ids next to the moderator's own.
    pub fn validate(&self) -> Result<(), ConfigError> {
        config::parse_names("MOFA_DEBATERS", &self.debaters.join(","), 2, &RESERVED)?;
        config::parse_names("MOFA_JUDGE", &self.judge, 1, &RESERVED)?;
        if self.debaters.contains(&self.judge) {
            return Err(ConfigError::invalid(
                "MOFA_DEBATERS",
                self.debaters.join(","),
                format!("`{}` is also the judge (MOFA_JUDGE)", self.judge),
            ));
        }
        Ok(())
    }

    fn takes_part(&self, name: &str) -> bool {
        name == self.judge || self.debaters.iter().any(|d| d == name)
    }
}

/// The id of `debater`'s turn in `round` of the debate on `task`: derived, so an answer is
/// matched by its `reply_to` and a test can address it.
pub fn turn_id(task: &Envelope, round: u32, debater: &str) -> String {
    format!("{}/turn/{round}/{debater}", task.id)
}

/// The id of the request for the verdict on `task`.
pub fn judge_id(task: &Envelope) -> String {
    format!("{}/judge", task.id)
}

/// One turn as the transcript keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Turn {
    pub round: u32,
    pub debater: String,
    pub content: String,
    pub absent: bool,
}

/// A debater that dropped out of one debate: from which round, and why.
#[derive(Debug, Clone, Serialize)]
struct Absence {
    debater: String,
    round: u32,
    reason: String,
}

/// The transcript as the debaters and the judge read it, one labelled line per turn.
pub fn transcript_text(transcript: &[Turn]) -> String {
    transcript
        .iter()
        .map(|t| format!("[round {}] {}: {}", t.round, t.debater, t.content))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a debater is asked in its turn.
pub fn turn_prompt(
    topic: &str,
    round: u32,
    rounds: u32,
    debater: &str,
    transcript: &[Turn],
) -> String {
    let so_far = if transcript.is_empty() {
        "(nothing yet: you speak first)".to_owned()
    } else {
        transcript_text(transcript)
    };
    format!(
        "Debate topic: {topic}\n\nRound {round} of {rounds}. You speak as {debater}.\n\n\
         Transcript so far:\n{so_far}\n\n\
         Give your argument for this round in a few sentences. Answer the points made so far \
         where you disagree; do not repeat yourself."
    )
}

/// What the judge is asked once the rounds are over.
pub fn judge_prompt(topic: &str, rounds: u32, debaters: &[String], transcript: &[Turn]) -> String {
    format!(
        "Debate topic: {topic}\n\nThe debate is over: {} debaters ({}), {rounds} round(s). \
         Full transcript:\n{}\n\n\
         As the judge, give your verdict: which position is the most convincing, then your \
         reasons, citing the debaters' arguments. A turn marked {ABSENT} was not taken.",
        debaters.len(),
        debaters.join(", "),
        transcript_text(transcript)
    )
}

/// The request a debate waits for: a debater's turn or the judge's verdict.
#[derive(Debug, Clone)]
struct Waiting {
    id: String,
    who: String,
    round: u32,
    judge: bool,
}

/// One debate under way.
struct Running {
    task: Envelope,
    transcript: Vec<Turn>,
    absent: Vec<Absence>,
    /// Turns taken or skipped so far; the next one is `debaters[next % N]` in round
    /// `next / N + 1`, and the judge is asked when it reaches N × R.
    next: usize,
    waiting: Option<Waiting>,
    /// The deadline of what it waits for; dropped with it.
    _deadline: Option<Deadline>,
}

impl Running {
    fn new(task: Envelope) -> Self {
        Running {
            task,
            transcript: Vec::new(),
            absent: Vec::new(),
            next: 0,
            waiting: None,
            _deadline: None,
        }
    }
}

struct Session {
    running: Running,
    /// Topics sent in this session while it debates: each starts when the one before ends.
    queued: VecDeque<Envelope>,
}

#[derive(Default)]
struct State {
    sessions: HashMap<String, Session>,
    /// Participants whose process has ended (their input closed): absent from every debate.
    gone: HashMap<String, String>,
    task_closed: bool,
}

pub struct Debate {
    cfg: Arc<DebateConfig>,
    state: Arc<Mutex<State>>,
}

impl Debate {
    pub fn new(cfg: DebateConfig) -> Self {
        Debate {
            cfg: Arc::new(cfg),
            state: Arc::default(),
        }
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Debate::new(DebateConfig::from_env()?))
    }

    fn clone_handle(&self) -> Debate {
        Debate {
            cfg: self.cfg.clone(),
            state: self.state.clone(),
        }
    }

    fn on_task(&self, ctx: &Ctx, task: Envelope) -> Result<(), Failure> {
        if !matches!(task.kind, Kind::Task | Kind::Message | Kind::Result) {
            return Err(Failure::new(format!(
                "a `{}` envelope is not a debate topic",
                task.kind
            )));
        }
        if task.content.trim().is_empty() {
            return Err(Failure::new("empty debate topic"));
        }
        let mut st = self.state.lock().expect("debate state");
        if let Some(s) = st.sessions.get_mut(&task.session) {
            s.queued.push_back(task);
            return Ok(());
        }
        let key = task.session.clone();
        tracing::info!(session = %key, "debate: {}", task.content);
        st.sessions.insert(
            key.clone(),
            Session {
                running: Running::new(task),
                queued: VecDeque::new(),
            },
        );
        self.advance(ctx, &mut st, &key);
        Ok(())
    }

    /// Moves the session's debate on: the next turn, skipping absent debaters, or the judge.
    /// Called when the debate waits for nothing.
    fn advance(&self, ctx: &Ctx, st: &mut State, key: &str) {
        let n = self.cfg.debaters.len();
        let total = n * self.cfg.rounds as usize;
        loop {
            let Some(s) = st.sessions.get_mut(key) else {
                return;
            };
            let d = &mut s.running;
            // A debate that can no longer end well ends now, not after more turns are paid for.
            if let Some(reason) = st.gone.get(&self.cfg.judge) {
                let why = format!(
                    "the judge `{}` cannot give a verdict: {reason}",
                    self.cfg.judge
                );
                let f = self.failure(d, &why);
                return self.end(ctx, st, key, Err(f));
            }
            if d.next == total {
                return self.ask_judge(ctx, st, key);
            }
            let (now, round) = (d.next % n, (d.next / n) as u32 + 1);
            // Who speaks next; with `fail`, a debater already gone that has a turn left instead.
            let doomed = self.cfg.debaters.iter().enumerate().find_map(|(i, x)| {
                let its_round = if i >= now { round } else { round + 1 };
                let dooms = self.cfg.on_absent == OnAbsent::Fail
                    && its_round <= self.cfg.rounds
                    && st.gone.contains_key(x);
                dooms.then(|| (x.clone(), its_round))
            });
            let (debater, round) = doomed.unwrap_or((self.cfg.debaters[now].clone(), round));
            if d.absent.iter().any(|a| a.debater == debater) {
                self.record(ctx, d, round, &debater, None);
                continue;
            }
            if let Some(reason) = st.gone.get(&debater).cloned() {
                let w = Waiting {
                    id: turn_id(&d.task, round, &debater),
                    who: debater,
                    round,
                    judge: false,
                };
                if self.absent(ctx, st, key, &w, reason) {
                    continue;
                }
                return;
            }
            let prompt = turn_prompt(
                &d.task.content,
                round,
                self.cfg.rounds,
                &debater,
                &d.transcript,
            );
            let mut turn = d
                .task
                .reply(Kind::Task, ctx.node_id(), Role::User, prompt)
                .with_round(round);
            turn.id = turn_id(&d.task, round, &debater);
            self.wait_for(
                ctx,
                key,
                d,
                Waiting {
                    id: turn.id.clone(),
                    who: debater.clone(),
                    round,
                    judge: false,
                },
            );
            ctx.send_one(&debater, turn);
            return;
        }
    }

    fn ask_judge(&self, ctx: &Ctx, st: &mut State, key: &str) {
        let Some(s) = st.sessions.get_mut(key) else {
            return;
        };
        let d = &mut s.running;
        let judge = self.cfg.judge.clone();
        if d.transcript.iter().all(|t| t.absent) {
            let f = self.failure(d, "every debater was absent: there is nothing to judge");
            return self.end(ctx, st, key, Err(f));
        }
        let prompt = judge_prompt(
            &d.task.content,
            self.cfg.rounds,
            &self.cfg.debaters,
            &d.transcript,
        );
        let mut request = d
            .task
            .reply(Kind::Task, ctx.node_id(), Role::User, prompt)
            .with_round(self.cfg.rounds);
        request.id = judge_id(&d.task);
        let w = Waiting {
            id: request.id.clone(),
            who: judge.clone(),
            round: self.cfg.rounds,
            judge: true,
        };
        self.wait_for(ctx, key, d, w);
        ctx.send_one(&judge, request);
    }

    /// Marks `w` as what the debate waits for, and watches its time.
    fn wait_for(&self, ctx: &Ctx, key: &str, d: &mut Running, w: Waiting) {
        let (me, wctx, key, id) = (
            self.clone_handle(),
            ctx.clone(),
            key.to_owned(),
            w.id.clone(),
        );
        let timeout = self.cfg.turn_timeout;
        let deadline = ctx.deadline(timeout, move || {
            let mut st = me.state.lock().expect("debate state");
            let Some(w) = st
                .sessions
                .get(&key)
                .and_then(|s| s.running.waiting.clone())
                .filter(|w| w.id == id)
            else {
                return;
            };
            let reason = format!("no answer within {} ms", timeout.as_millis());
            me.turn_failed(&wctx, &mut st, &key, w, reason);
        });
        d.waiting = Some(w);
        d._deadline = Some(deadline);
    }

    /// Adds a turn to the transcript (`None`: absent) and publishes it on `turn`.
    fn record(&self, ctx: &Ctx, d: &mut Running, round: u32, debater: &str, said: Option<&str>) {
        let content = said.unwrap_or(ABSENT).to_owned();
        let mut details = serde_json::json!({
            "debater": debater,
            "round": round,
            "absent": said.is_none(),
        });
        if said.is_none()
            && let Some(a) = d.absent.iter().find(|a| a.debater == debater)
        {
            details["reason"] = a.reason.clone().into();
        }
        let turn = d
            .task
            .reply(Kind::Message, debater, Role::Assistant, &content)
            .with_round(round)
            .with_payload(&details);
        ctx.send_one("turn", turn);
        d.transcript.push(Turn {
            round,
            debater: debater.to_owned(),
            content,
            absent: said.is_none(),
        });
        d.next += 1;
        d.waiting = None;
        d._deadline = None;
    }

    /// What `w` was waiting for will not come: the debater is absent, or the judge failed.
    fn turn_failed(&self, ctx: &Ctx, st: &mut State, key: &str, w: Waiting, reason: String) {
        if w.judge {
            let Some(s) = st.sessions.get(key) else {
                return;
            };
            let f = self.failure(
                &s.running,
                &format!("the judge `{}` gave no verdict: {reason}", w.who),
            );
            return self.end(ctx, st, key, Err(f));
        }
        if self.absent(ctx, st, key, &w, reason) {
            self.advance(ctx, st, key);
        }
    }

    /// Debater `w.who` is absent from its turn. Returns whether the debate goes on.
    fn absent(&self, ctx: &Ctx, st: &mut State, key: &str, w: &Waiting, reason: String) -> bool {
        let Some(s) = st.sessions.get_mut(key) else {
            return false;
        };
        let d = &mut s.running;
        tracing::warn!(session = %key, "`{}` is absent in round {}: {reason}", w.who, w.round);
        match self.cfg.on_absent {
            OnAbsent::Skip => {
                d.absent.push(Absence {
                    debater: w.who.clone(),
                    round: w.round,
                    reason,
                });
                self.record(ctx, d, w.round, &w.who, None);
                true
            }
            OnAbsent::Fail => {
                let f = self
                    .failure(
                        d,
                        &format!(
                            "debater `{}` is absent in round {}: {reason}",
                            w.who, w.round
                        ),
                    )
                    .with_details(serde_json::json!({
                        "debater": w.who,
                        "round": w.round,
                        "reason": reason,
                        "transcript": d.transcript,
                    }));
                self.end(ctx, st, key, Err(f));
                false
            }
        }
    }

    fn failure(&self, d: &Running, why: &str) -> Failure {
        Failure::new(format!("debate failed: {why}")).with_details(serde_json::json!({
            "transcript": d.transcript,
            "absent": d.absent,
        }))
    }

    /// Ends the session's debate with its verdict or its failure; starts the next queued topic.
    fn end(&self, ctx: &Ctx, st: &mut State, key: &str, outcome: Result<Envelope, Failure>) {
        let Some(s) = st.sessions.get_mut(key) else {
            return;
        };
        let next = s.queued.pop_front();
        let done = match next {
            Some(task) => std::mem::replace(&mut s.running, Running::new(task)),
            None => {
                st.sessions
                    .remove(key)
                    .expect("the session is there")
                    .running
            }
        };
        match outcome {
            Ok(verdict) => ctx.send_one("verdict", verdict),
            Err(f) => ctx.reply_error("verdict", &done.task, f),
        }
        drop(done); // ends its timeout watch
        if st.sessions.contains_key(key) {
            self.advance(ctx, st, key);
        }
        if st.task_closed && st.sessions.is_empty() {
            ctx.exit();
        }
    }

    fn on_answer(
        &self,
        ctx: &Ctx,
        input: &str,
        who: &str,
        answer: Envelope,
    ) -> Result<(), Failure> {
        let mut st = self.state.lock().expect("debate state");
        let reply_to = answer.reply_to.clone().unwrap_or_default();
        let key = answer.session.clone();
        let pending = st
            .sessions
            .get(&key)
            .and_then(|s| s.running.waiting.clone())
            .filter(|w| w.id == reply_to && w.who == who);
        let Some(w) = pending else {
            if answer.kind == Kind::Error {
                // The participant has reported it on its own `error` output already.
                tracing::warn!(
                    "`{who}` reported an error outside any turn: {}",
                    answer.content
                );
                return Ok(());
            }
            return Err(Failure::new(format!(
                "`{who}` answered {reply_to:?} on `{input}`, but no such turn is pending in \
                 session {key} (a late answer after a timeout or a failed debate, or an unknown id)"
            )));
        };
        match answer.kind {
            Kind::Result if w.judge => {
                let Some(s) = st.sessions.get(&key) else {
                    return Ok(());
                };
                let d = &s.running;
                let payload = serde_json::json!({
                    "topic": d.task.content,
                    "rounds": self.cfg.rounds,
                    "debaters": self.cfg.debaters,
                    "judge": w.who,
                    "transcript": d.transcript,
                    "absent": d.absent,
                    "verdict": answer.content,
                });
                let verdict = d
                    .task
                    .reply(
                        Kind::Result,
                        ctx.node_id(),
                        Role::Assistant,
                        &answer.content,
                    )
                    .with_round(self.cfg.rounds)
                    .with_payload(&payload);
                self.end(ctx, &mut st, &key, Ok(verdict));
            }
            Kind::Result => {
                if let Some(s) = st.sessions.get_mut(&key) {
                    let d = &mut s.running;
                    self.record(ctx, d, w.round, who, Some(answer.content.trim()));
                }
                self.advance(ctx, &mut st, &key);
            }
            Kind::Error => {
                let reason = format!("it answered with an error: {}", answer.content);
                self.turn_failed(ctx, &mut st, &key, w, reason);
            }
            other => {
                return Err(Failure::new(format!(
                    "expected a `result` or an `error` from `{who}` on `{input}`, got a \
                     `{other}`; its turn is still open"
                )));
            }
        }
        Ok(())
    }

    /// `who`'s process has ended, or its machine was lost: it is absent from every debate from
    /// now on.
    fn gone(&self, ctx: &Ctx, who: &str, input: &str) {
        let mut st = self.state.lock().expect("debate state");
        if st.gone.contains_key(who) {
            return;
        }
        let reason = match ctx.lost(input) {
            Some(lost) => format!("its {lost} (input `{input}` closed)"),
            None => format!("its process has ended (input `{input}` closed)"),
        };
        st.gone.insert(who.to_owned(), reason.clone());
        let waiting_on_it: Vec<(String, Waiting)> = st
            .sessions
            .iter()
            .filter_map(|(k, s)| Some((k.clone(), s.running.waiting.clone()?)))
            .filter(|(_, w)| w.who == who)
            .collect();
        for (key, w) in waiting_on_it {
            self.turn_failed(ctx, &mut st, &key, w, reason.clone());
        }
    }
}

#[async_trait]
impl Handler for Debate {
    async fn on_message(&self, ctx: &Ctx, input: &str, msg: Envelope) -> Result<(), Failure> {
        if input == "task" {
            return self.on_task(ctx, msg);
        }
        let who = input.strip_suffix("_error").unwrap_or(input);
        if !self.cfg.takes_part(who) {
            return Err(Failure::new(format!(
                "unexpected input `{input}`: the moderator takes `task`, and the answers of \
                 {} and {}",
                self.cfg.debaters.join(", "),
                self.cfg.judge
            )));
        }
        self.on_answer(ctx, input, who, msg)
    }

    async fn on_input_closed(&self, ctx: &Ctx, input: &str) {
        if input == "task" {
            let mut st = self.state.lock().expect("debate state");
            st.task_closed = true;
            if st.sessions.is_empty() {
                ctx.exit();
            }
            return;
        }
        let who = input.strip_suffix("_error").unwrap_or(input);
        if self.cfg.takes_part(who) {
            self.gone(ctx, who, input);
        }
    }

    /// Stopped mid-debate (dora stop): every open topic gets its error, none is dropped.
    async fn on_stop(&self, ctx: &Ctx) {
        let mut st = self.state.lock().expect("debate state");
        for (_, s) in st.sessions.drain() {
            let d = s.running;
            let f = self.failure(&d, "the moderator stopped before the debate ended");
            ctx.reply_error("verdict", &d.task, f);
            for task in s.queued {
                let f = Failure::new("debate failed: the moderator stopped before it began");
                ctx.reply_error("verdict", &task, f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(vars: &[(&str, &str)]) {
        for var in [
            "MOFA_DEBATERS",
            "MOFA_ROUNDS",
            "MOFA_TURN_TIMEOUT_MS",
            "MOFA_ON_ABSENT",
            "MOFA_JUDGE",
        ] {
            unsafe { std::env::remove_var(var) };
        }
        for (k, v) in vars {
            unsafe { std::env::set_var(k, v) };
        }
    }

    fn error(vars: &[(&str, &str)]) -> String {
        set(vars);
        DebateConfig::from_env().unwrap_err().to_string()
    }

    // One test: the variables are the process's, shared by the tests of this binary.
    #[test]
    fn configuration_from_env_and_errors_that_name_the_variable() {
        set(&[("MOFA_DEBATERS", " pro , con ")]);
        let cfg = DebateConfig::from_env().unwrap();
        assert_eq!(cfg.debaters, ["pro", "con"]);
        assert_eq!(
            (
                cfg.rounds,
                cfg.turn_timeout,
                cfg.on_absent,
                cfg.judge.as_str()
            ),
            (2, Duration::from_secs(120), OnAbsent::Skip, "judge")
        );
        set(&[
            ("MOFA_DEBATERS", "a,b,c"),
            ("MOFA_ROUNDS", "3"),
            ("MOFA_TURN_TIMEOUT_MS", "500"),
            ("MOFA_ON_ABSENT", "fail"),
            ("MOFA_JUDGE", "referee"),
        ]);
        let cfg = DebateConfig::from_env().unwrap();
        assert_eq!(
            (
                cfg.rounds,
                cfg.turn_timeout,
                cfg.on_absent,
                cfg.judge.as_str()
            ),
            (3, Duration::from_millis(500), OnAbsent::Fail, "referee")
        );

        assert!(error(&[]).starts_with("MOFA_DEBATERS is not set"));
        let e = error(&[("MOFA_DEBATERS", "solo")]);
        assert!(
            e.contains("MOFA_DEBATERS") && e.contains("at least 2"),
            "{e}"
        );
        let e = error(&[("MOFA_DEBATERS", "a,a")]);
        assert!(e.contains("named twice"), "{e}");
        let e = error(&[("MOFA_DEBATERS", "a,,b")]);
        assert!(e.contains("an empty name"), "{e}");
        let e = error(&[("MOFA_DEBATERS", "a,verdict")]);
        assert!(e.contains("uses that id itself"), "{e}");
        let e = error(&[("MOFA_DEBATERS", "a,b_error")]);
        assert!(e.contains("uses that id itself"), "{e}");
        let e = error(&[("MOFA_DEBATERS", "a,judge")]);
        assert!(e.contains("also the judge"), "{e}");
        let e = error(&[("MOFA_DEBATERS", "a,b"), ("MOFA_JUDGE", "task")]);
        assert!(e.starts_with("MOFA_JUDGE=\"task\" is invalid"), "{e}");
        let e = error(&[("MOFA_DEBATERS", "a,b"), ("MOFA_ROUNDS", "0")]);
        assert!(e.starts_with("MOFA_ROUNDS=\"0\" is invalid"), "{e}");
        let e = error(&[("MOFA_DEBATERS", "a,b"), ("MOFA_ROUNDS", "two")]);
        assert!(e.starts_with("MOFA_ROUNDS=\"two\" is invalid"), "{e}");
        let e = error(&[("MOFA_DEBATERS", "a,b"), ("MOFA_TURN_TIMEOUT_MS", "0")]);
        assert!(
            e.starts_with("MOFA_TURN_TIMEOUT_MS=\"0\" is invalid"),
            "{e}"
        );
        let e = error(&[("MOFA_DEBATERS", "a,b"), ("MOFA_ON_ABSENT", "ignore")]);
        assert!(
            e.starts_with("MOFA_ON_ABSENT=\"ignore\" is invalid: expected skip or fail"),
            "{e}"
        );
    }

    #[test]
    fn prompts_label_every_turn_with_its_round_and_speaker() {
        let turns = vec![
            Turn {
                round: 1,
                debater: "pro".into(),
                content: "yes".into(),
                absent: false,
            },
            Turn {
                round: 1,
                debater: "con".into(),
                content: ABSENT.into(),
                absent: true,
            },
        ];
        let q = turn_prompt("T", 2, 3, "pro", &turns);
        assert!(q.starts_with("Debate topic: T\n\nRound 2 of 3. You speak as pro."));
        assert!(q.contains("Transcript so far:\n[round 1] pro: yes\n[round 1] con: (absent)\n"));
        let j = judge_prompt("T", 3, &["pro".into(), "con".into()], &turns);
        assert!(j.contains("2 debaters (pro, con), 3 round(s)"));
        assert!(j.contains("[round 1] con: (absent)"));
    }
}
