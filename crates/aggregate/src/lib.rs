//! The `aggregate` pipeline stage: the probe results of every model of an
//! experiment in one place.
//!
//! It reads each model's `probe/metrics.parquet` and writes, into the
//! cross-model node's output folder:
//!
//! - `accuracy.parquet` and `accuracy.csv`: model, task, classifier, layer,
//!   depth (layer / blocks), split, accuracy and macro F1;
//! - `first_layer.parquet` and `first_layer.csv`: per model, task and
//!   classifier, the first layer whose test accuracy reaches
//!   `aggregate.accuracy_threshold`, and the best accuracy and its layer;
//! - `summary.md`: those tables per model, with the accuracy at a few depths;
//! - `plots/`: accuracy against layer (and against depth when there are
//!   several models) per task and classifier, one line per model, and the
//!   transfer accuracy of transfer tasks, each as SVG and PNG.
//!
//! [`aggregate`] does the work on plain folders; [`AggregateStage`] runs it
//! as the engine's `aggregate` node.

mod charts;
mod error;
mod first_layer;
pub mod plot;
mod stage;
mod summary;
mod table;

use std::path::{Path, PathBuf};

pub use charts::{file_part, write_charts};
pub use error::AggregateError;
pub use first_layer::{first_layer_frame, first_layers, FirstLayerRow, TEST_SPLIT};
pub use stage::{register, AggregateStage};
pub use summary::{render_summary, SUMMARY_DEPTHS, TRANSFER_SPLIT};
pub use table::{
    accuracy_frame, depth, read_model_metrics, write_parquet_and_csv, AccuracyRow, ModelMetrics,
    ProbeOutput, METRICS_FILE,
};

/// The accuracy table's file stem (`.parquet` and `.csv`).
pub const ACCURACY_STEM: &str = "accuracy";
/// The first-layer table's file stem (`.parquet` and `.csv`).
pub const FIRST_LAYER_STEM: &str = "first_layer";
pub const SUMMARY_FILE: &str = "summary.md";
/// The folder of the charts inside the output folder.
pub const PLOTS_DIR: &str = "plots";

/// Row counts and paths of the files that [`aggregate`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateReport {
    pub models: usize,
    pub accuracy_rows: usize,
    pub first_layer_rows: usize,
    /// Every file written, tables first, then the summary and the charts.
    pub files: Vec<PathBuf>,
}

/// Reads every model's probe metrics and writes the tables, the summary and
/// the charts into `out_dir`. Models appear in the order of `outputs`.
pub fn aggregate(
    outputs: &[ProbeOutput],
    threshold: f64,
    out_dir: &Path,
) -> Result<AggregateReport, AggregateError> {
    if !(0.0..=1.0).contains(&threshold) {
        return Err(AggregateError::InvalidThreshold { value: threshold });
    }
    if outputs.is_empty() {
        return Err(AggregateError::NoProbeOutputs);
    }
    for (index, output) in outputs.iter().enumerate() {
        if outputs[..index]
            .iter()
            .any(|other| other.model == output.model)
        {
            return Err(AggregateError::DuplicateModel {
                model: output.model.clone(),
            });
        }
    }

    let mut models = Vec::new();
    for output in outputs {
        let mut metrics = read_model_metrics(output)?;
        metrics.rows.sort_by(|a, b| {
            (&a.task, &a.classifier, &a.split, a.layer).cmp(&(
                &b.task,
                &b.classifier,
                &b.split,
                b.layer,
            ))
        });
        tracing::debug!(model = %metrics.model, rows = metrics.rows.len(), blocks = metrics.blocks, "probe metrics read");
        models.push(metrics);
    }

    let rows: Vec<AccuracyRow> = models
        .iter()
        .flat_map(|model| model.rows.iter().cloned())
        .collect();
    let first: Vec<FirstLayerRow> = models
        .iter()
        .flat_map(|model| first_layers(model, threshold))
        .collect();

    let mut files = Vec::new();
    let mut accuracy = accuracy_frame(&rows)?;
    files.extend(write_parquet_and_csv(
        out_dir,
        ACCURACY_STEM,
        &mut accuracy,
    )?);
    let mut first_frame = first_layer_frame(&first, threshold)?;
    files.extend(write_parquet_and_csv(
        out_dir,
        FIRST_LAYER_STEM,
        &mut first_frame,
    )?);

    let summary_path = out_dir.join(SUMMARY_FILE);
    std::fs::write(&summary_path, render_summary(&models, &first, threshold))
        .map_err(|source| AggregateError::io("write", &summary_path, source))?;
    files.push(summary_path);

    let plots = out_dir.join(PLOTS_DIR);
    std::fs::create_dir_all(&plots)
        .map_err(|source| AggregateError::io("create", &plots, source))?;
    files.extend(write_charts(&plots, &models, threshold)?);

    Ok(AggregateReport {
        models: models.len(),
        accuracy_rows: rows.len(),
        first_layer_rows: first.len(),
        files,
    })
}
