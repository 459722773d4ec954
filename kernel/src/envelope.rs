//! The envelope: one Arrow schema (`mofa.envelope/1`) for every agent edge.
//!
//! A message is one row of a `StructArray`; a batch is several rows. No node builds Arrow
//! columns by hand: it builds [`Envelope`]s and calls [`to_arrow`] / [`from_arrow`].
//! A plain Utf8 array is accepted too, each string a user task, so dora-hub nodes and
//! hand-written Python nodes can feed the suite.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::arrow::array::{
    Array, ArrayRef, AsArray, Int64Builder, StringBuilder, StructArray, UInt8Builder, UInt32Builder,
};
use crate::arrow::compute::cast;
use crate::arrow::datatypes::{DataType, Field, Fields, Int64Type, UInt8Type, UInt32Type};

/// Schema name and version carried in dora metadata under [`SCHEMA_KEY`].
pub const SCHEMA: &str = "mofa.envelope/1";
/// The dora metadata parameter that names the schema of an output.
pub const SCHEMA_KEY: &str = "mofa.schema";

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Task,
    Message,
    Result,
    ToolCall,
    ToolResult,
    Token,
    Vote,
    Control,
    Error,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Task,
        Kind::Message,
        Kind::Result,
        Kind::ToolCall,
        Kind::ToolResult,
        Kind::Token,
        Kind::Vote,
        Kind::Control,
        Kind::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Task => "task",
            Kind::Message => "message",
            Kind::Result => "result",
            Kind::ToolCall => "tool_call",
            Kind::ToolResult => "tool_result",
            Kind::Token => "token",
            Kind::Vote => "vote",
            Kind::Control => "control",
            Kind::Error => "error",
        }
    }
}

/// Who speaks, in chat terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::System, Role::User, Role::Assistant, Role::Tool];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// Scheduling priority: higher is served first where work queues. In JSON it is its number,
/// as in the Arrow column.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(try_from = "u8", into = "u8")]
pub enum Priority {
    Low = 0,
    #[default]
    Normal = 1,
    High = 2,
    Critical = 3,
}

impl Priority {
    pub const ALL: [Priority; 4] = [
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Critical,
    ];
}

impl From<Priority> for u8 {
    fn from(p: Priority) -> u8 {
        p as u8
    }
}

impl TryFrom<u8> for Priority {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, String> {
        Priority::ALL
            .get(v as usize)
            .copied()
            .ok_or_else(|| format!("priority {v} is out of range 0..=3"))
    }
}

macro_rules! string_enum {
    ($t:ty, $what:literal) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                <$t>::ALL
                    .iter()
                    .find(|v| v.as_str() == s)
                    .copied()
                    .ok_or_else(|| format!("unknown {} `{}`", $what, s))
            }
        }
    };
}
string_enum!(Kind, "kind");
string_enum!(Role, "role");

/// One message on an agent edge. Field meanings: DESIGN.md, "The envelope".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: String,
    pub session: String,
    pub reply_to: Option<String>,
    pub kind: Kind,
    pub sender: String,
    pub role: Role,
    pub content: String,
    /// JSON text: tool calls and results, votes, usage, error details.
    pub payload: Option<String>,
    pub round: u32,
    pub priority: Priority,
    pub ts_ms: i64,
}

