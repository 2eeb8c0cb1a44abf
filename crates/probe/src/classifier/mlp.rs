//! A one-hidden-layer perceptron trained as scikit-learn's `MLPClassifier`
//! with `solver="adam"` trains it (scikit-learn 1.9,
//! `sklearn/neural_network/_multilayer_perceptron.py`), on inputs
//! standardized as `StandardScaler` does.
//!
//! - Rectified linear hidden units, one logistic output for two labels or a
//!   softmax over the labels otherwise, and cross-entropy loss with
//!   probabilities clipped to `[eps, 1 - eps]`.
//! - Glorot-uniform initialization: weights and biases of each layer drawn
//!   from `U(-b, b)` with `b = sqrt(6 / (fan_in + fan_out))`.
//! - Each epoch shuffles the samples and walks through mini-batches of
//!   `min(batch, n)`. A batch's loss is its mean cross-entropy plus
//!   `alpha / 2 * ||W||^2 / n_batch` (weights only, no biases), and the
//!   gradients are `(A^T delta + alpha * W) / n_batch` and
//!   `sum(delta) / n_batch`.
//! - Adam with beta1 0.9, beta2 0.999, eps 1e-8, with the bias correction
//!   folded into the step size: `lr * sqrt(1 - beta2^t) / (1 - beta1^t)`.
//! - The epoch loss is the batch losses weighted by batch size. Training
//!   stops after `max_epochs`, or once the loss has failed to drop below the
//!   best loss so far minus `tol` for more than `patience` epochs in a row.
//!
//! The random numbers come from the caller's generator, so the weights
//! differ from scikit-learn's for the same seed; only the procedure matches.
//! [`MlpModel::train`] starts from given weights and can skip the shuffle,
//! which lets a test replay scikit-learn's training step by step.

use ihs_engine::spec::MlpParams;
use ndarray::{Array1, Array2, ArrayView2, Axis, Zip};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{argmax, Decisions};

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;

/// Per-feature standardization with the mean and population standard
/// deviation of the training rows, as scikit-learn's `StandardScaler` does.
/// A feature that is constant up to rounding keeps scale 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Standardizer {
    mean: Array1<f64>,
    scale: Array1<f64>,
}

impl Standardizer {
    #[must_use]
    pub fn fit(x: ArrayView2<'_, f64>) -> Self {
        let n = x.nrows().max(1) as f64;
        let mean = x.sum_axis(Axis(0)) / n;
        let mut variance = Array1::<f64>::zeros(x.ncols());
        for row in x.outer_iter() {
            Zip::from(&mut variance)
                .and(&row)
                .and(&mean)
                .for_each(|v, &value, &m| *v += (value - m).powi(2));
        }
        let scale = Zip::from(&variance).and(&mean).map_collect(|&v, &m| {
            let std = (v / n).sqrt();
            // Rows that are equal still leave rounding noise in the
            // deviations, of the order of eps * |mean|.
            if std <= 10.0 * f64::EPSILON * m.abs().max(1.0) {
                1.0
            } else {
                std
            }
        });
        Self { mean, scale }
    }

    #[must_use]
    pub fn transform(&self, x: ArrayView2<'_, f64>) -> Array2<f64> {
        (&x - &self.mean) / &self.scale
    }
}

/// The parameters of a one-hidden-layer perceptron, in scikit-learn's
/// layout (`coefs_` and `intercepts_`): inputs x hidden, hidden x outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct MlpWeights {
    pub hidden_weights: Array2<f64>,
    pub hidden_bias: Array1<f64>,
    pub output_weights: Array2<f64>,
    pub output_bias: Array1<f64>,
}

impl MlpWeights {
    /// Draws Glorot-uniform weights and biases: each layer's from `U(-b, b)`,
    /// `b = sqrt(6 / (fan_in + fan_out))`.
    #[must_use]
    pub fn glorot(inputs: usize, hidden: usize, outputs: usize, rng: &mut ChaCha8Rng) -> Self {
        let (hidden_weights, hidden_bias) = glorot(inputs, hidden, rng);
        let (output_weights, output_bias) = glorot(hidden, outputs, rng);
        Self {
            hidden_weights,
            hidden_bias,
            output_weights,
            output_bias,
        }
    }
}

