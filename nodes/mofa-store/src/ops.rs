//! The requests the store answers: a JSON object `{"op": "...", ...args}` parsed into an [`Op`].
//! The catalog (names, arguments, results) is in the crate docs.

use serde_json::{Map, Value};

use crate::StoreError;

/// One parsed request.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    SessionOpen {
        session: String,
        title: String,
        meta: Value,
    },
    SessionGet {
        session: String,
    },
    SessionClose {
        session: String,
        status: String,
    },
    SessionList {
        status: Option<String>,
    },
    MessageAppend {
        session: String,
        sender: String,
        role: String,
        content: String,
        kind: String,
    },
    MessageList {
        session: String,
        limit: Option<i64>,
    },
    MessageSeen {
        session: String,
        id: String,
    },
    MemoryPut {
        agent: String,
        key: String,
        value: Value,
    },
    MemoryGet {
        agent: String,
        key: String,
    },
    MemoryList {
        agent: String,
        prefix: Option<String>,
    },
    TodoAdd {
        session: String,
        title: String,
        detail: Value,
        capability: Option<String>,
    },
    TodoUpdate {
        id: String,
        status: Option<String>,
        /// `Some(None)`: the assignee is cleared (`"assignee": null`).
        assignee: Option<Option<String>>,
        result: Option<Value>,
    },
    TodoGet {
        id: String,
    },
    TodoList {
        session: String,
    },
    DocPut {
        session: String,
        name: String,
        content: String,
    },
    DocGet {
        session: String,
        name: String,
        version: Option<i64>,
    },
}

/// Every op name, in catalog order.
pub const OPS: [&str; 16] = [
    "session.open",
    "session.get",
    "session.close",
    "session.list",
    "message.append",
    "message.list",
    "message.seen",
    "memory.put",
    "memory.get",
    "memory.list",
    "todo.add",
    "todo.update",
    "todo.get",
    "todo.list",
    "doc.put",
    "doc.get",
];

/// The arguments of one request, with errors that name the op and the argument.
struct Args<'a> {
    op: &'a str,
    map: &'a Map<String, Value>,
}

