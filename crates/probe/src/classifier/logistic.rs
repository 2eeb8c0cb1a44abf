//! L2-regularized logistic regression through `linfa-logistic` 0.8
//! (L-BFGS), binary for two labels and multinomial for more, as
//! scikit-learn's `LogisticRegression` with its default lbfgs solver.
//!
//! scikit-learn minimizes `C * sum_i loss_i + ||w||^2 / 2` (scikit-learn
//! 1.9 divides the whole objective by `C * n`, which leaves the minimizer
//! unchanged), with the intercept unpenalized. linfa minimizes
//! `sum_i loss_i + alpha / 2 * ||w||^2`, also without penalizing the
//! intercept. Dividing scikit-learn's objective by C gives linfa's with
//! `alpha = 1 / C`.
//!
//! The features are centered with the training mean first. Because the
//! intercept is not penalized, `(x - m).w + b'` spans the same functions with
//! the same penalty as `x.w + b`, so the optimum's predictions do not change.
//! Raw hidden states have large per-feature means, and centering makes
//! L-BFGS converge far sooner: on the SmolLM2-135M states of the
//! `sklearn_agreement` test, scikit-learn needed up to 5,121 iterations to
//! reach `tol=1e-8` on raw states and 383 on centered ones.
//!
//! linfa's loss is a sum over samples, so its gradient is n times that of
//! scikit-learn's mean loss, and its L-BFGS (argmin 0.11) stops on the
//! gradient's L2 norm. The tolerance is [`LOGISTIC_TOLERANCE`] times n:
//! 1e-6 per sample, tighter than scikit-learn's default `tol=1e-4`. On the
//! same states, scikit-learn's default stopped up to 6.7 accuracy points
//! away from the converged solution. At 1e-6 both libraries reach the same
//! predictions.

use ihs_engine::spec::LogisticParams;
use linfa::dataset::Dataset;
use linfa::traits::Fit;
use linfa_logistic::{
    FittedLogisticRegression, LogisticRegression, MultiFittedLogisticRegression,
    MultiLogisticRegression,
};
use ndarray::{Array1, ArrayView2, Axis};

use super::{argmax, Decisions};

/// The L-BFGS stopping tolerance on the gradient norm, per training sample.
pub const LOGISTIC_TOLERANCE: f64 = 1e-6;

/// A trained logistic regression.
#[derive(Debug, Clone)]
pub struct LogisticModel {
    /// Training mean, subtracted from every input.
    mean: Array1<f64>,
    fitted: Fitted,
}

#[derive(Debug, Clone)]
enum Fitted {
    /// Two labels; `positive` is the label linfa models as the positive
    /// class (it picks one by count).
    Binary {
        fitted: FittedLogisticRegression<f64, usize>,
        positive: usize,
    },
    Multinomial(MultiFittedLogisticRegression<f64, usize>),
}

impl LogisticModel {
    /// Trains on the rows of `x`; see the module documentation.
    pub fn fit(
        x: ArrayView2<'_, f64>,
        labels: &[usize],
        n_labels: usize,
        params: &LogisticParams,
    ) -> Result<Self, String> {
        let alpha = 1.0 / params.c;
        let tolerance = LOGISTIC_TOLERANCE * labels.len() as f64;
        let mean = x
            .mean_axis(Axis(0))
            .unwrap_or_else(|| Array1::zeros(x.ncols()));
        let dataset = Dataset::new(&x - &mean, Array1::from(labels.to_vec()));
        if n_labels == 2 {
            let fitted = LogisticRegression::default()
                .alpha(alpha)
                .max_iterations(params.max_iter as u64)
                .gradient_tolerance(tolerance)
                .fit(&dataset)
                .map_err(|error| format!("linfa-logistic: {error}"))?;
            let positive = fitted.labels().pos.class;
            Ok(Self {
                mean,
                fitted: Fitted::Binary { fitted, positive },
            })
        } else {
            let fitted = MultiLogisticRegression::default()
                .alpha(alpha)
                .max_iterations(params.max_iter as u64)
                .gradient_tolerance(tolerance)
                .fit(&dataset)
                .map_err(|error| format!("linfa-logistic: {error}"))?;
            if fitted.classes() != (0..n_labels).collect::<Vec<_>>() {
                return Err(format!(
                    "the model knows the labels {:?}; expected 0 to {}",
                    fitted.classes(),
                    n_labels - 1
                ));
            }
            Ok(Self {
                mean,
                fitted: Fitted::Multinomial(fitted),
            })
        }
    }

