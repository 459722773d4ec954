//! mofa-human's handler without a daemon (the kernel harness), answered through its real HTTP
//! API on 127.0.0.1 by a thread playing the person.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use dora_node_api::integration_testing::integration_testing_format::TimedIncomingEvent;
use mofa_human::{Defaults, HumanNode};
use mofa_kernel::{Envelope, Kind, Role};
use mofa_tests::harness::{self, Sent, closed, envelope, envelopes, on, raw};
use serde_json::{Value, json};

/// An HTTP response: status and body.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// One request over a fresh connection, with the given Host header and extra header lines.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    extra: &str,
    body: &str,
) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect to the node");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a full response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("status line: {head}"));
    Reply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, &addr.to_string(), "", "")
}

fn post_answer(addr: SocketAddr, id: &str, answer: &str) -> Reply {
    let body = json!({ "answer": answer }).to_string();
    request(
        addr,
        "POST",
        &format!("/api/questions/{id}/answer"),
        &addr.to_string(),
        "Content-Type: application/json\r\n",
        &body,
    )
}

fn pending(addr: SocketAddr) -> Vec<Value> {
    let r = get(addr, "/api/questions");
    assert_eq!(r.status, 200, "{r:?}");
    r.json().as_array().expect("a JSON list").clone()
}

