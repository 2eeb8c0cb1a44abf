//! [`Engine`]: a spec, its node graph and the stage registry, with the
//! read-only commands (`plan`, `status`), `clean` and `validate`. `run` is in
//! `run.rs`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::context::PartialMeta;
use crate::error::EngineError;
use crate::fsutil;
use crate::graph::{Graph, NodeId};
use crate::hash::{HashCache, InputFiles};
use crate::key::{KeyParts, StaleReason};
use crate::layout::Layout;
use crate::lock::{LockHolder, OutputLock};
use crate::manifest::{
    output_digest, read_manifest, verify_files, ManifestProblem, Verify, MANIFEST_FORMAT,
};
use crate::spec::{Device, LoadOptions, Spec, SpecWarning};
use crate::stage::{NodeView, Registry, Stage};

/// A spec ready to be planned and run.
pub struct Engine {
    pub(crate) spec: Spec,
    pub(crate) registry: Registry,
    pub(crate) graph: Graph,
    pub(crate) layout: Layout,
    pub(crate) hashes: HashCache,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("spec", &self.spec.name)
            .field("output", &self.layout.root())
            .field("nodes", &self.graph.nodes().len())
            .finish_non_exhaustive()
    }
}

/// A node with its cache key computed, or the reason it cannot be.
pub(crate) struct PreparedNode {
    pub id: NodeId,
    pub inputs: Vec<NodeId>,
    pub stage: Arc<dyn Stage>,
    pub key: Result<NodeKey, String>,
}

pub(crate) struct NodeKey {
    pub parts: KeyParts,
    pub key: String,
    pub params: Value,
    pub declared: InputFiles,
    pub devices: Vec<Device>,
}

/// State of a node's output.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum NodeState {
    /// A verified output with the current key exists; it will be reused.
    Cached,
    /// No output exists.
    Missing,
    /// An output exists for another key or older inputs.
    Stale { reasons: Vec<StaleReason> },
    /// An output exists but does not match its manifest.
    Corrupt { problem: String },
    /// The key cannot be computed (a model not cached, an input missing).
    Unavailable { reason: String },
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cached => f.write_str("cached"),
            Self::Missing => f.write_str("missing"),
            Self::Stale { reasons } => {
                let reasons: Vec<String> = reasons.iter().map(ToString::to_string).collect();
                write!(f, "stale: {}", reasons.join("; "))
            }
            Self::Corrupt { problem } => write!(f, "corrupt: {problem}"),
            Self::Unavailable { reason } => write!(f, "unavailable: {reason}"),
        }
    }
}

/// Shards committed so far out of the count the stage announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ShardProgress {
    pub done: usize,
    pub total: Option<usize>,
}

impl fmt::Display for ShardProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.total {
            Some(total) => write!(f, "{}/{total} shards", self.done),
            None => write!(f, "{} shards", self.done),
        }
    }
}

/// One node of a plan or status report.
#[derive(Debug, Clone, Serialize)]
pub struct NodePlan {
    pub id: NodeId,
    pub key: Option<String>,
    pub state: NodeState,
    /// Shards of the finished output, or of resumable work in progress with
    /// the current key.
    pub shards: Option<ShardProgress>,
    /// Whether the shards are work in progress that a run resumes.
    pub resumable: bool,
    /// Devices the node occupies while it runs.
    pub devices: Vec<Device>,
}

impl fmt::Display for NodePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.id, self.state)?;
        match (self.resumable, self.shards) {
            (true, Some(shards)) => write!(f, " (resumable, {shards} done)"),
            (false, Some(shards)) if self.state == NodeState::Cached => write!(f, " ({shards})"),
            _ => Ok(()),
        }
    }
}

/// Every node's state, in dependency order.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub nodes: Vec<NodePlan>,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for node in &self.nodes {
            writeln!(f, "{node}")?;
        }
        Ok(())
    }
}

/// The lock of an output folder as recorded in its lock file.
#[derive(Debug, Clone, Serialize)]
pub struct LockStatus {
    pub holder: LockHolder,
    /// `Some(true)`: a live process on this host; `Some(false)`: left by a
    /// process that has exited; `None`: held from another host.
    pub alive: Option<bool>,
}

/// The output folder's lock and every node's progress.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub lock: Option<LockStatus>,
    pub nodes: Vec<NodePlan>,
}

/// Paths removed by `clean`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CleanReport {
    pub removed: Vec<PathBuf>,
}

/// A valid spec and what would run.
#[derive(Debug)]
pub struct Validation {
    pub spec: Spec,
    /// Problems that leave the spec valid, such as a model not downloaded.
    pub warnings: Vec<SpecWarning>,
    pub nodes: Vec<NodeId>,
}

/// Loads a spec, builds its graph and checks that `registry` has every
/// stage. Models that are not in the HF cache are warnings here.
pub fn validate(
    path: &Path,
    options: &LoadOptions,
    registry: &Registry,
) -> Result<Validation, EngineError> {
    let loaded = Spec::load(path, options)?;
    let engine = Engine::new(loaded.spec, registry.clone())?;
    let nodes = engine
        .graph
        .nodes()
        .iter()
        .map(|node| node.id.clone())
        .collect();
    Ok(Validation {
        spec: engine.spec,
        warnings: loaded.warnings,
        nodes,
    })
}

