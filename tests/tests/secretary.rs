//! End to end: dataflows/secretary.yml under `dora run`, on the mock LLM, with a person
//! scripted against mofa-human's HTTP API, on SQLite and on real PostgreSQL and MariaDB
//! servers. What the secretary did is read back from the database through the store's own
//! operations.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mofa_store::Db;
use mofa_tests::db::DbServer;
use mofa_tests::dora;
use mofa_tests::mock_llm::{MockLlm, Rule, Script};
use serde_json::{Value, json};

const IDEA: &str = "A command-line tool that turns CSV files into Markdown tables";
const CLARIFICATION: &str = "Support a custom delimiter too.";

/// The model's part. Executors first: their tasks quote the project document, whose prompt
/// quotes the others' markers.
fn script(coder_delay_ms: u64) -> Script {
    Script {
        rules: vec![
            Rule {
                matches: "You are the coder".into(),
                delay_ms: coder_delay_ms,
                content: Some("fn csv_to_markdown(input: &str) -> String".into()),
                ..Default::default()
            },
            Rule {
                matches: "You are the writer".into(),
                content: Some("Usage: csv2md FILE > table.md".into()),
                ..Default::default()
            },
            Rule {
                matches: "Write the acceptance report".into(),
                content: Some("Acceptance report: the converter and its guide are done.".into()),
                ..Default::default()
            },
            Rule {
                matches: "record_todos".into(),
                tool_calls: vec![json!({"name": "record_todos", "arguments": {"todos": [
                    {"title": "Write the converter", "detail": "CSV in, Markdown out", "capability": "code"},
                    {"title": "Write the user guide", "detail": "one page", "capability": "docs"},
                    // Said twice (small models do): one todo.
                    {"title": "write the converter", "detail": "again", "capability": "code"},
                ]}})],
                ..Default::default()
            },
            Rule {
                matches: "Write the project document".into(),
                content: Some("Project document. {last}".into()),
                ..Default::default()
            },
        ],
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request to 127.0.0.1:`port`; the status and the body.
fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.split_whitespace().nth(1)?.parse().ok()?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// A person at mofa-human's page: answers the clarification with [`CLARIFICATION`], and the
/// approval first with "maybe" (none of the choices), then with "Approve".
struct Person {
    stop: Arc<AtomicBool>,
    /// (question, answer given, HTTP status) in order.
    said: Arc<Mutex<Vec<(String, String, u16)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Person {
    fn start(port: u16) -> Person {
        let stop = Arc::new(AtomicBool::new(false));
        let said: Arc<Mutex<Vec<(String, String, u16)>>> = Arc::default();
        let (stop2, said2) = (stop.clone(), said.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
                let Some((200, body)) = http(port, "GET", "/api/questions", None) else {
                    continue;
                };
                let Ok(Value::Array(questions)) = serde_json::from_str::<Value>(&body) else {
                    continue;
                };
                for q in questions {
                    let id = q["id"].as_str().unwrap_or_default().to_owned();
                    let question = q["question"].as_str().unwrap_or_default().to_owned();
                    let has_choices = q["choices"].as_array().is_some_and(|c| !c.is_empty());
                    let answers: &[&str] = if has_choices {
                        &["maybe", "Approve"]
                    } else {
                        &[CLARIFICATION]
                    };
                    for a in answers {
                        let path = format!("/api/questions/{id}/answer");
                        if let Some((status, _)) =
                            http(port, "POST", &path, Some(&json!({"answer": a})))
                        {
                            said2
                                .lock()
                                .unwrap()
                                .push((question.clone(), a.to_string(), status));
                        }
                    }
                }
            }
        });
        Person {
            stop,
            said,
            thread: Some(thread),
        }
    }

    fn said(&self) -> Vec<(String, String, u16)> {
        self.said.lock().unwrap().clone()
    }
}

impl Drop for Person {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The variables every run gets: the mock, the person's port, the database, where the sink
/// writes, and a mark that finds this run's processes.
fn env(
    mock: &MockLlm,
    port: u16,
    url: &str,
    sink: &Path,
    run_id: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("OPENAI_BASE_URL", mock.base_url()),
        ("MOFA_TASK", IDEA.into()),
        ("MOFA_HUMAN_PORT", port.to_string()),
        ("MOFA_DATABASE_URL", url.into()),
        ("MOFA_OUT", sink.display().to_string()),
        ("MOFA_TEST_RUN", run_id.into()),
    ]
}

async fn op(db: &Db, op: Value) -> Value {
    db.run(&op).await.unwrap_or_else(|e| panic!("{op}: {e}"))
}

/// What the secretary left in the database for its one session.
struct Stored {
    session: Value,
    todos: Vec<Value>,
    document: String,
    report: String,
}

fn read_back(url: &str) -> Stored {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let db = Db::open(url).await.expect("the database");
        let sessions = op(&db, json!({"op": "session.list"})).await["sessions"].clone();
        assert_eq!(sessions.as_array().unwrap().len(), 1, "{sessions:#}");
        let session = sessions[0].clone();
        let s = session["session"].as_str().unwrap().to_owned();
        let todos = op(&db, json!({"op": "todo.list", "session": s})).await["todos"]
            .as_array()
            .unwrap()
            .clone();
        let doc = |name: &'static str| {
            let (db, s) = (&db, s.clone());
            async move {
                op(db, json!({"op": "doc.get", "session": s, "name": name})).await["content"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            }
        };
        Stored {
            session,
            todos,
            document: doc("project").await,
            report: doc("report").await,
        }
    })
}

