//! Linear SVM through `linfa-svm` 0.8, set up as scikit-learn's
//! `SVC(kernel="linear")`: C-SVC with the same C for both classes, no
//! feature scaling, and libsvm's stopping rule (the maximal violating pair's
//! gradient gap below `eps = 1e-3`, libsvm's default and `SVC`'s `tol`).
//! linfa's SMO solver selects working sets with the same second-order rule
//! as libsvm and computes rho the same way. Shrinking, on in libsvm, is off
//! here: it only speeds up the solver and does not change the optimum it
//! converges to.
//!
//! More than two labels are handled one-vs-one, as `SVC` does: one SVM per
//! pair of labels, each sample gets the label with the most pairwise votes,
//! and a tie goes to the lower label.

use ihs_engine::spec::SvmParams;
use linfa::dataset::Dataset;
use linfa::traits::Fit;
use linfa_svm::Svm;
use ndarray::{Array1, ArrayView1, ArrayView2, Axis};

use super::{argmax, Decisions};

/// libsvm's default stopping tolerance.
const LIBSVM_EPS: f64 = 1e-3;

/// One binary SVM: a positive decision means `positive`, else `negative`.
#[derive(Debug, Clone)]
struct PairModel {
    positive: usize,
    negative: usize,
    svm: Svm<f64, bool>,
}

impl PairModel {
    fn decision(&self, row: ArrayView1<'_, f64>) -> f64 {
        self.svm.weighted_sum(&row) - self.svm.rho
    }
}

/// A trained linear SVM (one-vs-one for more than two labels).
#[derive(Debug, Clone)]
pub struct SvmModel {
    pairs: Vec<PairModel>,
    n_labels: usize,
}

impl SvmModel {
    /// Trains on the rows of `x`; see the module documentation.
    pub fn fit(
        x: ArrayView2<'_, f64>,
        labels: &[usize],
        n_labels: usize,
        params: &SvmParams,
    ) -> Result<Self, String> {
        let mut pairs = Vec::new();
        if n_labels == 2 {
            pairs.push(fit_pair(x, labels, 1, 0, params.c)?);
        } else {
            for positive in 0..n_labels {
                for negative in positive + 1..n_labels {
                    pairs.push(fit_pair(x, labels, positive, negative, params.c)?);
                }
            }
        }
        Ok(Self { pairs, n_labels })
    }

    /// Classifies the rows of `x`; two-label models also return the decision
    /// values `w.x - rho` as scores for label 1.
    #[must_use]
    pub fn decide(&self, x: ArrayView2<'_, f64>) -> Decisions {
        if self.n_labels == 2 {
            let pair = &self.pairs[0];
            let scores: Vec<f64> = x.outer_iter().map(|row| pair.decision(row)).collect();
            let predicted = scores.iter().map(|&s| usize::from(s > 0.0)).collect();
            return Decisions {
                predicted,
                scores: Some(scores),
            };
        }

        let predicted = x
            .outer_iter()
            .map(|row| {
                let mut votes = vec![0.0; self.n_labels];
                for pair in &self.pairs {
                    let winner = if pair.decision(row) > 0.0 {
                        pair.positive
                    } else {
                        pair.negative
                    };
                    votes[winner] += 1.0;
                }
                argmax(votes)
            })
            .collect();
        Decisions {
            predicted,
            scores: None,
        }
    }
}

/// Trains one SVM on the samples labelled `positive` or `negative`.
fn fit_pair(
    x: ArrayView2<'_, f64>,
    labels: &[usize],
    positive: usize,
    negative: usize,
    c: f64,
) -> Result<PairModel, String> {
    let rows: Vec<usize> = (0..labels.len())
        .filter(|&i| labels[i] == positive || labels[i] == negative)
        .collect();
    let records = x.select(Axis(0), &rows);
    let targets: Array1<bool> = rows.iter().map(|&i| labels[i] == positive).collect();
    let dataset = Dataset::new(records, targets);
    let svm = Svm::<f64, bool>::params()
        .pos_neg_weights(c, c)
        .linear_kernel()
        .eps(LIBSVM_EPS)
        .shrinking(false)
        .fit(&dataset)
        .map_err(|error| format!("linfa-svm: {error}"))?;
    Ok(PairModel {
        positive,
        negative,
        svm,
    })
}

#[cfg(test)]
mod tests {
    use ihs_engine::spec::SvmParams;
    use ndarray::array;

    use super::SvmModel;

    #[test]
    fn separates_two_points_per_class() {
        let x = array![[-2.0, 0.0], [-1.0, 0.5], [1.0, -0.5], [2.0, 0.0]];
        let labels = [0, 0, 1, 1];
        let model = SvmModel::fit(x.view(), &labels, 2, &SvmParams::default()).unwrap();
        let decisions = model.decide(x.view());
        assert_eq!(decisions.predicted, vec![0, 0, 1, 1]);
        let scores = decisions.scores.unwrap();
        assert!(scores[0] < 0.0, "{scores:?}");
        assert!(scores[3] > 0.0, "{scores:?}");
    }

    #[test]
    fn hard_margin_solution() {
        // Points at x = -1 and x = 1 with C large: w = 1, rho = 0, so the
        // decision values are the coordinates themselves.
        let x = array![[-1.0], [-3.0], [1.0], [3.0]];
        let params = SvmParams {
            c: 100.0,
            max_train_samples: None,
        };
        let model = SvmModel::fit(x.view(), &[0, 0, 1, 1], 2, &params).unwrap();
        let scores = model.decide(x.view()).scores.unwrap();
        for (score, expected) in scores.iter().zip([-1.0, -3.0, 1.0, 3.0]) {
            assert!((score - expected).abs() < 1e-2, "{scores:?}");
        }
    }

    #[test]
    fn one_vs_one_three_labels() {
        let x = array![
            [0.0, 0.0],
            [0.2, 0.1],
            [5.0, 0.0],
            [5.1, 0.3],
            [0.0, 5.0],
            [0.3, 5.2]
        ];
        let labels = [0, 0, 1, 1, 2, 2];
        let model = SvmModel::fit(x.view(), &labels, 3, &SvmParams::default()).unwrap();
        let decisions = model.decide(x.view());
        assert_eq!(decisions.predicted, labels.to_vec());
        assert_eq!(decisions.scores, None);
    }
}
