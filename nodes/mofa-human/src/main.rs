use std::process::ExitCode;

fn main() -> ExitCode {
    mofa_kernel::node::main(mofa_human::HumanNode::from_env)
}
