//! The local provider on the real default model (SmolLM2-135M, fetched by bin/setup).

use std::sync::Arc;

use mofa_kernel::llm::{ChatMessage, ChatOptions, ChatRequest, ChatResponse, LlmProvider};
use mofa_kernel::tool::ToolSpec;
use mofa_kernel::{Envelope, Kind, Role};
use mofa_llm::LlmNode;
use mofa_llm::local::{LoadError, LocalConfig, LocalProvider, default_model_path};
use mofa_tests::harness::{self, envelope, on};
use serde_json::json;

fn config(n_ctx: u32) -> LocalConfig {
    LocalConfig {
        model_path: default_model_path(),
        sha256: None,
        n_ctx,
        threads: 1,
        max_tokens: 24,
    }
}

fn provider(n_ctx: u32) -> LocalProvider {
    LocalProvider::load(config(n_ctx)).unwrap_or_else(|e| panic!("{e}"))
}

fn ask(text: &str, options: ChatOptions) -> ChatRequest {
    ChatRequest {
        messages: vec![
            ChatMessage::new(Role::System, "You are a helpful assistant."),
            ChatMessage::new(Role::User, text),
        ],
        tools: vec![],
        options,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn stream(p: &LocalProvider, req: &ChatRequest) -> (Vec<String>, ChatResponse) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let resp = rt().block_on(p.chat_stream(req, tx)).unwrap();
    let mut tokens = Vec::new();
    while let Ok(t) = rx.try_recv() {
        tokens.push(t);
    }
    (tokens, resp)
}

#[test]
fn a_fixed_seed_gives_the_same_tokens_twice() {
    let p = provider(512);
    let opts = ChatOptions {
        temperature: Some(0.9),
        seed: Some(42),
        max_tokens: Some(24),
        ..Default::default()
    };
    let req = ask("Name three colours.", opts);
    let (first, r1) = stream(&p, &req);
    let (second, r2) = stream(&p, &req);
    assert!(first.len() > 3, "the model said something: {first:?}");
    assert_eq!(first, second);
    assert_eq!(r1.message.content, first.concat());
    assert_eq!(r1.message.content, r2.message.content);
    let usage = r1.usage.unwrap();
    assert!(usage.prompt_tokens > 5 && usage.completion_tokens > 0);
    assert_eq!(r1.model, "SmolLM2-135M-Instruct.Q4_1");
}

#[test]
fn tokens_stream_one_envelope_each_through_the_node() {
    let node = LlmNode::new(Arc::new(provider(512)), true);
    let task = Envelope::task("t", "Say hello.");
    let req = ask(
        "Say hello.",
        ChatOptions {
            seed: Some(7),
            max_tokens: Some(16),
            ..Default::default()
        },
    )
    .to_envelope(&task, "alice");
    let sent = harness::run(node, vec![envelope(0.0, "alice", &req)]);
    let tokens = on(&sent, "token");
    let answer = on(&sent, "alice");
    assert_eq!(answer.len(), 1);
    assert_eq!(answer[0].kind, Kind::Message);
    assert!(tokens.len() > 1, "{tokens:?}");
    assert!(
        tokens
            .iter()
            .all(|t| t.kind == Kind::Token && t.reply_to.as_deref() == Some(req.id.as_str()))
    );
    let joined: String = tokens.iter().map(|t| t.content.as_str()).collect();
    assert_eq!(joined, answer[0].content);
    let usage = ChatResponse::from_envelope(&answer[0])
        .unwrap()
        .usage
        .unwrap();
    assert_eq!(
        usage.completion_tokens as usize,
        tokens.len().max(usage.completion_tokens as usize)
    );
}

#[test]
fn a_grammar_constrained_call_parses_as_the_tool_schema() {
    let p = provider(1024);
    let mut req = ask(
        "What is 17 * 23? Use the calculator.",
        ChatOptions {
            tool_choice: Some("required".into()),
            max_tokens: Some(64),
            ..Default::default()
        },
    );
    req.tools = vec![
        ToolSpec {
            name: "calculator".into(),
            description: "Evaluates an arithmetic expression.".into(),
            parameters: json!({
                "type": "object",
                "properties": {"expression": {"type": "string"}},
                "required": ["expression"],
                "additionalProperties": false,
            }),
        },
        ToolSpec {
            name: "clock".into(),
            description: "Tells the time in a time zone.".into(),
            parameters: json!({
                "type": "object",
                "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
                "required": ["zone"],
                "additionalProperties": false,
            }),
        },
    ];
    let resp = rt().block_on(p.chat(&req)).unwrap();
    assert_eq!(resp.finish_reason.as_deref(), Some("tool_calls"));
    let call = &resp.message.tool_calls[0];
    let args: serde_json::Value =
        serde_json::from_str(&call.arguments).expect("arguments are JSON");
    let obj = args.as_object().expect("an object");
    match call.name.as_str() {
        "calculator" => {
            assert!(obj["expression"].is_string());
            assert_eq!(obj.len(), 1);
        }
        "clock" => {
            assert!(["UTC", "CET"].contains(&obj["zone"].as_str().unwrap()));
            assert_eq!(obj.len(), 1);
        }
        other => panic!("not a tool of the schema: {other}"),
    }
}

#[test]
fn a_prompt_over_the_context_is_an_error_envelope_and_the_node_goes_on() {
    let node = LlmNode::new(Arc::new(provider(128)), false);
    let task = Envelope::task("t", "x");
    let long = ask(&"word ".repeat(400), ChatOptions::default()).to_envelope(&task, "alice");
    let short = ask(
        "Hi.",
        ChatOptions {
            max_tokens: Some(4),
            ..Default::default()
        },
    )
    .to_envelope(&task, "alice");
    let sent = harness::run(
        node,
        vec![
            envelope(0.0, "alice", &long),
            envelope(0.05, "alice", &short),
        ],
    );
    let answers = on(&sent, "alice");
    assert_eq!(answers.len(), 2);
    // The two are handled at once: either may be answered first.
    let answer_to = |request: &Envelope| {
        answers
            .iter()
            .find(|a| a.reply_to.as_deref() == Some(request.id.as_str()))
            .unwrap_or_else(|| panic!("no answer to {}: {answers:#?}", request.id))
    };
    let refused = answer_to(&long);
    assert_eq!(refused.kind, Kind::Error);
    assert!(
        refused.content.contains("over the model's context of 128"),
        "{}",
        refused.content
    );
    assert_eq!(answer_to(&short).kind, Kind::Message);
}

#[test]
fn a_missing_or_corrupt_model_file_is_refused_naming_the_file() {
    let missing = LocalProvider::load(LocalConfig {
        model_path: "/nonexistent/model.gguf".into(),
        ..config(128)
    });
    let err = missing.err().unwrap();
    assert!(matches!(err, LoadError::Missing(_)));
    assert!(err.to_string().contains("/nonexistent/model.gguf"));

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, vec![7u8; 4096]).unwrap();
    let err = LocalProvider::load(LocalConfig {
        model_path: junk.clone(),
        sha256: Some(mofa_llm::local::DEFAULT_MODEL_SHA256.into()),
        ..config(128)
    })
    .err()
    .unwrap();
    assert!(matches!(err, LoadError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("junk.gguf") && err.to_string().contains("expected b179c952"));

    let err = LocalProvider::load(LocalConfig {
        model_path: junk,
        ..config(128)
    })
    .err()
    .unwrap();
    assert!(matches!(err, LoadError::NotAModel(_)), "{err}");
}

#[test]
fn the_node_stops_at_start_naming_the_variable_and_the_file() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mofa-llm"))
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .env("MOFA_MODEL_PATH", "/nonexistent/other.gguf")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("MOFA_MODEL_PATH") && stderr.contains("/nonexistent/other.gguf"),
        "{stderr}"
    );
}
