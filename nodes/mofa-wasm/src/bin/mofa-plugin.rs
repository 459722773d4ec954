//! mofa-plugin: builds, checks and tries WASM plugins (docs/plugin-abi.md).
//!
//!   mofa-plugin build DIR [-D NAME=VALUE]...   build the module from `source`, record its sha256
//!   mofa-plugin check DIR                      load it as the host does (every check) and say so
//!
//! The host's limits and grants come from the same variables as the nodes' (MOFA_WASM_*).
//!   mofa-plugin call DIR INPUT                 one call: INPUT is a tool's JSON arguments, or
//!                                              for a transform the envelope's content

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use mofa_kernel::Envelope;
use mofa_kernel::plugin::PluginKind;
use mofa_kernel::tool::Tool;
use mofa_kernel::wasm::{Grants, Limits, WasmPlugin, WasmTool};

const USAGE: &str = "usage: mofa-plugin build DIR [-D NAME=VALUE]... | check DIR | call DIR INPUT";

fn main() -> ExitCode {
    mofa_kernel::node::init_logging();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["build", dir, rest @ ..] => build(Path::new(dir), rest),
        ["check", dir] => load(Path::new(dir)).map(|p| {
            let m = p.manifest();
            println!(
                "{} {} ({}, ABI {}): sha256 {} verified; fuel {}, memory {} MB, {} ms per call",
                m.name,
                m.version,
                m.kind,
                m.abi,
                m.sha256,
                p.limits().fuel,
                p.limits().memory >> 20,
                p.limits().timeout.as_millis()
            );
        }),
        ["call", dir, input] => call(Path::new(dir), input),
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mofa-plugin: {e}");
            ExitCode::FAILURE
        }
    }
}

fn build(dir: &Path, rest: &[&str]) -> Result<(), String> {
    let mut defines = Vec::new();
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        match (*flag, it.next()) {
            ("-D", Some(d)) => defines.push((*d).to_owned()),
            _ => return Err(USAGE.to_owned()),
        }
    }
    let b = mofa_wasm::build::build(dir, &defines)?;
    println!(
        "{} {}: {} ({} bytes), sha256 {}{}",
        b.name,
        b.version,
        b.module.display(),
        b.bytes,
        b.sha256,
        match &b.previous {
            Some(old) => format!(" (was {old}: plugin.toml updated)"),
            None => " (as recorded)".into(),
        }
    );
    Ok(())
}

fn load(dir: &Path) -> Result<Arc<WasmPlugin>, String> {
    let limits = Limits::from_env().map_err(|e| e.to_string())?;
    let grants = Grants::from_env().map_err(|e| e.to_string())?;
    WasmPlugin::load_granted(dir, limits, &grants)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

fn call(dir: &Path, input: &str) -> Result<(), String> {
    let plugin = load(dir)?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        if plugin.manifest().kind == PluginKind::Tool {
            let args = serde_json::from_str(input)
                .map_err(|e| format!("the arguments are not JSON: {e}"))?;
            let out = WasmTool::new(plugin)?
                .call(args)
                .await
                .map_err(|e| e.to_string())?;
            println!("{out}");
        } else {
            let out = plugin
                .transform(&Envelope::task("mofa-plugin", input))
                .await
                .map_err(|e| e.to_string())?;
            println!("{}", out.content);
        }
        Ok(())
    })
}