/// Returns the number of output units: one logistic unit for two labels,
/// one softmax unit per label otherwise.
#[must_use]
pub fn output_units(n_labels: usize) -> usize {
    if n_labels == 2 {
        1
    } else {
        n_labels
    }
}

/// A trained one-hidden-layer perceptron.
#[derive(Debug, Clone)]
pub struct MlpModel {
    scaler: Standardizer,
    weights: MlpWeights,
    /// Training loss of each epoch run.
    pub loss_curve: Vec<f64>,
}

impl MlpModel {
    /// Trains on the rows of `x` from Glorot-uniform weights, shuffling every
    /// epoch; see the module documentation.
    pub fn fit(
        x: ArrayView2<'_, f64>,
        labels: &[usize],
        n_labels: usize,
        params: &MlpParams,
        rng: &mut ChaCha8Rng,
    ) -> Self {
        let weights = MlpWeights::glorot(x.ncols(), params.hidden, output_units(n_labels), rng);
        Self::train(x, labels, n_labels, params, weights, Some(rng))
    }

    /// Trains on the rows of `x` from `weights`. With `shuffle` the samples
    /// are shuffled every epoch; without it every epoch walks them in order.
    ///
    /// # Panics
    ///
    /// When the shapes of `weights` do not fit `x`, `params.hidden` and
    /// `n_labels`.
    #[must_use]
    pub fn train(
        x: ArrayView2<'_, f64>,
        labels: &[usize],
        n_labels: usize,
        params: &MlpParams,
        weights: MlpWeights,
        mut shuffle: Option<&mut ChaCha8Rng>,
    ) -> Self {
        let outputs = output_units(n_labels);
        assert_eq!(weights.hidden_weights.dim(), (x.ncols(), params.hidden));
        assert_eq!(weights.output_weights.dim(), (params.hidden, outputs));
        let scaler = Standardizer::fit(x);
        let inputs = scaler.transform(x);
        let n = inputs.nrows();
        let targets = one_hot(labels, outputs);

        let mut model = Self {
            scaler,
            weights,
            loss_curve: Vec::new(),
        };
        let mut adam = Adam::new(&model.weights, params.lr);

        let batch = params.batch.clamp(1, n.max(1));
        let mut order: Vec<usize> = (0..n).collect();
        let mut best_loss = f64::INFINITY;
        let mut stalled = 0;
        for _ in 0..params.max_epochs {
            if let Some(rng) = shuffle.as_deref_mut() {
                order.shuffle(rng);
            }
            let mut weighted_loss = 0.0;
            for chunk in order.chunks(batch) {
                let x_batch = inputs.select(Axis(0), chunk);
                let y_batch = targets.select(Axis(0), chunk);
                let (loss, gradients) = model.backprop(&x_batch, &y_batch, params.alpha);
                adam.step(&mut model.weights, &gradients);
                weighted_loss += loss * chunk.len() as f64;
            }
            let loss = weighted_loss / n as f64;
            model.loss_curve.push(loss);

            if loss > best_loss - params.tol {
                stalled += 1;
            } else {
                stalled = 0;
            }
            best_loss = best_loss.min(loss);
            if stalled > params.patience {
                break;
            }
        }
        model
    }

    #[must_use]
    pub fn weights(&self) -> &MlpWeights {
        &self.weights
    }

    /// Returns the number of epochs run.
    #[must_use]
    pub fn epochs(&self) -> usize {
        self.loss_curve.len()
    }

