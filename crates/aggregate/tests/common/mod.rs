//! Probe metrics of two made-up models, written as `metrics.parquet` in the
//! probe stage's schema, and helpers to read the aggregate tables back.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, Float64Builder, Int32Array, Int64Array, Int64Builder, ListBuilder,
    RecordBatch, StringArray, StringBuilder,
};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use polars::prelude::*;

/// One task, classifier and split: an accuracy per layer from layer 0.
#[derive(Debug, Clone)]
pub struct Curve {
    pub task: &'static str,
    pub classifier: &'static str,
    pub split: &'static str,
    pub accuracies: Vec<f64>,
}

fn curve(
    task: &'static str,
    classifier: &'static str,
    split: &'static str,
    accuracies: &[f64],
) -> Curve {
    Curve {
        task,
        classifier,
        split,
        accuracies: accuracies.to_vec(),
    }
}

/// A model with 4 blocks (layers 0 to 4).
///
/// - harmful/svm reaches 0.95 exactly at layer 2 and peaks at layer 3.
/// - harmful/logistic never reaches 0.95; its best value is tied at layers
///   3 and 4.
/// - harmful/svm's `cv` rows are above 0.95 from layer 0 and must not count.
pub fn small_model() -> Vec<Curve> {
    vec![
        curve("harmful", "svm", "test", &[0.50, 0.80, 0.95, 0.99, 0.97]),
        curve("harmful", "svm", "cv", &[0.96, 0.97, 0.98, 0.99, 0.99]),
        curve(
            "harmful",
            "logistic",
            "test",
            &[0.55, 0.90, 0.93, 0.94, 0.94],
        ),
        curve(
            "jailbreak-transfer",
            "svm",
            "test",
            &[0.52, 0.97, 0.98, 0.99, 0.99],
        ),
        curve(
            "jailbreak-transfer",
            "svm",
            "transfer",
            &[0.10, 0.35, 0.62, 0.81, 0.74],
        ),
    ]
}

/// A model with 8 blocks (layers 0 to 8).
///
/// - harmful/svm first reaches 0.95 at layer 4 (depth 0.5); best 0.99 at
///   layers 6 and 7.
/// - harmful/logistic reaches 0.96 at layer 2, drops below and rises again:
///   its first layer is 2.
pub fn large_model() -> Vec<Curve> {
    vec![
        curve(
            "harmful",
            "svm",
            "test",
            &[0.50, 0.60, 0.70, 0.90, 0.96, 0.98, 0.99, 0.99, 0.98],
        ),
        curve(
            "harmful",
            "logistic",
            "test",
            &[0.50, 0.70, 0.96, 0.90, 0.97, 0.98, 0.98, 0.97, 0.97],
        ),
        curve(
            "jailbreak-transfer",
            "svm",
            "test",
            &[0.51, 0.75, 0.93, 0.97, 0.98, 0.99, 0.99, 0.99, 0.98],
        ),
        curve(
            "jailbreak-transfer",
            "svm",
            "transfer",
            &[0.05, 0.12, 0.30, 0.55, 0.72, 0.86, 0.91, 0.88, 0.80],
        ),
    ]
}

/// One metrics row per curve and layer, in reverse order, so that the
/// aggregate stage has to sort them.
struct Row {
    task: &'static str,
    classifier: &'static str,
    layer: i32,
    split: &'static str,
    accuracy: f64,
}

fn rows(curves: &[Curve]) -> Vec<Row> {
    let mut rows = Vec::new();
    for curve in curves {
        for (layer, &accuracy) in curve.accuracies.iter().enumerate() {
            rows.push(Row {
                task: curve.task,
                classifier: curve.classifier,
                layer: layer as i32,
                split: curve.split,
                accuracy,
            });
        }
    }
    rows.reverse();
    rows
}

