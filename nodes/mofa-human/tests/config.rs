//! Configuration from the environment: a bad value stops the node at start, naming the variable.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use mofa_human::{HumanConfig, Mode};

const VARS: [&str; 4] = [
    "MOFA_HUMAN_MODE",
    "MOFA_HUMAN_PORT",
    "MOFA_HUMAN_TIMEOUT_MS",
    "MOFA_HUMAN_DEFAULT",
];

/// The node binary with exactly `vars` of its variables set, outside dora.
fn node(vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mofa-human"));
    for v in VARS {
        cmd.env_remove(v);
    }
    cmd.envs(vars.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run mofa-human")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

// One test: it sets process-wide variables.
#[test]
fn configuration_from_env_and_errors_naming_the_variable() {
    for v in VARS {
        unsafe { std::env::remove_var(v) };
    }
    let cfg = HumanConfig::from_env().unwrap();
    assert_eq!(cfg.mode, Mode::Auto);
    assert_eq!(cfg.port, 8790);
    assert_eq!(cfg.defaults.timeout, Duration::from_millis(300_000));
    assert_eq!(cfg.defaults.default, None);

    unsafe {
        std::env::set_var("MOFA_HUMAN_MODE", "HTTP");
        std::env::set_var("MOFA_HUMAN_PORT", "0");
        std::env::set_var("MOFA_HUMAN_TIMEOUT_MS", "1500");
        std::env::set_var("MOFA_HUMAN_DEFAULT", " reject ");
    }
    let cfg = HumanConfig::from_env().unwrap();
    assert_eq!(cfg.mode, Mode::Http);
    assert_eq!(cfg.port, 0);
    assert_eq!(cfg.defaults.timeout, Duration::from_millis(1500));
    assert_eq!(cfg.defaults.default.as_deref(), Some("reject"));

    for (var, value) in [
        ("MOFA_HUMAN_MODE", "sideways"),
        ("MOFA_HUMAN_PORT", "99999"),
        ("MOFA_HUMAN_PORT", "eighty"),
        ("MOFA_HUMAN_TIMEOUT_MS", "0"),
        ("MOFA_HUMAN_TIMEOUT_MS", "-5"),
    ] {
        unsafe { std::env::set_var(var, value) };
        let err = HumanConfig::from_env().unwrap_err().to_string();
        assert!(err.starts_with(&format!("{var}=")), "{var}={value}: {err}");
        unsafe { std::env::remove_var(var) };
    }
}

#[test]
fn the_binary_stops_at_start_naming_the_bad_variable() {
    for (vars, named) in [
        (&[("MOFA_HUMAN_MODE", "sideways")][..], "MOFA_HUMAN_MODE"),
        (
            &[("MOFA_HUMAN_MODE", "http"), ("MOFA_HUMAN_PORT", "99999")][..],
            "MOFA_HUMAN_PORT",
        ),
    ] {
        let out = node(vars);
        assert_eq!(out.status.code(), Some(2), "{vars:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("configuration error: {named}=")),
            "{}",
            stderr(&out)
        );
    }
    // A port in use is a configuration error too.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = node(&[("MOFA_HUMAN_MODE", "http"), ("MOFA_HUMAN_PORT", &port)]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("MOFA_HUMAN_PORT"), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot listen"), "{}", stderr(&out));
    // Good configuration: it says where it listens, then fails only for want of dora.
    let out = node(&[("MOFA_HUMAN_MODE", "http"), ("MOFA_HUMAN_PORT", "0")]);
    let err = stderr(&out);
    assert!(
        err.contains("mofa-human: listening on http://127.0.0.1:"),
        "{err}"
    );
    assert_ne!(out.status.code(), Some(2), "{err}");
}
