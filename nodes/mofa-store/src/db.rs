//! The SQL layer: one [`Db`] over sqlx's `any` driver, so one SQL text serves SQLite,
//! PostgreSQL and MySQL/MariaDB.
//!
//! Portability rules the queries keep: placeholders are written `?` and rewritten to `$1, $2, ...`
//! for PostgreSQL ([`Backend::sql`]); ids and names are `VARCHAR(255)`, free text and JSON are
//! text (`LONGTEXT` on MySQL), times are `BIGINT` Unix milliseconds; no upsert syntax, no
//! `LIKE`, no aggregates over typed columns (read-then-write in one transaction instead), and
//! anything whose order depends on collation is sorted in Rust. Only the DDL differs by
//! backend (type names, MySQL's table options, where indexes are declared).
//!
//! Every op runs in one transaction and is retried on a transient failure (a lost connection,
//! a server restarting, a deadlock, a unique-key race between two stores) per [`DbOptions`];
//! the pool replaces broken connections, so requests succeed again once the server is back.
//! Errors never carry the password: URLs are shown through [`redact_url`], and every error text
//! is scrubbed of the password before it leaves this module.

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use mofa_kernel::Envelope;
use mofa_kernel::envelope::{new_id, now_ms};
use serde_json::{Value, json};
use sqlx::any::{AnyArguments, AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, AnyConnection, AnyPool, AssertSqlSafe, Connection, Row, Transaction};

use crate::ops::Op;

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Not a request the store understands: unknown op, missing or mistyped argument.
    #[error("{0}")]
    BadRequest(String),
    /// The session, todo or document asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The database failed (after the retries, if the failure looked transient).
    #[error("database error ({url}): {message}")]
    Database { url: String, message: String },
    /// The database could not be opened (connect or schema) at start.
    #[error("cannot open the database {url}: {message}")]
    Open { url: String, message: String },
}

impl StoreError {
    /// A short name for the kind of failure, for error payloads: `bad_request`, `not_found`,
    /// `database`, `open`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::BadRequest(_) => "bad_request",
            StoreError::NotFound(_) => "not_found",
            StoreError::Database { .. } => "database",
            StoreError::Open { .. } => "open",
        }
    }
}

/// Which SQL server a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    MySql,
}

impl Backend {
    /// From the URL's scheme: `sqlite:`, `postgres:`/`postgresql:`, `mysql:`/`mariadb:`.
    pub fn of_url(url: &str) -> Option<Backend> {
        let scheme = url.split_once(':')?.0.to_ascii_lowercase();
        match scheme.as_str() {
            "sqlite" => Some(Backend::Sqlite),
            "postgres" | "postgresql" => Some(Backend::Postgres),
            "mysql" | "mariadb" => Some(Backend::MySql),
            _ => None,
        }
    }

