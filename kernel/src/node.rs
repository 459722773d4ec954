//! The one lifecycle every node binary runs.
//!
//! A node crate is a [`Handler`] and its configuration; `main` is `node::main(Handler::from_env)`.
//! The kernel owns the rest: init from dora, decoding inputs into envelopes, the tokio event
//! loop, the `error` output, and a graceful stop that drains in-flight work within a bound.
//!
//! Threads: dora's `DoraNode` does blocking calls (and panics if called inside a tokio
//! runtime), so it lives on a thread of its own that sends what the handler queues; the event
//! loop and the handler's work run on tokio.
//!
//! Environment read here, for every node:
//! - `MOFA_STOP_TIMEOUT_MS` (default 10000): how long in-flight work may run after stop.
//! - `MOFA_TEXT_OUTPUTS`: comma-separated outputs sent as plain Utf8 (each envelope's content)
//!   instead of envelopes, for a downstream dora-hub node.
//! - `RUST_LOG`: log filter (default `info`, llama.cpp at `warn`), logs on stderr.
//! - `MOFA_WORKER_THREADS` (default: tokio's, one per core): worker threads of the node's
//!   tokio runtime.
//! - `DORA_NODE_SHM_POOL_SIZE` (dora's own, in bytes): the zenoh shared-memory pool dora opens
//!   in every node for zenoh-direct outputs. dora's default is 8 MiB, locked in memory from
//!   start; [`main`] lowers the default to [`SHM_POOL_DEFAULT`] (our dataflows' edges are
//!   `backpressure`, on dora's daemon path, which does not use the pool; a message that does
//!   not fit is sent from the heap). A node's `shared_memory_pool_size` in the YAML wins.
//! - `DORA_ZERO_COPY_THRESHOLD` (dora's own, in bytes): outputs at least this big are built in
//!   zenoh shared memory; [`main`] defaults it to never ([`ZERO_COPY_THRESHOLD_DEFAULT`]),
//!   which spares every node zenoh's SHM watchdogs. Set it (dora's default is 4096) for
//!   zero-copy outputs on edges that are not `backpressure`.
//! - `ZENOH_RUNTIME` (zenoh's own, RON): zenoh's runtimes; [`main`] defaults it to
//!   [`ZENOH_RUNTIME_DEFAULT`], one runtime with one worker instead of five with six.
//! - `MOFA_HEARTBEAT_MS` (default 1000; 0: none): across machines, how often a heartbeat goes
//!   out on each output that a node on another machine takes ([`crate::placement`]).
//! - `MOFA_METRICS_ADDR` (default: none): where to serve the node's Prometheus metrics
//!   ([`crate::metrics`]), e.g. `127.0.0.1:9464`; port 0 takes a free port, logged.
//! - `OTEL_EXPORTER_OTLP_ENDPOINT` (and OpenTelemetry's other `OTEL_*` variables): where to
//!   export the node's traces by OTLP/HTTP ([`crate::telemetry`]); no traces without it.
//! - `MOFA_PEER_TIMEOUT_MS` (default 10000; 0: never; at least twice `MOFA_HEARTBEAT_MS`): how
//!   long an input from another machine may be silent, once its sender has been heard from,
//!   before the kernel treats it as closed: the handler gets [`Handler::on_input_closed`] and
//!   [`Ctx::lost`] says which machine was lost.
//!
//! Heartbeats are `control` envelopes marked by the `mofa.heartbeat` metadata parameter; the
//! receiving kernel takes them and never hands them to the handler. When every node runs on one
//! machine there are none. A node whose inputs are all closed, some of them lost, ends as if
//! dora had closed them all.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dora_node_api::{DoraNode, Event, EventStream, MetadataParameters, Parameter};
use futures::StreamExt;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::{self, ConfigError};
use crate::envelope::{self, Envelope, Kind, Role, SCHEMA, SCHEMA_KEY};
use crate::metrics::metrics;
use crate::placement::{self, Peer, Placement};
use crate::telemetry::{self, TRACE_KEY, Traces};

/// The dora metadata parameter that marks a heartbeat; its value is the sender's machine.
pub const HEARTBEAT_KEY: &str = "mofa.heartbeat";

