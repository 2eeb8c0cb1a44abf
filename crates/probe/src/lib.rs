//! The `probe` stage: weak classifiers trained on every layer's hidden
//! states. They show from which layer a classifier distinguishes prompt
//! classes (normal, malicious, jailbreak), and whether a probe trained on
//! normal against malicious prompts still classifies jailbreak prompts as
//! malicious (Zhou et al., "How Alignment and Jailbreak Work: Explain LLM
//! Safety through Intermediate Hidden States", 2024, arXiv:2406.05644).
//!
//! - [`TaskPlan`] turns a spec task into a stratified train/test split (the
//!   same for every layer and classifier), optional cross-validation folds
//!   and, for transfer tasks, the evaluation set.
//! - [`ClassifierSpec`] trains a linear SVM (`linfa-svm`), a one-hidden-layer
//!   MLP (plain ndarray) or a logistic regression (`linfa-logistic`), each set
//!   up to match its scikit-learn counterpart.
//! - [`run_sweep`] trains every task, classifier and layer in parallel with
//!   rayon; [`write_results`] writes `metrics.parquet`,
//!   `predictions.parquet` and `splits.parquet`.
//! - [`ProbeStage`] runs it all as the engine's `probe` stage.
//!
//! `scripts/sklearn_probe.py` retrains the same splits with scikit-learn;
//! the `sklearn_agreement` test compares the two.

mod classifier;
mod error;
mod metrics;
mod output;
mod plan;
mod seed;
mod stage;
mod sweep;

pub use classifier::{
    output_units, ClassifierKind, ClassifierSpec, Decisions, LogisticModel, MlpModel, MlpWeights,
    Model, Standardizer, SvmModel, LOGISTIC_TOLERANCE,
};
pub use error::ProbeError;
pub use metrics::{evaluate, mean_std, roc_auc, Evaluation};
pub use output::{write_results, METRICS_FILE, PREDICTIONS_FILE, SPLITS_FILE};
pub use plan::{Prompts, Sample, TaskPlan, TransferSet, MAX_SVM_TRAIN_SAMPLES};
pub use seed::derived_rng;
pub use stage::{register, ProbeStage};
pub use sweep::{
    list_layers, run_sweep, LayerOutput, MetricsRow, PredictionRow, ProbeResults, Split, SplitRow,
    Sweep,
};
