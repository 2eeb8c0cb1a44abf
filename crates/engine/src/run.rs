//! `Engine::run`: the scheduler that runs ready nodes concurrently, and the
//! execution of one node (cache check, resume, stage run, manifest, publish).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::context::{NodeContext, PartialMeta, ShardRecord, UpstreamOutput};
use crate::engine::{Engine, NodeKey, NodeState, PreparedNode};
use crate::error::{exit_code, Chain, EngineError, StageError};
use crate::fsutil;
use crate::graph::NodeId;
use crate::hash::{checksum_file, digest_file};
use crate::key::StaleReason;
use crate::layout::{shard_dir_name, PartialPaths, MANIFEST_FILE};
use crate::lock::{host_name, LockHolder, OutputLock};
use crate::manifest::{
    output_digest, read_manifest, verify_files, FileEntry, Manifest, ShardTotals, ToolInfo, Verify,
    MANIFEST_FORMAT,
};
use crate::observer::{RunEvent, RunObserver};
use crate::progress::{Progress, ProgressMode};
use crate::spec::Device;
use crate::stage::StageSummary;
use crate::stop::StopFlag;

/// Selection of the nodes that ignore their cached outputs and partial work.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Force {
    #[default]
    None,
    All,
    /// Every node of one stage.
    Stage(String),
}

/// Options of [`Engine::run`].
#[derive(Clone, Default)]
pub struct RunOptions {
    pub force: Force,
    /// Run only the nodes of this stage; the others must be cached.
    pub only: Option<String>,
    /// Report what would run without running or locking anything.
    pub dry_run: bool,
    /// Maximum number of nodes running at once; 0 means the number of CPUs.
    pub jobs: usize,
    pub verify: Verify,
    pub stop: StopFlag,
    pub progress: ProgressMode,
    pub observer: Option<Arc<dyn RunObserver>>,
}

impl fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunOptions")
            .field("force", &self.force)
            .field("only", &self.only)
            .field("dry_run", &self.dry_run)
            .field("jobs", &self.jobs)
            .field("verify", &self.verify)
            .finish_non_exhaustive()
    }
}

/// Reason a node ran (or would run).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum RunReason {
    Missing,
    Stale { reasons: Vec<StaleReason> },
    Corrupt { problem: String },
    Forced,
}

impl fmt::Display for RunReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("missing"),
            Self::Stale { reasons } => {
                let reasons: Vec<String> = reasons.iter().map(ToString::to_string).collect();
                write!(f, "stale: {}", reasons.join("; "))
            }
            Self::Corrupt { problem } => write!(f, "corrupt output recomputed: {problem}"),
            Self::Forced => f.write_str("forced"),
        }
    }
}

/// Reason a node did not run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum SkipReason {
    /// An input failed, was skipped or is not up to date.
    InputNotReady { input: NodeId },
    /// The run was stopped before the node started.
    Stopped,
    /// `only` selected another stage and this node's output is not cached.
    NotSelected { state: NodeState },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InputNotReady { input } => write!(f, "input `{input}` is not ready"),
            Self::Stopped => f.write_str("stopped before it started"),
            Self::NotSelected { state } => write!(f, "not selected ({state})"),
        }
    }
}

/// Outcome of one node in a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum NodeOutcome {
    /// A verified output with the same key was reused.
    Cached,
    Ran {
        reason: RunReason,
        summary: StageSummary,
        /// Shards committed by an earlier, interrupted run.
        resumed_shards: usize,
        duration_s: f64,
    },
    /// Dry run: the node would run.
    WouldRun {
        reason: RunReason,
        resumable_shards: usize,
    },
    Failed {
        error: String,
    },
    /// Stopped at a shard boundary; committed shards are kept for resuming.
    Interrupted {
        committed_shards: usize,
    },
    Skipped {
        reason: SkipReason,
    },
}

