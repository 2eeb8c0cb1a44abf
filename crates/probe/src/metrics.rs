//! Classification metrics with scikit-learn's conventions. Precision,
//! recall and F1 are 0 where their denominator is 0. Macro F1 averages over
//! the labels present in the truth or the predictions. ROC AUC is the
//! Mann-Whitney statistic with ties counted as one half.

/// The metrics of one set of predictions over `n` labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub accuracy: f64,
    pub f1_macro: f64,
    /// ROC AUC of the scores for label 1; `None` unless there are exactly
    /// two labels, both present in the truth, and scores.
    pub roc_auc: Option<f64>,
    /// Per label.
    pub precision: Vec<f64>,
    pub recall: Vec<f64>,
    pub f1: Vec<f64>,
    /// True samples per label.
    pub support: Vec<u64>,
    /// `confusion[truth][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
}

/// Computes the metrics of `predicted` against `truth` (labels below
/// `n_labels`); `scores` are decision scores for label 1 of a two-label task.
#[must_use]
pub fn evaluate(
    truth: &[usize],
    predicted: &[usize],
    scores: Option<&[f64]>,
    n_labels: usize,
) -> Evaluation {
    assert_eq!(truth.len(), predicted.len(), "one prediction per sample");
    let mut confusion = vec![vec![0u64; n_labels]; n_labels];
    for (&t, &p) in truth.iter().zip(predicted) {
        confusion[t][p] += 1;
    }

    let correct: u64 = (0..n_labels).map(|i| confusion[i][i]).sum();
    let accuracy = if truth.is_empty() {
        0.0
    } else {
        correct as f64 / truth.len() as f64
    };

    let mut precision = Vec::with_capacity(n_labels);
    let mut recall = Vec::with_capacity(n_labels);
    let mut f1 = Vec::with_capacity(n_labels);
    let mut support = Vec::with_capacity(n_labels);
    let mut present_f1 = Vec::new();
    for label in 0..n_labels {
        let tp = confusion[label][label];
        let actual: u64 = confusion[label].iter().sum();
        let called: u64 = confusion.iter().map(|row| row[label]).sum();
        let p = ratio(tp, called);
        let r = ratio(tp, actual);
        let f = ratio(2 * tp, actual + called);
        precision.push(p);
        recall.push(r);
        f1.push(f);
        support.push(actual);
        if actual > 0 || called > 0 {
            present_f1.push(f);
        }
    }
    let f1_macro = if present_f1.is_empty() {
        0.0
    } else {
        present_f1.iter().sum::<f64>() / present_f1.len() as f64
    };

    let roc_auc = match scores {
        Some(scores) if n_labels == 2 => {
            let positive: Vec<bool> = truth.iter().map(|&t| t == 1).collect();
            roc_auc(&positive, scores)
        }
        _ => None,
    };

    Evaluation {
        accuracy,
        f1_macro,
        roc_auc,
        precision,
        recall,
        f1,
        support,
        confusion,
    }
}

/// Returns the ROC AUC of `scores` for the `positive` samples, or `None`
/// when either class is absent. Tied scores count one half.
#[must_use]
pub fn roc_auc(positive: &[bool], scores: &[f64]) -> Option<f64> {
    assert_eq!(positive.len(), scores.len(), "one score per sample");
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }

    // Rank the scores (1-based, ties get their mean rank) and sum the ranks
    // of the positives: AUC = (R+ - n+(n+ + 1)/2) / (n+ n-).
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum = 0.0;
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && scores[order[end]] == scores[order[start]] {
            end += 1;
        }
        let mean_rank = (start + end + 1) as f64 / 2.0;
        rank_sum += mean_rank * order[start..end].iter().filter(|&&i| positive[i]).count() as f64;
        start = end;
    }
    let n_pos = n_pos as f64;
    Some((rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg as f64))
}

/// Returns the mean and the population standard deviation (numpy's default,
/// `ddof=0`) of `values`.
#[must_use]
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, variance.sqrt())
}

fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

