//! What the dashboard adds up from the tapped messages: per tapped edge the total, the rate over
//! the last [`RATE_WINDOW_MS`] and the latest message; per agent the tokens and cost of its LLM
//! answers; per node the errors it sent. Times are passed in (Unix milliseconds, when the
//! dashboard got the message), so the figures are a function of what came and when.

use std::collections::{BTreeMap, VecDeque};

use mofa_kernel::{Envelope, Kind, Role};
use serde::Serialize;
use serde_json::Value;

use crate::graph::Graph;

/// The window the message rate is averaged over.
pub const RATE_WINDOW_MS: i64 = 10_000;
/// The longest content preview, in characters (an ellipsis included when cut).
pub const PREVIEW_CHARS: usize = 200;
/// How many of a node's latest errors are kept.
pub const LAST_ERRORS: usize = 5;

/// One tapped message, as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageView {
    /// The tapped output, `source/output`.
    pub edge: String,
    /// The dashboard's input it came on.
    pub input: String,
    pub kind: String,
    pub sender: String,
    pub session: String,
    /// The content (or, when empty, the payload: an answer that only calls tools) cut to
    /// [`PREVIEW_CHARS`].
    pub preview: String,
    /// When the message was made (its `ts_ms`).
    pub ts_ms: i64,
    /// When the dashboard got it.
    pub seen_ms: i64,
}

/// An error a node sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorView {
    pub edge: String,
    pub session: String,
    pub message: String,
    pub ts_ms: i64,
}

/// Tokens and cost of one agent's LLM answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AgentUsage {
    /// LLM answers that carried usage.
    pub calls: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cost_usd: f64,
    /// The model of the latest answer.
    pub model: String,
}

/// A node's errors: how many, and the latest few (oldest first).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeErrors {
    pub count: u64,
    pub last: VecDeque<ErrorView>,
}

/// One tapped edge's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EdgeFigures {
    pub total: u64,
    /// Messages per second over the last [`RATE_WINDOW_MS`].
    pub rate: f64,
    pub last: Option<MessageView>,
}

/// Everything the page shows besides the graph (`GET /api/state`, and the `stats` event).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    pub now_ms: i64,
    /// Every message tapped so far.
    pub messages: u64,
    /// By tapped output (`source/output`); every tapped output is listed, with or without
    /// traffic.
    pub edges: BTreeMap<String, EdgeFigures>,
    pub agents: BTreeMap<String, AgentUsage>,
    pub errors: BTreeMap<String, NodeErrors>,
}

#[derive(Debug, Default)]
struct EdgeState {
    total: u64,
    /// Arrival times within the rate window, oldest first.
    arrivals: VecDeque<i64>,
    last: Option<MessageView>,
}

impl EdgeState {
    fn prune(&mut self, now_ms: i64) {
        while self
            .arrivals
            .front()
            .is_some_and(|t| *t <= now_ms - RATE_WINDOW_MS)
        {
            self.arrivals.pop_front();
        }
    }
}

/// The running totals.
#[derive(Debug, Default)]
pub struct Board {
    graph: Graph,
    messages: u64,
    edges: BTreeMap<String, EdgeState>,
    agents: BTreeMap<String, AgentUsage>,
    errors: BTreeMap<String, NodeErrors>,
}

/// `text` cut to [`PREVIEW_CHARS`] characters, the last one an ellipsis when cut.
pub fn preview(text: &str) -> String {
    if text.chars().count() <= PREVIEW_CHARS {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(PREVIEW_CHARS - 1).collect();
    cut.push('…');
    cut
}

fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

impl Board {
    pub fn new(graph: Graph) -> Board {
        let edges = graph
            .taps
            .values()
            .map(|t| (t.edge.clone(), EdgeState::default()))
            .collect();
        Board {
            graph,
            edges,
            ..Board::default()
        }
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Takes in `msg`, which came on the dashboard's input `input` at `now_ms`. Any envelope is
    /// taken: a payload that is not JSON, or has no usable usage, counts as a plain message.
    pub fn record(&mut self, input: &str, msg: &Envelope, now_ms: i64) -> MessageView {
        let tap = self.graph.tap(input);
        let shown = if msg.content.is_empty() {
            msg.payload.as_deref().unwrap_or_default()
        } else {
            msg.content.as_str()
        };
        let view = MessageView {
            edge: tap.edge.clone(),
            input: input.to_owned(),
            kind: msg.kind.as_str().to_owned(),
            sender: msg.sender.clone(),
            session: msg.session.clone(),
            preview: preview(shown),
            ts_ms: msg.ts_ms,
            seen_ms: now_ms,
        };
        self.messages += 1;
        let edge = self.edges.entry(tap.edge.clone()).or_default();
        edge.total += 1;
        edge.arrivals.push_back(now_ms);
        edge.prune(now_ms);
        edge.last = Some(view.clone());

        if msg.kind == Kind::Error {
            let errors = self.errors.entry(msg.sender.clone()).or_default();
            errors.count += 1;
            errors.last.push_back(ErrorView {
                edge: tap.edge.clone(),
                session: msg.session.clone(),
                message: preview(&msg.content),
                ts_ms: msg.ts_ms,
            });
            while errors.last.len() > LAST_ERRORS {
                errors.last.pop_front();
            }
        }

        // An LLM answer (ChatResponse::to_envelope: an assistant `message`): its payload's
        // `usage` counts toward the agent it names, else the node the tapped edge feeds. An
        // agent's `result` carries its task's summed usage too: counting it would count twice.
        let payload = msg.payload_json().unwrap_or(Value::Null);
        if msg.kind == Kind::Message && msg.role == Role::Assistant && payload["usage"].is_object()
        {
            let usage = &payload["usage"];
            let agent = payload["agent"]
                .as_str()
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .or_else(|| tap.receivers.first().cloned())
                .unwrap_or_else(|| msg.sender.clone());
            let a = self.agents.entry(agent).or_default();
            a.calls += 1;
            a.prompt_tokens += count(&usage["prompt_tokens"]);
            a.completion_tokens += count(&usage["completion_tokens"]);
            a.total_tokens += count(&usage["total_tokens"]);
            a.cost_usd += payload["cost_usd"]
                .as_f64()
                .filter(|c| c.is_finite() && *c >= 0.0)
                .unwrap_or(0.0);
            if let Some(model) = payload["model"].as_str() {
                a.model = model.to_owned();
            }
        }
        view
    }

    /// The figures at `now_ms`.
    pub fn snapshot(&mut self, now_ms: i64) -> Snapshot {
        let edges = self
            .edges
            .iter_mut()
            .map(|(k, e)| {
                e.prune(now_ms);
                let in_window = e.arrivals.iter().filter(|t| **t <= now_ms).count();
                let figures = EdgeFigures {
                    total: e.total,
                    rate: in_window as f64 * 1000.0 / RATE_WINDOW_MS as f64,
                    last: e.last.clone(),
                };
                (k.clone(), figures)
            })
            .collect();
        Snapshot {
            now_ms,
            messages: self.messages,
            edges,
            agents: self.agents.clone(),
            errors: self.errors.clone(),
        }
    }
}
