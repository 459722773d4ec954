//! `http_get`: fetches a URL whose host is on the allow-list (MOFA_HTTP_ALLOW); nothing else is
//! reachable, redirects included.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mofa_kernel::tool::{Tool, ToolError, ToolSpec};
use serde_json::{Value, json};

const MAX_BODY: usize = 64 * 1024;

/// Hosts that may be fetched: `host` (any port) or `host:port`, compared case-insensitively.
#[derive(Debug, Clone)]
pub struct AllowList(Vec<String>);

impl AllowList {
    pub fn parse(list: &str) -> Self {
        AllowList(
            list.split(',')
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
        )
    }

    pub fn allows(&self, url: &reqwest::Url) -> bool {
        let Some(host) = url.host_str().map(str::to_ascii_lowercase) else {
            return false;
        };
        let port = url.port_or_known_default().unwrap_or(0);
        self.0
            .iter()
            .any(|a| *a == host || *a == format!("{host}:{port}"))
    }
}

pub struct HttpGet {
    allow: Arc<AllowList>,
    client: reqwest::Client,
}

impl HttpGet {
    pub fn new(allow: AllowList, timeout: Duration) -> Self {
        let allow = Arc::new(allow);
        let policy_allow = allow.clone();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                attempt.error("too many redirects")
            } else if policy_allow.allows(attempt.url()) {
                attempt.follow()
            } else {
                let to = attempt.url().to_string();
                attempt.error(format!("redirect to {to}, a host off the allow-list"))
            }
        });
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(policy)
            .build()
            .expect("an HTTP client");
        HttpGet { allow, client }
    }
}

#[async_trait]
impl Tool for HttpGet {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "http_get".into(),
            description: format!(
                "Fetches a web page or API over HTTP(S) GET. Only these hosts are reachable: {}.",
                self.allow.0.join(", ")
            ),
            parameters: json!({
                "type": "object",
                "properties": {"url": {"type": "string", "minLength": 8, "maxLength": 2048}},
                "required": ["url"],
                "additionalProperties": false,
            }),
        }
    }

    async fn call(&self, args: Value) -> Result<Value, ToolError> {
        let raw = super::str_arg(&args, "url")?;
        let url = reqwest::Url::parse(raw)
            .map_err(|e| ToolError::InvalidArguments(format!("`{raw}`: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ToolError::InvalidArguments(format!(
                "`{raw}`: only http and https"
            )));
        }
        if !self.allow.allows(&url) {
            return Err(ToolError::Failed(format!(
                "{} is not on the allow-list (MOFA_HTTP_ALLOW)",
                url.host_str().unwrap_or("(no host)")
            )));
        }
        let resp = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| ToolError::Failed(e.to_string()))?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ToolError::Failed(e.to_string()))?;
        let body = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_BODY)]).into_owned();
        Ok(
            json!({"status": status, "content_type": content_type, "body": body, "truncated": bytes.len() > MAX_BODY}),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_ports_on_the_list() {
        let a = AllowList::parse("example.org, 127.0.0.1:8080");
        let ok = |u: &str| a.allows(&reqwest::Url::parse(u).unwrap());
        assert!(ok("https://Example.org/x"));
        assert!(ok("http://127.0.0.1:8080/"));
        assert!(!ok("http://127.0.0.1:9090/"));
        assert!(!ok("https://example.org.evil.com/"));
    }
}