    /// Classifies the rows of `x`; a binary model also returns the log-odds
    /// of label 1 as scores.
    #[must_use]
    pub fn decide(&self, x: ArrayView2<'_, f64>) -> Decisions {
        let x = &x - &self.mean;
        match &self.fitted {
            Fitted::Binary { fitted, positive } => {
                let sign = if *positive == 1 { 1.0 } else { -1.0 };
                let scores: Vec<f64> = x
                    .dot(fitted.params())
                    .iter()
                    .map(|z| sign * (z + fitted.intercept()))
                    .collect();
                let predicted = scores.iter().map(|&s| usize::from(s > 0.0)).collect();
                Decisions {
                    predicted,
                    scores: Some(scores),
                }
            }
            Fitted::Multinomial(fitted) => {
                let probabilities = fitted.predict_probabilities(&x);
                let predicted = probabilities
                    .outer_iter()
                    .map(|row| argmax(row.iter().copied()))
                    .collect();
                Decisions {
                    predicted,
                    scores: None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ihs_engine::spec::LogisticParams;
    use ndarray::array;

    use super::LogisticModel;

    #[test]
    fn binary_scores_point_to_label_one() {
        // Label 1 is the minority, so linfa models label 0 as its positive
        // class; the scores must still grow towards label 1.
        let x = array![[-2.0], [-1.5], [-1.0], [-0.5], [1.0], [2.0]];
        let labels = [0, 0, 0, 0, 1, 1];
        let model = LogisticModel::fit(x.view(), &labels, 2, &LogisticParams::default()).unwrap();
        let decisions = model.decide(x.view());
        assert_eq!(decisions.predicted, labels.to_vec());
        let scores = decisions.scores.unwrap();
        assert!(scores.windows(2).all(|w| w[0] < w[1]), "{scores:?}");
    }

    #[test]
    fn strong_penalty_shrinks_weights() {
        // With C tiny the weights vanish and the log-odds tend to the
        // intercept alone, log(3/3) = 0 for balanced labels.
        let x = array![[-2.0], [-1.0], [-0.5], [0.5], [1.0], [2.0]];
        let labels = [0, 0, 0, 1, 1, 1];
        let params = LogisticParams {
            c: 1e-6,
            max_iter: 1000,
        };
        let model = LogisticModel::fit(x.view(), &labels, 2, &params).unwrap();
        let scores = model.decide(x.view()).scores.unwrap();
        assert!(scores.iter().all(|s| s.abs() < 1e-3), "{scores:?}");
    }

    #[test]
    fn offset_leaves_decisions_unchanged() {
        // The intercept is unpenalized, so shifting every feature by a
        // constant must give the same decision values.
        let x = array![
            [-2.0, 1.0],
            [-1.0, -0.5],
            [-0.5, 0.3],
            [0.5, -1.0],
            [1.0, 0.2],
            [2.0, 0.0]
        ];
        let shifted = &x + 500.0;
        let labels = [0, 0, 1, 0, 1, 1];
        let params = LogisticParams::default();
        let plain = LogisticModel::fit(x.view(), &labels, 2, &params).unwrap();
        let moved = LogisticModel::fit(shifted.view(), &labels, 2, &params).unwrap();
        let a = plain.decide(x.view()).scores.unwrap();
        let b = moved.decide(shifted.view()).scores.unwrap();
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    #[test]
    fn multinomial_three_labels() {
        let x = array![
            [0.0, 0.0],
            [0.3, 0.2],
            [4.0, 0.0],
            [4.2, 0.4],
            [0.0, 4.0],
            [0.4, 4.1]
        ];
        let labels = [0, 0, 1, 1, 2, 2];
        let model = LogisticModel::fit(x.view(), &labels, 3, &LogisticParams::default()).unwrap();
        let decisions = model.decide(x.view());
        assert_eq!(decisions.predicted, labels.to_vec());
        assert_eq!(decisions.scores, None);
    }
}