/// An input the kernel closed because the machine of its sender went silent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    /// The node that fed the input.
    pub node: String,
    /// Its machine (`deploy.machine`).
    pub machine: String,
    /// How long it had been silent when the input was closed.
    pub silent: Duration,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "machine `{}` was lost (no heartbeat from node `{}` for {} ms)",
            self.machine,
            self.node,
            self.silent.as_millis()
        )
    }
}

/// Why a message could not be handled. It becomes an `error` envelope answering the message.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub message: String,
    pub details: serde_json::Value,
}

impl Failure {
    pub fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            details: serde_json::Value::Null,
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::new(e.to_string())
    }
}

/// A node's behaviour. Every method runs on the event loop, in event order: return quickly and
/// hand slow work (an HTTP call, a model) to [`Ctx::spawn`], so one slow message does not hold
/// up the next.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Once, before the first input. A source emits its tasks here.
    async fn on_start(&self, _ctx: &Ctx) -> Result<(), Failure> {
        Ok(())
    }

    /// One message that arrived on `input` (a batch is handed over row by row, in order).
    /// An `Err` becomes an `error` envelope answering `msg`; the node goes on.
    async fn on_message(&self, ctx: &Ctx, input: &str, msg: Envelope) -> Result<(), Failure>;

    /// [`on_message`](Self::on_message) with the string parameters of the dora metadata the
    /// message came with (the envelope schema marker left out). Override it to read them.
    async fn on_message_meta(
        &self,
        ctx: &Ctx,
        input: &str,
        msg: Envelope,
        _meta: &Meta,
    ) -> Result<(), Failure> {
        self.on_message(ctx, input, msg).await
    }

    /// The sender of `input` has exited, or its machine was lost ([`Ctx::lost`] says which);
    /// nothing more will come on it.
    async fn on_input_closed(&self, _ctx: &Ctx, _input: &str) {}

    /// After the event loop ends and in-flight work is drained: flush state here.
    async fn on_stop(&self, _ctx: &Ctx) {}
}

/// A message's dora metadata parameters that are strings, by name.
pub type Meta = std::collections::BTreeMap<String, String>;

enum Outgoing {
    Send {
        output: String,
        batch: Vec<Envelope>,
        /// Extra dora metadata parameters for this send (besides the schema).
        meta: Vec<(String, String)>,
        /// Each row's `traceparent` when traces are on, else empty.
        traces: Vec<String>,
    },
    Close,
}

struct Shared {
    node_id: String,
    /// The running dataflow as dora describes it (JSON); `Null` when dora gives none (tests).
    descriptor: serde_json::Value,
    traces: Traces,
    /// Inputs closed because their sender's machine went silent.
    lost: Mutex<BTreeMap<String, Lost>>,
    out: mpsc::UnboundedSender<Outgoing>,
    tasks: Mutex<JoinSet<()>>,
    exit: Notify,
}

/// What a handler uses to act: send envelopes, report failures, spawn work, end the node.
/// Cheap to clone; clones share the node.
#[derive(Clone)]
pub struct Ctx {
    shared: Arc<Shared>,
}

impl Ctx {
    /// The node's id in the dataflow.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// The running dataflow's descriptor as JSON (`nodes`, each with `id`, `inputs`,
    /// `outputs`, ...); `Null` when dora gave none, as under `DoraNode::init_testing`.
    pub fn descriptor(&self) -> &serde_json::Value {
        &self.shared.descriptor
    }

    /// Whether `input` was closed because the machine of its sender was lost, and which.
    pub fn lost(&self, input: &str) -> Option<Lost> {
        self.shared
            .lost
            .lock()
            .expect("lost lock")
            .get(input)
            .cloned()
    }

    /// Queues `batch` on `output` (one Arrow array, a row each).
    pub fn send(&self, output: &str, batch: Vec<Envelope>) {
        self.send_with_meta(output, batch, Vec::new());
    }

    /// [`send`](Self::send) with extra dora metadata parameters (string values), e.g. the
    /// version of the script that made the batch.
    pub fn send_with_meta(&self, output: &str, batch: Vec<Envelope>, meta: Vec<(String, String)>) {
        if batch.is_empty() {
            return;
        }
        metrics().sent(self.node_id(), output, batch.len());
        let traces = if telemetry::on() {
            batch
                .iter()
                .map(|m| self.shared.traces.send(output, m))
                .collect()
        } else {
            Vec::new()
        };
        let _ = self.shared.out.send(Outgoing::Send {
            output: output.to_owned(),
            batch,
            meta,
            traces,
        });
    }

