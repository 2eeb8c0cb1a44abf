//! The three probe classifiers behind one interface: train on a feature
//! matrix and integer labels, then return predicted labels and, for two
//! labels, decision scores.

mod logistic;
mod mlp;
mod svm;

use ihs_engine::spec::{Classifiers, LogisticParams, MlpParams, SvmParams};
use ndarray::ArrayView2;
use rand_chacha::ChaCha8Rng;

pub use logistic::{LogisticModel, LOGISTIC_TOLERANCE};
pub use mlp::{output_units, MlpModel, MlpWeights, Standardizer};
pub use svm::SvmModel;

/// The classifier families a probe can train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClassifierKind {
    Svm,
    Mlp,
    Logistic,
}

impl ClassifierKind {
    /// Returns the name used in the spec and the output files.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Svm => "svm",
            Self::Mlp => "mlp",
            Self::Logistic => "logistic",
        }
    }
}

/// A classifier with its hyperparameters.
#[derive(Debug, Clone, PartialEq)]
pub enum ClassifierSpec {
    Svm(SvmParams),
    Mlp(MlpParams),
    Logistic(LogisticParams),
}

impl ClassifierSpec {
    /// Returns the enabled classifiers of a spec section, in the order svm,
    /// mlp, logistic.
    #[must_use]
    pub fn enabled(classifiers: &Classifiers) -> Vec<Self> {
        let mut enabled = Vec::new();
        if let Some(svm) = &classifiers.svm {
            enabled.push(Self::Svm(svm.clone()));
        }
        if let Some(mlp) = &classifiers.mlp {
            enabled.push(Self::Mlp(mlp.clone()));
        }
        if let Some(logistic) = &classifiers.logistic {
            enabled.push(Self::Logistic(logistic.clone()));
        }
        enabled
    }

    #[must_use]
    pub fn kind(&self) -> ClassifierKind {
        match self {
            Self::Svm(_) => ClassifierKind::Svm,
            Self::Mlp(_) => ClassifierKind::Mlp,
            Self::Logistic(_) => ClassifierKind::Logistic,
        }
    }

    /// Trains on the rows of `x` with `labels` (each below `n_labels`, every
    /// label present). `rng` is used by the MLP only; the SVM and the
    /// logistic regression are deterministic.
    pub fn fit(
        &self,
        x: ArrayView2<'_, f64>,
        labels: &[usize],
        n_labels: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<Model, String> {
        match self {
            Self::Svm(params) => SvmModel::fit(x, labels, n_labels, params).map(Model::Svm),
            Self::Mlp(params) => Ok(Model::Mlp(MlpModel::fit(x, labels, n_labels, params, rng))),
            Self::Logistic(params) => {
                LogisticModel::fit(x, labels, n_labels, params).map(Model::Logistic)
            }
        }
    }
}

/// A trained classifier.
#[derive(Debug, Clone)]
pub enum Model {
    Svm(SvmModel),
    Mlp(MlpModel),
    Logistic(LogisticModel),
}

/// Predicted labels, and for a two-label model the decision score of label
/// 1 (positive means label 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Decisions {
    pub predicted: Vec<usize>,
    pub scores: Option<Vec<f64>>,
}

impl Model {
    /// Classifies the rows of `x`.
    #[must_use]
    pub fn decide(&self, x: ArrayView2<'_, f64>) -> Decisions {
        match self {
            Self::Svm(model) => model.decide(x),
            Self::Mlp(model) => model.decide(x),
            Self::Logistic(model) => model.decide(x),
        }
    }
}

/// Returns the index of the first maximum of `values`.
pub(crate) fn argmax(values: impl IntoIterator<Item = f64>) -> usize {
    let mut best = 0;
    let mut best_value = f64::NEG_INFINITY;
    for (index, value) in values.into_iter().enumerate() {
        if value > best_value {
            best = index;
            best_value = value;
        }
    }
    best
}