    /// The query text for this backend: `?` placeholders become `$1, $2, ...` on PostgreSQL.
    /// The store's queries have no `?` inside literals.
    pub fn sql(self, sql: &'static str) -> Cow<'static, str> {
        if self != Backend::Postgres || !sql.contains('?') {
            return Cow::Borrowed(sql);
        }
        let mut out = String::with_capacity(sql.len() + 8);
        let mut n = 0;
        for c in sql.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        Cow::Owned(out)
    }

    /// The schema, as statements for this backend (all idempotent).
    fn schema(self) -> Vec<String> {
        let (text, table_options) = match self {
            Backend::MySql => (
                "LONGTEXT",
                // Binary collation: keys compare exactly, as on the other backends.
                " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            ),
            _ => ("TEXT", ""),
        };
        let key = "VARCHAR(255)";
        // MySQL has no CREATE INDEX IF NOT EXISTS: its indexes are declared in the table.
        let index = |name: &str, table: &str, cols: &str| match self {
            Backend::MySql => (format!(", INDEX {name} ({cols})"), None),
            _ => (
                String::new(),
                Some(format!(
                    "CREATE INDEX IF NOT EXISTS {name} ON {table} ({cols})"
                )),
            ),
        };
        let (todos_idx_inline, todos_idx) =
            index("mofa_todos_session", "mofa_todos", "session_id, seq");
        let (msgs_idx_inline, msgs_idx) =
            index("mofa_messages_id", "mofa_messages", "session_id, id");
        let mut statements = vec![
            format!(
                "CREATE TABLE IF NOT EXISTS mofa_sessions (id {key} NOT NULL PRIMARY KEY, \
                 seq BIGINT NOT NULL, title {text} NOT NULL, status {key} NOT NULL, meta {text}, \
                 created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL){table_options}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS mofa_messages (session_id {key} NOT NULL, \
                 seq BIGINT NOT NULL, id {key} NOT NULL, sender {text} NOT NULL, \
                 role {key} NOT NULL, kind {key} NOT NULL, content {text} NOT NULL, \
                 payload {text}, reply_to {key}, tap {key}, ts_ms BIGINT NOT NULL, \
                 PRIMARY KEY (session_id, seq){msgs_idx_inline}){table_options}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS mofa_memory (agent {key} NOT NULL, \
                 mkey {key} NOT NULL, val {text} NOT NULL, updated_ms BIGINT NOT NULL, \
                 PRIMARY KEY (agent, mkey)){table_options}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS mofa_todos (id {key} NOT NULL PRIMARY KEY, \
                 session_id {key} NOT NULL, seq BIGINT NOT NULL, title {text} NOT NULL, \
                 detail {text}, capability {key}, status {key} NOT NULL, assignee {key}, \
                 result {text}, created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL\
                 {todos_idx_inline}){table_options}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS mofa_docs (session_id {key} NOT NULL, \
                 name {key} NOT NULL, version BIGINT NOT NULL, content {text} NOT NULL, \
                 created_ms BIGINT NOT NULL, PRIMARY KEY (session_id, name, version)){table_options}"
            ),
        ];
        statements.extend(msgs_idx);
        statements.extend(todos_idx);
        statements
    }
}

/// The version of the schema this code writes, recorded in `mofa_schema`.
pub const SCHEMA_VERSION: i64 = 1;

/// Retries and time limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbOptions {
    /// Retries of an op (or of the first connection) after a transient failure.
    pub retries: u32,
    /// Wait before the first retry; doubled for each next one, up to `max_retry_delay`.
    pub retry_delay: Duration,
    pub max_retry_delay: Duration,
    /// How long one attempt may wait for a connection.
    pub timeout: Duration,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            retries: 5,
            retry_delay: Duration::from_millis(500),
            max_retry_delay: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
        }
    }
}

impl DbOptions {
    /// The wait before retry number `attempt` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
        self.retry_delay
            .saturating_mul(factor)
            .min(self.max_retry_delay.max(self.retry_delay))
    }
}

/// `url` with its password (in the user info or a `password=` parameter) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(start) = out.find("://").map(|i| i + 3) {
        let rest = &out[start..];
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            out.replace_range(start + colon + 1..start + at, "***");
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if is_password_param(k) => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out = format!("{head}{}", query.join("&"));
    }
    out
}

fn is_password_param(k: &str) -> bool {
    matches!(
        k.to_ascii_lowercase().as_str(),
        "password" | "pass" | "pwd" | "passwd"
    )
}

/// The secret parts of `url` (the password, as written and percent-decoded), to scrub from
/// any text that might echo them.
fn secrets_of(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(start) = url.find("://").map(|i| i + 3) {
        let rest = &url[start..];
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            found.push(rest[colon + 1..at].to_owned());
        }
    }
    if let Some((_, query)) = url.split_once('?') {
        for kv in query.split('&') {
            if let Some((k, v)) = kv.split_once('=')
                && is_password_param(k)
            {
                found.push(v.to_owned());
            }
        }
    }
    let decoded: Vec<String> = found.iter().map(|s| percent_decode(s)).collect();
    found.extend(decoded);
    found.retain(|s| !s.is_empty());
    found.sort_by_key(|s| std::cmp::Reverse(s.len()));
    found.dedup();
    found
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(hi * 16 + lo);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A failed attempt: our own verdict, or an SQL error that may be worth retrying.
enum Fail {
    Store(StoreError),
    Sql(sqlx::Error),
}

