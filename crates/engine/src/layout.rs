//! Layout of an output folder: finished outputs, partial work and engine
//! files.
//!
//! ```text
//! <output>/<model>/<stage>/        finished output of a per-model node
//! <output>/<stage>/                finished output of a cross-model node
//! <output>/.ihs/lock               the lock file (pid, host, start time)
//! <output>/.ihs/partial/<node>/    work in progress of a node:
//!     partial.json                 its key and expected shard count
//!     data/                        becomes the output folder when done
//!     data/shard-00000/            one committed shard
//!     shards/00000.json            the record that commits shard 0
//!     staging/                     shards being written
//! <output>/.ihs/trash/             replaced outputs, deleted right after
//! ```

use std::path::{Path, PathBuf};

use crate::graph::NodeId;

/// Name of the manifest file in every finished output folder.
pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Clone)]
pub(crate) struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn node_dir(&self, id: &NodeId) -> PathBuf {
        self.root.join(id.relative_dir())
    }

    pub fn engine_dir(&self) -> PathBuf {
        self.root.join(".ihs")
    }

    pub fn trash_dir(&self) -> PathBuf {
        self.engine_dir().join("trash")
    }

    pub fn partial(&self, id: &NodeId) -> PartialPaths {
        let dir = self.engine_dir().join("partial").join(id.relative_dir());
        PartialPaths {
            meta: dir.join("partial.json"),
            data: dir.join("data"),
            shards: dir.join("shards"),
            staging: dir.join("staging"),
            dir,
        }
    }
}

/// The folders of one node's work in progress.
#[derive(Debug, Clone)]
pub(crate) struct PartialPaths {
    pub dir: PathBuf,
    pub meta: PathBuf,
    pub data: PathBuf,
    pub shards: PathBuf,
    pub staging: PathBuf,
}

/// Returns the name of shard `index`'s folder in the output.
#[must_use]
pub fn shard_dir_name(index: usize) -> String {
    format!("shard-{index:05}")
}

impl PartialPaths {
    pub fn shard_record(&self, index: usize) -> PathBuf {
        self.shards.join(format!("{index:05}.json"))
    }

    pub fn shard_data(&self, index: usize) -> PathBuf {
        self.data.join(shard_dir_name(index))
    }
}