/// Polls the API until `n` questions are pending (at most 10 s).
fn wait_for(addr: SocketAddr, n: usize) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let qs = pending(addr);
        if qs.len() == n {
            return qs;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{n} questions never pending: {qs:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Events every 100 ms until `until` s on an input the node ignores: they keep a run open
/// while the node waits for a person or a timeout. Dense, because when the node ends from
/// outside its event loop (an HTTP answer, a timeout), dora's test input finishes its wait for
/// the next scheduled event before the node's teardown completes.
fn keepalive(until: f64) -> Vec<TimedIncomingEvent> {
    (1..=(until * 10.0) as u32)
        .map(|i| closed(f64::from(i) / 10.0, "keepalive"))
        .collect()
}

fn defaults(timeout_ms: u64, default: Option<&str>) -> Defaults {
    Defaults {
        timeout: Duration::from_millis(timeout_ms),
        default: default.map(str::to_owned),
    }
}

fn http_node(d: Defaults) -> (HumanNode, SocketAddr) {
    let node = HumanNode::http(d, 0).expect("bind a free port");
    let addr = node.http_addr().expect("an HTTP address");
    assert!(addr.ip().is_loopback(), "{addr}");
    (node, addr)
}

/// A question from an agent, with `payload` (none if null).
fn question(text: &str, session: &str, payload: Value) -> Envelope {
    let q = Envelope::new(Kind::Message, "agent", Role::Assistant, text).with_session(session);
    if payload.is_null() {
        q
    } else {
        q.with_payload(&payload)
    }
}

fn payload(e: &Envelope) -> Value {
    e.payload_json().unwrap()
}

/// Runs the node on `events` while `person` acts on its HTTP API; `ask` closes at `close_at`
/// and keepalive events hold the run open until the node ends (every question answered).
fn run_with_person(
    node: HumanNode,
    mut events: Vec<TimedIncomingEvent>,
    close_at: f64,
    person: impl FnOnce() + Send + 'static,
) -> (Vec<Sent>, Duration) {
    events.push(closed(close_at, "ask"));
    events.extend(keepalive(30.0));
    let start = Instant::now();
    let person = thread::spawn(person);
    let sent = harness::run(node, events);
    let took = start.elapsed();
    person.join().expect("the person's checks");
    (sent, took)
}

fn approve_or_reject(default: Option<&str>, timeout_ms: u64) -> Value {
    let mut p = json!({"choices": ["approve", "reject"], "timeout_ms": timeout_ms});
    if let Some(d) = default {
        p["default"] = d.into();
    }
    p
}

#[test]
fn a_person_answers_over_http_and_the_answer_replies_to_the_question() {
    let (node, addr) = http_node(defaults(60_000, None));
    let q = question(
        "Deploy v2 to production?",
        "s1",
        json!({"choices": ["approve", "reject"], "default": "reject", "timeout_ms": 20000, "context": "diff: +3 -1"}),
    );
    let qid = q.id.clone();
    let (sent, took) = run_with_person(node, vec![envelope(0.0, "ask", &q)], 0.1, move || {
        let qs = wait_for(addr, 1);
        assert_eq!(qs[0]["id"], qid.as_str());
        assert_eq!(qs[0]["session"], "s1");
        assert_eq!(qs[0]["question"], "Deploy v2 to production?");
        assert_eq!(qs[0]["choices"], json!(["approve", "reject"]));
        assert_eq!(qs[0]["default"], "reject");
        assert_eq!(qs[0]["context"], "diff: +3 -1");
        let deadline = qs[0]["deadline_ms"].as_i64().unwrap();
        let now = mofa_kernel::envelope::now_ms();
        assert!(
            (now + 15_000..=now + 20_000).contains(&deadline),
            "deadline {deadline} vs now {now}"
        );
        let r = post_answer(addr, &qid, "approve");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.json(),
            json!({"ok": true, "answer": "approve", "question_id": qid})
        );
    });
    assert!(
        took < Duration::from_secs(15),
        "ended once answered: {took:?}"
    );
    let answers = on(&sent, "answer");
    assert_eq!(answers.len(), 1, "{answers:#?}");
    let a = &answers[0];
    assert_eq!(a.kind, Kind::Result);
    assert_eq!(a.role, Role::User);
    assert_eq!(a.sender, "test-node");
    assert_eq!(a.reply_to.as_deref(), Some(q.id.as_str()));
    assert_eq!(a.session, "s1");
    assert_eq!(a.content, "approve");
    assert_eq!(
        payload(a),
        json!({"answer": "approve", "source": "person", "question_id": q.id})
    );
    assert!(on(&sent, "error").is_empty());
}

#[test]
fn a_wrong_choice_is_422_and_stays_pending_then_a_right_one_in_another_case_is_canonicalised() {
    let (node, addr) = http_node(defaults(60_000, None));
    let q = question("Ship it?", "s", approve_or_reject(Some("reject"), 20_000));
    let qid = q.id.clone();
    let (sent, _) = run_with_person(node, vec![envelope(0.0, "ask", &q)], 2.0, move || {
        wait_for(addr, 1);
        let r = post_answer(addr, &qid, "maybe");
        assert_eq!(r.status, 422, "{r:?}");
        let body = r.json();
        assert_eq!(body["ok"], false);
        assert_eq!(body["choices"], json!(["approve", "reject"]));
        let why = body["error"].as_str().unwrap();
        assert!(
            why.contains("`maybe` is not one of the choices: approve, reject"),
            "{why}"
        );
        // Still asked.
        let qs = pending(addr);
        assert_eq!(qs.len(), 1);
        assert_eq!(qs[0]["id"], qid.as_str());
        assert_eq!(post_answer(addr, "no-such-question", "approve").status, 404);
        let r = post_answer(addr, &qid, "  APPROVE ");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["answer"], "approve");
        // `ask` is still open (it closes at 2 s), so the node still serves.
        let again = post_answer(addr, &qid, "reject");
        assert_eq!(again.status, 409, "{again:?}");
        assert!(pending(addr).is_empty());
    });
    let answers = on(&sent, "answer");
    assert_eq!(answers.len(), 1, "answered exactly once: {answers:#?}");
    assert_eq!(answers[0].content, "approve");
    assert_eq!(payload(&answers[0])["answer"], "approve");
    assert_eq!(payload(&answers[0])["source"], "person");
}

#[test]
fn at_the_timeout_the_default_is_taken_and_a_late_answer_is_409() {
    let (node, addr) = http_node(defaults(60_000, None));
    let q = question("Ship it?", "s", approve_or_reject(Some("Reject"), 300));
    let qid = q.id.clone();
    let (sent, took) = run_with_person(node, vec![envelope(0.0, "ask", &q)], 2.0, move || {
        let qs = wait_for(addr, 1);
        assert_eq!(qs[0]["default"], "reject", "canonicalised to the choice");
        wait_for(addr, 0);
        let late = post_answer(addr, &qid, "approve");
        assert_eq!(late.status, 409, "{late:?}");
    });
    assert!(
        took < Duration::from_secs(10),
        "the node ends when `ask` closes with nothing pending: {took:?}"
    );
    let answers = on(&sent, "answer");
    assert_eq!(answers.len(), 1, "{answers:#?}");
    assert_eq!(answers[0].kind, Kind::Result);
    assert_eq!(answers[0].content, "reject");
    assert_eq!(answers[0].reply_to.as_deref(), Some(q.id.as_str()));
    assert_eq!(
        payload(&answers[0]),
        json!({"answer": "reject", "source": "default", "question_id": q.id})
    );
}

