//! The `lens` stage: reads the extract stage's logit-lens records and writes
//! token and word-group statistics per class and layer, with figures.
//!
//! ```text
//! top_tokens.parquet      class, layer, rank, token_id, token, text, group,
//!                         count, share, top1_count, mean_prob
//! group_shares.parquet    class, layer, group, prompts, top1_count,
//!                         top1_share, topk_mass, topk_prob
//! heatmap_<class>.svg/png the most frequent tokens, layers across, rank down
//! group_shares.svg/png    negative and positive shares by layer and class
//! ```

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int32Array, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use ihs_engine::spec::LensSection;
use ihs_engine::{InputFiles, NodeContext, NodeView, Stage, StageError, StageSummary};
use serde_json::Value;

use crate::aggregate::{summarize, LensSummary, SummaryError};
use crate::plot::{self, Heatmap, HeatmapCell, LineFigure, Panel, PlotError, Series};
use crate::records::{LensTable, RecordError};
use crate::table::{write_table, TableError};
use crate::words::{group_name, Group, WordListError, WordLists};

/// The folder of logit-lens records in the extract stage's output.
pub const LENS_RECORDS_DIR: &str = "lens";

/// An error of the lens stage.
#[derive(Debug, thiserror::Error)]
pub enum LensError {
    #[error(transparent)]
    WordLists(#[from] WordListError),

    #[error(transparent)]
    Records(#[from] RecordError),

    #[error("lens.top_k is {requested}, but the extract stage recorded {recorded} tokens per state; raise extract.lens.top_k to at least {requested} or lower lens.top_k")]
    TopKTooLarge { requested: usize, recorded: usize },

    #[error("no logit-lens records in lens.layer_range [{first}, {last}]; the records cover layers {available}")]
    EmptyRange {
        first: usize,
        last: usize,
        available: String,
    },

    #[error(transparent)]
    Summary(#[from] SummaryError),

    #[error(transparent)]
    Table(#[from] TableError),

    #[error(transparent)]
    Plot(#[from] PlotError),
}

impl From<LensError> for StageError {
    fn from(error: LensError) -> Self {
        StageError::with_source(error.to_string(), error)
    }
}

/// The `lens` stage. It reads no model, so it is not heavy.
#[derive(Debug, Clone, Copy, Default)]
pub struct LensStage;

impl Stage for LensStage {
    fn name(&self) -> &'static str {
        "lens"
    }

    fn code_version(&self) -> u32 {
        1
    }

    /// Returns the section without its word-list path. The file's digest is
    /// part of the key instead, so moving the file keeps the key.
    fn parameters(&self, node: &NodeView<'_>) -> Result<Value, StageError> {
        let mut section = node.section().unwrap_or(Value::Null);
        if let Some(map) = section.as_object_mut() {
            map.remove("word_lists");
        }
        Ok(section)
    }

    fn declare_inputs(
        &self,
        node: &NodeView<'_>,
        inputs: &mut InputFiles,
    ) -> Result<(), StageError> {
        let section = node.spec.lens.clone().unwrap_or_default();
        inputs.content("word_lists", section.word_lists);
        Ok(())
    }

    fn run(&self, ctx: &mut NodeContext<'_>) -> Result<StageSummary, StageError> {
        let section = ctx.spec().lens.clone().unwrap_or_default();
        let records_dir = ctx.input_dir("extract")?.join(LENS_RECORDS_DIR);
        let model = ctx.node().model().unwrap_or("model").to_owned();
        let output = ctx.output_dir().to_owned();
        Ok(run_lens(&section, &records_dir, &output, &model)?)
    }
}

/// Computes the lens outputs from the records in `records_dir` into
/// `output`; `model` names the model in figure titles.
pub fn run_lens(
    section: &LensSection,
    records_dir: &Path,
    output: &Path,
    model: &str,
) -> Result<StageSummary, LensError> {
    let lists = WordLists::load(&section.word_lists)?;
    let top_k = section.top_k;
    let in_range = |layer: usize| {
        section
            .layer_range
            .is_none_or(|[first, last]| (first..=last).contains(&layer))
    };
    let table = LensTable::read(records_dir, |layer, rank| rank < top_k && in_range(layer))?;
    if table.recorded_top_k < top_k {
        return Err(LensError::TopKTooLarge {
            requested: top_k,
            recorded: table.recorded_top_k,
        });
    }
    if table.rows.is_empty() {
        let [first, last] = section.layer_range.unwrap_or([0, 0]);
        let all = LensTable::read(records_dir, |_, rank| rank == 0)?;
        let layers: BTreeSet<usize> = all.rows.iter().map(|row| row.layer).collect();
        let available = match (layers.first(), layers.last()) {
            (Some(low), Some(high)) => format!("{low} to {high}"),
            _ => "none".to_owned(),
        };
        return Err(LensError::EmptyRange {
            first,
            last,
            available,
        });
    }

    let summary = summarize(&table, &lists, top_k)?;
    write_top_tokens(&output.join("top_tokens.parquet"), &summary)?;
    write_group_shares(&output.join("group_shares.parquet"), &summary)?;

    let classes: BTreeSet<&str> = summary.shares.iter().map(|s| s.class.as_str()).collect();
    for class in &classes {
        let heatmap = class_heatmap(&summary, class, model, top_k);
        plot::write_heatmap(&heatmap, &output.join(format!("heatmap_{class}")))?;
    }
    plot::write_lines(
        &shares_figure(&summary, model),
        &output.join("group_shares"),
    )?;

    let layers: BTreeSet<usize> = table.rows.iter().map(|row| row.layer).collect();
    Ok(StageSummary::new()
        .with_rows("prompts", table.prompts.len() as u64)
        .with_rows("classes", classes.len() as u64)
        .with_rows("layers", layers.len() as u64)
        .with_rows("records", table.rows.len() as u64))
}

fn write_top_tokens(path: &Path, summary: &LensSummary) -> Result<(), TableError> {
    let rows = &summary.top_tokens;
    let schema = Schema::new(vec![
        Field::new("class", DataType::Utf8, false),
        Field::new("layer", DataType::Int32, false),
        Field::new("rank", DataType::Int32, false),
        Field::new("token_id", DataType::UInt32, false),
        Field::new("token", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("group", DataType::Utf8, false),
        Field::new("count", DataType::UInt64, false),
        Field::new("share", DataType::Float64, false),
        Field::new("top1_count", DataType::UInt64, false),
        Field::new("mean_prob", DataType::Float64, false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.class))),
        Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|r| r.layer as i32),
        )),
        Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|r| r.rank as i32),
        )),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.token_id),
        )),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.token))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.text))),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| group_name(r.group)),
        )),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.count))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.share))),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.top1_count),
        )),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.mean_prob),
        )),
    ];
    write_table(path, schema, columns)
}

