//! Per-call overhead of a WASM plugin: plugins/echo (WAT, returns its arguments) against the
//! same tool in native Rust, with a warm instance. Run: cargo bench -p mofa-benches --bench wasm
//!
//! Three ways in: the native tool through the kernel's `Tool` trait; the plugin through the same
//! trait (what mofa-tools does: JSON out, the ABI round trip on a blocking thread, JSON back);
//! and the plugin's ABI round trip alone on the caller's thread (`call_blocking`, bytes in and
//! out), which is what the host adds before any JSON or thread hop.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use criterion::{Criterion, criterion_group, criterion_main};
use mofa_kernel::tool::{Tool, ToolError, ToolSpec};
use mofa_kernel::wasm::{Limits, WasmPlugin, WasmTool};
use serde_json::{Value, json};

/// echo in Rust: what plugins/echo does.
struct NativeEcho;

#[async_trait]
impl Tool for NativeEcho {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "echo".into(),
            description: "Returns the arguments it is given, unchanged.".into(),
            parameters: json!({"type": "object"}),
        }
    }
    async fn call(&self, args: Value) -> Result<Value, ToolError> {
        Ok(args)
    }
}

fn bench(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/echo");
    let plugin = Arc::new(WasmPlugin::load(&dir, Limits::default()).expect("plugins/echo"));
    let wasm = WasmTool::new(plugin.clone()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let args = json!({"text": "the quick brown fox jumps over the lazy dog"});
    let bytes = serde_json::to_vec(&args).unwrap();

    let mut g = c.benchmark_group("echo tool per call (warm)");
    g.bench_function("native Rust, Tool::call", |b| {
        b.iter(|| rt.block_on(NativeEcho.call(args.clone())).unwrap())
    });
    g.bench_function("WASM plugin, Tool::call", |b| {
        b.iter(|| rt.block_on(wasm.call(args.clone())).unwrap())
    });
    g.bench_function("WASM plugin, ABI round trip only", |b| {
        b.iter(|| plugin.call_blocking(&bytes).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
