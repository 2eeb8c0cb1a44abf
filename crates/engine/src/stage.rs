//! The [`Stage`] trait that pipeline stages implement, and the [`Registry`]
//! that maps stage names to implementations.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::context::NodeContext;
use crate::error::{EngineError, StageError};
use crate::graph::NodeId;
use crate::hash::InputFiles;
use crate::spec::{Device, ModelEntry, Spec};

/// The part of a node that a stage gets before it runs: its id, the spec
/// and, for a per-model node, its model.
#[derive(Debug, Clone, Copy)]
pub struct NodeView<'a> {
    pub id: &'a NodeId,
    pub spec: &'a Spec,
    pub model: Option<&'a ModelEntry>,
}

impl NodeView<'_> {
    /// Returns the stage's spec section as JSON, defaults included.
    #[must_use]
    pub fn section(&self) -> Option<Value> {
        self.spec.section_value(self.id.stage())
    }

    /// Returns the model's folder or `.gguf` file; `None` for a cross-model
    /// node or a hub model that is not cached.
    #[must_use]
    pub fn model_path(&self) -> Option<&Path> {
        self.model.and_then(ModelEntry::local_path)
    }
}

/// Row counts and throughput numbers a stage reports; they go into the
/// manifest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageSummary {
    /// Counts by name, such as `prompts` or `tokens`.
    pub rows: BTreeMap<String, u64>,
    /// Numbers by name with the unit in the name, such as `tokens_per_s`.
    pub metrics: BTreeMap<String, f64>,
}

impl StageSummary {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the count `name`.
    #[must_use]
    pub fn with_rows(mut self, name: &str, count: u64) -> Self {
        self.rows.insert(name.to_owned(), count);
        self
    }

    /// Sets the number `name`.
    #[must_use]
    pub fn with_metric(mut self, name: &str, value: f64) -> Self {
        self.metrics.insert(name.to_owned(), value);
        self
    }
}

/// One pipeline stage. The engine calls `parameters` and `declare_inputs`
/// to compute a node's cache key before it runs, and `run` only when no
/// verified output with that key exists.
///
/// A stage must be deterministic for its key: the same parameters, inputs
/// and code version must write the same files, so that a resumed run ends
/// with the same output as an uninterrupted one.
pub trait Stage: Send + Sync {
    /// Returns the stage's name, as in the spec and [`crate::graph::STAGES`].
    fn name(&self) -> &'static str;

    /// Returns the code version. Raise it whenever the stage's code changes
    /// what it writes: it is part of every key, so the stage is recomputed.
    fn code_version(&self) -> u32;

    /// Returns whether the stage runs the model. At most one heavy node runs
    /// on a device at a time.
    fn is_heavy(&self) -> bool {
        false
    }

    /// Returns the devices a node of this stage occupies while it runs. The default
    /// is the model's devices for a heavy stage and none otherwise.
    fn devices(&self, node: &NodeView<'_>) -> Vec<Device> {
        if self.is_heavy() {
            node.model
                .map(|model| model.devices.clone())
                .unwrap_or_default()
        } else {
            Vec::new()
        }
    }

    /// Returns the parameters that determine the node's output. They enter
    /// the key as canonical JSON. The default is the stage's spec section. Add the
    /// model fields the stage depends on (such as `dtype` or `template`).
    /// Paths in a section are absolute, so a stage that reads a file should
    /// declare it in [`Stage::declare_inputs`] and leave its path out.
    fn parameters(&self, node: &NodeView<'_>) -> Result<Value, StageError> {
        Ok(node.section().unwrap_or(Value::Null))
    }

    /// Declares the files the node reads (datasets, tokenizer, config,
    /// weights). Their digests enter the key and are taken again after the
    /// run to catch a file changed while the node ran. Upstream outputs are
    /// covered by the upstream keys and need no declaration.
    fn declare_inputs(
        &self,
        _node: &NodeView<'_>,
        _inputs: &mut InputFiles,
    ) -> Result<(), StageError> {
        Ok(())
    }

    /// Computes the node's output in [`NodeContext::output_dir`], committing
    /// shards through [`NodeContext::commit_shard`] and returning
    /// [`StageError::Interrupted`] from [`NodeContext::check_stop`] at shard
    /// boundaries.
    fn run(&self, ctx: &mut NodeContext<'_>) -> Result<StageSummary, StageError>;
}

/// Stage implementations by name, supplied by the caller of the engine.
#[derive(Clone, Default)]
pub struct Registry {
    stages: BTreeMap<String, Arc<dyn Stage>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("stages", &self.stages.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a stage under its [`Stage::name`]; a second stage with the same
    /// name is an error.
    pub fn register(&mut self, stage: impl Stage + 'static) -> Result<&mut Self, EngineError> {
        let name = stage.name().to_owned();
        if self.stages.contains_key(&name) {
            return Err(EngineError::DuplicateStage { stage: name });
        }
        self.stages.insert(name, Arc::new(stage));
        Ok(self)
    }

    #[must_use]
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Stage>> {
        self.stages.get(name)
    }

    /// Returns the registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.stages.keys().map(String::as_str)
    }
}