impl Args<'_> {
    fn bad(&self, why: String) -> StoreError {
        StoreError::BadRequest(format!("{}: {why}", self.op))
    }

    /// A required, non-empty string.
    fn string(&self, name: &str) -> Result<String, StoreError> {
        match self.map.get(name) {
            None | Some(Value::Null) => {
                Err(self.bad(format!("missing argument `{name}` (a string)")))
            }
            Some(v) => self.as_string(name, v),
        }
    }

    fn as_string(&self, name: &str, v: &Value) -> Result<String, StoreError> {
        match v {
            Value::String(s) if !s.is_empty() => Ok(s.clone()),
            Value::String(_) => Err(self.bad(format!("argument `{name}` is empty"))),
            other => Err(self.bad(format!(
                "argument `{name}` must be a string, not {}",
                json_type(other)
            ))),
        }
    }

    /// A required string that may be empty (message content, document text).
    fn text(&self, name: &str) -> Result<String, StoreError> {
        match self.map.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            None | Some(Value::Null) => {
                Err(self.bad(format!("missing argument `{name}` (a string)")))
            }
            Some(other) => Err(self.bad(format!(
                "argument `{name}` must be a string, not {}",
                json_type(other)
            ))),
        }
    }

    /// An optional string; `null` reads as absent.
    fn opt_string(&self, name: &str) -> Result<Option<String>, StoreError> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => self.as_string(name, v).map(Some),
        }
    }

    /// An optional string where an explicit `null` means "clear it".
    fn nullable_string(&self, name: &str) -> Result<Option<Option<String>>, StoreError> {
        match self.map.get(name) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(v) => self.as_string(name, v).map(|s| Some(Some(s))),
        }
    }

    /// Any JSON value; `Null` when absent.
    fn json(&self, name: &str) -> Value {
        self.map.get(name).cloned().unwrap_or(Value::Null)
    }

    /// A required JSON value (`null` allowed, but the key must be there).
    fn required_json(&self, name: &str) -> Result<Value, StoreError> {
        self.map
            .get(name)
            .cloned()
            .ok_or_else(|| self.bad(format!("missing argument `{name}` (any JSON value)")))
    }

    /// An optional integer of at least `min`.
    fn opt_int(&self, name: &str, min: i64) -> Result<Option<i64>, StoreError> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_i64() {
                Some(n) if n >= min => Ok(Some(n)),
                _ => Err(self.bad(format!(
                    "argument `{name}` must be an integer of at least {min}, not {v}"
                ))),
            },
        }
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Op {
    /// Parses a request: a JSON object with a string `op` and the op's arguments.
    pub fn parse(request: &Value) -> Result<Op, StoreError> {
        let Some(map) = request.as_object() else {
            return Err(StoreError::BadRequest(format!(
                "a request is a JSON object {{\"op\": ..., ...}}, not {}",
                json_type(request)
            )));
        };
        let op = match map.get("op") {
            Some(Value::String(op)) => op.as_str(),
            _ => {
                return Err(StoreError::BadRequest(
                    "missing `op` (a string: one of the store's ops)".into(),
                ));
            }
        };
        let a = Args { op, map };
        Ok(match op {
            "session.open" => Op::SessionOpen {
                session: a.string("session")?,
                title: a.text("title")?,
                meta: a.json("meta"),
            },
            "session.get" => Op::SessionGet {
                session: a.string("session")?,
            },
            "session.close" => Op::SessionClose {
                session: a.string("session")?,
                status: a.string("status")?,
            },
            "session.list" => Op::SessionList {
                status: a.opt_string("status")?,
            },
            "message.append" => Op::MessageAppend {
                session: a.string("session")?,
                sender: a.string("sender")?,
                role: a.string("role")?,
                content: a.text("content")?,
                kind: a.opt_string("kind")?.unwrap_or_else(|| "message".into()),
            },
            "message.list" => Op::MessageList {
                session: a.string("session")?,
                limit: a.opt_int("limit", 0)?,
            },
            "message.seen" => Op::MessageSeen {
                session: a.string("session")?,
                id: a.string("id")?,
            },
            "memory.put" => Op::MemoryPut {
                agent: a.string("agent")?,
                key: a.string("key")?,
                value: a.required_json("value")?,
            },
            "memory.get" => Op::MemoryGet {
                agent: a.string("agent")?,
                key: a.string("key")?,
            },
            "memory.list" => Op::MemoryList {
                agent: a.string("agent")?,
                prefix: a.opt_string("prefix")?,
            },
            "todo.add" => Op::TodoAdd {
                session: a.string("session")?,
                title: a.text("title")?,
                detail: a.json("detail"),
                capability: a.opt_string("capability")?,
            },
            "todo.update" => Op::TodoUpdate {
                id: a.string("id")?,
                status: a.opt_string("status")?,
                assignee: a.nullable_string("assignee")?,
                result: map.get("result").cloned(),
            },
            "todo.get" => Op::TodoGet {
                id: a.string("id")?,
            },
            "todo.list" => Op::TodoList {
                session: a.string("session")?,
            },
            "doc.put" => Op::DocPut {
                session: a.string("session")?,
                name: a.string("name")?,
                content: a.text("content")?,
            },
            "doc.get" => Op::DocGet {
                session: a.string("session")?,
                name: a.string("name")?,
                version: a.opt_int("version", 1)?,
            },
            other => {
                return Err(StoreError::BadRequest(format!(
                    "unknown op `{other}` (ops: {})",
                    OPS.join(", ")
                )));
            }
        })
    }

    /// The op's name, as in requests.
    pub fn name(&self) -> &'static str {
        match self {
            Op::SessionOpen { .. } => "session.open",
            Op::SessionGet { .. } => "session.get",
            Op::SessionClose { .. } => "session.close",
            Op::SessionList { .. } => "session.list",
            Op::MessageAppend { .. } => "message.append",
            Op::MessageList { .. } => "message.list",
            Op::MessageSeen { .. } => "message.seen",
            Op::MemoryPut { .. } => "memory.put",
            Op::MemoryGet { .. } => "memory.get",
            Op::MemoryList { .. } => "memory.list",
            Op::TodoAdd { .. } => "todo.add",
            Op::TodoUpdate { .. } => "todo.update",
            Op::TodoGet { .. } => "todo.get",
            Op::TodoList { .. } => "todo.list",
            Op::DocPut { .. } => "doc.put",
            Op::DocGet { .. } => "doc.get",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_every_op_and_names_it_back() {
        let requests = [
            json!({"op": "session.open", "session": "s", "title": "t"}),
            json!({"op": "session.get", "session": "s"}),
            json!({"op": "session.close", "session": "s", "status": "done"}),
            json!({"op": "session.list"}),
            json!({"op": "message.append", "session": "s", "sender": "a", "role": "user", "content": ""}),
            json!({"op": "message.list", "session": "s", "limit": 3}),
            json!({"op": "message.seen", "session": "s", "id": "x"}),
            json!({"op": "memory.put", "agent": "a", "key": "k", "value": null}),
            json!({"op": "memory.get", "agent": "a", "key": "k"}),
            json!({"op": "memory.list", "agent": "a", "prefix": "p"}),
            json!({"op": "todo.add", "session": "s", "title": "t"}),
            json!({"op": "todo.update", "id": "x", "assignee": null}),
            json!({"op": "todo.get", "id": "x"}),
            json!({"op": "todo.list", "session": "s"}),
            json!({"op": "doc.put", "session": "s", "name": "n", "content": "c"}),
            json!({"op": "doc.get", "session": "s", "name": "n", "version": 2}),
        ];
        for (request, name) in requests.iter().zip(OPS) {
            assert_eq!(Op::parse(request).unwrap().name(), name);
        }
        let kind = Op::parse(&requests[4]).unwrap();
        assert!(matches!(kind, Op::MessageAppend { kind, .. } if kind == "message"));
        let cleared = Op::parse(&requests[11]).unwrap();
        assert!(matches!(
            cleared,
            Op::TodoUpdate {
                assignee: Some(None),
                status: None,
                ..
            }
        ));
    }

    #[test]
    fn errors_name_the_op_and_the_argument() {
        let err = |v: Value| Op::parse(&v).unwrap_err().to_string();
        assert!(err(json!({"op": "nope"})).starts_with("unknown op `nope`"));
        assert!(err(json!([1])).contains("JSON object"));
        assert!(err(json!({"session": "s"})).contains("missing `op`"));
        assert_eq!(
            err(json!({"op": "session.get"})),
            "session.get: missing argument `session` (a string)"
        );
        assert!(err(json!({"op": "memory.put", "agent": "a", "key": "k"})).contains("`value`"));
        assert!(
            err(json!({"op": "doc.get", "session": "s", "name": "n", "version": 0}))
                .contains("at least 1")
        );
        assert!(err(json!({"op": "todo.get", "id": 7})).contains("must be a string, not a number"));
        assert!(err(json!({"op": "todo.get", "id": ""})).contains("`id` is empty"));
    }
}
