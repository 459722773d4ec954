use std::process::ExitCode;

fn main() -> ExitCode {
    mofa_kernel::node::main(mofa_tools::ToolsNode::from_env)
}