#[test]
fn the_node_wide_timeout_and_default_apply_when_the_question_sets_none() {
    let (node, _) = http_node(defaults(300, Some("REJECT")));
    let fits = question("Ship it?", "s1", json!({"choices": ["approve", "reject"]}));
    // MOFA_HUMAN_DEFAULT is not among these choices: no default, so an error at the timeout.
    let other = question("Colour?", "s2", json!({"choices": ["red", "blue"]}));
    let free = question("Your name?", "s3", Value::Null);
    let start = Instant::now();
    let sent = harness::run(
        node,
        vec![
            envelopes(0.0, "ask", &[fits.clone(), other.clone(), free.clone()]),
            closed(0.05, "ask"),
        ]
        .into_iter()
        .chain(keepalive(30.0))
        .collect(),
    );
    let took = start.elapsed();
    let answers = on(&sent, "answer");
    assert_eq!(answers.len(), 3, "{answers:#?}");
    assert!(
        took < Duration::from_secs(10),
        "ended at the timeouts: {took:?}"
    );
    let reply = |q: &Envelope| {
        answers
            .iter()
            .find(|a| a.reply_to.as_deref() == Some(q.id.as_str()))
            .unwrap_or_else(|| panic!("no reply to {}", q.content))
            .clone()
    };
    assert_eq!(reply(&fits).content, "reject");
    assert_eq!(payload(&reply(&fits))["source"], "default");
    assert_eq!(reply(&other).kind, Kind::Error);
    assert_eq!(reply(&free).content, "REJECT");
    assert_eq!(payload(&reply(&free))["source"], "default");
}

#[test]
fn with_no_default_the_timeout_is_an_error_replying_to_the_question() {
    let (node, _) = http_node(defaults(60_000, None));
    let q = question("Anyone there?", "s", json!({"timeout_ms": 200}));
    let sent = harness::run(
        node,
        vec![envelope(0.0, "ask", &q), closed(0.05, "ask")]
            .into_iter()
            .chain(keepalive(30.0))
            .collect(),
    );
    let answers = on(&sent, "answer");
    assert_eq!(answers.len(), 1, "{answers:#?}");
    let a = &answers[0];
    assert_eq!(a.kind, Kind::Error);
    assert_eq!(a.content, "no answer in time and no default");
    assert_eq!(a.reply_to.as_deref(), Some(q.id.as_str()));
    assert_eq!(a.session, "s");
    let errors = on(&sent, "error");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].reply_to.as_deref(), Some(q.id.as_str()));
}