    /// Classifies the rows of `x`; a two-label model also returns the output
    /// unit's log-odds of label 1 as scores.
    #[must_use]
    pub fn decide(&self, x: ArrayView2<'_, f64>) -> Decisions {
        let inputs = self.scaler.transform(x);
        let (_, logits) = self.forward(&inputs);
        if logits.ncols() == 1 {
            let scores: Vec<f64> = logits.column(0).to_vec();
            let predicted = scores.iter().map(|&s| usize::from(s > 0.0)).collect();
            Decisions {
                predicted,
                scores: Some(scores),
            }
        } else {
            let predicted = logits
                .outer_iter()
                .map(|row| argmax(row.iter().copied()))
                .collect();
            Decisions {
                predicted,
                scores: None,
            }
        }
    }

    /// Returns the hidden activations and the output logits.
    fn forward(&self, inputs: &Array2<f64>) -> (Array2<f64>, Array2<f64>) {
        let w = &self.weights;
        let mut hidden = inputs.dot(&w.hidden_weights) + &w.hidden_bias;
        hidden.mapv_inplace(|v| v.max(0.0));
        let logits = hidden.dot(&w.output_weights) + &w.output_bias;
        (hidden, logits)
    }

    /// Returns one batch's loss and gradients.
    fn backprop(&self, x: &Array2<f64>, y: &Array2<f64>, alpha: f64) -> (f64, Gradients) {
        let n = x.nrows() as f64;
        let (hidden, logits) = self.forward(x);
        let probabilities = output_activation(logits);

        let w = &self.weights;
        let penalty = sum_of_squares(&w.hidden_weights) + sum_of_squares(&w.output_weights);
        let loss = cross_entropy(y, &probabilities) + 0.5 * alpha * penalty / n;

        // For a logistic or softmax output with cross-entropy, the gradient
        // at the output's pre-activation is p - y.
        let output_delta = &probabilities - y;
        let output_weights = (hidden.t().dot(&output_delta) + &w.output_weights * alpha) / n;
        let output_bias = output_delta.sum_axis(Axis(0)) / n;

        let mut hidden_delta = output_delta.dot(&w.output_weights.t());
        Zip::from(&mut hidden_delta)
            .and(&hidden)
            .for_each(|delta, &activation| {
                if activation == 0.0 {
                    *delta = 0.0;
                }
            });
        let hidden_weights = (x.t().dot(&hidden_delta) + &w.hidden_weights * alpha) / n;
        let hidden_bias = hidden_delta.sum_axis(Axis(0)) / n;

        let gradients = Gradients {
            hidden_weights,
            hidden_bias,
            output_weights,
            output_bias,
        };
        (loss, gradients)
    }
}

struct Gradients {
    hidden_weights: Array2<f64>,
    hidden_bias: Array1<f64>,
    output_weights: Array2<f64>,
    output_bias: Array1<f64>,
}

/// Adam's first and second moment estimates, one pair per parameter array.
struct Adam {
    lr: f64,
    step: i32,
    hidden_weights: (Array2<f64>, Array2<f64>),
    hidden_bias: (Array1<f64>, Array1<f64>),
    output_weights: (Array2<f64>, Array2<f64>),
    output_bias: (Array1<f64>, Array1<f64>),
}

impl Adam {
    fn new(model: &MlpWeights, lr: f64) -> Self {
        let zeros2 = |a: &Array2<f64>| (Array2::zeros(a.raw_dim()), Array2::zeros(a.raw_dim()));
        let zeros1 = |a: &Array1<f64>| (Array1::zeros(a.raw_dim()), Array1::zeros(a.raw_dim()));
        Self {
            lr,
            step: 0,
            hidden_weights: zeros2(&model.hidden_weights),
            hidden_bias: zeros1(&model.hidden_bias),
            output_weights: zeros2(&model.output_weights),
            output_bias: zeros1(&model.output_bias),
        }
    }

