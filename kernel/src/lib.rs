//! mofa-kernel: the few contracts that every MoFA node shares.
//!
//! - [`envelope`]: the one Arrow schema on every agent edge, and its conversion both ways.
//! - [`node`]: the one lifecycle every node binary runs (`node::run`).
//! - [`llm`], [`tool`], [`plugin`]: the provider, tool and plugin traits.
//! - [`placement`]: which of a node's edges cross machines (heartbeats, lost machines).
//! - [`config`]: reading a node's configuration from its environment.
//! - [`queue`]: the priority queue where work waits for a free slot.
//! - [`calls`]: awaiting the answer to a request by `reply_to`.
//! - [`telemetry`]: OpenTelemetry traces across nodes, one trace per session (OTLP).
//! - [`metrics`]: Prometheus metrics of every node.
//! - [`watch`]: files edited while a node runs, read once a save has finished.
//! - `script` (feature `script`): the one Rhai set-up for nodes that run scripts.
//! - `rules` (feature `script`): the rule engine (YAML rules with Rhai conditions) on it.
//! - `wasm` (feature `wasm`): the WASM plugin host (wasmtime, limits, integrity, hot swap).

pub mod calls;
pub mod config;
pub mod envelope;
pub mod llm;
pub mod metrics;
pub mod node;
pub mod placement;
pub mod plugin;
pub mod queue;
#[cfg(feature = "script")]
pub mod rules;
#[cfg(feature = "script")]
pub mod script;
pub mod telemetry;
pub mod tool;
#[cfg(feature = "wasm")]
pub mod wasm;
pub mod watch;

pub use envelope::{Envelope, Kind, Priority, Role};

/// The Arrow crate the envelope is built with: the one dora-node-api itself uses.
pub use dora_node_api::arrow_v59 as arrow;
