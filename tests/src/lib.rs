//! Test support, never shipped in a node: the mock OpenAI-compatible server ([`mock_llm`]),
//! a harness that runs a node handler under `DoraNode::init_testing` ([`harness`]), a
//! runner for whole dataflows under the dora CLI ([`dora`]), real PostgreSQL and MariaDB
//! servers ([`db`]), machines made of network namespaces with a dora cluster on them
//! ([`netns`]), and an OTLP trace receiver ([`otlp`]).

pub mod db;
pub mod dora;
pub mod harness;
pub mod mock_llm;
pub mod netns;
pub mod otlp;