impl NodeOutcome {
    /// Returns whether downstream nodes may read this node's output.
    fn is_ready(&self) -> bool {
        matches!(
            self,
            Self::Cached | Self::Ran { .. } | Self::WouldRun { .. }
        )
    }
}

impl fmt::Display for NodeOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cached => f.write_str("cached"),
            Self::Ran {
                reason,
                resumed_shards,
                duration_s,
                ..
            } => {
                write!(f, "ran in {duration_s:.1} s ({reason})")?;
                if *resumed_shards > 0 {
                    write!(f, ", resumed after {resumed_shards} shards")?;
                }
                Ok(())
            }
            Self::WouldRun {
                reason,
                resumable_shards,
            } => {
                write!(f, "would run ({reason})")?;
                if *resumable_shards > 0 {
                    write!(f, ", resuming after {resumable_shards} shards")?;
                }
                Ok(())
            }
            Self::Failed { error } => write!(f, "failed: {error}"),
            Self::Interrupted { committed_shards } => {
                write!(
                    f,
                    "interrupted ({committed_shards} shards kept for resuming)"
                )
            }
            Self::Skipped { reason } => write!(f, "skipped: {reason}"),
        }
    }
}

/// One node's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub id: NodeId,
    pub outcome: NodeOutcome,
}

/// The outcome of [`Engine::run`].
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Nodes in dependency order.
    pub nodes: Vec<NodeReport>,
    pub dry_run: bool,
    /// Whether the stop flag was set during the run.
    pub interrupted: bool,
    /// The dead process whose lock this run took over.
    pub lock_takeover: Option<LockHolder>,
}

impl RunReport {
    /// Returns the process exit code: 130 when interrupted, 1 when a node
    /// failed or could not run, 0 otherwise.
    #[must_use]
    pub fn exit_code(&self) -> i32 {
        if self.interrupted {
            return exit_code::INTERRUPTED;
        }
        let failed = self.nodes.iter().any(|node| {
            matches!(
                node.outcome,
                NodeOutcome::Failed { .. }
                    | NodeOutcome::Interrupted { .. }
                    | NodeOutcome::Skipped {
                        reason: SkipReason::InputNotReady { .. } | SkipReason::Stopped
                    }
            )
        });
        if failed {
            exit_code::FAILURE
        } else {
            exit_code::OK
        }
    }

    /// Returns the outcome of `id`.
    #[must_use]
    pub fn outcome(&self, id: &NodeId) -> Option<&NodeOutcome> {
        self.nodes
            .iter()
            .find(|node| node.id == *id)
            .map(|node| &node.outcome)
    }
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for node in &self.nodes {
            writeln!(f, "{}: {}", node.id, node.outcome)?;
        }
        Ok(())
    }
}

/// Shared, read-only state of one run, used by every worker.
struct RunState<'a> {
    engine: &'a Engine,
    options: &'a RunOptions,
    progress: Progress,
}

impl RunState<'_> {
    fn observer(&self) -> Option<&dyn RunObserver> {
        self.options.observer.as_deref()
    }

    fn is_forced(&self, id: &NodeId) -> bool {
        match &self.options.force {
            Force::None => false,
            Force::All => true,
            Force::Stage(stage) => stage == id.stage(),
        }
    }

    fn is_selected(&self, id: &NodeId) -> bool {
        self.options
            .only
            .as_deref()
            .is_none_or(|stage| stage == id.stage())
    }
}

#[derive(Debug)]
enum Slot {
    Pending,
    Running,
    Done(NodeOutcome),
}

