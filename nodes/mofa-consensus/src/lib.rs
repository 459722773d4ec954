//! mofa-consensus: members propose, all vote, the votes are tallied; repeat until the leading
//! proposal has the threshold share of all members' votes, or until the round limit.
//!
//! Inputs: `task` (the questions: envelopes, or plain text), `<member>` for each member (its
//! answers: wire the member agent's `result` there) and, optionally, `<member>_error` (the
//! member agent's `error` output, so a failed answer counts at once instead of at the timeout).
//! Outputs: `<member>` (that member's tasks: wire it to the agent's `task`), `decision` (one
//! `result` per question, answering it), `votes` (every vote, as a `vote` envelope, when its
//! round ends), `tally` (each round's record as it ends), `error`.
//!
//! A round has two phases, each a task to every member and a wait for all of their answers
//! (matched by reply_to): propose, then vote for one of the numbered proposals. The tasks carry
//! all the context (the question, the previous round's proposals and tally), so members need
//! no memory of their own. A member that answers with an error, does not answer within
//! MOFA_MEMBER_TIMEOUT_MS, or whose process has exited (its input closed) is absent for that
//! phase; the threshold stays relative to all members. A tie for the lead is not a decision.
//! Questions in different sessions run concurrently; one in a busy session waits its turn.
//! The node ends by itself once `task` is closed and no question is left; stopped earlier, it
//! answers each open question with an error carrying the rounds so far.
//!
//! Env: MOFA_MEMBERS (comma-separated member names, at least 2), MOFA_THRESHOLD (the share of
//! all members' votes the leading proposal needs, as `2/3` or `0.67`, compared exactly: `0.67`
//! of 3 members needs 3 votes; default 2/3), MOFA_ROUNDS (most rounds, default 3),
//! MOFA_MEMBER_TIMEOUT_MS (how long a phase waits for the members, default 120000).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mofa_kernel::config::{self, ConfigError};
use mofa_kernel::node::{Ctx, Deadline, Failure, Handler};
use mofa_kernel::{Envelope, Kind, Role};
use serde_json::{Value, json};

/// The share of all members' votes a proposal needs: a fraction in (0, 1], kept exact so that
/// `2/3` of 3 members is 2 votes, not a float that rounds either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threshold {
    num: u64,
    den: u64,
}

impl Threshold {
    pub const TWO_THIRDS: Threshold = Threshold { num: 2, den: 3 };

    pub fn new(num: u64, den: u64) -> Result<Self, String> {
        if den == 0 {
            return Err("the denominator is 0".into());
        }
        if num == 0 {
            return Err("must be above 0".into());
        }
        if num > den {
            return Err("must be at most 1".into());
        }
        let g = gcd(num, den);
        Ok(Threshold {
            num: num / g,
            den: den / g,
        })
    }

    /// Whether `votes` of `members` reach the threshold.
    pub fn reached(self, votes: usize, members: usize) -> bool {
        votes as u128 * self.den as u128 >= self.num as u128 * members as u128
    }

    /// The fewest votes of `members` that reach the threshold.
    pub fn needed(self, members: usize) -> usize {
        (self.num as u128 * members as u128).div_ceil(self.den as u128) as usize
    }

    pub fn value(self) -> f64 {
        self.num as f64 / self.den as f64
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.num, self.den)
    }
}

impl FromStr for Threshold {
    type Err = String;

    /// `a/b`, or a decimal such as `0.67` or `1` (read digit by digit: no float rounding).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || format!("expected a fraction like 2/3 or a decimal like 0.67, got {s:?}");
        if let Some((a, b)) = s.split_once('/') {
            let num = a.trim().parse().map_err(|_| bad())?;
            let den = b.trim().parse().map_err(|_| bad())?;
            return Threshold::new(num, den);
        }
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        let all_digits = |d: &str| d.bytes().all(|c| c.is_ascii_digit());
        if int.is_empty() && frac.is_empty() || !all_digits(int) || !all_digits(frac) {
            return Err(bad());
        }
        if frac.len() > 9 {
            return Err("at most 9 decimals".into());
        }
        let den = 10u64.pow(frac.len() as u32);
        let int: u64 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad())?
        };
        let frac: u64 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| bad())?
        };
        let num = int
            .checked_mul(den)
            .and_then(|n| n.checked_add(frac))
            .ok_or_else(bad)?;
        Threshold::new(num, den)
    }
}

