//! End to end: dataflows/script-operator.yml under `dora run`: mofa-script's Rhai transform as
//! a dora operator (operators/rust/mofa-script-op) loaded by dora's runtime.

use std::time::Duration;

use mofa_tests::dora;

fn tasks_file(dir: &std::path::Path, tasks: &[&str]) -> String {
    let path = dir.join("tasks.jsonl");
    let lines: String = tasks
        .iter()
        .map(|t| format!("{}\n", serde_json::json!({ "task": t })))
        .collect();
    std::fs::write(&path, lines).unwrap();
    path.display().to_string()
}

#[test]
fn the_operator_transforms_every_task_as_the_node_does() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = ["hello operator world", "one", "shout this please now"];
    let (lines, run) = dora::run_to_sink(
        "script-operator.yml",
        &[
            ("PATH", dora::path_with_venv()),
            ("MOFA_TASKS_FILE", tasks_file(dir.path(), &tasks)),
            ("MOFA_TASK_INTERVAL_MS", "50".into()),
        ],
        Duration::from_secs(120),
    );
    let results: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["input"] == "result").collect();
    assert_eq!(results.len(), 3, "{lines:#?}\n{}", run.log);
    let expected = [
        "[3 words] HELLO OPERATOR WORLD",
        "[1 words] ONE",
        "[4 words] SHOUT THIS PLEASE NOW",
    ];
    for (r, (want, words)) in results.iter().zip(expected.iter().zip([3, 1, 4])) {
        assert_eq!(r["content"], *want, "{r:#}");
        assert_eq!(r["kind"], "result", "{r:#}");
        assert_eq!(r["sender"], "mofa-script-op", "{r:#}");
        assert!(r["reply_to"].is_string(), "{r:#}");
        let payload: serde_json::Value =
            serde_json::from_str(r["payload"].as_str().unwrap()).unwrap();
        assert_eq!(payload, serde_json::json!({ "words": words }));
        // dora 1.1's operator API sends no metadata parameters: no script version here.
        assert!(r["meta"].get("mofa.script_version").is_none(), "{r:#}");
    }
    assert!(
        !lines.iter().any(|l| l["input"] == "script_error"),
        "{lines:#?}"
    );
    // The runtime loaded the operator, which logged the script version it runs.
    assert!(
        run.log.contains("mofa-script-op: script version 1-"),
        "{}",
        run.log
    );
}

#[test]
fn a_script_error_is_an_error_envelope_and_the_operator_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("picky.rhai");
    std::fs::write(
        &script,
        r#"if msg.content == "boom" { throw "no booms" } else { "ok: " + msg.content }"#,
    )
    .unwrap();
    // The shipped dataflow's build line puts the operator's library where the graph loads it
    // (`cargo test` leaves it in deps/); then the dataflow as shipped, with this script.
    dora::build("script-operator.yml");
    let yml_path = dora::copy_of(
        "script-operator.yml",
        dir.path(),
        "debug",
        &[(
            "MOFA_SCRIPT: ../scripts/transforms/tag.rhai",
            format!("MOFA_SCRIPT: {}", script.display()),
        )],
    );
    let sink = dir.path().join("sink.jsonl");
    let run = dora::run_file(
        &yml_path,
        &[
            ("PATH", dora::path_with_venv()),
            (
                "MOFA_TASKS_FILE",
                tasks_file(dir.path(), &["first", "boom", "last"]),
            ),
            ("MOFA_TASK_INTERVAL_MS", "50".into()),
            ("MOFA_OUT", sink.display().to_string()),
        ],
        Duration::from_secs(120),
    );
    assert!(
        run.status.is_some_and(|s| s.success()),
        "dora run failed:\n{}",
        run.log
    );
    let lines = dora::sink_lines(&sink);
    let on = |input: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l["input"] == input)
            .map(|l| l["content"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(on("result"), ["ok: first", "ok: last"], "{lines:#?}");
    let errors = on("script_error");
    assert_eq!(errors.len(), 1, "{lines:#?}");
    assert!(errors[0].contains("no booms"), "{}", errors[0]);
    let err = lines.iter().find(|l| l["input"] == "script_error").unwrap();
    assert_eq!(err["kind"], "error");
    let details: serde_json::Value =
        serde_json::from_str(err["payload"].as_str().unwrap()).unwrap();
    assert!(
        details["script_version"]
            .as_str()
            .unwrap()
            .starts_with("1-"),
        "{details:#}"
    );
}
