//! mofa-dashboard: a live web page of a running dataflow, fed by taps on its edges.
//!
//! Inputs: any ids, each a tap on an edge to show (`tap_result: agent/result`); the dashboard
//! learns which output each input taps from the dataflow's descriptor. Output: `error`, where
//! the kernel reports a tapped message it could not read (malformed Arrow). The page
//! draws the whole dataflow (every node and edge of the descriptor, the dashboard and its taps
//! left out) and, live, per tapped edge the message count, the rate (messages per second over
//! the last 10 s) and the latest message; per agent the tokens and cost of its LLM answers;
//! per node its errors.
//!
//! - Tokens and cost: an LLM answer (`ChatResponse::to_envelope`: payload `usage` with
//!   `prompt_tokens`, `completion_tokens`, `total_tokens`, and `model`) counts toward the agent
//!   its payload names in `agent`, else toward the node that takes the tapped edge; its cost is
//!   the payload's `cost_usd`, else 0.
//! - Errors: an `error` envelope on a tapped edge counts for its sender.
//! - Any envelope is taken (a payload that is not JSON is shown, not parsed); malformed Arrow
//!   never reaches the handler (the kernel reports it).
//!
//! HTTP ([`http`]): `GET /` the page (embedded, no external resources), `GET /api/graph`,
//! `GET /api/state`, `GET /events` (server-sent events: `msg` for every tapped message, `stats`
//! every second).
//!
//! Env: `MOFA_DASHBOARD_ADDR` (default `127.0.0.1:7070`; port 0 = any free port; the address
//! is logged as `dashboard on http://ADDR/`). On a loopback address only loopback `Host`s are
//! served (a DNS-rebinding guard); another address serves whoever reaches it.
//!
//! The node ends with the graph: once every tapped input is closed.

pub mod board;
pub mod graph;
pub mod http;

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mofa_kernel::Envelope;
use mofa_kernel::config::{self, ConfigError};
use mofa_kernel::envelope::now_ms;
use mofa_kernel::node::{Ctx, Failure, Handler};
use serde_json::Value;
use tokio::sync::{broadcast, watch};

use crate::board::{Board, MessageView, Snapshot};
use crate::graph::Graph;

/// Where the page is served unless `MOFA_DASHBOARD_ADDR` says otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7070";

/// Tapped messages buffered for a slow page; one that falls behind skips to the next `stats`.
const LIVE_BUFFER: usize = 1024;

/// How long the server may take to close its connections at stop.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DashboardConfig {
    pub addr: SocketAddr,
}

impl DashboardConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let default: SocketAddr = DEFAULT_ADDR.parse().expect("a socket address");
        let addr = config::parse_or("MOFA_DASHBOARD_ADDR", default)?;
        Ok(DashboardConfig { addr })
    }
}

/// The state the handler writes and the HTTP side reads. Cheap to clone.
#[derive(Clone)]
pub struct Dashboard {
    board: Arc<Mutex<Board>>,
    live: broadcast::Sender<MessageView>,
    shutdown: watch::Sender<bool>,
}

impl Default for Dashboard {
    fn default() -> Self {
        Dashboard {
            board: Arc::default(),
            live: broadcast::channel(LIVE_BUFFER).0,
            shutdown: watch::channel(false).0,
        }
    }
}

impl Dashboard {
    fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        self.board.lock().expect("dashboard board")
    }

    /// The graph shown (empty before the node starts).
    pub fn graph(&self) -> Graph {
        self.board().graph().clone()
    }

    /// The figures at `now_ms` (Unix milliseconds).
    pub fn snapshot(&self, now_ms: i64) -> Snapshot {
        self.board().snapshot(now_ms)
    }

    /// Tapped messages from now on, as they come.
    pub fn subscribe(&self) -> broadcast::Receiver<MessageView> {
        self.live.subscribe()
    }

    fn record(&self, input: &str, msg: &Envelope) {
        let view = self.board().record(input, msg, now_ms());
        // No page listening is fine: the board has it.
        let _ = self.live.send(view);
    }
}

pub struct DashboardNode {
    dashboard: Dashboard,
    /// Bound at construction, so a taken port stops the node at start; served from `on_start`.
    listener: Mutex<Option<TcpListener>>,
    addr: SocketAddr,
    /// The dataflow and this node's id in it, used when dora gives no descriptor (under
    /// `DoraNode::init_testing`).
    fallback: Option<(String, Value)>,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl DashboardNode {
    pub fn from_env() -> Result<Self, ConfigError> {
        let cfg = DashboardConfig::from_env()?;
        DashboardNode::new(&cfg).map_err(|e| {
            ConfigError::invalid(
                "MOFA_DASHBOARD_ADDR",
                cfg.addr.to_string(),
                format!("cannot listen there: {e}"),
            )
        })
    }

    /// Binds `cfg.addr`; serving starts with the node.
    pub fn new(cfg: &DashboardConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(cfg.addr)?;
        let addr = listener.local_addr()?;
        tracing::info!("dashboard on http://{addr}/");
        if !addr.ip().is_loopback() {
            tracing::warn!("the dashboard is reachable from other machines at {addr}");
        }
        Ok(DashboardNode {
            dashboard: Dashboard::default(),
            listener: Mutex::new(Some(listener)),
            addr,
            fallback: None,
            server: Mutex::new(None),
        })
    }

    /// The dataflow to show, this node being its node `id`, when dora gives no descriptor
    /// (tests); dora's wins when it has one.
    pub fn with_descriptor(mut self, id: &str, descriptor: Value) -> Self {
        self.fallback = Some((id.to_owned(), descriptor));
        self
    }

    /// The address served (the bound port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle on the node's state, for tests and embedding.
    pub fn dashboard(&self) -> Dashboard {
        self.dashboard.clone()
    }
}

#[async_trait]
impl Handler for DashboardNode {
    async fn on_start(&self, ctx: &Ctx) -> Result<(), Failure> {
        let graph = match (ctx.descriptor(), &self.fallback) {
            (Value::Null, Some((id, descriptor))) => Graph::from_descriptor(id, descriptor),
            (descriptor, _) => Graph::from_descriptor(ctx.node_id(), descriptor),
        };
        tracing::info!(
            "showing {} nodes and {} edges; {} tapped",
            graph.nodes.len(),
            graph.edges.len(),
            graph.taps.len()
        );
        *self.dashboard.board() = Board::new(graph);

        let Some(listener) = self.listener.lock().expect("listener").take() else {
            return Ok(());
        };
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let app = http::router(self.dashboard.clone(), self.addr.ip().is_loopback());
        let mut stop = self.dashboard.shutdown.subscribe();
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            });
            if let Err(e) = serve.await {
                tracing::error!("dashboard server: {e}");
            }
        });
        *self.server.lock().expect("server") = Some(server);
        Ok(())
    }

    async fn on_message(&self, _ctx: &Ctx, input: &str, msg: Envelope) -> Result<(), Failure> {
        self.dashboard.record(input, &msg);
        Ok(())
    }

    async fn on_stop(&self, _ctx: &Ctx) {
        // Ends the event streams too, so the graceful shutdown does not wait on open pages.
        self.dashboard.shutdown.send_replace(true);
        let server = self.server.lock().expect("server").take();
        if let Some(mut server) = server
            && tokio::time::timeout(SHUTDOWN_BOUND, &mut server)
                .await
                .is_err()
        {
            tracing::warn!("dashboard server still busy at stop: closed");
            server.abort();
        }
    }
}