#[derive(Debug, Clone)]
pub struct ConsensusConfig {
    /// The member names, in order: proposals are numbered in this order.
    pub members: Vec<String>,
    pub threshold: Threshold,
    pub rounds: u32,
    pub member_timeout: Duration,
}

/// Names the node uses itself, so no member may take them.
const RESERVED: [&str; 5] = ["task", "decision", "votes", "tally", "error"];

impl ConsensusConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let members = config::names(
            "MOFA_MEMBERS",
            2,
            "the comma-separated names of the member agents (at least 2)",
            &RESERVED,
        )?;
        let rounds = config::parse_or("MOFA_ROUNDS", 3u32)?;
        if rounds == 0 {
            return Err(ConfigError::invalid("MOFA_ROUNDS", "0", "at least 1 round"));
        }
        let member_timeout = config::millis_or("MOFA_MEMBER_TIMEOUT_MS", Duration::from_secs(120))?;
        if member_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "MOFA_MEMBER_TIMEOUT_MS",
                "0",
                "members need some time to answer",
            ));
        }
        Ok(ConsensusConfig {
            members,
            threshold: config::parse_or("MOFA_THRESHOLD", Threshold::TWO_THIRDS)?,
            rounds,
            member_timeout,
        })
    }
}

/// The two phases of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Propose,
    Vote,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Propose => "propose",
            Phase::Vote => "vote",
        }
    }
}

/// The id of the task sent to `member` in a phase: derived, so an answer's reply_to tells its
/// question, round, phase and member, and a test can address it.
pub fn member_task_id(task: &Envelope, round: u32, phase: Phase, member: &str) -> String {
    format!("{}/r{round}/{}/{member}", task.id, phase.as_str())
}

/// The number a vote is for, among `choices` proposals numbered from 1: the number after the
/// word `vote` (as in `VOTE: 2`, `**Vote:** #2`, `I vote for proposal 2`) if there is one, and
/// then only if it is in range; otherwise the first integer in the text that is in range.
/// `None` is an invalid vote, an abstention. The range the form names (`1 to 3`) is not a
/// vote: small models echo the form, and its `1` would otherwise count for proposal 1.
pub fn parse_vote(text: &str, choices: usize) -> Option<usize> {
    let in_range = |n: u64| (1..=choices as u64).contains(&n).then_some(n as usize);
    let lower = text
        .to_ascii_lowercase()
        .replace(&format!("1 to {choices}"), "…");
    match explicit_vote(&lower) {
        Some(n) => in_range(n),
        None => integers(&lower).into_iter().find_map(in_range),
    }
}

/// The number right after a word `vote` (skipping punctuation and filler words).
fn explicit_vote(lower: &str) -> Option<u64> {
    let bytes = lower.as_bytes();
    let word_char = |b: u8| b.is_ascii_alphanumeric();
    let mut from = 0;
    while let Some(at) = lower[from..].find("vote") {
        let start = from + at;
        let end = start + 4;
        from = end;
        if start > 0 && word_char(bytes[start - 1]) || end < bytes.len() && word_char(bytes[end]) {
            continue; // part of another word: "devote", "votes"
        }
        let mut rest = &lower[end..];
        for _ in 0..3 {
            rest = rest.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
            match ["for", "proposal", "number", "option", "no"]
                .iter()
                .find(|w| {
                    rest.starts_with(*w)
                        && !rest[w.len()..].starts_with(|c: char| c.is_ascii_alphabetic())
                }) {
                Some(w) => rest = &rest[w.len()..],
                None => break,
            }
        }
        rest = rest.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
        let digits: &str = &rest[..rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len())];
        if !digits.is_empty() {
            return Some(digits.parse().unwrap_or(u64::MAX));
        }
    }
    None
}

