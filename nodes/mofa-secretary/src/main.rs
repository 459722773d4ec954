use std::process::ExitCode;

fn main() -> ExitCode {
    mofa_kernel::node::main(mofa_secretary::Secretary::from_env)
}
