//! Where the nodes of a dataflow run, and which of one node's edges cross machines.
//!
//! A dataflow spread over daemons (`deploy: {machine: NAME}` per node) has one weak spot in
//! dora 1.1: when a machine's daemon dies, nobody tells the nodes on the other machines. Their
//! inputs from the lost machine never close, and a graph waiting on them waits forever. The
//! kernel ([`crate::node`]) closes that gap with heartbeats, and this module tells it where to
//! send them and which inputs to watch:
//!
//! - the node's outputs that some node on another machine takes ([`Placement::remote_outputs`]):
//!   the kernel sends a small `control` envelope on each every `MOFA_HEARTBEAT_MS`;
//! - the node's inputs that come from a node on another machine ([`Placement::remote_inputs`]):
//!   once such a sender has been heard from, silence longer than `MOFA_PEER_TIMEOUT_MS` closes
//!   the input, and the handler can ask [`Ctx::lost`](crate::node::Ctx::lost) which machine
//!   went away.
//!
//! The placement is read from the dataflow descriptor dora hands every node. A node without a
//! `deploy.machine` runs on the dataflow's `deploy.machine` if there is one, else on the default
//! daemon; two nodes are on different machines when these names differ. When every node is on
//! one machine, both sets are empty: no heartbeat is sent and nothing is watched.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// The node on the other end of an input that crosses machines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The sending node's id.
    pub node: String,
    /// The machine it runs on ([`machine_name`] of its `deploy.machine`).
    pub machine: String,
}

/// One node's edges that cross machines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// This node's machine (`None`: the default daemon).
    pub machine: Option<String>,
    /// Input id → the node (and machine) that feeds it, for inputs fed from another machine.
    pub remote_inputs: BTreeMap<String, Peer>,
    /// Outputs taken by at least one node on another machine.
    pub remote_outputs: BTreeSet<String>,
}

/// How a machine is named in logs and errors: its `deploy.machine`, or `default`.
pub fn machine_name(machine: Option<&str>) -> String {
    machine.unwrap_or("default").to_owned()
}

impl Placement {
    /// The placement of node `node_id` in `descriptor`, the dataflow descriptor as JSON (what
    /// `serde_json::to_value` makes of dora's `Descriptor`, or the YAML file read as JSON).
    pub fn from_descriptor(node_id: &str, descriptor: &Value) -> Placement {
        let default = descriptor["deploy"]["machine"].as_str();
        let nodes = descriptor["nodes"].as_array().cloned().unwrap_or_default();
        let machine_of = |n: &Value| -> Option<String> {
            n["deploy"]["machine"]
                .as_str()
                .or(default)
                .map(str::to_owned)
        };
        let machines: BTreeMap<String, Option<String>> = nodes
            .iter()
            .filter_map(|n| Some((n["id"].as_str()?.to_owned(), machine_of(n))))
            .collect();
        let Some(mine) = machines.get(node_id).cloned() else {
            return Placement::default();
        };
        let mut placement = Placement {
            machine: mine.clone(),
            ..Placement::default()
        };
        for n in &nodes {
            let Some(id) = n["id"].as_str() else { continue };
            let Some(machine) = machines.get(id) else {
                continue;
            };
            for (input, def) in n["inputs"].as_object().into_iter().flatten() {
                let Some((source, output)) = source_of(def) else {
                    continue;
                };
                let Some(source_machine) = machines.get(source) else {
                    continue; // dora/timer/..., dora/logs: not a node
                };
                if source_machine == machine {
                    continue;
                }
                if id == node_id {
                    placement.remote_inputs.insert(
                        input.clone(),
                        Peer {
                            node: source.to_owned(),
                            machine: machine_name(source_machine.as_deref()),
                        },
                    );
                } else if source == node_id {
                    placement.remote_outputs.insert(output.to_owned());
                }
            }
        }
        placement
    }

