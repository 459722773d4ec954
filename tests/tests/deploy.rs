//! Edge deployment (docs/guides/edge-deployment.md): every node binary is configured by its
//! environment alone. Started by hand with nothing but PATH and HOME, a node either stops at
//! once on the required variable it lacks (exit code 2, the variable named), or gets through
//! its configuration and stops only because no dora daemon started it.

use std::process::Command;

use mofa_tests::dora;

/// Node binaries and the variable each requires (None: it starts with an empty environment).
const NODES: [(&str, Option<&str>); 14] = [
    ("mofa-source", Some("MOFA_TASK")),
    ("mofa-script", Some("MOFA_SCRIPT")),
    ("mofa-secretary", Some("MOFA_EXECUTORS")),
    ("mofa-router", Some("MOFA_ROUTES")),
    ("mofa-aggregate", Some("MOFA_MEMBERS")),
    ("mofa-debate", Some("MOFA_DEBATERS")),
    ("mofa-consensus", Some("MOFA_MEMBERS")),
    ("mofa-wasm", Some("MOFA_PLUGINS_DIR")),
    ("mofa-agent", None),
    ("mofa-tools", None),
    ("mofa-sink", None),
    ("mofa-store", None),
    ("mofa-human", None),
    // With an endpoint it needs no model file.
    ("mofa-llm", None),
];

#[test]
fn every_node_binary_is_configured_by_env_alone() {
    dora::build("chain.yml");
    for (binary, required) in NODES {
        let scratch = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(dora::root().join("target/debug").join(binary));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", scratch.path())
            .current_dir(scratch.path());
        if binary == "mofa-llm" {
            cmd.env("OPENAI_BASE_URL", "http://127.0.0.1:9/v1");
        }
        let out = cmd.output().expect("run the node binary");
        let stderr = String::from_utf8_lossy(&out.stderr);
        match required {
            Some(var) => {
                assert_eq!(out.status.code(), Some(2), "{binary}: {stderr}");
                assert!(
                    stderr.contains(&format!("configuration error: {var} is not set")),
                    "{binary} does not name {var}: {stderr}"
                );
            }
            None => {
                assert_eq!(out.status.code(), Some(1), "{binary}: {stderr}");
                assert!(
                    stderr.contains("could not connect to dora")
                        && !stderr.contains("configuration error"),
                    "{binary}: {stderr}"
                );
            }
        }
    }
}