    fn step(&mut self, model: &mut MlpWeights, gradients: &Gradients) {
        self.step += 1;
        let rate = self.lr * (1.0 - BETA2.powi(self.step)).sqrt() / (1.0 - BETA1.powi(self.step));
        let update = |param: &mut f64, m: &mut f64, v: &mut f64, &g: &f64| {
            *m = BETA1 * *m + (1.0 - BETA1) * g;
            *v = BETA2 * *v + (1.0 - BETA2) * g * g;
            *param -= rate * *m / (v.sqrt() + ADAM_EPS);
        };
        let (m, v) = &mut self.hidden_weights;
        Zip::from(&mut model.hidden_weights)
            .and(m)
            .and(v)
            .and(&gradients.hidden_weights)
            .for_each(update);
        let (m, v) = &mut self.hidden_bias;
        Zip::from(&mut model.hidden_bias)
            .and(m)
            .and(v)
            .and(&gradients.hidden_bias)
            .for_each(update);
        let (m, v) = &mut self.output_weights;
        Zip::from(&mut model.output_weights)
            .and(m)
            .and(v)
            .and(&gradients.output_weights)
            .for_each(update);
        let (m, v) = &mut self.output_bias;
        Zip::from(&mut model.output_bias)
            .and(m)
            .and(v)
            .and(&gradients.output_bias)
            .for_each(update);
    }
}

fn glorot(fan_in: usize, fan_out: usize, rng: &mut ChaCha8Rng) -> (Array2<f64>, Array1<f64>) {
    let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
    let weights =
        Array2::from_shape_simple_fn((fan_in, fan_out), || rng.random_range(-bound..bound));
    let bias = Array1::from_shape_simple_fn(fan_out, || rng.random_range(-bound..bound));
    (weights, bias)
}

/// Returns the training targets: a 0/1 column for label 1 when there is one
/// output, one-hot rows otherwise.
fn one_hot(labels: &[usize], outputs: usize) -> Array2<f64> {
    let mut targets = Array2::zeros((labels.len(), outputs));
    for (row, &label) in labels.iter().enumerate() {
        if outputs == 1 {
            targets[(row, 0)] = if label == 1 { 1.0 } else { 0.0 };
        } else {
            targets[(row, label)] = 1.0;
        }
    }
    targets
}

/// Applies the logistic function to a single output column, or a softmax
/// over each row.
fn output_activation(mut logits: Array2<f64>) -> Array2<f64> {
    if logits.ncols() == 1 {
        logits.mapv_inplace(|z| 1.0 / (1.0 + (-z).exp()));
    } else {
        for mut row in logits.outer_iter_mut() {
            let max = row.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            row.mapv_inplace(|z| (z - max).exp());
            let sum = row.sum();
            row.mapv_inplace(|e| e / sum);
        }
    }
    logits
}

/// Returns the mean cross-entropy of `probabilities` (clipped to
/// `[eps, 1 - eps]`) against `targets`; a single column is a binary
/// problem with both outcomes counted.
fn cross_entropy(targets: &Array2<f64>, probabilities: &Array2<f64>) -> f64 {
    let clip = |p: f64| p.clamp(f64::EPSILON, 1.0 - f64::EPSILON);
    let binary = probabilities.ncols() == 1;
    let mut total = 0.0;
    Zip::from(targets).and(probabilities).for_each(|&y, &p| {
        let p = clip(p);
        if y > 0.0 {
            total -= y * p.ln();
        }
        if binary && y < 1.0 {
            total -= (1.0 - y) * (1.0 - p).ln();
        }
    });
    total / targets.nrows() as f64
}

fn sum_of_squares(a: &Array2<f64>) -> f64 {
    a.iter().map(|v| v * v).sum()
}

#[cfg(test)]
mod tests {
    use ihs_engine::spec::MlpParams;
    use ndarray::{array, Array2};
    use rand::Rng;

    use super::{cross_entropy, MlpModel, Standardizer};
    use crate::seed::derived_rng;

