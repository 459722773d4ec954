//! mofa-store's handler under `DoraNode::init_testing` (no daemon), on a SQLite file.

use mofa_kernel::{Envelope, Kind, Role};
use mofa_store::{StoreConfig, StoreNode};
use mofa_tests::harness::{self, envelope, on, raw};
use serde_json::{Value, json};

/// A request envelope from `sender` in `session`.
fn request(sender: &str, session: &str, op: Value) -> Envelope {
    Envelope::new(Kind::Control, sender, Role::User, "")
        .with_session(session)
        .with_payload(&op)
}

fn store(dir: &tempfile::TempDir) -> StoreNode {
    StoreNode::new(StoreConfig::new(format!(
        "sqlite://{}/mofa.db?mode=rwc",
        dir.path().display()
    )))
}

fn answer<'a>(sent: &'a [Envelope], req: &Envelope) -> &'a Envelope {
    sent.iter()
        .find(|e| e.reply_to.as_deref() == Some(req.id.as_str()))
        .unwrap_or_else(|| panic!("no answer to {}: {sent:#?}", req.id))
}

#[test]
fn a_request_is_answered_on_the_output_named_like_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let open = request(
        "secretary",
        "job-1",
        json!({"op": "session.open", "title": "Build it"}),
    );
    let get = request(
        "secretary",
        "job-1",
        json!({"op": "session.get", "session": "job-1"}),
    );
    let put = request(
        "coder",
        "job-1",
        json!({"op": "memory.put", "agent": "coder", "key": "k", "value": [1]}),
    );
    let sent = harness::run(
        store(&dir),
        vec![
            envelope(0.0, "secretary", &open),
            envelope(0.05, "secretary", &get),
            envelope(0.1, "coder", &put),
        ],
    );
    let to_secretary = on(&sent, "secretary");
    assert_eq!(to_secretary.len(), 2, "{sent:#?}");
    let opened = answer(&to_secretary, &open);
    assert_eq!(opened.kind, Kind::Result);
    assert_eq!(opened.session, "job-1");
    assert_eq!(opened.sender, "test-node");
    assert_eq!(opened.content, "session.open");
    assert_eq!(
        opened.payload_json().unwrap(),
        json!({"session": "job-1", "created": true}),
        "the session defaults to the request's"
    );
    let got = answer(&to_secretary, &get).payload_json().unwrap();
    assert_eq!(
        (got["title"].as_str(), got["status"].as_str()),
        (Some("Build it"), Some("open"))
    );
    let to_coder = on(&sent, "coder");
    assert_eq!(to_coder.len(), 1);
    assert_eq!(answer(&to_coder, &put).payload_json().unwrap(), json!({}));
    assert!(on(&sent, "error").is_empty(), "{sent:#?}");
}

