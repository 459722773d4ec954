//! mofa-llm: the LLM bridge node.
//!
//! Every input is a chat request (an envelope whose payload is a `ChatRequest`, or plain
//! text); the answer goes out on the output named like the input, so one bridge serves many
//! agents. Streamed text also goes out piece by piece as `token` envelopes on `token`.
//! Failures answer the requester with an `error` envelope (and go out on `error`).
//! Requests run concurrently: a slow call does not hold up the others. When the kernel reports
//! an input lost with its machine ([`Ctx::lost`]), the calls still running for it are dropped:
//! nobody is left to read their answers, and the bridge need not hold up its own end.
//!
//! Each answer's payload also names the `agent` that asked (the request's sender) and its
//! `cost_usd` at MOFA_LLM_PRICE; both go to the node's metrics (tokens and cost per agent,
//! [`mofa_kernel::metrics`]), and each call is a `chat <model>` span in the session's trace
//! with the OpenTelemetry GenAI attributes (`gen_ai.request.model`,
//! `gen_ai.usage.input_tokens`, ...).
//!
//! Env: MOFA_LLM_PROVIDER (local or openai; local unless OPENAI_BASE_URL or OPENAI_API_KEY is
//! set), MOFA_STREAM (stream every request; default false), MOFA_LLM_PRICE (`<input>,<output>`:
//! US dollars per million tokens; default `0,0`, as the local model costs nothing), and the
//! provider's own variables ([`local::LocalConfig::from_env`], [`openai::OpenAiConfig::from_env`]).

pub mod local;
pub mod openai;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use mofa_kernel::config::{self, ConfigError};
use mofa_kernel::llm::{ChatRequest, ChatResponse, LlmError, LlmProvider};
use mofa_kernel::metrics::{LlmUsage, metrics};
use mofa_kernel::node::{Ctx, Failure, Handler};
use mofa_kernel::telemetry;
use mofa_kernel::{Envelope, Kind, Role};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// What tokens cost, in US dollars per million (MOFA_LLM_PRICE=`<input>,<output>`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

impl Price {
    pub fn from_env() -> Result<Self, ConfigError> {
        config::optional("MOFA_LLM_PRICE").map_or(Ok(Price::default()), |v| Price::parse(&v))
    }

    /// `<input>,<output>`, each a number of dollars per million tokens.
    pub fn parse(v: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| ConfigError::invalid("MOFA_LLM_PRICE", v, why);
        let (input, output) = v
            .split_once(',')
            .ok_or_else(|| bad("expected `<input>,<output>` in US dollars per million tokens"))?;
        let parse = |s: &str| match s.trim().parse::<f64>() {
            Ok(p) if p.is_finite() && p >= 0.0 => Ok(p),
            _ => Err(bad("each price must be a number of dollars, 0 or more")),
        };
        Ok(Price {
            input_per_mtok: parse(input)?,
            output_per_mtok: parse(output)?,
        })
    }

    pub fn cost(&self, input_tokens: u32, output_tokens: u32) -> f64 {
        (f64::from(input_tokens) * self.input_per_mtok
            + f64::from(output_tokens) * self.output_per_mtok)
            / 1e6
    }
}

pub struct LlmNode {
    provider: Arc<dyn LlmProvider>,
    stream_all: bool,
    price: Price,
    /// Per input: set to true when the input is lost with its machine.
    lost: Mutex<HashMap<String, tokio::sync::watch::Sender<bool>>>,
}

impl LlmNode {
    pub fn new(provider: Arc<dyn LlmProvider>, stream_all: bool) -> Self {
        LlmNode {
            provider,
            stream_all,
            price: Price::default(),
            lost: Mutex::default(),
        }
    }

    pub fn with_price(mut self, price: Price) -> Self {
        self.price = price;
        self
    }

    /// Resolves once `input` is lost with its machine.
    fn lost_signal(&self, input: &str) -> tokio::sync::watch::Receiver<bool> {
        let mut lost = self.lost.lock().expect("lost lock");
        lost.entry(input.to_owned())
            .or_insert_with(|| tokio::sync::watch::channel(false).0)
            .subscribe()
    }