#[test]
fn bad_questions_are_errors_and_the_next_question_still_works() {
    let (node, addr) = http_node(defaults(60_000, None));
    let not_a_list = question("a?", "s", json!({"choices": "approve"}));
    let not_strings = question("b?", "s", json!({"choices": ["yes", 1]}));
    let bad_default = question(
        "c?",
        "s",
        json!({"choices": ["yes", "no"], "default": "maybe"}),
    );
    let bad_timeout = question("d?", "s", json!({"timeout_ms": "soon"}));
    let not_an_object = question("e?", "s", json!(["yes", "no"]));
    let mut not_json = question("f?", "s", Value::Null);
    not_json.payload = Some("{oops".into());
    let empty = question("  ", "s", Value::Null);
    let bad = [
        (not_a_list, "`choices` must be a list of strings"),
        (not_strings, "`choices` must be a list of strings"),
        (bad_default, "`maybe` is not one of the choices: yes, no"),
        (bad_timeout, "`timeout_ms` must be"),
        (not_an_object, "the payload must be a JSON object"),
        (not_json, "the payload is not JSON"),
        (empty, "the question is empty"),
    ];
    let good = question("Proceed?", "s2", json!({"choices": ["yes", "no"]}));
    let gid = good.id.clone();
    let batch: Vec<Envelope> = bad.iter().map(|(q, _)| q.clone()).collect();
    let events = vec![
        raw(0.0, "ask", json!([1.5]), Some(json!("Float64"))),
        envelopes(0.01, "ask", &batch),
        envelope(0.05, "ask", &good),
        // The same question again: it is answered once only.
        envelope(0.1, "ask", &good),
    ];
    let (sent, _) = run_with_person(node, events, 0.2, move || {
        let qs = wait_for(addr, 1);
        assert_eq!(qs[0]["id"], gid.as_str());
        thread::sleep(Duration::from_millis(200));
        assert_eq!(pending(addr).len(), 1);
        assert_eq!(post_answer(addr, &gid, "Yes").status, 200);
    });
    let errors = on(&sent, "error");
    assert_eq!(errors.len(), 1 + bad.len() + 1, "{errors:#?}");
    assert!(
        errors[0]
            .content
            .contains("malformed message on input `ask`")
    );
    let answers = on(&sent, "answer");
    for (q, why) in &bad {
        let a = answers
            .iter()
            .find(|a| a.reply_to.as_deref() == Some(q.id.as_str()))
            .unwrap_or_else(|| panic!("no reply to {:?}", q.content));
        assert_eq!(a.kind, Kind::Error);
        assert!(a.content.contains(why), "{} should say {why}", a.content);
    }
    let good_replies: Vec<&Envelope> = answers
        .iter()
        .filter(|a| a.reply_to.as_deref() == Some(good.id.as_str()))
        .collect();
    assert_eq!(
        good_replies.len(),
        1,
        "one answer per question: {good_replies:#?}"
    );
    assert_eq!(good_replies[0].kind, Kind::Result);
    assert_eq!(good_replies[0].content, "yes");
    let repeat = errors.last().unwrap();
    assert_eq!(repeat.reply_to.as_deref(), Some(good.id.as_str()));
    assert!(
        repeat.content.contains("asked already"),
        "{}",
        repeat.content
    );
}

#[test]
fn two_questions_in_two_sessions_are_answered_independently() {
    let (node, addr) = http_node(defaults(60_000, None));
    let qa = question("Favourite colour?", "session-a", Value::Null);
    let qb = question(
        "Favourite number?",
        "session-b",
        json!({"choices": ["1", "2"]}),
    );
    let (ida, idb) = (qa.id.clone(), qb.id.clone());
    let events = vec![envelope(0.0, "ask", &qa), envelope(0.02, "ask", &qb)];
    let (sent, _) = run_with_person(node, events, 0.1, move || {
        let qs = wait_for(addr, 2);
        assert_eq!(qs[0]["id"], ida.as_str(), "oldest first");
        assert_eq!(qs[1]["session"], "session-b");
        assert_eq!(qs[0]["choices"], json!([]));
        assert_eq!(qs[0]["default"], Value::Null);
        assert_eq!(post_answer(addr, &idb, "2").status, 200);
        let left = pending(addr);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0]["id"], ida.as_str());
        assert_eq!(post_answer(addr, &ida, "").status, 422, "empty free text");
        assert_eq!(post_answer(addr, &ida, "  sea green ").status, 200);
    });
    let answers = on(&sent, "answer");
    assert_eq!(answers.len(), 2, "{answers:#?}");
    assert_eq!(answers[0].reply_to.as_deref(), Some(qb.id.as_str()));
    assert_eq!(answers[0].session, "session-b");
    assert_eq!(answers[0].content, "2");
    assert_eq!(answers[1].reply_to.as_deref(), Some(qa.id.as_str()));
    assert_eq!(answers[1].session, "session-a");
    assert_eq!(answers[1].content, "sea green");
}