/// A unique, time-ordered message id (UUIDv7).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Envelope {
    /// A new message that starts a conversation of its own (its id is its session).
    pub fn new(
        kind: Kind,
        sender: impl Into<String>,
        role: Role,
        content: impl Into<String>,
    ) -> Self {
        let id = new_id();
        Envelope {
            session: id.clone(),
            id,
            reply_to: None,
            kind,
            sender: sender.into(),
            role,
            content: content.into(),
            payload: None,
            round: 0,
            priority: Priority::Normal,
            ts_ms: now_ms(),
        }
    }

    /// A user task in a new session.
    pub fn task(sender: impl Into<String>, content: impl Into<String>) -> Self {
        Envelope::new(Kind::Task, sender, Role::User, content)
    }

    /// A message answering `self`: same session, round and priority, `reply_to` set.
    pub fn reply(
        &self,
        kind: Kind,
        sender: impl Into<String>,
        role: Role,
        content: impl Into<String>,
    ) -> Self {
        Envelope {
            id: new_id(),
            session: self.session.clone(),
            reply_to: Some(self.id.clone()),
            kind,
            sender: sender.into(),
            role,
            content: content.into(),
            payload: None,
            round: self.round,
            priority: self.priority,
            ts_ms: now_ms(),
        }
    }

    /// An `error` envelope answering `self`, the details as JSON payload.
    pub fn error_reply(
        &self,
        sender: impl Into<String>,
        message: impl Into<String>,
        details: serde_json::Value,
    ) -> Self {
        self.reply(Kind::Error, sender, Role::Assistant, message)
            .with_payload(&details)
    }

    pub fn with_session(mut self, session: impl Into<String>) -> Self {
        self.session = session.into();
        self
    }

    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    pub fn with_round(mut self, round: u32) -> Self {
        self.round = round;
        self
    }

    pub fn with_payload(mut self, payload: &serde_json::Value) -> Self {
        self.payload = Some(payload.to_string());
        self
    }

    /// The payload parsed as JSON; `Null` when absent.
    pub fn payload_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        match &self.payload {
            Some(p) => serde_json::from_str(p),
            None => Ok(serde_json::Value::Null),
        }
    }
}

/// Why an array is not a batch of envelopes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("expected a StructArray of {SCHEMA} or a Utf8 array of tasks, got {0}")]
    UnsupportedType(String),
    #[error("not a {SCHEMA} struct: missing column `{0}`")]
    MissingColumn(&'static str),
    #[error("column `{column}` has type {found}, expected {expected}")]
    ColumnType {
        column: &'static str,
        found: String,
        expected: &'static str,
    },
    #[error("row {row}: column `{column}` is null")]
    Null { row: usize, column: &'static str },
    #[error("row {row}: {message}")]
    Value { row: usize, message: String },
}

/// Built once: field names are allocations, and every encode needs them.
fn fields() -> Fields {
    static FIELDS: std::sync::OnceLock<Fields> = std::sync::OnceLock::new();
    FIELDS
        .get_or_init(|| {
            Fields::from(vec![
                Field::new("id", DataType::Utf8, false),
                Field::new("session", DataType::Utf8, false),
                Field::new("reply_to", DataType::Utf8, true),
                Field::new("kind", DataType::Utf8, false),
                Field::new("sender", DataType::Utf8, false),
                Field::new("role", DataType::Utf8, false),
                Field::new("content", DataType::Utf8, false),
                Field::new("payload", DataType::Utf8, true),
                Field::new("round", DataType::UInt32, false),
                Field::new("priority", DataType::UInt8, false),
                Field::new("ts_ms", DataType::Int64, false),
            ])
        })
        .clone()
}

/// The Arrow type of an envelope batch.
pub fn data_type() -> DataType {
    DataType::Struct(fields())
}

/// Encodes a batch of envelopes as one `StructArray`, a row each.
pub fn to_arrow(batch: &[Envelope]) -> ArrayRef {
    let n = batch.len();
    let text = |f: &dyn Fn(&Envelope) -> &str| {
        let bytes = batch.iter().map(|e| f(e).len()).sum();
        let mut b = StringBuilder::with_capacity(n, bytes);
        for e in batch {
            b.append_value(f(e));
        }
        Arc::new(b.finish()) as ArrayRef
    };
    let opt_text = |f: &dyn Fn(&Envelope) -> Option<&str>| {
        let bytes = batch.iter().map(|e| f(e).map_or(0, str::len)).sum();
        let mut b = StringBuilder::with_capacity(n, bytes);
        for e in batch {
            b.append_option(f(e));
        }
        Arc::new(b.finish()) as ArrayRef
    };
    let mut round = UInt32Builder::with_capacity(n);
    let mut priority = UInt8Builder::with_capacity(n);
    let mut ts = Int64Builder::with_capacity(n);
    for e in batch {
        round.append_value(e.round);
        priority.append_value(e.priority as u8);
        ts.append_value(e.ts_ms);
    }
    let columns: Vec<ArrayRef> = vec![
        text(&|e| &e.id),
        text(&|e| &e.session),
        opt_text(&|e| e.reply_to.as_deref()),
        text(&|e| e.kind.as_str()),
        text(&|e| &e.sender),
        text(&|e| e.role.as_str()),
        text(&|e| &e.content),
        opt_text(&|e| e.payload.as_deref()),
        Arc::new(round.finish()),
        Arc::new(priority.finish()),
        Arc::new(ts.finish()),
    ];
    Arc::new(StructArray::new(fields(), columns, None))
}

/// Encodes only the `content` of each envelope, for plain-text consumers (dora-hub nodes).
pub fn to_text_arrow(batch: &[Envelope]) -> ArrayRef {
    let mut b = StringBuilder::new();
    for e in batch {
        b.append_value(&e.content);
    }
    Arc::new(b.finish())
}

/// Decodes a batch: a `mofa.envelope/1` struct, or a Utf8 array whose strings are user tasks
/// (each in a new session, sent by `sender`).
///
/// Lenient where that costs nothing: string columns may be Utf8, LargeUtf8 or Utf8View, the
/// numeric ones any integer type (Python's pyarrow infers int64), and the columns with a
/// natural default may be missing. `id`, `session`, `kind` and `content` are required.
pub fn from_arrow(array: &dyn Array, sender: &str) -> Result<Vec<Envelope>, DecodeError> {
    match array.data_type() {
        DataType::Struct(_) => decode_struct(array.as_struct()),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let strings = cast(array, &DataType::Utf8).map_err(|e| {
                DecodeError::UnsupportedType(format!("{} ({e})", array.data_type()))
            })?;
            let strings = strings.as_string::<i32>();
            (0..strings.len())
                .map(|row| {
                    if strings.is_null(row) {
                        return Err(DecodeError::Null {
                            row,
                            column: "(text)",
                        });
                    }
                    Ok(Envelope::task(sender, strings.value(row)))
                })
                .collect()
        }
        other => Err(DecodeError::UnsupportedType(other.to_string())),
    }
}

