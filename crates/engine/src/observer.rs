//! Events a run reports as it goes, for command-line output and for tests
//! that stop a run at a chosen point.

use crate::graph::NodeId;

/// A step of a run.
#[derive(Debug, Clone, Copy)]
pub enum RunEvent<'a> {
    /// A node's output was verified and is reused.
    NodeCached {
        node: &'a NodeId,
    },
    /// A node's stage is about to run; `resumed_shards` were committed by an
    /// earlier run with the same key.
    NodeStarted {
        node: &'a NodeId,
        resumed_shards: usize,
    },
    /// A shard's record was written.
    ShardCommitted {
        node: &'a NodeId,
        index: usize,
    },
    /// The manifest is written in the temporary folder; the output is about
    /// to be renamed into place.
    ManifestWritten {
        node: &'a NodeId,
    },
    /// The output is in place.
    NodePublished {
        node: &'a NodeId,
    },
    NodeFailed {
        node: &'a NodeId,
        error: &'a str,
    },
    NodeInterrupted {
        node: &'a NodeId,
    },
}

/// Receives [`RunEvent`]s, from several worker threads at once.
pub trait RunObserver: Send + Sync {
    fn on_event(&self, event: &RunEvent<'_>);
}
