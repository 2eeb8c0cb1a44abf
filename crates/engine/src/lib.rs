//! The `ihs` pipeline engine: experiment specs, a graph of cached and
//! resumable stage nodes, and atomic outputs.
//!
//! - [`Spec::load`] reads one YAML file per experiment (models, prompt
//!   datasets by class, a section per stage) and reports every problem with
//!   its key, line and column. `docs/pipeline-spec.md` documents the format.
//! - [`Engine`] builds the node graph (tokenize -> extract -> probe, lens,
//!   graft per model; aggregate across models) and runs it with stages from
//!   a [`Registry`]. Each node's cache key is a BLAKE3 hash of its stage,
//!   parameters, code version, upstream keys and input file digests
//!   ([`KeyParts`]). A node whose key matches a verified output is skipped.
//! - Outputs are written to a temporary folder, sealed with a manifest and
//!   renamed into place. Sharded stages commit shard by shard
//!   ([`NodeContext::commit_shard`]), so a killed run resumes from the first
//!   missing shard and ends with the same files.
//! - One lock per output folder ([`OutputLock`]) keeps two runs apart.
//!
//! The engine depends on no model or tensor code: stages plug in through
//! the [`Stage`] trait.

mod context;
mod engine;
mod error;
mod fsutil;
pub mod graph;
pub mod hash;
pub mod hub;
mod key;
mod layout;
mod lock;
mod manifest;
mod observer;
mod progress;
mod run;
pub mod spec;
mod stage;
mod stop;

pub use context::{NodeContext, UpstreamOutput};
pub use engine::{
    validate, CleanReport, Engine, LockStatus, NodePlan, NodeState, Plan, ShardProgress, Status,
    Validation,
};
pub use error::{exit_code, EngineError, StageError};
pub use graph::{Graph, GraphError, NodeId};
pub use hash::{FileDigest, HashMethod, InputFiles};
pub use key::{KeyParts, StaleReason};
pub use layout::{shard_dir_name, MANIFEST_FILE};
pub use lock::{LockHolder, OutputLock};
pub use manifest::{FileEntry, Manifest, ShardTotals, ToolInfo, Verify, MANIFEST_FORMAT};
pub use observer::{RunEvent, RunObserver};
pub use progress::{Progress, ProgressMode};
pub use run::{Force, NodeOutcome, NodeReport, RunOptions, RunReason, RunReport, SkipReason};
pub use spec::{LoadOptions, LoadedSpec, Position, Spec, SpecError, SpecIssue, SpecWarning};
pub use stage::{NodeView, Registry, Stage, StageSummary};
pub use stop::StopFlag;
