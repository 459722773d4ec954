//! Traces: OpenTelemetry spans of every node, exported by OTLP over HTTP/protobuf when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; otherwise
//! nothing is recorded. Each node is its own service (`service.name` = the node id).
//!
//! One trace per session, across every node it crosses:
//! - the trace id is the session id (its UUID bytes, or a hash of it), so every node puts its
//!   spans in the session's trace even when a hop in between does not trace (a Python node);
//! - the node where a session starts (a source) records a `session` root span with an id also
//!   derived from the session, the parent of last resort;
//! - each send records a `send <output>` span, a child of the span that received what it
//!   answers (by `reply_to`) or of the session's latest; its context travels with the message
//!   in the dora metadata (parameter [`TRACE_KEY`]: one W3C `traceparent` a row);
//! - each message handled is a `receive <input>` span, a child of that send span.
//!
//! Nodes add their own spans under a received message with [`crate::node::Ctx::trace_within`]
//! (mofa-llm's `chat <model>` spans, with the GenAI semantic conventions).

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, OnceLock};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{Layer, Registry};

use crate::Envelope;

/// The dora metadata parameter with the trace context of each row of a batch, space-separated.
pub const TRACE_KEY: &str = "mofa.traceparent";

/// The tracing target of the spans exported; other targets (dora's own) stay local.
pub const TARGET: &str = "mofa";

const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

struct Otel {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

static OTEL: OnceLock<Otel> = OnceLock::new();

/// Whether spans are recorded and exported in this process.
pub fn on() -> bool {
    OTEL.get().is_some()
}

/// The id dora gives this node, read from its configuration before connecting (so that logs
/// and traces are set up first); `None` outside dora.
pub fn node_id_from_env() -> Option<String> {
    let raw = std::env::var("DORA_NODE_CONFIG").ok()?;
    let config: serde_yaml::Value = serde_yaml::from_str(&raw).ok()?;
    config["node_id"].as_str().map(str::to_owned)
}

/// The layer that exports `mofa` spans by OTLP, if an endpoint is set; starts the exporter.
pub(crate) fn otel_layer(service: &str) -> Option<Box<dyn Layer<Registry> + Send + Sync>> {
    ENDPOINT_VARS
        .iter()
        .find(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()))?;
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("traces off: the OTLP exporter could not be built: {e}");
            return None;
        }
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_id_generator(SessionIds(RandomIdGenerator::default()))
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build();
    let tracer = provider.tracer("mofa");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer.clone())
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_filter(
            tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::TRACE),
        );
    OTEL.set(Otel { provider, tracer }).ok()?;
    Some(Box::new(layer))
}

/// Sends the spans still buffered; called as the node's process ends.
pub fn shutdown() {
    if let Some(otel) = OTEL.get()
        && let Err(e) = otel.provider.shutdown()
    {
        eprintln!("traces: {e}");
    }
}

