//! The charts of the aggregate stage, built from every model's accuracy
//! rows with one line per model, so that the models of a sweep compare.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::first_layer::TEST_SPLIT;
use crate::plot::{write_chart, AccuracyChart, Curve, PlotError, XAxis};
use crate::summary::TRANSFER_SPLIT;
use crate::table::ModelMetrics;

/// Writes every chart into `dir` and returns the paths:
///
/// - `accuracy-<task>-<classifier>`: test accuracy against layer;
/// - `transfer-<task>-<classifier>`: for transfer tasks, the share of the
///   evaluation class given the expected label (solid) and the test accuracy
///   (dashed) against layer;
/// - `accuracy-depth-…` and `transfer-depth-…`: the same against depth,
///   only when there are several models, whose layer counts may differ.
pub fn write_charts(
    dir: &Path,
    models: &[ModelMetrics],
    threshold: f64,
) -> Result<Vec<PathBuf>, PlotError> {
    let max_layer = models.iter().map(|model| model.blocks).max().unwrap_or(0);
    let mut axes = vec![("", XAxis::Layer { max: max_layer })];
    if models.len() > 1 {
        axes.push(("depth-", XAxis::Depth));
    }

    let mut paths = Vec::new();
    for (task, classifier) in task_classifiers(models, TEST_SPLIT) {
        for &(infix, x_axis) in &axes {
            let chart = AccuracyChart {
                title: format!("{task}: {classifier} probe, test accuracy"),
                x_axis,
                y_label: "test accuracy".to_owned(),
                curves: curves(models, &task, &classifier, x_axis),
                threshold: Some(threshold),
            };
            let name = format!(
                "accuracy-{infix}{}-{}",
                file_part(&task),
                file_part(&classifier)
            );
            paths.extend(write_chart(dir, &name, &chart)?);
        }
    }

    for (task, classifier) in task_classifiers(models, TRANSFER_SPLIT) {
        for &(infix, x_axis) in &axes {
            let mut curves = Vec::new();
            for (transfer, test) in curves_pair(models, &task, &classifier, x_axis) {
                curves.push(transfer);
                curves.extend(test);
            }
            let chart = AccuracyChart {
                title: format!("{task}: {classifier} probe, transfer accuracy"),
                x_axis,
                y_label: "accuracy".to_owned(),
                curves,
                threshold: None,
            };
            let name = format!(
                "transfer-{infix}{}-{}",
                file_part(&task),
                file_part(&classifier)
            );
            paths.extend(write_chart(dir, &name, &chart)?);
        }
    }
    Ok(paths)
}

/// Returns the sorted task and classifier pairs that have rows of `split`.
fn task_classifiers(models: &[ModelMetrics], split: &str) -> BTreeSet<(String, String)> {
    models
        .iter()
        .flat_map(|model| &model.rows)
        .filter(|row| row.split == split)
        .map(|row| (row.task.clone(), row.classifier.clone()))
        .collect()
}

/// Returns one test-accuracy curve per model that has the task and
/// classifier; a model keeps its colour index in every chart.
fn curves(models: &[ModelMetrics], task: &str, classifier: &str, x_axis: XAxis) -> Vec<Curve> {
    models
        .iter()
        .enumerate()
        .filter_map(|(index, model)| {
            curve(model, index, task, classifier, TEST_SPLIT, x_axis, false)
        })
        .collect()
}

fn curve(
    model: &ModelMetrics,
    color: usize,
    task: &str,
    classifier: &str,
    split: &str,
    x_axis: XAxis,
    dashed: bool,
) -> Option<Curve> {
    let mut points: BTreeMap<i32, (f64, f64)> = BTreeMap::new();
    for row in &model.rows {
        if row.task == task && row.classifier == classifier && row.split == split {
            let x = match x_axis {
                XAxis::Layer { .. } => f64::from(row.layer),
                XAxis::Depth => row.depth,
            };
            points.insert(row.layer, (x, row.accuracy));
        }
    }
    if points.is_empty() {
        return None;
    }
    let label = if split == TEST_SPLIT && !dashed {
        model.model.clone()
    } else {
        format!("{} ({split})", model.model)
    };
    Some(Curve {
        label,
        color,
        dashed,
        points: points.into_values().collect(),
    })
}

/// Returns, per model with transfer rows, its transfer curve and its dashed
/// test curve.
fn curves_pair(
    models: &[ModelMetrics],
    task: &str,
    classifier: &str,
    x_axis: XAxis,
) -> Vec<(Curve, Option<Curve>)> {
    models
        .iter()
        .enumerate()
        .filter_map(|(index, model)| {
            let transfer = curve(
                model,
                index,
                task,
                classifier,
                TRANSFER_SPLIT,
                x_axis,
                false,
            )?;
            let test = curve(model, index, task, classifier, TEST_SPLIT, x_axis, true);
            Some((transfer, test))
        })
        .collect()
}

/// Returns `name` with every character other than ASCII letters, digits,
/// `.`, `_` and `-` replaced by `-`, for use in a file name.
#[must_use]
pub fn file_part(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}
