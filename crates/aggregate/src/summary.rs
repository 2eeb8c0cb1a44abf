//! `summary.md`: per model, the first-layer table and the probe accuracy at
//! a few depths, as GitHub-flavoured Markdown tables.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::first_layer::{FirstLayerRow, TEST_SPLIT};
use crate::table::ModelMetrics;

/// The split of transfer tasks' evaluation class.
pub const TRANSFER_SPLIT: &str = "transfer";

/// Depths (layer / blocks) at which the summary lists accuracies.
pub const SUMMARY_DEPTHS: [f64; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];

/// Renders the summary of every model, in the order given.
#[must_use]
pub fn render_summary(
    models: &[ModelMetrics],
    first_layers: &[FirstLayerRow],
    threshold: f64,
) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "# Probe accuracy by layer\n");
    let _ = writeln!(
        text,
        "A layer separates the classes when the probe's test accuracy is at least {threshold}. \
         Depth is layer / blocks: 0 is the embeddings, 1 the last block."
    );
    for model in models {
        let rows: Vec<&FirstLayerRow> = first_layers
            .iter()
            .filter(|row| row.model == model.model)
            .collect();
        let _ = writeln!(text, "\n## {} ({} blocks)\n", model.model, model.blocks);
        write_first_layer_table(&mut text, &rows, threshold);
        write_depth_table(&mut text, model, TEST_SPLIT, "Test accuracy");
        write_depth_table(
            &mut text,
            model,
            TRANSFER_SPLIT,
            "Transfer accuracy (evaluation class)",
        );
    }
    text
}

fn write_first_layer_table(text: &mut String, rows: &[&FirstLayerRow], threshold: f64) {
    let _ = writeln!(
        text,
        "| task | classifier | first layer ≥ {threshold} | depth | best accuracy | best layer | depth |"
    );
    let _ = writeln!(text, "| --- | --- | ---: | ---: | ---: | ---: | ---: |");
    for row in rows {
        let (first, first_depth) = match (row.first_layer, row.first_depth) {
            (Some(layer), Some(depth)) => (layer.to_string(), format!("{depth:.2}")),
            _ => ("none".to_owned(), "–".to_owned()),
        };
        let _ = writeln!(
            text,
            "| {} | {} | {first} | {first_depth} | {:.3} | {} | {:.2} |",
            row.task, row.classifier, row.best_accuracy, row.best_layer, row.best_depth
        );
    }
}

/// Writes one row per task and classifier with the accuracy of `split` at
/// each of [`SUMMARY_DEPTHS`]; writes nothing when the model has no rows of
/// that split.
fn write_depth_table(text: &mut String, model: &ModelMetrics, split: &str, title: &str) {
    let mut curves: BTreeMap<(&str, &str), Vec<(i32, f64)>> = BTreeMap::new();
    for row in model.rows.iter().filter(|row| row.split == split) {
        curves
            .entry((row.task.as_str(), row.classifier.as_str()))
            .or_default()
            .push((row.layer, row.accuracy));
    }
    if curves.is_empty() {
        return;
    }

    let _ = writeln!(text, "\n{title} at depth (layer in brackets):\n");
    let mut header = "| task | classifier |".to_owned();
    let mut rule = "| --- | --- |".to_owned();
    for depth in SUMMARY_DEPTHS {
        let _ = write!(header, " {depth} |");
        rule.push_str(" ---: |");
    }
    let _ = writeln!(text, "{header}\n{rule}");
    for ((task, classifier), curve) in curves {
        let mut line = format!("| {task} | {classifier} |");
        for depth in SUMMARY_DEPTHS {
            let target = depth * f64::from(model.blocks);
            let nearest = curve.iter().min_by(|a, b| {
                let distance = |point: &(i32, f64)| (f64::from(point.0) - target).abs();
                distance(a).total_cmp(&distance(b)).then(a.0.cmp(&b.0))
            });
            if let Some((layer, accuracy)) = nearest {
                let _ = write!(line, " {accuracy:.3} ({layer}) |");
            }
        }
        let _ = writeln!(text, "{line}");
    }
}
