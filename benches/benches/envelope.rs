//! Envelope encode + decode (Arrow StructArray both ways), one row and a 100-row batch.
//! Run: cargo bench -p mofa-benches --bench envelope

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mofa_kernel::envelope::{from_arrow, to_arrow};
use mofa_kernel::{Envelope, Kind, Role};
use std::hint::black_box;

fn message(i: usize) -> Envelope {
    let task = Envelope::task(
        "source",
        format!("task {i}: summarise the quarterly report"),
    );
    task.reply(
        Kind::Result,
        "writer",
        Role::Assistant,
        "A typical answer of a sentence or two, about a hundred bytes long, as agents send.",
    )
    .with_payload(&serde_json::json!({"usage": {"prompt_tokens": 42, "completion_tokens": 17}}))
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope encode+decode");
    for rows in [1usize, 100] {
        let batch: Vec<Envelope> = (0..rows).map(message).collect();
        g.throughput(Throughput::Elements(rows as u64));
        g.bench_function(format!("{rows} row(s)"), |b| {
            b.iter(|| {
                let array = to_arrow(black_box(&batch));
                from_arrow(array.as_ref(), "bench").unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
