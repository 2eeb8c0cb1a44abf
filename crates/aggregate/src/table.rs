//! Reading every model's probe metrics and writing the accuracy table.

use std::fs::File;
use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::error::AggregateError;

/// The probe stage's metrics file in each model's `probe` output folder.
pub const METRICS_FILE: &str = "metrics.parquet";

/// Columns of `metrics.parquet` that the aggregate stage reads.
const METRICS_COLUMNS: [&str; 6] = [
    "task",
    "classifier",
    "layer",
    "split",
    "accuracy",
    "f1_macro",
];

/// One model's probe output folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutput {
    /// The model's name, as in the output paths.
    pub model: String,
    /// The folder that contains [`METRICS_FILE`].
    pub dir: PathBuf,
}

/// One row of the accuracy table: one model, task, classifier, layer and
/// split.
#[derive(Debug, Clone, PartialEq)]
pub struct AccuracyRow {
    pub model: String,
    pub task: String,
    pub classifier: String,
    /// Residual-stream index: 0 is the embeddings, i the output of block i.
    pub layer: i32,
    /// `layer / blocks` in [0, 1], so that models of different depth compare.
    pub depth: f64,
    /// `test`, `transfer` or `cv`, as the probe stage writes it.
    pub split: String,
    pub accuracy: f64,
    pub f1_macro: f64,
}

/// One model's rows with the number of blocks they were normalized by.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelMetrics {
    pub model: String,
    /// The max layer index in the model's metrics, taken as its number of
    /// blocks.
    pub blocks: i32,
    pub rows: Vec<AccuracyRow>,
}

/// Reads one model's `metrics.parquet` and computes each row's depth.
///
/// NOTE: the number of blocks is the max layer in the file. When `extract`
/// stored only a subset of layers that stops before the last block, depths
/// are relative to the last stored layer instead.
pub fn read_model_metrics(output: &ProbeOutput) -> Result<ModelMetrics, AggregateError> {
    let path = output.dir.join(METRICS_FILE);
    let file = File::open(&path).map_err(|source| AggregateError::io("open", &path, source))?;
    let columns = METRICS_COLUMNS
        .iter()
        .map(|&name| name.to_owned())
        .collect();
    let frame = ParquetReader::new(file)
        .with_columns(Some(columns))
        .finish()
        .map_err(|source| AggregateError::Read {
            path: path.clone(),
            source,
        })?;

    let tasks = strings(&frame, &path, "task")?;
    let classifiers = strings(&frame, &path, "classifier")?;
    let splits = strings(&frame, &path, "split")?;
    let layers = integers(&frame, &path, "layer")?;
    let accuracies = floats(&frame, &path, "accuracy")?;
    let f1_scores = floats(&frame, &path, "f1_macro")?;

    let blocks = layers.iter().copied().max().unwrap_or(0);
    let rows = (0..frame.height())
        .map(|index| AccuracyRow {
            model: output.model.clone(),
            task: tasks[index].clone(),
            classifier: classifiers[index].clone(),
            layer: layers[index],
            depth: depth(layers[index], blocks),
            split: splits[index].clone(),
            accuracy: accuracies[index],
            f1_macro: f1_scores[index],
        })
        .collect();
    Ok(ModelMetrics {
        model: output.model.clone(),
        blocks,
        rows,
    })
}

/// Returns `layer / blocks`, or 0 for a model whose only layer is 0.
#[must_use]
pub fn depth(layer: i32, blocks: i32) -> f64 {
    if blocks == 0 {
        0.0
    } else {
        f64::from(layer) / f64::from(blocks)
    }
}

fn column<'a>(
    frame: &'a DataFrame,
    path: &Path,
    name: &'static str,
) -> Result<&'a Column, AggregateError> {
    frame.column(name).map_err(|error| AggregateError::Column {
        path: path.to_owned(),
        column: name,
        message: error.to_string(),
    })
}

fn wrong_type(path: &Path, name: &'static str, error: &PolarsError) -> AggregateError {
    AggregateError::Column {
        path: path.to_owned(),
        column: name,
        message: error.to_string(),
    }
}

fn missing(path: &Path, name: &'static str, row: usize) -> AggregateError {
    AggregateError::MissingValue {
        path: path.to_owned(),
        column: name,
        row,
    }
}

