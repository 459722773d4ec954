//! MCP end to end: react.yml with mofa-tools connected to the real reference MCP servers from
//! the npm registry (installed by bin/setup into tests/mcp), over stdio.

use std::time::Duration;

use mofa_tests::dora;
use mofa_tests::mock_llm::{MockLlm, Rule, Script};
use serde_json::json;

fn server(package: &str) -> String {
    dora::root()
        .join("tests/mcp/node_modules/@modelcontextprotocol")
        .join(package)
        .join("dist/index.js")
        .display()
        .to_string()
}

#[test]
fn mcp_tools_join_the_catalog_and_calls_return_the_servers_real_results() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let note = shared.join("note.txt");
    std::fs::write(&note, "written by the test").unwrap();
    let servers = json!([
        {"name": "everything", "command": "node", "args": [server("server-everything"), "stdio"]},
        {"name": "fs", "command": "node", "args": [server("server-filesystem"), shared.display().to_string()]},
    ]);
    let mock = MockLlm::start(Script {
        rules: vec![
            Rule {
                matches: "Check the MCP tools".into(),
                times: Some(1),
                tool_calls: vec![
                    json!({"name": "everything_echo", "arguments": {"message": "hello from mofa"}}),
                ],
                ..Default::default()
            },
            Rule {
                matches: "Echo: hello from mofa".into(),
                times: Some(1),
                tool_calls: vec![
                    json!({"name": "fs_read_text_file", "arguments": {"path": note.display().to_string()}}),
                ],
                ..Default::default()
            },
            Rule {
                matches: "written by the test".into(),
                content: Some("Done: {tool}".into()),
                ..Default::default()
            },
        ],
    });
    let (lines, _) = dora::run_to_sink(
        "react.yml",
        &[
            ("OPENAI_BASE_URL", mock.base_url()),
            ("MOFA_TASK", "Check the MCP tools.".into()),
            ("MOFA_TOOLS", "calculator".into()),
            ("MOFA_MCP_SERVERS", servers.to_string()),
        ],
        Duration::from_secs(120),
    );

    let reqs = mock.requests();
    let offered: Vec<String> = reqs[0].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap().to_owned())
        .collect();
    for name in [
        "calculator",
        "everything_echo",
        "everything_get-sum",
        "fs_read_text_file",
        "fs_list_directory",
    ] {
        assert!(
            offered.iter().any(|o| o == name),
            "{name} not in {offered:?}"
        );
    }
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["kind"], "result", "{lines:#?}");
    assert!(
        lines[0]["content"]
            .as_str()
            .unwrap()
            .contains("written by the test")
    );
    let payload: serde_json::Value =
        serde_json::from_str(lines[0]["payload"].as_str().unwrap()).unwrap();
    let steps = payload["steps"].as_array().unwrap();
    assert!(
        steps[0]["observation"]
            .as_str()
            .unwrap()
            .contains("Echo: hello from mofa"),
        "{steps:#?}"
    );
    assert_eq!(steps[1]["tool"], "fs_read_text_file");
}

#[test]
fn an_mcp_server_that_dies_mid_call_is_an_error_observation_and_the_agent_goes_on() {
    let marker = format!("mofa-test-{}", std::process::id());
    let servers = json!([{"name": "everything", "command": "node", "args": [server("server-everything"), "stdio", marker]}]);
    let mock = MockLlm::start(Script {
        rules: vec![
            Rule {
                matches: "Run the long operation".into(),
                times: Some(1),
                tool_calls: vec![
                    json!({"name": "everything_trigger-long-running-operation", "arguments": {"duration": 20, "steps": 4}}),
                ],
                ..Default::default()
            },
            Rule {
                matches: "error: ".into(),
                content: Some("The server failed: {tool}".into()),
                ..Default::default()
            },
        ],
    });
    // Kill the server while the call is in flight: the model's answer (its first request) comes
    // once the server has connected and its tools are in the catalog, and the call it asks for
    // goes out right after and lasts 20 s. (Timed from the server's start instead, a slow start
    // on a busy machine could kill it before its tools were listed.)
    let mock = std::sync::Arc::new(mock);
    let killer = {
        let (marker, mock) = (marker.clone(), mock.clone());
        std::thread::spawn(move || {
            for _ in 0..900 {
                if !mock.requests().is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            std::thread::sleep(Duration::from_secs(2));
            let _ = std::process::Command::new("pkill")
                .args(["-f", &marker])
                .status();
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink.jsonl");
    let run = dora::run(
        "react.yml",
        &[
            ("OPENAI_BASE_URL", mock.base_url()),
            ("MOFA_TASK", "Run the long operation.".into()),
            ("MOFA_TOOLS", "calculator".into()),
            ("MOFA_MCP_SERVERS", servers.to_string()),
            ("MOFA_OUT", sink.display().to_string()),
        ],
        Duration::from_secs(120),
    );
    killer.join().unwrap();
    assert!(
        run.status.is_some_and(|s| s.success()),
        "dora run failed:\n{}",
        run.log
    );
    let lines = dora::sink_lines(&sink);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["kind"], "result", "the agent went on: {lines:#?}");
    let payload: serde_json::Value =
        serde_json::from_str(lines[0]["payload"].as_str().unwrap()).unwrap();
    let step = &payload["steps"][0];
    assert_eq!(step["ok"], false, "{payload}");
    assert!(
        step["observation"].as_str().unwrap().contains("MCP server"),
        "{payload}"
    );
}

/// The scenarios of the MCP conformance suite (client mode) our client passes; the others (the
/// OAuth flows) are counted in BENCHMARKS.md.
const CONFORMANCE_PASSING: [&str; 4] = [
    "initialize",
    "tools_call",
    "elicitation-sep1034-client-defaults",
    "sse-retry",
];

#[test]
fn the_mcp_client_passes_the_conformance_scenarios() {
    let suite =
        dora::root().join("tests/mcp/node_modules/@modelcontextprotocol/conformance/dist/index.js");
    for scenario in CONFORMANCE_PASSING {
        let out = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new("node");
        cmd.arg(&suite)
            .args(["client", "--scenario", scenario, "--command"])
            .arg(env!("CARGO_BIN_EXE_mcp-conformance-client"))
            .arg("-o")
            .arg(out.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut run = dora::Guard {
            child: cmd.spawn().expect("node runs the conformance suite"),
        };
        let status = run.wait(Duration::from_secs(90));
        let mut report = String::new();
        if let Some(mut stdout) = run.child.stdout.take() {
            std::io::Read::read_to_string(&mut stdout, &mut report).unwrap();
        }
        // One folder per run, holding the checks the suite made.
        let checks_file = std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().path().join("checks.json"))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{scenario}: no checks.json\n{report}"));
        let checks: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(checks_file).unwrap()).unwrap();
        let verdicts: Vec<(&str, &str)> = checks
            .iter()
            .filter(|c| c["status"] != "INFO")
            .map(|c| (c["id"].as_str().unwrap(), c["status"].as_str().unwrap()))
            .collect();
        assert!(!verdicts.is_empty(), "{scenario}: no checks made\n{report}");
        assert!(
            verdicts
                .iter()
                .all(|(_, s)| *s == "SUCCESS" || *s == "WARNING"),
            "{scenario}: {verdicts:?}\n{report}"
        );
        assert!(status.is_some_and(|s| s.success()), "{scenario}\n{report}");
    }
}
