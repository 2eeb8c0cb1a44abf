//! The node graph: one node per stage and model, plus cross-model nodes,
//! checked for missing inputs and cycles and sorted in dependency order.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::spec::Spec;

/// Whether a stage has one node per model or one for the whole experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    PerModel,
    CrossModel,
}

/// A stage's place in the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct StageDef {
    pub name: &'static str,
    pub scope: Scope,
    /// Stages whose outputs this one reads; enabling it enables them.
    pub requires: &'static [&'static str],
    /// Stages whose outputs it reads when they are enabled.
    pub uses: &'static [&'static str],
}

/// The pipeline's stages in the order they are listed in plans. A per-model
/// stage reads the same model's upstream nodes; a cross-model stage reads
/// the upstream nodes of every model.
pub const STAGES: &[StageDef] = &[
    StageDef {
        name: "tokenize",
        scope: Scope::PerModel,
        requires: &[],
        uses: &[],
    },
    StageDef {
        name: "extract",
        scope: Scope::PerModel,
        requires: &["tokenize"],
        uses: &[],
    },
    StageDef {
        name: "probe",
        scope: Scope::PerModel,
        requires: &["extract"],
        uses: &[],
    },
    StageDef {
        name: "lens",
        scope: Scope::PerModel,
        requires: &["extract"],
        uses: &[],
    },
    StageDef {
        name: "graft",
        scope: Scope::PerModel,
        requires: &["tokenize", "extract"],
        uses: &[],
    },
    StageDef {
        name: "aggregate",
        scope: Scope::CrossModel,
        requires: &["probe"],
        uses: &["lens", "graft"],
    },
];

/// Returns the definition of the stage `name`.
#[must_use]
pub fn stage_def(name: &str) -> Option<&'static StageDef> {
    STAGES.iter().find(|stage| stage.name == name)
}

/// Returns whether `name` is a cross-model stage, whose output folder sits
/// beside the model folders (so no model may take its name).
#[must_use]
pub fn is_cross_model_stage(name: &str) -> bool {
    stage_def(name).is_some_and(|stage| stage.scope == Scope::CrossModel)
}

/// A node: a stage, for one model or for all of them. It is written
/// `<model>/<stage>`, or `<stage>` for a cross-model node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    stage: String,
    model: Option<String>,
}

impl NodeId {
    #[must_use]
    pub fn new(stage: &str, model: Option<&str>) -> Self {
        Self {
            stage: stage.to_owned(),
            model: model.map(str::to_owned),
        }
    }

    #[must_use]
    pub fn stage(&self) -> &str {
        &self.stage
    }

    #[must_use]
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// Returns the output folder relative to the experiment's output folder:
    /// `<model>/<stage>`, or `<stage>` for a cross-model node.
    #[must_use]
    pub fn relative_dir(&self) -> PathBuf {
        match &self.model {
            Some(model) => PathBuf::from(model).join(&self.stage),
            None => PathBuf::from(&self.stage),
        }
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.model {
            Some(model) => write!(f, "{model}/{}", self.stage),
            None => f.write_str(&self.stage),
        }
    }
}

impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(match text.split_once('/') {
            Some((model, stage)) => Self::new(stage, Some(model)),
            None => Self::new(&text, None),
        })
    }
}

/// A node and the nodes whose outputs it reads.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: NodeId,
    pub inputs: Vec<NodeId>,
}

/// An invalid graph.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("the spec enables no stage; add a stage section such as `extract:` or `probe:`")]
    Empty,

    #[error("node `{node}` is defined twice")]
    DuplicateNode { node: NodeId },

    #[error("node `{node}` reads the output of `{input}`, which no node produces")]
    MissingInput { node: NodeId, input: NodeId },

    #[error("the nodes form a cycle: {}", cycle.iter().map(ToString::to_string).collect::<Vec<_>>().join(" -> "))]
    Cycle { cycle: Vec<NodeId> },
}

/// A checked graph whose nodes are in dependency order.
#[derive(Debug, Clone)]
pub struct Graph {
    nodes: Vec<Node>,
    index: HashMap<NodeId, usize>,
}

