//! The op suite, through `Db` directly, on the three backends: a SQLite file, and real
//! PostgreSQL and MariaDB servers (`mofa_tests::db`).

use mofa_kernel::{Envelope, Kind, Role};
use mofa_store::{Backend, Db, StoreError};
use mofa_tests::db::DbServer;
use serde_json::{Value, json};

async fn ok(db: &Db, request: Value) -> Value {
    match db.run(&request).await {
        Ok(v) => v,
        Err(e) => panic!("{request} failed on {:?}: {e}", db.backend()),
    }
}

async fn err(db: &Db, request: Value) -> StoreError {
    match db.run(&request).await {
        Ok(v) => panic!("{request} should fail on {:?}, gave {v}", db.backend()),
        Err(e) => e,
    }
}

/// Every op against an empty database.
async fn suite(db: &Db) {
    sessions(db).await;
    messages_and_taps(db).await;
    memory(db).await;
    todos(db).await;
    docs(db).await;
    errors(db).await;
}

async fn sessions(db: &Db) {
    let opened = ok(
        db,
        json!({"op": "session.open", "session": "s1", "title": "Plan a trip", "meta": {"by": "ann", "n": 1}}),
    )
    .await;
    assert_eq!(opened, json!({"session": "s1", "created": true}));
    let s1 = ok(db, json!({"op": "session.get", "session": "s1"})).await;
    assert_eq!(s1["title"], "Plan a trip");
    assert_eq!(s1["status"], "open");
    assert_eq!(s1["meta"], json!({"by": "ann", "n": 1}));
    assert!(s1["created_ms"].as_i64().unwrap() > 1_600_000_000_000);
    assert_eq!(s1["created_ms"], s1["updated_ms"]);

    // Idempotent: opening it again changes nothing.
    let again = ok(
        db,
        json!({"op": "session.open", "session": "s1", "title": "Another title"}),
    )
    .await;
    assert_eq!(again, json!({"session": "s1", "created": false}));
    assert_eq!(
        ok(db, json!({"op": "session.get", "session": "s1"})).await,
        s1
    );

    ok(
        db,
        json!({"op": "session.open", "session": "s2", "title": "Second"}),
    )
    .await;
    ok(
        db,
        json!({"op": "session.open", "session": "a0", "title": "Third, sorts first by name"}),
    )
    .await;
    std::thread::sleep(std::time::Duration::from_millis(2));
    let closed = ok(
        db,
        json!({"op": "session.close", "session": "s1", "status": "done"}),
    )
    .await;
    assert_eq!(closed, json!({}));
    let s1_closed = ok(db, json!({"op": "session.get", "session": "s1"})).await;
    assert_eq!(s1_closed["status"], "done");
    assert!(s1_closed["updated_ms"].as_i64() > s1["updated_ms"].as_i64());
    assert_eq!(s1_closed["meta"], s1["meta"]);

    let all = ok(db, json!({"op": "session.list"})).await;
    let ids: Vec<&str> = all["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["s1", "s2", "a0"], "oldest first");
    assert_eq!(all["sessions"][0]["title"], "Plan a trip");
    let open = ok(db, json!({"op": "session.list", "status": "open"})).await;
    let open: Vec<&str> = open["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session"].as_str().unwrap())
        .collect();
    assert_eq!(open, ["s2", "a0"]);
    assert_eq!(
        ok(db, json!({"op": "session.list", "status": "failed"})).await,
        json!({"sessions": []})
    );

    let missing = err(db, json!({"op": "session.get", "session": "nope"})).await;
    assert!(matches!(missing, StoreError::NotFound(_)), "{missing:?}");
    assert!(missing.to_string().contains("nope"));
    let missing = err(
        db,
        json!({"op": "session.close", "session": "nope", "status": "done"}),
    )
    .await;
    assert_eq!(missing.kind(), "not_found");
}

