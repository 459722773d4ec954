//! Rhai script evaluation per message: a ten-line script, compiled once (the cache) versus
//! compiled for every message. Run: cargo bench -p mofa-benches --bench script

use criterion::{Criterion, criterion_group, criterion_main};
use mofa_kernel::script::{Limits, ScriptEngine};
use serde_json::json;

/// Ten lines of what a transform does: read the message, decide, build a map.
const SCRIPT: &str = r#"
let words = msg.content.split(" ");
let n = words.len();
let urgent = msg.priority >= 2 || msg.content.contains("now");
let tag = if n > 5 { "long" } else { "short" };
let first = if n > 0 { words[0].to_upper() } else { "" };
let score = n * 10 + if urgent { 100 } else { 0 };
let data = #{ words: n, tag: tag, urgent: urgent, score: score };
let content = `[${tag}] ${first}: ${msg.content}`;
#{ content: content, data: data }
"#;

fn bench(c: &mut Criterion) {
    let engine = ScriptEngine::new(Limits::default());
    let msg = json!({
        "id": "01a2", "session": "s", "kind": "task", "sender": "source", "role": "user",
        "content": "please summarise this short report now", "priority": 1, "round": 0,
        "ts_ms": 0, "data": null
    });
    let mut g = c.benchmark_group("script per message (10 lines)");
    g.bench_function("cached", |b| {
        b.iter(|| {
            let ast = engine.compile(SCRIPT).unwrap();
            engine.eval(&ast, &[("msg", &msg)]).unwrap()
        })
    });
    let mut n = 0u64;
    g.bench_function("uncached (compiled each time)", |b| {
        b.iter(|| {
            n += 1;
            // A new text each time: the cache cannot serve it.
            let ast = engine.compile(&format!("{SCRIPT}// {n}")).unwrap();
            engine.eval(&ast, &[("msg", &msg)]).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
