//! [`NodeContext`]: what a running stage gets from the engine, including the
//! shard API that makes long stages resumable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::StageError;
use crate::fsutil;
use crate::graph::NodeId;
use crate::hash::checksum_file;
use crate::layout::{shard_dir_name, PartialPaths};
use crate::manifest::FileEntry;
use crate::observer::{RunEvent, RunObserver};
use crate::progress::Progress;
use crate::spec::{ModelEntry, Spec};
use crate::stage::NodeView;
use crate::stop::StopFlag;

/// The finished output of an upstream node.
#[derive(Debug, Clone)]
pub struct UpstreamOutput {
    pub id: NodeId,
    /// The output folder (with its `manifest.json`).
    pub dir: PathBuf,
    pub key: String,
}

/// `partial.json`: which key a node's work in progress belongs to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PartialMeta {
    pub node: String,
    pub key: String,
    /// Shard count the stage announced, for status reports.
    pub shard_count: Option<usize>,
    pub created_at: String,
}

/// `shards/NNNNN.json`: the record that commits one shard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ShardRecord {
    pub index: usize,
    pub rows: u64,
    /// Files relative to the shard's folder.
    pub files: Vec<FileEntry>,
}

/// The engine's side of one running node.
pub struct NodeContext<'a> {
    pub(crate) view: NodeView<'a>,
    pub(crate) parameters: &'a Value,
    pub(crate) upstream: Vec<UpstreamOutput>,
    pub(crate) paths: &'a PartialPaths,
    pub(crate) meta: PartialMeta,
    pub(crate) shards: BTreeMap<usize, ShardRecord>,
    pub(crate) stop: &'a StopFlag,
    pub(crate) progress: &'a Progress,
    pub(crate) observer: Option<&'a dyn RunObserver>,
}