impl Engine {
    /// Runs every node that has no verified output with its current key, in
    /// dependency order, with independent nodes in parallel (at most
    /// `jobs`, and one heavy node per device). Holds the output folder's
    /// lock throughout, except in a dry run.
    ///
    /// Returns a report even when nodes fail; errors are reserved for the
    /// engine itself (an invalid stage name, the lock, I/O on the output
    /// folder).
    pub fn run(&self, options: &RunOptions) -> Result<RunReport, EngineError> {
        if let Force::Stage(stage) = &options.force {
            self.check_stage_name(stage)?;
        }
        if let Some(stage) = &options.only {
            self.check_stage_name(stage)?;
        }
        if options.dry_run {
            return Ok(self.dry_run(options));
        }

        let lock = OutputLock::acquire(self.layout.root())?;
        let trash = self.layout.trash_dir();
        fsutil::remove_dir_if_exists(&trash)
            .map_err(|source| EngineError::io("remove", &trash, source))?;

        tracing::info!(
            spec = %self.spec.name,
            output = %self.layout.root().display(),
            nodes = self.graph.nodes().len(),
            "run started"
        );
        let prepared = self.prepare();
        let state = RunState {
            engine: self,
            options,
            progress: Progress::new(options.progress),
        };
        let slots = schedule(&state, &prepared);

        let nodes: Vec<NodeReport> = prepared
            .iter()
            .zip(slots)
            .map(|(node, slot)| NodeReport {
                id: node.id.clone(),
                outcome: match slot {
                    Slot::Done(outcome) => outcome,
                    Slot::Pending | Slot::Running => NodeOutcome::Skipped {
                        reason: SkipReason::Stopped,
                    },
                },
            })
            .collect();
        let report = RunReport {
            nodes,
            dry_run: false,
            interrupted: options.stop.is_requested(),
            lock_takeover: lock.previous_holder().cloned(),
        };
        tracing::info!(
            spec = %self.spec.name,
            exit_code = report.exit_code(),
            "run finished"
        );
        drop(lock);
        Ok(report)
    }

    fn dry_run(&self, options: &RunOptions) -> RunReport {
        let prepared = self.prepare();
        let state = RunState {
            engine: self,
            options,
            progress: Progress::new(ProgressMode::Hidden),
        };
        let mut outcomes: BTreeMap<NodeId, NodeOutcome> = BTreeMap::new();
        let mut nodes = Vec::new();
        for node in &prepared {
            let blocked = node.inputs.iter().find(|input| {
                outcomes
                    .get(*input)
                    .is_none_or(|outcome| !outcome.is_ready())
            });
            let outcome = if let Some(input) = blocked {
                blocked_outcome(&state, node, input.clone())
            } else {
                let assessed = self.assess(node, options.verify);
                match (&node.key, state.is_selected(&node.id)) {
                    (Err(reason), _) => NodeOutcome::Failed {
                        error: format!("cannot compute the cache key: {reason}"),
                    },
                    (Ok(_), false) if assessed == NodeState::Cached => NodeOutcome::Cached,
                    (Ok(_), false) => NodeOutcome::Skipped {
                        reason: SkipReason::NotSelected { state: assessed },
                    },
                    (Ok(key), true) => {
                        let reason = if state.is_forced(&node.id) {
                            Some(RunReason::Forced)
                        } else {
                            run_reason(assessed)
                        };
                        match reason {
                            None => NodeOutcome::Cached,
                            Some(reason) => NodeOutcome::WouldRun {
                                resumable_shards: if reason == RunReason::Forced {
                                    0
                                } else {
                                    self.partial_progress(&node.id, &key.key)
                                        .map_or(0, |progress| progress.done)
                                },
                                reason,
                            },
                        }
                    }
                }
            };
            outcomes.insert(node.id.clone(), outcome.clone());
            nodes.push(NodeReport {
                id: node.id.clone(),
                outcome,
            });
        }
        RunReport {
            nodes,
            dry_run: true,
            interrupted: false,
            lock_takeover: None,
        }
    }
}

/// Returns why a node in `state` must run, or `None` when it is cached.
fn run_reason(state: NodeState) -> Option<RunReason> {
    match state {
        NodeState::Cached => None,
        NodeState::Missing | NodeState::Unavailable { .. } => Some(RunReason::Missing),
        NodeState::Stale { reasons } => Some(RunReason::Stale { reasons }),
        NodeState::Corrupt { problem } => Some(RunReason::Corrupt { problem }),
    }
}

