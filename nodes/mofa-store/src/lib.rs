//! mofa-store: sessions, messages, agent memory, todos and versioned documents in SQL.
//!
//! One store serves many clients: a request arriving on input `X` is answered on output `X`
//! (a `result` envelope: `reply_to` = the request's id, same session, `payload` = the JSON
//! result, `content` = the op's name). A request is an envelope whose `payload` is a JSON object
//! `{"op": "...", ...args}` (a request without a payload may carry the object as its
//! `content`). Requests are handled one at a time, in arrival order across all inputs (taps
//! included), so a client sees its own writes; the work runs beside the event loop, so a stop
//! is seen at once and waits for the request in hand at most `MOFA_STOP_TIMEOUT_MS`.
//!
//! A failure (unknown op, bad arguments, a missing session/todo/document, a database error
//! after the retries) is an `error` envelope answering the request, sent on the request's
//! output and on `error`; its payload has `op` and `error` (`bad_request`, `not_found`,
//! `database`). The node goes on with the next request.
//!
//! Taps: an input whose id starts with `tap` (`tap`, `tap_coder`, ...) carries no requests:
//! every envelope arriving there is recorded as a message of its own session (its id, kind,
//! sender, role, content, payload, reply_to and ts_ms, and the tap's name), so a graph can
//! keep an audit log of any edge. `message.seen` tells whether an envelope id went past a tap.
//! dora keeps the order of messages on one input, not across inputs: an envelope and its tap
//! copy (two edges) may reach the store in either order, so ask `message.seen` about what was
//! sent before, not about what is being sent at the same moment.
//!
//! # Ops
//!
//! | op | arguments | result |
//! |---|---|---|
//! | `session.open` | `session`? (default: the request's session), `title`, `meta`? (any JSON) | `{session, created}`; opening an existing session returns it unchanged (`created: false`) |
//! | `session.get` | `session` | `{session, title, status, meta, created_ms, updated_ms}`; `not_found` if missing |
//! | `session.close` | `session`, `status` (e.g. `done`, `failed`) | `{}`; `not_found` if missing |
//! | `session.list` | `status`? | `{sessions: [...]}` (as session.get), oldest first |
//! | `message.append` | `session`, `sender`, `role`, `content`, `kind`? (default `message`) | `{id}` |
//! | `message.list` | `session`, `limit`? (the latest `limit`) | `{messages: [{id, sender, role, kind, content, ts_ms, payload, reply_to, tap}]}`, oldest first |
//! | `message.seen` | `session`, `id` (an envelope id) | `{seen}`: true if a tap recorded that envelope |
//! | `memory.put` | `agent`, `key`, `value` (any JSON) | `{}`; replaces an existing value |
//! | `memory.get` | `agent`, `key` | `{value}`; `null` if absent |
//! | `memory.list` | `agent`, `prefix`? | `{items: [{key, value}]}`, sorted by key (bytewise) |
//! | `todo.add` | `session`, `title`, `detail`? (any JSON), `capability`? | `{id}`; status `open` |
//! | `todo.update` | `id`, `status`?, `assignee`? (`null` clears it), `result`? (any JSON) | `{todo}`; `not_found` if missing |
//! | `todo.get` | `id` | `{todo}`; `not_found` if missing |
//! | `todo.list` | `session` | `{todos: [{id, session, title, detail, capability, status, assignee, result, created_ms, updated_ms}]}`, in creation order |
//! | `doc.put` | `session`, `name`, `content` | `{version}`: 1, 2, 3, ... per (session, name) |
//! | `doc.get` | `session`, `name`, `version`? (default the latest) | `{content, version}`; `not_found` if missing |
//!
//! Ids are text (UUIDv7 for the ones the store makes), times Unix milliseconds.
//!
//! # Configuration (env)
//!
//! - `MOFA_DATABASE_URL`: `sqlite://PATH?mode=rwc` (default: `mofa.db` in the working folder,
//!   embedded, no server), `postgres://USER:PASSWORD@HOST:PORT/DB` or
//!   `mysql://USER:PASSWORD@HOST:PORT/DB` (MySQL or MariaDB). No TLS.
//! - `MOFA_STORE_RETRIES` (5): retries of an op after a transient failure (lost connection,
//!   server restarting, deadlock), and of the first connection at start.
//! - `MOFA_STORE_RETRY_MS` (500): the wait before the first retry, doubled each time, at most
//!   10 s.
//! - `MOFA_STORE_TIMEOUT_MS` (5000): how long one attempt may wait for a connection.
//!
//! The schema is created at start if missing (tables `mofa_*`, version in `mofa_schema`). A
//! database that cannot be reached at start stops the node with an error naming the URL, its
//! password shown as `***`: the password appears in no log, error or envelope.
//!
//! The SQL layer, [`Db`], can be used on its own: `Db::open(url).await?.run(&request).await`.

