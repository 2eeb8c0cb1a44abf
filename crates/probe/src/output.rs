//! The probe's Parquet files, written with arrow so that polars, pandas
//! (pyarrow) and `DuckDB` read them as they are:
//!
//! - `metrics.parquet`: one row per task, classifier, layer and split.
//!   Per-class metrics are list columns in the order of `classes`. The
//!   confusion matrix is a list of rows, where `confusion[i][j]` counts
//!   prompts of class i predicted as class j.
//! - `predictions.parquet`: one row per prompt classified by a unit.
//! - `splits.parquet`: one row per task and prompt, the assignment to
//!   train, test and transfer sets and folds that every layer and classifier
//!   of the task used.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Float64Builder, Int32Array, Int64Array, Int64Builder,
    ListBuilder, RecordBatch, StringArray, StringBuilder,
};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::error::ProbeError;
use crate::sweep::{MetricsRow, PredictionRow, ProbeResults, SplitRow};

pub const METRICS_FILE: &str = "metrics.parquet";
pub const PREDICTIONS_FILE: &str = "predictions.parquet";
pub const SPLITS_FILE: &str = "splits.parquet";

/// Writes the three files into `dir` and returns their paths.
pub fn write_results(dir: &Path, results: &ProbeResults) -> Result<Vec<PathBuf>, ProbeError> {
    let files = [
        (METRICS_FILE, metrics_batch(&results.metrics)),
        (PREDICTIONS_FILE, predictions_batch(&results.predictions)),
        (SPLITS_FILE, splits_batch(&results.splits)),
    ];
    let mut paths = Vec::new();
    for (name, batch) in files {
        let path = dir.join(name);
        let batch = batch.map_err(|error| ProbeError::write(&path, error))?;
        write_batch(&path, &batch)?;
        paths.push(path);
    }
    Ok(paths)
}

fn write_batch(path: &Path, batch: &RecordBatch) -> Result<(), ProbeError> {
    let file = File::create(path).map_err(|error| ProbeError::write(path, error))?;
    let level = ZstdLevel::try_new(3).map_err(|error| ProbeError::write(path, error))?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .build();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(properties))
        .map_err(|error| ProbeError::write(path, error))?;
    writer
        .write(batch)
        .map_err(|error| ProbeError::write(path, error))?;
    let file = writer
        .into_inner()
        .map_err(|error| ProbeError::write(path, error))?;
    file.sync_all()
        .map_err(|error| ProbeError::write(path, error))
}

fn strings<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn layers(values: impl Iterator<Item = usize>) -> ArrayRef {
    Arc::new(Int32Array::from_iter_values(values.map(|v| v as i32)))
}

fn folds(values: impl Iterator<Item = Option<usize>>) -> ArrayRef {
    Arc::new(values.map(|v| v.map(|v| v as i32)).collect::<Int32Array>())
}

fn floats(values: impl Iterator<Item = f64>) -> ArrayRef {
    Arc::new(Float64Array::from_iter_values(values))
}

fn optional_floats(values: impl Iterator<Item = Option<f64>>) -> ArrayRef {
    Arc::new(values.collect::<Float64Array>())
}

fn counts(values: impl Iterator<Item = usize>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(values.map(|v| v as i64)))
}

fn string_lists<'a>(lists: impl Iterator<Item = &'a [String]>) -> ArrayRef {
    let mut builder = ListBuilder::new(StringBuilder::new());
    for list in lists {
        for value in list {
            builder.values().append_value(value);
        }
        builder.append(true);
    }
    Arc::new(builder.finish())
}

fn float_lists<'a>(lists: impl Iterator<Item = &'a [f64]>) -> ArrayRef {
    let mut builder = ListBuilder::new(Float64Builder::new());
    for list in lists {
        builder.values().append_slice(list);
        builder.append(true);
    }
    Arc::new(builder.finish())
}

fn count_lists<'a>(lists: impl Iterator<Item = &'a [u64]>) -> ArrayRef {
    let mut builder = ListBuilder::new(Int64Builder::new());
    for list in lists {
        for &value in list {
            builder.values().append_value(value as i64);
        }
        builder.append(true);
    }
    Arc::new(builder.finish())
}

fn matrices<'a>(matrices: impl Iterator<Item = &'a [Vec<u64>]>) -> ArrayRef {
    let mut builder = ListBuilder::new(ListBuilder::new(Int64Builder::new()));
    for matrix in matrices {
        for row in matrix {
            for &value in row {
                builder.values().values().append_value(value as i64);
            }
            builder.values().append(true);
        }
        builder.append(true);
    }
    Arc::new(builder.finish())
}

