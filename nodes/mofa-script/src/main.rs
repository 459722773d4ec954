use std::process::ExitCode;

fn main() -> ExitCode {
    mofa_kernel::node::main(mofa_script::ScriptNode::from_env)
}
