//! Fixtures for the stage tests: an experiment folder with JSONL datasets
//! and a spec, and small `tokenize` and `extract` stages that run a real
//! model and write the same files as the pipeline's stages
//! (`tokens.parquet`, `activations/layer=LLL/part-00000.parquet`,
//! `lens/part-00000.parquet`).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use arrow::array::{
    Array, BooleanArray, Float32Array, Float64Array, Int32Array, StringArray, UInt32Array,
    UInt64Array,
};
use arrow::record_batch::RecordBatch;
use ihs_engine::spec::{LayerSelection, Positions};
use ihs_engine::{
    Engine, InputFiles, LoadOptions, NodeContext, NodeId, NodeOutcome, NodeView, ProgressMode,
    Registry, RunOptions, RunReport, Spec, Stage, StageError, StageSummary,
};
use ihs_lens::{write_lens_records, LensRecord};
use ihs_model::{
    Batch, CausalLm, ForwardRequest, Layers, PaddingSide, Position, PromptFormat, TemplateChoice,
    TextTokenizer,
};
use ihs_store::{ActivationRows, StoreDtype, TokenRow};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{json, Value};
use tch::Kind;

/// Returns the repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Returns the small random-weight SmolLM2-shaped model of the parity tests:
/// 3 blocks and a 500-token vocabulary. Its outputs mean nothing, so it
/// suits tests of mechanics.
pub fn fixture_model() -> PathBuf {
    repo_root().join("tests/fixtures/parity/smollm2")
}

/// Returns the embedded default model, SmolLM2-135M-Instruct as a `Q4_1`
/// GGUF file, and fails when it is missing.
pub fn embedded_model() -> PathBuf {
    let path = repo_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run `just setup` to fetch the embedded default model",
        path.display()
    );
    path
}

/// A temporary experiment folder.
pub struct Experiment {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
}

impl Experiment {
    /// Writes one JSONL dataset per class (key `text`) and a spec whose
    /// header names `model` and the classes; `sections` is appended as is.
    pub fn new(model: &Path, template: &str, classes: &[(&str, &[&str])], sections: &str) -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let root = dir.path().to_owned();
        let mut spec = format!(
            "name: lens-test\noutput: out\nmodels:\n  - path: {}\n    name: m\n    template: {template}\ndatasets:\n",
            model.display()
        );
        for (class, prompts) in classes {
            let lines: Vec<String> = prompts
                .iter()
                .map(|prompt| json!({ "text": prompt }).to_string())
                .collect();
            let path = root.join(format!("data/{class}.jsonl"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, lines.join("\n") + "\n").unwrap();
            writeln!(
                spec,
                "  {class}: {{path: data/{class}.jsonl, column: text}}"
            )
            .unwrap();
        }
        spec.push_str(sections);
        std::fs::write(root.join("spec.yaml"), spec).unwrap();
        Self { _dir: dir, root }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    pub fn spec(&self) -> Spec {
        let options = LoadOptions {
            current_dir: Some(self.root.clone()),
            env: Some(BTreeMap::from([(
                "HOME".to_owned(),
                self.root.display().to_string(),
            )])),
        };
        Spec::load(&self.path("spec.yaml"), &options)
            .unwrap_or_else(|error| panic!("spec should load: {error}"))
            .spec
    }

    /// Runs every node with the test stages and the lens crate's stages.
    pub fn run(&self) -> RunReport {
        let mut registry = Registry::new();
        registry
            .register(TestTokenize)
            .unwrap()
            .register(TestExtract)
            .unwrap();
        ihs_lens::register(&mut registry).unwrap();
        let engine = Engine::new(self.spec(), registry).expect("engine");
        let options = RunOptions {
            jobs: 1,
            progress: ProgressMode::Hidden,
            ..RunOptions::default()
        };
        engine.run(&options).expect("run starts")
    }

    /// Returns the output folder of stage `stage` of model `m`.
    pub fn output(&self, stage: &str) -> PathBuf {
        self.path("out/m").join(stage)
    }
}

/// Returns the outcome of `stage` in `report`, panicking when absent.
pub fn outcome<'a>(report: &'a RunReport, stage: &str) -> &'a NodeOutcome {
    let id = NodeId::new(stage, Some("m"));
    &report
        .nodes
        .iter()
        .find(|node| node.id == id)
        .unwrap_or_else(|| panic!("no node {id} in the report"))
        .outcome
}

/// Panics unless `stage` ran.
pub fn assert_ran(report: &RunReport, stage: &str) {
    let outcome = outcome(report, stage);
    assert!(
        matches!(outcome, NodeOutcome::Ran { .. }),
        "{stage}: {outcome}"
    );
}

/// Returns the error message of a failed `stage`.
pub fn failure(report: &RunReport, stage: &str) -> String {
    match outcome(report, stage) {
        NodeOutcome::Failed { error } => error.clone(),
        other => panic!("{stage} should fail, but it {other}"),
    }
}

