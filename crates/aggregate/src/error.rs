//! Errors of the aggregate stage.

use std::path::PathBuf;

use polars::prelude::PolarsError;

/// An error that stops the aggregate stage.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    #[error("no probe output to aggregate; enable the `probe` stage in the spec")]
    NoProbeOutputs,

    #[error("upstream probe output {} has no model; the aggregate stage reads per-model probe outputs only", dir.display())]
    UpstreamWithoutModel { dir: PathBuf },

    #[error("cannot read {}: {source}; rerun the probe stage of this model to rewrite it", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: PolarsError,
    },

    #[error("{} has no usable column `{column}`: {message}; it should be a probe stage `metrics.parquet`", path.display())]
    Column {
        path: PathBuf,
        column: &'static str,
        message: String,
    },

    #[error("{} has a missing value in column `{column}` at row {row}; rerun the probe stage of this model", path.display())]
    MissingValue {
        path: PathBuf,
        column: &'static str,
        row: usize,
    },

    #[error("{} has the negative layer {layer} at row {row}; layers are residual-stream indices from 0", path.display())]
    NegativeLayer {
        path: PathBuf,
        layer: i64,
        row: usize,
    },

    #[error("accuracy threshold {value} is outside [0, 1]; set `aggregate.accuracy_threshold` between 0 and 1")]
    InvalidThreshold { value: f64 },

    #[error("model `{model}` appears in two probe outputs; model names must be unique")]
    DuplicateModel { model: String },

    #[error("cannot build the table `{table}`: {source}")]
    Table {
        table: &'static str,
        #[source]
        source: PolarsError,
    },

    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: PolarsError,
    },

    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Plot(#[from] crate::plot::PlotError),
}

impl AggregateError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