fn write_group_shares(path: &Path, summary: &LensSummary) -> Result<(), TableError> {
    let rows: Vec<(&str, usize, &crate::aggregate::GroupShare)> = summary
        .shares
        .iter()
        .flat_map(|point| {
            point
                .shares
                .iter()
                .map(move |share| (point.class.as_str(), point.layer, share))
        })
        .collect();
    let schema = Schema::new(vec![
        Field::new("class", DataType::Utf8, false),
        Field::new("layer", DataType::Int32, false),
        Field::new("group", DataType::Utf8, false),
        Field::new("prompts", DataType::UInt64, false),
        Field::new("top1_count", DataType::UInt64, false),
        Field::new("top1_share", DataType::Float64, false),
        Field::new("topk_mass", DataType::Float64, false),
        Field::new("topk_prob", DataType::Float64, false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
        Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|r| r.1 as i32),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.2.group),
        )),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.2.prompts as u64),
        )),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.2.top1_count),
        )),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.2.top1_share),
        )),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.2.topk_mass),
        )),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.2.topk_prob),
        )),
    ];
    write_table(path, schema, columns)
}

/// Returns how a token's text is shown in a figure: trimmed, with a
/// whitespace-only token drawn as visible symbols (`␣` for a space, `↵` for
/// a line break, `⇥` for a tab, `\u{a0}` for other whitespace) and control
/// characters escaped.
#[must_use]
pub fn display_text(text: &str) -> String {
    let escape = |c: char| -> String {
        if c.is_control() {
            format!("\\x{:02x}", u32::from(c))
        } else {
            c.to_string()
        }
    };
    let trimmed = text.trim();
    if !trimmed.is_empty() {
        return trimmed.chars().map(escape).collect();
    }
    if text.is_empty() {
        return "\u{2205}".to_owned();
    }
    text.chars()
        .map(|c| match c {
            ' ' => "\u{2423}".to_owned(),
            '\n' => "\u{21B5}".to_owned(),
            '\t' => "\u{21E5}".to_owned(),
            '\r' => "\u{240D}".to_owned(),
            other if other.is_whitespace() => format!("\\u{{{:x}}}", u32::from(other)),
            other => escape(other),
        })
        .collect()
}

