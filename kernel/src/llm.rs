//! The provider contract: one request type, `chat` and `chat_stream`, whatever the backend.
//!
//! On the wire between an agent and the LLM bridge, a request is an envelope whose payload is
//! the [`ChatRequest`] as JSON, and the answer an envelope whose content is the text and whose
//! payload carries tool calls, usage and the finish reason. [`ChatRequest::to_envelope`],
//! [`ChatRequest::from_envelope`], [`ChatResponse::to_envelope`] and
//! [`ChatResponse::from_envelope`] are that contract; nodes use them instead of building JSON.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;

use crate::envelope::{Envelope, Kind, Role};
use crate::tool::ToolSpec;

/// One chat message. `content` is empty on an assistant turn that only calls tools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    #[serde(default)]
    pub content: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// On a `tool` message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// A function call the model asked for; `arguments` is JSON text as the model wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// Sampling and length settings; `None` leaves the provider's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Stream tokens as they come (`token` envelopes) as well as the whole answer.
    #[serde(default)]
    pub stream: bool,
    /// With tools: `auto` (default: call one or answer), `required` (must call one), `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
    #[serde(default)]
    pub options: ChatOptions,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    pub message: ChatMessage,
    pub model: String,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// Why a provider gave no answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("timed out after {0} ms")]
    Timeout(u64),
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("invalid response: {0}")]
    InvalidResponse(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl LlmError {
    /// Worth another try: rate limits, server errors, timeouts, lost connections.
    pub fn is_retryable(&self) -> bool {
        match self {
            LlmError::Status { status, .. } => *status == 429 || *status >= 500,
            LlmError::Timeout(_) | LlmError::Connect(_) => true,
            LlmError::InvalidResponse(_) | LlmError::InvalidRequest(_) => false,
        }
    }
}

/// An LLM backend. Implement `chat`; `chat_stream` defaults to one token with the whole text.
#[async_trait]
pub trait LlmProvider: Send + Sync {
    /// A short name for logs and usage records, e.g. `openai` or `local`.
    fn name(&self) -> &str;

    /// The model a request goes to when it names none.
    fn model(&self) -> &str;

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError>;

    /// Sends each piece of text to `tokens` as it is generated, then returns the whole answer.
    async fn chat_stream(
        &self,
        request: &ChatRequest,
        tokens: UnboundedSender<String>,
    ) -> Result<ChatResponse, LlmError> {
        let response = self.chat(request).await?;
        if !response.message.content.is_empty() {
            let _ = tokens.send(response.message.content.clone());
        }
        Ok(response)
    }
}

impl ChatRequest {
    /// A request envelope answering `cause` (a task, or a previous step), payload = this request.
    pub fn to_envelope(&self, cause: &Envelope, sender: &str) -> Envelope {
        let last_user = self
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map_or("", |m| m.content.as_str());
        cause
            .reply(Kind::Message, sender, Role::User, last_user)
            .with_payload(&serde_json::to_value(self).expect("a request serializes"))
    }

    /// The request an envelope carries. A plain message without a payload (a hub node, a
    /// hand-written task) is one user message.
    pub fn from_envelope(e: &Envelope) -> Result<Self, String> {
        match &e.payload {
            Some(p) => {
                let request: ChatRequest = serde_json::from_str(p)
                    .map_err(|err| format!("payload is not a chat request: {err}"))?;
                if request.messages.is_empty() {
                    return Err("chat request has no messages".into());
                }
                Ok(request)
            }
            None if e.content.is_empty() => Err("empty message".into()),
            None => Ok(ChatRequest {
                messages: vec![ChatMessage::new(Role::User, &e.content)],
                ..Default::default()
            }),
        }
    }
}

impl ChatResponse {
    /// The answer to `request` as an envelope: content = text; payload = tool calls, usage,
    /// model, finish reason.
    pub fn to_envelope(&self, request: &Envelope, sender: &str) -> Envelope {
        let payload = serde_json::json!({
            "tool_calls": self.message.tool_calls,
            "usage": self.usage,
            "model": self.model,
            "finish_reason": self.finish_reason,
        });
        request
            .reply(
                Kind::Message,
                sender,
                Role::Assistant,
                &self.message.content,
            )
            .with_payload(&payload)
    }

    pub fn from_envelope(e: &Envelope) -> Result<Self, String> {
        let p = e
            .payload_json()
            .map_err(|err| format!("payload is not JSON: {err}"))?;
        let tool_calls = match p.get("tool_calls") {
            Some(v) if !v.is_null() => {
                serde_json::from_value(v.clone()).map_err(|err| format!("bad tool_calls: {err}"))?
            }
            _ => Vec::new(),
        };
        Ok(ChatResponse {
            message: ChatMessage {
                role: Role::Assistant,
                content: e.content.clone(),
                tool_calls,
                tool_call_id: None,
            },
            model: p["model"].as_str().unwrap_or_default().to_owned(),
            finish_reason: p["finish_reason"].as_str().map(str::to_owned),
            usage: serde_json::from_value(p["usage"].clone()).ok(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_response_survive_the_envelope() {
        let task = Envelope::task("src", "hi");
        let req = ChatRequest {
            messages: vec![
                ChatMessage::new(Role::System, "be brief"),
                ChatMessage::new(Role::User, "hi"),
            ],
            tools: vec![],
            options: ChatOptions {
                temperature: Some(0.5),
                ..Default::default()
            },
        };
        let env = req.to_envelope(&task, "agent");
        assert_eq!(env.content, "hi");
        assert_eq!(env.reply_to.as_deref(), Some(task.id.as_str()));
        assert_eq!(ChatRequest::from_envelope(&env).unwrap(), req);

        let resp = ChatResponse {
            message: ChatMessage {
                role: Role::Assistant,
                content: "hello".into(),
                tool_calls: vec![ToolCall {
                    id: "c1".into(),
                    name: "clock".into(),
                    arguments: "{}".into(),
                }],
                tool_call_id: None,
            },
            model: "m".into(),
            finish_reason: Some("stop".into()),
            usage: Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 1,
                total_tokens: 4,
            }),
        };
        let back = ChatResponse::from_envelope(&resp.to_envelope(&env, "llm")).unwrap();
        assert_eq!(back, resp);
    }

    #[test]
    fn plain_text_is_one_user_message_and_junk_is_refused() {
        let plain = Envelope::task("hub", "what is 2+2");
        let req = ChatRequest::from_envelope(&plain).unwrap();
        assert_eq!(
            req.messages,
            vec![ChatMessage::new(Role::User, "what is 2+2")]
        );

        let mut junk = plain.clone();
        junk.payload = Some("{\"messages\": 3}".into());
        assert!(
            ChatRequest::from_envelope(&junk)
                .unwrap_err()
                .contains("not a chat request")
        );
    }

    #[test]
    fn retryable_errors() {
        assert!(
            LlmError::Status {
                status: 429,
                body: String::new()
            }
            .is_retryable()
        );
        assert!(
            LlmError::Status {
                status: 503,
                body: String::new()
            }
            .is_retryable()
        );
        assert!(
            !LlmError::Status {
                status: 400,
                body: String::new()
            }
            .is_retryable()
        );
        assert!(LlmError::Timeout(5).is_retryable());
        assert!(!LlmError::InvalidResponse("x".into()).is_retryable());
    }
}
