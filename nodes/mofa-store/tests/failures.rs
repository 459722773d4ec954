//! A database that goes away while the store runs, and one that cannot be reached at start:
//! errors after the retries, recovery once the server is back, and never the password.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mofa_kernel::{Envelope, Kind, Role};
use mofa_store::{Db, DbOptions, StoreConfig, StoreNode};
use mofa_tests::db::DbServer;
use mofa_tests::harness::{self, envelope, on};
use serde_json::{Value, json};

fn request(op: Value) -> Envelope {
    Envelope::new(Kind::Control, "secretary", Role::User, "")
        .with_session("job")
        .with_payload(&op)
}

fn answer<'a>(sent: &'a [Envelope], req: &Envelope) -> &'a Envelope {
    sent.iter()
        .find(|e| e.reply_to.as_deref() == Some(req.id.as_str()))
        .unwrap_or_else(|| panic!("no answer to {}: {sent:#?}", req.id))
}

fn quick() -> DbOptions {
    DbOptions {
        retries: 2,
        retry_delay: Duration::from_millis(100),
        max_retry_delay: Duration::from_millis(400),
        timeout: Duration::from_millis(1000),
    }
}

/// The store runs; PostgreSQL stops (its connections drop); a request fails after the retries
/// with an error envelope that does not show the password; PostgreSQL starts again on the same
/// port and data; the next requests succeed and find what was written before.
#[test]
fn a_lost_postgres_is_an_error_then_the_store_recovers() {
    let server = DbServer::postgres();
    let url = server.url();
    let password = server.password().to_owned();
    let server = Arc::new(Mutex::new(server));

    let open = request(json!({"op": "session.open", "title": "survives"}));
    let put = request(json!({"op": "doc.put", "session": "job", "name": "plan", "content": "v1"}));
    let while_down =
        request(json!({"op": "doc.put", "session": "job", "name": "plan", "content": "lost"}));
    let after = request(json!({"op": "doc.get", "session": "job", "name": "plan"}));
    let put_again =
        request(json!({"op": "doc.put", "session": "job", "name": "plan", "content": "v2"}));

    // The server goes down at 1.5 s (a stop can take a while on a busy machine); the request
    // at 3 s fails by about 6.5 s (3 attempts of at most 1 s each, plus 0.3 s of backoff); the
    // server is back from 8 s; requests at 12 s.
    let s = server.clone();
    let operator = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        s.lock().unwrap().stop();
        std::thread::sleep(Duration::from_millis(6500));
        s.lock().unwrap().start();
    });
    let mut config = StoreConfig::new(url.clone());
    config.options = quick();
    let sent = harness::run(
        StoreNode::new(config),
        vec![
            envelope(0.0, "secretary", &open),
            envelope(0.1, "secretary", &put),
            envelope(3.0, "secretary", &while_down),
            envelope(12.0, "secretary", &after),
            envelope(12.1, "secretary", &put_again),
        ],
    );
    operator.join().unwrap();
    let out = on(&sent, "secretary");
    assert_eq!(answer(&out, &open).kind, Kind::Result, "{out:#?}");
    assert_eq!(
        answer(&out, &put).payload_json().unwrap(),
        json!({"version": 1})
    );

    let failed = answer(&out, &while_down);
    assert_eq!(failed.kind, Kind::Error, "{failed:?}");
    assert!(
        failed.content.contains("after 3 attempts"),
        "{}",
        failed.content
    );
    assert!(
        failed.content.contains(":***@127.0.0.1"),
        "{}",
        failed.content
    );
    assert_eq!(failed.payload_json().unwrap()["error"], "database");
    for e in sent.iter().flat_map(|s| s.rows.iter()) {
        assert!(
            !e.to_string().contains(&password),
            "the password leaked: {e}"
        );
    }
    assert!(
        on(&sent, "error")
            .iter()
            .any(|e| e.reply_to == failed.reply_to),
        "also on `error`"
    );

    let got = answer(&out, &after);
    assert_eq!(got.kind, Kind::Result, "the pool reconnected: {got:?}");
    assert_eq!(
        got.payload_json().unwrap(),
        json!({"content": "v1", "version": 1}),
        "no data lost, and the failed write left nothing"
    );
    assert_eq!(
        answer(&out, &put_again).payload_json().unwrap(),
        json!({"version": 2})
    );
}

/// A wrong password against a real server: the error says so, without the password.
#[tokio::test]
async fn a_wrong_password_is_reported_without_it() {
    let server = DbServer::postgres();
    let wrong = "Wr0ngPassw0rd";
    let url = server.url().replace(server.password(), wrong);
    let e = Db::open_with(&url, quick()).await.unwrap_err();
    let text = e.to_string();
    assert_eq!(e.kind(), "open");
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(text.contains("postgres://mofa:***@127.0.0.1"), "{text}");
    assert!(!text.contains(wrong), "{text}");
}

/// Nothing listens at the URL: the node does not start, and says which database it could not
/// reach, password shown as `***`.
#[test]
fn an_unreachable_database_stops_the_node_at_start() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let secret = "TopSecret42";
    for scheme in ["postgres", "mysql"] {
        let url = format!("{scheme}://mofa:{secret}@127.0.0.1:{port}/mofa");
        let out = Command::new(env!("CARGO_BIN_EXE_mofa-store"))
            .env("MOFA_DATABASE_URL", &url)
            .env("MOFA_STORE_RETRIES", "1")
            .env("MOFA_STORE_RETRY_MS", "50")
            .env("MOFA_STORE_TIMEOUT_MS", "2000")
            .env("RUST_LOG", "debug")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("MOFA_DATABASE_URL"), "{stderr}");
        assert!(
            stderr.contains(&format!("{scheme}://mofa:***@127.0.0.1:{port}/mofa")),
            "{stderr}"
        );
        assert!(stderr.contains("cannot open the database"), "{stderr}");
        assert!(!stderr.contains(secret), "the password leaked: {stderr}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains(secret));
    }
}

#[test]
fn bad_configuration_names_the_variable() {
    for (var, value) in [
        ("MOFA_STORE_RETRIES", "many"),
        ("MOFA_STORE_RETRY_MS", "-1"),
        ("MOFA_DATABASE_URL", "oracle://u:pw@h/db"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_mofa-store"))
            .env("MOFA_DATABASE_URL", "sqlite::memory:")
            .env(var, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(&format!("{var}=")), "{stderr}");
        assert!(!stderr.contains(":pw@"), "{stderr}");
    }
}

/// The same through `Db` on MariaDB: an op while the server is down fails after the retries
/// (no password in the error); once it is back the pool reconnects and the data is there.
#[tokio::test]
async fn a_lost_mariadb_is_an_error_then_db_recovers() {
    let mut server = DbServer::mariadb();
    let db = Db::open_with(&server.url(), quick()).await.unwrap();
    let put = json!({"op": "memory.put", "agent": "a", "key": "k", "value": {"kept": true}});
    db.run(&put).await.unwrap();

    server.stop();
    let e = db
        .run(&json!({"op": "memory.get", "agent": "a", "key": "k"}))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "database", "{e}");
    assert!(e.to_string().contains("after 3 attempts"), "{e}");
    assert!(e.to_string().contains("mysql://mofa:***@127.0.0.1"), "{e}");
    assert!(!e.to_string().contains(server.password()), "{e}");

    server.start();
    let got = db
        .run(&json!({"op": "memory.get", "agent": "a", "key": "k"}))
        .await
        .unwrap();
    assert_eq!(got, json!({"value": {"kept": true}}));
}