#[test]
fn requests_are_answered_in_arrival_order() {
    let dir = tempfile::tempdir().unwrap();
    let reqs: Vec<Envelope> = (0..20)
        .map(|i| {
            request(
                "secretary",
                "s",
                json!({"op": "message.append", "session": "s", "sender": "a", "role": "user", "content": format!("m{i}")}),
            )
        })
        .collect();
    let list = request(
        "secretary",
        "s",
        json!({"op": "message.list", "session": "s"}),
    );
    let mut events: Vec<_> = reqs.iter().map(|r| envelope(0.0, "secretary", r)).collect();
    events.push(envelope(0.0, "secretary", &list));
    let sent = harness::run(store(&dir), events);
    let out = on(&sent, "secretary");
    let order: Vec<&str> = out.iter().map(|e| e.reply_to.as_deref().unwrap()).collect();
    let expected: Vec<&str> = reqs.iter().chain([&list]).map(|r| r.id.as_str()).collect();
    assert_eq!(order, expected);
    let listed = out.last().unwrap().payload_json().unwrap();
    let contents: Vec<&str> = listed["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    let want: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    assert_eq!(contents, want);
}

#[test]
fn a_tap_records_what_passes_and_message_seen_finds_it() {
    let dir = tempfile::tempdir().unwrap();
    let task = Envelope::task("secretary", "write the parser").with_session("job-7");
    let result = task
        .reply(Kind::Result, "coder", Role::Assistant, "parser written")
        .with_payload(&json!({"lines": 120}));
    let seen = request(
        "secretary",
        "job-7",
        json!({"op": "message.seen", "session": "job-7", "id": task.id}),
    );
    let not_seen = request(
        "secretary",
        "job-7",
        json!({"op": "message.seen", "session": "job-7", "id": "other"}),
    );
    let list = request(
        "secretary",
        "job-7",
        json!({"op": "message.list", "session": "job-7"}),
    );
    let sent = harness::run(
        store(&dir),
        vec![
            envelope(0.0, "tap_coder", &task),
            envelope(0.02, "tap", &result),
            envelope(0.05, "secretary", &seen),
            envelope(0.06, "secretary", &not_seen),
            envelope(0.07, "secretary", &list),
        ],
    );
    assert!(
        on(&sent, "tap_coder").is_empty() && on(&sent, "tap").is_empty(),
        "taps are not answered"
    );
    assert!(on(&sent, "error").is_empty(), "{sent:#?}");
    let out = on(&sent, "secretary");
    assert_eq!(
        answer(&out, &seen).payload_json().unwrap(),
        json!({"seen": true})
    );
    assert_eq!(
        answer(&out, &not_seen).payload_json().unwrap(),
        json!({"seen": false})
    );
    let listed = answer(&out, &list).payload_json().unwrap();
    let msgs = listed["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0]["id"], task.id.as_str());
    assert_eq!(msgs[0]["tap"], "tap_coder");
    assert_eq!(msgs[0]["kind"], "task");
    assert_eq!(msgs[1]["reply_to"], task.id.as_str());
    assert_eq!(msgs[1]["payload"], "{\"lines\":120}");
    assert_eq!(msgs[1]["tap"], "tap");
}

#[test]
fn bad_requests_are_error_envelopes_and_the_next_request_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let mut not_json = request("secretary", "s", json!({}));
    not_json.payload = Some("{op: session.open".into());
    let unknown = request("secretary", "s", json!({"op": "session.delete"}));
    let missing = request(
        "secretary",
        "s",
        json!({"op": "session.get", "session": "never-opened"}),
    );
    let no_arg = request(
        "secretary",
        "s",
        json!({"op": "doc.put", "session": "s", "name": "n"}),
    );
    let good = request(
        "secretary",
        "s",
        json!({"op": "doc.put", "session": "s", "name": "n", "content": "c"}),
    );
    let sent = harness::run(
        store(&dir),
        vec![
            // Not envelopes at all: the kernel reports these on `error`.
            raw(0.0, "secretary", json!([1.5, 2.5]), Some(json!("Float64"))),
            envelope(0.01, "secretary", &not_json),
            envelope(0.02, "secretary", &unknown),
            envelope(0.03, "secretary", &missing),
            envelope(0.04, "secretary", &no_arg),
            envelope(0.05, "secretary", &good),
        ],
    );
    let out = on(&sent, "secretary");
    let errors = on(&sent, "error");
    assert_eq!(errors.len(), 5, "{errors:#?}");
    assert!(
        errors[0]
            .content
            .contains("malformed message on input `secretary`"),
        "{}",
        errors[0].content
    );
    for (req, kind, text) in [
        (&not_json, "bad_request", "not JSON"),
        (&unknown, "bad_request", "unknown op `session.delete`"),
        (&missing, "not_found", "no session `never-opened`"),
        (&no_arg, "bad_request", "missing argument `content`"),
    ] {
        let e = answer(&out, req);
        assert_eq!(e.kind, Kind::Error, "{e:?}");
        assert_eq!(e.session, "s");
        assert!(e.content.contains(text), "{}", e.content);
        assert_eq!(e.payload_json().unwrap()["error"], kind);
        assert!(
            errors.iter().any(|x| x.reply_to == e.reply_to),
            "also on `error`"
        );
    }
    assert_eq!(
        answer(&out, &missing).payload_json().unwrap()["op"],
        "session.get"
    );
    let ok = answer(&out, &good);
    assert_eq!(ok.kind, Kind::Result);
    assert_eq!(ok.payload_json().unwrap(), json!({"version": 1}));
}

#[test]
fn a_request_in_the_content_is_accepted_too() {
    let dir = tempfile::tempdir().unwrap();
    let req = Envelope::task("py", json!({"op": "session.list"}).to_string());
    let sent = harness::run(store(&dir), vec![envelope(0.0, "py", &req)]);
    assert_eq!(
        answer(&on(&sent, "py"), &req).payload_json().unwrap(),
        json!({"sessions": []})
    );
}

#[test]
fn an_unopenable_database_stops_the_node_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    // A folder where the database file should be: SQLite cannot open it.
    std::fs::create_dir(dir.path().join("mofa.db")).unwrap();
    let req = request("secretary", "s", json!({"op": "session.list"}));
    let sent = harness::run(store(&dir), vec![envelope(0.5, "secretary", &req)]);
    let errors = on(&sent, "error");
    assert!(!errors.is_empty());
    assert!(
        errors[0].content.contains("cannot open the database"),
        "{}",
        errors[0].content
    );
    assert!(
        on(&sent, "secretary").iter().all(|e| e.kind == Kind::Error),
        "nothing is answered as if it worked: {sent:#?}"
    );
}
