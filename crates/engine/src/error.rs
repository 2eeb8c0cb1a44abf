//! Error types of the engine and the exit codes the command-line tool maps
//! them to.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::graph::GraphError;
use crate::lock::LockHolder;
use crate::spec::SpecError;

/// Exit codes of `ihs run`, `ihs validate` and the other pipeline commands.
pub mod exit_code {
    /// Every node is cached or finished.
    pub const OK: i32 = 0;
    /// A node failed, or the engine itself failed (I/O, a missing model).
    pub const FAILURE: i32 = 1;
    /// The spec (or a stage name given on the command line) is invalid.
    pub const INVALID_SPEC: i32 = 2;
    /// Another process holds the lock on the output folder.
    pub const LOCKED: i32 = 3;
    /// The run stopped at a shard boundary after Ctrl-C, SIGTERM or SIGHUP.
    pub const INTERRUPTED: i32 = 130;
}

/// An error that stops the engine before or outside a single node.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Spec(#[from] SpecError),

    #[error(transparent)]
    Graph(#[from] GraphError),

    #[error("no stage implementation is registered for `{stage}`; register one before building the engine")]
    MissingStage { stage: String },

    #[error("a stage named `{stage}` is already registered")]
    DuplicateStage { stage: String },

    #[error("unknown stage `{name}`; this spec has the stages {available}")]
    UnknownStage { name: String, available: String },

    #[error("output folder {} is locked by {}; wait for that run to finish or stop it", path.display(), describe_holder(holder.as_ref()))]
    Locked {
        path: PathBuf,
        holder: Option<LockHolder>,
    },

    #[error("cannot lock {}: {source}; the file system may not support file locks (flock)", path.display())]
    LockFailed {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot install the Ctrl-C handler: {0}")]
    Signal(#[from] ctrlc::Error),
}

impl EngineError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Returns the process exit code for this error (see [`exit_code`]).
    #[must_use]
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Spec(_) | Self::Graph(_) | Self::UnknownStage { .. } => exit_code::INVALID_SPEC,
            Self::Locked { .. } => exit_code::LOCKED,
            _ => exit_code::FAILURE,
        }
    }
}

fn describe_holder(holder: Option<&LockHolder>) -> String {
    match holder {
        Some(holder) => holder.to_string(),
        None => "another process (its pid and host could not be read)".to_owned(),
    }
}

/// An error returned by a [`Stage`](crate::Stage) from `run`, `parameters`
/// or `declare_inputs`.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The stop flag was set; the stage returned at a shard boundary.
    #[error("interrupted")]
    Interrupted,

    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("this node has no upstream output from stage `{stage}`")]
    MissingUpstream { stage: String },

    #[error("shard {index} is already committed")]
    ShardCommitted { index: usize },

    #[error("shard {index} wrote {} inside its folder, which is not a regular file; write plain files only", path.display())]
    UnsupportedFile { index: usize, path: PathBuf },

    #[error("{message}")]
    Failed {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl StageError {
    /// Builds an I/O error naming the action and the path.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Builds a failure with a message and no underlying error.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed {
            message: message.into(),
            source: None,
        }
    }

    /// Builds a failure with a message and the error that caused it.
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Failed {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

/// Formats an error with its chain of sources, separated by `: `.
pub(crate) struct Chain<'a>(pub &'a dyn std::error::Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            let text = error.to_string();
            // Variants built with `{source}` in their message already show it.
            if !self.0.to_string().contains(&text) {
                write!(f, ": {text}")?;
            }
            source = error.source();
        }
        Ok(())
    }
}
