//! The guides in docs/guides/ are run as written: their marked blocks are saved and run in a
//! scratch project, and what they print is compared with the guide's expected output.
//!
//! Marks (the info string of a fenced block): `<lang> file=PATH` saves the block at PATH;
//! `sh run` runs it with bash (PATH with the project's virtualenv first); `text expect` must be
//! what the `sh run` block before it printed (its last lines). Unmarked blocks are prose.

use std::path::Path;

use mofa_tests::dora;

enum Step {
    File { path: String, text: String },
    Run(String),
    Expect(String),
}

fn steps(guide: &str) -> Vec<Step> {
    let mut out = Vec::new();
    let mut lines = guide.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
        let text = body.join("\n") + "\n";
        let words: Vec<&str> = info.split_whitespace().collect();
        match words.as_slice() {
            [_, file] if file.starts_with("file=") => out.push(Step::File {
                path: file["file=".len()..].to_owned(),
                text,
            }),
            ["sh", "run"] => out.push(Step::Run(text)),
            ["text", "expect"] => out.push(Step::Expect(text)),
            _ => {}
        }
    }
    out
}

/// The Python guide works inside a MoFA checkout: a scratch one with the repository's build
/// output and the Python helper module, and nothing the guide writes.
fn scratch_checkout() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dora::root();
    std::os::unix::fs::symlink(root.join("target"), dir.path().join("target")).unwrap();
    std::fs::create_dir_all(dir.path().join("operators/python/tests")).unwrap();
    std::fs::create_dir_all(dir.path().join("dataflows")).unwrap();
    std::fs::copy(
        root.join("operators/python/mofa_envelope.py"),
        dir.path().join("operators/python/mofa_envelope.py"),
    )
    .unwrap();
    dir
}

/// The Rust guide works in a folder holding the MoFA checkout, `mofa/`, and the new crate.
fn scratch_folder_beside_mofa() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(dora::root(), dir.path().join("mofa")).unwrap();
    dir
}

fn run_guide(guide: &str, project: tempfile::TempDir) {
    let text = std::fs::read_to_string(dora::root().join("docs/guides").join(guide)).unwrap();
    let steps = steps(&text);
    assert!(
        steps.iter().any(|s| matches!(s, Step::Expect(_))),
        "{guide} has no checked output"
    );
    // The Rust nodes the guide's dataflow runs (cargo build, as the guide's set-up does).
    dora::build("chain.yml");
    let mut printed = String::new();
    for step in steps {
        match step {
            Step::File { path, text } => {
                let p = project.path().join(&path);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, text).unwrap();
            }
            Step::Run(script) => {
                let out = dora::clean_command("bash")
                    .args(["-euo", "pipefail", "-c", &script])
                    .current_dir(project.path())
                    .env("PATH", dora::path_with_venv())
                    .env("DORA_ZENOH_MULTICAST", "off")
                    .output()
                    .unwrap();
                printed = String::from_utf8_lossy(&out.stdout).into_owned();
                assert!(
                    out.status.success(),
                    "{guide}: `{script}` failed:\n{printed}{}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    logs(project.path())
                );
            }
            Step::Expect(want) => {
                assert!(
                    printed.trim_end().ends_with(want.trim_end()),
                    "{guide}: expected\n{want}\ngot\n{printed}\n{}",
                    logs(project.path())
                );
            }
        }
    }
}

/// The scratch project's log files, for a failure message.
fn logs(dir: &Path) -> String {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect()
}

#[test]
fn the_python_operator_guide_runs_as_written() {
    run_guide("python-operator.md", scratch_checkout());
}

#[test]
fn the_rust_operator_guide_runs_as_written() {
    let project = scratch_folder_beside_mofa();
    let built = dora::root().join("target/debug/libshout_op.so");
    run_guide("rust-operator.md", project);
    // The guide's build lands in MoFA's build folder: leave it as it was.
    let _ = std::fs::remove_file(built);
}