async fn messages_and_taps(db: &Db) {
    let unicode = "héllo — 日本語 🚀 'quoted' \"double\" ? $1";
    let mut ids = Vec::new();
    for (sender, role, content, kind) in [
        ("ann", "user", "first", None),
        ("bot", "assistant", unicode, Some("note")),
        ("ann", "user", "", None),
    ] {
        let mut req = json!({"op": "message.append", "session": "s1", "sender": sender, "role": role, "content": content});
        if let Some(k) = kind {
            req["kind"] = k.into();
        }
        let id = ok(db, req).await["id"].as_str().unwrap().to_owned();
        assert!(!ids.contains(&id));
        ids.push(id);
    }
    ok(db, json!({"op": "message.append", "session": "s2", "sender": "x", "role": "user", "content": "other session"})).await;

    let listed = ok(db, json!({"op": "message.list", "session": "s1"})).await;
    let msgs = listed["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3);
    let contents: Vec<&str> = msgs
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["first", unicode, ""], "in order, text intact");
    assert_eq!(msgs[0]["id"], ids[0].as_str());
    assert_eq!(msgs[0]["kind"], "message", "default kind");
    assert_eq!(msgs[1]["kind"], "note");
    assert_eq!(
        (msgs[1]["sender"].as_str(), msgs[1]["role"].as_str()),
        (Some("bot"), Some("assistant"))
    );
    assert!(msgs[0]["ts_ms"].as_i64().unwrap() > 0);
    assert!(msgs.iter().all(|m| m["tap"].is_null()));

    let last2 = ok(
        db,
        json!({"op": "message.list", "session": "s1", "limit": 2}),
    )
    .await;
    let last2: Vec<&str> = last2["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(last2, [unicode, ""], "the latest two, oldest first");
    assert_eq!(
        ok(db, json!({"op": "message.list", "session": "empty"})).await,
        json!({"messages": []})
    );

    // A tap records an envelope with its own id; message.seen finds it by that id.
    let task = Envelope::task("secretary", "write the parser").with_session("s1");
    let reply = task
        .reply(Kind::Result, "coder", Role::Assistant, "done")
        .with_payload(&json!({"files": 2}));
    db.record("tap_coder", &task).await.unwrap();
    db.record("tap_results", &reply).await.unwrap();
    let seen =
        |id: &str, session: &str| json!({"op": "message.seen", "session": session, "id": id});
    assert_eq!(ok(db, seen(&task.id, "s1")).await, json!({"seen": true}));
    assert_eq!(ok(db, seen(&reply.id, "s1")).await, json!({"seen": true}));
    assert_eq!(
        ok(db, seen(&task.id, "s2")).await,
        json!({"seen": false}),
        "per session"
    );
    assert_eq!(
        ok(db, seen("never-sent", "s1")).await,
        json!({"seen": false})
    );
    assert_eq!(
        ok(db, seen(&ids[0], "s1")).await,
        json!({"seen": false}),
        "an appended message was not seen on a tap"
    );
    let listed = ok(db, json!({"op": "message.list", "session": "s1"})).await;
    let msgs = listed["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 5);
    let t = &msgs[3];
    assert_eq!(t["id"], task.id.as_str());
    assert_eq!(t["kind"], "task");
    assert_eq!(t["sender"], "secretary");
    assert_eq!(t["content"], "write the parser");
    assert_eq!(t["tap"], "tap_coder");
    assert_eq!(t["ts_ms"], task.ts_ms);
    let r = &msgs[4];
    assert_eq!(r["reply_to"], task.id.as_str());
    assert_eq!(r["kind"], "result");
    assert_eq!(r["payload"], reply.payload.as_deref().unwrap());
    assert_eq!(r["tap"], "tap_results");
}

async fn memory(db: &Db) {
    let put = |agent: &str, key: &str, value: Value| json!({"op": "memory.put", "agent": agent, "key": key, "value": value});
    let get = |agent: &str, key: &str| json!({"op": "memory.get", "agent": agent, "key": key});
    assert_eq!(
        ok(db, put("coder", "plan", json!({"steps": 3}))).await,
        json!({})
    );
    assert_eq!(
        ok(db, get("coder", "plan")).await,
        json!({"value": {"steps": 3}})
    );
    // Upsert: the same key replaced, twice with the same value too.
    ok(db, put("coder", "plan", json!([1, "two", null]))).await;
    ok(db, put("coder", "plan", json!([1, "two", null]))).await;
    assert_eq!(
        ok(db, get("coder", "plan")).await,
        json!({"value": [1, "two", null]})
    );
    ok(db, put("coder", "Plan", json!("capital"))).await;
    ok(db, put("coder", "a.b", json!(1.5))).await;
    ok(db, put("coder", "plan.v2", json!(true))).await;
    ok(db, put("writer", "plan", json!("someone else's"))).await;
    assert_eq!(
        ok(db, get("coder", "Plan")).await,
        json!({"value": "capital"}),
        "keys are case-sensitive"
    );
    assert_eq!(ok(db, get("coder", "absent")).await, json!({"value": null}));
    assert_eq!(ok(db, get("nobody", "plan")).await, json!({"value": null}));

    let list = ok(db, json!({"op": "memory.list", "agent": "coder"})).await;
    let keys: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["Plan", "a.b", "plan", "plan.v2"], "sorted by key");
    assert_eq!(list["items"][1], json!({"key": "a.b", "value": 1.5}));
    let prefixed = ok(
        db,
        json!({"op": "memory.list", "agent": "coder", "prefix": "plan"}),
    )
    .await;
    assert_eq!(
        prefixed,
        json!({"items": [{"key": "plan", "value": [1, "two", null]}, {"key": "plan.v2", "value": true}]})
    );
    assert_eq!(
        ok(
            db,
            json!({"op": "memory.list", "agent": "coder", "prefix": "zz"})
        )
        .await,
        json!({"items": []})
    );
}

async fn todos(db: &Db) {
    let a = ok(
        db,
        json!({"op": "todo.add", "session": "s2", "title": "parse input", "detail": {"files": ["a.rs"]}, "capability": "code"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = ok(
        db,
        json!({"op": "todo.add", "session": "s2", "title": "write docs"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(
        db,
        json!({"op": "todo.add", "session": "s1", "title": "elsewhere"}),
    )
    .await;

    let got = ok(db, json!({"op": "todo.get", "id": a})).await["todo"].clone();
    assert_eq!(got["id"], a.as_str());
    assert_eq!(got["session"], "s2");
    assert_eq!(got["title"], "parse input");
    assert_eq!(got["detail"], json!({"files": ["a.rs"]}));
    assert_eq!(got["capability"], "code");
    assert_eq!(got["status"], "open", "default status");
    assert!(got["assignee"].is_null() && got["result"].is_null());

    std::thread::sleep(std::time::Duration::from_millis(2));
    let updated = ok(
        db,
        json!({"op": "todo.update", "id": a, "status": "doing", "assignee": "coder"}),
    )
    .await;
    let t = &updated["todo"];
    assert_eq!(
        (t["status"].as_str(), t["assignee"].as_str()),
        (Some("doing"), Some("coder"))
    );
    assert!(t["updated_ms"].as_i64() > got["updated_ms"].as_i64());
    assert_eq!(t["created_ms"], got["created_ms"]);
    let done = ok(db, json!({"op": "todo.update", "id": a, "status": "done", "result": {"ok": true, "lines": 40}})).await;
    assert_eq!(
        done["todo"]["assignee"], "coder",
        "fields not given are kept"
    );
    assert_eq!(done["todo"]["result"], json!({"ok": true, "lines": 40}));
    assert_eq!(
        ok(db, json!({"op": "todo.get", "id": a})).await["todo"],
        done["todo"],
        "stored as returned"
    );
    let cleared = ok(db, json!({"op": "todo.update", "id": b, "assignee": null})).await;
    assert!(cleared["todo"]["assignee"].is_null());

    let list = ok(db, json!({"op": "todo.list", "session": "s2"})).await;
    let todos = list["todos"].as_array().unwrap();
    let titles: Vec<&str> = todos.iter().map(|t| t["title"].as_str().unwrap()).collect();
    assert_eq!(
        titles,
        ["parse input", "write docs"],
        "creation order, this session only"
    );
    assert_eq!(todos[0]["status"], "done");
    assert_eq!(todos[1]["status"], "open");
    for key in [
        "id",
        "session",
        "title",
        "detail",
        "capability",
        "status",
        "assignee",
        "result",
        "created_ms",
        "updated_ms",
    ] {
        assert!(todos[1].get(key).is_some(), "todo has `{key}`");
    }

    let missing = err(
        db,
        json!({"op": "todo.update", "id": "nope", "status": "done"}),
    )
    .await;
    assert_eq!(missing.kind(), "not_found");
    assert_eq!(
        err(db, json!({"op": "todo.get", "id": "nope"}))
            .await
            .kind(),
        "not_found"
    );
}

async fn docs(db: &Db) {
    let put = |name: &str, content: &str| json!({"op": "doc.put", "session": "s1", "name": name, "content": content});
    let get = |name: &str, version: Option<i64>| {
        let mut r = json!({"op": "doc.get", "session": "s1", "name": name});
        if let Some(v) = version {
            r["version"] = v.into();
        }
        r
    };
    // Bigger than MySQL's TEXT (64 KiB).
    let big = "ü".repeat(70_000);
    assert_eq!(ok(db, put("plan", "v one")).await, json!({"version": 1}));
    assert_eq!(ok(db, put("plan", "v two")).await, json!({"version": 2}));
    assert_eq!(ok(db, put("plan", &big)).await, json!({"version": 3}));
    assert_eq!(
        ok(db, put("notes", "n")).await,
        json!({"version": 1}),
        "per name"
    );
    assert_eq!(
        ok(
            db,
            json!({"op": "doc.put", "session": "s2", "name": "plan", "content": "x"})
        )
        .await,
        json!({"version": 1}),
        "per session"
    );
    let latest = ok(db, get("plan", None)).await;
    assert_eq!(latest["version"], 3);
    assert_eq!(latest["content"].as_str().unwrap().chars().count(), 70_000);
    assert_eq!(latest["content"].as_str().unwrap(), big);
    assert_eq!(
        ok(db, get("plan", Some(2))).await,
        json!({"content": "v two", "version": 2})
    );
    assert_eq!(err(db, get("plan", Some(9))).await.kind(), "not_found");
    assert_eq!(err(db, get("absent", None)).await.kind(), "not_found");
}

async fn errors(db: &Db) {
    let unknown = err(db, json!({"op": "session.delete", "session": "s1"})).await;
    assert!(matches!(unknown, StoreError::BadRequest(_)));
    assert!(
        unknown.to_string().contains("unknown op `session.delete`"),
        "{unknown}"
    );
    let missing = err(
        db,
        json!({"op": "message.append", "session": "s1", "sender": "a", "content": "c"}),
    )
    .await;
    assert_eq!(missing.kind(), "bad_request");
    assert!(
        missing.to_string().contains("missing argument `role`"),
        "{missing}"
    );
    let no_op = err(db, json!({"session": "s1"})).await;
    assert_eq!(no_op.kind(), "bad_request");
    // Nothing was written by the failed requests.
    let listed = ok(db, json!({"op": "message.list", "session": "s1"})).await;
    assert_eq!(listed["messages"].as_array().unwrap().len(), 5);
}

/// Opening again finds the schema and the data.
async fn reopen(url: &str) {
    let db = Db::open(url).await.unwrap();
    let s1 = ok(&db, json!({"op": "session.get", "session": "s1"})).await;
    assert_eq!(s1["status"], "done");
    assert_eq!(
        ok(
            &db,
            json!({"op": "doc.get", "session": "s1", "name": "plan", "version": 1})
        )
        .await["content"],
        "v one"
    );
    db.close().await;
}

#[tokio::test]
async fn every_op_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/store.db?mode=rwc", dir.path().display());
    let db = Db::open(&url).await.unwrap();
    assert_eq!(db.backend(), Backend::Sqlite);
    suite(&db).await;
    db.close().await;
    reopen(&url).await;
}

#[tokio::test]
async fn every_op_on_postgres() {
    let server = DbServer::postgres();
    let db = Db::open(&server.url()).await.unwrap();
    assert_eq!(db.backend(), Backend::Postgres);
    assert!(!db.url().contains(server.password()) && db.url().contains(":***@"));
    suite(&db).await;
    db.close().await;
    reopen(&server.url()).await;
}

#[tokio::test]
async fn every_op_on_mariadb() {
    let server = DbServer::mariadb();
    let db = Db::open(&server.url()).await.unwrap();
    assert_eq!(db.backend(), Backend::MySql);
    suite(&db).await;
    db.close().await;
    reopen(&server.url()).await;
}