impl Engine {
    /// Builds the graph of `spec` and checks that `registry` implements
    /// every stage in it.
    pub fn new(spec: Spec, registry: Registry) -> Result<Self, EngineError> {
        let graph = Graph::for_spec(&spec)?;
        for stage in graph.stages() {
            if registry.get(stage).is_none() {
                return Err(EngineError::MissingStage {
                    stage: stage.to_owned(),
                });
            }
        }
        let layout = Layout::new(spec.output_dir());
        Ok(Self {
            spec,
            registry,
            graph,
            layout,
            hashes: HashCache::default(),
        })
    }

    #[must_use]
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    #[must_use]
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Returns the output folder of a node.
    #[must_use]
    pub fn node_dir(&self, id: &NodeId) -> PathBuf {
        self.layout.node_dir(id)
    }

    pub(crate) fn check_stage_name(&self, name: &str) -> Result<(), EngineError> {
        let stages = self.graph.stages();
        if stages.contains(&name) {
            Ok(())
        } else {
            Err(EngineError::UnknownStage {
                name: name.to_owned(),
                available: stages.join(", "),
            })
        }
    }

    pub(crate) fn view<'a>(&'a self, id: &'a NodeId) -> NodeView<'a> {
        NodeView {
            id,
            spec: &self.spec,
            model: id.model().and_then(|name| self.spec.model(name)),
        }
    }

    /// Computes every node's key: its parameters, the digests of the files
    /// it declares and its upstream keys. Files are hashed here, before any
    /// node runs.
    pub(crate) fn prepare(&self) -> Vec<PreparedNode> {
        let mut keys: BTreeMap<NodeId, Result<String, String>> = BTreeMap::new();
        let mut prepared = Vec::with_capacity(self.graph.nodes().len());
        for node in self.graph.nodes() {
            let Some(stage) = self.registry.get(node.id.stage()).cloned() else {
                continue;
            };
            let key = self.prepare_key(&node.id, &node.inputs, stage.as_ref(), &keys);
            keys.insert(
                node.id.clone(),
                key.as_ref()
                    .map(|key| key.key.clone())
                    .map_err(Clone::clone),
            );
            prepared.push(PreparedNode {
                id: node.id.clone(),
                inputs: node.inputs.clone(),
                stage,
                key,
            });
        }
        prepared
    }

    fn prepare_key(
        &self,
        id: &NodeId,
        inputs: &[NodeId],
        stage: &dyn Stage,
        keys: &BTreeMap<NodeId, Result<String, String>>,
    ) -> Result<NodeKey, String> {
        let view = self.view(id);
        if let Some(model) = view.model {
            if model.local_path().is_none() {
                return Err(model.resolve_error().map_or_else(
                    || format!("model `{}` has no local path", model.name),
                    ToOwned::to_owned,
                ));
            }
        }
        let mut upstream = BTreeMap::new();
        for input in inputs {
            match keys.get(input) {
                Some(Ok(key)) => {
                    upstream.insert(input.to_string(), key.clone());
                }
                _ => return Err(format!("input `{input}` is unavailable")),
            }
        }
        let params = stage
            .parameters(&view)
            .map_err(|error| format!("cannot compute the parameters: {error}"))?;
        let mut declared = InputFiles::default();
        stage
            .declare_inputs(&view, &mut declared)
            .map_err(|error| format!("cannot list the input files: {error}"))?;
        let files = self
            .hashes
            .digest_all(&declared)
            .map_err(|error| error.to_string())?;
        let parts = KeyParts {
            stage: stage.name().to_owned(),
            code_version: stage.code_version(),
            params: params.clone(),
            upstream,
            files,
        };
        Ok(NodeKey {
            key: parts.key(),
            parts,
            params,
            declared,
            devices: stage.devices(&view),
        })
    }

