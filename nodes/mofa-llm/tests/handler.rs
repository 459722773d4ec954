//! mofa-llm's handler under `DoraNode::init_testing`, against the mock OpenAI server.

use std::sync::Arc;
use std::time::Duration;

use mofa_kernel::llm::{ChatMessage, ChatRequest, ChatResponse};
use mofa_kernel::{Envelope, Kind, Role};
use mofa_llm::LlmNode;
use mofa_llm::openai::{OpenAiConfig, OpenAiProvider};
use mofa_tests::harness::{self, envelope, envelopes, on, raw};
use mofa_tests::mock_llm::{MockLlm, Rule, Script};

fn node(mock: &MockLlm, timeout_ms: u64, stream: bool) -> LlmNode {
    let provider = OpenAiProvider::new(OpenAiConfig {
        base_url: mock.base_url(),
        api_key: Some("sk-test-secret".into()),
        model: "mock-model".into(),
        timeout: Duration::from_millis(timeout_ms),
        retries: 2,
        backoff: Duration::from_millis(20),
    });
    LlmNode::new(Arc::new(provider), stream)
}

fn ask(text: &str) -> Envelope {
    let task = Envelope::task("t", text);
    ChatRequest {
        messages: vec![
            ChatMessage::new(Role::System, "sys"),
            ChatMessage::new(Role::User, text),
        ],
        ..Default::default()
    }
    .to_envelope(&task, "alice")
}

fn rule(matches: &str) -> Rule {
    Rule {
        matches: matches.into(),
        ..Default::default()
    }
}

#[test]
fn answers_on_the_output_named_like_the_input_with_usage() {
    let mock = MockLlm::start(Script::default());
    let (a, b) = (ask("first question"), ask("second question"));
    let sent = harness::run(
        node(&mock, 5000, false),
        vec![envelope(0.0, "alice", &a), envelope(0.01, "bob", &b)],
    );
    let alice = on(&sent, "alice");
    let bob = on(&sent, "bob");
    assert_eq!(alice.len(), 1);
    assert_eq!(alice[0].reply_to.as_deref(), Some(a.id.as_str()));
    assert_eq!(alice[0].session, a.session);
    assert_eq!(alice[0].kind, Kind::Message);
    assert!(
        alice[0].content.ends_with("first question"),
        "{}",
        alice[0].content
    );
    assert!(bob[0].content.ends_with("second question"));
    let resp = ChatResponse::from_envelope(&alice[0]).unwrap();
    assert_eq!(resp.usage.unwrap().completion_tokens, 6);
    assert!(on(&sent, "error").is_empty());

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    assert!(
        reqs.iter().all(|r| r.authorized),
        "the key goes as a bearer token"
    );
    assert_eq!(reqs[0].body["model"], "mock-model");
    assert_eq!(reqs[0].body["messages"][0]["role"], "system");
}

#[test]
fn a_500_then_200_is_retried_and_answered() {
    let mock = MockLlm::start(Script {
        rules: vec![Rule {
            status: Some(500),
            times: Some(1),
            ..rule("")
        }],
    });
    let sent = harness::run(
        node(&mock, 5000, false),
        vec![envelopes(0.0, "alice", &[ask("hi")])],
    );
    assert_eq!(mock.requests().len(), 2, "one retry");
    let alice = on(&sent, "alice");
    assert_eq!(alice.len(), 1);
    assert_eq!(alice[0].kind, Kind::Message);
    assert!(on(&sent, "error").is_empty());
}

#[test]
fn a_timeout_becomes_an_error_envelope_and_the_next_request_still_gets_through() {
    let mock = MockLlm::start(Script {
        rules: vec![Rule {
            delay_ms: 2000,
            ..rule("slow one")
        }],
    });
    let (slow, next) = (ask("slow one"), ask("quick one"));
    let sent = harness::run(
        node(&mock, 300, false),
        vec![
            envelope(0.0, "alice", &slow),
            envelope(0.05, "alice", &next),
        ],
    );
    let alice = on(&sent, "alice");
    let err = alice
        .iter()
        .find(|e| e.reply_to.as_deref() == Some(slow.id.as_str()))
        .unwrap();
    assert_eq!(err.kind, Kind::Error);
    assert!(
        err.content.contains("timed out after 300 ms"),
        "{}",
        err.content
    );
    assert_eq!(err.payload_json().unwrap()["retryable"], true);
    let ok = alice
        .iter()
        .find(|e| e.reply_to.as_deref() == Some(next.id.as_str()))
        .unwrap();
    assert_eq!(ok.kind, Kind::Message);
    // The error also goes to the error output, for whoever watches it.
    assert_eq!(on(&sent, "error").len(), 1);
    // 1 + 2 retries for the slow one, 1 for the quick one.
    assert_eq!(mock.requests().len(), 4);
}

#[test]
fn invalid_json_from_the_llm_is_an_error_envelope_not_a_crash() {
    let mock = MockLlm::start(Script {
        rules: vec![Rule {
            raw_body: Some("{\"choices\": [oops".into()),
            times: Some(1),
            ..rule("")
        }],
    });
    let (bad, good) = (ask("one"), ask("two"));
    let sent = harness::run(
        node(&mock, 5000, false),
        vec![envelope(0.0, "alice", &bad), envelope(0.2, "alice", &good)],
    );
    let alice = on(&sent, "alice");
    assert_eq!(alice.len(), 2);
    assert_eq!(alice[0].kind, Kind::Error);
    assert!(
        alice[0].content.contains("invalid response: not JSON"),
        "{}",
        alice[0].content
    );
    assert!(!alice[0].content.contains("sk-test-secret"));
    assert_eq!(alice[1].kind, Kind::Message);
    assert_eq!(alice[1].reply_to.as_deref(), Some(good.id.as_str()));
}

