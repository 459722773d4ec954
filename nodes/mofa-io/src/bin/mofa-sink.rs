use std::process::ExitCode;

fn main() -> ExitCode {
    mofa_kernel::node::main(mofa_io::sink::Sink::from_env)
}