/// Runs the prepared nodes and returns their slots, in the same order.
fn schedule(state: &RunState<'_>, prepared: &[PreparedNode]) -> Vec<Slot> {
    let jobs = match state.options.jobs {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        jobs => jobs,
    };
    let position: BTreeMap<&NodeId, usize> = prepared
        .iter()
        .enumerate()
        .map(|(index, node)| (&node.id, index))
        .collect();
    let mut slots: Vec<Slot> = prepared.iter().map(|_| Slot::Pending).collect();
    let mut busy: BTreeSet<Device> = BTreeSet::new();
    let mut running = 0_usize;
    let (sender, receiver) = mpsc::channel::<(usize, NodeOutcome)>();

    std::thread::scope(|scope| loop {
        for index in 0..prepared.len() {
            if !matches!(slots[index], Slot::Pending) {
                continue;
            }
            let node = &prepared[index];
            let mut inputs_done = true;
            let mut blocked_by = None;
            for input in &node.inputs {
                match position.get(input).map(|&at| &slots[at]) {
                    Some(Slot::Done(outcome)) if outcome.is_ready() => {}
                    Some(Slot::Done(_)) | None => blocked_by = Some(input.clone()),
                    Some(_) => inputs_done = false,
                }
            }
            if let Some(input) = blocked_by {
                let outcome = blocked_outcome(state, node, input);
                log_outcome(&node.id, &outcome);
                slots[index] = Slot::Done(outcome);
                continue;
            }
            if !inputs_done {
                continue;
            }
            if state.options.stop.is_requested() {
                slots[index] = Slot::Done(NodeOutcome::Skipped {
                    reason: SkipReason::Stopped,
                });
                continue;
            }
            let key = match &node.key {
                Ok(key) => key,
                Err(reason) => {
                    let outcome = NodeOutcome::Failed {
                        error: format!("cannot compute the cache key: {reason}"),
                    };
                    log_outcome(&node.id, &outcome);
                    slots[index] = Slot::Done(outcome);
                    continue;
                }
            };
            if running >= jobs || key.devices.iter().any(|device| busy.contains(device)) {
                continue;
            }
            busy.extend(key.devices.iter().copied());
            running += 1;
            slots[index] = Slot::Running;
            let sender = sender.clone();
            scope.spawn(move || {
                let outcome = execute(state, node, key);
                // The receiver outlives every worker inside this scope.
                let _ = sender.send((index, outcome));
            });
        }
        if running == 0 {
            break;
        }
        let Ok((index, outcome)) = receiver.recv() else {
            break;
        };
        running -= 1;
        if let Ok(key) = &prepared[index].key {
            for device in &key.devices {
                busy.remove(device);
            }
        }
        log_outcome(&prepared[index].id, &outcome);
        slots[index] = Slot::Done(outcome);
    });
    slots
}

fn log_outcome(id: &NodeId, outcome: &NodeOutcome) {
    let model = id.model().unwrap_or("-");
    let stage = id.stage();
    match outcome {
        NodeOutcome::Cached => {
            tracing::info!(node = %id, model, stage, "skipped: cached");
        }
        NodeOutcome::Ran {
            reason,
            resumed_shards,
            duration_s,
            ..
        } => tracing::info!(
            node = %id, model, stage, %reason, resumed_shards, duration_s,
            "finished"
        ),
        NodeOutcome::Failed { error } => {
            tracing::error!(node = %id, model, stage, %error, "failed");
        }
        NodeOutcome::Interrupted { committed_shards } => tracing::warn!(
            node = %id, model, stage, committed_shards,
            "interrupted; committed shards are kept for resuming"
        ),
        NodeOutcome::Skipped { reason } => {
            tracing::warn!(node = %id, model, stage, %reason, "skipped");
        }
        NodeOutcome::WouldRun { .. } => {}
    }
}

