//! The OpenAI-compatible chat completions provider (OpenAI, vLLM, Ollama, llama.cpp server, ...).
//!
//! Plain and SSE streaming calls, tool definitions and tool calls passed through, a timeout
//! per attempt, and retries with exponential backoff on 429, 5xx and connection errors
//! (honouring `Retry-After`). The API key is sent as a bearer token and never logged.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use mofa_kernel::Role;
use mofa_kernel::config::{self, ConfigError};
use mofa_kernel::llm::{
    ChatMessage, ChatRequest, ChatResponse, LlmError, LlmProvider, ToolCall, Usage,
};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedSender;

pub struct OpenAiConfig {
    /// For example `https://api.openai.com/v1`; `/chat/completions` is appended.
    pub base_url: String,
    pub api_key: Option<String>,
    pub model: String,
    pub timeout: Duration,
    /// Attempts after the first.
    pub retries: u32,
    /// First backoff; doubled after each failed attempt.
    pub backoff: Duration,
}

impl OpenAiConfig {
    /// OPENAI_BASE_URL (default the OpenAI API when OPENAI_API_KEY is set), OPENAI_API_KEY,
    /// MOFA_MODEL (default gpt-4o-mini), MOFA_LLM_TIMEOUT_MS (60000), MOFA_LLM_RETRIES (3),
    /// MOFA_LLM_BACKOFF_MS (500).
    pub fn from_env() -> Result<Self, ConfigError> {
        let api_key = config::optional("OPENAI_API_KEY");
        let base_url = match (config::optional("OPENAI_BASE_URL"), &api_key) {
            (Some(url), _) => url,
            (None, Some(_)) => "https://api.openai.com/v1".to_owned(),
            (None, None) => {
                return Err(config::required(
                    "OPENAI_BASE_URL",
                    "the openai provider needs an endpoint (or OPENAI_API_KEY for api.openai.com)",
                )
                .unwrap_err());
            }
        };
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(ConfigError::invalid(
                "OPENAI_BASE_URL",
                base_url,
                "expected an http:// or https:// URL",
            ));
        }
        Ok(OpenAiConfig {
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key,
            model: config::optional("MOFA_MODEL").unwrap_or_else(|| "gpt-4o-mini".into()),
            timeout: config::millis_or("MOFA_LLM_TIMEOUT_MS", Duration::from_secs(60))?,
            retries: config::parse_or("MOFA_LLM_RETRIES", 3)?,
            backoff: config::millis_or("MOFA_LLM_BACKOFF_MS", Duration::from_millis(500))?,
        })
    }
}

pub struct OpenAiProvider {
    config: OpenAiConfig,
    http: reqwest::Client,
}

impl OpenAiProvider {
    pub fn new(config: OpenAiConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .expect("an HTTP client with rustls");
        OpenAiProvider { config, http }
    }

    pub fn model(&self) -> &str {
        &self.config.model
    }

    fn body(&self, request: &ChatRequest, stream: bool) -> Value {
        let o = &request.options;
        let mut body = json!({
            "model": o.model.as_deref().unwrap_or(&self.config.model),
            "messages": request.messages.iter().map(wire_message).collect::<Vec<_>>(),
            "stream": stream,
        });
        if !request.tools.is_empty() {
            body["tools"] = request
                .tools
                .iter()
                .map(|t| json!({"type": "function", "function": t}))
                .collect();
        }
        if let (Some(choice), false) = (&o.tool_choice, request.tools.is_empty()) {
            body["tool_choice"] = json!(choice);
        }
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        let set = |b: &mut Value, k: &str, v: Option<Value>| {
            if let Some(v) = v {
                b[k] = v;
            }
        };
        set(&mut body, "temperature", o.temperature.map(Value::from));
        set(&mut body, "top_p", o.top_p.map(Value::from));
        set(&mut body, "max_tokens", o.max_tokens.map(Value::from));
        set(&mut body, "seed", o.seed.map(Value::from));
        if !o.stop.is_empty() {
            body["stop"] = json!(o.stop);
        }
        body
    }

