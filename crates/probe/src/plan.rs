//! Task plans: which prompts each task trains and tests on, with which
//! labels. The plans are built once from the prompt list and shared by every
//! layer and classifier, so a task uses the same split throughout.
//!
//! The split is stratified by class: each class's prompts, sorted by prompt
//! id, are shuffled with a generator derived from the seed and the class
//! name, and the first `round(test_fraction * count)` go to the test set. A
//! class is therefore split the same way in every task that uses it, and the
//! split depends only on the set of prompts, not on their order in the files.

use std::collections::BTreeMap;

use ihs_engine::spec::{ProbeSection, ProbeTask, TaskKind};
use ihs_store::LayerMatrix;
use rand::seq::SliceRandom;

use crate::error::ProbeError;
use crate::seed::derived_rng;

/// The maximum number of samples the linear SVM trains on. Its solver
/// (`linfa-svm` 0.8) fills a dense n x n kernel matrix of f64 before it
/// starts, so 20,000 samples take 3.2 GB per training run, and the sweep
/// runs one training per rayon thread at a time.
pub const MAX_SVM_TRAIN_SAMPLES: usize = 20_000;

/// The prompts a sweep works on: one row of each layer matrix per prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompts {
    pub ids: Vec<String>,
    pub classes: Vec<String>,
    /// Row of the prompt's state in every layer matrix.
    pub rows: Vec<usize>,
}

impl Prompts {
    /// Picks one row per prompt from a layer matrix, in order of first
    /// appearance. A prompt stored at several positions (`last_n`) is
    /// represented by its last token, the position the probes are defined on.
    #[must_use]
    pub fn from_layer(matrix: &LayerMatrix) -> Self {
        let mut index: BTreeMap<&str, usize> = BTreeMap::new();
        let mut prompts = Self {
            ids: Vec::new(),
            classes: Vec::new(),
            rows: Vec::new(),
        };
        let mut best_position: Vec<i32> = Vec::new();
        for (row, id) in matrix.prompt_ids.iter().enumerate() {
            let position = matrix.positions.get(row).copied().unwrap_or(0);
            if let Some(&slot) = index.get(id.as_str()) {
                if position > best_position[slot] {
                    best_position[slot] = position;
                    prompts.rows[slot] = row;
                }
            } else {
                index.insert(id, prompts.ids.len());
                prompts.ids.push(id.clone());
                prompts.classes.push(matrix.classes[row].clone());
                prompts.rows.push(row);
                best_position.push(position);
            }
        }
        prompts
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Returns the prompt indices of `class`, sorted by prompt id.
    fn of_class(&self, class: &str) -> Vec<usize> {
        let mut members: Vec<usize> = (0..self.len())
            .filter(|&i| self.classes[i] == class)
            .collect();
        members.sort_by(|&a, &b| self.ids[a].cmp(&self.ids[b]));
        members
    }
}

/// One prompt of a task with its label (an index into [`TaskPlan::classes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Index into [`Prompts`].
    pub prompt: usize,
    pub label: usize,
    /// Cross-validation fold in which this training sample is tested.
    pub fold: Option<usize>,
    /// Whether the linear SVM trains on it (see `max_train_samples`).
    pub svm: bool,
}

/// The prompts of a transfer task's `eval_class`, all expected to receive
/// the label `label`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferSet {
    pub class: String,
    pub label: usize,
    /// Indices into [`Prompts`], in prompt order.
    pub prompts: Vec<usize>,
}

/// The training and evaluation samples of one task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPlan {
    pub name: String,
    pub kind: TaskKind,
    /// Label names; a label is an index into this list. For `binary` and
    /// `transfer` tasks the second class is the positive one of the scores.
    pub classes: Vec<String>,
    /// Training samples in prompt order.
    pub train: Vec<Sample>,
    /// Held-out samples in prompt order.
    pub test: Vec<Sample>,
    pub transfer: Option<TransferSet>,
    /// Number of cross-validation folds over the training samples.
    pub folds: Option<usize>,
}

