use std::process::ExitCode;

fn main() -> ExitCode {
    mofa_kernel::node::main(mofa_debate::Debate::from_env)
}
