use std::process::ExitCode;

fn main() -> ExitCode {
    mofa_kernel::node::main(mofa_wasm::WasmNode::from_env)
}
