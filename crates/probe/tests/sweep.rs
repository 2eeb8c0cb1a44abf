//! The sweep on synthetic activation shards: results independent of the
//! thread count, the Parquet files it writes, and the stage registration.

use std::fs::File;
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type};
use ihs_engine::spec::{ProbeSection, ProbeTask, TaskKind};
use ihs_engine::Registry;
use ihs_probe::{
    register, run_sweep, write_results, ProbeError, ProbeResults, Split, METRICS_FILE,
    PREDICTIONS_FILE, SPLITS_FILE,
};
use ihs_store::{layer_dir, shard_file_name, write_activation_shard, ActivationRows, StoreDtype};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand::Rng;

const CLASSES: [&str; 3] = ["normal", "malicious", "jailbreak"];
const PER_CLASS: usize = 40;
const HIDDEN: usize = 12;
const LAYERS: usize = 4;

/// Writes `LAYERS` layers of states in two shards each. Each class is a
/// blob of uniform noise around a center that moves away from the others
/// with depth, so later layers separate the classes better. Jailbreak lies
/// between normal and malicious, nearer malicious.
fn write_synthetic(activations: &Path) {
    let mut rng = ihs_probe::derived_rng(9, &["synthetic"]);
    for layer in 0..LAYERS {
        let dir = layer_dir(activations, layer);
        std::fs::create_dir_all(&dir).unwrap();
        let spread = 0.4 * layer as f32;
        let mut shards = [ActivationRows::default(), ActivationRows::default()];
        for (c, class) in CLASSES.iter().enumerate() {
            let center = [-spread, spread, 0.6 * spread][c];
            for i in 0..PER_CLASS {
                let rows = &mut shards[i % 2];
                rows.prompt_ids.push(format!("{class}-{i:03}"));
                rows.classes.push((*class).to_owned());
                rows.positions.push(10 + i as i32);
                for d in 0..HIDDEN {
                    let noise: f32 = rng.random_range(-1.0..1.0);
                    let shift = if d < 3 { center } else { 0.0 };
                    rows.hidden.push(shift + noise);
                }
                rows.hidden_size = HIDDEN;
            }
        }
        for (index, rows) in shards.iter().enumerate() {
            let path = dir.join(shard_file_name(index));
            write_activation_shard(&path, rows, layer, StoreDtype::F32, &[]).unwrap();
        }
    }
}

fn section(folds: Option<usize>) -> ProbeSection {
    let list = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
    let mut section = ProbeSection {
        tasks: vec![
            ProbeTask {
                name: "harmful".into(),
                kind: TaskKind::Binary,
                classes: list(&["normal", "malicious"]),
                train_classes: Vec::new(),
                eval_class: None,
                eval_label: None,
            },
            ProbeTask {
                name: "three-way".into(),
                kind: TaskKind::Multiclass,
                classes: list(&CLASSES),
                train_classes: Vec::new(),
                eval_class: None,
                eval_label: None,
            },
            ProbeTask {
                name: "jailbreak-transfer".into(),
                kind: TaskKind::Transfer,
                classes: Vec::new(),
                train_classes: list(&["normal", "malicious"]),
                eval_class: Some("jailbreak".into()),
                eval_label: Some("malicious".into()),
            },
        ],
        folds,
        ..ProbeSection::default()
    };
    // Fewer epochs keep the test fast; the procedure is the same.
    section.classifiers.mlp.as_mut().unwrap().max_epochs = 40;
    section
}

fn sweep(activations: &Path, section: &ProbeSection, threads: usize) -> ProbeResults {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let mut results = pool
        .install(|| run_sweep(activations, section, |_| Ok::<(), ProbeError>(()), |_| {}))
        .unwrap();
    for row in &mut results.metrics {
        row.train_seconds = 0.0;
    }
    results
}