/// The outcome of a node whose input `input` is not ready: a failure to
/// run when the node was selected, otherwise a node left out of this run
/// (`--only` another stage).
fn blocked_outcome(state: &RunState<'_>, node: &PreparedNode, input: NodeId) -> NodeOutcome {
    let reason = if state.is_selected(&node.id) {
        SkipReason::InputNotReady { input }
    } else {
        SkipReason::NotSelected {
            state: state.engine.assess(node, state.options.verify),
        }
    };
    NodeOutcome::Skipped { reason }
}

/// Checks the cache for one node and runs it when needed.
fn execute(state: &RunState<'_>, node: &PreparedNode, key: &NodeKey) -> NodeOutcome {
    let engine = state.engine;
    let selected = state.is_selected(&node.id);
    let forced = selected && state.is_forced(&node.id);
    let assessed = engine.assess(node, state.options.verify);

    if !selected {
        return if assessed == NodeState::Cached {
            NodeOutcome::Cached
        } else {
            NodeOutcome::Skipped {
                reason: SkipReason::NotSelected { state: assessed },
            }
        };
    }
    let reason = if forced {
        RunReason::Forced
    } else {
        match run_reason(assessed) {
            None => {
                if let Some(observer) = state.observer() {
                    observer.on_event(&RunEvent::NodeCached { node: &node.id });
                }
                return NodeOutcome::Cached;
            }
            Some(reason) => reason,
        }
    };
    if let RunReason::Corrupt { problem } = &reason {
        tracing::warn!(node = %node.id, %problem, "existing output is corrupt; recomputing it");
    }
    tracing::info!(node = %node.id, model = node.id.model().unwrap_or("-"), stage = node.id.stage(), %reason, "started");

    match run_node(state, node, key, &reason, forced) {
        Ok(NodeRun::Finished {
            summary,
            resumed_shards,
            duration,
        }) => NodeOutcome::Ran {
            reason,
            summary,
            resumed_shards,
            duration_s: duration.as_secs_f64(),
        },
        Ok(NodeRun::Interrupted { committed_shards }) => {
            if let Some(observer) = state.observer() {
                observer.on_event(&RunEvent::NodeInterrupted { node: &node.id });
            }
            NodeOutcome::Interrupted { committed_shards }
        }
        Err(error) => {
            let error = Chain(&error).to_string();
            if let Some(observer) = state.observer() {
                observer.on_event(&RunEvent::NodeFailed {
                    node: &node.id,
                    error: &error,
                });
            }
            NodeOutcome::Failed { error }
        }
    }
}

enum NodeRun {
    Finished {
        summary: StageSummary,
        resumed_shards: usize,
        duration: Duration,
    },
    Interrupted {
        committed_shards: usize,
    },
}