    /// Decides whether a node's existing output can be reused.
    pub(crate) fn assess(&self, node: &PreparedNode, verify: Verify) -> NodeState {
        let key = match &node.key {
            Ok(key) => key,
            Err(reason) => {
                return NodeState::Unavailable {
                    reason: reason.clone(),
                }
            }
        };
        let dir = self.layout.node_dir(&node.id);
        let manifest = match read_manifest(&dir) {
            Ok(manifest) => manifest,
            Err(ManifestProblem::Missing) => return NodeState::Missing,
            Err(ManifestProblem::Unreadable(problem)) => return NodeState::Corrupt { problem },
        };
        if manifest.format != MANIFEST_FORMAT {
            return NodeState::Stale {
                reasons: vec![StaleReason::ManifestFormat {
                    found: manifest.format,
                    expected: MANIFEST_FORMAT,
                }],
            };
        }
        if manifest.key != key.key {
            let reasons = key.parts.changes_since(&manifest.key_parts);
            if reasons.is_empty() {
                return NodeState::Corrupt {
                    problem: "the manifest's key does not match its own key parts".to_owned(),
                };
            }
            return NodeState::Stale { reasons };
        }
        if output_digest(&manifest.files) != manifest.output_digest {
            return NodeState::Corrupt {
                problem: "the manifest's file list does not match its output digest".to_owned(),
            };
        }
        if let Err(problem) = verify_files(&dir, &manifest.files, verify) {
            return NodeState::Corrupt { problem };
        }
        let mut reasons = Vec::new();
        for (input, recorded) in &manifest.upstream_outputs {
            let Some(input_id) = node.inputs.iter().find(|id| id.to_string() == *input) else {
                continue;
            };
            // A missing upstream output is not a reason: if it is rebuilt
            // with the same files, this output stays valid.
            if let Ok(current) = read_manifest(&self.layout.node_dir(input_id)) {
                if current.output_digest != *recorded {
                    reasons.push(StaleReason::UpstreamOutput {
                        node: input.clone(),
                    });
                }
            }
        }
        if reasons.is_empty() {
            NodeState::Cached
        } else {
            NodeState::Stale { reasons }
        }
    }

    /// Returns the resumable shards of a node's work in progress, when it
    /// belongs to `key`.
    pub(crate) fn partial_progress(&self, id: &NodeId, key: &str) -> Option<ShardProgress> {
        let paths = self.layout.partial(id);
        let text = std::fs::read_to_string(&paths.meta).ok()?;
        let meta: PartialMeta = serde_json::from_str(&text).ok()?;
        if meta.key != key {
            return None;
        }
        let done = std::fs::read_dir(&paths.shards).map_or(0, |entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    name.strip_suffix(".json")?.parse::<usize>().ok()
                })
                .filter(|index| paths.shard_data(*index).is_dir())
                .count()
        });
        Some(ShardProgress {
            done,
            total: meta.shard_count,
        })
    }

    fn node_plan(&self, node: &PreparedNode, verify: Verify) -> NodePlan {
        let state = self.assess(node, verify);
        let key = node.key.as_ref().ok().map(|key| key.key.clone());
        let devices = node
            .key
            .as_ref()
            .map(|key| key.devices.clone())
            .unwrap_or_default();
        let (shards, resumable) = if state == NodeState::Cached {
            let shards = read_manifest(&self.layout.node_dir(&node.id))
                .ok()
                .and_then(|manifest| manifest.shards)
                .map(|totals| ShardProgress {
                    done: totals.count,
                    total: Some(totals.count),
                });
            (shards, false)
        } else {
            let progress = key
                .as_deref()
                .and_then(|key| self.partial_progress(&node.id, key));
            (progress, progress.is_some())
        };
        NodePlan {
            id: node.id.clone(),
            key,
            state,
            shards,
            resumable,
            devices,
        }
    }

    /// Reports every node as cached, missing, stale (with what changed),
    /// corrupt or unavailable, and the shards a run would resume from.
    #[must_use]
    pub fn plan(&self, verify: Verify) -> Plan {
        let nodes = self
            .prepare()
            .iter()
            .map(|node| self.node_plan(node, verify))
            .collect();
        Plan { nodes }
    }

    /// Reports the lock holder and each node's progress. Outputs are checked
    /// by size only, so this is fast on large outputs.
    #[must_use]
    pub fn status(&self) -> Status {
        let lock = OutputLock::recorded_holder(self.layout.root()).map(|holder| LockStatus {
            alive: holder.is_alive_here(),
            holder,
        });
        Status {
            lock,
            nodes: self.plan(Verify::Sizes).nodes,
        }
    }

    /// Removes the outputs and work in progress of every node of `stage`, or
    /// of all nodes when `stage` is `None`. Takes the output folder's lock.
    pub fn clean(&self, stage: Option<&str>) -> Result<CleanReport, EngineError> {
        if let Some(stage) = stage {
            self.check_stage_name(stage)?;
        }
        let _lock = OutputLock::acquire(self.layout.root())?;
        let mut report = CleanReport::default();
        for node in self.graph.nodes() {
            if stage.is_some_and(|stage| stage != node.id.stage()) {
                continue;
            }
            for dir in [
                self.layout.node_dir(&node.id),
                self.layout.partial(&node.id).dir,
            ] {
                if dir.exists() {
                    fsutil::remove_dir_if_exists(&dir)
                        .map_err(|source| EngineError::io("remove", &dir, source))?;
                    tracing::info!(node = %node.id, path = %dir.display(), "removed");
                    report.removed.push(dir);
                }
            }
        }
        if stage.is_none() {
            let engine_dir = self.layout.engine_dir();
            for dir in [engine_dir.join("partial"), self.layout.trash_dir()] {
                if dir.exists() {
                    fsutil::remove_dir_if_exists(&dir)
                        .map_err(|source| EngineError::io("remove", &dir, source))?;
                    report.removed.push(dir);
                }
            }
        }
        Ok(report)
    }
}
