//! Test support, never shipped in a node: the mock OpenAI-compatible server ([`mock_llm`]),
//! a harness that runs a node handler under `DoraNode::init_testing` ([`harness`]), and a
//! runner for whole dataflows under the dora CLI ([`dora`]).

pub mod dora;
pub mod harness;
pub mod mock_llm;