    /// Sends the request, retrying what is worth retrying; returns a 2xx response.
    async fn send(&self, body: &Value) -> Result<reqwest::Response, LlmError> {
        let url = format!("{}/chat/completions", self.config.base_url);
        let mut attempt = 0;
        loop {
            let mut req = self.http.post(&url).json(body);
            if let Some(key) = &self.config.api_key {
                req = req.bearer_auth(key);
            }
            let (err, retry_after) = match req.send().await {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => {
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let status = resp.status().as_u16();
                    let body: String = resp
                        .text()
                        .await
                        .unwrap_or_default()
                        .chars()
                        .take(500)
                        .collect();
                    (LlmError::Status { status, body }, retry_after)
                }
                Err(e) => (self.transport_error(e), None),
            };
            if !err.is_retryable() || attempt >= self.config.retries {
                return Err(err);
            }
            let backoff = self.config.backoff * 2u32.pow(attempt.min(10));
            let wait = retry_after.unwrap_or(backoff).min(Duration::from_secs(60));
            tracing::warn!(
                "LLM call failed ({err}), retry {} in {} ms",
                attempt + 1,
                wait.as_millis()
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    fn transport_error(&self, e: reqwest::Error) -> LlmError {
        if e.is_timeout() {
            LlmError::Timeout(self.config.timeout.as_millis() as u64)
        } else if e.is_decode() || e.is_body() {
            LlmError::InvalidResponse(e.to_string())
        } else {
            // Without the URL: it may carry credentials in its query.
            LlmError::Connect(e.without_url().to_string())
        }
    }
}

#[async_trait]
impl LlmProvider for OpenAiProvider {
    fn name(&self) -> &str {
        "openai"
    }

    fn model(&self) -> &str {
        &self.config.model
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let resp = self.send(&self.body(request, false)).await?;
        let text = resp.text().await.map_err(|e| self.transport_error(e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| {
            let head: String = text.chars().take(200).collect();
            LlmError::InvalidResponse(format!("not JSON ({e}): {head:?}"))
        })?;
        parse_completion(&v)
    }

    async fn chat_stream(
        &self,
        request: &ChatRequest,
        tokens: UnboundedSender<String>,
    ) -> Result<ChatResponse, LlmError> {
        let resp = self.send(&self.body(request, true)).await?;
        let mut acc = StreamAccumulator::default();
        let mut bytes = resp.bytes_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = bytes.next().await {
            let chunk = chunk.map_err(|e| self.transport_error(e))?;
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line);
                if let Some(token) = acc.feed(line.trim())? {
                    let _ = tokens.send(token);
                }
            }
        }
        acc.finish()
    }
}

fn wire_message(m: &ChatMessage) -> Value {
    let mut v = json!({"role": m.role.as_str(), "content": m.content});
    if !m.tool_calls.is_empty() {
        v["tool_calls"] = m
            .tool_calls
            .iter()
            .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
            .collect();
        if m.content.is_empty() {
            v["content"] = Value::Null;
        }
    }
    if let Some(id) = &m.tool_call_id {
        v["tool_call_id"] = json!(id);
    }
    v
}

fn parse_usage(v: &Value) -> Option<Usage> {
    serde_json::from_value(v.clone()).ok()
}

fn parse_completion(v: &Value) -> Result<ChatResponse, LlmError> {
    let choice = &v["choices"][0];
    let msg = &choice["message"];
    if !msg.is_object() {
        let head: String = v.to_string().chars().take(200).collect();
        return Err(LlmError::InvalidResponse(format!(
            "no choices[0].message in {head}"
        )));
    }
    let tool_calls = msg["tool_calls"]
        .as_array()
        .map(|calls| {
            calls
                .iter()
                .map(|c| ToolCall {
                    id: c["id"].as_str().unwrap_or_default().to_owned(),
                    name: c["function"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    arguments: c["function"]["arguments"]
                        .as_str()
                        .unwrap_or("{}")
                        .to_owned(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ChatResponse {
        message: ChatMessage {
            role: Role::Assistant,
            content: msg["content"].as_str().unwrap_or_default().to_owned(),
            tool_calls,
            tool_call_id: None,
        },
        model: v["model"].as_str().unwrap_or_default().to_owned(),
        finish_reason: choice["finish_reason"].as_str().map(str::to_owned),
        usage: parse_usage(&v["usage"]),
    })
}

/// Rebuilds a whole answer from SSE `data:` lines.
#[derive(Default)]
struct StreamAccumulator {
    content: String,
    calls: Vec<ToolCall>,
    model: String,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    done: bool,
}

impl StreamAccumulator {
    /// Takes one SSE line; returns the text it adds, if any.
    fn feed(&mut self, line: &str) -> Result<Option<String>, LlmError> {
        let Some(data) = line.strip_prefix("data:") else {
            return Ok(None); // blank separators, comments, `event:` lines
        };
        let data = data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(None);
        }
        let v: Value = serde_json::from_str(data)
            .map_err(|e| LlmError::InvalidResponse(format!("bad stream chunk ({e}): {data:?}")))?;
        if let Some(m) = v["model"].as_str() {
            self.model = m.to_owned();
        }
        if let Some(u) = parse_usage(&v["usage"]) {
            self.usage = Some(u);
        }
        let choice = &v["choices"][0];
        if let Some(f) = choice["finish_reason"].as_str() {
            self.finish_reason = Some(f.to_owned());
        }
        let delta = &choice["delta"];
        for c in delta["tool_calls"].as_array().into_iter().flatten() {
            let i = c["index"].as_u64().unwrap_or(0) as usize;
            while self.calls.len() <= i {
                self.calls.push(ToolCall {
                    id: String::new(),
                    name: String::new(),
                    arguments: String::new(),
                });
            }
            let call = &mut self.calls[i];
            if let Some(id) = c["id"].as_str() {
                call.id = id.to_owned();
            }
            if let Some(name) = c["function"]["name"].as_str() {
                call.name.push_str(name);
            }
            if let Some(args) = c["function"]["arguments"].as_str() {
                call.arguments.push_str(args);
            }
        }
        match delta["content"].as_str() {
            Some(t) if !t.is_empty() => {
                self.content.push_str(t);
                Ok(Some(t.to_owned()))
            }
            _ => Ok(None),
        }
    }

    fn finish(self) -> Result<ChatResponse, LlmError> {
        if !self.done && self.finish_reason.is_none() {
            return Err(LlmError::InvalidResponse(
                "stream ended before the answer was complete".into(),
            ));
        }
        Ok(ChatResponse {
            message: ChatMessage {
                role: Role::Assistant,
                content: self.content,
                tool_calls: self.calls,
                tool_call_id: None,
            },
            model: self.model,
            finish_reason: self.finish_reason,
            usage: self.usage,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_chunks_rebuild_text_and_tool_calls() {
        let mut acc = StreamAccumulator::default();
        let lines = [
            r#"data: {"model":"m","choices":[{"delta":{"role":"assistant","content":""}}]}"#,
            r#"data: {"choices":[{"delta":{"content":"Hel"}}]}"#,
            "",
            r#"data: {"choices":[{"delta":{"content":"lo"}}]}"#,
            r#"data: {"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c1","function":{"name":"calc","arguments":"{\"x\":"}}]}}]}"#,
            r#"data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]}}]}"#,
            r#"data: {"choices":[{"delta":{},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}"#,
            "data: [DONE]",
        ];
        let tokens: Vec<String> = lines.iter().filter_map(|l| acc.feed(l).unwrap()).collect();
        assert_eq!(tokens, ["Hel", "lo"]);
        let r = acc.finish().unwrap();
        assert_eq!(r.message.content, "Hello");
        assert_eq!(r.message.tool_calls[0].arguments, "{\"x\":1}");
        assert_eq!(r.usage.unwrap().total_tokens, 5);
        assert_eq!(r.finish_reason.as_deref(), Some("tool_calls"));
    }

    #[test]
    fn a_cut_stream_is_an_error() {
        let mut acc = StreamAccumulator::default();
        acc.feed(r#"data: {"choices":[{"delta":{"content":"Hel"}}]}"#)
            .unwrap();
        assert!(matches!(acc.finish(), Err(LlmError::InvalidResponse(_))));
        assert!(StreamAccumulator::default().feed("data: {oops").is_err());
    }

    #[test]
    fn completion_without_message_is_invalid() {
        let err = parse_completion(&json!({"error": "x"})).unwrap_err();
        assert!(err.to_string().contains("no choices[0].message"));
    }
}