fn phases(lines: &[Value]) -> Vec<u64> {
    lines
        .iter()
        .filter(|l| l["input"] == "progress")
        .map(|l| l["round"].as_u64().unwrap())
        .collect()
}

/// Requests whose last message starts with `prefix`: what the model was asked to do.
fn requests_asking(mock: &MockLlm, prefix: &str) -> usize {
    mock.requests()
        .iter()
        .filter(|r| {
            r.body["messages"]
                .as_array()
                .and_then(|m| m.last())
                .and_then(|m| m["content"].as_str())
                .is_some_and(|c| c.starts_with(prefix))
        })
        .count()
}

fn requests_matching(mock: &MockLlm, text: &str) -> usize {
    mock.requests()
        .iter()
        .filter(|r| r.prompt().contains(text))
        .count()
}

/// The whole loop with a person who answers: every phase in order, the clarification in the
/// document, a wrong choice asked again, everything in the database.
fn five_phases_with_a_person(url: &str) {
    let mock = MockLlm::start(script(0));
    let port = free_port();
    let person = Person::start(port);
    let out = tempfile::tempdir().unwrap();
    let sink = out.path().join("sink.jsonl");
    let run = dora::run(
        "secretary.yml",
        &env(&mock, port, url, &sink, &mofa_kernel::envelope::new_id()),
        Duration::from_secs(120),
    );
    assert!(run.status.is_some_and(|s| s.success()), "{}", run.log);
    let lines = dora::sink_lines(&sink);

    assert_eq!(phases(&lines), [1, 2, 3, 4, 5], "{lines:#?}");
    let report = lines
        .iter()
        .find(|l| l["input"] == "result")
        .expect("a report");
    let text = report["content"].as_str().unwrap();
    assert!(text.starts_with("Acceptance report:"), "{text}");
    assert!(
        text.contains(&format!(
            "Requirements: “{CLARIFICATION}” (decided by the person)"
        )),
        "{text}"
    );
    assert!(
        text.contains("Results approved (decided by the person)"),
        "{text}"
    );

    // The person: the clarification taken; "maybe" refused (422) and the question asked again.
    let said = person.said();
    let statuses: Vec<(&str, u16)> = said.iter().map(|(_, a, s)| (a.as_str(), *s)).collect();
    assert_eq!(
        statuses,
        [(CLARIFICATION, 200), ("maybe", 422), ("Approve", 200)],
        "{said:#?}"
    );
    assert!(said[0].0.contains(IDEA) && said[0].0.contains("Write the converter"));

    // Each executor was asked once; the document's prompt carried the person's answer.
    assert_eq!(requests_matching(&mock, "You are the coder"), 1);
    assert_eq!(requests_matching(&mock, "You are the writer"), 1);

    let stored = read_back(url);
    assert_eq!(stored.session["status"], "done");
    assert_eq!(stored.session["title"], IDEA);
    let todos: Vec<(&str, &str, &str, &str)> = stored
        .todos
        .iter()
        .map(|t| {
            (
                t["title"].as_str().unwrap(),
                t["assignee"].as_str().unwrap_or_default(),
                t["status"].as_str().unwrap(),
                t["result"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        todos,
        [
            (
                "Write the converter",
                "coder",
                "accepted",
                "fn csv_to_markdown(input: &str) -> String"
            ),
            (
                "Write the user guide",
                "writer",
                "accepted",
                "Usage: csv2md FILE > table.md"
            ),
        ]
    );
    assert!(stored.document.starts_with("Project document."));
    assert!(
        stored.document.contains(CLARIFICATION),
        "{}",
        stored.document
    );
    assert_eq!(stored.report, text, "the report sent is the report stored");
}

#[test]
fn five_phases_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("secretary.db").display()
    );
    five_phases_with_a_person(&url);
}

#[test]
fn five_phases_on_postgresql() {
    let server = DbServer::postgres();
    five_phases_with_a_person(&server.url());
}

#[test]
fn five_phases_on_mariadb() {
    let server = DbServer::mariadb();
    five_phases_with_a_person(&server.url());
}

#[test]
fn nobody_answers_so_the_defaults_are_taken_and_the_report_says_so() {
    let mock = MockLlm::start(script(0));
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("secretary.db").display()
    );
    let sink = dir.path().join("sink.jsonl");
    let mut vars = env(&mock, free_port(), &url, &sink, "nobody");
    vars.push(("MOFA_HUMAN_TIMEOUT_MS", "1500".into()));
    let run = dora::run("secretary.yml", &vars, Duration::from_secs(120));
    assert!(run.status.is_some_and(|s| s.success()), "{}", run.log);

    let lines = dora::sink_lines(&sink);
    assert_eq!(phases(&lines), [1, 2, 3, 4, 5], "{lines:#?}");
    let stored = read_back(&url);
    assert!(
        stored.report.contains(
            "Requirements: “Proceed as planned.” (no answer in time: the default was taken)"
        ),
        "{}",
        stored.report
    );
    assert!(
        stored
            .report
            .contains("Results rejected (no answer in time: the default was taken)"),
        "{}",
        stored.report
    );
    assert!(stored.document.contains("Proceed as planned."));
    assert!(
        stored.todos.iter().all(|t| t["status"] == "rejected"),
        "{:#?}",
        stored.todos
    );
}

