//! End to end: dataflows/script.yml under `dora run`: a Rhai transform edited while the graph
//! runs takes effect within a second; a broken edit is reported and the old version goes on.

use std::time::{Duration, Instant};

use mofa_tests::dora;

#[test]
fn an_edited_script_takes_effect_in_the_running_dataflow_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("tag.rhai");
    std::fs::copy(dora::root().join("scripts/transforms/tag.rhai"), &script).unwrap();
    // The dataflow as shipped, but with the script copied here (this test edits it), the node
    // binaries named absolutely, and no build line (the test command has built them).
    let yml_path = dora::copy_of(
        "script.yml",
        dir.path(),
        "debug",
        &[(
            "MOFA_SCRIPT: ../scripts/transforms/tag.rhai",
            format!("MOFA_SCRIPT: {}", script.display()),
        )],
    );
    let tasks = dir.path().join("tasks.jsonl");
    let lines: String = (0..16)
        .map(|i| format!("{{\"task\": \"task number {i}\"}}\n"))
        .collect();
    std::fs::write(&tasks, lines).unwrap();
    let sink = dir.path().join("sink.jsonl");

    // Edits the script once three results are in, then breaks it a little later.
    let editor = {
        let (sink, script) = (sink.clone(), script.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            while dora::sink_lines_lenient(&sink).len() < 3 {
                assert!(start.elapsed() < Duration::from_secs(60), "no results came");
                std::thread::sleep(Duration::from_millis(20));
            }
            std::fs::write(&script, r#""v2: " + msg.content"#).unwrap();
            let edited_ms = mofa_kernel::envelope::now_ms();
            std::thread::sleep(Duration::from_millis(1200));
            std::fs::write(&script, "let = ;").unwrap();
            edited_ms
        })
    };
    let run = dora::run_file(
        &yml_path,
        &[
            ("MOFA_TASKS_FILE", tasks.display().to_string()),
            ("MOFA_TASK_INTERVAL_MS", "200".into()),
            ("MOFA_OUT", sink.display().to_string()),
        ],
        Duration::from_secs(120),
    );
    let edited_ms = editor.join().unwrap();
    assert!(
        run.status.is_some_and(|s| s.success()),
        "dora run failed:\n{}",
        run.log
    );
    let lines = dora::sink_lines(&sink);
    let results: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["input"] == "result").collect();
    assert_eq!(results.len(), 16, "{lines:#?}");
    let first_v2 = results
        .iter()
        .position(|l| l["content"].as_str().unwrap().starts_with("v2: "))
        .expect("the edit took effect");
    assert!(first_v2 >= 3, "{results:#?}");
    // Before the edit: version 1 and its output; from the edit on: version 2 only, even after
    // the broken edit.
    for (i, r) in results.iter().enumerate() {
        let version = r["meta"]["mofa.script_version"].as_str().unwrap();
        if i < first_v2 {
            assert!(version.starts_with("1-"), "{r:#}");
            assert!(
                r["content"]
                    .as_str()
                    .unwrap()
                    .contains("words] TASK NUMBER"),
                "{r:#}"
            );
        } else {
            assert!(version.starts_with("2-"), "{r:#}");
            assert!(
                r["content"]
                    .as_str()
                    .unwrap()
                    .starts_with("v2: task number"),
                "{r:#}"
            );
        }
    }
    let took = results[first_v2]["ts_ms"].as_i64().unwrap() - edited_ms;
    assert!(took < 1000, "the edit took {took} ms to take effect");
    let errors: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["input"] == "script_error")
        .collect();
    assert_eq!(errors.len(), 1, "{lines:#?}");
    assert!(
        errors[0]["content"]
            .as_str()
            .unwrap()
            .contains("does not compile")
    );
}