    /// Traces the envelopes that answer `msg` (by `reply_to`) under `span`, e.g. the requests
    /// an agent makes for a task under the span of its work on the task.
    pub fn trace_replies_under(&self, msg: &Envelope, span: &tracing::Span) {
        if telemetry::on() {
            self.shared.traces.replies_under(msg, span);
        }
    }

    /// Makes `span` a child of the span that received `msg` (or of its session's), in the
    /// session's trace: a node's own spans, e.g. an LLM call, join the trace of what they do.
    pub fn trace_within(&self, span: &tracing::Span, msg: &Envelope) {
        if telemetry::on() {
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            let _ = span.set_parent(self.shared.traces.parent_of(msg));
        }
    }

    pub fn send_one(&self, output: &str, msg: Envelope) {
        self.send(output, vec![msg]);
    }

    /// Logs the failure and sends an `error` envelope answering `cause` on the `error` output.
    pub fn fail(&self, cause: &Envelope, failure: Failure) {
        self.send_one("error", self.error_envelope(cause, failure));
    }

    /// Like [`fail`](Self::fail), and also answers the requester on `output`: a
    /// request/response node always answers, so nobody waits for a reply that will not come.
    pub fn reply_error(&self, output: &str, cause: &Envelope, failure: Failure) {
        let err = self.error_envelope(cause, failure);
        self.send_one(output, err.clone());
        self.send_one("error", err);
    }

    fn error_envelope(&self, cause: &Envelope, failure: Failure) -> Envelope {
        tracing::warn!(session = %cause.session, reply_to = %cause.id, "{}", failure.message);
        let mut details = match failure.details {
            serde_json::Value::Null => serde_json::json!({}),
            d @ serde_json::Value::Object(_) => d,
            d => serde_json::json!({ "details": d }),
        };
        details["input_kind"] = cause.kind.as_str().into();
        cause.error_reply(self.node_id(), failure.message, details)
    }

    /// Runs `work` concurrently with the event loop. If it fails, the failure answers `cause`.
    /// In-flight work is awaited (within `MOFA_STOP_TIMEOUT_MS`) when the node stops.
    pub fn spawn<F>(&self, cause: Envelope, work: F)
    where
        F: Future<Output = Result<(), Failure>> + Send + 'static,
    {
        let ctx = self.clone();
        let mut tasks = self.shared.tasks.lock().expect("task set lock");
        // Reap finished tasks so the set does not grow with the node's lifetime.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            if let Err(failure) = work.await {
                ctx.fail(&cause, failure);
            }
        });
    }

    /// A deadline for something awaited (an answer, a phase): `on_timeout` runs if `timeout`
    /// passes before the returned [`Deadline`] is dropped. A deadline is not in-flight work: a
    /// stopping node does not wait for it.
    pub fn deadline<F>(&self, timeout: Duration, on_timeout: F) -> Deadline
    where
        F: FnOnce() + Send + 'static,
    {
        let task = tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            on_timeout();
        });
        Deadline(task.abort_handle())
    }

    /// Ends the node once the current event is handled: in-flight work drains, then it exits.
    pub fn exit(&self) {
        self.shared.exit.notify_one();
    }
}

/// Cancels its timeout when dropped (see [`Ctx::deadline`]).
#[must_use = "the deadline is cancelled when dropped"]
pub struct Deadline(tokio::task::AbortHandle);

impl Drop for Deadline {
    fn drop(&mut self) {
        // From inside its own `on_timeout` this is a no-op: the callback has no await to stop at.
        self.0.abort();
    }
}

/// The zenoh shared-memory pool of a node when `DORA_NODE_SHM_POOL_SIZE` is not set: 1 MiB
/// instead of dora's 8 MiB, which every node holds resident from start (see the module doc).
pub const SHM_POOL_DEFAULT: usize = 1 << 20;