fn to_utf8(array: &ArrayRef, column: &'static str) -> Result<ArrayRef, DecodeError> {
    match array.data_type() {
        // The common case costs a reference count, not a cast.
        DataType::Utf8 => Ok(array.clone()),
        DataType::LargeUtf8 | DataType::Utf8View => {
            cast(array, &DataType::Utf8).map_err(|e| DecodeError::ColumnType {
                column,
                found: format!("{} ({e})", array.data_type()),
                expected: "Utf8",
            })
        }
        other => Err(DecodeError::ColumnType {
            column,
            found: other.to_string(),
            expected: "Utf8",
        }),
    }
}

fn to_int(array: &ArrayRef, column: &'static str, to: DataType) -> Result<ArrayRef, DecodeError> {
    if array.data_type() == &to {
        return Ok(array.clone());
    }
    if !array.data_type().is_integer() {
        return Err(DecodeError::ColumnType {
            column,
            found: array.data_type().to_string(),
            expected: "an integer",
        });
    }
    // A checked cast: an out-of-range value fails instead of wrapping.
    let options = crate::arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    crate::arrow::compute::cast_with_options(array, &to, &options).map_err(|e| {
        DecodeError::ColumnType {
            column,
            found: format!("{} ({e})", array.data_type()),
            expected: "an integer in range",
        }
    })
}