fn class_heatmap(summary: &LensSummary, class: &str, model: &str, top_k: usize) -> Heatmap {
    let points: Vec<(usize, usize)> = summary
        .shares
        .iter()
        .filter(|point| point.class == class)
        .map(|point| (point.layer, point.shares.first().map_or(0, |s| s.prompts)))
        .collect();
    let layers: Vec<usize> = points.iter().map(|&(layer, _)| layer).collect();
    let prompts = points.iter().map(|&(_, n)| n).max().unwrap_or(0);
    let cells = summary
        .top_tokens
        .iter()
        .filter(|token| token.class == class)
        .filter_map(|token| {
            let column = layers.binary_search(&token.layer).ok()?;
            Some(HeatmapCell {
                column,
                row: token.rank,
                text: display_text(&token.text),
                group: token.group,
                weight: token.share,
            })
        })
        .collect();
    Heatmap {
        title: format!("{model}: logit lens of `{class}` prompts"),
        columns: layers.iter().map(ToString::to_string).collect(),
        rows: top_k,
        cells,
        note: format!(
            "Each column lists the {top_k} tokens found most often in the top {top_k} of the {prompts} prompts at that layer; a darker cell means more prompts."
        ),
    }
}

/// Colours for classes in line charts, in class-name order. Red and green
/// are left out because they mark the negative and positive groups.
const CLASS_COLORS: [plotters::style::RGBColor; 6] = [
    plotters::style::RGBColor(31, 119, 180),
    plotters::style::RGBColor(255, 127, 14),
    plotters::style::RGBColor(148, 103, 189),
    plotters::style::RGBColor(140, 86, 75),
    plotters::style::RGBColor(227, 119, 194),
    plotters::style::RGBColor(127, 127, 127),
];

fn shares_figure(summary: &LensSummary, model: &str) -> LineFigure {
    let classes: BTreeSet<&str> = summary.shares.iter().map(|s| s.class.as_str()).collect();
    let panel = |group: Group, top1: bool| Panel {
        title: if top1 {
            format!("{group}: share of prompts with a top-1 token in the group")
        } else {
            format!("{group}: share of the top-k probability mass")
        },
        series: classes
            .iter()
            .enumerate()
            .map(|(index, class)| Series {
                name: (*class).to_owned(),
                color: CLASS_COLORS[index % CLASS_COLORS.len()],
                points: summary
                    .shares
                    .iter()
                    .filter(|point| point.class == *class)
                    .filter_map(|point| {
                        let share = point.shares.iter().find(|s| s.group == group.name())?;
                        let value = if top1 {
                            share.top1_share
                        } else {
                            share.topk_mass
                        };
                        Some((point.layer as f64, value))
                    })
                    .collect(),
                dashed: false,
            })
            .collect(),
    };
    LineFigure {
        title: format!("{model}: word groups in the logit lens, by class"),
        x_label: "layer (residual-stream index)".to_owned(),
        y_label: "share".to_owned(),
        columns: 2,
        panels: vec![
            panel(Group::Negative, true),
            panel(Group::Positive, true),
            panel(Group::Negative, false),
            panel(Group::Positive, false),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_text_shows_whitespace() {
        assert_eq!(display_text(" Sure"), "Sure");
        assert_eq!(display_text(" "), "\u{2423}");
        assert_eq!(display_text("\n\n"), "\u{21B5}\u{21B5}");
        assert_eq!(display_text(""), "\u{2205}");
        assert_eq!(display_text("a\u{0}b"), "a\\x00b");
        assert_eq!(display_text("\u{a0}"), "\\u{a0}");
    }
}