#[cfg(test)]
mod tests {
    use super::{evaluate, mean_std, roc_auc};

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn binary_confusion_by_hand() {
        // truth:     0 0 0 0 1 1 1 1 1 1
        // predicted: 0 0 0 1 1 1 1 1 0 0
        // TN=3 FP=1 FN=2 TP=4
        let truth = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1];
        let predicted = [0, 0, 0, 1, 1, 1, 1, 1, 0, 0];
        let e = evaluate(&truth, &predicted, None, 2);
        assert_eq!(e.confusion, vec![vec![3, 1], vec![2, 4]]);
        assert!(close(e.accuracy, 0.7));
        // label 1: precision 4/5, recall 4/6, F1 = 8/11
        assert!(close(e.precision[1], 0.8));
        assert!(close(e.recall[1], 4.0 / 6.0));
        assert!(close(e.f1[1], 8.0 / 11.0));
        // label 0: precision 3/5, recall 3/4, F1 = 6/9
        assert!(close(e.precision[0], 0.6));
        assert!(close(e.recall[0], 0.75));
        assert!(close(e.f1[0], 6.0 / 9.0));
        assert!(close(e.f1_macro, f64::midpoint(8.0 / 11.0, 6.0 / 9.0)));
        assert_eq!(e.support, vec![4, 6]);
        assert_eq!(e.roc_auc, None);
    }

    #[test]
    fn multiclass_confusion_by_hand() {
        // confusion (truth rows): [2 1 0] [0 3 0] [1 1 1]
        let truth = [0, 0, 0, 1, 1, 1, 2, 2, 2];
        let predicted = [0, 0, 1, 1, 1, 1, 0, 1, 2];
        let e = evaluate(&truth, &predicted, None, 3);
        assert_eq!(
            e.confusion,
            vec![vec![2, 1, 0], vec![0, 3, 0], vec![1, 1, 1]]
        );
        assert!(close(e.accuracy, 6.0 / 9.0));
        assert!(close(e.precision[0], 2.0 / 3.0));
        assert!(close(e.precision[1], 3.0 / 5.0));
        assert!(close(e.precision[2], 1.0));
        assert!(close(e.recall[2], 1.0 / 3.0));
        // F1: 2/3, 3/4, 1/2
        assert!(close(e.f1_macro, (2.0 / 3.0 + 0.75 + 0.5) / 3.0));
    }

    #[test]
    fn absent_label_leaves_macro_average() {
        // Every sample is label 1 and one is called 0: label 0 is present
        // through the predictions, so it counts with F1 0.
        let e = evaluate(&[1, 1, 1, 1], &[1, 1, 1, 0], None, 2);
        assert!(close(e.precision[0], 0.0));
        assert!(close(e.recall[0], 0.0));
        assert!(close(e.f1_macro, 3.0 / 7.0));
        // All called 1: label 0 is absent and drops out of the average.
        let e = evaluate(&[1, 1, 1], &[1, 1, 1], None, 2);
        assert!(close(e.f1_macro, 1.0));
    }

    #[test]
    fn auc_by_hand() {
        let positive = [false, false, true, true];
        assert!(close(
            roc_auc(&positive, &[0.1, 0.4, 0.35, 0.8]).unwrap(),
            0.75
        ));
        assert!(close(
            roc_auc(&positive, &[0.0, 0.0, 0.0, 0.0]).unwrap(),
            0.5
        ));
        assert!(close(
            roc_auc(&positive, &[0.1, 0.5, 0.5, 0.9]).unwrap(),
            0.875
        ));
        assert_eq!(roc_auc(&[true, true], &[0.1, 0.2]), None);
    }

    #[test]
    fn auc_from_scores_in_evaluate() {
        let e = evaluate(
            &[0, 1, 0, 1],
            &[0, 1, 0, 1],
            Some(&[-2.0, 1.0, -0.5, 3.0]),
            2,
        );
        assert_eq!(e.roc_auc, Some(1.0));
        let e = evaluate(&[1, 1], &[1, 1], Some(&[1.0, 2.0]), 2);
        assert_eq!(e.roc_auc, None);
    }

    #[test]
    fn population_std() {
        let (mean, std) = mean_std(&[0.8, 0.9, 1.0]);
        assert!(close(mean, 0.9));
        assert!(close(std, (0.02f64 / 3.0).sqrt()));
    }
}