impl TaskPlan {
    /// Builds the plan of `task` over `prompts` with the split settings of
    /// `section`.
    pub fn build(
        task: &ProbeTask,
        prompts: &Prompts,
        section: &ProbeSection,
    ) -> Result<Self, ProbeError> {
        let invalid = |message: String| ProbeError::InvalidTask {
            task: task.name.clone(),
            message,
        };
        let classes = match task.kind {
            TaskKind::Binary | TaskKind::Multiclass => task.classes.clone(),
            TaskKind::Transfer => task.train_classes.clone(),
        };
        if classes.len() < 2 {
            return Err(invalid(format!(
                "a task needs at least 2 classes to train on; found {}",
                classes.len()
            )));
        }
        let transfer = match task.kind {
            TaskKind::Transfer => Some(transfer_set(task, &classes, prompts).map_err(invalid)?),
            _ => None,
        };

        let mut train = Vec::new();
        let mut test = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let split = ClassSplit::new(task, class, prompts, section)?;
            train.extend(
                split
                    .train
                    .iter()
                    .zip(&split.folds)
                    .map(|(&prompt, &fold)| Sample {
                        prompt,
                        label,
                        fold,
                        svm: true,
                    }),
            );
            test.extend(split.test.iter().map(|&prompt| Sample {
                prompt,
                label,
                fold: None,
                svm: false,
            }));
        }
        train.sort_by_key(|sample| sample.prompt);
        test.sort_by_key(|sample| sample.prompt);

        let mut plan = Self {
            name: task.name.clone(),
            kind: task.kind,
            classes,
            train,
            test,
            transfer,
            folds: section.folds,
        };
        if let Some(svm) = &section.classifiers.svm {
            plan.choose_svm_subset(prompts, section.seed, svm.max_train_samples)?;
        }
        Ok(plan)
    }

    /// Returns the number of training samples per label.
    #[must_use]
    pub fn train_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for sample in &self.train {
            counts[sample.label] += 1;
        }
        counts
    }

    /// Marks the training samples the SVM uses: all of them, or a subset of
    /// `max` samples stratified by class (each class keeps at least one).
    fn choose_svm_subset(
        &mut self,
        prompts: &Prompts,
        seed: u64,
        max: Option<usize>,
    ) -> Result<(), ProbeError> {
        let total = self.train.len();
        let quotas = match max {
            Some(max) if max < total => stratified_quotas(&self.train_counts(), max),
            _ => self.train_counts(),
        };
        let chosen: usize = quotas.iter().sum();
        if chosen > MAX_SVM_TRAIN_SAMPLES {
            let bytes = (chosen as f64).powi(2) * 8.0;
            return Err(ProbeError::TooManySvmSamples {
                task: self.name.clone(),
                samples: chosen,
                limit: MAX_SVM_TRAIN_SAMPLES,
                gib: bytes / f64::from(1u32 << 30),
            });
        }
        if chosen == total {
            return Ok(());
        }

        for (label, class) in self.classes.iter().enumerate() {
            let mut members: Vec<usize> = self
                .train
                .iter()
                .enumerate()
                .filter(|(_, sample)| sample.label == label)
                .map(|(position, _)| position)
                .collect();
            members.sort_by(|&a, &b| {
                prompts.ids[self.train[a].prompt].cmp(&prompts.ids[self.train[b].prompt])
            });
            members.shuffle(&mut derived_rng(seed, &["svm-subset", class]));
            for (rank, &position) in members.iter().enumerate() {
                self.train[position].svm = rank < quotas[label];
            }
        }
        Ok(())
    }
}

/// The train and test prompts of one class, with the fold of each training
/// prompt.
struct ClassSplit {
    train: Vec<usize>,
    test: Vec<usize>,
    folds: Vec<Option<usize>>,
}

