//! The sweep: every task, classifier and layer, trained in parallel with
//! rayon. Each training run (a unit, or one fold of a unit) draws its random
//! numbers from a generator derived from the seed, the task, the classifier,
//! the layer and the fold. Results are collected in a fixed order, so the
//! output is the same whatever the thread count.

use std::path::Path;
use std::time::Instant;

use ihs_engine::spec::ProbeSection;
use ihs_store::{read_layer, LayerMatrix};
use ndarray::{Array2, Axis};
use rayon::prelude::*;

use crate::classifier::{ClassifierKind, ClassifierSpec, Decisions};
use crate::error::ProbeError;
use crate::metrics::{evaluate, mean_std, Evaluation};
use crate::plan::{Prompts, Sample, TaskPlan};
use crate::seed::derived_rng;

/// The evaluation a metrics or prediction row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Split {
    /// The held-out share of the task's classes.
    Test,
    /// A transfer task's `eval_class` prompts.
    Transfer,
    /// Cross-validation over the training samples.
    Cv,
}

impl Split {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Test => "test",
            Self::Transfer => "transfer",
            Self::Cv => "cv",
        }
    }
}

/// One row of `metrics.parquet`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsRow {
    pub task: String,
    pub classifier: ClassifierKind,
    pub layer: usize,
    pub split: Split,
    /// Label names, the order of the per-class lists and the confusion matrix.
    pub classes: Vec<String>,
    pub evaluation: Evaluation,
    pub n_train: usize,
    pub n_test: usize,
    pub train_seconds: f64,
    /// Mean and population standard deviation of the fold accuracies
    /// (`cv` rows only).
    pub cv_mean: Option<f64>,
    pub cv_std: Option<f64>,
}

/// One row of `predictions.parquet`: one prompt classified by one unit.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictionRow {
    pub prompt_id: String,
    pub task: String,
    pub classifier: ClassifierKind,
    pub layer: usize,
    pub split: Split,
    /// The fold whose model classified the prompt (`cv` rows only).
    pub fold: Option<usize>,
    /// The prompt's dataset class.
    pub class: String,
    /// The expected label (`eval_label` for transfer rows).
    pub label: String,
    pub predicted: String,
    /// Decision score for the task's second class (two-class tasks only).
    pub score: Option<f64>,
}

/// One row of `splits.parquet`: where a prompt goes in one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitRow {
    pub prompt_id: String,
    pub task: String,
    pub class: String,
    pub label: String,
    /// `train`, `test` or `transfer`.
    pub split: &'static str,
    /// Cross-validation fold of a training prompt.
    pub fold: Option<usize>,
    /// Whether the SVM trains on this prompt (`max_train_samples`).
    pub svm_train: bool,
}

/// Everything a sweep produces.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeResults {
    pub metrics: Vec<MetricsRow>,
    pub predictions: Vec<PredictionRow>,
    pub splits: Vec<SplitRow>,
    /// Residual-stream indices probed, ascending.
    pub layers: Vec<usize>,
    /// Training runs, folds included.
    pub fits: usize,
}

/// Returns the layers stored under `activations` (folders `layer=LLL`),
/// ascending.
pub fn list_layers(activations: &Path) -> Result<Vec<usize>, ProbeError> {
    let entries = std::fs::read_dir(activations).map_err(|source| ProbeError::ListLayers {
        dir: activations.to_owned(),
        source,
    })?;
    let mut layers = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ProbeError::ListLayers {
            dir: activations.to_owned(),
            source,
        })?;
        let name = entry.file_name();
        let layer = name
            .to_str()
            .and_then(|name| name.strip_prefix("layer="))
            .and_then(|index| index.parse::<usize>().ok());
        if let Some(layer) = layer {
            if entry.path().is_dir() {
                layers.push(layer);
            }
        }
    }
    layers.sort_unstable();
    if layers.is_empty() {
        return Err(ProbeError::NoLayers {
            dir: activations.to_owned(),
        });
    }
    Ok(layers)
}

