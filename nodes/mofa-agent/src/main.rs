use std::process::ExitCode;

fn main() -> ExitCode {
    mofa_kernel::node::main(mofa_agent::Agent::from_env)
}
