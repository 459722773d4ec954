//! The HTTP front end: a page for a person and a JSON API for scripts, on 127.0.0.1 only.
//!
//! - `GET /`: a self-contained HTML page (no external assets) listing the pending questions,
//!   with a button per choice or a text box, refreshed every second.
//! - `GET /api/questions`: the pending questions, oldest first, as a JSON list of
//!   `{id, session, question, choices, default, deadline_ms, context}` (`choices` is `[]` for
//!   free text; `default` and `context` may be `null`; `deadline_ms` is Unix milliseconds).
//! - `POST /api/questions/{id}/answer` with `Content-Type: application/json` and body
//!   `{"answer": "..."}`: 200 `{"ok": true, "answer": "<as taken>", "question_id": "..."}`;
//!   404 for an unknown question; 409 if it is answered already (by a person, its default, or
//!   an error); 422 `{"ok": false, "error": "...", "choices": [...]}` for an answer that is not
//!   one of the choices (or empty), and the question stays pending; 400 for a body that is not
//!   `{"answer": "<text>"}`; 415 without the JSON content type.
//!
//! Every request whose `Host` is not `localhost`, `127.x.x.x` or `[::1]` (with any port), or
//! whose `Origin`, when present, is not one of those, gets 403: a web page from elsewhere
//! cannot reach the API through DNS rebinding or a cross-site request. Errors are JSON
//! `{"ok": false, "error": "..."}`.

use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::{Core, Outcome, Question};

pub(crate) fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/questions", get(list))
        .route("/api/questions/{id}/answer", post(answer))
        .layer(middleware::from_fn(loopback_only))
        .with_state(core)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"ok": false, "error": message.into()})),
    )
        .into_response()
}

/// `host` is a loopback name, with or without a port: `localhost`, `127.0.0.1`, `[::1]`.
pub fn is_loopback_host(host: &str) -> bool {
    // (name, the port part: "" or ":<port>")
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some(split) => split,
            None => return false,
        }
    } else {
        match host.rfind(':') {
            Some(i) => host.split_at(i),
            None => (host, ""),
        }
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let name_ok = name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    port_ok && name_ok
}

/// `origin` (`scheme://host[:port]`) is a loopback page.
fn is_loopback_origin(origin: &str) -> bool {
    match origin.split_once("://") {
        Some(("http" | "https", host)) => is_loopback_host(host),
        _ => false,
    }
}

/// Middleware: refuses requests for a non-loopback `Host` or from a non-loopback `Origin` (a
/// DNS-rebinding and cross-site guard), and marks answers not to be cached or framed.
pub async fn loopback_only(req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    if !host.as_deref().is_some_and(is_loopback_host) {
        tracing::warn!("refused a request for host {host:?}: only loopback names are served");
        return error(
            StatusCode::FORBIDDEN,
            "only requests to localhost or 127.0.0.1 are served",
        );
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let ok = origin.to_str().is_ok_and(is_loopback_origin);
        if !ok {
            tracing::warn!("refused a request from origin {origin:?}");
            return error(
                StatusCode::FORBIDDEN,
                "only pages served from localhost may call this API",
            );
        }
    }
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("frame-ancestors 'none'"),
    );
    res
}

async fn list(State(core): State<Arc<Core>>) -> axum::Json<Vec<Question>> {
    axum::Json(core.pending())
}

async fn answer(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json_body {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the answer as Content-Type: application/json",
        );
    }
    let text = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) => match m.get("answer") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "the body must be {\"answer\": \"<text>\"}",
                );
            }
        },
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "the body must be {\"answer\": \"<text>\"}",
            );
        }
    };
    match core.answer(&id, &text) {
        Outcome::Answered(answer) => (
            StatusCode::OK,
            axum::Json(json!({"ok": true, "answer": answer, "question_id": id})),
        )
            .into_response(),
        Outcome::Unknown => error(StatusCode::NOT_FOUND, format!("no question {id}")),
        Outcome::AlreadyAnswered => error(
            StatusCode::CONFLICT,
            format!("question {id} is answered already"),
        ),
        Outcome::Refused { reason, choices } => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({"ok": false, "error": reason, "choices": choices})),
        )
            .into_response(),
    }
}

async fn page(State(core): State<Arc<Core>>) -> Html<String> {
    let questions = core.pending();
    let mut items = String::new();
    for q in &questions {
        items.push_str(&format!(
            "<div class=\"q\" data-id=\"{}\"><p class=\"text\">{}</p>{}</div>\n",
            escape(&q.id),
            escape(&q.question),
            q.context
                .as_deref()
                .map(|c| format!("<pre class=\"ctx\">{}</pre>", escape(c)))
                .unwrap_or_default(),
        ));
    }
    if questions.is_empty() {
        items.push_str("<p class=\"none\">No questions waiting.</p>");
    }
    Html(PAGE.replace("<!--QUESTIONS-->", &items))
}

