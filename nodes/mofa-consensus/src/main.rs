use std::process::ExitCode;

fn main() -> ExitCode {
    mofa_kernel::node::main(mofa_consensus::Consensus::from_env)
}
