//! mofa-io: where tasks come from and where results go.
//!
//! - `mofa-source` ([`source`]): emits tasks on `task`, then ends.
//! - `mofa-sink` ([`sink`]): writes every envelope it receives as one JSON line.

pub mod sink;
pub mod source;
