//! Runs a node's handler without a daemon: `DoraNode::init_testing` with timed input events,
//! outputs collected and decoded back into envelopes.

use dora_node_api::integration_testing::integration_testing_format::{
    IncomingEvent, InputData, TimedIncomingEvent,
};
use dora_node_api::integration_testing::{
    IntegrationTestInput, TestingInput, TestingOptions, TestingOutput, drain_outputs,
    output_channel,
};
use dora_node_api::{DoraNode, MetadataParameters, Parameter};
use mofa_kernel::Envelope;
use mofa_kernel::node::{self, HEARTBEAT_KEY, Handler};
use serde_json::Value;

/// A batch of envelopes arriving on `input` at `at` seconds.
pub fn envelopes(at: f64, input: &str, batch: &[Envelope]) -> TimedIncomingEvent {
    let rows: Vec<Value> = batch
        .iter()
        .map(|e| serde_json::to_value(e).expect("envelope to JSON"))
        .collect();
    let data_type = serde_json::to_value(mofa_kernel::envelope::data_type()).expect("type to JSON");
    raw(at, input, Value::Array(rows), Some(data_type))
}

/// Any Arrow data (as JSON, with its Arrow type as dora serializes it) arriving on `input`.
pub fn raw(at: f64, input: &str, data: Value, data_type: Option<Value>) -> TimedIncomingEvent {
    TimedIncomingEvent {
        time_offset_secs: at,
        event: IncomingEvent::Input {
            id: input.into(),
            metadata: None,
            data: Some(Box::new(InputData::JsonObject { data, data_type })),
        },
    }
}

pub fn closed(at: f64, input: &str) -> TimedIncomingEvent {
    TimedIncomingEvent {
        time_offset_secs: at,
        event: IncomingEvent::InputClosed { id: input.into() },
    }
}

/// What a node sent on one output.
#[derive(Debug, Clone)]
pub struct Sent {
    pub output: String,
    /// The rows as dora's testing output gives them (objects for envelopes, strings for text).
    pub rows: Vec<Value>,
    /// The rows that are envelopes.
    pub envelopes: Vec<Envelope>,
}

/// How often the harness gives the node a heartbeat, which the kernel skips, while events
/// remain. dora's testing daemon answers one request at a time, in order, and sleeps in each
/// `NextEvent` until that event is due; the node's registration at start and every send queue
/// behind it. Without ticks a node could start only when its first event is due, seconds late
/// for a test timed from the harness's clock, depending on which request came first.
const TICK_EVERY_SECS: f64 = 0.05;

fn ticks_until(events: &[TimedIncomingEvent]) -> Vec<TimedIncomingEvent> {
    let last = events
        .iter()
        .map(|e| e.time_offset_secs)
        .fold(0.0, f64::max);
    let beat: MetadataParameters = [(
        HEARTBEAT_KEY.to_owned(),
        Parameter::String("harness".into()),
    )]
    .into_iter()
    .collect();
    (1..)
        .map(|k| k as f64 * TICK_EVERY_SECS)
        .take_while(|at| *at < last)
        .map(|at| TimedIncomingEvent {
            time_offset_secs: at,
            event: IncomingEvent::Input {
                id: "harness-tick".into(),
                metadata: Some(beat.clone()),
                data: None,
            },
        })
        .collect()
}

/// Runs `handler` through the kernel's lifecycle on the given events; returns every output in
/// order. The node ends when the events run out (after draining its in-flight work).
pub fn run<H: Handler>(handler: H, mut events: Vec<TimedIncomingEvent>) -> Vec<Sent> {
    events.extend(ticks_until(&events));
    let input = TestingInput::Input(IntegrationTestInput::new(
        "test-node".parse().unwrap(),
        events,
    ));
    let (tx, mut rx) = output_channel();
    let (node, events) = DoraNode::init_testing(
        input,
        TestingOutput::ToChannel(tx),
        TestingOptions {
            skip_output_time_offsets: true,
        },
    )
    .expect("init_testing");
    node::run(node, events, handler).expect("node runs");
    drain_outputs(&mut rx)
        .into_iter()
        .map(|o| {
            let output = o["id"].as_str().unwrap_or_default().to_owned();
            let rows = o
                .get("data")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let envelopes = rows
                .iter()
                .filter(|r| r.is_object())
                .map(|r| serde_json::from_value(r.clone()).expect("an envelope row"))
                .collect();
            Sent {
                output,
                rows,
                envelopes,
            }
        })
        .collect()
}

/// The envelopes sent on `output`, flattened, in order.
pub fn on(sent: &[Sent], output: &str) -> Vec<Envelope> {
    sent.iter()
        .filter(|s| s.output == output)
        .flat_map(|s| s.envelopes.clone())
        .collect()
}

/// A call of tool `name` with `args` (id `call_<name>`), as an agent sends it to a tool
/// executor, in reply to a fresh task.
pub fn tool_call(name: &str, args: serde_json::Value) -> Envelope {
    let task = Envelope::task("t", "q");
    let call = mofa_kernel::llm::ToolCall {
        id: format!("call_{name}"),
        name: name.into(),
        arguments: args.to_string(),
    };
    mofa_kernel::tool::call_envelope(&task, "agent", &call)
}

/// One envelope arriving on `input` at `at` seconds.
pub fn envelope(at: f64, input: &str, e: &Envelope) -> TimedIncomingEvent {
    envelopes(at, input, std::slice::from_ref(e))
}
