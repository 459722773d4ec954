//! A deterministic OpenAI-compatible chat server, for tests only.
//!
//! It answers `POST /v1/chat/completions` (plain and SSE streaming) from a [`Script`]: a list
//! of rules, each matching a substring of the request's messages, that can reply with text or
//! tool calls, wait first, answer an HTTP error, or send a body that is not JSON. Requests no
//! rule takes get the default: `mock reply N to: <last user message>`. Every request is
//! recorded with its start and end time (`GET /_mock/requests`, or [`MockLlm::requests`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// One scripted behaviour.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Rule {
    /// Taken when any message's content contains this text (empty matches every request).
    #[serde(default, rename = "match")]
    pub matches: String,
    /// How many requests this rule answers before it is used up (`None`: every one).
    #[serde(default)]
    pub times: Option<u32>,
    /// Wait this long before answering.
    #[serde(default)]
    pub delay_ms: u64,
    /// Answer with this HTTP status and an OpenAI-style error body.
    #[serde(default)]
    pub status: Option<u16>,
    /// Answer 200 with this body verbatim (for malformed answers).
    #[serde(default)]
    pub raw_body: Option<String>,
    /// The assistant's text; with `{n}` replaced by the request's number, `{last}` by the
    /// last user message and `{tool}` by the last tool result.
    #[serde(default)]
    pub content: Option<String>,
    /// Tool calls to answer with: `[{"name": "...", "arguments": {...}}]`.
    #[serde(default)]
    pub tool_calls: Vec<Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Script {
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// A request as the server saw it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recorded {
    /// 1-based order of arrival.
    pub n: u32,
    pub body: Value,
    /// Whether an `Authorization: Bearer` header came (its value is never recorded).
    pub authorized: bool,
    /// Microseconds since the server started, at arrival and when the answer was sent.
    pub start_us: u64,
    pub end_us: u64,
}

impl Recorded {
    /// All message contents, joined: what the model was shown.
    pub fn prompt(&self) -> String {
        self.body["messages"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .map(|m| m["content"].as_str().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }

    /// The `prompt_tokens` the mock reported for this request (a word count of the prompt).
    pub fn prompt_tokens(&self) -> u32 {
        words(&self.prompt())
    }

    pub fn system(&self) -> String {
        self.body["messages"][0]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

struct Inner {
    started: Instant,
    script: Mutex<(Script, Vec<u32>)>,
    requests: Mutex<Vec<Recorded>>,
}

/// A running mock server; it stops when dropped.
pub struct MockLlm {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MockLlm {
    /// Starts on 127.0.0.1 at a free port, on a thread of its own (usable from plain tests).
    pub fn start(script: Script) -> MockLlm {
        Self::start_on(script, 0)
    }

    pub fn start_on(script: Script, port: u16) -> MockLlm {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind mock");
        Self::start_with(script, listener)
    }

    /// Serves on a listener the caller has bound: on another address, or inside another
    /// network namespace (see `netns::Network::run_in`).
    pub fn start_with(script: Script, listener: std::net::TcpListener) -> MockLlm {
        let used = vec![0; script.rules.len()];
        let inner = Arc::new(Inner {
            started: Instant::now(),
            script: Mutex::new((script, used)),
            requests: Mutex::new(Vec::new()),
        });
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = router(inner.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await
                    .expect("serve");
            });
            rt.shutdown_timeout(Duration::from_millis(100));
        });
        MockLlm {
            addr,
            inner,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// The base URL to give as OPENAI_BASE_URL.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.requests.lock().unwrap().clone()
    }

    pub fn set_script(&self, script: Script) {
        let used = vec![0; script.rules.len()];
        *self.inner.script.lock().unwrap() = (script, used);
    }
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/_mock/requests", get(recorded))
        .route("/_mock/script", post(set_script))
        .with_state(inner)
}

async fn models() -> Json<Value> {
    Json(json!({"object": "list", "data": [{"id": "mock-model", "object": "model"}]}))
}

async fn recorded(State(inner): State<Arc<Inner>>) -> Json<Vec<Recorded>> {
    Json(inner.requests.lock().unwrap().clone())
}

async fn set_script(State(inner): State<Arc<Inner>>, Json(script): Json<Script>) -> StatusCode {
    let used = vec![0; script.rules.len()];
    *inner.script.lock().unwrap() = (script, used);
    StatusCode::NO_CONTENT
}

fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}

fn words(s: &str) -> u32 {
    s.split_whitespace().count() as u32
}

async fn chat(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let start_us = micros(inner.started);
    let n = {
        let mut reqs = inner.requests.lock().unwrap();
        let n = reqs.len() as u32 + 1;
        reqs.push(Recorded {
            n,
            body: body.clone(),
            authorized: headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("Bearer ")),
            start_us,
            end_us: start_us,
        });
        n
    };
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let all_text: String = messages
        .iter()
        .map(|m| m["content"].as_str().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let last_user = last_content(&messages, "user");

    let rule = {
        let mut guard = inner.script.lock().unwrap();
        let (script, used) = &mut *guard;
        let pick =
            script.rules.iter().enumerate().find(|(i, r)| {
                all_text.contains(&r.matches) && r.times.is_none_or(|t| used[*i] < t)
            });
        pick.map(|(i, r)| {
            used[i] += 1;
            r.clone()
        })
    }
    .unwrap_or_default();

    if rule.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(rule.delay_ms)).await;
    }
    let last_tool = last_content(&messages, "tool");
    let response = answer(&rule, &body, n, (&last_user, &last_tool), &all_text);
    if let Some(r) = inner.requests.lock().unwrap().get_mut(n as usize - 1) {
        r.end_us = micros(inner.started);
    }
    response
}