fn metrics_batch(rows: &[MetricsRow]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let columns: Vec<(&str, ArrayRef, bool)> = vec![
        ("task", strings(rows.iter().map(|r| r.task.as_str())), false),
        (
            "classifier",
            strings(rows.iter().map(|r| r.classifier.name())),
            false,
        ),
        ("layer", layers(rows.iter().map(|r| r.layer)), false),
        ("split", strings(rows.iter().map(|r| r.split.name())), false),
        (
            "accuracy",
            floats(rows.iter().map(|r| r.evaluation.accuracy)),
            false,
        ),
        (
            "f1_macro",
            floats(rows.iter().map(|r| r.evaluation.f1_macro)),
            false,
        ),
        (
            "roc_auc",
            optional_floats(rows.iter().map(|r| r.evaluation.roc_auc)),
            true,
        ),
        ("n_train", counts(rows.iter().map(|r| r.n_train)), false),
        ("n_test", counts(rows.iter().map(|r| r.n_test)), false),
        (
            "train_seconds",
            floats(rows.iter().map(|r| r.train_seconds)),
            false,
        ),
        (
            "cv_mean",
            optional_floats(rows.iter().map(|r| r.cv_mean)),
            true,
        ),
        (
            "cv_std",
            optional_floats(rows.iter().map(|r| r.cv_std)),
            true,
        ),
        (
            "classes",
            string_lists(rows.iter().map(|r| r.classes.as_slice())),
            false,
        ),
        (
            "precision",
            float_lists(rows.iter().map(|r| r.evaluation.precision.as_slice())),
            false,
        ),
        (
            "recall",
            float_lists(rows.iter().map(|r| r.evaluation.recall.as_slice())),
            false,
        ),
        (
            "f1",
            float_lists(rows.iter().map(|r| r.evaluation.f1.as_slice())),
            false,
        ),
        (
            "support",
            count_lists(rows.iter().map(|r| r.evaluation.support.as_slice())),
            false,
        ),
        (
            "confusion",
            matrices(rows.iter().map(|r| r.evaluation.confusion.as_slice())),
            false,
        ),
    ];
    RecordBatch::try_from_iter_with_nullable(columns)
}

fn predictions_batch(rows: &[PredictionRow]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let columns: Vec<(&str, ArrayRef, bool)> = vec![
        (
            "prompt_id",
            strings(rows.iter().map(|r| r.prompt_id.as_str())),
            false,
        ),
        ("task", strings(rows.iter().map(|r| r.task.as_str())), false),
        (
            "classifier",
            strings(rows.iter().map(|r| r.classifier.name())),
            false,
        ),
        ("layer", layers(rows.iter().map(|r| r.layer)), false),
        ("split", strings(rows.iter().map(|r| r.split.name())), false),
        ("fold", folds(rows.iter().map(|r| r.fold)), true),
        (
            "class",
            strings(rows.iter().map(|r| r.class.as_str())),
            false,
        ),
        (
            "label",
            strings(rows.iter().map(|r| r.label.as_str())),
            false,
        ),
        (
            "predicted",
            strings(rows.iter().map(|r| r.predicted.as_str())),
            false,
        ),
        ("score", optional_floats(rows.iter().map(|r| r.score)), true),
    ];
    RecordBatch::try_from_iter_with_nullable(columns)
}

fn splits_batch(rows: &[SplitRow]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let columns: Vec<(&str, ArrayRef, bool)> = vec![
        (
            "prompt_id",
            strings(rows.iter().map(|r| r.prompt_id.as_str())),
            false,
        ),
        ("task", strings(rows.iter().map(|r| r.task.as_str())), false),
        (
            "class",
            strings(rows.iter().map(|r| r.class.as_str())),
            false,
        ),
        (
            "label",
            strings(rows.iter().map(|r| r.label.as_str())),
            false,
        ),
        ("split", strings(rows.iter().map(|r| r.split)), false),
        ("fold", folds(rows.iter().map(|r| r.fold)), true),
        (
            "svm_train",
            Arc::new(
                rows.iter()
                    .map(|r| Some(r.svm_train))
                    .collect::<BooleanArray>(),
            ),
            false,
        ),
    ];
    RecordBatch::try_from_iter_with_nullable(columns)
}