/// Runs one node's stage in its partial folder, resuming committed shards
/// of the same key, then writes the manifest and moves the output into
/// place.
fn run_node(
    state: &RunState<'_>,
    node: &PreparedNode,
    key: &NodeKey,
    reason: &RunReason,
    forced: bool,
) -> Result<NodeRun, StageError> {
    let engine = state.engine;
    let paths = engine.layout.partial(&node.id);
    let started_at = chrono::Utc::now();
    let clock = Instant::now();

    if forced {
        fsutil::remove_dir_if_exists(&paths.dir)
            .map_err(|source| StageError::io("remove", &paths.dir, source))?;
    }
    let (meta, shards) = open_partial(&paths, node, key, state.options.verify)?;
    let resumed_shards = shards.len();

    let upstream = upstream_outputs(engine, node)?;
    let upstream_digests = upstream
        .iter()
        .map(|input| {
            read_manifest(&input.dir)
                .map(|manifest| (input.id.to_string(), manifest.output_digest))
                .map_err(|_| {
                    StageError::failed(format!(
                        "the output of input `{}` disappeared before this node started",
                        input.id
                    ))
                })
        })
        .collect::<Result<BTreeMap<_, _>, _>>()?;

    // A manifest already in the partial folder means an earlier run
    // finished this node but stopped before moving it into place.
    if let Ok(manifest) = read_manifest(&paths.data) {
        if manifest.key == key.key
            && manifest.upstream_outputs == upstream_digests
            && verify_files(&paths.data, &manifest.files, state.options.verify).is_ok()
        {
            tracing::info!(node = %node.id, "finishing an output that was written but not moved into place");
            publish(state, node, &paths)?;
            return Ok(NodeRun::Finished {
                summary: StageSummary {
                    rows: manifest.rows,
                    metrics: manifest.metrics,
                },
                resumed_shards: manifest.shards.map_or(0, |shards| shards.count),
                duration: clock.elapsed(),
            });
        }
    }
    fsutil::remove_file_if_exists(&paths.data.join(MANIFEST_FILE))
        .map_err(|source| StageError::io("remove", &paths.data, source))?;

    if resumed_shards > 0 {
        tracing::info!(node = %node.id, shards = resumed_shards, "resuming after committed shards");
    }
    if let Some(observer) = state.observer() {
        observer.on_event(&RunEvent::NodeStarted {
            node: &node.id,
            resumed_shards,
        });
    }

    let view = engine.view(&node.id);
    let mut ctx = NodeContext {
        view,
        parameters: &key.params,
        upstream,
        paths: &paths,
        meta,
        shards,
        stop: &state.options.stop,
        progress: &state.progress,
        observer: state.observer(),
    };
    let summary = match node.stage.run(&mut ctx) {
        Ok(summary) => summary,
        Err(StageError::Interrupted) => {
            return Ok(NodeRun::Interrupted {
                committed_shards: ctx.shards.len(),
            })
        }
        Err(error) => return Err(error),
    };
    let shards = std::mem::take(&mut ctx.shards);
    drop(ctx);

    check_inputs_unchanged(key)?;
    let files = collect_output_files(&paths, &shards)?;
    let finished_at = chrono::Utc::now();
    let duration = clock.elapsed();
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        node: node.id.to_string(),
        stage: node.id.stage().to_owned(),
        model: node.id.model().map(str::to_owned),
        key: key.key.clone(),
        key_parts: key.parts.clone(),
        input_paths: key
            .declared
            .files()
            .iter()
            .filter(|(role, _)| key.parts.files.contains_key(*role))
            .map(|(role, file)| (role.clone(), file.path.clone()))
            .collect(),
        upstream_outputs: upstream_digests,
        output_digest: output_digest(&files),
        files,
        shards: (!shards.is_empty()).then(|| ShardTotals {
            count: shards.len(),
            rows: shards.values().map(|record| record.rows).sum(),
        }),
        resumed_shards,
        rows: summary.rows.clone(),
        metrics: summary.metrics.clone(),
        started_at: started_at.to_rfc3339(),
        finished_at: finished_at.to_rfc3339(),
        duration_s: duration.as_secs_f64(),
        host: host_name(),
        pid: std::process::id(),
        tool: ToolInfo::current(),
    };
    let manifest_path = paths.data.join(MANIFEST_FILE);
    let text = serde_json::to_vec_pretty(&manifest)
        .map_err(|error| StageError::with_source("cannot serialize the manifest", error))?;
    fsutil::write_atomic(&manifest_path, &text)
        .map_err(|source| StageError::io("write", &manifest_path, source))?;
    if let Some(observer) = state.observer() {
        observer.on_event(&RunEvent::ManifestWritten { node: &node.id });
    }
    publish(state, node, &paths)?;
    tracing::debug!(node = %node.id, %reason, "output in place");
    Ok(NodeRun::Finished {
        summary,
        resumed_shards,
        duration,
    })
}

