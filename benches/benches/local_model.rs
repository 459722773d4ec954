//! The embedded default model (SmolLM2-135M Q4_1 via llama.cpp) on this CPU: prompt and
//! generation speed, time to first token, and the process's peak memory.
//! Run: cargo bench -p mofa-benches --bench local_model

use std::time::Instant;

use mofa_kernel::Role;
use mofa_kernel::llm::{ChatMessage, ChatOptions, ChatRequest, LlmProvider};
use mofa_llm::local::{LocalConfig, LocalProvider};

const RUNS: usize = 5;
const NEW_TOKENS: u32 = 128;

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let cfg = LocalConfig::from_env().expect("config");
    let threads = cfg.threads;
    let provider = LocalProvider::load(cfg).unwrap_or_else(|e| panic!("{e} (run bin/setup)"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let request = ChatRequest {
        messages: vec![
            ChatMessage::new(Role::System, "You are a helpful assistant."),
            ChatMessage::new(
                Role::User,
                "Write a short story about a lighthouse keeper and a storm.",
            ),
        ],
        tools: vec![],
        options: ChatOptions {
            temperature: Some(0.7),
            seed: Some(1),
            max_tokens: Some(NEW_TOKENS),
            ..Default::default()
        },
    };
    let (mut prompt_tps, mut gen_tps, mut ttft) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let start = Instant::now();
        let (resp, first) = rt.block_on(async {
            let call = provider.chat_stream(&request, tx);
            tokio::pin!(call);
            let mut first = None;
            loop {
                tokio::select! {
                    r = &mut call => break (r.unwrap(), first.unwrap_or(start.elapsed())),
                    Some(_) = rx.recv(), if first.is_none() => first = Some(start.elapsed()),
                }
            }
        });
        let total = start.elapsed();
        let usage = resp.usage.unwrap();
        prompt_tps.push(usage.prompt_tokens as f64 / first.as_secs_f64());
        gen_tps.push(
            (usage.completion_tokens.saturating_sub(1)) as f64 / (total - first).as_secs_f64(),
        );
        ttft.push(first.as_secs_f64() * 1000.0);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "SmolLM2-135M-Instruct Q4_1, {threads} thread(s), {RUNS} runs of {NEW_TOKENS} new tokens"
    );
    println!("| measure | median |");
    println!("|---|---|");
    println!(
        "| prompt (tokens/s, to first token) | {:.0} |",
        median(&mut prompt_tps)
    );
    println!("| generation (tokens/s) | {:.0} |", median(&mut gen_tps));
    println!("| time to first token (ms) | {:.1} |", median(&mut ttft));
    println!("| peak RSS of the process (MB) | {:.0} |", peak_rss_mb());
}