#[test]
fn a_slow_request_does_not_hold_up_a_fast_one() {
    let mock = MockLlm::start(Script {
        rules: vec![Rule {
            delay_ms: 800,
            ..rule("slow")
        }],
    });
    let (slow, fast) = (ask("slow"), ask("fast"));
    let sent = harness::run(
        node(&mock, 5000, false),
        vec![envelope(0.0, "alice", &slow), envelope(0.02, "bob", &fast)],
    );
    let order: Vec<&str> = sent.iter().map(|s| s.output.as_str()).collect();
    assert_eq!(
        order,
        ["bob", "alice"],
        "the fast answer overtakes the slow one"
    );
    let reqs = mock.requests();
    assert!(
        reqs[1].start_us < reqs[0].end_us,
        "the two calls overlapped"
    );
}

#[test]
fn streaming_sends_one_token_envelope_per_piece_then_the_whole_answer() {
    let mock = MockLlm::start(Script {
        rules: vec![Rule {
            content: Some("one two three four".into()),
            ..rule("")
        }],
    });
    let a = ask("count");
    let sent = harness::run(node(&mock, 5000, true), vec![envelope(0.0, "alice", &a)]);
    let tokens = on(&sent, "token");
    assert_eq!(tokens.len(), 4);
    assert!(
        tokens
            .iter()
            .all(|t| t.kind == Kind::Token && t.reply_to.as_deref() == Some(a.id.as_str()))
    );
    let text: String = tokens.iter().map(|t| t.content.as_str()).collect();
    assert_eq!(text, "one two three four");
    let alice = on(&sent, "alice");
    assert_eq!(alice[0].content, "one two three four");
    let last_token = sent.iter().rposition(|s| s.output == "token").unwrap();
    let answer = sent.iter().position(|s| s.output == "alice").unwrap();
    assert!(last_token < answer, "every token before the whole answer");
    assert_eq!(mock.requests()[0].body["stream"], true);
    assert!(
        ChatResponse::from_envelope(&alice[0])
            .unwrap()
            .usage
            .is_some()
    );
}

#[test]
fn malformed_input_is_an_error_and_the_next_message_is_served() {
    let mock = MockLlm::start(Script::default());
    let good = ask("still here?");
    let mut junk = ask("x");
    junk.payload = Some("{\"messages\": \"not a list\"}".into());
    let sent = harness::run(
        node(&mock, 5000, false),
        vec![
            raw(
                0.0,
                "alice",
                serde_json::json!([1, 2, 3]),
                Some(serde_json::json!("Int64")),
            ),
            envelope(0.01, "alice", &junk),
            envelope(0.02, "alice", &good),
        ],
    );
    let errors = on(&sent, "error");
    assert_eq!(errors.len(), 2);
    assert!(
        errors[0]
            .content
            .contains("malformed message on input `alice`"),
        "{}",
        errors[0].content
    );
    assert!(errors[0].content.contains("got Int64"));
    assert!(errors[1].content.contains("bad chat request"));
    let alice = on(&sent, "alice");
    // The junk request is answered with its error; the good one with an answer.
    assert_eq!(alice.len(), 2);
    assert_eq!(alice[0].kind, Kind::Error);
    assert_eq!(alice[1].reply_to.as_deref(), Some(good.id.as_str()));
    assert_eq!(alice[1].kind, Kind::Message);
    assert_eq!(mock.requests().len(), 1);
}

#[test]
fn plain_text_input_is_a_one_message_chat() {
    let mock = MockLlm::start(Script::default());
    let sent = harness::run(
        node(&mock, 5000, false),
        vec![raw(
            0.0,
            "hub",
            serde_json::json!(["hello there"]),
            Some(serde_json::json!("Utf8")),
        )],
    );
    let hub = on(&sent, "hub");
    assert_eq!(hub[0].content, "mock reply 1 to: hello there");
    assert_eq!(
        mock.requests()[0].body["messages"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn tool_definitions_go_out_and_tool_calls_come_back_in_the_payload() {
    let mock = MockLlm::start(Script {
        rules: vec![Rule {
            tool_calls: vec![
                serde_json::json!({"name": "calculator", "arguments": {"expression": "17*23"}}),
            ],
            ..rule("")
        }],
    });
    let task = Envelope::task("t", "what is 17*23?");
    let req = ChatRequest {
        messages: vec![ChatMessage::new(Role::User, "what is 17*23?")],
        tools: vec![mofa_kernel::tool::ToolSpec {
            name: "calculator".into(),
            description: "Evaluates arithmetic.".into(),
            parameters: serde_json::json!({"type": "object", "properties": {"expression": {"type": "string"}}}),
        }],
        options: Default::default(),
    }
    .to_envelope(&task, "alice");
    let sent = harness::run(node(&mock, 5000, false), vec![envelope(0.0, "alice", &req)]);
    let body = &mock.requests()[0].body;
    assert_eq!(body["tools"][0]["type"], "function");
    assert_eq!(body["tools"][0]["function"]["name"], "calculator");
    let resp = ChatResponse::from_envelope(&on(&sent, "alice")[0]).unwrap();
    assert_eq!(resp.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(resp.message.tool_calls[0].name, "calculator");
    assert_eq!(
        resp.message.tool_calls[0].arguments,
        "{\"expression\":\"17*23\"}"
    );
}