impl From<sqlx::Error> for Fail {
    fn from(e: sqlx::Error) -> Self {
        Fail::Sql(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

type Attempt<T> = Result<T, Fail>;

/// Whether retrying could help: the connection or the server went away, a connection could
/// not be had in time, a deadlock or lock timeout, a unique-key race with another writer.
pub fn is_transient(e: &sqlx::Error) -> bool {
    use sqlx::Error as E;
    match e {
        E::Io(_) | E::PoolTimedOut | E::Protocol(_) | E::WorkerCrashed | E::Tls(_) => true,
        E::Database(db) => {
            if db.is_unique_violation() {
                return true;
            }
            let code = db.code().unwrap_or_default();
            // PostgreSQL: connection exceptions (08*), shutdown / cannot connect now (57P*),
            // serialization failure, deadlock, too many connections.
            code.starts_with("08")
                || code.starts_with("57P")
                || matches!(code.as_ref(), "40001" | "40P01" | "53300")
                // MySQL: lock wait timeout, deadlock, server gone away / lost, too many
                // connections, server shutting down.
                || matches!(code.as_ref(), "1205" | "1213" | "2006" | "2013" | "1040" | "1053")
                // SQLite: busy, locked (and their extended codes).
                || matches!(code.as_ref(), "5" | "6" | "261" | "262" | "517" | "773")
        }
        _ => false,
    }
}

/// The store's database.
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// The URL with the password shown as `***`.
    url: String,
    secrets: Vec<String>,
    options: DbOptions,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("url", &self.url)
            .field("backend", &self.backend)
            .finish()
    }
}

/// Text with every secret replaced by `***`.
fn scrub(secrets: &[String], text: String) -> String {
    secrets.iter().fold(text, |t, s| {
        if t.contains(s.as_str()) {
            t.replace(s.as_str(), "***")
        } else {
            t
        }
    })
}

impl Db {
    /// Opens the database at `url` with the default [`DbOptions`]: connects, creates the schema
    /// if missing. Fails at once (after the retries) if the server cannot be reached.
    pub async fn open(url: &str) -> Result<Db, StoreError> {
        Db::open_with(url, DbOptions::default()).await
    }