    /// MOFA_LLM_PROVIDER=local|openai; without it, `local` unless OPENAI_BASE_URL or
    /// OPENAI_API_KEY is set.
    pub fn from_env() -> Result<Self, ConfigError> {
        let openai_configured = config::optional("OPENAI_BASE_URL").is_some()
            || config::optional("OPENAI_API_KEY").is_some();
        let choice = config::optional("MOFA_LLM_PROVIDER")
            .unwrap_or_else(|| if openai_configured { "openai" } else { "local" }.into());
        let provider: Arc<dyn LlmProvider> = match choice.as_str() {
            "openai" => {
                let cfg = openai::OpenAiConfig::from_env()?;
                tracing::info!(
                    "provider openai, model {}, endpoint {}",
                    cfg.model,
                    cfg.base_url
                );
                Arc::new(openai::OpenAiProvider::new(cfg))
            }
            "local" => {
                let cfg = local::LocalConfig::from_env()?;
                let path = cfg.model_path.display().to_string();
                tracing::info!(
                    "provider local, model {path}, {} threads, context {}",
                    cfg.threads,
                    cfg.n_ctx
                );
                let provider = local::LocalProvider::load(cfg)
                    .map_err(|e| ConfigError::invalid("MOFA_MODEL_PATH", path, e))?;
                Arc::new(provider)
            }
            other => {
                return Err(ConfigError::invalid(
                    "MOFA_LLM_PROVIDER",
                    other,
                    "expected `local` or `openai`",
                ));
            }
        };
        Ok(
            LlmNode::new(provider, config::flag_or("MOFA_STREAM", false)?)
                .with_price(Price::from_env()?),
        )
    }
}

/// The span of one call, named and described by the OpenTelemetry GenAI conventions.
fn chat_span(provider: &dyn LlmProvider, request: &ChatRequest, agent: &str) -> tracing::Span {
    if !telemetry::on() {
        return tracing::Span::none();
    }
    let model = request.options.model.as_deref().unwrap_or(provider.model());
    let span = tracing::info_span!(
        target: telemetry::TARGET,
        parent: None,
        "chat",
        otel.name = %format!("chat {model}"),
        otel.kind = "client",
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = provider.name(),
        gen_ai.system = provider.name(),
        gen_ai.request.model = model,
        gen_ai.agent.name = agent,
    );
    let o = &request.options;
    if let Some(t) = o.temperature {
        span.set_attribute("gen_ai.request.temperature", f64::from(t));
    }
    if let Some(p) = o.top_p {
        span.set_attribute("gen_ai.request.top_p", f64::from(p));
    }
    if let Some(n) = o.max_tokens {
        span.set_attribute("gen_ai.request.max_tokens", i64::from(n));
    }
    if let Some(s) = o.seed {
        span.set_attribute("gen_ai.request.seed", s as i64);
    }
    span
}

/// The answer's model, finish reason and token counts, or the error, on the call's span.
fn record_chat(span: &tracing::Span, result: &Result<ChatResponse, LlmError>) {
    if !telemetry::on() {
        return;
    }
    match result {
        Ok(r) => {
            span.set_attribute("gen_ai.response.model", r.model.clone());
            if let Some(reason) = &r.finish_reason {
                let reasons = opentelemetry::Array::from(vec![opentelemetry::StringValue::from(
                    reason.clone(),
                )]);
                let reasons = opentelemetry::Value::Array(reasons);
                span.set_attribute("gen_ai.response.finish_reasons", reasons);
            }
            if let Some(u) = r.usage {
                span.set_attribute("gen_ai.usage.input_tokens", i64::from(u.prompt_tokens));
                span.set_attribute("gen_ai.usage.output_tokens", i64::from(u.completion_tokens));
            }
        }
        Err(e) => {
            let kind = match e {
                LlmError::Status { status, .. } => status.to_string(),
                LlmError::Timeout(_) => "timeout".into(),
                LlmError::Connect(_) => "connect".into(),
                LlmError::InvalidResponse(_) => "invalid_response".into(),
                LlmError::InvalidRequest(_) => "invalid_request".into(),
            };
            span.set_attribute("error.type", kind);
            span.set_status(opentelemetry::trace::Status::error(e.to_string()));
        }
    }
}

