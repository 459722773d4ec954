//! mofa-script as a dora operator: the Rhai evaluator of `nodes/mofa-script` (same modes, same
//! MOFA_SCRIPT* variables, same per-message logic: [`ScriptNode::process`]) loaded by dora's
//! runtime from a shared library instead of running as a process of its own.
//!
//! ```yaml
//! - id: script
//!   operators:
//!     - id: tag
//!       shared-library: ../target/debug/mofa_script_op   # lib…so / .dylib / .dll: dora adds it
//!       inputs: {in: source/task}
//!       outputs: [out, error]
//!   env: {MOFA_SCRIPT_MODE: transform, MOFA_SCRIPT: ../scripts/transforms/tag.rhai}
//! ```
//!
//! Differences from the node, all from dora's operator API (1.1), which is outside dora's
//! stability promise (core roles stay nodes):
//! - the API sends no metadata parameters, so outputs do not carry `mofa.script_version` nor
//!   the `mofa.schema` marker; the version is in the log at each load, and in the details of
//!   every error envelope (`script_version`);
//! - an operator only acts on events, so an edited script is picked up on the next message
//!   (a broken edit is reported then, on `error`), not while idle;
//! - configuration cannot stop an operator at load (`Default` cannot fail): a bad MOFA_SCRIPT*
//!   is logged at load and stops the operator, with the variable named, at its first event.
//!
//! Bad input never stops it: an array that is not an envelope batch, a script error or a
//! tripped limit is an `error` envelope on `error`, and the operator goes on.

use dora_operator_api::{DoraOperator, DoraOutputSender, DoraStatus, Event, register_operator};
use mofa_kernel::envelope::{self, Envelope, Kind, Role};
use mofa_kernel::node::Failure;
use mofa_script::ScriptNode;
use serde_json::json;

register_operator!(ScriptOperator);

/// The `sender` of what the operator writes: MOFA_SENDER, default `mofa-script-op`.
const DEFAULT_SENDER: &str = "mofa-script-op";

pub struct ScriptOperator {
    script: Result<ScriptNode, String>,
    sender: String,
    version: String,
}

impl Default for ScriptOperator {
    fn default() -> Self {
        mofa_kernel::node::init_logging();
        let script = ScriptNode::from_env().map_err(|e| e.to_string());
        let version = match &script {
            Ok(s) => {
                tracing::info!("mofa-script-op: script version {}", s.version());
                s.version()
            }
            Err(e) => {
                tracing::error!("mofa-script-op: {e}");
                String::new()
            }
        };
        let sender = std::env::var("MOFA_SENDER")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_SENDER.to_owned());
        ScriptOperator {
            script,
            sender,
            version,
        }
    }
}

impl ScriptOperator {
    /// The `error` envelope answering `cause`, as the kernel's nodes make it.
    fn error_envelope(&self, cause: &Envelope, failure: Failure) -> Envelope {
        tracing::warn!(session = %cause.session, reply_to = %cause.id, "{}", failure.message);
        let mut details = match failure.details {
            serde_json::Value::Null => json!({}),
            d @ serde_json::Value::Object(_) => d,
            d => json!({ "details": d }),
        };
        details["input_kind"] = cause.kind.as_str().into();
        cause.error_reply(&self.sender, failure.message, details)
    }

    /// An `error` envelope for a failure that no message caused (a broken reload, bad input).
    fn fail_control(&self, what: &str, message: String, out: &mut DoraOutputSender) {
        let cause = Envelope::new(Kind::Control, &self.sender, Role::System, what);
        let err = self.error_envelope(&cause, Failure::new(message));
        send(out, "error", err);
    }

    /// Runs the script on every envelope of one input array.
    fn on_input(
        &mut self,
        input: &str,
        array: &dyn dora_operator_api::arrow_v59::array::Array,
        out: &mut DoraOutputSender,
    ) {
        let Ok(script) = &self.script else { return };
        if let Some(message) = script.reload() {
            self.fail_control("reload", message, out);
        }
        let version = script.version();
        if version != self.version {
            tracing::info!("mofa-script-op: script version {version}");
            self.version = version;
        }
        let batch = match envelope::from_arrow(array, &self.sender) {
            Ok(b) => b,
            Err(e) => {
                let message = format!("malformed message on input `{input}`: {e}");
                return self.fail_control("decode", message, out);
            }
        };
        for msg in batch {
            match script.process(&msg, &self.sender) {
                Ok(done) => {
                    for (output, env) in done.sends {
                        send(out, &output, env);
                    }
                }
                Err(failure) => {
                    let err = self.error_envelope(&msg, failure);
                    send(out, "error", err);
                }
            }
        }
    }
}

/// Sends one envelope; a failed send is logged (the operator goes on).
fn send(out: &mut DoraOutputSender, output: &str, msg: Envelope) {
    if let Err(e) = out.send(output, envelope::to_arrow(&[msg])) {
        tracing::warn!("mofa-script-op: sending on `{output}` failed: {e}");
    }
}

impl DoraOperator for ScriptOperator {
    fn on_event(
        &mut self,
        event: &Event,
        output_sender: &mut DoraOutputSender,
    ) -> Result<DoraStatus, String> {
        if let Err(e) = &self.script {
            return Err(e.clone());
        }
        match event {
            Event::Input { id, data, .. } => {
                let array = data.as_array();
                self.on_input(id, array.as_ref(), output_sender);
                Ok(DoraStatus::Continue)
            }
            Event::InputParseError { id, error } => {
                let message = format!("malformed message on input `{id}`: {error}");
                self.fail_control("decode", message, output_sender);
                Ok(DoraStatus::Continue)
            }
            Event::Stop => Ok(DoraStatus::Stop),
            _ => Ok(DoraStatus::Continue),
        }
    }
}