/// Writes `dir/metrics.parquet` with every column of the probe stage's
/// file, zstd-compressed as the probe stage writes it.
pub fn write_metrics(dir: &Path, curves: &[Curve]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let rows = rows(curves);
    let n = rows.len();
    let text = |pick: fn(&Row) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(pick)))
    };
    let float = |values: Vec<f64>| -> ArrayRef { Arc::new(Float64Array::from(values)) };
    let count = |value: i64| -> ArrayRef { Arc::new(Int64Array::from(vec![value; n])) };

    let mut classes = ListBuilder::new(StringBuilder::new());
    let mut precision = ListBuilder::new(Float64Builder::new());
    let mut support = ListBuilder::new(Int64Builder::new());
    let mut confusion = ListBuilder::new(ListBuilder::new(Int64Builder::new()));
    for _ in &rows {
        classes.values().append_value("malicious");
        classes.values().append_value("normal");
        classes.append(true);
        precision.values().append_slice(&[0.9, 0.8]);
        precision.append(true);
        support.values().append_slice(&[30, 30]);
        support.append(true);
        for matrix_row in [[27, 3], [6, 24]] {
            confusion.values().values().append_slice(&matrix_row);
            confusion.values().append(true);
        }
        confusion.append(true);
    }
    let precision: ArrayRef = Arc::new(precision.finish());

    let columns: Vec<(&str, ArrayRef, bool)> = vec![
        ("task", text(|row| row.task), false),
        ("classifier", text(|row| row.classifier), false),
        (
            "layer",
            Arc::new(Int32Array::from_iter_values(
                rows.iter().map(|row| row.layer),
            )),
            false,
        ),
        ("split", text(|row| row.split), false),
        (
            "accuracy",
            float(rows.iter().map(|row| row.accuracy).collect()),
            false,
        ),
        (
            "f1_macro",
            float(rows.iter().map(|row| row.accuracy - 0.01).collect()),
            false,
        ),
        (
            "roc_auc",
            Arc::new(Float64Array::from(vec![None::<f64>; n])),
            true,
        ),
        ("n_train", count(140), false),
        ("n_test", count(60), false),
        ("train_seconds", float(vec![0.25; n]), false),
        (
            "cv_mean",
            Arc::new(Float64Array::from(vec![None::<f64>; n])),
            true,
        ),
        (
            "cv_std",
            Arc::new(Float64Array::from(vec![None::<f64>; n])),
            true,
        ),
        ("classes", Arc::new(classes.finish()), false),
        ("precision", precision.clone(), false),
        ("recall", precision.clone(), false),
        ("f1", precision, false),
        ("support", Arc::new(support.finish()), false),
        ("confusion", Arc::new(confusion.finish()), false),
    ];
    let batch = RecordBatch::try_from_iter_with_nullable(columns).unwrap();

    let path = dir.join("metrics.parquet");
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap()))
        .build();
    let mut writer = ArrowWriter::try_new(
        File::create(&path).unwrap(),
        batch.schema(),
        Some(properties),
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    path
}

pub fn read_parquet(path: &Path) -> DataFrame {
    let file =
        File::open(path).unwrap_or_else(|error| panic!("cannot open {}: {error}", path.display()));
    ParquetReader::new(file).finish().unwrap()
}

pub fn read_csv(path: &Path) -> DataFrame {
    CsvReadOptions::default()
        .with_has_header(true)
        .try_into_reader_with_file_path(Some(path.to_owned()))
        .unwrap()
        .finish()
        .unwrap()
}

pub fn strings(frame: &DataFrame, name: &str) -> Vec<String> {
    frame
        .column(name)
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|value| value.unwrap().to_owned())
        .collect()
}

pub fn optional_ints(frame: &DataFrame, name: &str) -> Vec<Option<i64>> {
    let column = frame.column(name).unwrap().cast(&DataType::Int64).unwrap();
    column.i64().unwrap().iter().collect()
}

pub fn ints(frame: &DataFrame, name: &str) -> Vec<i64> {
    optional_ints(frame, name)
        .into_iter()
        .map(Option::unwrap)
        .collect()
}

pub fn optional_floats(frame: &DataFrame, name: &str) -> Vec<Option<f64>> {
    let column = frame
        .column(name)
        .unwrap()
        .cast(&DataType::Float64)
        .unwrap();
    column.f64().unwrap().iter().collect()
}

pub fn floats(frame: &DataFrame, name: &str) -> Vec<f64> {
    optional_floats(frame, name)
        .into_iter()
        .map(Option::unwrap)
        .collect()
}

/// Returns the row index of the first-layer table for a model, task and
/// classifier.
pub fn find_row(frame: &DataFrame, model: &str, task: &str, classifier: &str) -> usize {
    let models = strings(frame, "model");
    let tasks = strings(frame, "task");
    let classifiers = strings(frame, "classifier");
    (0..frame.height())
        .find(|&i| models[i] == model && tasks[i] == task && classifiers[i] == classifier)
        .unwrap_or_else(|| panic!("no row for {model}/{task}/{classifier}"))
}