#[async_trait]
impl Handler for LlmNode {
    async fn on_message(&self, ctx: &Ctx, input: &str, msg: Envelope) -> Result<(), Failure> {
        if msg.kind == Kind::Error {
            return Err(Failure::new("an error envelope is not a chat request"));
        }
        let mut request = match ChatRequest::from_envelope(&msg) {
            Ok(r) => r,
            Err(e) => {
                ctx.reply_error(input, &msg, Failure::new(format!("bad chat request: {e}")));
                return Ok(());
            }
        };
        request.options.stream |= self.stream_all;
        let provider = self.provider.clone();
        let (ctx, output) = (ctx.clone(), input.to_owned());
        let work_ctx = ctx.clone();
        let mut lost = self.lost_signal(input);
        let (cause, id) = (msg.clone(), msg.id.clone());
        let price = self.price;
        let span = chat_span(provider.as_ref(), &request, &msg.sender);
        ctx.trace_within(&span, &msg);
        let call = async move {
            let ctx = work_ctx;
            let sender = ctx.node_id().to_owned();
            let started = Instant::now();
            let result = if request.options.stream {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
                let (tctx, tmsg, tsender) = (ctx.clone(), msg.clone(), sender.clone());
                let forward = tokio::spawn(async move {
                    while let Some(piece) = rx.recv().await {
                        let token = tmsg.reply(Kind::Token, &tsender, Role::Assistant, piece);
                        tctx.send_one("token", token);
                    }
                });
                let result = provider.chat_stream(&request, tx).await;
                let _ = forward.await; // every token before the whole answer
                result
            } else {
                provider.chat(&request).await
            };
            record_chat(&span, &result);
            match result {
                Ok(response) => {
                    let usage = response.usage.unwrap_or_default();
                    let cost = price.cost(usage.prompt_tokens, usage.completion_tokens);
                    metrics().llm_answer(
                        &sender,
                        &msg.sender,
                        &response.model,
                        &LlmUsage {
                            input_tokens: usage.prompt_tokens,
                            output_tokens: usage.completion_tokens,
                            cost_usd: cost,
                            seconds: started.elapsed().as_secs_f64(),
                        },
                    );
                    let mut answer = response.to_envelope(&msg, &sender);
                    let mut payload = answer.payload_json().unwrap_or_default();
                    payload["agent"] = msg.sender.clone().into();
                    payload["cost_usd"] = cost.into();
                    answer = answer.with_payload(&payload);
                    ctx.send_one(&output, answer)
                }
                Err(e) => ctx.reply_error(
                    &output,
                    &msg,
                    Failure::new(format!("{} call failed: {e}", provider.name())).with_details(
                        serde_json::json!({"provider": provider.name(), "retryable": e.is_retryable()}),
                    ),
                ),
            }
        };
        ctx.spawn(cause, async move {
            tokio::select! {
                _ = call => {}
                _ = lost.wait_for(|l| *l) => {
                    tracing::warn!("request {id} dropped: its requester's machine was lost");
                }
            }
            Ok(())
        });
        Ok(())
    }

    async fn on_input_closed(&self, ctx: &Ctx, input: &str) {
        if ctx.lost(input).is_some()
            && let Some(lost) = self.lost.lock().expect("lost lock").get(input)
        {
            lost.send_replace(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Price;

    #[test]
    fn prices_are_dollars_per_million_tokens_and_bad_ones_are_named() {
        let p = Price::parse("2.5, 10").unwrap();
        assert_eq!(p.cost(1_000_000, 0), 2.5);
        assert!((p.cost(400, 100) - 0.002).abs() < 1e-15);
        assert_eq!(Price::default().cost(5000, 5000), 0.0);
        for bad in ["2.5", "a,1", "-1,1", "1,inf", ""] {
            let e = Price::parse(bad).unwrap_err().to_string();
            assert!(e.contains("MOFA_LLM_PRICE"), "{bad}: {e}");
        }
    }
}