/// Runs every task and classifier on every layer under `activations`.
/// `before_layer` is called with each layer before it is read (return an
/// error to stop), `after_layer` once its units are done.
pub fn run_sweep<E: From<ProbeError>>(
    activations: &Path,
    section: &ProbeSection,
    mut before_layer: impl FnMut(usize) -> Result<(), E>,
    mut after_layer: impl FnMut(usize),
) -> Result<ProbeResults, E> {
    let layers = list_layers(activations)?;
    let mut sweep: Option<Sweep> = None;
    let mut results = ProbeResults {
        layers: layers.clone(),
        ..ProbeResults::default()
    };
    for &layer in &layers {
        before_layer(layer)?;
        let matrix = read_layer(activations, layer)
            .map_err(|source| ProbeError::ReadLayer { layer, source })?;
        let sweep = match &mut sweep {
            Some(sweep) => sweep,
            None => sweep.insert(Sweep::new(section, &matrix)?),
        };
        let started = Instant::now();
        let output = sweep.run_layer(&matrix)?;
        tracing::info!(
            layer,
            fits = output.fits,
            seconds = started.elapsed().as_secs_f64(),
            "probe layer done"
        );
        results.metrics.extend(output.metrics);
        results.predictions.extend(output.predictions);
        results.fits += output.fits;
        after_layer(layer);
    }
    if let Some(sweep) = &sweep {
        results.splits = sweep.split_rows();
    }
    Ok(results)
}

/// The plans of a sweep, built from the first layer read and applied to
/// every layer.
#[derive(Debug, Clone)]
pub struct Sweep {
    seed: u64,
    prompts: Prompts,
    /// Row count of every layer matrix.
    rows: usize,
    /// The layer the plans were built from.
    first_layer: usize,
    plans: Vec<TaskPlan>,
    classifiers: Vec<ClassifierSpec>,
}

/// The metrics and predictions of one layer.
#[derive(Debug, Clone, Default)]
pub struct LayerOutput {
    pub metrics: Vec<MetricsRow>,
    pub predictions: Vec<PredictionRow>,
    pub fits: usize,
}

/// One training run: a task, a classifier and the main split or one fold.
#[derive(Debug, Clone, Copy)]
struct Job {
    task: usize,
    classifier: usize,
    fold: Option<usize>,
}

/// One set of samples a trained model classified.
struct Scored {
    split: Split,
    prompts: Vec<usize>,
    truth: Vec<usize>,
    decisions: Decisions,
    n_train: usize,
}

/// One fold's evaluation, kept until the unit's `cv` row is built.
struct FoldResult {
    evaluation: Evaluation,
    n_train: usize,
    n_test: usize,
    seconds: f64,
}

struct JobOutput {
    seconds: f64,
    scored: Vec<Scored>,
}