pub mod db;
pub mod ops;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use mofa_kernel::config::{self, ConfigError};
use mofa_kernel::node::{Ctx, Failure, Handler};
use mofa_kernel::{Envelope, Kind, Role};
use serde_json::{Value, json};
use tokio::sync::{OnceCell, oneshot};

pub use db::{Backend, Db, DbOptions, StoreError, redact_url};
pub use ops::Op;

/// The store's configuration (see the crate docs).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub url: String,
    pub options: DbOptions,
}

impl StoreConfig {
    /// A SQLite file `mofa.db` in the working folder.
    pub fn default_url() -> String {
        let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
        format!("sqlite://{}/mofa.db?mode=rwc", cwd.display())
    }

    pub fn new(url: impl Into<String>) -> Self {
        StoreConfig {
            url: url.into(),
            options: DbOptions::default(),
        }
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        let url = config::optional("MOFA_DATABASE_URL").unwrap_or_else(Self::default_url);
        if Backend::of_url(&url).is_none() {
            return Err(ConfigError::invalid(
                "MOFA_DATABASE_URL",
                redact_url(&url),
                "expected sqlite://, postgres://, mysql:// or mariadb://",
            ));
        }
        let defaults = DbOptions::default();
        let retry_delay = config::millis_or("MOFA_STORE_RETRY_MS", defaults.retry_delay)?;
        let timeout = config::millis_or("MOFA_STORE_TIMEOUT_MS", defaults.timeout)?;
        if timeout.is_zero() {
            return Err(ConfigError::invalid(
                "MOFA_STORE_TIMEOUT_MS",
                "0",
                "must be at least 1",
            ));
        }
        Ok(StoreConfig {
            url,
            options: DbOptions {
                retries: config::parse_or("MOFA_STORE_RETRIES", defaults.retries)?,
                retry_delay,
                max_retry_delay: defaults.max_retry_delay.max(retry_delay),
                timeout,
            },
        })
    }
}

/// A failed request: the op's name if it parsed, and why.
type Rejected = (Option<&'static str>, StoreError);

/// The store node's handler.
pub struct StoreNode {
    config: StoreConfig,
    db: OnceCell<Arc<Db>>,
    /// Completion of the latest request's work: the next one waits for it, so requests (and
    /// tap records) are handled one at a time in arrival order while the event loop stays free
    /// to see a stop.
    last: Mutex<Option<oneshot::Receiver<()>>>,
}

impl StoreNode {
    /// A store on `config`; the database is opened when the node starts.
    pub fn new(config: StoreConfig) -> Self {
        StoreNode {
            config,
            db: OnceCell::new(),
            last: Mutex::new(None),
        }
    }

    /// The configuration from the environment, and a first opening of the database (schema
    /// created), so that a wrong or unreachable database stops the node at start with a
    /// message naming `MOFA_DATABASE_URL` (password shown as `***`).
    pub fn from_env() -> Result<Self, ConfigError> {
        let config = StoreConfig::from_env()?;
        check(&config)
            .map_err(|e| ConfigError::invalid("MOFA_DATABASE_URL", redact_url(&config.url), e))?;
        Ok(StoreNode::new(config))
    }
}

/// Runs one request: the op's name and its result, or the failure (with the op's name if the
/// request parsed).
async fn handle(db: &Db, input: &str, msg: &Envelope) -> Result<(&'static str, Value), Rejected> {
    let mut request = request_of(msg).map_err(|e| (None, e))?;
    let op = request
        .get("op")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // session.open defaults to the request's own session.
    if op == "session.open"
        && let Some(map) = request.as_object_mut()
        && map.get("session").is_none_or(Value::is_null)
    {
        map.insert("session".into(), msg.session.clone().into());
    }
    let op = Op::parse(&request).map_err(|e| (None, e))?;
    tracing::debug!(input, op = op.name(), "request");
    match db.exec(&op).await {
        Ok(result) => Ok((op.name(), result)),
        Err(e) => Err((Some(op.name()), e)),
    }
}

/// Opens the database once in a runtime of its own, then closes it: the node's own pool is
/// made on the node's runtime, in `on_start`.
fn check(config: &StoreConfig) -> Result<(), StoreError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Open {
            url: redact_url(&config.url),
            message: format!("no runtime: {e}"),
        })?;
    runtime.block_on(async {
        let db = Db::open_with(&config.url, config.options.clone()).await?;
        db.close().await;
        Ok(())
    })
}