/// Text made safe inside HTML elements and quoted attributes.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mofa-human: questions</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 48rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
h1 { font-size: 1.4rem; }
.q { border: 1px solid #ccc; border-radius: 6px; padding: 0.8rem 1rem; margin: 1rem 0; }
.text { font-size: 1.1rem; white-space: pre-wrap; margin: 0 0 0.5rem; }
.ctx { background: #f5f5f5; padding: 0.5rem; white-space: pre-wrap; font-size: 0.9rem; }
.meta { color: #666; font-size: 0.85rem; }
.err { color: #b00020; }
button { margin: 0.2rem 0.4rem 0.2rem 0; padding: 0.3rem 0.9rem; }
input[type=text] { width: 70%; padding: 0.3rem; }
#status { color: #666; font-size: 0.85rem; }
</style>
</head>
<body>
<h1>Questions waiting for you</h1>
<p id="status"></p>
<div id="questions">
<!--QUESTIONS-->
</div>
<script>
"use strict";
const list = document.getElementById("questions");
const statusLine = document.getElementById("status");
const shown = new Map();
let first = true;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

async function send(q, text, err) {
  err.textContent = "";
  try {
    const r = await fetch("/api/questions/" + encodeURIComponent(q.id) + "/answer", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ answer: text }),
    });
    const j = await r.json().catch(() => ({}));
    if (!r.ok) { err.textContent = j.error || ("HTTP " + r.status); return; }
    refresh();
  } catch (e) {
    err.textContent = "could not send: " + e;
  }
}

function item(q) {
  const box = el("div", "q");
  box.appendChild(el("p", "text", q.question));
  if (q.context) box.appendChild(el("pre", "ctx", q.context));
  const err = el("p", "err");
  const row = el("div");
  if (q.choices.length) {
    for (const c of q.choices) {
      const b = el("button", null, c);
      b.onclick = () => send(q, c, err);
      row.appendChild(b);
    }
  } else {
    const form = el("form");
    const input = el("input");
    input.type = "text";
    input.placeholder = "your answer";
    const b = el("button", null, "Answer");
    b.type = "submit";
    form.onsubmit = (ev) => { ev.preventDefault(); send(q, input.value, err); };
    form.appendChild(input);
    form.appendChild(b);
    row.appendChild(form);
  }
  box.appendChild(row);
  box.appendChild(err);
  const meta = el("p", "meta");
  box.appendChild(meta);
  return { box, meta, q };
}

function tick() {
  const now = Date.now();
  for (const { meta, q } of shown.values()) {
    const left = Math.max(0, Math.round((q.deadline_ms - now) / 1000));
    meta.textContent = (q.default !== null ? "default \u201c" + q.default + "\u201d" : "no default")
      + " in " + left + " s \u00b7 session " + q.session;
  }
}

function render(qs) {
  if (first) { list.replaceChildren(); first = false; }
  const ids = new Set(qs.map((q) => q.id));
  for (const [id, s] of shown) {
    if (!ids.has(id)) { s.box.remove(); shown.delete(id); }
  }
  for (const q of qs) {
    if (!shown.has(q.id)) {
      const s = item(q);
      shown.set(q.id, s);
      list.appendChild(s.box);
    }
  }
  statusLine.textContent = qs.length ? "" : "No questions waiting.";
  tick();
}

async function refresh() {
  try {
    const r = await fetch("/api/questions");
    render(await r.json());
  } catch (e) {
    statusLine.textContent = "The node is not reachable (it may have stopped).";
  }
}

setInterval(refresh, 1000);
setInterval(tick, 250);
refresh();
</script>
</body>
</html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for ok in [
            "localhost",
            "LOCALHOST:8790",
            "127.0.0.1",
            "127.0.0.1:1",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:8790",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:8790",
            "127.0.0.1.evil.example",
            "localhost.evil.example:80",
            "10.0.0.1:8790",
            "0.0.0.0:8790",
            "[::1",
            "[::2]:80",
            "127.0.0.1:",
            "127.0.0.1:80x",
            "localhost:80:80",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
        assert!(is_loopback_origin("http://localhost:8790"));
        assert!(!is_loopback_origin("http://evil.example"));
        assert!(!is_loopback_origin("null"));
    }

    #[test]
    fn escaping() {
        assert_eq!(
            escape("<b a=\"x\">&'</b>"),
            "&lt;b a=&quot;x&quot;&gt;&amp;&#39;&lt;/b&gt;"
        );
    }
}