fn strings(
    frame: &DataFrame,
    path: &Path,
    name: &'static str,
) -> Result<Vec<String>, AggregateError> {
    let values = column(frame, path, name)?
        .str()
        .map_err(|error| wrong_type(path, name, &error))?;
    values
        .iter()
        .enumerate()
        .map(|(row, value)| {
            value
                .map(str::to_owned)
                .ok_or_else(|| missing(path, name, row))
        })
        .collect()
}

/// Reads an integer column of any width as `i32` layers.
fn integers(
    frame: &DataFrame,
    path: &Path,
    name: &'static str,
) -> Result<Vec<i32>, AggregateError> {
    let column = column(frame, path, name)?;
    if !column.dtype().is_integer() {
        return Err(AggregateError::Column {
            path: path.to_owned(),
            column: name,
            message: format!("expected integers, found {}", column.dtype()),
        });
    }
    let cast = column
        .cast(&DataType::Int64)
        .map_err(|error| wrong_type(path, name, &error))?;
    let values = cast.i64().map_err(|error| wrong_type(path, name, &error))?;
    values
        .iter()
        .enumerate()
        .map(|(row, value)| {
            let layer = value.ok_or_else(|| missing(path, name, row))?;
            i32::try_from(layer)
                .ok()
                .filter(|layer| *layer >= 0)
                .ok_or_else(|| AggregateError::NegativeLayer {
                    path: path.to_owned(),
                    layer,
                    row,
                })
        })
        .collect()
}

fn floats(frame: &DataFrame, path: &Path, name: &'static str) -> Result<Vec<f64>, AggregateError> {
    let column = column(frame, path, name)?;
    if !column.dtype().is_float() {
        return Err(AggregateError::Column {
            path: path.to_owned(),
            column: name,
            message: format!("expected floats, found {}", column.dtype()),
        });
    }
    let cast = column
        .cast(&DataType::Float64)
        .map_err(|error| wrong_type(path, name, &error))?;
    let values = cast.f64().map_err(|error| wrong_type(path, name, &error))?;
    values
        .iter()
        .enumerate()
        .map(|(row, value)| value.ok_or_else(|| missing(path, name, row)))
        .collect()
}

/// Builds the accuracy table with one row per model, task, classifier,
/// layer and split.
pub fn accuracy_frame(rows: &[AccuracyRow]) -> Result<DataFrame, AggregateError> {
    let text = |pick: fn(&AccuracyRow) -> &str| rows.iter().map(pick).collect::<Vec<_>>();
    df!(
        "model" => text(|row| &row.model),
        "task" => text(|row| &row.task),
        "classifier" => text(|row| &row.classifier),
        "layer" => rows.iter().map(|row| row.layer).collect::<Vec<_>>(),
        "depth" => rows.iter().map(|row| row.depth).collect::<Vec<_>>(),
        "split" => text(|row| &row.split),
        "accuracy" => rows.iter().map(|row| row.accuracy).collect::<Vec<_>>(),
        "f1_macro" => rows.iter().map(|row| row.f1_macro).collect::<Vec<_>>(),
    )
    .map_err(|source| AggregateError::Table {
        table: "accuracy",
        source,
    })
}

/// Writes `frame` as `stem.parquet` (zstd) and `stem.csv` with a header
/// line; returns the two paths.
pub fn write_parquet_and_csv(
    dir: &Path,
    stem: &str,
    frame: &mut DataFrame,
) -> Result<[PathBuf; 2], AggregateError> {
    let parquet = dir.join(format!("{stem}.parquet"));
    let file =
        File::create(&parquet).map_err(|source| AggregateError::io("create", &parquet, source))?;
    ParquetWriter::new(file)
        .with_compression(ParquetCompression::Zstd(None))
        .finish(frame)
        .map_err(|source| AggregateError::Write {
            path: parquet.clone(),
            source,
        })?;

    let csv = dir.join(format!("{stem}.csv"));
    let mut file =
        File::create(&csv).map_err(|source| AggregateError::io("create", &csv, source))?;
    CsvWriter::new(&mut file)
        .include_header(true)
        .finish(frame)
        .map_err(|source| AggregateError::Write {
            path: csv.clone(),
            source,
        })?;
    Ok([parquet, csv])
}