/// Reads a Parquet file into one record batch per file batch.
pub fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// A column of every batch, concatenated, as Rust values.
pub trait ColumnValues {
    fn strings(&self, name: &str) -> Vec<String>;
    fn i32s(&self, name: &str) -> Vec<i32>;
    fn u32s(&self, name: &str) -> Vec<u32>;
    fn u64s(&self, name: &str) -> Vec<u64>;
    fn f32s(&self, name: &str) -> Vec<f32>;
    fn f64s(&self, name: &str) -> Vec<f64>;
    fn bools(&self, name: &str) -> Vec<bool>;
}

fn typed<'a, T: Array + 'static>(batch: &'a RecordBatch, name: &str) -> &'a T {
    batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("column {name} missing"))
        .as_any()
        .downcast_ref::<T>()
        .unwrap_or_else(|| panic!("column {name} has another type"))
}

impl ColumnValues for [RecordBatch] {
    fn strings(&self, name: &str) -> Vec<String> {
        self.iter()
            .flat_map(|b| {
                typed::<StringArray>(b, name)
                    .iter()
                    .map(|v| v.unwrap().to_owned())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
    fn i32s(&self, name: &str) -> Vec<i32> {
        self.iter()
            .flat_map(|b| typed::<Int32Array>(b, name).values().to_vec())
            .collect()
    }
    fn u32s(&self, name: &str) -> Vec<u32> {
        self.iter()
            .flat_map(|b| typed::<UInt32Array>(b, name).values().to_vec())
            .collect()
    }
    fn u64s(&self, name: &str) -> Vec<u64> {
        self.iter()
            .flat_map(|b| typed::<UInt64Array>(b, name).values().to_vec())
            .collect()
    }
    fn f32s(&self, name: &str) -> Vec<f32> {
        self.iter()
            .flat_map(|b| typed::<Float32Array>(b, name).values().to_vec())
            .collect()
    }
    fn f64s(&self, name: &str) -> Vec<f64> {
        self.iter()
            .flat_map(|b| typed::<Float64Array>(b, name).values().to_vec())
            .collect()
    }
    fn bools(&self, name: &str) -> Vec<bool> {
        self.iter()
            .flat_map(|b| {
                typed::<BooleanArray>(b, name)
                    .iter()
                    .map(Option::unwrap)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// Returns the width and height of a PNG file from its IHDR chunk.
pub fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG file",
        path.display()
    );
    let word = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (word(16), word(20))
}

fn failed(message: impl std::fmt::Display) -> StageError {
    StageError::failed(message.to_string())
}

fn load(ctx: &NodeContext<'_>) -> Result<(CausalLm, TextTokenizer), StageError> {
    let path = ctx.model_path().ok_or_else(|| failed("no model path"))?;
    let model = CausalLm::load(path, &ihs_model::LoadOptions::default()).map_err(failed)?;
    let tokenizer = ihs_model::load_tokenizer(path).map_err(failed)?;
    Ok((model, tokenizer))
}

/// Tokenizes each class's JSONL dataset (key from `column`) through the
/// model's template, classes in name order, prompts in file order.
pub struct TestTokenize;

impl Stage for TestTokenize {
    fn name(&self) -> &'static str {
        "tokenize"
    }

    fn code_version(&self) -> u32 {
        1
    }

    fn parameters(&self, node: &NodeView<'_>) -> Result<Value, StageError> {
        Ok(json!({ "template": node.model.map(|m| m.template.name()) }))
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
        let path = ctx.model_path().ok_or_else(|| failed("no model path"))?;
        let tokenizer = ihs_model::load_tokenizer(path).map_err(failed)?;
        let model = ctx.model().unwrap();
        let format = PromptFormat {
            template: TemplateChoice::parse(model.template.name()).map_err(failed)?,
            system: model.system_prompt.clone(),
        };
        let mut rows = Vec::new();
        for (class, dataset) in &ctx.spec().datasets {
            let text = std::fs::read_to_string(&dataset.path).map_err(failed)?;
            for (index, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
                let value: Value = serde_json::from_str(line).map_err(failed)?;
                let request = value[dataset.column.as_str()].as_str().unwrap_or_default();
                let encoded = format.encode(&tokenizer, request).map_err(failed)?;
                rows.push(TokenRow {
                    prompt_id: format!("{class}-{index:05}"),
                    class: class.clone(),
                    source_file: dataset.path.display().to_string(),
                    source_row: index as u64,
                    text: request.to_owned(),
                    prompt: encoded.text,
                    input_ids: encoded.input_ids,
                    truncated: false,
                });
            }
        }
        let path = ctx.output_dir().join("tokens.parquet");
        ihs_store::write_tokens(&path, &rows, &[]).map_err(failed)?;
        Ok(StageSummary::new().with_rows("prompts", rows.len() as u64))
    }
}

/// Runs the model over `tokens.parquet` in batches of `extract.batch_size`
/// (in file order, left padding) and writes the stored layers and
/// positions, plus logit-lens records when `extract.lens.enabled` is set.
pub struct TestExtract;

impl Stage for TestExtract {
    fn name(&self) -> &'static str {
        "extract"
    }

    fn code_version(&self) -> u32 {
        1
    }

    fn is_heavy(&self) -> bool {
        true
    }

    fn run(&self, ctx: &mut NodeContext<'_>) -> Result<StageSummary, StageError> {
        let section = ctx.spec().extract.clone().unwrap_or_default();
        let tokens_path = ctx.input_dir("tokenize")?.join("tokens.parquet");
        let tokens = ihs_store::read_tokens(&tokens_path).map_err(failed)?;
        let (model, tokenizer) = load(ctx)?;
        let layers = match &section.layers {
            LayerSelection::All => Layers::All,
            LayerSelection::List(list) => Layers::Indices(list.clone()),
        };
        let position = match section.positions {
            Positions::Last => Position::Last,
            Positions::Mean => Position::Mean,
            Positions::LastN(n) => Position::LastN(n),
        };
        let batch_size = section.effective_batch_size().unwrap_or(8);

        let mut stored: BTreeMap<usize, ActivationRows> = BTreeMap::new();
        let mut records = Vec::new();
        for chunk in tokens.chunks(batch_size) {
            let sequences: Vec<Vec<u32>> = chunk.iter().map(|row| row.input_ids.clone()).collect();
            let batch =
                Batch::new(&sequences, PaddingSide::Left, tokenizer.pad_id()).map_err(failed)?;
            let request = ForwardRequest {
                layers: layers.clone(),
                position,
                graft: None,
                logits: false,
            };
            let output = model.forward(&batch, &request).map_err(failed)?;
            for (&layer, state) in output.layers.iter().zip(&output.states) {
                let (_, count, hidden) = state.size3().map_err(failed)?;
                let values: Vec<f32> = Vec::try_from(state.flatten(0, -1)).map_err(failed)?;
                let rows = stored.entry(layer).or_insert_with(|| ActivationRows {
                    hidden_size: hidden as usize,
                    ..ActivationRows::default()
                });
                rows.hidden.extend(values);
                for row in chunk {
                    let len = row.input_ids.len() as i32;
                    let positions: Vec<i32> = match section.positions {
                        Positions::Last => vec![len - 1],
                        Positions::Mean => vec![ihs_store::MEAN_POSITION],
                        Positions::LastN(_) => (len - count as i32..len).collect(),
                    };
                    for position in positions {
                        rows.prompt_ids.push(row.prompt_id.clone());
                        rows.classes.push(row.class.clone());
                        rows.positions.push(position);
                    }
                }
                if section.lens.enabled {
                    let logits = model
                        .logit_lens(&state.select(1, count - 1))
                        .map_err(failed)?;
                    records.extend(lens_rows(
                        &logits,
                        chunk,
                        layer,
                        section.lens.top_k,
                        &tokenizer,
                    )?);
                }
            }
        }

        let activations = ctx.output_dir().join("activations");
        for (layer, rows) in &stored {
            let dir = ihs_store::layer_dir(&activations, *layer);
            std::fs::create_dir_all(&dir).map_err(failed)?;
            ihs_store::write_activation_shard(
                &dir.join("part-00000.parquet"),
                rows,
                *layer,
                StoreDtype::F32,
                &[],
            )
            .map_err(failed)?;
        }
        if section.lens.enabled {
            let dir = ctx.output_dir().join("lens");
            std::fs::create_dir_all(&dir).map_err(failed)?;
            write_lens_records(&dir.join("part-00000.parquet"), &records).map_err(failed)?;
        }
        Ok(StageSummary::new().with_rows("prompts", tokens.len() as u64))
    }
}

fn lens_rows(
    logits: &tch::Tensor,
    chunk: &[TokenRow],
    layer: usize,
    k: usize,
    tokenizer: &TextTokenizer,
) -> Result<Vec<LensRecord>, StageError> {
    let probs = logits.softmax(-1, Kind::Float);
    let (values, ids) = logits.topk(k as i64, -1, true, true);
    let top_probs = probs.gather(-1, &ids, false);
    let values: Vec<f32> = Vec::try_from(values.flatten(0, -1)).map_err(failed)?;
    let ids: Vec<i64> = Vec::try_from(ids.flatten(0, -1)).map_err(failed)?;
    let top_probs: Vec<f32> = Vec::try_from(top_probs.flatten(0, -1)).map_err(failed)?;
    let mut records = Vec::new();
    for (index, row) in chunk.iter().enumerate() {
        for rank in 0..k {
            let flat = index * k + rank;
            let id = ids[flat] as u32;
            records.push(LensRecord {
                prompt_id: row.prompt_id.clone(),
                class: row.class.clone(),
                layer: layer as i32,
                rank: rank as i32,
                token_id: id,
                token: tokenizer.id_to_token(id).unwrap_or_default(),
                text: tokenizer.decode(&[id], false).map_err(failed)?,
                logit: values[flat],
                prob: top_probs[flat],
            });
        }
    }
    Ok(records)
}