/// Opens or creates a node's partial folder for `key` and returns its
/// metadata and the committed shards that pass verification. Work of
/// another key, unverifiable shards and files that are not committed shards
/// are removed.
fn open_partial(
    paths: &PartialPaths,
    node: &PreparedNode,
    key: &NodeKey,
    verify: Verify,
) -> Result<(PartialMeta, BTreeMap<usize, ShardRecord>), StageError> {
    let existing = std::fs::read_to_string(&paths.meta)
        .ok()
        .and_then(|text| serde_json::from_str::<PartialMeta>(&text).ok());
    let meta = match existing {
        Some(meta) if meta.key == key.key => meta,
        other => {
            if other.is_some() {
                tracing::info!(node = %node.id, "discarding work in progress of an older key");
            }
            fsutil::remove_dir_if_exists(&paths.dir)
                .map_err(|source| StageError::io("remove", &paths.dir, source))?;
            let meta = PartialMeta {
                node: node.id.to_string(),
                key: key.key.clone(),
                shard_count: None,
                created_at: chrono::Utc::now().to_rfc3339(),
            };
            std::fs::create_dir_all(&paths.dir)
                .map_err(|source| StageError::io("create", &paths.dir, source))?;
            let text = serde_json::to_vec_pretty(&meta).unwrap_or_default();
            fsutil::write_atomic(&paths.meta, &text)
                .map_err(|source| StageError::io("write", &paths.meta, source))?;
            meta
        }
    };
    for dir in [&paths.data, &paths.shards] {
        std::fs::create_dir_all(dir).map_err(|source| StageError::io("create", dir, source))?;
    }
    fsutil::remove_dir_if_exists(&paths.staging)
        .map_err(|source| StageError::io("remove", &paths.staging, source))?;
    std::fs::create_dir_all(&paths.staging)
        .map_err(|source| StageError::io("create", &paths.staging, source))?;

    let shards = load_shards(paths, node, verify)?;

    // Everything in data/ other than committed shards (and a manifest that
    // may still be published) is from an interrupted attempt.
    let keep: BTreeSet<String> = shards.keys().map(|index| shard_dir_name(*index)).collect();
    let entries = std::fs::read_dir(&paths.data)
        .map_err(|source| StageError::io("list", &paths.data, source))?;
    for entry in entries {
        let entry = entry.map_err(|source| StageError::io("list", &paths.data, source))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if keep.contains(&name) || name == MANIFEST_FILE {
            continue;
        }
        let path = entry.path();
        let removed = if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|source| StageError::io("remove", &path, source))?;
    }
    Ok((meta, shards))
}

fn load_shards(
    paths: &PartialPaths,
    node: &PreparedNode,
    verify: Verify,
) -> Result<BTreeMap<usize, ShardRecord>, StageError> {
    let mut shards = BTreeMap::new();
    let entries = std::fs::read_dir(&paths.shards)
        .map_err(|source| StageError::io("list", &paths.shards, source))?;
    for entry in entries {
        let entry = entry.map_err(|source| StageError::io("list", &paths.shards, source))?;
        let path = entry.path();
        let record = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| serde_json::from_str::<ShardRecord>(&text).ok());
        let checked = match record {
            Some(record) => {
                let expected = format!("{:05}.json", record.index);
                let valid = if entry.file_name().to_string_lossy() == expected {
                    verify_files(&paths.shard_data(record.index), &record.files, verify)
                } else {
                    Err("the record's name does not match its index".to_owned())
                };
                valid
                    .map(|()| record.clone())
                    .map_err(|problem| (Some(record.index), problem))
            }
            None => Err((None, "the record is unreadable".to_owned())),
        };
        match checked {
            Ok(record) => {
                shards.insert(record.index, record);
            }
            Err((index, problem)) => {
                tracing::warn!(
                    node = %node.id,
                    record = %path.display(),
                    %problem,
                    "committed shard failed verification; it will be recomputed"
                );
                fsutil::remove_file_if_exists(&path)
                    .map_err(|source| StageError::io("remove", &path, source))?;
                if let Some(index) = index {
                    let data = paths.shard_data(index);
                    fsutil::remove_dir_if_exists(&data)
                        .map_err(|source| StageError::io("remove", &data, source))?;
                }
            }
        }
    }
    Ok(shards)
}