/// dora's `DORA_ZERO_COPY_THRESHOLD` when not set: never. dora allocates every output of at
/// least that many bytes (4096 by default) in zenoh shared memory; the first such allocation
/// starts zenoh's SHM watchdogs for good (~10 MB of heap, a 1.3 MB segment and two threads per
/// process; measured in BENCHMARKS.md, "Edge"). Our edges are `backpressure`, on dora's daemon
/// path, which copies a shared-memory sample out into a plain message anyway.
pub const ZERO_COPY_THRESHOLD_DEFAULT: usize = usize::MAX;

/// zenoh's runtimes when `ZENOH_RUNTIME` is not set: all handed over to one (`app`, one
/// worker) instead of five with six workers (rx has two), each with its own thread and stack.
/// A node's zenoh traffic is dora's control and local data path, light at the rates our nodes
/// run at; set `ZENOH_RUNTIME` (zenoh's RON syntax) to give it more.
pub const ZENOH_RUNTIME_DEFAULT: &str =
    "(rx: (handover: app), acc: (handover: app), tx: (handover: app), net: (handover: app))";

/// The process-wide defaults above; each only when its variable is not set.
fn set_process_defaults() {
    if std::env::var_os("DORA_NODE_SHM_POOL_SIZE").is_none() {
        // SAFETY: the first thing the node's `main` does: no other thread exists yet that
        // could read the environment at the same time.
        unsafe { std::env::set_var("DORA_NODE_SHM_POOL_SIZE", SHM_POOL_DEFAULT.to_string()) };
    }
    if std::env::var_os("DORA_ZERO_COPY_THRESHOLD").is_none() {
        // SAFETY: as above; dora reads it in its init.
        let never = ZERO_COPY_THRESHOLD_DEFAULT.to_string();
        unsafe { std::env::set_var("DORA_ZERO_COPY_THRESHOLD", never) };
    }
    if std::env::var_os("ZENOH_RUNTIME").is_none() {
        // SAFETY: as above; zenoh reads it when its first runtime starts, in dora's init.
        unsafe { std::env::set_var("ZENOH_RUNTIME", ZENOH_RUNTIME_DEFAULT) };
    }
}

/// Builds the handler from the environment and runs the node until it stops.
/// A configuration error ends the process with code 2 and a message naming the variable.
pub fn main<H: Handler>(make: impl FnOnce() -> Result<H, ConfigError>) -> ExitCode {
    set_process_defaults();
    init_logging();
    let code = run_main(make);
    telemetry::shutdown();
    code
}

