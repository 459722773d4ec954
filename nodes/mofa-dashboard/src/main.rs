use std::process::ExitCode;

fn main() -> ExitCode {
    mofa_kernel::node::main(mofa_dashboard::DashboardNode::from_env)
}