/// The request object: the payload, or else the content, as JSON.
fn request_of(msg: &Envelope) -> Result<Value, StoreError> {
    let (text, from) = match &msg.payload {
        Some(p) => (p.as_str(), "payload"),
        None => (msg.content.as_str(), "content"),
    };
    serde_json::from_str(text).map_err(|e| {
        StoreError::BadRequest(format!(
            "the request's {from} is not JSON ({e}); expected {{\"op\": ..., ...}}"
        ))
    })
}

#[async_trait]
impl Handler for StoreNode {
    async fn on_start(&self, ctx: &Ctx) -> Result<(), Failure> {
        match Db::open_with(&self.config.url, self.config.options.clone()).await {
            Ok(db) => {
                let _ = self.db.set(Arc::new(db));
                Ok(())
            }
            Err(e) => {
                // A store without its database answers nothing: stop rather than fail each
                // request.
                tracing::error!("{e}");
                ctx.exit();
                Err(Failure::new(e.to_string()).with_details(json!({"error": e.kind()})))
            }
        }
    }

    async fn on_message(&self, ctx: &Ctx, input: &str, msg: Envelope) -> Result<(), Failure> {
        let Some(db) = self.db.get().cloned() else {
            let f = Failure::new("the store's database is not open")
                .with_details(json!({"error": "database"}));
            ctx.reply_error(input, &msg, f);
            return Ok(());
        };
        let (done, next) = oneshot::channel::<()>();
        let previous = self.last.lock().expect("store order lock").replace(next);
        let (ctx2, input) = (ctx.clone(), input.to_owned());
        ctx.spawn(msg.clone(), async move {
            if let Some(previous) = previous {
                // An error only means the previous work ended without signalling (cancelled).
                let _ = previous.await;
            }
            serve(&ctx2, &db, &input, msg).await;
            drop(done);
            Ok(())
        });
        Ok(())
    }

    async fn on_stop(&self, _ctx: &Ctx) {
        if let Some(db) = self.db.get() {
            db.close().await;
        }
    }
}

/// Records a tap's envelope, or answers a request on its input.
async fn serve(ctx: &Ctx, db: &Db, input: &str, msg: Envelope) {
    if input.starts_with("tap") {
        if let Err(e) = db.record(input, &msg).await {
            ctx.fail(
                &msg,
                Failure::new(format!("tap `{input}`: {e}"))
                    .with_details(json!({"error": e.kind(), "tap": input})),
            );
        }
        return;
    }
    match handle(db, input, &msg).await {
        Ok((op, result)) => {
            let reply = msg
                .reply(Kind::Result, ctx.node_id(), Role::Tool, op)
                .with_payload(&result);
            ctx.send_one(input, reply);
        }
        Err((op, e)) => {
            let f = Failure::new(e.to_string()).with_details(json!({"op": op, "error": e.kind()}));
            ctx.reply_error(input, &msg, f);
        }
    }
}
