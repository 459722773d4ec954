use std::process::ExitCode;

fn main() -> ExitCode {
    mofa_kernel::node::main(mofa_router::Router::from_env)
}