impl Sweep {
    /// Builds the task plans from the prompts stored in `first`.
    pub fn new(section: &ProbeSection, first: &LayerMatrix) -> Result<Self, ProbeError> {
        let prompts = Prompts::from_layer(first);
        let plans = section
            .tasks
            .iter()
            .map(|task| TaskPlan::build(task, &prompts, section))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            seed: section.seed,
            prompts,
            rows: first.prompt_ids.len(),
            first_layer: first.layer,
            plans,
            classifiers: ClassifierSpec::enabled(&section.classifiers),
        })
    }

    #[must_use]
    pub fn plans(&self) -> &[TaskPlan] {
        &self.plans
    }

    #[must_use]
    pub fn prompts(&self) -> &Prompts {
        &self.prompts
    }

    /// Returns each task's assignment of prompts to train, test, transfer
    /// and folds.
    #[must_use]
    pub fn split_rows(&self) -> Vec<SplitRow> {
        let mut rows = Vec::new();
        for plan in &self.plans {
            let row = |sample: &Sample, split: &'static str| SplitRow {
                prompt_id: self.prompts.ids[sample.prompt].clone(),
                task: plan.name.clone(),
                class: self.prompts.classes[sample.prompt].clone(),
                label: plan.classes[sample.label].clone(),
                split,
                fold: sample.fold,
                svm_train: split == "train" && sample.svm,
            };
            rows.extend(plan.train.iter().map(|sample| row(sample, "train")));
            rows.extend(plan.test.iter().map(|sample| row(sample, "test")));
            if let Some(transfer) = &plan.transfer {
                rows.extend(transfer.prompts.iter().map(|&prompt| SplitRow {
                    prompt_id: self.prompts.ids[prompt].clone(),
                    task: plan.name.clone(),
                    class: transfer.class.clone(),
                    label: plan.classes[transfer.label].clone(),
                    split: "transfer",
                    fold: None,
                    svm_train: false,
                }));
            }
        }
        rows
    }

    /// Trains and evaluates every task and classifier on one layer.
    pub fn run_layer(&self, matrix: &LayerMatrix) -> Result<LayerOutput, ProbeError> {
        let features = self.features(matrix)?;
        let jobs = self.jobs();
        let outputs: Vec<Result<JobOutput, ProbeError>> = jobs
            .par_iter()
            .map(|job| self.run_job(*job, matrix.layer, &features))
            .collect();

        let mut output = LayerOutput {
            fits: jobs.len(),
            ..LayerOutput::default()
        };
        let mut folds: Vec<FoldResult> = Vec::new();
        for (job, result) in jobs.iter().zip(outputs) {
            let result = result?;
            let plan = &self.plans[job.task];
            let classifier = self.classifiers[job.classifier].kind();
            for scored in &result.scored {
                self.push_predictions(
                    &mut output,
                    plan,
                    classifier,
                    matrix.layer,
                    job.fold,
                    scored,
                );
                let evaluation = evaluate(
                    &scored.truth,
                    &scored.decisions.predicted,
                    scored.decisions.scores.as_deref(),
                    plan.classes.len(),
                );
                if scored.split == Split::Cv {
                    folds.push(FoldResult {
                        evaluation,
                        n_train: scored.n_train,
                        n_test: scored.truth.len(),
                        seconds: result.seconds,
                    });
                    continue;
                }
                output.metrics.push(MetricsRow {
                    task: plan.name.clone(),
                    classifier,
                    layer: matrix.layer,
                    split: scored.split,
                    classes: plan.classes.clone(),
                    evaluation,
                    n_train: scored.n_train,
                    n_test: scored.truth.len(),
                    train_seconds: result.seconds,
                    cv_mean: None,
                    cv_std: None,
                });
            }
            let last_fold = plan.folds.map(|k| k - 1);
            if job.fold.is_some() && job.fold == last_fold {
                let row = cv_row(plan, classifier, matrix.layer, &folds);
                output.metrics.push(row);
                folds.clear();
            }
        }
        Ok(output)
    }

    /// Returns the prompts' states of one layer as f64 rows in prompt order,
    /// after checking that the layer contains the same prompts as the first.
    fn features(&self, matrix: &LayerMatrix) -> Result<Array2<f64>, ProbeError> {
        let same_prompts = matrix.prompt_ids.len() == self.rows
            && self
                .prompts
                .rows
                .iter()
                .zip(&self.prompts.ids)
                .all(|(&row, id)| matrix.prompt_ids[row] == *id);
        if !same_prompts {
            return Err(ProbeError::LayerMismatch {
                layer: matrix.layer,
                first_layer: self.first_layer,
                expected: self.rows,
                found: matrix.prompt_ids.len(),
            });
        }
        let features = matrix
            .states
            .select(Axis(0), &self.prompts.rows)
            .mapv(f64::from);
        for (prompt, row) in features.outer_iter().enumerate() {
            if row.iter().any(|v| !v.is_finite()) {
                return Err(ProbeError::NonFinite {
                    layer: matrix.layer,
                    prompt_id: self.prompts.ids[prompt].clone(),
                });
            }
        }
        if let Some(first) = features.outer_iter().next() {
            if features.outer_iter().all(|row| row == first) {
                tracing::warn!(
                    layer = matrix.layer,
                    "every prompt has the same state at this layer (the same last token, \
                     before any attention); its probes can only predict one class"
                );
            }
        }
        Ok(features)
    }

    fn jobs(&self) -> Vec<Job> {
        let mut jobs = Vec::new();
        for (task, plan) in self.plans.iter().enumerate() {
            for classifier in 0..self.classifiers.len() {
                jobs.push(Job {
                    task,
                    classifier,
                    fold: None,
                });
                for fold in 0..plan.folds.unwrap_or(0) {
                    jobs.push(Job {
                        task,
                        classifier,
                        fold: Some(fold),
                    });
                }
            }
        }
        jobs
    }

    fn run_job(
        &self,
        job: Job,
        layer: usize,
        features: &Array2<f64>,
    ) -> Result<JobOutput, ProbeError> {
        let plan = &self.plans[job.task];
        let spec = &self.classifiers[job.classifier];
        let kind = spec.kind();
        let uses = |sample: &&Sample| {
            (kind != ClassifierKind::Svm || sample.svm)
                && (job.fold.is_none() || sample.fold != job.fold)
        };
        let train: Vec<&Sample> = plan.train.iter().filter(uses).collect();
        let train_prompts: Vec<usize> = train.iter().map(|sample| sample.prompt).collect();
        let labels: Vec<usize> = train.iter().map(|sample| sample.label).collect();
        let x_train = features.select(Axis(0), &train_prompts);

        let fold_name = job.fold.map_or_else(|| "all".to_owned(), |f| f.to_string());
        let mut rng = derived_rng(
            self.seed,
            &[
                "unit",
                &plan.name,
                kind.name(),
                &layer.to_string(),
                &fold_name,
            ],
        );
        let started = Instant::now();
        let model = spec
            .fit(x_train.view(), &labels, plan.classes.len(), &mut rng)
            .map_err(|message| ProbeError::Training {
                task: plan.name.clone(),
                classifier: kind.name(),
                layer,
                message,
            })?;
        let seconds = started.elapsed().as_secs_f64();
        tracing::debug!(task = %plan.name, classifier = kind.name(), layer, fold = job.fold, samples = labels.len(), seconds, "probe trained");

        let score = |split: Split, prompts: Vec<usize>, truth: Vec<usize>| {
            let x = features.select(Axis(0), &prompts);
            Scored {
                split,
                decisions: model.decide(x.view()),
                prompts,
                truth,
                n_train: labels.len(),
            }
        };
        let mut scored = Vec::new();
        if let Some(fold) = job.fold {
            let held_out: Vec<&Sample> = plan
                .train
                .iter()
                .filter(|sample| sample.fold == Some(fold))
                .collect();
            scored.push(score(
                Split::Cv,
                held_out.iter().map(|sample| sample.prompt).collect(),
                held_out.iter().map(|sample| sample.label).collect(),
            ));
        } else {
            scored.push(score(
                Split::Test,
                plan.test.iter().map(|sample| sample.prompt).collect(),
                plan.test.iter().map(|sample| sample.label).collect(),
            ));
            if let Some(transfer) = &plan.transfer {
                scored.push(score(
                    Split::Transfer,
                    transfer.prompts.clone(),
                    vec![transfer.label; transfer.prompts.len()],
                ));
            }
        }
        Ok(JobOutput { seconds, scored })
    }

    fn push_predictions(
        &self,
        output: &mut LayerOutput,
        plan: &TaskPlan,
        classifier: ClassifierKind,
        layer: usize,
        fold: Option<usize>,
        scored: &Scored,
    ) {
        for (i, &prompt) in scored.prompts.iter().enumerate() {
            output.predictions.push(PredictionRow {
                prompt_id: self.prompts.ids[prompt].clone(),
                task: plan.name.clone(),
                classifier,
                layer,
                split: scored.split,
                fold,
                class: self.prompts.classes[prompt].clone(),
                label: plan.classes[scored.truth[i]].clone(),
                predicted: plan.classes[scored.decisions.predicted[i]].clone(),
                score: scored.decisions.scores.as_ref().map(|scores| scores[i]),
            });
        }
    }
}