thread_local! {
    /// Ids the next span made on this thread takes (a session's root span).
    static FIXED_IDS: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// Random ids, except for a session's root span, whose ids come from the session.
#[derive(Debug)]
struct SessionIds(RandomIdGenerator);

impl IdGenerator for SessionIds {
    fn new_trace_id(&self) -> TraceId {
        FIXED_IDS
            .get()
            .map_or_else(|| self.0.new_trace_id(), |(t, _)| t)
    }

    fn new_span_id(&self) -> SpanId {
        FIXED_IDS
            .get()
            .map_or_else(|| self.0.new_span_id(), |(_, s)| s)
    }
}

fn hash64(salt: &str, s: &str) -> u64 {
    // `DefaultHasher::new` has fixed keys: the same value in every node built by the same
    // compiler.
    let mut h = std::hash::DefaultHasher::new();
    salt.hash(&mut h);
    s.hash(&mut h);
    h.finish()
}

/// The session's trace id (its UUID's bytes) and root span id.
pub fn session_ids(session: &str) -> (TraceId, SpanId) {
    let trace = match uuid::Uuid::parse_str(session) {
        Ok(u) if !u.is_nil() => TraceId::from_bytes(*u.as_bytes()),
        _ => {
            let (a, b) = (hash64("trace", session), hash64("trace2", session));
            TraceId::from_bytes(((u128::from(a) << 64) | u128::from(b)).to_be_bytes())
        }
    };
    (
        trace,
        SpanId::from_bytes(hash64("root", session).max(1).to_be_bytes()),
    )
}

fn session_root(session: &str) -> SpanContext {
    let (trace, span) = session_ids(session);
    SpanContext::new(
        trace,
        span,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    )
}

/// `00-<trace>-<span>-<flags>`, the W3C trace context of `sc`.
pub fn traceparent(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// Reads a W3C `traceparent`; `None` if it is not one.
pub fn parse_traceparent(s: &str) -> Option<SpanContext> {
    let mut parts = s.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() || trace.len() != 32 || span.len() != 16 {
        return None;
    }
    let trace = TraceId::from_hex(trace).ok()?;
    let span = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let sc = SpanContext::new(
        trace,
        span,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

/// The most recent entries only: a node that runs for days must not keep every message.
struct Recent {
    map: HashMap<String, SpanContext>,
    order: VecDeque<String>,
}

const RECENT: usize = 4096;

impl Recent {
    fn new() -> Self {
        Recent {
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn get(&self, k: &str) -> Option<SpanContext> {
        self.map.get(k).cloned()
    }

    /// Sets `k` (a new key is the newest; a known one keeps its place).
    fn put(&mut self, k: &str, v: SpanContext) {
        if self.map.insert(k.to_owned(), v).is_none() {
            self.order.push_back(k.to_owned());
            if self.order.len() > RECENT
                && let Some(old) = self.order.pop_front()
            {
                self.map.remove(&old);
            }
        }
    }
}

/// A node's spans so far: which span received each message, and each session's latest.
pub(crate) struct Traces {
    by_message: Mutex<Recent>,
    by_session: Mutex<Recent>,
}

impl Default for Traces {
    fn default() -> Self {
        Traces {
            by_message: Mutex::new(Recent::new()),
            by_session: Mutex::new(Recent::new()),
        }
    }
}

fn context_of(span: &tracing::Span) -> SpanContext {
    span.context().span().span_context().clone()
}

impl Traces {
    /// The span for handling `msg` from `input`, a child of the sender's span when `parent`
    /// (its `traceparent`) came with it; disabled when traces are off.
    pub(crate) fn receive(
        &self,
        input: &str,
        msg: &Envelope,
        parent: Option<&str>,
    ) -> tracing::Span {
        if !on() {
            return tracing::Span::none();
        }
        let parent = parent
            .and_then(parse_traceparent)
            .unwrap_or_else(|| session_root(&msg.session));
        let span = tracing::info_span!(
            target: TARGET,
            parent: None,
            "receive",
            otel.name = %format!("receive {input}"),
            otel.kind = "consumer",
            messaging.system = "dora",
            messaging.operation.type = "receive",
            messaging.destination.name = input,
            messaging.message.id = msg.id.as_str(),
            mofa.session = msg.session.as_str(),
            mofa.kind = msg.kind.as_str(),
            mofa.sender = msg.sender.as_str(),
        );
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
        let sc = context_of(&span);
        self.by_message
            .lock()
            .expect("traces")
            .put(&msg.id, sc.clone());
        self.by_session
            .lock()
            .expect("traces")
            .put(&msg.session, sc);
        span
    }

    /// Records the send of `msg` on `output`; returns the `traceparent` to go with it, or ""
    /// when traces are off.
    pub(crate) fn send(&self, output: &str, msg: &Envelope) -> String {
        if !on() {
            return String::new();
        }
        let parent = msg
            .reply_to
            .as_deref()
            .and_then(|id| self.by_message.lock().expect("traces").get(id))
            .or_else(|| self.by_session.lock().expect("traces").get(&msg.session))
            .unwrap_or_else(|| self.start_session(&msg.session));
        let span = tracing::info_span!(
            target: TARGET,
            parent: None,
            "send",
            otel.name = %format!("send {output}"),
            otel.kind = "producer",
            messaging.system = "dora",
            messaging.operation.type = "send",
            messaging.destination.name = output,
            messaging.message.id = msg.id.as_str(),
            mofa.session = msg.session.as_str(),
            mofa.kind = msg.kind.as_str(),
        );
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
        traceparent(&context_of(&span))
    }

    /// Traces what answers `msg` under `span` instead of under the span that received it.
    pub(crate) fn replies_under(&self, msg: &Envelope, span: &tracing::Span) {
        let sc = context_of(span);
        if sc.is_valid() {
            self.by_message.lock().expect("traces").put(&msg.id, sc);
        }
    }

    /// The parent of a span about `msg`: the span that received it, else the session's.
    pub(crate) fn parent_of(&self, msg: &Envelope) -> Context {
        let sc = self
            .by_message
            .lock()
            .expect("traces")
            .get(&msg.id)
            .or_else(|| self.by_session.lock().expect("traces").get(&msg.session))
            .unwrap_or_else(|| session_root(&msg.session));
        Context::new().with_remote_span_context(sc)
    }

    /// A session starts here: its root span, with the ids every node derives from it.
    fn start_session(&self, session: &str) -> SpanContext {
        let root = session_root(session);
        if let Some(otel) = OTEL.get() {
            FIXED_IDS.set(Some((root.trace_id(), root.span_id())));
            let mut span = otel.tracer.build_with_context(
                otel.tracer
                    .span_builder("session")
                    .with_kind(SpanKind::Internal)
                    .with_attributes([KeyValue::new("mofa.session", session.to_owned())]),
                &Context::new(),
            );
            FIXED_IDS.set(None);
            opentelemetry::trace::Span::end(&mut span);
        }
        self.by_session
            .lock()
            .expect("traces")
            .put(session, root.clone());
        root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_has_the_same_trace_in_every_node_and_traceparents_round_trip() {
        let s = crate::envelope::new_id();
        let (t1, r1) = session_ids(&s);
        assert_eq!(session_ids(&s), (t1, r1));
        assert_eq!(
            t1.to_string(),
            s.replace('-', ""),
            "a UUID session is its trace id"
        );
        let (t2, _) = session_ids("my-chat");
        assert_ne!(t2, TraceId::INVALID);
        assert_ne!(session_ids("other-chat").0, t2);
        let sc = session_root(&s);
        let tp = traceparent(&sc);
        assert_eq!(tp.len(), 55);
        let back = parse_traceparent(&tp).unwrap();
        assert_eq!(
            (back.trace_id(), back.span_id()),
            (sc.trace_id(), sc.span_id())
        );
        assert!(back.is_sampled());
        for bad in [
            "",
            "00-xyz",
            "01-".repeat(3).as_str(),
            &tp.replace("00-", "ff-"),
            &format!("{tp}-x"),
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        let zero = format!("00-{}-{}-01", "0".repeat(32), "1".repeat(16));
        assert!(
            parse_traceparent(&zero).is_none(),
            "an all-zero trace id is invalid"
        );
    }

    #[test]
    fn only_recent_entries_are_kept() {
        let mut r = Recent::new();
        let sc = session_root("s");
        for i in 0..RECENT + 10 {
            r.put(&i.to_string(), sc.clone());
        }
        assert_eq!(r.map.len(), RECENT);
        assert!(r.get("0").is_none());
        assert!(r.get(&(RECENT + 9).to_string()).is_some());
    }
}