impl std::fmt::Debug for NodeContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeContext")
            .field("node", self.view.id)
            .field("output_dir", &self.paths.data)
            .field("completed_shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl NodeContext<'_> {
    #[must_use]
    pub fn node(&self) -> &NodeId {
        self.view.id
    }

    #[must_use]
    pub fn spec(&self) -> &Spec {
        self.view.spec
    }

    /// Returns the node's model; `None` for a cross-model node.
    #[must_use]
    pub fn model(&self) -> Option<&ModelEntry> {
        self.view.model
    }

    /// Returns the model's folder or `.gguf` file.
    #[must_use]
    pub fn model_path(&self) -> Option<&Path> {
        self.view.model_path()
    }

    /// Returns the parameters that went into the key
    /// ([`Stage::parameters`](crate::Stage::parameters)).
    #[must_use]
    pub fn parameters(&self) -> &Value {
        self.parameters
    }

    /// Returns every upstream output, in graph order.
    #[must_use]
    pub fn upstream(&self) -> &[UpstreamOutput] {
        &self.upstream
    }

    /// Returns the output folder of the one upstream node of `stage`.
    pub fn input_dir(&self, stage: &str) -> Result<&Path, StageError> {
        let mut matches = self
            .upstream
            .iter()
            .filter(|input| input.id.stage() == stage);
        match (matches.next(), matches.next()) {
            (Some(input), None) => Ok(&input.dir),
            _ => Err(StageError::MissingUpstream {
                stage: stage.to_owned(),
            }),
        }
    }

    /// Returns the folder the stage writes its output into. It is a
    /// temporary folder that becomes the node's output folder once the
    /// stage returns and the manifest is written. Files other than committed
    /// shards are removed before a resumed run, so write them again.
    #[must_use]
    pub fn output_dir(&self) -> &Path {
        &self.paths.data
    }

    /// Records how many shards the node will commit, for progress reports.
    pub fn set_shard_count(&mut self, count: usize) -> Result<(), StageError> {
        if self.meta.shard_count == Some(count) {
            return Ok(());
        }
        self.meta.shard_count = Some(count);
        let text = serde_json::to_vec_pretty(&self.meta).unwrap_or_default();
        fsutil::write_atomic(&self.paths.meta, &text)
            .map_err(|source| StageError::io("write", &self.paths.meta, source))
    }

    /// Returns the indices of the shards already committed (by this run or
    /// an interrupted one with the same key), in ascending order.
    #[must_use]
    pub fn completed_shards(&self) -> Vec<usize> {
        self.shards.keys().copied().collect()
    }

    #[must_use]
    pub fn is_shard_complete(&self, index: usize) -> bool {
        self.shards.contains_key(&index)
    }

    /// Returns the folder of shard `index` in the output (committed shards
    /// can be read back from it).
    #[must_use]
    pub fn shard_dir(&self, index: usize) -> PathBuf {
        self.paths.shard_data(index)
    }

    /// Returns the total rows of the committed shards.
    #[must_use]
    pub fn committed_rows(&self) -> u64 {
        self.shards.values().map(|record| record.rows).sum()
    }

    /// Writes shard `index` atomically. `write` gets an empty staging folder,
    /// writes the shard's files into it and returns the shard's row count.
    /// The engine then checksums the files, moves the folder to
    /// `shard-NNNNN/` in the output and writes the shard's record. A shard
    /// exists only once its record does, so a crash at any point leaves
    /// either a whole shard or none.
    pub fn commit_shard<F>(&mut self, index: usize, write: F) -> Result<(), StageError>
    where
        F: FnOnce(&Path) -> Result<u64, StageError>,
    {
        if self.shards.contains_key(&index) {
            return Err(StageError::ShardCommitted { index });
        }
        let staging = self.paths.staging.join(shard_dir_name(index));
        fsutil::remove_dir_if_exists(&staging)
            .map_err(|source| StageError::io("remove", &staging, source))?;
        std::fs::create_dir_all(&staging)
            .map_err(|source| StageError::io("create", &staging, source))?;

        let rows = match write(&staging) {
            Ok(rows) => rows,
            Err(error) => {
                if let Err(cleanup) = fsutil::remove_dir_if_exists(&staging) {
                    tracing::warn!(path = %staging.display(), error = %cleanup, "cannot remove a failed shard's staging folder");
                }
                return Err(error);
            }
        };

        let mut files = Vec::new();
        let listed = fsutil::list_files(&staging)
            .map_err(|source| StageError::io("list", &staging, source))?;
        for file in listed {
            if !file.regular {
                return Err(StageError::UnsupportedFile {
                    index,
                    path: file.path,
                });
            }
            let (size, blake3) = checksum_file(&file.path)
                .map_err(|source| StageError::io("read", &file.path, source))?;
            files.push(FileEntry {
                path: file.relative,
                size,
                blake3,
            });
        }
        fsutil::sync_tree(&staging).map_err(|source| StageError::io("sync", &staging, source))?;

        let target = self.paths.shard_data(index);
        fsutil::remove_dir_if_exists(&target)
            .map_err(|source| StageError::io("remove", &target, source))?;
        std::fs::rename(&staging, &target)
            .map_err(|source| StageError::io("move a shard to", &target, source))?;
        fsutil::sync_dir(&self.paths.data)
            .map_err(|source| StageError::io("sync", &self.paths.data, source))?;

        let record = ShardRecord { index, rows, files };
        let record_path = self.paths.shard_record(index);
        let text = serde_json::to_vec_pretty(&record).unwrap_or_default();
        fsutil::write_atomic(&record_path, &text)
            .map_err(|source| StageError::io("write", &record_path, source))?;
        self.shards.insert(index, record);

        tracing::debug!(
            node = %self.view.id,
            model = self.view.id.model().unwrap_or("-"),
            stage = self.view.id.stage(),
            shard = index,
            rows,
            "shard committed"
        );
        if let Some(observer) = self.observer {
            observer.on_event(&RunEvent::ShardCommitted {
                node: self.view.id,
                index,
            });
        }
        Ok(())
    }

    /// Returns whether the run was asked to stop.
    #[must_use]
    pub fn stop_requested(&self) -> bool {
        self.stop.is_requested()
    }

    /// Returns [`StageError::Interrupted`] when the run was asked to stop;
    /// call it at every shard boundary.
    pub fn check_stop(&self) -> Result<(), StageError> {
        if self.stop.is_requested() {
            Err(StageError::Interrupted)
        } else {
            Ok(())
        }
    }

    /// Returns a progress bar for `total` items of `unit`, labelled with the
    /// node id; hidden when stderr is not a terminal.
    #[must_use]
    pub fn progress_bar(&self, total: u64, unit: &str) -> ProgressBar {
        self.progress.bar(&self.view.id.to_string(), total, unit)
    }
}