fn upstream_outputs(
    engine: &Engine,
    node: &PreparedNode,
) -> Result<Vec<UpstreamOutput>, StageError> {
    node.inputs
        .iter()
        .map(|input| {
            let dir = engine.layout.node_dir(input);
            let manifest = read_manifest(&dir).map_err(|_| {
                StageError::failed(format!("input `{input}` has no finished output"))
            })?;
            Ok(UpstreamOutput {
                id: input.clone(),
                dir,
                key: manifest.key,
            })
        })
        .collect()
}

/// Hashes the declared input files again and fails when one changed while
/// the node ran, since the output may then mix old and new inputs.
fn check_inputs_unchanged(key: &NodeKey) -> Result<(), StageError> {
    for (role, before) in &key.parts.files {
        let Some(file) = key.declared.files().get(role) else {
            continue;
        };
        let now = digest_file(&file.path, file.method).map_err(|error| {
            StageError::with_source(format!("cannot hash input `{role}` again"), error)
        })?;
        if now != *before {
            return Err(StageError::failed(format!(
                "input file `{role}` ({}) changed while the node ran; run again",
                file.path.display()
            )));
        }
    }
    Ok(())
}

/// Lists the output files for the manifest, reusing the checksums in the
/// shard records.
fn collect_output_files(
    paths: &PartialPaths,
    shards: &BTreeMap<usize, ShardRecord>,
) -> Result<Vec<FileEntry>, StageError> {
    let mut recorded: BTreeMap<String, &FileEntry> = BTreeMap::new();
    for record in shards.values() {
        for file in &record.files {
            recorded.insert(
                format!("{}/{}", shard_dir_name(record.index), file.path),
                file,
            );
        }
    }
    let listed = fsutil::list_files(&paths.data)
        .map_err(|source| StageError::io("list", &paths.data, source))?;
    let mut files = Vec::with_capacity(listed.len());
    for file in listed {
        if file.relative == MANIFEST_FILE {
            continue;
        }
        if !file.regular {
            return Err(StageError::failed(format!(
                "the output contains {}, which is not a regular file; write plain files only",
                file.path.display()
            )));
        }
        let entry = if let Some(entry) = recorded.get(&file.relative) {
            FileEntry {
                path: file.relative.clone(),
                size: entry.size,
                blake3: entry.blake3.clone(),
            }
        } else {
            let (size, blake3) = checksum_file(&file.path)
                .map_err(|source| StageError::io("read", &file.path, source))?;
            FileEntry {
                path: file.relative.clone(),
                size,
                blake3,
            }
        };
        files.push(entry);
    }
    Ok(files)
}

/// Moves a finished output into place, replacing an older one, and removes
/// the partial folder.
fn publish(
    state: &RunState<'_>,
    node: &PreparedNode,
    paths: &PartialPaths,
) -> Result<(), StageError> {
    let engine = state.engine;
    fsutil::sync_tree(&paths.data).map_err(|source| StageError::io("sync", &paths.data, source))?;
    let target = engine.layout.node_dir(&node.id);
    fsutil::replace_dir(&paths.data, &target, &engine.layout.trash_dir())
        .map_err(|source| StageError::io("move the output to", &target, source))?;
    fsutil::remove_dir_if_exists(&paths.dir)
        .map_err(|source| StageError::io("remove", &paths.dir, source))?;
    if node.id.model().is_some() {
        if let Some(model_dir) = paths.dir.parent() {
            // Fails while another node of the model has work in progress.
            let _ = std::fs::remove_dir(model_dir);
        }
    }
    if let Some(observer) = state.observer() {
        observer.on_event(&RunEvent::NodePublished { node: &node.id });
    }
    Ok(())
}
