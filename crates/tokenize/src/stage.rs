//! The `tokenize` engine stage: every class's dataset, rendered through the
//! model's chat template and tokenized, into `tokens.parquet`.
//!
//! Prompt ids are `{class}-{row:05}` with the row counted in the dataset file,
//! so they stay the same when a limit or duplicate removal drops other rows.

use ihs_engine::spec::{DatasetFormat, ModelEntry, Spec, TokenizeSection, Truncation};
use ihs_engine::{InputFiles, NodeContext, NodeView, Stage, StageError, StageSummary};
use ihs_model::{PromptFormat, TemplateChoice};
use ihs_store::TokenRow;
use serde_json::{json, Value};

use crate::datasets::{self, DatasetSpec, Format};

/// File name of the stage's output table.
pub const TOKENS_FILE: &str = "tokens.parquet";

/// The tokenize stage.
#[derive(Debug, Default, Clone, Copy)]
pub struct TokenizeStage;

fn failed(error: impl std::fmt::Display) -> StageError {
    StageError::failed(error.to_string())
}

fn model_of<'a>(model: Option<&'a ModelEntry>) -> Result<&'a ModelEntry, StageError> {
    model
        .ok_or_else(|| failed("the tokenize stage runs once per model, but this node has no model"))
}

/// Returns the chat template and system prompt of a model entry.
pub fn prompt_format(model: &ModelEntry) -> Result<PromptFormat, StageError> {
    Ok(PromptFormat {
        template: TemplateChoice::parse(model.template.name()).map_err(failed)?,
        system: model.system_prompt.clone(),
    })
}

fn dataset_spec(spec: &Spec, class: &str) -> DatasetSpec {
    let entry = &spec.datasets[class];
    DatasetSpec {
        path: entry.path.clone(),
        format: entry.format.map(|format| match format {
            DatasetFormat::Csv => Format::Csv,
            DatasetFormat::Jsonl => Format::Jsonl,
            DatasetFormat::Json => Format::Json,
            DatasetFormat::Parquet => Format::Parquet,
        }),
        column: entry.column.clone(),
        limit: entry.limit,
        seed: entry.seed,
        punctuation: entry.punctuation,
        drop_duplicates: entry.drop_duplicates,
    }
}

impl Stage for TokenizeStage {
    fn name(&self) -> &'static str {
        "tokenize"
    }

    fn code_version(&self) -> u32 {
        1
    }

    fn parameters(&self, node: &NodeView<'_>) -> Result<Value, StageError> {
        let model = model_of(node.model)?;
        let datasets: serde_json::Map<String, Value> = node
            .spec
            .datasets
            .iter()
            .map(|(class, entry)| {
                let value = json!({
                    "format": entry.format,
                    "column": entry.column,
                    "limit": entry.limit,
                    "seed": entry.seed,
                    "punctuation": entry.punctuation,
                    "drop_duplicates": entry.drop_duplicates,
                });
                (class.clone(), value)
            })
            .collect();
        Ok(json!({
            "section": node.section(),
            "template": model.template.name(),
            "system_prompt": model.system_prompt,
            "datasets": datasets,
        }))
    }

    fn declare_inputs(
        &self,
        node: &NodeView<'_>,
        inputs: &mut InputFiles,
    ) -> Result<(), StageError> {
        inputs.datasets(node.spec);
        if let Some(path) = node.model_path() {
            inputs.tokenizer(path);
        }
        Ok(())
    }

    fn run(&self, ctx: &mut NodeContext<'_>) -> Result<StageSummary, StageError> {
        let model = model_of(ctx.model())?;
        let path = ctx
            .model_path()
            .ok_or_else(|| {
                failed(format!(
                    "model {} is not available on this machine",
                    model.name
                ))
            })?
            .to_path_buf();
        let section = ctx.spec().tokenize.clone().unwrap_or_default();
        let tokenizer = ihs_model::load_tokenizer(&path).map_err(failed)?;
        let format = prompt_format(model)?;
        tracing::info!(model = %model.name, template = format.template.name(), "tokenizing prompts");

        let mut rows = Vec::new();
        let mut summary = StageSummary::new();
        let classes: Vec<String> = ctx.spec().datasets.keys().cloned().collect();
        for class in &classes {
            let spec = dataset_spec(ctx.spec(), class);
            let dataset = datasets::load(&spec).map_err(failed)?;
            let bar = ctx.progress_bar(dataset.rows.len() as u64, "prompts");
            bar.set_message(class.clone());
            for row in &dataset.rows {
                rows.push(tokenize_row(
                    &tokenizer, &format, &section, class, &spec, row,
                )?);
                bar.inc(1);
            }
            bar.finish_and_clear();
            summary = summary
                .with_rows(&format!("prompts/{class}"), dataset.rows.len() as u64)
                .with_rows(
                    &format!("duplicates_dropped/{class}"),
                    dataset.duplicates_dropped as u64,
                )
                .with_rows(&format!("sampled_out/{class}"), dataset.sampled_out as u64);
            tracing::info!(model = %model.name, class, prompts = dataset.rows.len(), duplicates = dataset.duplicates_dropped, "class tokenized");
        }

        let truncated = rows.iter().filter(|r| r.truncated).count();
        let tokens: usize = rows.iter().map(|r| r.input_ids.len()).sum();
        let longest = rows.iter().map(|r| r.input_ids.len()).max().unwrap_or(0);
        let output = ctx.output_dir().join(TOKENS_FILE);
        let metadata = [
            ("ihs.model", model.name.clone()),
            ("ihs.template", format.template.name().to_owned()),
        ];
        ihs_store::write_tokens(&output, &rows, &metadata).map_err(failed)?;

        Ok(summary
            .with_rows("prompts", rows.len() as u64)
            .with_rows("tokens", tokens as u64)
            .with_rows("truncated", truncated as u64)
            .with_rows("longest_prompt_tokens", longest as u64))
    }
}

fn tokenize_row(
    tokenizer: &ihs_model::TextTokenizer,
    format: &PromptFormat,
    section: &TokenizeSection,
    class: &str,
    spec: &DatasetSpec,
    row: &datasets::DatasetRow,
) -> Result<TokenRow, StageError> {
    let prompt_id = format!("{class}-{:05}", row.row);
    let encoded = format
        .encode(tokenizer, &row.text)
        .map_err(|e| failed(format!("prompt {prompt_id}: {e}")))?;
    let mut input_ids = encoded.input_ids;
    let mut truncated = false;
    if input_ids.len() > section.max_tokens {
        match section.truncation {
            Truncation::Reject => {
                return Err(failed(format!(
                    "prompt {prompt_id} ({}, row {}) has {} tokens, more than tokenize.max_tokens = {}; \
                     raise max_tokens or set tokenize.truncation: left",
                    spec.path.display(),
                    row.row,
                    input_ids.len(),
                    section.max_tokens
                )));
            }
            Truncation::Left => {
                input_ids.drain(..input_ids.len() - section.max_tokens);
                truncated = true;
            }
        }
    }
    Ok(TokenRow {
        prompt_id,
        class: class.to_owned(),
        source_file: spec.path.display().to_string(),
        source_row: row.row as u64,
        text: row.text.clone(),
        prompt: encoded.text,
        input_ids,
        truncated,
    })
}