impl ClassSplit {
    fn new(
        task: &ProbeTask,
        class: &str,
        prompts: &Prompts,
        section: &ProbeSection,
    ) -> Result<Self, ProbeError> {
        let mut members = prompts.of_class(class);
        let count = members.len();
        let n_test = (section.test_fraction * count as f64).round() as usize;
        let n_test = n_test.min(count);
        let n_train = count - n_test;
        if n_test < 2 || n_train < 2 {
            return Err(ProbeError::ClassTooSmall {
                task: task.name.clone(),
                class: class.to_owned(),
                count,
                train: n_train,
                test: n_test,
                test_fraction: section.test_fraction,
            });
        }
        members.shuffle(&mut derived_rng(section.seed, &["split", class]));
        let test = members[..n_test].to_vec();
        let mut train = members[n_test..].to_vec();

        let folds = match section.folds {
            Some(k) => {
                if n_train < k {
                    return Err(ProbeError::TooFewForFolds {
                        task: task.name.clone(),
                        class: class.to_owned(),
                        train: n_train,
                        folds: k,
                    });
                }
                // Deal the shuffled training prompts out to the folds in turn,
                // so fold sizes differ by at most one.
                train.sort_by(|&a, &b| prompts.ids[a].cmp(&prompts.ids[b]));
                train.shuffle(&mut derived_rng(section.seed, &["folds", class]));
                (0..n_train).map(|rank| Some(rank % k)).collect()
            }
            None => vec![None; n_train],
        };
        Ok(Self { train, test, folds })
    }
}

/// Builds a transfer task's evaluation set, or returns why it is invalid.
fn transfer_set(
    task: &ProbeTask,
    classes: &[String],
    prompts: &Prompts,
) -> Result<TransferSet, String> {
    let class = task
        .eval_class
        .clone()
        .ok_or("a transfer task needs `eval_class`")?;
    let label_name = task
        .eval_label
        .as_ref()
        .ok_or("a transfer task needs `eval_label`")?;
    let label = classes
        .iter()
        .position(|name| name == label_name)
        .ok_or_else(|| {
            format!(
                "`eval_label` `{label_name}` is not one of `train_classes` ({})",
                classes.join(", ")
            )
        })?;
    if classes.contains(&class) {
        return Err(format!(
            "`eval_class` `{class}` is also a training class; choose a class the probe does not train on"
        ));
    }
    let mut members: Vec<usize> = (0..prompts.len())
        .filter(|&i| prompts.classes[i] == class)
        .collect();
    members.sort_unstable();
    if members.is_empty() {
        return Err(format!(
            "`eval_class` `{class}` has no prompts in the stored activations"
        ));
    }
    Ok(TransferSet {
        class,
        label,
        prompts: members,
    })
}

/// Splits `max` samples over classes in proportion to `counts` (largest
/// remainder, ties to the earlier class), with at least one per class.
fn stratified_quotas(counts: &[usize], max: usize) -> Vec<usize> {
    let total: usize = counts.iter().sum();
    let exact: Vec<f64> = counts
        .iter()
        .map(|&count| max as f64 * count as f64 / total as f64)
        .collect();
    let mut quotas: Vec<usize> = exact.iter().map(|value| value.floor() as usize).collect();
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by(|&a, &b| {
        let fraction = |i: usize| exact[i] - exact[i].floor();
        fraction(b).total_cmp(&fraction(a)).then(a.cmp(&b))
    });
    let mut left = max.saturating_sub(quotas.iter().sum());
    for &class in order.iter().cycle() {
        if left == 0 {
            break;
        }
        if quotas[class] < counts[class] {
            quotas[class] += 1;
            left -= 1;
        }
    }
    for (quota, &count) in quotas.iter_mut().zip(counts) {
        *quota = (*quota).max(1).min(count);
    }
    quotas
}

#[cfg(test)]
mod tests {
    use ihs_engine::spec::{ProbeSection, ProbeTask, TaskKind};

    use super::{stratified_quotas, Prompts, TaskPlan};
    use crate::error::ProbeError;

    fn prompts(counts: &[(&str, usize)]) -> Prompts {
        let mut prompts = Prompts {
            ids: Vec::new(),
            classes: Vec::new(),
            rows: Vec::new(),
        };
        for (class, count) in counts {
            for i in 0..*count {
                prompts.rows.push(prompts.ids.len());
                prompts.ids.push(format!("{class}-{i:04}"));
                prompts.classes.push((*class).to_owned());
            }
        }
        prompts
    }