/// The content of the last message with this role ("" if none).
fn last_content(messages: &[Value], role: &str) -> String {
    messages
        .iter()
        .rev()
        .find(|m| m["role"] == role)
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned()
}

fn answer(
    rule: &Rule,
    body: &Value,
    n: u32,
    (last_user, last_tool): (&str, &str),
    all_text: &str,
) -> Response {
    if let Some(status) = rule.status {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let err = json!({"error": {"message": format!("mock error {status}"), "type": "mock"}});
        return (code, Json(err)).into_response();
    }
    if let Some(raw) = &rule.raw_body {
        return (
            StatusCode::OK,
            [("content-type", "application/json")],
            raw.clone(),
        )
            .into_response();
    }
    let content = rule
        .content
        .clone()
        .unwrap_or_else(|| "mock reply {n} to: {last}".into())
        .replace("{n}", &n.to_string())
        .replace("{last}", last_user)
        .replace("{tool}", last_tool);
    let tool_calls: Vec<Value> = rule
        .tool_calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({
                "id": format!("call_{n}_{i}"),
                "type": "function",
                "function": {"name": c["name"], "arguments": c["arguments"].to_string()},
            })
        })
        .collect();
    let content = if tool_calls.is_empty() {
        content
    } else {
        String::new()
    };
    let finish = if tool_calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    let usage = json!({
        "prompt_tokens": words(all_text),
        "completion_tokens": words(&content),
        "total_tokens": words(all_text) + words(&content),
    });
    let model = body["model"].as_str().unwrap_or("mock-model").to_owned();
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);

    if body["stream"].as_bool() == Some(true) {
        let mut sse = String::new();
        let mut push = |delta: Value, finish: Value, usage: Value| {
            let chunk = json!({
                "id": format!("chatcmpl-{n}"), "object": "chat.completion.chunk",
                "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                "usage": usage,
            });
            sse.push_str(&format!("data: {chunk}\n\n"));
        };
        push(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
            Value::Null,
        );
        // One chunk per word, keeping the spaces, so the tokens rebuild the text exactly.
        for piece in content.split_inclusive(' ') {
            push(json!({"content": piece}), Value::Null, Value::Null);
        }
        for (i, c) in tool_calls.iter().enumerate() {
            push(
                json!({"tool_calls": [{"index": i, "id": c["id"], "type": "function", "function": c["function"]}]}),
                Value::Null,
                Value::Null,
            );
        }
        push(json!({}), json!(finish), usage);
        sse.push_str("data: [DONE]\n\n");
        return Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from(sse))
            .expect("response");
    }

    let message = if tool_calls.is_empty() {
        json!({"role": "assistant", "content": content})
    } else {
        json!({"role": "assistant", "content": Value::Null, "tool_calls": tool_calls})
    };
    Json(json!({
        "id": format!("chatcmpl-{n}"),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage,
    }))
    .into_response()
}

/// The react scenario the react tests share: the model saves a note with `file_write`
/// (answering after `first_delay_ms`), then computes 17 * 23 with `calculator`, then answers
/// quoting the result: "Saved. The product is {tool}".
pub fn save_then_compute(first_delay_ms: u64) -> Script {
    Script {
        rules: vec![
            Rule {
                matches: "Save a note".into(),
                times: Some(1),
                delay_ms: first_delay_ms,
                tool_calls: vec![
                    json!({"name": "file_write", "arguments": {"path": "notes/otters.txt", "content": "Otters hold hands."}}),
                ],
                ..Default::default()
            },
            Rule {
                matches: "\"bytes\"".into(),
                times: Some(1),
                tool_calls: vec![
                    json!({"name": "calculator", "arguments": {"expression": "17 * 23"}}),
                ],
                ..Default::default()
            },
            Rule {
                matches: "\"value\"".into(),
                content: Some("Saved. The product is {tool}".into()),
                ..Default::default()
            },
        ],
    }
}
