//! Building a plugin from its source and recording its hash (`mofa-plugin build`).
//!
//! The manifest's `source` says what to build: a `.wat` file is assembled (the `wat` crate),
//! a `.c` file compiled with clang for wasm32 against wasi-libc (Debian's `clang`, `lld`,
//! `wasi-libc` and `libclang-rt-14-dev-wasm32`; `MOFA_CLANG` names another clang). The module
//! goes where the manifest's `module` says, and the manifest's `sha256` is set to its hash.

use std::path::{Path, PathBuf};
use std::process::Command;

use mofa_kernel::wasm::{Manifest, sha256_hex};

/// What a build made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub name: String,
    pub version: String,
    pub module: PathBuf,
    pub bytes: usize,
    pub sha256: String,
    /// The hash the manifest held before, if it differed.
    pub previous: Option<String>,
}

/// Flags for C plugins: a WASI reactor (no `main`; `_initialize`, which the host calls once
/// per instance, runs wasi-libc's set-up, such as finding a granted folder), no debug names,
/// only what is used.
pub const CLANG_FLAGS: [&str; 5] = [
    "--target=wasm32-wasi",
    "-O2",
    "-mexec-model=reactor",
    "-Wl,--strip-all",
    "-Wl,--gc-sections",
];

/// Builds the plugin in `dir`; `defines` are passed to a C build as `-D` (ignored for WAT).
pub fn build(dir: &Path, defines: &[String]) -> Result<Built, String> {
    let manifest = Manifest::read(dir)?;
    let source = manifest
        .source
        .as_ref()
        .ok_or_else(|| format!("{}: the manifest names no `source`", dir.display()))?;
    let (src, module) = (dir.join(source), dir.join(&manifest.module));
    let bytes = match src.extension().and_then(|e| e.to_str()) {
        Some("wat") => wat::parse_file(&src).map_err(|e| format!("{}: {e}", src.display()))?,
        Some("c") => {
            let clang = std::env::var("MOFA_CLANG").unwrap_or_else(|_| "clang".into());
            let out = module.with_extension("wasm.tmp");
            let mut cmd = Command::new(&clang);
            cmd.args(CLANG_FLAGS)
                .args(defines.iter().map(|d| format!("-D{d}")))
                .arg("-o")
                .arg(&out)
                .arg(&src);
            let run = cmd.output().map_err(|e| {
                format!("cannot run {clang} ({e}); Debian: apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32")
            })?;
            if !run.status.success() {
                return Err(format!(
                    "{clang} failed on {}:\n{}",
                    src.display(),
                    String::from_utf8_lossy(&run.stderr)
                ));
            }
            let bytes = std::fs::read(&out).map_err(|e| format!("{}: {e}", out.display()))?;
            let _ = std::fs::remove_file(&out);
            bytes
        }
        _ => return Err(format!("{}: a source is `.wat` or `.c`", src.display())),
    };
    std::fs::write(&module, &bytes).map_err(|e| format!("{}: {e}", module.display()))?;
    let sha256 = sha256_hex(&bytes);
    let previous = (manifest.sha256 != sha256).then(|| manifest.sha256.clone());
    if previous.is_some() {
        set_sha256(&dir.join("plugin.toml"), &manifest.sha256, &sha256)?;
    }
    Ok(Built {
        name: manifest.name,
        version: manifest.version,
        module,
        bytes: bytes.len(),
        sha256,
        previous,
    })
}

/// Rewrites the manifest's `sha256 = "..."` line, leaving the rest of the file as written.
fn set_sha256(path: &Path, old: &str, new: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let line = |h: &str| format!("sha256 = \"{h}\"");
    if !text.contains(&line(old)) {
        return Err(format!(
            "{}: write the hash as a line `sha256 = \"<hex>\"` so it can be updated",
            path.display()
        ));
    }
    std::fs::write(path, text.replacen(&line(old), &line(new), 1))
        .map_err(|e| format!("{}: {e}", path.display()))
}