    fn binary(name: &str, classes: &[&str]) -> ProbeTask {
        ProbeTask {
            name: name.to_owned(),
            kind: TaskKind::Binary,
            classes: classes.iter().map(|c| (*c).to_owned()).collect(),
            train_classes: Vec::new(),
            eval_class: None,
            eval_label: None,
        }
    }

    fn transfer() -> ProbeTask {
        ProbeTask {
            name: "jailbreak-transfer".to_owned(),
            kind: TaskKind::Transfer,
            classes: Vec::new(),
            train_classes: vec!["normal".to_owned(), "malicious".to_owned()],
            eval_class: Some("jailbreak".to_owned()),
            eval_label: Some("malicious".to_owned()),
        }
    }

    fn test_ids(plan: &TaskPlan, prompts: &Prompts) -> Vec<String> {
        plan.test
            .iter()
            .map(|s| prompts.ids[s.prompt].clone())
            .collect()
    }

    #[test]
    fn split_is_stratified() {
        let prompts = prompts(&[("normal", 60), ("malicious", 40)]);
        let plan = TaskPlan::build(
            &binary("t", &["normal", "malicious"]),
            &prompts,
            &ProbeSection::default(),
        )
        .unwrap();
        let test_per_label = |label| plan.test.iter().filter(|s| s.label == label).count();
        assert_eq!(test_per_label(0), 18);
        assert_eq!(test_per_label(1), 12);
        assert_eq!(plan.train_counts(), vec![42, 28]);
        for sample in plan.train.iter().chain(&plan.test) {
            let expected = ["normal", "malicious"][sample.label];
            assert_eq!(prompts.classes[sample.prompt], expected);
        }
    }

    #[test]
    fn split_is_deterministic() {
        let prompts = prompts(&[("normal", 50), ("malicious", 50)]);
        let task = binary("t", &["normal", "malicious"]);
        let first = TaskPlan::build(&task, &prompts, &ProbeSection::default()).unwrap();
        let second = TaskPlan::build(&task, &prompts, &ProbeSection::default()).unwrap();
        assert_eq!(first, second);
    }

    #[test]
    fn seed_changes_split() {
        let prompts = prompts(&[("normal", 50), ("malicious", 50)]);
        let task = binary("t", &["normal", "malicious"]);
        let first = TaskPlan::build(&task, &prompts, &ProbeSection::default()).unwrap();
        let section = ProbeSection {
            seed: 7,
            ..ProbeSection::default()
        };
        let second = TaskPlan::build(&task, &prompts, &section).unwrap();
        assert_ne!(test_ids(&first, &prompts), test_ids(&second, &prompts));
    }

    #[test]
    fn split_ignores_prompt_order() {
        let forward = prompts(&[("normal", 30), ("malicious", 30)]);
        let mut reversed = forward.clone();
        reversed.ids.reverse();
        reversed.classes.reverse();
        let task = binary("t", &["normal", "malicious"]);
        let a = TaskPlan::build(&task, &forward, &ProbeSection::default()).unwrap();
        let b = TaskPlan::build(&task, &reversed, &ProbeSection::default()).unwrap();
        let mut ids_a = test_ids(&a, &forward);
        let mut ids_b = test_ids(&b, &reversed);
        ids_a.sort();
        ids_b.sort();
        assert_eq!(ids_a, ids_b);
    }

    #[test]
    fn class_split_shared_across_tasks() {
        let prompts = prompts(&[("normal", 40), ("malicious", 40), ("jailbreak", 40)]);
        let section = ProbeSection::default();
        let pair =
            TaskPlan::build(&binary("a", &["normal", "malicious"]), &prompts, &section).unwrap();
        let all = TaskPlan::build(
            &binary("b", &["jailbreak", "normal", "malicious"]),
            &prompts,
            &section,
        )
        .unwrap();
        let pair_ids = test_ids(&pair, &prompts);
        let all_ids = test_ids(&all, &prompts);
        for id in &pair_ids {
            assert!(all_ids.contains(id), "{id} is tested in one task only");
        }
    }