/// Waits until `cond` holds, at most `limit`.
fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_secretary_killed_during_dispatch_restarts_and_each_task_goes_out_once() {
    // The coder takes 4 s: the secretary is killed while it works.
    let mock = MockLlm::start(script(4000));
    let port = free_port();
    let _person = Person::start(port);
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("secretary.db").display()
    );
    let sink = dir.path().join("sink.jsonl");
    let run_id = mofa_kernel::envelope::new_id();
    let running = dora::spawn_run(
        &dora::root().join("dataflows/secretary.yml"),
        &env(&mock, port, &url, &sink, &run_id),
        Duration::from_secs(120),
    );
    // Killed once every task is out (phase 3 announced) and while the coder works.
    wait_for(
        Duration::from_secs(90),
        "the dispatch, and the coder at work",
        || {
            phases(&dora::sink_lines_lenient(&sink)).contains(&3)
                && requests_matching(&mock, "You are the coder") == 1
        },
    );
    let pids = dora::node_pids("mofa-secretary", "MOFA_TEST_RUN", &run_id);
    assert_eq!(pids.len(), 1, "one secretary: {pids:?}");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pids[0].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let run = running.finish();
    assert!(run.status.is_some_and(|s| s.success()), "{}", run.log);
    assert!(run.log.contains("resuming session"), "{}", run.log);

    let lines = dora::sink_lines(&sink);
    assert!(lines.iter().any(|l| l["input"] == "result"), "{lines:#?}");
    // Phases announced once each, though the secretary ran twice.
    assert_eq!(phases(&lines), [1, 2, 3, 4, 5], "{lines:#?}");
    // Nothing repeated: one plan, one document, each executor asked once.
    assert_eq!(requests_matching(&mock, "You are the coder"), 1);
    assert_eq!(requests_matching(&mock, "You are the writer"), 1);
    assert_eq!(requests_asking(&mock, "Idea:"), 1, "one plan");
    assert_eq!(
        requests_asking(&mock, "Write the project document:"),
        1,
        "the document written once"
    );
    let stored = read_back(&url);
    assert_eq!(stored.session["status"], "done");
    assert_eq!(stored.todos.len(), 2);
    // The store's taps saw each task go out once: two tasks, two ids.
    let session = stored.session["session"].as_str().unwrap().to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let log = rt.block_on(async {
        let db = Db::open(&url).await.unwrap();
        op(&db, json!({"op": "message.list", "session": session})).await
    });
    let tasks: Vec<&Value> = log["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["kind"] == "task")
        .filter(|m| m["tap"] == "tap_coder" || m["tap"] == "tap_writer")
        .collect();
    assert_eq!(tasks.len(), 2, "{log:#}");
    assert_ne!(tasks[0]["id"], tasks[1]["id"]);
    assert!(
        stored.todos.iter().all(|t| t["status"] == "accepted"),
        "{:#?}",
        stored.todos
    );
    assert!(pids_gone(&run_id));
}

