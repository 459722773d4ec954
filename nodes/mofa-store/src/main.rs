use std::process::ExitCode;

fn main() -> ExitCode {
    mofa_kernel::node::main(mofa_store::StoreNode::from_env)
}