    /// Whether any edge of this node crosses machines.
    pub fn is_distributed(&self) -> bool {
        !self.remote_inputs.is_empty() || !self.remote_outputs.is_empty()
    }
}

/// `node/output` of an input definition: a plain string, or `{source: ..., ...}`.
pub fn source_of(def: &Value) -> Option<(&str, &str)> {
    let mapping = match def {
        Value::String(s) => s.as_str(),
        Value::Object(o) => o.get("source")?.as_str()?,
        _ => return None,
    };
    mapping.split_once('/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn react() -> Value {
        json!({
            "nodes": [
                {"id": "source", "deploy": {"machine": "edge1"}, "outputs": ["task"]},
                {"id": "agent", "deploy": {"machine": "edge1"},
                 "inputs": {
                    "task": {"source": "source/task", "queue_size": 1000},
                    "llm": "llm/agent",
                    "tools": {"source": "tools/agent"},
                    "tick": "dora/timer/millis/100"
                 },
                 "outputs": ["llm", "tools", "result", "error"]},
                {"id": "tools", "deploy": {"machine": "edge2"},
                 "inputs": {"agent": "agent/tools"}, "outputs": ["agent", "error"]},
                {"id": "llm", "deploy": {"machine": "gpu"},
                 "inputs": {"agent": "agent/llm"}, "outputs": ["agent", "error"]},
                {"id": "sink", "deploy": {"machine": "edge1"},
                 "inputs": {"result": "agent/result", "llm_error": "llm/error"}},
            ]
        })
    }

    #[test]
    fn inputs_and_outputs_that_cross_machines() {
        let p = Placement::from_descriptor("agent", &react());
        assert_eq!(p.machine.as_deref(), Some("edge1"));
        let inputs: Vec<(&str, &str, &str)> = p
            .remote_inputs
            .iter()
            .map(|(i, peer)| (i.as_str(), peer.node.as_str(), peer.machine.as_str()))
            .collect();
        assert_eq!(inputs, [("llm", "llm", "gpu"), ("tools", "tools", "edge2")]);
        assert_eq!(
            p.remote_outputs.iter().collect::<Vec<_>>(),
            ["llm", "tools"],
            "result goes to the sink on the same machine"
        );

        let llm = Placement::from_descriptor("llm", &react());
        assert_eq!(
            llm.remote_outputs.iter().collect::<Vec<_>>(),
            ["agent", "error"]
        );
        assert_eq!(llm.remote_inputs["agent"].machine, "edge1");
        let source = Placement::from_descriptor("source", &react());
        assert!(!source.is_distributed(), "{source:?}");
    }

    #[test]
    fn one_machine_or_no_placement_means_no_remote_edges() {
        let mut one = react();
        for n in one["nodes"].as_array_mut().unwrap() {
            n.as_object_mut().unwrap().remove("deploy");
        }
        for id in ["source", "agent", "tools", "llm", "sink"] {
            assert!(!Placement::from_descriptor(id, &one).is_distributed());
        }
        // The dataflow-wide machine is every node's unless it names its own.
        one["deploy"] = json!({"machine": "edge1"});
        one["nodes"][3]["deploy"] = json!({"machine": "gpu"});
        let agent = Placement::from_descriptor("agent", &one);
        assert_eq!(agent.remote_inputs.keys().collect::<Vec<_>>(), ["llm"]);
        assert_eq!(agent.remote_inputs["llm"].machine, "gpu");
        // Not in the dataflow (a test harness), or no descriptor at all.
        assert_eq!(
            Placement::from_descriptor("nobody", &react()),
            Placement::default()
        );
        assert_eq!(
            Placement::from_descriptor("agent", &Value::Null),
            Placement::default()
        );
    }

    #[test]
    fn the_default_daemon_is_a_machine_of_its_own() {
        let mut d = react();
        d["nodes"][3].as_object_mut().unwrap().remove("deploy");
        let agent = Placement::from_descriptor("agent", &d);
        assert_eq!(agent.remote_inputs["llm"].machine, "default");
    }
}
