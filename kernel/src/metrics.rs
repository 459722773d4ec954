//! Prometheus metrics of a node (crate `prometheus`, text format 0.0.4), counted by the
//! kernel for every node: messages in and out, errors, handling time; mofa-llm adds LLM
//! tokens and cost per agent. Served on `GET /metrics` at `MOFA_METRICS_ADDR` (e.g.
//! `127.0.0.1:9464`; port 0 takes a free port, logged as `metrics on http://...`).
//!
//! Every series has a `node` label, so one Prometheus job can scrape a whole dataflow.

use std::net::SocketAddr;
use std::sync::LazyLock;

use prometheus::{
    CounterVec, Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    received: IntCounterVec,
    sent: IntCounterVec,
    errors: IntCounterVec,
    handle_seconds: HistogramVec,
    llm_tokens: IntCounterVec,
    llm_cost: CounterVec,
    llm_seconds: HistogramVec,
}

/// From 100 µs to ~26 s, ×4 a bucket: a script's few µs to a CPU model's long answer.
fn buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.0001, 4.0, 10).expect("valid buckets")
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets()), labels)
                .expect("a valid histogram");
            registry
                .register(Box::new(h.clone()))
                .expect("registered once");
            h
        };
        let received = counter(
            "mofa_messages_received_total",
            "Messages received, by input.",
            &["node", "input"],
        );
        let sent = counter(
            "mofa_messages_sent_total",
            "Messages sent, by output.",
            &["node", "output"],
        );
        let errors = counter(
            "mofa_errors_total",
            "Error envelopes sent on the node's `error` output.",
            &["node"],
        );
        let handle_seconds = histogram(
            "mofa_handle_duration_seconds",
            "Time the node's handler took for one message, by input (work it spawned not included).",
            &["node", "input"],
        );
        let llm_tokens = counter(
            "mofa_llm_tokens_total",
            "LLM tokens, by requesting agent, model and type (input: the prompt; output: the answer).",
            &["node", "agent", "model", "type"],
        );
        let llm_cost = CounterVec::new(
            Opts::new(
                "mofa_llm_cost_usd_total",
                "LLM cost in US dollars at the configured prices (MOFA_LLM_PRICE), by agent and model.",
            ),
            &["node", "agent", "model"],
        )
        .expect("a valid counter");
        registry
            .register(Box::new(llm_cost.clone()))
            .expect("registered once");
        let llm_seconds = histogram(
            "mofa_llm_request_duration_seconds",
            "Time from an LLM request to its whole answer, by model.",
            &["node", "model"],
        );
        Metrics {
            registry,
            received,
            sent,
            errors,
            handle_seconds,
            llm_tokens,
            llm_cost,
            llm_seconds,
        }
    }

    pub(crate) fn received(&self, node: &str, input: &str, n: usize) {
        self.received
            .with_label_values(&[node, input])
            .inc_by(n as u64);
    }

    pub(crate) fn sent(&self, node: &str, output: &str, n: usize) {
        self.sent
            .with_label_values(&[node, output])
            .inc_by(n as u64);
        if output == "error" {
            self.errors.with_label_values(&[node]).inc_by(n as u64);
        }
    }

    pub(crate) fn handled(&self, node: &str, input: &str, seconds: f64) {
        self.handle_seconds
            .with_label_values(&[node, input])
            .observe(seconds);
    }

    /// One LLM answer for `agent`: its tokens, cost and how long it took.
    pub fn llm_answer(&self, node: &str, agent: &str, model: &str, usage: &LlmUsage) {
        let tokens = |kind: &str, n: u32| {
            self.llm_tokens
                .with_label_values(&[node, agent, model, kind])
                .inc_by(u64::from(n));
        };
        tokens("input", usage.input_tokens);
        tokens("output", usage.output_tokens);
        self.llm_cost
            .with_label_values(&[node, agent, model])
            .inc_by(usage.cost_usd);
        self.llm_seconds
            .with_label_values(&[node, model])
            .observe(usage.seconds);
    }

    /// Everything, in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// What one LLM answer cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LlmUsage {
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub cost_usd: f64,
    pub seconds: f64,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// This process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Serves `GET /metrics` on `addr` until the runtime ends; returns the address bound.
pub async fn serve(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                metrics().render(),
            )
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics server: {e}");
        }
    });
    Ok(bound)
}