fn run_main<H: Handler>(make: impl FnOnce() -> Result<H, ConfigError>) -> ExitCode {
    let handler = match make() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let (node, events) = match DoraNode::init_from_env() {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("could not connect to dora: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!("node {} started, pid={}", node.id(), std::process::id());
    match run(node, events, handler) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, which dora keeps per node (`dora logs`); spans also go by OTLP when an
/// endpoint is set ([`crate::telemetry`]), as the service named like the node.
pub fn init_logging() {
    use tracing_subscriber::filter::FilterExt;
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // llama.cpp reports every load and context detail at info: keep its warnings only.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,llama_cpp_2=warn"));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        // The trace spans go to OTLP only: in the log they would prefix every line.
        .with_filter(filter.and(tracing_subscriber::filter::filter_fn(|m| {
            !(m.is_span() && m.target() == telemetry::TARGET)
        })));
    let service = telemetry::node_id_from_env().unwrap_or_else(|| "mofa".into());
    let _ = tracing_subscriber::registry()
        .with(telemetry::otel_layer(&service))
        .with(logs)
        .try_init();
}

/// Runs `handler` on an initialised node (from dora, or from `DoraNode::init_testing` in
/// tests). Call it outside any tokio runtime: it makes its own.
pub fn run<H: Handler>(node: DoraNode, events: EventStream, handler: H) -> Result<(), ConfigError> {
    let stop_timeout = config::millis_or("MOFA_STOP_TIMEOUT_MS", Duration::from_secs(10))?;
    let workers = config::optional("MOFA_WORKER_THREADS")
        .map(|_| config::parse_or("MOFA_WORKER_THREADS", std::num::NonZeroUsize::MIN))
        .transpose()?;
    let text_outputs: HashSet<String> = config::optional("MOFA_TEXT_OUTPUTS")
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
        .unwrap_or_default();
    let metrics_addr = config::optional("MOFA_METRICS_ADDR")
        .map(|v| {
            v.parse::<std::net::SocketAddr>()
                .map_err(|e| ConfigError::invalid("MOFA_METRICS_ADDR", &v, e))
        })
        .transpose()?;
    let heartbeat = config::millis_or("MOFA_HEARTBEAT_MS", Duration::from_secs(1))?;
    let peer_timeout = config::millis_or("MOFA_PEER_TIMEOUT_MS", Duration::from_secs(10))?;
    check_peer_timeout(heartbeat, peer_timeout)?;

    let node_id = node.id().to_string();
    let descriptor = node
        .dataflow_descriptor()
        .ok()
        .and_then(|d| serde_json::to_value(d).ok())
        .unwrap_or_default();
    let placement = if descriptor.is_null() {
        Placement::default()
    } else {
        Placement::from_descriptor(&node_id, &descriptor)
    };
    if placement.is_distributed() {
        tracing::info!(
            "on machine `{}`; inputs from other machines: {:?}; outputs to other machines: {:?}",
            placement::machine_name(placement.machine.as_deref()),
            placement.remote_inputs.keys().collect::<Vec<_>>(),
            placement.remote_outputs
        );
    }
    let watch = Watch {
        open: node
            .node_config()
            .inputs
            .keys()
            .map(|k| k.to_string())
            .collect(),
        remote: placement.remote_inputs.clone(),
        heard: HashMap::new(),
        timeout: peer_timeout,
        any_lost: false,
    };
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let beating: Vec<String> = placement
        .remote_outputs
        .iter()
        .filter(|o| !text_outputs.contains(*o))
        .cloned()
        .collect();
    if !heartbeat.is_zero() && !beating.is_empty() {
        let machine = placement::machine_name(placement.machine.as_deref());
        let (tx, id) = (out_tx.clone(), node_id.clone());
        std::thread::Builder::new()
            .name("mofa-heartbeat".into())
            .spawn(move || heartbeat_loop(tx, id, machine, beating, heartbeat))
            .expect("spawn heartbeat thread");
    }
    let sender = std::thread::Builder::new()
        .name("dora-output".into())
        .spawn(move || send_loop(node, out_rx, text_outputs))
        .expect("spawn output thread");

    let ctx = Ctx {
        shared: Arc::new(Shared {
            node_id,
            descriptor,
            traces: Traces::default(),
            lost: Mutex::new(BTreeMap::new()),
            out: out_tx.clone(),
            tasks: Mutex::new(JoinSet::new()),
            exit: Notify::new(),
        }),
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        runtime.worker_threads(n.get());
    }
    let runtime = runtime.enable_all().build().expect("tokio runtime");
    if let Some(addr) = metrics_addr {
        match runtime.block_on(crate::metrics::serve(addr)) {
            Ok(bound) => tracing::info!("metrics on http://{bound}/metrics"),
            Err(e) => {
                return Err(ConfigError::invalid(
                    "MOFA_METRICS_ADDR",
                    addr.to_string(),
                    format!("cannot listen there: {e}"),
                ));
            }
        }
    }
    let events = runtime.block_on(event_loop(ctx, events, handler, stop_timeout, watch));
    drop(runtime);
    let _ = out_tx.send(Outgoing::Close);
    let _ = sender.join();
    // Dropped last, outside the runtime: dora's stream does blocking calls on drop.
    drop(events);
    Ok(())
}

/// A peer timeout shorter than two heartbeats would take live machines for lost.
fn check_peer_timeout(heartbeat: Duration, timeout: Duration) -> Result<(), ConfigError> {
    if !timeout.is_zero() && !heartbeat.is_zero() && timeout < heartbeat * 2 {
        return Err(ConfigError::invalid(
            "MOFA_PEER_TIMEOUT_MS",
            timeout.as_millis().to_string(),
            format!(
                "must be at least twice MOFA_HEARTBEAT_MS ({} ms), or a live machine would be \
                 taken for lost",
                heartbeat.as_millis()
            ),
        ));
    }
    Ok(())
}

/// Sends a heartbeat on each of `outputs` every `every`, until the node's output channel
/// closes.
fn heartbeat_loop(
    out: mpsc::UnboundedSender<Outgoing>,
    node_id: String,
    machine: String,
    outputs: Vec<String>,
    every: Duration,
) {
    loop {
        for output in &outputs {
            let beat = Envelope::new(Kind::Control, &node_id, Role::System, "heartbeat");
            let sent = out.send(Outgoing::Send {
                output: output.clone(),
                batch: vec![beat],
                meta: vec![(HEARTBEAT_KEY.to_owned(), machine.clone())],
                traces: Vec::new(),
            });
            if sent.is_err() {
                return;
            }
        }
        std::thread::sleep(every);
    }
}

/// The inputs still open, and when the senders on other machines were last heard from.
struct Watch {
    open: BTreeSet<String>,
    /// Inputs fed from another machine.
    remote: BTreeMap<String, Peer>,
    /// Sender node → when a message or heartbeat last came from it.
    heard: HashMap<String, Instant>,
    /// Silence after which an input is lost (zero: never).
    timeout: Duration,
    /// Whether an input was closed as lost: then dora will not end the stream by itself.
    any_lost: bool,
}

impl Watch {
    fn watching(&self) -> bool {
        !self.remote.is_empty() && !self.timeout.is_zero()
    }

    /// Open inputs whose sender, heard from before, has been silent past the timeout.
    fn silent(&self, now: Instant) -> Vec<(String, Lost)> {
        self.remote
            .iter()
            .filter(|(input, _)| self.open.contains(*input))
            .filter_map(|(input, peer)| {
                let silent = now.duration_since(*self.heard.get(&peer.node)?);
                (silent > self.timeout).then(|| {
                    let lost = Lost {
                        node: peer.node.clone(),
                        machine: peer.machine.clone(),
                        silent,
                    };
                    (input.clone(), lost)
                })
            })
            .collect()
    }

    /// Every input is closed, some as lost: dora would never end the stream.
    fn done(&self) -> bool {
        self.any_lost && self.open.is_empty()
    }
}

async fn event_loop<H: Handler>(
    ctx: Ctx,
    mut events: EventStream,
    handler: H,
    stop_timeout: Duration,
    mut watch: Watch,
) -> EventStream {
    if let Err(f) = handler.on_start(&ctx).await {
        let cause = Envelope::new(Kind::Control, ctx.node_id(), Role::System, "start");
        ctx.fail(&cause, f);
    }
    let mut ticker = watch.watching().then(|| {
        let period = (watch.timeout / 5).clamp(Duration::from_millis(20), Duration::from_secs(1));
        let mut t = tokio::time::interval(period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    loop {
        let event = tokio::select! {
            biased;
            _ = ctx.shared.exit.notified() => break,
            _ = async {
                match ticker.as_mut() {
                    Some(t) => { t.tick().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {
                for (input, lost) in watch.silent(Instant::now()) {
                    tracing::error!("{lost}: input `{input}` closed");
                    watch.open.remove(&input);
                    watch.any_lost = true;
                    ctx.shared.lost.lock().expect("lost lock").insert(input.clone(), lost);
                    handler.on_input_closed(&ctx, &input).await;
                }
                if watch.done() {
                    tracing::info!("every input is closed, some lost with their machine: ending");
                    break;
                }
                continue;
            }
            event = events.next() => event,
        };
        match event {
            Some(Event::Input { id, metadata, data }) => {
                let input = id.as_str();
                if let Some(peer) = watch.remote.get(input) {
                    if ctx.lost(input).is_some() {
                        tracing::warn!(
                            "input `{input}` was lost with its machine: message dropped"
                        );
                        continue;
                    }
                    watch.heard.insert(peer.node.clone(), Instant::now());
                }
                if metadata.parameters.contains_key(HEARTBEAT_KEY) {
                    continue;
                }
                match envelope::from_arrow(data.as_array().as_ref(), input) {
                    Ok(batch) => {
                        metrics().received(ctx.node_id(), input, batch.len());
                        let meta: Meta = metadata
                            .parameters
                            .iter()
                            .filter(|(k, _)| k.as_str() != SCHEMA_KEY && k.as_str() != TRACE_KEY)
                            .filter_map(|(k, v)| match v {
                                Parameter::String(s) => Some((k.clone(), s.clone())),
                                _ => None,
                            })
                            .collect();
                        let parents: Vec<&str> = match metadata.parameters.get(TRACE_KEY) {
                            Some(Parameter::String(s)) => s.split(' ').collect(),
                            _ => Vec::new(),
                        };
                        for (i, msg) in batch.into_iter().enumerate() {
                            let cause = msg.clone();
                            let span =
                                ctx.shared
                                    .traces
                                    .receive(input, &msg, parents.get(i).copied());
                            let started = Instant::now();
                            let handled = handler
                                .on_message_meta(&ctx, input, msg, &meta)
                                .instrument(span)
                                .await;
                            metrics().handled(
                                ctx.node_id(),
                                input,
                                started.elapsed().as_secs_f64(),
                            );
                            if let Err(f) = handled {
                                ctx.fail(&cause, f);
                            }
                        }
                    }
                    Err(e) => {
                        metrics().received(ctx.node_id(), input, 1);
                        let array = data.as_array();
                        let cause = Envelope::new(Kind::Message, input, Role::User, "")
                            .with_session(envelope::new_id());
                        let preview: String = format!("{array:?}").chars().take(300).collect();
                        let schema = match metadata.parameters.get(SCHEMA_KEY) {
                            Some(Parameter::String(s)) => s.clone(),
                            _ => String::new(),
                        };
                        ctx.fail(
                            &cause,
                            Failure::new(format!("malformed message on input `{input}`: {e}"))
                                .with_details(serde_json::json!({
                                    "input": input,
                                    "data_type": array.data_type().to_string(),
                                    "rows": array.len(),
                                    "schema": schema,
                                    "preview": preview,
                                })),
                        );
                    }
                }
            }
            Some(Event::InputClosed { id }) => {
                let input = id.as_str();
                if ctx.lost(input).is_some() {
                    continue;
                }
                watch.open.remove(input);
                handler.on_input_closed(&ctx, input).await;
                if watch.done() {
                    break;
                }
            }
            Some(Event::Stop(cause)) => {
                tracing::debug!("stop: {cause:?}");
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    drain(&ctx, stop_timeout).await;
    handler.on_stop(&ctx).await;
    events
}

/// Awaits in-flight work for at most `bound`, then cancels what is left.
async fn drain(ctx: &Ctx, bound: Duration) {
    let mut tasks = std::mem::take(&mut *ctx.shared.tasks.lock().expect("task set lock"));
    let left =
        tokio::time::timeout(bound, async { while tasks.join_next().await.is_some() {} }).await;
    if left.is_err() {
        tracing::warn!(
            "stop: {} task(s) still running after {} ms, cancelled",
            tasks.len(),
            bound.as_millis()
        );
        tasks.shutdown().await;
    }
}

/// One array to send: output, metadata parameters, rows, their `traceparent`s.
type Batch = (String, Vec<(String, String)>, Vec<Envelope>, Vec<String>);

/// Most rows sent in one Arrow array when messages queue up.
const MAX_BATCH_ROWS: usize = 256;

/// Sends what the handler queues. When several messages are waiting, those for the same output
/// go out as one batch (one array, a row each): every dora send is a blocking round trip, and
/// under load one send per message is what limits throughput. Order within an output is kept.
fn send_loop(
    mut node: DoraNode,
    mut out: mpsc::UnboundedReceiver<Outgoing>,
    text_outputs: HashSet<String>,
) {
    while let Some(Outgoing::Send {
        output,
        batch,
        meta,
        traces,
    }) = out.blocking_recv()
    {
        let mut pending: Vec<Batch> = vec![(output, meta, batch, traces)];
        let mut rows = pending[0].2.len();
        let mut closing = false;
        while rows < MAX_BATCH_ROWS {
            match out.try_recv() {
                Ok(Outgoing::Send {
                    output,
                    batch,
                    meta,
                    traces,
                }) => {
                    rows += batch.len();
                    // Joins the output's latest batch if their metadata match; otherwise a
                    // new array follows it, so the order on each output holds.
                    match pending.iter_mut().rev().find(|(o, _, _, _)| *o == output) {
                        Some((_, m, queued, queued_traces)) if *m == meta => {
                            queued.extend(batch);
                            queued_traces.extend(traces);
                        }
                        _ => pending.push((output, meta, batch, traces)),
                    }
                }
                Ok(Outgoing::Close) => {
                    closing = true;
                    break;
                }
                Err(_) => break,
            }
        }
        for (output, meta, batch, traces) in pending {
            let mut params = MetadataParameters::default();
            for (k, v) in meta {
                params.insert(k, Parameter::String(v));
            }
            if !traces.is_empty() && traces.len() == batch.len() {
                params.insert(TRACE_KEY.into(), Parameter::String(traces.join(" ")));
            }
            let array = if text_outputs.contains(&output) {
                envelope::to_text_arrow(&batch)
            } else {
                params.insert(SCHEMA_KEY.into(), Parameter::String(SCHEMA.into()));
                envelope::to_arrow(&batch)
            };
            if let Err(e) = node.send_output(output.clone().into(), params, array) {
                tracing::error!("could not send on `{output}`: {e}");
            }
        }
        if closing {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch() -> Watch {
        let peer = |node: &str, machine: &str| Peer {
            node: node.into(),
            machine: machine.into(),
        };
        Watch {
            open: ["task", "llm", "tools", "catalog"].map(String::from).into(),
            remote: BTreeMap::from([
                ("llm".to_owned(), peer("llm", "gpu")),
                ("tools".to_owned(), peer("tools", "edge2")),
                ("catalog".to_owned(), peer("tools", "edge2")),
            ]),
            heard: HashMap::new(),
            timeout: Duration::from_secs(10),
            any_lost: false,
        }
    }

    #[test]
    fn an_input_is_lost_once_its_sender_heard_from_is_silent_past_the_timeout() {
        let mut w = watch();
        let t0 = Instant::now();
        assert!(w.watching());
        // Never heard from: not watched yet (a sender that sends no heartbeats is no MoFA node).
        assert!(w.silent(t0 + Duration::from_secs(60)).is_empty());
        w.heard.insert("tools".into(), t0);
        w.heard.insert("llm".into(), t0 + Duration::from_secs(5));
        assert!(
            w.silent(t0 + Duration::from_secs(10)).is_empty(),
            "not past it"
        );
        let lost = w.silent(t0 + Duration::from_millis(10_001));
        let inputs: Vec<&str> = lost.iter().map(|(i, _)| i.as_str()).collect();
        assert_eq!(
            inputs,
            ["catalog", "tools"],
            "both inputs from the silent node"
        );
        assert_eq!(lost[0].1.machine, "edge2");
        assert_eq!(
            lost[1].1.to_string(),
            "machine `edge2` was lost (no heartbeat from node `tools` for 10001 ms)"
        );
        // A closed input is not lost again; every input closed with some lost ends the node.
        w.open.remove("catalog");
        w.open.remove("tools");
        w.any_lost = true;
        assert!(
            w.silent(t0 + Duration::from_secs(60)).len() == 1,
            "llm only"
        );
        assert!(!w.done());
        w.open.clear();
        assert!(w.done());
    }

    #[test]
    fn the_peer_timeout_must_cover_two_heartbeats() {
        let ms = Duration::from_millis;
        assert!(check_peer_timeout(ms(1000), ms(10_000)).is_ok());
        assert!(check_peer_timeout(ms(1000), ms(2000)).is_ok());
        assert!(check_peer_timeout(ms(0), ms(100)).is_ok(), "no heartbeats");
        assert!(check_peer_timeout(ms(1000), ms(0)).is_ok(), "never lost");
        let e = check_peer_timeout(ms(1000), ms(1500))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("MOFA_PEER_TIMEOUT_MS=\"1500\" is invalid")
                && e.contains("twice MOFA_HEARTBEAT_MS (1000 ms)"),
            "{e}"
        );
    }

    #[test]
    fn nothing_is_watched_on_one_machine_or_with_no_timeout() {
        let mut w = watch();
        w.timeout = Duration::ZERO;
        assert!(!w.watching());
        let mut w = watch();
        w.remote.clear();
        assert!(!w.watching());
        w.open.clear();
        assert!(!w.done(), "inputs closed by dora: dora ends the stream");
    }
}
