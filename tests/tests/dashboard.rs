//! End to end: dataflows/dashboard.yml under `dora run` with the mock LLM, its page opened in
//! headless Chromium (Debian's chromium and chromium-driver, installed by bin/setup) and driven
//! over WebDriver: the graph is drawn, and answers the model gives after the page loaded show up
//! on it without a reload.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use mofa_tests::dora;
use mofa_tests::mock_llm::{MockLlm, Script};
use serde_json::{Value, json};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

fn free_port() -> u16 {
    let l = TcpListener::bind(("127.0.0.1", 0)).expect("a free port");
    l.local_addr().unwrap().port()
}

/// Whether something answers HTTP `GET path` on 127.0.0.1:`port` with 200.
fn http_ok(port: u16, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}

/// The pids of every process below `pid` (children, their children, ...).
fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // `pid (comm) state ppid ...`; comm may hold spaces, so read after the last ')'.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((p, ppid))
        })
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// chromedriver, and the Chromium it starts: every one of their processes is killed by pid
/// when dropped, even if the test fails.
struct Driver {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Driver {
    fn start(dir: &Path) -> Driver {
        let port = free_port();
        let log = dir.join("chromedriver.log");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{CHROMEDRIVER}: {e} (bin/setup installs chromium-driver)"));
        let driver = Driver { child, port, log };
        let start = Instant::now();
        while !http_ok(port, "/status") {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "chromedriver did not answer on port {port}: {}",
                driver.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        driver
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Collected before any is killed: an orphan's parent is no longer chromedriver.
        let mut pids = descendants(self.child.id());
        pids.reverse();
        for pid in pids {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `script` in the page until `ok` holds for what it returns, at most `limit`.
async fn wait_for(
    page: &Client,
    what: &str,
    script: &str,
    limit: Duration,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let got = page.execute(script, vec![]).await.expect("run a script");
        if ok(&got) {
            return got;
        }
        if start.elapsed() > limit {
            let text = page
                .execute("return document.body.innerText", vec![])
                .await
                .unwrap_or_default();
            panic!("{what}: still {got} after {limit:?}; the page:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The number in "mock reply N to: ..." (the mock's request number), if `text` holds one.
fn reply_number(text: &str) -> Option<usize> {
    let rest = &text[text.find("mock reply ")? + "mock reply ".len()..];
    rest.split(' ').next()?.parse().ok()
}

#[test]
fn the_page_draws_the_dataflow_and_shows_answers_live() {
    for bin in [CHROMEDRIVER, CHROMIUM] {
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: bin/setup installs chromium and chromium-driver"
        );
    }
    // The mock answers every request at once with "mock reply N to: <task>".
    let mock = MockLlm::start(Script::default());
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks.jsonl");
    let lines: String = (0..600)
        .map(|i| format!("{}\n", json!({"task": format!("What is {i} + {i}?")})))
        .collect();
    std::fs::write(&tasks, lines).unwrap();
    let port = free_port();
    let yml = dora::copy_of(
        "dashboard.yml",
        dir.path(),
        "debug",
        &[
            (
                "MOFA_TASKS_FILE: dashboard-tasks.jsonl",
                format!("MOFA_TASKS_FILE: {}", tasks.display()),
            ),
            (
                "MOFA_TASK_INTERVAL_MS: \"5000\"",
                "MOFA_TASK_INTERVAL_MS: \"200\"".into(),
            ),
        ],
    );
    let sink = dir.path().join("sink.jsonl");
    let running = dora::spawn_run(
        &yml,
        &[
            ("OPENAI_BASE_URL", mock.base_url()),
            ("MOFA_OUT", sink.display().to_string()),
            ("MOFA_DASHBOARD_ADDR", format!("127.0.0.1:{port}")),
            // $3 / $15 per million tokens: the bridge prices each answer for the page.
            ("MOFA_LLM_PRICE", "3,15".into()),
        ],
        Duration::from_secs(300),
    );
    let start = Instant::now();
    while !http_ok(port, "/api/graph") {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the dashboard never served on port {port}:\n{}",
            running.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let profile = tempfile::tempdir().unwrap();
    let driver = Driver::start(dir.path());
    let shot = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1500,950",
                         format!("--user-data-dir={}", profile.path().display())],
            }),
        );
        let page = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&driver.url())
            .await
            .unwrap_or_else(|e| panic!("a Chromium session: {e}\n{}", driver.log()));
        page.goto(&format!("http://127.0.0.1:{port}/"))
            .await
            .expect("open the page");
        let long = Duration::from_secs(60);

        // The graph: an SVG element per node and per edge of the dataflow.
        let nodes = wait_for(
            &page,
            "the nodes drawn",
            "return [...document.querySelectorAll('#graph [data-node]')]\
             .map(n => n.dataset.node).sort()",
            long,
            |v| v.as_array().is_some_and(|a| !a.is_empty()),
        )
        .await;
        assert_eq!(nodes, json!(["agent", "llm", "sink", "source", "tools"]));
        let edges = page
            .execute(
                "return [...document.querySelectorAll('#graph [data-edge]')]\
                 .map(e => e.dataset.edge).sort()",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(
            edges,
            json!([
                "agent/error->sink/error",
                "agent/llm->llm/agent",
                "agent/result->sink/result",
                "agent/tools->tools/agent",
                "llm/agent->agent/llm",
                "source/task->agent/task",
                "tools/agent->agent/tools",
                "tools/catalog->agent/catalog",
            ])
        );

        // Live: an answer the model gave only after the page was loaded reaches it.
        let asked_before = mock.requests().len();
        let latest = "return document.querySelector('[data-tap=\"agent/result\"] .latest')\
                      .textContent";
        let shown = wait_for(&page, "a newer answer on agent/result", latest, long, |v| {
            v.as_str()
                .and_then(reply_number)
                .is_some_and(|n| n > asked_before)
        })
        .await;
        assert!(
            shown.as_str().unwrap().contains("agent: mock reply"),
            "{shown}"
        );
        let figures = page
            .execute(
                "return document.querySelector('[data-figures=\"agent/result\"]').textContent",
                vec![],
            )
            .await
            .unwrap();
        let count: u64 = figures
            .as_str()
            .and_then(|f| f.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("edge label {figures}"));
        assert!(count > 0, "{figures}");
        // The agent's tokens (the mock counts words) arrive with the per-second figures.
        wait_for(
            &page,
            "the agent's tokens",
            "const r = document.querySelector('#agents [data-agent=\"agent\"] .tokens-in');\
             return r ? Number(r.textContent) : 0",
            long,
            |v| v.as_u64().is_some_and(|n| n > 0),
        )
        .await;
        // And their cost, as mofa-llm priced each answer (`cost_usd` in its payload).
        wait_for(
            &page,
            "the agent's cost",
            "const r = document.querySelector('#agents [data-agent=\"agent\"] .cost');\
             return r ? Number(r.textContent) : 0",
            long,
            |v| v.as_f64().is_some_and(|c| c > 0.0),
        )
        .await;

        let shot = page.screenshot().await.expect("a screenshot");
        page.close().await.expect("close the browser");
        shot
    });
    assert!(shot.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(dir.path().join("dashboard.png"), &shot).unwrap();
    if let Some(path) = std::env::var_os("MOFA_SCREENSHOT") {
        std::fs::write(&path, &shot).expect("write MOFA_SCREENSHOT");
    }
    drop(driver);
    drop(running);
}
