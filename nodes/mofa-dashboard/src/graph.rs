//! The dataflow as the dashboard draws it, read from dora's descriptor: every node and every
//! edge between nodes (the dashboard itself and its taps left out), each node's column (its
//! depth from the graph's sources), and which edge each of the dashboard's inputs taps.

use std::collections::{BTreeMap, VecDeque};

use mofa_kernel::placement::source_of;
use serde::Serialize;
use serde_json::Value;

/// A node of the dataflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GraphNode {
    pub id: String,
    /// Column: edges from the graph's sources (nodes with no input from another node) to it,
    /// along the shortest path. A cycle (agent ↔ llm) does not push a node further right.
    pub depth: usize,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

/// An edge `source/output -> target/input`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GraphEdge {
    /// `source/output->target/input`, the page's `data-edge`.
    pub id: String,
    pub source: String,
    pub output: String,
    pub target: String,
    pub input: String,
    /// `source/output` when the dashboard taps that output (its figures are the tap's).
    pub tap: Option<String>,
}

/// A tapped output: what the dashboard's input `input` carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tap {
    /// `source/output`; the input id itself when the descriptor does not say (no descriptor).
    pub edge: String,
    /// The nodes other than the dashboard that take this output: an LLM answer tapped here
    /// counts toward the first of them unless its payload names the agent.
    pub receivers: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Graph {
    /// The dashboard's own node id (left out of `nodes` and `edges`).
    pub dashboard: String,
    pub nodes: Vec<GraphNode>,
    pub edges: Vec<GraphEdge>,
    /// The dashboard's input id → the output it taps.
    pub taps: BTreeMap<String, Tap>,
}

/// The inputs of a descriptor node: `(input id, definition)`, for a plain node and for a
/// runtime node's operators (whose inputs are `operator/input`).
fn inputs_of(node: &Value) -> Vec<(String, &Value)> {
    let mut all: Vec<(String, &Value)> = node["inputs"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v))
        .collect();
    all.extend(
        node["operator"]["inputs"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v)),
    );
    for op in node["operators"].as_array().into_iter().flatten() {
        let op_id = op["id"].as_str().unwrap_or_default();
        for (k, v) in op["inputs"].as_object().into_iter().flatten() {
            all.push((format!("{op_id}/{k}"), v));
        }
    }
    all
}

/// The outputs of a descriptor node (for operators, `operator/output`).
fn outputs_of(node: &Value) -> Vec<String> {
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.as_str().map(str::to_owned))
            .collect()
    };
    let mut all = names(&node["outputs"]);
    all.extend(names(&node["operator"]["outputs"]));
    for op in node["operators"].as_array().into_iter().flatten() {
        let op_id = op["id"].as_str().unwrap_or_default();
        all.extend(
            names(&op["outputs"])
                .into_iter()
                .map(|o| format!("{op_id}/{o}")),
        );
    }
    all
}

impl Graph {
    /// The graph of `descriptor` (dora's descriptor as JSON, or the YAML read as JSON) as seen
    /// by the dashboard node `me`. A `Null` descriptor gives an empty graph.
    pub fn from_descriptor(me: &str, descriptor: &Value) -> Graph {
        let nodes = descriptor["nodes"].as_array().cloned().unwrap_or_default();
        let ids: Vec<String> = nodes
            .iter()
            .filter_map(|n| n["id"].as_str().map(str::to_owned))
            .collect();
        let mut graph = Graph {
            dashboard: me.to_owned(),
            ..Graph::default()
        };
        let mut tapped: BTreeMap<String, String> = BTreeMap::new(); // source/output → input
        for n in &nodes {
            let Some(target) = n["id"].as_str() else {
                continue;
            };
            for (input, def) in inputs_of(n) {
                let Some((source, output)) = source_of(def) else {
                    continue;
                };
                // Timers and dora's own outputs are not nodes of the graph.
                if !ids.iter().any(|i| i == source) {
                    continue;
                }
                if target == me {
                    tapped.insert(format!("{source}/{output}"), input.clone());
                    graph.taps.insert(
                        input,
                        Tap {
                            edge: format!("{source}/{output}"),
                            receivers: Vec::new(),
                        },
                    );
                    continue;
                }
                if source == me {
                    continue;
                }
                graph.edges.push(GraphEdge {
                    id: format!("{source}/{output}->{target}/{input}"),
                    source: source.to_owned(),
                    output: output.to_owned(),
                    target: target.to_owned(),
                    input,
                    tap: None,
                });
            }
        }
        for e in &mut graph.edges {
            let key = format!("{}/{}", e.source, e.output);
            if tapped.contains_key(&key) {
                e.tap = Some(key.clone());
                let input = &tapped[&key];
                let tap = graph.taps.get_mut(input).expect("tapped above");
                if !tap.receivers.contains(&e.target) {
                    tap.receivers.push(e.target.clone());
                }
            }
        }
        let depths = depths(&ids, me, &graph.edges);
        graph.nodes = nodes
            .iter()
            .filter_map(|n| {
                let id = n["id"].as_str()?;
                (id != me).then(|| GraphNode {
                    id: id.to_owned(),
                    depth: depths.get(id).copied().unwrap_or(0),
                    inputs: inputs_of(n).into_iter().map(|(k, _)| k).collect(),
                    outputs: outputs_of(n),
                })
            })
            .collect();
        graph
    }

    /// The tap behind input `input`; without one (no descriptor), the input stands for itself.
    pub fn tap(&self, input: &str) -> Tap {
        self.taps.get(input).cloned().unwrap_or_else(|| Tap {
            edge: input.to_owned(),
            receivers: Vec::new(),
        })
    }
}

/// Breadth-first depth from the sources; nodes on a cycle no source reaches start a search of
/// their own at depth 0, in descriptor order.
fn depths(ids: &[String], me: &str, edges: &[GraphEdge]) -> BTreeMap<String, usize> {
    let mut depth: BTreeMap<String, usize> = BTreeMap::new();
    let nodes: Vec<&String> = ids.iter().filter(|i| *i != me).collect();
    let has_input = |id: &str| edges.iter().any(|e| e.target == id && e.source != id);
    let mut starts: Vec<&String> = nodes
        .iter()
        .copied()
        .filter(|i| !has_input(i.as_str()))
        .collect();
    starts.extend(nodes.iter().copied());
    for start in starts {
        if depth.contains_key(start) {
            continue;
        }
        depth.insert(start.clone(), 0);
        let mut queue = VecDeque::from([start.clone()]);
        while let Some(at) = queue.pop_front() {
            let d = depth[&at];
            for e in edges.iter().filter(|e| e.source == at) {
                if !depth.contains_key(&e.target) {
                    depth.insert(e.target.clone(), d + 1);
                    queue.push_back(e.target.clone());
                }
            }
        }
    }
    depth
}