    #[test]
    fn small_class_is_rejected() {
        // 4 prompts leave round(0.3 * 4) = 1 for testing.
        let prompts = prompts(&[("normal", 40), ("malicious", 4)]);
        let error = TaskPlan::build(
            &binary("harmful", &["normal", "malicious"]),
            &prompts,
            &ProbeSection::default(),
        )
        .unwrap_err();
        let ProbeError::ClassTooSmall {
            class, count, test, ..
        } = &error
        else {
            panic!("unexpected error: {error}");
        };
        assert_eq!(class, "malicious");
        assert_eq!(*count, 4);
        assert_eq!(*test, 1);
        let message = error.to_string();
        assert!(message.contains("`malicious` has 4 prompts"), "{message}");
    }

    #[test]
    fn missing_class_is_rejected() {
        let prompts = prompts(&[("normal", 40)]);
        let error = TaskPlan::build(
            &binary("harmful", &["normal", "malicious"]),
            &prompts,
            &ProbeSection::default(),
        )
        .unwrap_err();
        assert!(
            matches!(&error, ProbeError::ClassTooSmall { class, count: 0, .. } if class == "malicious"),
            "{error}"
        );
    }

    #[test]
    fn transfer_evaluates_every_eval_prompt() {
        let prompts = prompts(&[("normal", 20), ("malicious", 20), ("jailbreak", 7)]);
        let plan = TaskPlan::build(&transfer(), &prompts, &ProbeSection::default()).unwrap();
        let set = plan.transfer.as_ref().unwrap();
        assert_eq!(set.prompts.len(), 7);
        assert_eq!(set.label, 1);
        assert_eq!(plan.classes, vec!["normal", "malicious"]);
        assert!(set
            .prompts
            .iter()
            .all(|&p| prompts.classes[p] == "jailbreak"));
    }

    #[test]
    fn folds_cover_training_set() {
        let prompts = prompts(&[("normal", 30), ("malicious", 31)]);
        let section = ProbeSection {
            folds: Some(5),
            ..ProbeSection::default()
        };
        let plan =
            TaskPlan::build(&binary("t", &["normal", "malicious"]), &prompts, &section).unwrap();
        for label in 0..2 {
            let mut sizes = [0usize; 5];
            for sample in plan.train.iter().filter(|s| s.label == label) {
                sizes[sample.fold.unwrap()] += 1;
            }
            let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(max - min <= 1, "label {label}: fold sizes {sizes:?}");
        }
    }

    #[test]
    fn too_many_folds_rejected() {
        let prompts = prompts(&[("normal", 10), ("malicious", 10)]);
        let section = ProbeSection {
            folds: Some(8),
            ..ProbeSection::default()
        };
        let error = TaskPlan::build(&binary("t", &["normal", "malicious"]), &prompts, &section)
            .unwrap_err();
        assert!(
            matches!(
                error,
                ProbeError::TooFewForFolds {
                    train: 7,
                    folds: 8,
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn svm_subset_is_capped() {
        let prompts = prompts(&[("normal", 100), ("malicious", 50)]);
        let mut section = ProbeSection::default();
        section.classifiers.svm.as_mut().unwrap().max_train_samples = Some(30);
        let plan =
            TaskPlan::build(&binary("t", &["normal", "malicious"]), &prompts, &section).unwrap();
        let chosen = |label| {
            plan.train
                .iter()
                .filter(|s| s.svm && s.label == label)
                .count()
        };
        assert_eq!(chosen(0), 20);
        assert_eq!(chosen(1), 10);
    }

    #[test]
    fn svm_limit_is_enforced() {
        let prompts = prompts(&[("normal", 15_000), ("malicious", 15_000)]);
        let error = TaskPlan::build(
            &binary("t", &["normal", "malicious"]),
            &prompts,
            &ProbeSection::default(),
        )
        .unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(
                error,
                ProbeError::TooManySvmSamples {
                    samples: 21_000,
                    ..
                }
            ),
            "{message}"
        );
        assert!(message.contains("max_train_samples"), "{message}");
    }

    #[test]
    fn quotas_sum_to_max() {
        assert_eq!(stratified_quotas(&[10, 10, 10], 10), vec![4, 3, 3]);
        assert_eq!(stratified_quotas(&[90, 10], 10), vec![9, 1]);
        assert_eq!(stratified_quotas(&[99, 1], 10), vec![10, 1]);
    }
}