fn decode_struct(s: &StructArray) -> Result<Vec<Envelope>, DecodeError> {
    // In our own batches the columns are in schema order: find them by position first.
    let column = |name: &str| -> Option<&ArrayRef> {
        let i = fields().iter().position(|f| f.name() == name)?;
        match s.fields().get(i) {
            Some(f) if f.name() == name => Some(s.column(i)),
            _ => s.column_by_name(name),
        }
    };
    let text_col = |name: &'static str, required: bool| -> Result<Option<ArrayRef>, DecodeError> {
        match column(name) {
            Some(c) => Ok(Some(to_utf8(c, name)?)),
            None if required => Err(DecodeError::MissingColumn(name)),
            None => Ok(None),
        }
    };
    let int_col = |name: &'static str, to: DataType| -> Result<Option<ArrayRef>, DecodeError> {
        column(name).map(|c| to_int(c, name, to)).transpose()
    };
    let id = text_col("id", true)?.expect("required");
    let session = text_col("session", true)?.expect("required");
    let kind = text_col("kind", true)?.expect("required");
    let content = text_col("content", true)?.expect("required");
    let reply_to = text_col("reply_to", false)?;
    let sender = text_col("sender", false)?;
    let role = text_col("role", false)?;
    let payload = text_col("payload", false)?;
    let round = int_col("round", DataType::UInt32)?;
    let priority = int_col("priority", DataType::UInt8)?;
    let ts = int_col("ts_ms", DataType::Int64)?;

    let req = |a: &ArrayRef, row: usize, column: &'static str| -> Result<String, DecodeError> {
        let a = a.as_string::<i32>();
        if a.is_null(row) || s.is_null(row) {
            Err(DecodeError::Null { row, column })
        } else {
            Ok(a.value(row).to_owned())
        }
    };
    let opt = |a: &Option<ArrayRef>, row: usize| -> Option<String> {
        a.as_ref().and_then(|a| {
            let a = a.as_string::<i32>();
            (!a.is_null(row)).then(|| a.value(row).to_owned())
        })
    };
    let value_err = |row: usize| move |message: String| DecodeError::Value { row, message };

    (0..s.len())
        .map(|row| {
            let kind: Kind = req(&kind, row, "kind")?.parse().map_err(value_err(row))?;
            let role: Role = match opt(&role, row) {
                Some(r) => r.parse().map_err(value_err(row))?,
                None => Role::User,
            };
            let priority = match &priority {
                Some(p) if !p.is_null(row) => {
                    Priority::try_from(p.as_primitive::<UInt8Type>().value(row))
                        .map_err(value_err(row))?
                }
                _ => Priority::Normal,
            };
            Ok(Envelope {
                id: req(&id, row, "id")?,
                session: req(&session, row, "session")?,
                reply_to: opt(&reply_to, row),
                kind,
                sender: opt(&sender, row).unwrap_or_default(),
                role,
                content: req(&content, row, "content")?,
                payload: opt(&payload, row),
                round: round
                    .as_ref()
                    .filter(|r| !r.is_null(row))
                    .map_or(0, |r| r.as_primitive::<UInt32Type>().value(row)),
                priority,
                ts_ms: ts
                    .as_ref()
                    .filter(|t| !t.is_null(row))
                    .map_or_else(now_ms, |t| t.as_primitive::<Int64Type>().value(row)),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arrow::array::{Int32Array, Int64Array, StringArray};
    use proptest::prelude::*;

    fn arb_envelope() -> impl Strategy<Value = Envelope> {
        (
            (".{0,12}", ".{0,12}", proptest::option::of(".{0,12}")),
            (0..Kind::ALL.len(), ".{0,8}", 0..Role::ALL.len()),
            (".{0,40}", proptest::option::of(".{0,20}")),
            (any::<u32>(), 0..4u8, any::<i64>()),
        )
            .prop_map(
                |((id, session, reply_to), (k, sender, r), (content, payload), (round, p, ts))| {
                    Envelope {
                        id,
                        session,
                        reply_to,
                        kind: Kind::ALL[k],
                        sender,
                        role: Role::ALL[r],
                        content,
                        payload,
                        round,
                        priority: Priority::try_from(p).unwrap(),
                        ts_ms: ts,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn any_batch_round_trips(batch in proptest::collection::vec(arb_envelope(), 0..20)) {
            let array = to_arrow(&batch);
            prop_assert_eq!(array.len(), batch.len());
            let back = from_arrow(array.as_ref(), "x").unwrap();
            prop_assert_eq!(back, batch);
        }
    }

    #[test]
    fn kinds_and_roles_parse_back() {
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>().unwrap(), k);
        }
        for r in Role::ALL {
            assert_eq!(r.to_string().parse::<Role>().unwrap(), r);
        }
        assert_eq!("shout".parse::<Kind>().unwrap_err(), "unknown kind `shout`");
    }

    #[test]
    fn plain_strings_become_tasks_in_sessions_of_their_own() {
        let a = StringArray::from(vec!["one", "two"]);
        let tasks = from_arrow(&a, "hub").unwrap();
        assert_eq!(tasks.len(), 2);
        assert!(
            tasks
                .iter()
                .all(|t| t.kind == Kind::Task && t.role == Role::User)
        );
        assert_eq!(tasks[1].content, "two");
        assert_eq!(tasks[0].sender, "hub");
        assert_ne!(tasks[0].session, tasks[1].session);
    }

    #[test]
    fn int64_columns_and_missing_optionals_are_accepted() {
        // What pyarrow infers from a list of dicts without the optional keys.
        let s = StructArray::from(vec![
            (
                Arc::new(Field::new("id", DataType::Utf8, true)),
                Arc::new(StringArray::from(vec!["a"])) as ArrayRef,
            ),
            (
                Arc::new(Field::new("session", DataType::Utf8, true)),
                Arc::new(StringArray::from(vec!["s"])) as ArrayRef,
            ),
            (
                Arc::new(Field::new("kind", DataType::Utf8, true)),
                Arc::new(StringArray::from(vec!["task"])) as ArrayRef,
            ),
            (
                Arc::new(Field::new("content", DataType::Utf8, true)),
                Arc::new(StringArray::from(vec!["hi"])) as ArrayRef,
            ),
            (
                Arc::new(Field::new("priority", DataType::Int64, true)),
                Arc::new(Int64Array::from(vec![3])) as ArrayRef,
            ),
        ]);
        let e = &from_arrow(&s, "py").unwrap()[0];
        assert_eq!(e.priority, Priority::Critical);
        assert_eq!(e.role, Role::User);
        assert_eq!(e.round, 0);
    }

    #[test]
    fn another_schema_is_rejected_with_the_missing_column() {
        let s = StructArray::from(vec![(
            Arc::new(Field::new("foo", DataType::Utf8, true)),
            Arc::new(StringArray::from(vec!["bar"])) as ArrayRef,
        )]);
        let err = from_arrow(&s, "x").unwrap_err();
        assert_eq!(err, DecodeError::MissingColumn("id"));
        assert!(err.to_string().contains("missing column `id`"));
    }

    #[test]
    fn wrong_types_and_values_are_named() {
        let err = from_arrow(&Int32Array::from(vec![1, 2]), "x").unwrap_err();
        assert!(err.to_string().contains("got Int32"), "{err}");

        let mut e = Envelope::task("t", "x");
        e.priority = Priority::High;
        let good = to_arrow(&[e]);
        let s = good.as_struct();
        let mut cols: Vec<ArrayRef> = s.columns().to_vec();
        let mut fs: Vec<Field> = s.fields().iter().map(|f| f.as_ref().clone()).collect();
        // priority 9 is out of range
        cols[9] = Arc::new(Int32Array::from(vec![9]));
        fs[9] = Field::new("priority", DataType::Int32, false);
        let bad = StructArray::new(Fields::from(fs.clone()), cols.clone(), None);
        let err = from_arrow(&bad, "x").unwrap_err();
        assert!(
            err.to_string()
                .contains("row 0: priority 9 is out of range"),
            "{err}"
        );
        // round as text
        cols[8] = Arc::new(StringArray::from(vec!["1"]));
        fs[8] = Field::new("round", DataType::Utf8, false);
        let bad = StructArray::new(Fields::from(fs), cols, None);
        let err = from_arrow(&bad, "x").unwrap_err();
        assert!(
            err.to_string().contains("column `round` has type Utf8"),
            "{err}"
        );
    }

    #[test]
    fn replies_keep_session_and_point_back() {
        let t = Envelope::task("src", "q")
            .with_priority(Priority::High)
            .with_round(2);
        let r = t.reply(Kind::Result, "agent", Role::Assistant, "a");
        assert_eq!(r.session, t.session);
        assert_eq!(r.reply_to.as_deref(), Some(t.id.as_str()));
        assert_eq!((r.round, r.priority), (2, Priority::High));
        assert!(r.id > t.id, "ids are time-ordered");
        let err = t.error_reply("agent", "boom", serde_json::json!({"code": 1}));
        assert_eq!(err.kind, Kind::Error);
        assert_eq!(err.payload_json().unwrap()["code"], 1);
    }
}