fn read_parquet(path: &Path) -> RecordBatch {
    let file = File::open(path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

#[test]
fn thread_count_does_not_change_results() {
    let dir = tempfile::tempdir().unwrap();
    write_synthetic(dir.path());
    let section = section(Some(3));
    let one = sweep(dir.path(), &section, 1);
    let two = sweep(dir.path(), &section, 2);

    assert_eq!(one.metrics.len(), two.metrics.len());
    for (a, b) in one.metrics.iter().zip(&two.metrics) {
        assert_eq!(a, b, "{} {} layer {}", a.task, a.classifier.name(), a.layer);
    }
    assert_eq!(one.predictions.len(), two.predictions.len());
    for (a, b) in one.predictions.iter().zip(&two.predictions) {
        assert_eq!(a.predicted, b.predicted);
        // Bit for bit, not within a tolerance.
        assert_eq!(a.score.map(f64::to_bits), b.score.map(f64::to_bits));
    }
    assert_eq!(one.predictions, two.predictions);
    assert_eq!(one.splits, two.splits);
}

#[test]
fn sweep_covers_every_unit() {
    let dir = tempfile::tempdir().unwrap();
    write_synthetic(dir.path());
    let results = sweep(dir.path(), &section(Some(3)), 2);

    assert_eq!(results.layers, vec![0, 1, 2, 3]);
    // Per layer and classifier: harmful test + cv, three-way test + cv,
    // transfer test + transfer + cv.
    assert_eq!(results.metrics.len(), LAYERS * 3 * 7);
    // Each unit trains once plus once per fold.
    assert_eq!(results.fits, LAYERS * 3 * 3 * 4);

    let accuracy = |task: &str, layer: usize, split: Split| {
        let rows: Vec<f64> = results
            .metrics
            .iter()
            .filter(|r| r.task == task && r.layer == layer && r.split == split)
            .map(|r| r.evaluation.accuracy)
            .collect();
        assert_eq!(rows.len(), 3, "{task} layer {layer} {split:?}");
        rows
    };
    // Layer 0 has no signal; layer 3 separates normal from malicious.
    for value in accuracy("harmful", 3, Split::Test) {
        assert!(value >= 0.9, "harmful layer 3: {value}");
    }
    for value in accuracy("harmful", 0, Split::Test) {
        assert!(value <= 0.8, "harmful layer 0: {value}");
    }
    // Jailbreak states lie on the malicious side at layer 3.
    for value in accuracy("jailbreak-transfer", 3, Split::Transfer) {
        assert!(value >= 0.7, "transfer layer 3: {value}");
    }

    let cv = results
        .metrics
        .iter()
        .find(|r| r.split == Split::Cv)
        .unwrap();
    assert!(cv.cv_mean.is_some());
    assert!(cv.cv_std.is_some());
    let total: u64 = cv.evaluation.confusion.iter().flatten().sum();
    let train_size = results
        .splits
        .iter()
        .filter(|s| s.task == cv.task && s.split == "train")
        .count();
    assert_eq!(total as usize, train_size);

    let transfer = results
        .metrics
        .iter()
        .find(|r| r.split == Split::Transfer)
        .unwrap();
    assert_eq!(transfer.n_test, PER_CLASS);
    assert_eq!(transfer.evaluation.roc_auc, None);
    let test = results
        .metrics
        .iter()
        .find(|r| r.task == "harmful" && r.split == Split::Test)
        .unwrap();
    assert!(test.evaluation.roc_auc.is_some());
    assert_eq!(test.n_test, 24);
    assert_eq!(test.n_train, 56);
}

#[test]
fn results_written_as_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let activations = dir.path().join("activations");
    write_synthetic(&activations);
    let results = sweep(&activations, &section(None), 2);
    let out = dir.path().join("probe");
    std::fs::create_dir_all(&out).unwrap();
    let paths = write_results(&out, &results).unwrap();
    assert_eq!(paths.len(), 3);

    let metrics = read_parquet(&out.join(METRICS_FILE));
    assert_eq!(metrics.num_rows(), results.metrics.len());
    let layer = metrics
        .column_by_name("layer")
        .unwrap()
        .as_primitive::<Int32Type>();
    assert_eq!(layer.value(0), 0);
    let roc = metrics.column_by_name("roc_auc").unwrap();
    let multiclass_rows = results
        .metrics
        .iter()
        .filter(|r| r.evaluation.roc_auc.is_none())
        .count();
    assert_eq!(roc.null_count(), multiclass_rows);
    let accuracy = metrics
        .column_by_name("accuracy")
        .unwrap()
        .as_primitive::<Float64Type>();
    assert_eq!(accuracy.value(0), results.metrics[0].evaluation.accuracy);
    let confusion = metrics
        .column_by_name("confusion")
        .unwrap()
        .as_list::<i32>();
    let first = confusion.value(0);
    let first = first.as_list::<i32>();
    assert_eq!(first.len(), results.metrics[0].classes.len());
    let row = first.value(1);
    let row = row.as_primitive::<Int64Type>();
    assert_eq!(
        row.values().to_vec(),
        vec![
            results.metrics[0].evaluation.confusion[1][0] as i64,
            results.metrics[0].evaluation.confusion[1][1] as i64,
        ]
    );
    let classes = metrics.column_by_name("classes").unwrap().as_list::<i32>();
    let names = classes.value(0);
    assert_eq!(names.as_string::<i32>().value(1), "malicious");

    let predictions = read_parquet(&out.join(PREDICTIONS_FILE));
    assert_eq!(predictions.num_rows(), results.predictions.len());
    for column in [
        "prompt_id",
        "task",
        "classifier",
        "layer",
        "split",
        "fold",
        "class",
        "label",
        "predicted",
        "score",
    ] {
        assert!(
            predictions.column_by_name(column).is_some(),
            "predictions lack {column}"
        );
    }

    let splits = read_parquet(&out.join(SPLITS_FILE));
    assert_eq!(splits.num_rows(), results.splits.len());
    let split = splits.column_by_name("split").unwrap().as_string::<i32>();
    let transfer_rows = (0..split.len())
        .filter(|&i| split.value(i) == "transfer")
        .count();
    assert_eq!(transfer_rows, PER_CLASS);
}

#[test]
fn missing_activations_named() {
    let dir = tempfile::tempdir().unwrap();
    let error = run_sweep(
        dir.path(),
        &section(None),
        |_| Ok::<(), ProbeError>(()),
        |_| {},
    )
    .unwrap_err();
    assert!(matches!(error, ProbeError::NoLayers { .. }), "{error}");
    assert!(
        error.to_string().contains("run the `extract` stage"),
        "{error}"
    );
}

#[test]
fn stage_registers_as_probe() {
    let mut registry = Registry::new();
    register(&mut registry).unwrap();
    let stage = registry.get("probe").unwrap();
    assert_eq!(stage.name(), "probe");
    assert!(!stage.is_heavy());
    assert!(register(&mut registry).is_err());
}