/// Every run of digits in the text, as numbers (too large ones as `u64::MAX`).
fn integers(text: &str) -> Vec<u64> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|d| !d.is_empty())
        .map(|d| d.parse().unwrap_or(u64::MAX))
        .collect()
}

/// The reason given with a vote: the `REASON:` line, else the text other than the vote line.
pub fn vote_reason(text: &str) -> String {
    let label = |l: &str| {
        l.trim()
            .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
            .to_ascii_lowercase()
    };
    for line in text.lines() {
        let clean = line
            .trim()
            .trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
        if label(line).starts_with("reason") {
            return clean["reason".len()..]
                .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
                .trim()
                .to_owned();
        }
    }
    text.lines()
        .filter(|l| !label(l).starts_with("vote"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// 1-based, in member order among the proposals received.
    pub number: usize,
    pub member: String,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ballot {
    For(usize),
    /// An answer that names no proposal: an abstention.
    Invalid,
    /// No answer: an error, a timeout or a member gone.
    Absent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vote {
    pub member: String,
    pub ballot: Ballot,
    /// The member's reason, or why the vote is invalid or absent.
    pub reason: String,
    /// The member's answer as it came ("" when absent).
    pub raw: String,
}

/// The outcome of a round's votes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Votes per proposal: `counts[i]` for proposal `i + 1`.
    pub counts: Vec<usize>,
    pub abstained: usize,
    pub absent: usize,
    /// The proposal with the most votes, if it has any and no other has as many.
    pub leader: Option<usize>,
    pub leader_votes: usize,
    pub tie: bool,
    pub members: usize,
    pub needed: usize,
    pub reached: bool,
}

/// Counts the votes for `proposals` proposals; the threshold is a share of all `members`,
/// present or not.
pub fn tally(proposals: usize, votes: &[Vote], members: usize, threshold: Threshold) -> Tally {
    let mut counts = vec![0; proposals];
    let (mut abstained, mut absent) = (0, 0);
    for v in votes {
        match v.ballot {
            Ballot::For(n) if (1..=proposals).contains(&n) => counts[n - 1] += 1,
            Ballot::For(_) | Ballot::Invalid => abstained += 1,
            Ballot::Absent => absent += 1,
        }
    }
    // Members without a vote record (none sent one) are absent too.
    absent += members.saturating_sub(votes.len());
    let leader_votes = counts.iter().copied().max().unwrap_or(0);
    let leaders: Vec<usize> = (0..proposals)
        .filter(|&i| leader_votes > 0 && counts[i] == leader_votes)
        .map(|i| i + 1)
        .collect();
    let tie = leaders.len() > 1;
    let leader = if tie { None } else { leaders.first().copied() };
    Tally {
        reached: leader.is_some() && threshold.reached(leader_votes, members),
        counts,
        abstained,
        absent,
        leader,
        leader_votes,
        tie,
        members,
        needed: threshold.needed(members),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Absence {
    member: String,
    phase: Phase,
    why: String,
}

/// What happened in one finished round.
#[derive(Debug, Clone)]
struct RoundRecord {
    round: u32,
    proposals: Vec<Proposal>,
    votes: Vec<Vote>,
    absent: Vec<Absence>,
    tally: Tally,
}

impl RoundRecord {
    fn to_json(&self) -> Value {
        let t = &self.tally;
        json!({
            "round": self.round,
            "proposals": self.proposals.iter().map(|p| json!({
                "number": p.number, "member": p.member, "text": p.text,
            })).collect::<Vec<_>>(),
            "votes": self.votes.iter().map(|v| json!({
                "member": v.member,
                "vote": match v.ballot { Ballot::For(n) => json!(n), _ => Value::Null },
                "status": match v.ballot {
                    Ballot::For(_) => "valid", Ballot::Invalid => "invalid", Ballot::Absent => "absent",
                },
                "reason": v.reason,
                "raw": v.raw,
            })).collect::<Vec<_>>(),
            "absent": self.absent.iter().map(|a| json!({
                "member": a.member, "phase": a.phase.as_str(), "why": a.why,
            })).collect::<Vec<_>>(),
            "tally": {
                "counts": self.proposals.iter().map(|p| json!({
                    "proposal": p.number, "member": p.member, "votes": t.counts[p.number - 1],
                })).collect::<Vec<_>>(),
                "abstained": t.abstained,
                "absent": t.absent,
                "leader": t.leader,
                "leader_votes": t.leader_votes,
                "tie": t.tie,
                "members": t.members,
                "needed": t.needed,
                "reached": t.reached,
            },
        })
    }

    /// One line a member (or a person) can read: the votes per proposal and the outcome.
    fn describe_tally(&self) -> String {
        let t = &self.tally;
        let counts = if self.proposals.is_empty() {
            "no proposals".to_owned()
        } else {
            self.proposals
                .iter()
                .map(|p| {
                    let n = t.counts[p.number - 1];
                    format!(
                        "proposal {} ({}) {n} vote{}",
                        p.number,
                        p.member,
                        if n == 1 { "" } else { "s" }
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let outcome = if t.reached {
            format!("proposal {} is adopted", t.leader.unwrap_or_default())
        } else if t.tie {
            "not reached: a tie for the lead".to_owned()
        } else {
            "not reached".to_owned()
        };
        format!(
            "Round {} tally: {counts}; {} abstained, {} absent; {} of {} votes needed: {outcome}.",
            self.round, t.abstained, t.absent, t.needed, t.members
        )
    }
}

/// A question being deliberated.
struct Run {
    task: Envelope,
    round: u32,
    phase: Phase,
    /// The prefix of this phase's member task ids; a timeout watch checks it is still current.
    phase_id: String,
    /// Task id → member, for the answers this phase still waits for.
    waiting: HashMap<String, String>,
    /// This phase's outcome per member (config order): its answer, or why there is none.
    answers: Vec<Option<Result<String, String>>>,
    /// This round's proposals, once its propose phase is over.
    proposals: Vec<Proposal>,
    absent: Vec<Absence>,
    rounds: Vec<RoundRecord>,
    /// The current phase's deadline; dropped with the phase.
    _deadline: Option<Deadline>,
}

#[derive(Default)]
struct State {
    /// By session.
    runs: HashMap<String, Run>,
    /// Questions waiting for their session's current one, by session.
    queued: HashMap<String, VecDeque<Envelope>>,
    /// Members whose process has exited.
    gone: HashSet<String>,
    task_closed: bool,
}

pub struct Consensus {
    cfg: Arc<ConsensusConfig>,
    state: Arc<Mutex<State>>,
}

impl Consensus {
    pub fn new(cfg: ConsensusConfig) -> Self {
        Consensus {
            cfg: Arc::new(cfg),
            state: Arc::default(),
        }
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Consensus::new(ConsensusConfig::from_env()?))
    }

    fn clone_handle(&self) -> Consensus {
        Consensus {
            cfg: self.cfg.clone(),
            state: self.state.clone(),
        }
    }

    fn member_index(&self, name: &str) -> Option<usize> {
        self.cfg.members.iter().position(|m| m == name)
    }

    /// The first line of every member task: where the deliberation stands and who is asked.
    fn header(&self, round: u32, phase: Phase, member: &str) -> String {
        let names = &self.cfg.members;
        let list = match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
            _ => names.join(", "),
        };
        format!(
            "Consensus round {round} of {}, {} phase. You are member {member}; the members are {list}.",
            self.cfg.rounds,
            phase.as_str()
        )
    }

    fn needed_text(&self) -> String {
        let m = self.cfg.members.len();
        format!(
            "A proposal is adopted when it alone has the most votes and at least {} of the {m}.",
            self.cfg.threshold.needed(m)
        )
    }

    fn propose_prompt(&self, run: &Run, member: &str) -> String {
        let mut text = format!(
            "{}\n\nQuestion: {}\n\n",
            self.header(run.round, Phase::Propose, member),
            run.task.content.trim()
        );
        match run.rounds.last() {
            None => text.push_str("Propose your answer to the question. "),
            Some(prev) => {
                text.push_str(&format!(
                    "Round {} reached no consensus. Its proposals:\n{}\n{}\n{}\n\n",
                    prev.round,
                    numbered(&prev.proposals),
                    prev.describe_tally(),
                    self.needed_text()
                ));
                text.push_str(
                    "Propose your answer again: keep yours, take another member's or combine \
                     them, so that the members can agree. ",
                );
            }
        }
        text.push_str("Reply with the proposal only, briefly.");
        text
    }

    fn vote_prompt(&self, run: &Run, member: &str) -> String {
        let n = run.proposals.len();
        format!(
            "{}\n\nQuestion: {}\n\nProposals:\n{}\n\nVote for the one proposal that best answers \
             the question. {}\nReply in exactly this form:\nVOTE: <the proposal's number, 1 to \
             {n}>\nREASON: <one short sentence>",
            self.header(run.round, Phase::Vote, member),
            run.task.content.trim(),
            numbered(&run.proposals),
            self.needed_text()
        )
    }

    /// Takes a question whose session is free: round 1 begins.
    fn start(&self, ctx: &Ctx, st: &mut State, task: Envelope) {
        let run = Run {
            task,
            round: 1,
            phase: Phase::Propose,
            phase_id: String::new(),
            waiting: HashMap::new(),
            answers: Vec::new(),
            proposals: Vec::new(),
            absent: Vec::new(),
            rounds: Vec::new(),
            _deadline: None,
        };
        self.begin(ctx, st, run, Phase::Propose);
    }

    /// Sends the phase's task to every member still there and waits for their answers.
    fn begin(&self, ctx: &Ctx, st: &mut State, mut run: Run, phase: Phase) {
        run.phase = phase;
        run.phase_id = format!("{}/r{}/{}", run.task.id, run.round, phase.as_str());
        run.waiting.clear();
        run.answers = vec![None; self.cfg.members.len()];
        for (i, member) in self.cfg.members.iter().enumerate() {
            if st.gone.contains(member) {
                run.answers[i] = Some(Err("gone: its process has exited".into()));
                continue;
            }
            let content = match phase {
                Phase::Propose => self.propose_prompt(&run, member),
                Phase::Vote => self.vote_prompt(&run, member),
            };
            let mut task = run
                .task
                .reply(Kind::Task, ctx.node_id(), Role::User, content)
                .with_round(run.round);
            task.id = member_task_id(&run.task, run.round, phase, member);
            run.waiting.insert(task.id.clone(), member.clone());
            ctx.send_one(member, task);
        }
        if run.waiting.is_empty() {
            return self.end_phase(ctx, st, run);
        }
        self.watch(ctx, &mut run);
        st.runs.insert(run.task.session.clone(), run);
    }

    /// Ends the current phase of `run` at MOFA_MEMBER_TIMEOUT_MS: who has not answered by then
    /// is absent.
    fn watch(&self, ctx: &Ctx, run: &mut Run) {
        let (timeout, me, wctx) = (self.cfg.member_timeout, self.clone_handle(), ctx.clone());
        let (session, phase_id) = (run.task.session.clone(), run.phase_id.clone());
        // Replacing the deadline cancels the previous phase's.
        run._deadline = Some(ctx.deadline(timeout, move || {
            let mut st = me.state.lock().expect("consensus state");
            let Some(mut run) = st.runs.remove(&session) else {
                return;
            };
            if run.phase_id != phase_id {
                st.runs.insert(session, run);
                return;
            }
            let why = format!("no answer within {} ms", timeout.as_millis());
            for (_, member) in run.waiting.drain() {
                tracing::warn!(%session, round = run.round, phase = run.phase.as_str(), "{member}: {why}");
                if let Some(i) = me.member_index(&member) {
                    run.answers[i] = Some(Err(why.clone()));
                }
            }
            me.end_phase(&wctx, &mut st, run);
        }));
    }

    /// All answers of the phase are in (or given up on): on to the vote, or the round's end.
    fn end_phase(&self, ctx: &Ctx, st: &mut State, mut run: Run) {
        let answers = std::mem::take(&mut run.answers);
        match run.phase {
            Phase::Propose => {
                run.proposals.clear();
                for (member, answer) in self.cfg.members.iter().zip(answers) {
                    let why = match answer {
                        Some(Ok(text)) if !text.trim().is_empty() => {
                            run.proposals.push(Proposal {
                                number: run.proposals.len() + 1,
                                member: member.clone(),
                                text: text.trim().to_owned(),
                            });
                            continue;
                        }
                        Some(Ok(_)) => "an empty answer".to_owned(),
                        Some(Err(why)) => why,
                        None => "no answer".to_owned(),
                    };
                    run.absent.push(Absence {
                        member: member.clone(),
                        phase: Phase::Propose,
                        why,
                    });
                }
                if run.proposals.is_empty() {
                    let votes = self
                        .cfg
                        .members
                        .iter()
                        .map(|m| Vote {
                            member: m.clone(),
                            ballot: Ballot::Absent,
                            reason: "no proposals to vote on".into(),
                            raw: String::new(),
                        })
                        .collect();
                    return self.end_round(ctx, st, run, votes);
                }
                self.begin(ctx, st, run, Phase::Vote);
            }
            Phase::Vote => {
                let n = run.proposals.len();
                let mut votes = Vec::new();
                for (member, answer) in self.cfg.members.iter().zip(answers) {
                    let vote = match answer {
                        Some(Ok(raw)) => match parse_vote(&raw, n) {
                            Some(choice) => Vote {
                                member: member.clone(),
                                ballot: Ballot::For(choice),
                                reason: vote_reason(&raw),
                                raw,
                            },
                            None => Vote {
                                member: member.clone(),
                                ballot: Ballot::Invalid,
                                reason: format!("invalid vote: names no proposal from 1 to {n}"),
                                raw,
                            },
                        },
                        absent => {
                            let why = match absent {
                                Some(Err(why)) => why,
                                _ => "no answer".into(),
                            };
                            run.absent.push(Absence {
                                member: member.clone(),
                                phase: Phase::Vote,
                                why: why.clone(),
                            });
                            Vote {
                                member: member.clone(),
                                ballot: Ballot::Absent,
                                reason: why,
                                raw: String::new(),
                            }
                        }
                    };
                    votes.push(vote);
                }
                self.end_round(ctx, st, run, votes);
            }
        }
    }

    /// Tallies the round, publishes it, and decides or goes on to the next round.
    fn end_round(&self, ctx: &Ctx, st: &mut State, mut run: Run, votes: Vec<Vote>) {
        let members = self.cfg.members.len();
        let record = RoundRecord {
            round: run.round,
            tally: tally(run.proposals.len(), &votes, members, self.cfg.threshold),
            proposals: std::mem::take(&mut run.proposals),
            votes,
            absent: std::mem::take(&mut run.absent),
        };
        let vote_envelopes = record
            .votes
            .iter()
            .map(|v| {
                let content = match v.ballot {
                    Ballot::Absent => format!("(absent: {})", v.reason),
                    _ => v.raw.clone(),
                };
                let choice = match v.ballot {
                    Ballot::For(n) => json!(n),
                    _ => Value::Null,
                };
                run.task
                    .reply(Kind::Vote, &v.member, Role::Assistant, content)
                    .with_round(record.round)
                    .with_payload(&json!({"vote": choice, "reason": v.reason}))
            })
            .collect();
        ctx.send("votes", vote_envelopes);
        ctx.send_one(
            "tally",
            run.task
                .reply(
                    Kind::Message,
                    ctx.node_id(),
                    Role::Assistant,
                    record.describe_tally(),
                )
                .with_round(record.round)
                .with_payload(&record.to_json()),
        );
        tracing::info!(session = %run.task.session, "{}", record.describe_tally());
        let reached = record.tally.reached;
        run.rounds.push(record);
        if !reached && run.round < self.cfg.rounds {
            run.round += 1;
            return self.begin(ctx, st, run, Phase::Propose);
        }
        self.decide(ctx, st, run);
    }

    /// Answers the question with the adopted proposal, or with the record of no consensus.
    fn decide(&self, ctx: &Ctx, st: &mut State, run: Run) {
        let last = run.rounds.last().expect("a decision follows a round");
        let members = self.cfg.members.len();
        let winner = last
            .tally
            .leader
            .filter(|_| last.tally.reached)
            .map(|n| &last.proposals[n - 1]);
        let content = match winner {
            Some(p) => p.text.clone(),
            None => format!(
                "No consensus after {} rounds: no proposal alone had the most votes and at least \
                 {} of {members}.\n{}",
                run.rounds.len(),
                self.cfg.threshold.needed(members),
                run.rounds
                    .iter()
                    .map(RoundRecord::describe_tally)
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        };
        let payload = json!({
            "consensus": winner.is_some(),
            "threshold": self.cfg.threshold.value(),
            "threshold_fraction": self.cfg.threshold.to_string(),
            "needed": self.cfg.threshold.needed(members),
            "members": self.cfg.members,
            "rounds": run.rounds.iter().map(RoundRecord::to_json).collect::<Vec<_>>(),
            "winner": winner.map(|p| json!({
                "round": last.round,
                "proposal": p.number,
                "member": p.member,
                "text": p.text,
                "votes": last.tally.leader_votes,
            })),
        });
        let decision = run
            .task
            .reply(Kind::Result, ctx.node_id(), Role::Assistant, content)
            .with_round(last.round)
            .with_payload(&payload);
        ctx.send_one("decision", decision);
        let session = run.task.session.clone();
        drop(run); // ends the phase watch
        let next = st.queued.get_mut(&session).and_then(VecDeque::pop_front);
        match next {
            Some(task) => self.start(ctx, st, task),
            None => {
                st.queued.remove(&session);
                self.exit_if_done(ctx, st);
            }
        }
    }

    fn exit_if_done(&self, ctx: &Ctx, st: &State) {
        if st.task_closed && st.runs.is_empty() && st.queued.values().all(VecDeque::is_empty) {
            ctx.exit();
        }
    }

    fn on_task(&self, ctx: &Ctx, task: Envelope) -> Result<(), Failure> {
        if matches!(
            task.kind,
            Kind::Error | Kind::Token | Kind::ToolCall | Kind::ToolResult | Kind::Vote
        ) {
            return Err(Failure::new(format!(
                "a `{}` envelope is not a question",
                task.kind
            )));
        }
        if task.content.trim().is_empty() {
            return Err(Failure::new("empty question"));
        }
        let mut st = self.state.lock().expect("consensus state");
        if st.runs.contains_key(&task.session) {
            st.queued
                .entry(task.session.clone())
                .or_default()
                .push_back(task);
        } else {
            self.start(ctx, &mut st, task);
        }
        Ok(())
    }

    /// An answer from `member` (on its input, or its error input).
    fn on_answer(
        &self,
        ctx: &Ctx,
        member: usize,
        input: &str,
        msg: Envelope,
    ) -> Result<(), Failure> {
        let answer = match msg.kind {
            Kind::Result | Kind::Message | Kind::Vote => Ok(msg.content),
            Kind::Error => Err(format!("error: {}", msg.content)),
            other => {
                return Err(Failure::new(format!(
                    "a `{other}` envelope on `{input}` is not an answer"
                )));
            }
        };
        let name = &self.cfg.members[member];
        let reply_to = msg.reply_to.unwrap_or_default();
        let mut st = self.state.lock().expect("consensus state");
        let ours = st
            .runs
            .get(&msg.session)
            .is_some_and(|r| r.waiting.get(&reply_to) == Some(name));
        if !ours {
            return Err(Failure::new(format!(
                "an answer on `{input}` to {reply_to:?}, which no phase waits for from {name} \
                 (unknown, or already over) in session {}",
                msg.session
            )));
        }
        let mut run = st.runs.remove(&msg.session).expect("checked above");
        run.waiting.remove(&reply_to);
        if let Err(why) = &answer {
            tracing::warn!(session = %msg.session, round = run.round, "{name} is absent: {why}");
        }
        run.answers[member] = Some(answer);
        if run.waiting.is_empty() {
            self.end_phase(ctx, &mut st, run);
        } else {
            st.runs.insert(msg.session, run);
        }
        Ok(())
    }

    /// A member's process has exited: it is absent from every phase waiting for it, now and
    /// later.
    fn member_gone(&self, ctx: &Ctx, member: usize) {
        let name = self.cfg.members[member].clone();
        tracing::warn!("member {name} is gone (its input closed)");
        let mut st = self.state.lock().expect("consensus state");
        st.gone.insert(name.clone());
        let sessions: Vec<String> = st
            .runs
            .iter()
            .filter(|(_, r)| r.waiting.values().any(|m| *m == name))
            .map(|(s, _)| s.clone())
            .collect();
        for session in sessions {
            let mut run = st.runs.remove(&session).expect("listed above");
            run.waiting.retain(|_, m| *m != name);
            run.answers[member] = Some(Err("gone: its process has exited".into()));
            if run.waiting.is_empty() {
                self.end_phase(ctx, &mut st, run);
            } else {
                st.runs.insert(session, run);
            }
        }
    }
}

/// `1. alice: text` lines, continuation lines indented under their proposal.
fn numbered(proposals: &[Proposal]) -> String {
    proposals
        .iter()
        .map(|p| {
            format!(
                "{}. {}: {}",
                p.number,
                p.member,
                p.text.lines().collect::<Vec<_>>().join("\n   ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[async_trait]
impl Handler for Consensus {
    async fn on_message(&self, ctx: &Ctx, input: &str, msg: Envelope) -> Result<(), Failure> {
        if input == "task" {
            return self.on_task(ctx, msg);
        }
        let member = self.member_index(input).or_else(|| {
            input
                .strip_suffix("_error")
                .and_then(|m| self.member_index(m))
        });
        match member {
            Some(i) => self.on_answer(ctx, i, input, msg),
            None => Err(Failure::new(format!(
                "unexpected input `{input}`: expected `task` or a member ({})",
                self.cfg.members.join(", ")
            ))),
        }
    }

    /// Questions still open when the node stops are answered with an error carrying the
    /// rounds so far, so none is dropped silently.
    async fn on_stop(&self, ctx: &Ctx) {
        let mut st = self.state.lock().expect("consensus state");
        for (_, run) in st.runs.drain() {
            let rounds: Vec<Value> = run.rounds.iter().map(RoundRecord::to_json).collect();
            ctx.fail(
                &run.task,
                Failure::new(format!(
                    "stopped in round {} ({} phase) before a decision",
                    run.round,
                    run.phase.as_str()
                ))
                .with_details(json!({ "rounds": rounds })),
            );
        }
        for (_, queued) in st.queued.drain() {
            for task in queued {
                ctx.fail(&task, Failure::new("stopped before this question's turn"));
            }
        }
    }

    async fn on_input_closed(&self, ctx: &Ctx, input: &str) {
        if input == "task" {
            let mut st = self.state.lock().expect("consensus state");
            st.task_closed = true;
            self.exit_if_done(ctx, &st);
        } else if let Some(i) = self.member_index(input) {
            self.member_gone(ctx, i);
        }
    }
}
