//! The dashboard's HTTP side.
//!
//! - `GET /`, `/app.js`, `/style.css`: the page, embedded in the binary (no external assets).
//! - `GET /api/graph`: `{dashboard, nodes: [{id, depth, inputs, outputs}], edges: [{id, source,
//!   output, target, input, tap}], taps: {input: {edge, receivers}}}`; `tap` is the tapped
//!   output (`source/output`) whose figures the edge shows, or `null`.
//! - `GET /api/state`: the figures now: `{now_ms, messages, edges: {"source/output": {total,
//!   rate, last}}, agents: {name: {calls, prompt_tokens, completion_tokens, total_tokens,
//!   cost_usd, model}}, errors: {node: {count, last: [{edge, session, message, ts_ms}]}}}`.
//! - `GET /events`: server-sent events: `msg` with each tapped message as it comes (`{edge,
//!   input, kind, sender, session, preview, ts_ms, seen_ms}`), and `stats` (the state above)
//!   at once and every second.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::middleware;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures::Stream;
use mofa_kernel::envelope::now_ms;
use tokio::sync::broadcast::error::RecvError;

use crate::Dashboard;

/// How often a page gets the figures.
pub const STATS_EVERY: Duration = Duration::from_secs(1);

const PAGE: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/style.css");

/// The routes; with `loopback_only`, mofa-human's guard: requests for a non-loopback `Host` or
/// from a non-loopback `Origin` are refused.
pub fn router(dashboard: Dashboard, loopback_only: bool) -> Router {
    let router = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route(
            "/app.js",
            get(|| async { asset("text/javascript", SCRIPT) }),
        )
        .route("/style.css", get(|| async { asset("text/css", STYLE) }))
        .route("/api/graph", get(graph))
        .route("/api/state", get(state))
        .route("/events", get(events))
        .with_state(dashboard);
    if loopback_only {
        router.layer(middleware::from_fn(mofa_human::http::loopback_only))
    } else {
        router
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn graph(State(d): State<Dashboard>) -> Response {
    axum::Json(d.graph()).into_response()
}

async fn state(State(d): State<Dashboard>) -> Response {
    axum::Json(d.snapshot(now_ms())).into_response()
}

fn json_event(name: &str, value: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(value).expect("figures serialize"))
}

async fn events(State(d): State<Dashboard>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let live = d.subscribe();
    let stop = d.shutdown.subscribe();
    let mut tick = tokio::time::interval(STATS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = futures::stream::unfold(
        (d, live, stop, tick),
        |(d, mut live, mut stop, mut tick)| async move {
            loop {
                if *stop.borrow() {
                    return None;
                }
                let event = tokio::select! {
                    _ = stop.changed() => continue,
                    _ = tick.tick() => json_event("stats", &d.snapshot(now_ms())),
                    got = live.recv() => match got {
                        Ok(view) => json_event("msg", &view),
                        // Fallen behind: the next `stats` carries the counts.
                        Err(RecvError::Lagged(_)) => continue,
                        Err(RecvError::Closed) => return None,
                    },
                };
                return Some((Ok::<_, Infallible>(event), (d, live, stop, tick)));
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}
