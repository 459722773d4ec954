//! The terminal front end: the prompt loop over a reader and a writer, and the handler in
//! terminal mode with scripted input.

use std::io::{Cursor, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mofa_human::terminal::{self, Prompted};
use mofa_human::{Defaults, HumanNode, Question};
use mofa_kernel::{Envelope, Kind, Role};
use mofa_tests::harness::{self, closed, envelope, on};
use serde_json::json;

#[derive(Clone, Default)]
struct Screen(Arc<Mutex<Vec<u8>>>);

impl Write for Screen {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Screen {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

fn q(choices: &[&str], default: Option<&str>) -> Question {
    Question {
        id: "q1".into(),
        session: "s".into(),
        question: "Deploy?".into(),
        choices: choices.iter().map(|c| c.to_string()).collect(),
        default: default.map(str::to_owned),
        deadline_ms: mofa_kernel::envelope::now_ms() + 30_000,
        context: Some("two files changed".into()),
    }
}

#[test]
fn a_wrong_choice_says_why_and_asks_again() {
    let mut input = Cursor::new("maybe\n  Approve \n");
    let mut out = Vec::new();
    let got = terminal::ask(
        &q(&["approve", "reject"], Some("reject")),
        &mut input,
        &mut out,
        || true,
    )
    .unwrap();
    assert_eq!(got, Prompted::Answer("approve".into()));
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("Deploy?"), "{text}");
    assert!(text.contains("two files changed"), "{text}");
    assert!(text.contains("approve / reject"), "{text}");
    assert!(text.contains("empty line: reject"), "{text}");
    assert!(
        text.contains("`maybe` is not one of the choices: approve, reject; please answer again"),
        "{text}"
    );
    assert_eq!(text.matches("> ").count(), 2, "asked twice: {text}");
}

#[test]
fn an_empty_line_takes_the_default_and_without_one_asks_again() {
    let mut out = Vec::new();
    let got = terminal::ask(
        &q(&["approve", "reject"], Some("reject")),
        &mut Cursor::new("\n"),
        &mut out,
        || true,
    );
    assert_eq!(got.unwrap(), Prompted::Answer("reject".into()));
    let got = terminal::ask(
        &q(&[], None),
        &mut Cursor::new("\n \nhello there\n"),
        &mut out,
        || true,
    );
    assert_eq!(got.unwrap(), Prompted::Answer("hello there".into()));
}

#[test]
fn end_of_input_and_a_question_closed_meanwhile() {
    let mut out = Vec::new();
    let got = terminal::ask(&q(&["a"], None), &mut Cursor::new("b\n"), &mut out, || true);
    assert_eq!(
        got.unwrap(),
        Prompted::Eof,
        "after the wrong line, nothing more"
    );
    let got = terminal::ask(&q(&["a"], None), &mut Cursor::new("a\n"), &mut out, || {
        false
    });
    assert_eq!(
        got.unwrap(),
        Prompted::Closed,
        "a line for a question already answered"
    );
}

#[test]
fn in_terminal_mode_the_node_answers_with_the_line_the_person_typed() {
    let screen = Screen::default();
    let node = HumanNode::terminal(
        Defaults {
            timeout: Duration::from_secs(20),
            default: None,
        },
        Cursor::new("no idea\nREJECT\nblue\n"),
        screen.clone(),
    );
    let q1 = Envelope::new(Kind::Message, "agent", Role::Assistant, "Deploy?")
        .with_payload(&json!({"choices": ["approve", "reject"]}));
    let q2 = Envelope::new(Kind::Message, "agent", Role::Assistant, "Colour?");
    let sent = harness::run(
        node,
        vec![
            envelope(0.0, "ask", &q1),
            envelope(0.01, "ask", &q2),
            closed(0.05, "ask"),
        ]
        .into_iter()
        // Events on an input the node ignores hold the run open while the terminal answers.
        .chain((1..300).map(|i| closed(f64::from(i) / 10.0, "keepalive")))
        .collect(),
    );
    let answers = on(&sent, "answer");
    assert_eq!(answers.len(), 2, "{answers:#?}");
    assert_eq!(answers[0].reply_to.as_deref(), Some(q1.id.as_str()));
    assert_eq!(answers[0].content, "reject");
    assert_eq!(answers[0].payload_json().unwrap()["source"], "person");
    assert_eq!(answers[1].reply_to.as_deref(), Some(q2.id.as_str()));
    assert_eq!(answers[1].content, "blue");
    let text = screen.text();
    assert!(
        text.contains("`no idea` is not one of the choices"),
        "{text}"
    );
    assert!(text.contains("answered: reject"), "{text}");
}