    pub async fn open_with(url: &str, options: DbOptions) -> Result<Db, StoreError> {
        sqlx::any::install_default_drivers();
        let shown = redact_url(url);
        let secrets = secrets_of(url);
        let open_error = |message: String| StoreError::Open {
            url: shown.clone(),
            message: scrub(&secrets, message),
        };
        let backend = Backend::of_url(url).ok_or_else(|| {
            open_error("unknown scheme: expected sqlite:, postgres:, mysql: or mariadb:".into())
        })?;
        let connect = AnyConnectOptions::from_str(url).map_err(|e| open_error(e.to_string()))?;
        // One direct connection first: the pool would hide why it cannot connect behind a
        // timeout, and a user who got the URL wrong needs the reason.
        let mut attempt = 0;
        loop {
            let tried =
                tokio::time::timeout(options.timeout, AnyConnection::connect_with(&connect))
                    .await
                    .unwrap_or(Err(sqlx::Error::PoolTimedOut));
            match tried {
                Ok(conn) => {
                    let _ = conn.close().await;
                    break;
                }
                Err(e) if is_transient(&e) && attempt < options.retries => {
                    tracing::warn!(
                        "database {shown} not reachable ({}), retrying",
                        scrub(&secrets, e.to_string())
                    );
                    tokio::time::sleep(options.delay(attempt)).await;
                    attempt += 1;
                }
                Err(sqlx::Error::PoolTimedOut) => {
                    return Err(open_error(format!(
                        "no connection within {} ms",
                        options.timeout.as_millis()
                    )));
                }
                Err(e) => return Err(open_error(e.to_string())),
            }
        }
        let pool = AnyPoolOptions::new()
            // Requests are handled one at a time; SQLite wants one writer anyway.
            .max_connections(if backend == Backend::Sqlite { 1 } else { 2 })
            .acquire_timeout(options.timeout)
            .test_before_acquire(true)
            .connect_lazy_with(connect);
        let db = Db {
            pool,
            backend,
            url: shown.clone(),
            secrets: secrets.clone(),
            options,
        };
        db.migrate().await.map_err(|e| match e {
            StoreError::Database { message, .. } => open_error(format!("schema: {message}")),
            other => other,
        })?;
        tracing::info!("store database {shown} ({:?}) open", db.backend);
        Ok(db)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL, password shown as `***`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Closes the pool's connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Parses and runs one request (`{"op": ..., ...}`); the result as JSON.
    pub async fn run(&self, request: &Value) -> Result<Value, StoreError> {
        let op = Op::parse(request)?;
        self.exec(&op).await
    }

    /// Runs one op in a transaction, retried on transient failures.
    pub async fn exec(&self, op: &Op) -> Result<Value, StoreError> {
        self.retrying(op.name(), || self.exec_once(op)).await
    }

    /// Records an envelope seen on a tap input as a message of its session (`tap` = the input).
    pub async fn record(&self, tap: &str, msg: &Envelope) -> Result<(), StoreError> {
        self.retrying("tap", || self.record_once(tap, msg)).await
    }

    async fn retrying<T, F, Fut>(&self, what: &str, mut once: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Attempt<T>>,
    {
        let mut attempt = 0;
        loop {
            match once().await {
                Ok(v) => return Ok(v),
                Err(Fail::Store(e)) => return Err(e),
                Err(Fail::Sql(e)) if is_transient(&e) && attempt < self.options.retries => {
                    let delay = self.options.delay(attempt);
                    tracing::warn!(
                        "{what}: {} (attempt {} of {}), retrying in {} ms",
                        self.scrubbed(&e),
                        attempt + 1,
                        self.options.retries + 1,
                        delay.as_millis()
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(Fail::Sql(e)) => {
                    let tries = if is_transient(&e) {
                        format!(" (after {} attempts)", attempt + 1)
                    } else {
                        String::new()
                    };
                    return Err(StoreError::Database {
                        url: self.url.clone(),
                        message: format!("{what}: {}{tries}", self.scrubbed(&e)),
                    });
                }
            }
        }
    }

    fn scrubbed(&self, e: &sqlx::Error) -> String {
        let text = match e {
            sqlx::Error::PoolTimedOut => format!(
                "no connection to the database within {} ms",
                self.options.timeout.as_millis()
            ),
            e => e.to_string(),
        };
        scrub(&self.secrets, text)
    }

    fn q(&self, sql: &'static str) -> Query<'static, Any, AnyArguments> {
        sqlx::query(AssertSqlSafe(self.backend.sql(sql)))
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        self.retrying("schema", || async {
            let mut conn = self.pool.acquire().await?;
            self.q(
                "CREATE TABLE IF NOT EXISTS mofa_schema (version BIGINT NOT NULL, \
                 applied_ms BIGINT NOT NULL)",
            )
            .execute(&mut *conn)
            .await?;
            let current: i64 = self
                .q("SELECT version FROM mofa_schema ORDER BY version DESC LIMIT 1")
                .fetch_optional(&mut *conn)
                .await?
                .map(|r| r.try_get(0))
                .transpose()?
                .unwrap_or(0);
            if current > SCHEMA_VERSION {
                return Err(Fail::Store(StoreError::Database {
                    url: self.url.clone(),
                    message: format!(
                        "schema version {current} is newer than this store's ({SCHEMA_VERSION})"
                    ),
                }));
            }
            if current < SCHEMA_VERSION {
                for statement in self.backend.schema() {
                    sqlx::query(AssertSqlSafe(statement))
                        .execute(&mut *conn)
                        .await?;
                }
                self.q("INSERT INTO mofa_schema (version, applied_ms) VALUES (?, ?)")
                    .bind(SCHEMA_VERSION)
                    .bind(now_ms())
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(())
        })
        .await
    }

    async fn exec_once(&self, op: &Op) -> Attempt<Value> {
        let mut tx = self.pool.begin().await?;
        let result = self.apply(&mut tx, op).await?;
        tx.commit().await?;
        Ok(result)
    }

    async fn record_once(&self, tap: &str, msg: &Envelope) -> Attempt<()> {
        let mut tx = self.pool.begin().await?;
        let seq = self.next_message_seq(&mut tx, &msg.session).await?;
        self.q(
            "INSERT INTO mofa_messages (session_id, seq, id, sender, role, kind, content, \
             payload, reply_to, tap, ts_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(msg.session.clone())
        .bind(seq)
        .bind(msg.id.clone())
        .bind(msg.sender.clone())
        .bind(msg.role.as_str().to_owned())
        .bind(msg.kind.as_str().to_owned())
        .bind(msg.content.clone())
        .bind(msg.payload.clone())
        .bind(msg.reply_to.clone())
        .bind(tap.to_owned())
        .bind(msg.ts_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn next_message_seq(
        &self,
        tx: &mut Transaction<'static, Any>,
        session: &str,
    ) -> Attempt<i64> {
        let last: Option<i64> = self
            .q("SELECT seq FROM mofa_messages WHERE session_id = ? ORDER BY seq DESC LIMIT 1")
            .bind(session.to_owned())
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        Ok(last.unwrap_or(0) + 1)
    }

    async fn apply(&self, tx: &mut Transaction<'static, Any>, op: &Op) -> Attempt<Value> {
        let now = now_ms();
        match op {
            Op::SessionOpen {
                session,
                title,
                meta,
            } => {
                let exists = self
                    .q("SELECT id FROM mofa_sessions WHERE id = ?")
                    .bind(session.clone())
                    .fetch_optional(&mut **tx)
                    .await?
                    .is_some();
                if !exists {
                    let last: Option<i64> = self
                        .q("SELECT seq FROM mofa_sessions ORDER BY seq DESC LIMIT 1")
                        .fetch_optional(&mut **tx)
                        .await?
                        .map(|r| r.try_get(0))
                        .transpose()?;
                    self.q(
                        "INSERT INTO mofa_sessions (id, seq, title, status, meta, created_ms, \
                         updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    )
                    .bind(session.clone())
                    .bind(last.unwrap_or(0) + 1)
                    .bind(title.clone())
                    .bind("open".to_owned())
                    .bind(to_json_text(meta))
                    .bind(now)
                    .bind(now)
                    .execute(&mut **tx)
                    .await?;
                }
                Ok(json!({"session": session, "created": !exists}))
            }
            Op::SessionGet { session } => {
                let row = self
                    .q(SESSION_SELECT_BY_ID)
                    .bind(session.clone())
                    .fetch_optional(&mut **tx)
                    .await?
                    .ok_or_else(|| no_session(session))?;
                Ok(session_json(&row)?)
            }
            Op::SessionClose { session, status } => {
                self.q("SELECT id FROM mofa_sessions WHERE id = ?")
                    .bind(session.clone())
                    .fetch_optional(&mut **tx)
                    .await?
                    .ok_or_else(|| no_session(session))?;
                self.q("UPDATE mofa_sessions SET status = ?, updated_ms = ? WHERE id = ?")
                    .bind(status.clone())
                    .bind(now)
                    .bind(session.clone())
                    .execute(&mut **tx)
                    .await?;
                Ok(json!({}))
            }
            Op::SessionList { status } => {
                let rows = match status {
                    Some(s) => {
                        self.q("SELECT id, title, status, meta, created_ms, updated_ms \
                             FROM mofa_sessions WHERE status = ? ORDER BY seq")
                            .bind(s.clone())
                            .fetch_all(&mut **tx)
                            .await?
                    }
                    None => {
                        self.q("SELECT id, title, status, meta, created_ms, updated_ms \
                             FROM mofa_sessions ORDER BY seq")
                            .fetch_all(&mut **tx)
                            .await?
                    }
                };
                let sessions = rows
                    .iter()
                    .map(session_json)
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(json!({ "sessions": sessions }))
            }
            Op::MessageAppend {
                session,
                sender,
                role,
                content,
                kind,
            } => {
                let seq = self.next_message_seq(tx, session).await?;
                let id = new_id();
                self.q(
                    "INSERT INTO mofa_messages (session_id, seq, id, sender, role, kind, \
                     content, payload, reply_to, tap, ts_ms) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(session.clone())
                .bind(seq)
                .bind(id.clone())
                .bind(sender.clone())
                .bind(role.clone())
                .bind(kind.clone())
                .bind(content.clone())
                .bind(None::<String>)
                .bind(None::<String>)
                .bind(None::<String>)
                .bind(now)
                .execute(&mut **tx)
                .await?;
                Ok(json!({ "id": id }))
            }
            Op::MessageList { session, limit } => {
                let rows = match limit {
                    Some(n) => {
                        let mut rows = self
                            .q(
                                "SELECT id, sender, role, kind, content, payload, reply_to, tap, \
                                 ts_ms FROM mofa_messages WHERE session_id = ? \
                                 ORDER BY seq DESC LIMIT ?",
                            )
                            .bind(session.clone())
                            .bind(*n)
                            .fetch_all(&mut **tx)
                            .await?;
                        rows.reverse();
                        rows
                    }
                    None => {
                        self.q(
                            "SELECT id, sender, role, kind, content, payload, reply_to, tap, \
                             ts_ms FROM mofa_messages WHERE session_id = ? ORDER BY seq",
                        )
                        .bind(session.clone())
                        .fetch_all(&mut **tx)
                        .await?
                    }
                };
                let messages = rows
                    .iter()
                    .map(message_json)
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(json!({ "messages": messages }))
            }
            Op::MessageSeen { session, id } => {
                let seen = self
                    .q(
                        "SELECT seq FROM mofa_messages WHERE session_id = ? AND id = ? \
                         AND tap IS NOT NULL LIMIT 1",
                    )
                    .bind(session.clone())
                    .bind(id.clone())
                    .fetch_optional(&mut **tx)
                    .await?
                    .is_some();
                Ok(json!({ "seen": seen }))
            }
            Op::MemoryPut { agent, key, value } => {
                let exists = self
                    .q("SELECT mkey FROM mofa_memory WHERE agent = ? AND mkey = ?")
                    .bind(agent.clone())
                    .bind(key.clone())
                    .fetch_optional(&mut **tx)
                    .await?
                    .is_some();
                let sql = if exists {
                    "UPDATE mofa_memory SET val = ?, updated_ms = ? WHERE agent = ? AND mkey = ?"
                } else {
                    "INSERT INTO mofa_memory (val, updated_ms, agent, mkey) VALUES (?, ?, ?, ?)"
                };
                self.q(sql)
                    .bind(value.to_string())
                    .bind(now)
                    .bind(agent.clone())
                    .bind(key.clone())
                    .execute(&mut **tx)
                    .await?;
                Ok(json!({}))
            }
            Op::MemoryGet { agent, key } => {
                let value = self
                    .q("SELECT val FROM mofa_memory WHERE agent = ? AND mkey = ?")
                    .bind(agent.clone())
                    .bind(key.clone())
                    .fetch_optional(&mut **tx)
                    .await?
                    .map(|r| r.try_get::<String, _>(0))
                    .transpose()?;
                Ok(json!({ "value": parse_json_text(value.as_deref()) }))
            }
            Op::MemoryList { agent, prefix } => {
                let rows = self
                    .q("SELECT mkey, val FROM mofa_memory WHERE agent = ?")
                    .bind(agent.clone())
                    .fetch_all(&mut **tx)
                    .await?;
                let mut items = Vec::with_capacity(rows.len());
                for r in &rows {
                    let key: String = r.try_get(0)?;
                    if prefix.as_deref().is_none_or(|p| key.starts_with(p)) {
                        let val: String = r.try_get(1)?;
                        items.push((key, parse_json_text(Some(&val))));
                    }
                }
                // Sorted here, by bytes: the same order on every backend and collation.
                items.sort_by(|a, b| a.0.cmp(&b.0));
                let items: Vec<Value> = items
                    .into_iter()
                    .map(|(key, value)| json!({"key": key, "value": value}))
                    .collect();
                Ok(json!({ "items": items }))
            }
            Op::TodoAdd {
                session,
                title,
                detail,
                capability,
            } => {
                let last: Option<i64> = self
                    .q("SELECT seq FROM mofa_todos WHERE session_id = ? ORDER BY seq DESC LIMIT 1")
                    .bind(session.clone())
                    .fetch_optional(&mut **tx)
                    .await?
                    .map(|r| r.try_get(0))
                    .transpose()?;
                let id = new_id();
                self.q(
                    "INSERT INTO mofa_todos (id, session_id, seq, title, detail, capability, \
                     status, assignee, result, created_ms, updated_ms) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(id.clone())
                .bind(session.clone())
                .bind(last.unwrap_or(0) + 1)
                .bind(title.clone())
                .bind(to_json_text(detail))
                .bind(capability.clone())
                .bind("open".to_owned())
                .bind(None::<String>)
                .bind(None::<String>)
                .bind(now)
                .bind(now)
                .execute(&mut **tx)
                .await?;
                Ok(json!({ "id": id }))
            }
            Op::TodoUpdate {
                id,
                status,
                assignee,
                result,
            } => {
                let row = self
                    .q(TODO_SELECT_BY_ID)
                    .bind(id.clone())
                    .fetch_optional(&mut **tx)
                    .await?
                    .ok_or_else(|| no_todo(id))?;
                let mut todo = todo_json(&row)?;
                if let Some(s) = status {
                    todo["status"] = s.clone().into();
                }
                if let Some(a) = assignee {
                    todo["assignee"] = a.clone().into();
                }
                if let Some(r) = result {
                    todo["result"] = r.clone();
                }
                todo["updated_ms"] = now.into();
                self.q(
                    "UPDATE mofa_todos SET status = ?, assignee = ?, result = ?, updated_ms = ? \
                     WHERE id = ?",
                )
                .bind(todo["status"].as_str().unwrap_or("open").to_owned())
                .bind(todo["assignee"].as_str().map(str::to_owned))
                .bind(to_json_text(&todo["result"]))
                .bind(now)
                .bind(id.clone())
                .execute(&mut **tx)
                .await?;
                Ok(json!({ "todo": todo }))
            }
            Op::TodoGet { id } => {
                let row = self
                    .q(TODO_SELECT_BY_ID)
                    .bind(id.clone())
                    .fetch_optional(&mut **tx)
                    .await?
                    .ok_or_else(|| no_todo(id))?;
                Ok(json!({ "todo": todo_json(&row)? }))
            }
            Op::TodoList { session } => {
                let rows = self
                    .q(
                        "SELECT id, session_id, title, detail, capability, status, assignee, \
                         result, created_ms, updated_ms FROM mofa_todos WHERE session_id = ? \
                         ORDER BY seq",
                    )
                    .bind(session.clone())
                    .fetch_all(&mut **tx)
                    .await?;
                let todos = rows.iter().map(todo_json).collect::<Result<Vec<_>, _>>()?;
                Ok(json!({ "todos": todos }))
            }
            Op::DocPut {
                session,
                name,
                content,
            } => {
                let last: Option<i64> = self
                    .q(
                        "SELECT version FROM mofa_docs WHERE session_id = ? AND name = ? \
                         ORDER BY version DESC LIMIT 1",
                    )
                    .bind(session.clone())
                    .bind(name.clone())
                    .fetch_optional(&mut **tx)
                    .await?
                    .map(|r| r.try_get(0))
                    .transpose()?;
                let version = last.unwrap_or(0) + 1;
                self.q(
                    "INSERT INTO mofa_docs (session_id, name, version, content, created_ms) \
                     VALUES (?, ?, ?, ?, ?)",
                )
                .bind(session.clone())
                .bind(name.clone())
                .bind(version)
                .bind(content.clone())
                .bind(now)
                .execute(&mut **tx)
                .await?;
                Ok(json!({ "version": version }))
            }
            Op::DocGet {
                session,
                name,
                version,
            } => {
                let row = match version {
                    Some(v) => {
                        self.q(
                            "SELECT content, version FROM mofa_docs WHERE session_id = ? \
                             AND name = ? AND version = ?",
                        )
                        .bind(session.clone())
                        .bind(name.clone())
                        .bind(*v)
                        .fetch_optional(&mut **tx)
                        .await?
                    }
                    None => {
                        self.q(
                            "SELECT content, version FROM mofa_docs WHERE session_id = ? \
                             AND name = ? ORDER BY version DESC LIMIT 1",
                        )
                        .bind(session.clone())
                        .bind(name.clone())
                        .fetch_optional(&mut **tx)
                        .await?
                    }
                };
                let row = row.ok_or_else(|| {
                    StoreError::NotFound(match version {
                        Some(v) => format!(
                            "doc.get: no version {v} of document `{name}` in session `{session}`"
                        ),
                        None => format!("doc.get: no document `{name}` in session `{session}`"),
                    })
                })?;
                let content: String = row.try_get(0)?;
                let version: i64 = row.try_get(1)?;
                Ok(json!({"content": content, "version": version}))
            }
        }
    }
}

const SESSION_SELECT_BY_ID: &str =
    "SELECT id, title, status, meta, created_ms, updated_ms FROM mofa_sessions WHERE id = ?";

const TODO_SELECT_BY_ID: &str = "SELECT id, session_id, title, detail, capability, status, \
     assignee, result, created_ms, updated_ms FROM mofa_todos WHERE id = ?";

fn no_session(session: &str) -> StoreError {
    StoreError::NotFound(format!("no session `{session}`"))
}

fn no_todo(id: &str) -> StoreError {
    StoreError::NotFound(format!("no todo `{id}`"))
}

/// JSON as stored: `NULL` for `null`, else its text.
fn to_json_text(v: &Value) -> Option<String> {
    (!v.is_null()).then(|| v.to_string())
}

/// Stored JSON text back to a value (`null` for SQL `NULL`; text that is not JSON as a string).
fn parse_json_text(text: Option<&str>) -> Value {
    match text {
        None => Value::Null,
        Some(t) => serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.to_owned())),
    }
}

fn session_json(r: &AnyRow) -> Result<Value, sqlx::Error> {
    Ok(json!({
        "session": r.try_get::<String, _>(0)?,
        "title": r.try_get::<String, _>(1)?,
        "status": r.try_get::<String, _>(2)?,
        "meta": parse_json_text(r.try_get::<Option<String>, _>(3)?.as_deref()),
        "created_ms": r.try_get::<i64, _>(4)?,
        "updated_ms": r.try_get::<i64, _>(5)?,
    }))
}

fn message_json(r: &AnyRow) -> Result<Value, sqlx::Error> {
    Ok(json!({
        "id": r.try_get::<String, _>(0)?,
        "sender": r.try_get::<String, _>(1)?,
        "role": r.try_get::<String, _>(2)?,
        "kind": r.try_get::<String, _>(3)?,
        "content": r.try_get::<String, _>(4)?,
        "payload": r.try_get::<Option<String>, _>(5)?,
        "reply_to": r.try_get::<Option<String>, _>(6)?,
        "tap": r.try_get::<Option<String>, _>(7)?,
        "ts_ms": r.try_get::<i64, _>(8)?,
    }))
}

fn todo_json(r: &AnyRow) -> Result<Value, sqlx::Error> {
    Ok(json!({
        "id": r.try_get::<String, _>(0)?,
        "session": r.try_get::<String, _>(1)?,
        "title": r.try_get::<String, _>(2)?,
        "detail": parse_json_text(r.try_get::<Option<String>, _>(3)?.as_deref()),
        "capability": r.try_get::<Option<String>, _>(4)?,
        "status": r.try_get::<String, _>(5)?,
        "assignee": r.try_get::<Option<String>, _>(6)?,
        "result": parse_json_text(r.try_get::<Option<String>, _>(7)?.as_deref()),
        "created_ms": r.try_get::<i64, _>(8)?,
        "updated_ms": r.try_get::<i64, _>(9)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_follow_the_backend() {
        let sql = "SELECT a FROM t WHERE b = ? AND c = ? LIMIT ?";
        assert_eq!(Backend::Sqlite.sql(sql), sql);
        assert_eq!(Backend::MySql.sql(sql), sql);
        assert_eq!(
            Backend::Postgres.sql(sql),
            "SELECT a FROM t WHERE b = $1 AND c = $2 LIMIT $3"
        );
        assert_eq!(
            Backend::of_url("postgresql://h/db"),
            Some(Backend::Postgres)
        );
        assert_eq!(Backend::of_url("mariadb://h/db"), Some(Backend::MySql));
        assert_eq!(Backend::of_url("sqlite://x.db"), Some(Backend::Sqlite));
        assert_eq!(Backend::of_url("oracle://x"), None);
    }

    #[test]
    fn urls_never_show_the_password() {
        assert_eq!(
            redact_url("postgres://mofa:p%40ss:w@127.0.0.1:5432/db?sslmode=disable"),
            "postgres://mofa:***@127.0.0.1:5432/db?sslmode=disable"
        );
        assert_eq!(
            redact_url("mysql://u@h/db?password=hunter2&x=1"),
            "mysql://u@h/db?password=***&x=1"
        );
        assert_eq!(
            redact_url("sqlite:///tmp/a.db?mode=rwc"),
            "sqlite:///tmp/a.db?mode=rwc"
        );
        let secrets = secrets_of("postgres://mofa:p%40ss@h/db?password=two");
        assert!(secrets.contains(&"p%40ss".to_owned()) && secrets.contains(&"p@ss".to_owned()));
        assert_eq!(
            scrub(&secrets, "auth p@ss failed, two".into()),
            "auth *** failed, ***"
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let o = DbOptions {
            retries: 9,
            retry_delay: Duration::from_millis(500),
            max_retry_delay: Duration::from_secs(3),
            timeout: Duration::from_secs(1),
        };
        let d: Vec<u128> = (0..5).map(|a| o.delay(a).as_millis()).collect();
        assert_eq!(d, [500, 1000, 2000, 3000, 3000]);
        assert_eq!(o.delay(100), Duration::from_secs(3));
    }
}
