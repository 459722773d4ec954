//! Test support, never shipped in a node: the mock OpenAI-compatible server ([`mock_llm`]),
//! a harness that runs a node handler under `DoraNode::init_testing` ([`harness`]), a
//! runner for whole dataflows under the dora CLI ([`dora`]), and real PostgreSQL and MariaDB
//! servers ([`db`]).

pub mod db;
pub mod dora;
pub mod harness;
pub mod mock_llm;