fn pids_gone(run_id: &str) -> bool {
    dora::node_pids("mofa-secretary", "MOFA_TEST_RUN", run_id).is_empty()
}

#[test]
fn a_database_lost_mid_run_is_retried_and_no_todo_is_lost() {
    let mut server = DbServer::postgres();
    let url = server.url();
    // The coder takes 3 s; the database goes while it works.
    let mock = MockLlm::start(script(3000));
    let port = free_port();
    let _person = Person::start(port);
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink.jsonl");
    let mut vars = env(&mock, port, &url, &sink, "db-lost");
    vars.push(("MOFA_STORE_RETRIES", "2".into()));
    vars.push(("MOFA_STORE_RETRY_MS", "200".into()));
    vars.push(("MOFA_STORE_WAIT_MS", "120000".into()));
    let running = dora::spawn_run(
        &dora::root().join("dataflows/secretary.yml"),
        &vars,
        Duration::from_secs(150),
    );
    wait_for(Duration::from_secs(90), "the coder's request", || {
        requests_matching(&mock, "You are the coder") == 1
    });
    server.stop();
    // Down until the store has answered one of the secretary's own requests with an error (or
    // 30 s: the log reaches us through dora, which may hold it back; what must hold is below).
    let down = Instant::now();
    while !running
        .log()
        .contains("store `todo.update` failed, asking again")
        && down.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    server.start();
    let run = running.finish();
    assert!(run.status.is_some_and(|s| s.success()), "{}", run.log);
    assert!(!run.log.contains(server.password()), "the password leaked");

    let lines = dora::sink_lines(&sink);
    assert_eq!(phases(&lines), [1, 2, 3, 4, 5], "{lines:#?}");
    let stored = read_back(&url);
    assert_eq!(stored.session["status"], "done");
    let results: Vec<&str> = stored
        .todos
        .iter()
        .map(|t| t["result"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        results,
        [
            "fn csv_to_markdown(input: &str) -> String",
            "Usage: csv2md FILE > table.md"
        ]
    );
}

#[test]
fn an_unreachable_database_stops_the_run_naming_the_url_without_its_password() {
    let mock = MockLlm::start(script(0));
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink.jsonl");
    let url = format!(
        "postgres://mofa:hunter2secret@127.0.0.1:{}/mofa",
        free_port()
    );
    let mut vars = env(&mock, free_port(), &url, &sink, "unreachable");
    vars.push(("MOFA_STORE_WAIT_MS", "3000".into()));
    let run = dora::run("secretary.yml", &vars, Duration::from_secs(60));
    assert!(!run.status.is_some_and(|s| s.success()), "{}", run.log);
    let named = url.replace("hunter2secret", "***");
    assert!(run.log.contains(&named), "{}", run.log);
    assert!(!run.log.contains("hunter2secret"), "{}", run.log);
    assert_eq!(
        requests_matching(&mock, "You are the"),
        0,
        "nothing dispatched"
    );
}
