use std::process::ExitCode;

fn main() -> ExitCode {
    mofa_kernel::node::main(mofa_aggregate::Aggregate::from_env)
}
