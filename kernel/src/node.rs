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

use std::collections::HashSet;
use std::future::Future;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dora_node_api::{DoraNode, Event, EventStream, MetadataParameters, Parameter};
use futures::StreamExt;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

use crate::config::{self, ConfigError};
use crate::envelope::{self, Envelope, Kind, Role, SCHEMA, SCHEMA_KEY};

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

    /// The sender of `input` has exited; nothing more will come on it.
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
    },
    Close,
}

struct Shared {
    node_id: String,
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
        let _ = self.shared.out.send(Outgoing::Send {
            output: output.to_owned(),
            batch,
            meta,
        });
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

/// Builds the handler from the environment and runs the node until it stops.
/// A configuration error ends the process with code 2 and a message naming the variable.
pub fn main<H: Handler>(make: impl FnOnce() -> Result<H, ConfigError>) -> ExitCode {
    if std::env::var_os("DORA_NODE_SHM_POOL_SIZE").is_none() {
        // SAFETY: the first thing the node's `main` does: no other thread exists yet that
        // could read the environment at the same time.
        unsafe { std::env::set_var("DORA_NODE_SHM_POOL_SIZE", SHM_POOL_DEFAULT.to_string()) };
    }
    init_logging();
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

/// Logs go to stderr, which dora keeps per node (`dora logs`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // llama.cpp reports every load and context detail at info: keep its warnings only.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,llama_cpp_2=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// Runs `handler` on an initialised node (from dora, or from `DoraNode::init_testing` in
/// tests). Call it outside any tokio runtime: it makes its own.
pub fn run<H: Handler>(node: DoraNode, events: EventStream, handler: H) -> Result<(), ConfigError> {
    let stop_timeout = config::millis_or("MOFA_STOP_TIMEOUT_MS", Duration::from_secs(10))?;
    let workers = match config::optional("MOFA_WORKER_THREADS") {
        None => None,
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                return Err(ConfigError::invalid(
                    "MOFA_WORKER_THREADS",
                    v,
                    "expected a number of threads, at least 1",
                ));
            }
        },
    };
    let text_outputs: HashSet<String> = config::optional("MOFA_TEXT_OUTPUTS")
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
        .unwrap_or_default();

    let node_id = node.id().to_string();
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let sender = std::thread::Builder::new()
        .name("dora-output".into())
        .spawn(move || send_loop(node, out_rx, text_outputs))
        .expect("spawn output thread");

    let ctx = Ctx {
        shared: Arc::new(Shared {
            node_id,
            out: out_tx.clone(),
            tasks: Mutex::new(JoinSet::new()),
            exit: Notify::new(),
        }),
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        runtime.worker_threads(n);
    }
    let runtime = runtime.enable_all().build().expect("tokio runtime");
    let events = runtime.block_on(event_loop(ctx, events, handler, stop_timeout));
    drop(runtime);
    let _ = out_tx.send(Outgoing::Close);
    let _ = sender.join();
    // Dropped last, outside the runtime: dora's stream does blocking calls on drop.
    drop(events);
    Ok(())
}

async fn event_loop<H: Handler>(
    ctx: Ctx,
    mut events: EventStream,
    handler: H,
    stop_timeout: Duration,
) -> EventStream {
    if let Err(f) = handler.on_start(&ctx).await {
        let cause = Envelope::new(Kind::Control, ctx.node_id(), Role::System, "start");
        ctx.fail(&cause, f);
    }
    loop {
        let event = tokio::select! {
            biased;
            _ = ctx.shared.exit.notified() => break,
            event = events.next() => event,
        };
        match event {
            Some(Event::Input { id, metadata, data }) => {
                let input = id.as_str();
                match envelope::from_arrow(data.as_array().as_ref(), input) {
                    Ok(batch) => {
                        let meta: Meta = metadata
                            .parameters
                            .iter()
                            .filter(|(k, _)| k.as_str() != SCHEMA_KEY)
                            .filter_map(|(k, v)| match v {
                                Parameter::String(s) => Some((k.clone(), s.clone())),
                                _ => None,
                            })
                            .collect();
                        for msg in batch {
                            let cause = msg.clone();
                            if let Err(f) = handler.on_message_meta(&ctx, input, msg, &meta).await {
                                ctx.fail(&cause, f);
                            }
                        }
                    }
                    Err(e) => {
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
            Some(Event::InputClosed { id }) => handler.on_input_closed(&ctx, id.as_str()).await,
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

/// One array to send: output, metadata parameters, rows.
type Batch = (String, Vec<(String, String)>, Vec<Envelope>);

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
    }) = out.blocking_recv()
    {
        let mut pending: Vec<Batch> = vec![(output, meta, batch)];
        let mut rows = pending[0].2.len();
        let mut closing = false;
        while rows < MAX_BATCH_ROWS {
            match out.try_recv() {
                Ok(Outgoing::Send {
                    output,
                    batch,
                    meta,
                }) => {
                    rows += batch.len();
                    // Joins the output's latest batch if their metadata match; otherwise a
                    // new array follows it, so the order on each output holds.
                    match pending.iter_mut().rev().find(|(o, _, _)| *o == output) {
                        Some((_, m, queued)) if *m == meta => queued.extend(batch),
                        _ => pending.push((output, meta, batch)),
                    }
                }
                Ok(Outgoing::Close) => {
                    closing = true;
                    break;
                }
                Err(_) => break,
            }
        }
        for (output, meta, batch) in pending {
            let mut params = MetadataParameters::default();
            for (k, v) in meta {
                params.insert(k, Parameter::String(v));
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