    /// Four clusters of uniform noise around (+-1, +-1). The label is the XOR
    /// of the signs, which no linear classifier separates.
    fn xor_data(n: usize, seed: u64) -> (Array2<f64>, Vec<usize>) {
        let mut rng = derived_rng(seed, &["xor"]);
        let mut x = Array2::zeros((n, 2));
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let a = i % 2;
            let b = (i / 2) % 2;
            let noise: f64 = rng.random_range(-0.3..0.3);
            x[(i, 0)] = if a == 1 { 1.0 } else { -1.0 } + noise;
            let noise: f64 = rng.random_range(-0.3..0.3);
            x[(i, 1)] = if b == 1 { 1.0 } else { -1.0 } + noise;
            labels.push(a ^ b);
        }
        (x, labels)
    }

    fn accuracy(model: &MlpModel, x: &Array2<f64>, labels: &[usize]) -> f64 {
        let predicted = model.decide(x.view()).predicted;
        let correct = predicted.iter().zip(labels).filter(|(p, l)| p == l).count();
        correct as f64 / labels.len() as f64
    }

    #[test]
    fn learns_xor() {
        let (x, labels) = xor_data(200, 1);
        let (test_x, test_labels) = xor_data(100, 2);
        let mut rng = derived_rng(42, &["mlp"]);
        let model = MlpModel::fit(x.view(), &labels, 2, &MlpParams::default(), &mut rng);
        assert!(accuracy(&model, &x, &labels) >= 0.98);
        assert!(accuracy(&model, &test_x, &test_labels) >= 0.95);
        assert!(
            model.epochs() < MlpParams::default().max_epochs,
            "{}",
            model.epochs()
        );
    }

    #[test]
    fn learns_xor_with_three_labels() {
        // Label 2 for the (+1, +1) blob, XOR elsewhere: softmax output.
        let (x, mut labels) = xor_data(300, 3);
        for (row, label) in labels.iter_mut().enumerate() {
            if x[(row, 0)] > 0.0 && x[(row, 1)] > 0.0 {
                *label = 2;
            }
        }
        let mut rng = derived_rng(42, &["mlp"]);
        let model = MlpModel::fit(x.view(), &labels, 3, &MlpParams::default(), &mut rng);
        assert!(accuracy(&model, &x, &labels) >= 0.98);
    }

    #[test]
    fn same_seed_same_model() {
        let (x, labels) = xor_data(64, 1);
        let params = MlpParams {
            max_epochs: 20,
            ..MlpParams::default()
        };
        let a = MlpModel::fit(x.view(), &labels, 2, &params, &mut derived_rng(7, &["m"]));
        let b = MlpModel::fit(x.view(), &labels, 2, &params, &mut derived_rng(7, &["m"]));
        assert_eq!(a.decide(x.view()), b.decide(x.view()));
        assert_eq!(a.loss_curve, b.loss_curve);
        assert_eq!(a.weights(), b.weights());
    }

    #[test]
    fn stops_when_loss_stalls() {
        // Identical inputs cannot be separated, so the loss settles at
        // log(2) and training stops after patience + 1 stalled epochs.
        let x = Array2::from_elem((20, 3), 1.5);
        let labels: Vec<usize> = (0..20).map(|i| i % 2).collect();
        let mut rng = derived_rng(42, &["mlp"]);
        let model = MlpModel::fit(x.view(), &labels, 2, &MlpParams::default(), &mut rng);
        assert!(model.epochs() < 100, "{} epochs", model.epochs());
        let loss = model.loss_curve.last().unwrap();
        assert!((loss - 2f64.ln()).abs() < 0.01, "{loss}");
    }

    #[test]
    fn standardizer_matches_by_hand() {
        let x = array![[1.0, 5.0], [3.0, 5.0]];
        let scaler = Standardizer::fit(x.view());
        let scaled = scaler.transform(x.view());
        // Column 0: mean 2, population std 1; column 1 is constant.
        assert_eq!(scaled, array![[-1.0, 0.0], [1.0, 0.0]]);
    }

    #[test]
    fn binary_cross_entropy_by_hand() {
        let targets = array![[1.0], [0.0]];
        let probabilities = array![[0.8], [0.4]];
        let expected = -(0.8f64.ln() + 0.6f64.ln()) / 2.0;
        assert!((cross_entropy(&targets, &probabilities) - expected).abs() < 1e-12);
    }
}
