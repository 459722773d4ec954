//! The mock OpenAI-compatible server as a process, for the demo fallback and manual runs.
//! Usage: mock-llm [--port N] [--script rules.json]. Prints `MOCK_LLM_URL=<base url>`, then
//! serves until killed.

use mofa_tests::mock_llm::{MockLlm, Script};

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut port, mut script) = (0u16, Script::default());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().and_then(|p| p.parse().ok()).expect("--port N"),
            "--script" => {
                let path = args.next().expect("--script FILE");
                let text = std::fs::read_to_string(&path).expect("read the script");
                script = serde_json::from_str(&text).expect("a script: {\"rules\": [...]}");
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let mock = MockLlm::start_on(script, port);
    println!("MOCK_LLM_URL={}", mock.base_url());
    loop {
        std::thread::park();
    }
}