impl Graph {
    /// Builds the graph of a spec: the stages with a section, the stages they
    /// require, one node per model for per-model stages and one for each
    /// cross-model stage. Nodes are ordered model by model.
    pub fn for_spec(spec: &Spec) -> Result<Self, GraphError> {
        let enabled = enabled_stages(spec);
        if enabled.is_empty() {
            return Err(GraphError::Empty);
        }
        let mut nodes = Vec::new();
        for model in &spec.models {
            for stage in STAGES.iter().filter(|stage| stage.scope == Scope::PerModel) {
                if !enabled.contains(stage.name) {
                    continue;
                }
                let inputs = stage
                    .requires
                    .iter()
                    .chain(stage.uses)
                    .filter(|input| enabled.contains(*input))
                    .map(|input| NodeId::new(input, Some(&model.name)))
                    .collect();
                nodes.push(Node {
                    id: NodeId::new(stage.name, Some(&model.name)),
                    inputs,
                });
            }
        }
        for stage in STAGES
            .iter()
            .filter(|stage| stage.scope == Scope::CrossModel)
        {
            if !enabled.contains(stage.name) {
                continue;
            }
            let mut inputs = Vec::new();
            for model in &spec.models {
                for input in stage.requires.iter().chain(stage.uses) {
                    if enabled.contains(*input) {
                        inputs.push(NodeId::new(input, Some(&model.name)));
                    }
                }
            }
            nodes.push(Node {
                id: NodeId::new(stage.name, None),
                inputs,
            });
        }
        Self::new(nodes)
    }

    /// Checks `nodes` (unique ids, every input produced, no cycle) and sorts
    /// them so that each node comes after its inputs, keeping the given order
    /// where the dependencies allow.
    pub fn new(nodes: Vec<Node>) -> Result<Self, GraphError> {
        let mut position = HashMap::new();
        for (index, node) in nodes.iter().enumerate() {
            if position.insert(node.id.clone(), index).is_some() {
                return Err(GraphError::DuplicateNode {
                    node: node.id.clone(),
                });
            }
        }
        for node in &nodes {
            for input in &node.inputs {
                if !position.contains_key(input) {
                    return Err(GraphError::MissingInput {
                        node: node.id.clone(),
                        input: input.clone(),
                    });
                }
            }
        }

        // Kahn's algorithm, always taking the ready node listed first.
        let mut waiting: Vec<usize> = nodes.iter().map(|node| node.inputs.len()).collect();
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
        for (index, node) in nodes.iter().enumerate() {
            for input in &node.inputs {
                dependents[position[input]].push(index);
            }
        }
        let mut ready: BinaryHeap<Reverse<usize>> = (0..nodes.len())
            .filter(|&index| waiting[index] == 0)
            .map(Reverse)
            .collect();
        let mut order = Vec::with_capacity(nodes.len());
        while let Some(Reverse(index)) = ready.pop() {
            order.push(index);
            for &dependent in &dependents[index] {
                waiting[dependent] -= 1;
                if waiting[dependent] == 0 {
                    ready.push(Reverse(dependent));
                }
            }
        }
        if order.len() < nodes.len() {
            return Err(GraphError::Cycle {
                cycle: find_cycle(&nodes, &position),
            });
        }

        let mut slots: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
        let sorted: Vec<Node> = order
            .into_iter()
            .filter_map(|index| slots[index].take())
            .collect();
        let index = sorted
            .iter()
            .enumerate()
            .map(|(index, node)| (node.id.clone(), index))
            .collect();
        Ok(Self {
            nodes: sorted,
            index,
        })
    }

    /// Returns the nodes in dependency order.
    #[must_use]
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    #[must_use]
    pub fn node(&self, id: &NodeId) -> Option<&Node> {
        self.index.get(id).map(|&index| &self.nodes[index])
    }