#[test]
fn the_page_lists_the_question_and_foreign_hosts_are_refused() {
    let (node, addr) = http_node(defaults(60_000, None));
    let q = question("Ship <v2> to prod?", "s", approve_or_reject(None, 20_000));
    let qid = q.id.clone();
    let (sent, _) = run_with_person(node, vec![envelope(0.0, "ask", &q)], 0.1, move || {
        wait_for(addr, 1);
        let page = get(addr, "/");
        assert_eq!(page.status, 200);
        assert!(
            page.head
                .to_ascii_lowercase()
                .contains("content-type: text/html"),
            "{}",
            page.head
        );
        assert!(
            page.body.contains("Ship &lt;v2&gt; to prod?"),
            "{}",
            page.body
        );
        assert!(!page.body.contains("<v2>"), "escaped");
        assert!(
            page.body.contains("/api/questions"),
            "the page polls the API"
        );
        assert!(
            !page.body.contains("http://") && !page.body.contains("https://"),
            "no external assets"
        );
        for host in [
            "evil.example",
            "evil.example:8790",
            "127.0.0.1.evil.example",
            "10.1.2.3",
        ] {
            let r = request(addr, "GET", "/api/questions", host, "", "");
            assert_eq!(r.status, 403, "{host}: {r:?}");
            assert_eq!(
                request(addr, "GET", "/", host, "", "").status,
                403,
                "{host}"
            );
        }
        let body = json!({"answer": "approve"}).to_string();
        let path = format!("/api/questions/{qid}/answer");
        let r = request(
            addr,
            "POST",
            &path,
            "attacker.example",
            "Content-Type: application/json\r\n",
            &body,
        );
        assert_eq!(r.status, 403);
        let r = request(
            addr,
            "POST",
            &path,
            &addr.to_string(),
            "Content-Type: application/json\r\nOrigin: http://attacker.example\r\n",
            &body,
        );
        assert_eq!(r.status, 403, "cross-site page");
        let r = request(
            addr,
            "POST",
            &path,
            &addr.to_string(),
            "Content-Type: text/plain\r\n",
            &body,
        );
        assert_eq!(r.status, 415, "a form post is not an answer");
        let r = request(
            addr,
            "POST",
            &path,
            "localhost",
            "Content-Type: application/json\r\n",
            "{\"answer\": 1}",
        );
        assert_eq!(r.status, 400);
        assert_eq!(pending(addr).len(), 1, "none of that answered it");
        let r = request(
            addr,
            "POST",
            &path,
            &format!("localhost:{}", addr.port()),
            "Content-Type: application/json\r\nOrigin: http://localhost\r\n",
            &body,
        );
        assert_eq!(r.status, 200, "{r:?}");
    });
    let answers = on(&sent, "answer");
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].content, "approve");
}

#[test]
fn at_stop_open_questions_are_answered_with_an_error() {
    let (node, _) = http_node(defaults(300_000, Some("reject")));
    let q = question("Still there?", "s", Value::Null);
    let start = Instant::now();
    // The events end at once: the node is stopped with the question open.
    let sent = harness::run(node, vec![envelope(0.0, "ask", &q)]);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let answers = on(&sent, "answer");
    assert_eq!(answers.len(), 1, "{answers:#?}");
    assert_eq!(answers[0].kind, Kind::Error);
    assert_eq!(answers[0].content, "stopped before an answer");
    assert_eq!(answers[0].reply_to.as_deref(), Some(q.id.as_str()));
    assert_eq!(on(&sent, "error").len(), 1);
}

#[test]
fn when_the_asker_has_gone_the_open_questions_still_wait_for_their_answers() {
    let (node, addr) = http_node(defaults(60_000, None));
    let q1 = question("Deploy?", "s1", approve_or_reject(None, 20_000));
    let q2 = question(
        "Colour?",
        "s2",
        json!({"default": "blue", "timeout_ms": 600}),
    );
    let id1 = q1.id.clone();
    let person = thread::spawn(move || {
        wait_for(addr, 2);
        // Well after `ask` has closed and the test input has ended.
        thread::sleep(Duration::from_millis(300));
        assert_eq!(post_answer(addr, &id1, "approve").status, 200);
    });
    // No keepalive: `ask` closes, then the input ends, as when the source node exits.
    let sent = harness::run(
        node,
        vec![
            envelopes(0.0, "ask", &[q1.clone(), q2.clone()]),
            closed(0.05, "ask"),
        ],
    );
    person.join().unwrap();
    let answers = on(&sent, "answer");
    assert_eq!(answers.len(), 2, "{answers:#?}");
    let by = |q: &Envelope| {
        answers
            .iter()
            .find(|a| a.reply_to.as_deref() == Some(q.id.as_str()))
            .unwrap()
            .clone()
    };
    assert_eq!(by(&q1).content, "approve");
    assert_eq!(payload(&by(&q1))["source"], "person");
    assert_eq!(by(&q2).content, "blue");
    assert_eq!(payload(&by(&q2))["source"], "default");
}
