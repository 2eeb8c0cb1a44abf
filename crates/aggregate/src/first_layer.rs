//! The first layer at which a probe separates the classes, per model, task
//! and classifier.

use std::collections::BTreeMap;

use polars::prelude::*;

use crate::error::AggregateError;
use crate::table::{depth, ModelMetrics};

/// The split whose accuracy decides the first layer.
pub const TEST_SPLIT: &str = "test";

/// One row of the first-layer table.
#[derive(Debug, Clone, PartialEq)]
pub struct FirstLayerRow {
    pub model: String,
    pub task: String,
    pub classifier: String,
    /// The lowest layer whose test accuracy is at least the threshold; `None`
    /// when no layer reaches it.
    pub first_layer: Option<i32>,
    pub first_depth: Option<f64>,
    /// The highest test accuracy over all layers.
    pub best_accuracy: f64,
    /// The lowest layer with [`FirstLayerRow::best_accuracy`].
    pub best_layer: i32,
    pub best_depth: f64,
}

/// Finds the first and the best layer of each task and classifier of one
/// model from its test-split rows. The result is sorted by task and
/// classifier.
#[must_use]
pub fn first_layers(metrics: &ModelMetrics, threshold: f64) -> Vec<FirstLayerRow> {
    let mut curves: BTreeMap<(&str, &str), Vec<(i32, f64)>> = BTreeMap::new();
    for row in metrics.rows.iter().filter(|row| row.split == TEST_SPLIT) {
        curves
            .entry((row.task.as_str(), row.classifier.as_str()))
            .or_default()
            .push((row.layer, row.accuracy));
    }

    curves
        .into_iter()
        .map(|((task, classifier), mut curve)| {
            curve.sort_by_key(|&(layer, _)| layer);
            let first_layer = curve
                .iter()
                .find(|&&(_, accuracy)| accuracy >= threshold)
                .map(|&(layer, _)| layer);
            // Strictly greater keeps the lowest layer among equal accuracies.
            let (best_layer, best_accuracy) = curve.iter().copied().fold(
                curve[0],
                |best, point| if point.1 > best.1 { point } else { best },
            );
            FirstLayerRow {
                model: metrics.model.clone(),
                task: task.to_owned(),
                classifier: classifier.to_owned(),
                first_layer,
                first_depth: first_layer.map(|layer| depth(layer, metrics.blocks)),
                best_accuracy,
                best_layer,
                best_depth: depth(best_layer, metrics.blocks),
            }
        })
        .collect()
}

/// Builds the first-layer table; `threshold` is repeated on every row so
/// that the file explains itself.
pub fn first_layer_frame(
    rows: &[FirstLayerRow],
    threshold: f64,
) -> Result<DataFrame, AggregateError> {
    let text = |pick: fn(&FirstLayerRow) -> &str| rows.iter().map(pick).collect::<Vec<_>>();
    df!(
        "model" => text(|row| &row.model),
        "task" => text(|row| &row.task),
        "classifier" => text(|row| &row.classifier),
        "threshold" => vec![threshold; rows.len()],
        "first_layer" => rows.iter().map(|row| row.first_layer).collect::<Vec<_>>(),
        "first_depth" => rows.iter().map(|row| row.first_depth).collect::<Vec<_>>(),
        "best_accuracy" => rows.iter().map(|row| row.best_accuracy).collect::<Vec<_>>(),
        "best_layer" => rows.iter().map(|row| row.best_layer).collect::<Vec<_>>(),
        "best_depth" => rows.iter().map(|row| row.best_depth).collect::<Vec<_>>(),
    )
    .map_err(|source| AggregateError::Table {
        table: "first_layer",
        source,
    })
}
