//! The error type of the store crate.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("failed to access {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("failed to write Parquet file {path}: {message}")]
    Write { path: PathBuf, message: String },

    #[error("failed to read Parquet file {path}: {message}")]
    Read { path: PathBuf, message: String },

    #[error("invalid {what}: {message}")]
    Invalid { what: String, message: String },

    #[error("no activation shards for layer {layer} in {dir}; run the extract stage or check the layer index")]
    NoShards { layer: usize, dir: PathBuf },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn write(path: impl Into<PathBuf>, error: impl std::fmt::Display) -> Self {
        Self::Write {
            path: path.into(),
            message: error.to_string(),
        }
    }

    pub(crate) fn read(path: impl Into<PathBuf>, error: impl std::fmt::Display) -> Self {
        Self::Read {
            path: path.into(),
            message: error.to_string(),
        }
    }
}
