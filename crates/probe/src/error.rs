//! The error type of the probe stage.

use std::path::PathBuf;

use ihs_store::StoreError;

/// An error that stops a probe sweep.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no layer folders (`layer=LLL`) in {}; run the `extract` stage first", dir.display())]
    NoLayers { dir: PathBuf },

    #[error("cannot list the layer folders in {}: {source}", dir.display())]
    ListLayers {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot read layer {layer}: {source}")]
    ReadLayer {
        layer: usize,
        #[source]
        source: StoreError,
    },

    #[error(
        "layer {layer} stores {found} rows where layer {first_layer} stores {expected}, or lists \
         other prompts; every layer must hold the same prompts in the same order, so rerun `extract`"
    )]
    LayerMismatch {
        layer: usize,
        first_layer: usize,
        expected: usize,
        found: usize,
    },

    #[error(
        "layer {layer}, prompt `{prompt_id}`: the state contains NaN or infinite values; \
         check the model's dtype (f16 overflows) and rerun `extract`"
    )]
    NonFinite { layer: usize, prompt_id: String },

    #[error("task `{task}`: {message}")]
    InvalidTask { task: String, message: String },

    #[error(
        "task `{task}`: class `{class}` has {count} prompts, which leaves {train} for training \
         and {test} for testing with test_fraction {test_fraction}; each needs at least 2, so add \
         prompts to `{class}` or change test_fraction"
    )]
    ClassTooSmall {
        task: String,
        class: String,
        count: usize,
        train: usize,
        test: usize,
        test_fraction: f64,
    },

    #[error(
        "task `{task}`: class `{class}` has {train} training prompts, fewer than the {folds} \
         cross-validation folds; lower `probe.folds` or add prompts"
    )]
    TooFewForFolds {
        task: String,
        class: String,
        train: usize,
        folds: usize,
    },

    #[error(
        "task `{task}`: the linear SVM would train on {samples} samples, more than the limit of \
         {limit}: its solver holds an n x n kernel matrix of f64 ({gib:.1} GiB at this size); \
         set `probe.classifiers.svm.max_train_samples` to {limit} or less"
    )]
    TooManySvmSamples {
        task: String,
        samples: usize,
        limit: usize,
        gib: f64,
    },

    #[error("task `{task}`, {classifier}, layer {layer}: training failed: {message}")]
    Training {
        task: String,
        classifier: &'static str,
        layer: usize,
        message: String,
    },

    #[error("cannot write {}: {message}", path.display())]
    Write { path: PathBuf, message: String },
}

impl ProbeError {
    pub(crate) fn write(path: impl Into<PathBuf>, error: impl std::fmt::Display) -> Self {
        Self::Write {
            path: path.into(),
            message: error.to_string(),
        }
    }
}