/// Summarizes a unit's folds: metrics averaged over the folds, confusion
/// matrices and supports summed, accuracy's mean and spread in
/// `cv_mean`/`cv_std`, training time summed.
fn cv_row(
    plan: &TaskPlan,
    classifier: ClassifierKind,
    layer: usize,
    folds: &[FoldResult],
) -> MetricsRow {
    let k = folds.len() as f64;
    let mean = |value: &dyn Fn(&Evaluation) -> f64| {
        folds.iter().map(|f| value(&f.evaluation)).sum::<f64>() / k
    };
    let n_labels = plan.classes.len();
    let per_label = |values: &dyn Fn(&Evaluation) -> &Vec<f64>| -> Vec<f64> {
        (0..n_labels).map(|i| mean(&|e| values(e)[i])).collect()
    };
    let accuracies: Vec<f64> = folds.iter().map(|f| f.evaluation.accuracy).collect();
    let (cv_mean, cv_std) = mean_std(&accuracies);
    let roc_auc = if folds.iter().all(|f| f.evaluation.roc_auc.is_some()) {
        Some(mean(&|e| e.roc_auc.unwrap_or(f64::NAN)))
    } else {
        None
    };
    let mut confusion = vec![vec![0u64; n_labels]; n_labels];
    let mut support = vec![0u64; n_labels];
    for FoldResult { evaluation, .. } in folds {
        for (i, row) in evaluation.confusion.iter().enumerate() {
            support[i] += evaluation.support[i];
            for (j, count) in row.iter().enumerate() {
                confusion[i][j] += count;
            }
        }
    }
    let evaluation = Evaluation {
        accuracy: cv_mean,
        f1_macro: mean(&|e| e.f1_macro),
        roc_auc,
        precision: per_label(&|e| &e.precision),
        recall: per_label(&|e| &e.recall),
        f1: per_label(&|e| &e.f1),
        support,
        confusion,
    };
    let mean_count = |count: &dyn Fn(&FoldResult) -> usize| {
        (folds.iter().map(count).sum::<usize>() as f64 / k).round() as usize
    };
    MetricsRow {
        task: plan.name.clone(),
        classifier,
        layer,
        split: Split::Cv,
        classes: plan.classes.clone(),
        evaluation,
        n_train: mean_count(&|fold| fold.n_train),
        n_test: mean_count(&|fold| fold.n_test),
        train_seconds: folds.iter().map(|fold| fold.seconds).sum(),
        cv_mean: Some(cv_mean),
        cv_std: Some(cv_std),
    }
}