    /// Returns the position of `id` in [`Self::nodes`].
    #[must_use]
    pub fn position(&self, id: &NodeId) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Returns the names of the stages that have nodes, in pipeline order.
    #[must_use]
    pub fn stages(&self) -> Vec<&str> {
        let present: BTreeSet<&str> = self.nodes.iter().map(|node| node.id.stage()).collect();
        let mut ordered: Vec<&str> = STAGES
            .iter()
            .map(|stage| stage.name)
            .filter(|name| present.contains(name))
            .collect();
        for name in present {
            if !ordered.contains(&name) {
                ordered.push(name);
            }
        }
        ordered
    }
}

/// Returns the stages with a section plus every stage they require.
fn enabled_stages(spec: &Spec) -> BTreeSet<&'static str> {
    let mut enabled: BTreeSet<&'static str> = STAGES
        .iter()
        .filter(|stage| spec.has_section(stage.name))
        .map(|stage| stage.name)
        .collect();
    let mut pending: Vec<&'static str> = enabled.iter().copied().collect();
    while let Some(name) = pending.pop() {
        if let Some(stage) = stage_def(name) {
            for required in stage.requires {
                if enabled.insert(required) {
                    pending.push(required);
                }
            }
        }
    }
    enabled
}

/// Returns one cycle among `nodes`, which are known to contain one.
fn find_cycle(nodes: &[Node], position: &HashMap<NodeId, usize>) -> Vec<NodeId> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit(
        index: usize,
        nodes: &[Node],
        position: &HashMap<NodeId, usize>,
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<NodeId>> {
        marks[index] = Mark::Active;
        stack.push(index);
        for input in &nodes[index].inputs {
            let next = position[input];
            match marks[next] {
                Mark::Active => {
                    let start = stack.iter().position(|&i| i == next).unwrap_or(0);
                    let mut cycle: Vec<NodeId> = stack[start..]
                        .iter()
                        .map(|&i| nodes[i].id.clone())
                        .collect();
                    cycle.push(nodes[next].id.clone());
                    // The walk follows inputs; report it in data-flow order.
                    cycle.reverse();
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(next, nodes, position, marks, stack) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks[index] = Mark::Done;
        None
    }

    let mut marks = vec![Mark::New; nodes.len()];
    for index in 0..nodes.len() {
        if marks[index] == Mark::New {
            let mut stack = Vec::new();
            if let Some(cycle) = visit(index, nodes, position, &mut marks, &mut stack) {
                return cycle;
            }
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(stage: &str, inputs: &[&str]) -> Node {
        Node {
            id: NodeId::new(stage, Some("m")),
            inputs: inputs
                .iter()
                .map(|input| NodeId::new(input, Some("m")))
                .collect(),
        }
    }

    #[test]
    fn orders_inputs_first() {
        let graph = Graph::new(vec![
            node("probe", &["extract"]),
            node("extract", &["tokenize"]),
            node("tokenize", &[]),
        ])
        .unwrap();
        let order: Vec<String> = graph.nodes().iter().map(|n| n.id.to_string()).collect();
        assert_eq!(order, ["m/tokenize", "m/extract", "m/probe"]);
    }

    #[test]
    fn cycle_rejected_and_named() {
        let error = Graph::new(vec![
            node("a", &["c"]),
            node("b", &["a"]),
            node("c", &["b"]),
            node("d", &[]),
        ])
        .unwrap_err();
        let GraphError::Cycle { cycle } = &error else {
            panic!("expected a cycle, got {error}");
        };
        assert_eq!(cycle.len(), 4, "{error}");
        assert_eq!(cycle.first(), cycle.last());
        assert!(error.to_string().contains("m/a -> "), "{error}");
    }

    #[test]
    fn missing_input_rejected() {
        let error = Graph::new(vec![node("probe", &["extract"])]).unwrap_err();
        assert!(
            matches!(&error, GraphError::MissingInput { input, .. } if input.stage() == "extract"),
            "{error}"
        );
    }

    #[test]
    fn duplicate_node_rejected() {
        let error = Graph::new(vec![node("a", &[]), node("a", &[])]).unwrap_err();
        assert!(matches!(error, GraphError::DuplicateNode { .. }), "{error}");
    }
}
