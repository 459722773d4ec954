//! mofa-router's handler without a daemon.

use std::time::Duration;

use mofa_kernel::llm::{ChatMessage, ChatResponse, ToolCall};
use mofa_kernel::{Envelope, Kind, Role};
use mofa_router::{Route, Router, RouterConfig, request_id};
use mofa_tests::harness::{self, closed, envelope, on};

fn router() -> Router {
    Router::new(RouterConfig {
        routes: vec![
            Route {
                name: "maths".into(),
                description: "does sums".into(),
            },
            Route {
                name: "writer".into(),
                description: "writes".into(),
            },
        ],
        prompt: "Pick.".into(),
        timeout: Duration::from_millis(400),
    })
}

fn answer(task: &Envelope, text: &str, agent: Option<&str>) -> Envelope {
    let mut req = task.reply(Kind::Message, "router", Role::User, "");
    req.id = request_id(task);
    let mut message = ChatMessage::new(Role::Assistant, text);
    if let Some(a) = agent {
        message.tool_calls.push(ToolCall {
            id: "c1".into(),
            name: "choose_agent".into(),
            arguments: format!(r#"{{"agent": "{a}"}}"#),
        });
    }
    ChatResponse {
        message,
        model: "m".into(),
        finish_reason: None,
        usage: None,
    }
    .to_envelope(&req, "llm")
}

#[test]
fn a_call_or_a_text_answer_picks_the_route_and_the_task_goes_out_unchanged() {
    let sums = Envelope::task("src", "2+2?");
    let poem = Envelope::task("src", "a poem");
    let sent = harness::run(
        router(),
        vec![
            envelope(0.0, "task", &sums),
            envelope(0.0, "task", &poem),
            envelope(0.1, "llm", &answer(&sums, "", Some("maths"))),
            envelope(0.1, "llm", &answer(&poem, "Writer.", None)),
        ],
    );
    assert_eq!(on(&sent, "llm").len(), 2);
    assert_eq!(on(&sent, "maths"), vec![sums]);
    assert_eq!(on(&sent, "writer"), vec![poem]);
    assert!(on(&sent, "error").is_empty());
}

#[test]
fn an_unknown_choice_a_failed_llm_silence_and_strays_are_errors() {
    let t1 = Envelope::task("src", "paint");
    let t2 = Envelope::task("src", "sing");
    let t3 = Envelope::task("src", "nobody answers this");
    let stray = answer(&Envelope::task("src", "never asked"), "", Some("maths"));
    let failed = {
        let mut req = t2.reply(Kind::Message, "router", Role::User, "");
        req.id = request_id(&t2);
        req.error_reply("llm", "HTTP 500", serde_json::json!({}))
    };
    let sent = harness::run(
        router(),
        vec![
            envelope(0.0, "task", &t1),
            envelope(0.0, "task", &t2),
            envelope(0.0, "task", &t3),
            envelope(0.1, "llm", &answer(&t1, "", Some("painter"))),
            envelope(0.1, "llm", &failed),
            envelope(0.1, "llm", &stray),
            // Keeps the node up past t3's timeout.
            closed(0.8, "llm"),
        ],
    );
    let errors: Vec<String> = on(&sent, "error")
        .iter()
        .map(|e| e.content.clone())
        .collect();
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert!(errors[0].contains("`painter`, which is no route (maths, writer)"));
    assert!(errors[1].contains("the routing LLM failed: HTTP 500"));
    assert!(errors[2].contains("unknown request"));
    assert!(errors[3].contains("no routing answer from the LLM within 400 ms"));
    assert!(on(&sent, "maths").is_empty() && on(&sent, "writer").is_empty());
}

#[test]
fn a_task_still_waiting_for_its_route_at_stop_is_answered_with_an_error() {
    let t = Envelope::task("src", "anything");
    let sent = harness::run(router(), vec![envelope(0.0, "task", &t)]);
    let errors = on(&sent, "error");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].reply_to.as_deref(), Some(t.id.as_str()));
    assert!(errors[0].content.contains("stopped before the LLM chose"));
}
