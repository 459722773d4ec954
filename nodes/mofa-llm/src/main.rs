use std::process::ExitCode;

fn main() -> ExitCode {
    mofa_kernel::node::main(mofa_llm::LlmNode::from_env)
}
