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
//! Env: MOFA_LLM_PROVIDER (local or openai; local unless OPENAI_BASE_URL or OPENAI_API_KEY is
//! set), MOFA_STREAM (stream every request; default false), and the provider's own variables
//! ([`local::LocalConfig::from_env`], [`openai::OpenAiConfig::from_env`]).

pub mod local;
pub mod openai;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use mofa_kernel::config::{self, ConfigError};
use mofa_kernel::llm::{ChatRequest, LlmProvider};
use mofa_kernel::node::{Ctx, Failure, Handler};
use mofa_kernel::{Envelope, Kind, Role};

pub struct LlmNode {
    provider: Arc<dyn LlmProvider>,
    stream_all: bool,
    /// Per input: set to true when the input is lost with its machine.
    lost: Mutex<HashMap<String, tokio::sync::watch::Sender<bool>>>,
}

impl LlmNode {
    pub fn new(provider: Arc<dyn LlmProvider>, stream_all: bool) -> Self {
        LlmNode {
            provider,
            stream_all,
            lost: Mutex::default(),
        }
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
        Ok(LlmNode::new(
            provider,
            config::flag_or("MOFA_STREAM", false)?,
        ))
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
        let call = async move {
            let ctx = work_ctx;
            let sender = ctx.node_id().to_owned();
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
            match result {
                Ok(response) => ctx.send_one(&output, response.to_envelope(&msg, &sender)),
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
