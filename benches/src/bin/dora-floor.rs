//! The floor of a dora 1.1 node (issue 8, `benches/benches/edge.rs`): init from the environment
//! and wait for events until the stream ends — no kernel, no handler, no logging set-up. Built in
//! the same profile and measured in the same idle graph as the MoFA nodes, it shows how much of
//! a node's binary size and idle memory dora (and the zenoh it embeds) costs by itself.

use dora_node_api::DoraNode;

fn main() {
    let (_node, mut events) = DoraNode::init_from_env().expect("dora-floor: init from dora");
    while events.recv().is_some() {}
}
