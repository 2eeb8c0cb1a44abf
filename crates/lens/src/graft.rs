//! The `graft` stage. For each target prompt (by default of class
//! `malicious`) and each graft layer l, it replaces the residual stream at
//! the last prompt position after block l (state index l) with a state of
//! the source class and runs the remaining blocks. It records the next-token
//! top-k and its word-group shares. The same prompts without a graft are the
//! baseline.
//!
//! ```text
//! graft.parquet           prompt_id, layer, grafted, rank, token_id, token,
//!                         text, logit, prob, group (baseline: layer -1)
//! shares.parquet          layer, grafted, group, prompts, top1_count,
//!                         top1_share, topk_mass, topk_prob
//! continuations.parquet   prompt_id, layer, grafted, token_ids, text
//!                         (only when graft.continuation_tokens > 0)
//! graft_shares.svg/png    negative and positive shares by graft layer
//! ```
//!
//! Source states come from the extract stage's stored activations when it
//! stored the layer at each source prompt's last position; otherwise the
//! stage computes them with a forward pass.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float32Array, Float64Array, Int32Array, ListBuilder, StringArray,
    UInt32Array, UInt32Builder, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use ihs_engine::spec::{
    Device, Dtype, ExtractSection, GraftSection, GraftSource, LensSection, Spec,
};
use ihs_engine::{InputFiles, NodeContext, NodeView, Stage, StageError, StageSummary};
use ihs_model::{
    Batch, CausalLm, ForwardRequest, Graft, GraftTarget, Layers, LoadOptions, ModelError,
    PaddingSide, Position, TextTokenizer,
};
use ihs_store::{StoreError, TokenRow};
use serde_json::{json, Value};
use tch::{Kind, Tensor};

use crate::aggregate::{GroupShare, ShareAccumulator};
use crate::plot::{self, group_color, LineFigure, Panel, PlotError, Series};
use crate::table::{write_table, TableError};
use crate::words::{group_name, Group, WordListError, WordLists};

/// The `layer` value of baseline rows, which have no graft.
pub const BASELINE_LAYER: i32 = -1;

/// An error of the graft stage.
#[derive(Debug, thiserror::Error)]
pub enum GraftError {
    #[error("graft.source_class is not set; name the class whose states are grafted")]
    NoSourceClass,

    #[error("model {name} is not available on this machine: {reason}")]
    ModelUnavailable { name: String, reason: String },

    #[error("{} has no prompts of class `{class}` (classes found: {found}); check graft.{key} and the datasets", path.display())]
    NoPrompts {
        path: PathBuf,
        class: String,
        key: &'static str,
        found: String,
    },

    #[error("graft.source is `paired`, which needs at least as many `{source_class}` prompts ({sources}) as `{target_class}` prompts ({targets}); add source prompts, limit the target class, or use `source: mean`")]
    TooFewSources {
        source_class: String,
        target_class: String,
        sources: usize,
        targets: usize,
    },

    #[error("graft.layers contains {layer}, but the model has {blocks} blocks; use indices 0 to {blocks}")]
    LayerOutOfRange { layer: usize, blocks: usize },

    #[error("cannot load model {}: {source}", path.display())]
    Load {
        path: PathBuf,
        #[source]
        source: Box<ModelError>,
    },

    #[error("forward pass failed: {0}")]
    Forward(#[source] Box<ModelError>),

    #[error("cannot decode token ids {ids:?}: {source}")]
    Decode {
        ids: Vec<u32>,
        #[source]
        source: Box<ModelError>,
    },

    #[error("cannot copy a tensor to the host: {0}")]
    Tensor(#[from] tch::TchError),

    #[error(transparent)]
    Store(#[from] StoreError),

    #[error(transparent)]
    WordLists(#[from] WordListError),

    #[error(transparent)]
    Table(#[from] TableError),

    #[error(transparent)]
    Plot(#[from] PlotError),
}

impl From<GraftError> for StageError {
    fn from(error: GraftError) -> Self {
        StageError::with_source(error.to_string(), error)
    }
}

/// Returns the word-list file the graft stage reads: `lens.word_lists` when
/// the spec has a `lens` section, else the default file relative to the
/// current directory.
#[must_use]
pub fn graft_word_lists(spec: &Spec) -> PathBuf {
    if let Some(lens) = &spec.lens {
        return lens.word_lists.clone();
    }
    let default = PathBuf::from(LensSection::DEFAULT_WORD_LISTS);
    std::env::current_dir().map_or(default.clone(), |dir| dir.join(default))
}

/// The `graft` stage. It runs the model, so it is heavy.
#[derive(Debug, Clone, Copy, Default)]
pub struct GraftStage;

impl Stage for GraftStage {
    fn name(&self) -> &'static str {
        "graft"
    }

    fn code_version(&self) -> u32 {
        1
    }

    fn is_heavy(&self) -> bool {
        true
    }

    /// Returns the section, the model dtype, and the batch limits of
    /// `extract`. The stage batches its prompts with those limits, and the
    /// batch shapes change the numerics slightly.
    fn parameters(&self, node: &NodeView<'_>) -> Result<Value, StageError> {
        let extract = node.spec.extract.clone().unwrap_or_default();
        Ok(json!({
            "section": node.section(),
            "dtype": node.model.map(|model| model.dtype),
            "batch_size": extract.effective_batch_size(),
            "batch_tokens": extract.batch_tokens,
        }))
    }

    fn declare_inputs(
        &self,
        node: &NodeView<'_>,
        inputs: &mut InputFiles,
    ) -> Result<(), StageError> {
        if let Some(path) = node.model_path() {
            inputs.model(path).map_err(|error| {
                StageError::with_source(
                    format!("cannot list the model files of {}", path.display()),
                    error,
                )
            })?;
        }
        inputs.content("word_lists", graft_word_lists(node.spec));
        Ok(())
    }

    fn run(&self, ctx: &mut NodeContext<'_>) -> Result<StageSummary, StageError> {
        let section = ctx.spec().graft.clone().unwrap_or_default();
        let extract = ctx.spec().extract.clone().unwrap_or_default();
        let entry = ctx
            .model()
            .ok_or_else(|| {
                StageError::failed("the graft stage runs per model, but this node has no model")
            })?
            .clone();
        let model_path =
            ctx.model_path()
                .map(Path::to_owned)
                .ok_or_else(|| GraftError::ModelUnavailable {
                    name: entry.name.clone(),
                    reason: entry
                        .resolve_error()
                        .unwrap_or("its path is not set")
                        .to_owned(),
                })?;
        let tokens_path = ctx.input_dir("tokenize")?.join("tokens.parquet");
        let activations = ctx.input_dir("extract")?.join("activations");
        let lists = WordLists::load(&graft_word_lists(ctx.spec())).map_err(GraftError::from)?;

        let tokens = ihs_store::read_tokens(&tokens_path).map_err(GraftError::from)?;
        let prompts = GraftPrompts::select(&section, &tokens, &tokens_path)?;
        let options = LoadOptions {
            dtype: model_dtype(entry.dtype),
            devices: entry.devices.iter().map(|&d| model_device(d)).collect(),
        };
        let model = CausalLm::load(&model_path, &options).map_err(|source| GraftError::Load {
            path: model_path.clone(),
            source: Box::new(source),
        })?;
        let tokenizer =
            ihs_model::load_tokenizer(&model_path).map_err(|source| GraftError::Load {
                path: model_path.clone(),
                source: Box::new(source),
            })?;

        let runner = Runner {
            model: &model,
            tokenizer: &tokenizer,
            lists: &lists,
            section: &section,
            limits: BatchLimits::from_extract(&extract),
        };
        let layers = runner.layers()?;
        let (sources, origin) = runner.source_states(&prompts, &layers, &activations, ctx)?;
        let results = runner.graft_all(&prompts, &layers, &sources, ctx)?;
        let output = ctx.output_dir().to_owned();
        write_outputs(&output, &prompts, &results, &entry.name, &section)?;

        Ok(StageSummary::new()
            .with_rows("prompts", prompts.targets.len() as u64)
            .with_rows("layers", layers.len() as u64)
            .with_rows("source_layers_stored", origin.stored as u64)
            .with_rows("source_layers_computed", origin.computed as u64))
    }
}

fn model_dtype(dtype: Dtype) -> ihs_model::Dtype {
    match dtype {
        Dtype::F32 => ihs_model::Dtype::F32,
        Dtype::F16 => ihs_model::Dtype::F16,
        Dtype::Bf16 => ihs_model::Dtype::Bf16,
    }
}

fn model_device(device: Device) -> tch::Device {
    match device {
        Device::Cpu => tch::Device::Cpu,
        Device::Cuda(index) => tch::Device::Cuda(index),
    }
}

/// The target and source prompts, in `tokens.parquet` order.
#[derive(Debug)]
struct GraftPrompts {
    targets: Vec<TokenRow>,
    sources: Vec<TokenRow>,
    source: GraftSource,
}

impl GraftPrompts {
    fn select(
        section: &GraftSection,
        tokens: &[TokenRow],
        path: &Path,
    ) -> Result<Self, GraftError> {
        let source_class = section
            .source_class
            .as_deref()
            .ok_or(GraftError::NoSourceClass)?;
        let of_class = |class: &str, key: &'static str| -> Result<Vec<TokenRow>, GraftError> {
            let rows: Vec<TokenRow> = tokens
                .iter()
                .filter(|row| row.class == class)
                .cloned()
                .collect();
            if rows.is_empty() {
                let mut found: Vec<&str> = tokens.iter().map(|row| row.class.as_str()).collect();
                found.sort_unstable();
                found.dedup();
                return Err(GraftError::NoPrompts {
                    path: path.to_owned(),
                    class: class.to_owned(),
                    key,
                    found: found.join(", "),
                });
            }
            Ok(rows)
        };
        let targets = of_class(&section.target_class, "target_class")?;
        let sources = of_class(source_class, "source_class")?;
        if section.source == GraftSource::Paired && sources.len() < targets.len() {
            return Err(GraftError::TooFewSources {
                source_class: source_class.to_owned(),
                target_class: section.target_class.clone(),
                sources: sources.len(),
                targets: targets.len(),
            });
        }
        Ok(Self {
            targets,
            sources,
            source: section.source,
        })
    }
}

/// Batch limits taken from the `extract` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchLimits {
    prompts: Option<usize>,
    tokens: Option<usize>,
}

impl BatchLimits {
    fn from_extract(extract: &ExtractSection) -> Self {
        Self {
            prompts: extract.effective_batch_size(),
            tokens: extract.batch_tokens,
        }
    }

    /// Cuts prompts of these lengths, in order, into consecutive batches
    /// within both limits (a prompt over the token limit gets a batch alone).
    fn batches(self, lengths: &[usize]) -> Vec<Range<usize>> {
        let mut batches = Vec::new();
        let mut start = 0;
        let mut longest = 0;
        for (index, &length) in lengths.iter().enumerate() {
            let count = index - start + 1;
            let widest = longest.max(length);
            let over = self.prompts.is_some_and(|limit| count > limit)
                || self.tokens.is_some_and(|limit| count * widest > limit);
            if over && index > start {
                batches.push(start..index);
                start = index;
                longest = length;
            } else {
                longest = widest;
            }
        }
        if start < lengths.len() {
            batches.push(start..lengths.len());
        }
        batches
    }
}

/// Counts of graft layers by the origin of their source states.
#[derive(Debug, Default, Clone, Copy)]
struct SourceOrigin {
    stored: usize,
    computed: usize,
}

/// One top-k entry: token id, logit and probability.
type Ranked = Vec<(u32, f32, f32)>;

/// The next-token top-k of every target prompt at one graft layer (or the
/// baseline), and the greedy continuations when requested.
#[derive(Debug, Default)]
struct LayerResult {
    /// One list per target prompt, in target order.
    top_k: Vec<Ranked>,
    /// Generated token ids per target prompt (empty without continuation).
    continuations: Vec<Vec<u32>>,
}

/// Results by graft layer, and the baseline under [`BASELINE_LAYER`].
#[derive(Debug, Default)]
struct GraftResults {
    layers: BTreeMap<i32, LayerResult>,
    /// Token id to vocabulary string, decoded text and group.
    tokens: HashMap<u32, (String, String, Option<Group>)>,
    /// Decoded continuations by (layer, target index).
    texts: HashMap<(i32, usize), String>,
}

struct Runner<'a> {
    model: &'a CausalLm,
    tokenizer: &'a TextTokenizer,
    lists: &'a WordLists,
    section: &'a GraftSection,
    limits: BatchLimits,
}

impl Runner<'_> {
    /// Returns the graft layers: `graft.layers`, or every block (1 to L).
    fn layers(&self) -> Result<Vec<usize>, GraftError> {
        let blocks = self.model.num_layers();
        if self.section.layers.is_empty() {
            return Ok((1..=blocks).collect());
        }
        let mut layers = self.section.layers.clone();
        layers.sort_unstable();
        layers.dedup();
        if let Some(&layer) = layers.iter().find(|&&layer| layer > blocks) {
            return Err(GraftError::LayerOutOfRange { layer, blocks });
        }
        Ok(layers)
    }

    fn batch(&self, sequences: &[Vec<u32>]) -> Result<Batch, GraftError> {
        Batch::new(sequences, PaddingSide::Left, self.tokenizer.pad_id())
            .map_err(|error| GraftError::Forward(Box::new(error)))
    }

    /// Returns, per graft layer, the source states to graft: `[1, hidden]`
    /// (the mean) or `[targets, hidden]` (paired by order).
    fn source_states(
        &self,
        prompts: &GraftPrompts,
        layers: &[usize],
        activations: &Path,
        ctx: &NodeContext<'_>,
    ) -> Result<(BTreeMap<usize, Tensor>, SourceOrigin), StageError> {
        let mut states: BTreeMap<usize, Tensor> = BTreeMap::new();
        let mut origin = SourceOrigin::default();
        for &layer in layers {
            if let Some(stored) = stored_states(activations, layer, &prompts.sources)? {
                states.insert(layer, stored);
                origin.stored += 1;
            }
        }
        let missing: Vec<usize> = layers
            .iter()
            .copied()
            .filter(|layer| !states.contains_key(layer))
            .collect();
        if !missing.is_empty() {
            tracing::info!(
                node = %ctx.node(),
                layers = ?missing,
                "the extract output has no last-position states of these layers for every source prompt; computing them"
            );
            let sequences: Vec<Vec<u32>> = prompts
                .sources
                .iter()
                .map(|row| row.input_ids.clone())
                .collect();
            let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
            let mut parts: BTreeMap<usize, Vec<Tensor>> = BTreeMap::new();
            for range in self.limits.batches(&lengths) {
                ctx.check_stop()?;
                let batch = self.batch(&sequences[range])?;
                let request = ForwardRequest {
                    layers: Layers::Indices(missing.clone()),
                    position: Position::Last,
                    graft: None,
                    logits: false,
                };
                let output = self
                    .model
                    .forward(&batch, &request)
                    .map_err(|error| GraftError::Forward(Box::new(error)))?;
                for &layer in &missing {
                    if let Some(state) = output.state(layer) {
                        parts
                            .entry(layer)
                            .or_default()
                            .push(state.squeeze_dim(1).to_device(tch::Device::Cpu));
                    }
                }
            }
            for (layer, tensors) in parts {
                states.insert(layer, Tensor::cat(&tensors, 0));
                origin.computed += 1;
            }
        }

        let targets = prompts.targets.len() as i64;
        let states = states
            .into_iter()
            .map(|(layer, all)| {
                let chosen = match prompts.source {
                    GraftSource::Mean => all.mean_dim(0, true, Kind::Float),
                    GraftSource::Paired => all.narrow(0, 0, targets),
                };
                (layer, chosen)
            })
            .collect();
        Ok((states, origin))
    }

    /// Runs the baseline and every graft layer over the target prompts.
    fn graft_all(
        &self,
        prompts: &GraftPrompts,
        layers: &[usize],
        sources: &BTreeMap<usize, Tensor>,
        ctx: &NodeContext<'_>,
    ) -> Result<GraftResults, StageError> {
        let sequences: Vec<Vec<u32>> = prompts
            .targets
            .iter()
            .map(|row| row.input_ids.clone())
            .collect();
        let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
        let batches = self.limits.batches(&lengths);
        let passes = batches.len() * (layers.len() + 1);
        let bar = ctx.progress_bar(passes as u64, "passes");

        let mut results = GraftResults::default();
        for range in &batches {
            ctx.check_stop()?;
            let rows = &sequences[range.clone()];
            let batch = self.batch(rows)?;
            let grafts: Vec<Graft> = layers
                .iter()
                .map(|&layer| {
                    let source = &sources[&layer];
                    let states = match prompts.source {
                        GraftSource::Mean => source.expand([range.len() as i64, -1], false),
                        GraftSource::Paired => {
                            source.narrow(0, range.start as i64, range.len() as i64)
                        }
                    };
                    Graft {
                        layer,
                        target: GraftTarget::Last,
                        states,
                    }
                })
                .collect();
            // One pass without a graft, then one per graft layer, each
            // resuming from the first pass's residual stream after its layer.
            let logits = self
                .model
                .forward_grafts(&batch, &grafts)
                .map_err(|error| GraftError::Forward(Box::new(error)))?;
            let points = std::iter::once((BASELINE_LAYER, None, &logits.baseline)).chain(
                grafts
                    .iter()
                    .zip(&logits.grafted)
                    .map(|(graft, logits)| (graft.layer as i32, Some(graft), logits)),
            );
            for (layer, graft, logits) in points {
                ctx.check_stop()?;
                let ranked = top_k(logits, self.section.top_k)?;
                let continuations = if self.section.continuation_tokens > 0 {
                    let first: Vec<u32> = ranked.iter().map(|list| list[0].0).collect();
                    let graft = graft.map(|graft| (graft.layer, graft.states.shallow_clone()));
                    self.continue_greedy(rows, first, graft.as_ref(), ctx)?
                } else {
                    Vec::new()
                };
                let entry = results.layers.entry(layer).or_default();
                entry.top_k.extend(ranked);
                entry.continuations.extend(continuations);
                bar.inc(1);
            }
        }
        bar.finish_and_clear();
        self.describe_tokens(&mut results)?;
        Ok(results)
    }

    /// Generates `continuation_tokens` tokens greedily after each prompt,
    /// starting with `first` (the argmax already computed).
    ///
    /// NOTE: the model crate has no KV cache yet, so every step re-runs the
    /// full forward pass over prompt and generated tokens with the graft
    /// applied at the original last prompt position. The cost is quadratic
    /// in the continuation length.
    fn continue_greedy(
        &self,
        prompts: &[Vec<u32>],
        first: Vec<u32>,
        graft: Option<&(usize, Tensor)>,
        ctx: &NodeContext<'_>,
    ) -> Result<Vec<Vec<u32>>, StageError> {
        // NOTE: only the tokenizer's EOS token ends a continuation; other end
        // tokens of a chat template (such as Llama-3's `<|eot_id|>`) do not.
        let eos = self
            .tokenizer
            .special_tokens()
            .eos
            .as_deref()
            .and_then(|token| self.tokenizer.token_to_id(token));
        let mut generated: Vec<Vec<u32>> = first.into_iter().map(|id| vec![id]).collect();
        let finished = |generated: &[Vec<u32>]| {
            eos.is_some_and(|eos| generated.iter().all(|ids| ids.contains(&eos)))
        };
        while generated[0].len() < self.section.continuation_tokens && !finished(&generated) {
            ctx.check_stop()?;
            let sequences: Vec<Vec<u32>> = prompts
                .iter()
                .zip(&generated)
                .map(|(prompt, ids)| [prompt.as_slice(), ids.as_slice()].concat())
                .collect();
            let batch = self.batch(&sequences)?;
            let graft = graft.map(|(layer, states)| Graft {
                layer: *layer,
                target: GraftTarget::Tokens(prompts.iter().map(|p| p.len() - 1).collect()),
                states: states.shallow_clone(),
            });
            let request = ForwardRequest {
                layers: Layers::None,
                position: Position::Last,
                graft,
                logits: true,
            };
            let output = self
                .model
                .forward(&batch, &request)
                .map_err(|error| GraftError::Forward(Box::new(error)))?;
            let logits = output.logits.expect("logits were requested");
            let next: Vec<i64> =
                Vec::try_from(logits.argmax(-1, false).to_device(tch::Device::Cpu))
                    .map_err(GraftError::from)?;
            for (ids, id) in generated.iter_mut().zip(next) {
                ids.push(id as u32);
            }
        }
        for ids in &mut generated {
            if let Some(end) = eos.and_then(|eos| ids.iter().position(|&id| id == eos)) {
                ids.truncate(end);
            }
        }
        Ok(generated)
    }

    /// Looks up the vocabulary string, text and group of every token in the
    /// results, and decodes the continuations.
    fn describe_tokens(&self, results: &mut GraftResults) -> Result<(), GraftError> {
        let ids: Vec<u32> = results
            .layers
            .values()
            .flat_map(|layer| layer.top_k.iter().flatten().map(|&(id, _, _)| id))
            .collect();
        for id in ids {
            if results.tokens.contains_key(&id) {
                continue;
            }
            let token = self.tokenizer.id_to_token(id).unwrap_or_default();
            let text =
                self.tokenizer
                    .decode(&[id], false)
                    .map_err(|source| GraftError::Decode {
                        ids: vec![id],
                        source: Box::new(source),
                    })?;
            let group = self.lists.group_of(&text);
            results.tokens.insert(id, (token, text, group));
        }
        for (&layer, result) in &results.layers {
            for (index, ids) in result.continuations.iter().enumerate() {
                let text =
                    self.tokenizer
                        .decode(ids, true)
                        .map_err(|source| GraftError::Decode {
                            ids: ids.clone(),
                            source: Box::new(source),
                        })?;
                results.texts.insert((layer, index), text);
            }
        }
        Ok(())
    }
}

/// Reads the stored states of `layer` at each source prompt's last position,
/// in source order. `None` when the layer is not stored or a prompt has no
/// state at its last position (for example with `positions: mean`).
fn stored_states(
    activations: &Path,
    layer: usize,
    sources: &[TokenRow],
) -> Result<Option<Tensor>, GraftError> {
    let matrix = match ihs_store::read_layer(activations, layer) {
        Ok(matrix) => matrix,
        Err(StoreError::NoShards { .. }) => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    let mut rows: HashMap<(&str, i32), usize> = HashMap::new();
    for (row, (prompt_id, &position)) in matrix.prompt_ids.iter().zip(&matrix.positions).enumerate()
    {
        rows.insert((prompt_id.as_str(), position), row);
    }
    let mut chosen = Vec::with_capacity(sources.len());
    for source in sources {
        let last = source.input_ids.len() as i32 - 1;
        match rows.get(&(source.prompt_id.as_str(), last)) {
            Some(&row) => chosen.push(row),
            None => return Ok(None),
        }
    }
    let width = matrix.states.ncols();
    let mut values = Vec::with_capacity(chosen.len() * width);
    for row in chosen {
        values.extend(matrix.states.row(row).iter().copied());
    }
    Ok(Some(
        Tensor::from_slice(&values).view([sources.len() as i64, width as i64]),
    ))
}

/// Returns the top `k` (token id, logit, probability) of each row of
/// `[batch, vocab]` logits, probabilities by softmax over the vocabulary.
fn top_k(logits: &Tensor, k: usize) -> Result<Vec<Ranked>, GraftError> {
    let logits = logits.to_device(tch::Device::Cpu).to_kind(Kind::Float);
    let (rows, vocab) = logits.size2()?;
    let k = (k as i64).min(vocab);
    let probs = logits.softmax(-1, Kind::Float);
    let (values, indices) = logits.topk(k, -1, true, true);
    let top_probs = probs.gather(-1, &indices, false);
    let values: Vec<f32> = Vec::try_from(values.flatten(0, -1))?;
    let indices: Vec<i64> = Vec::try_from(indices.flatten(0, -1))?;
    let top_probs: Vec<f32> = Vec::try_from(top_probs.flatten(0, -1))?;
    let k = k as usize;
    Ok((0..rows as usize)
        .map(|row| {
            (row * k..(row + 1) * k)
                .map(|i| (indices[i] as u32, values[i], top_probs[i]))
                .collect()
        })
        .collect())
}

/// Computes the group shares of each layer's top-k lists.
fn layer_shares(results: &GraftResults) -> Vec<(i32, Vec<GroupShare>)> {
    results
        .layers
        .iter()
        .map(|(&layer, result)| {
            let mut accumulator = ShareAccumulator::new();
            for list in &result.top_k {
                let grouped: Vec<(Option<Group>, f32)> = list
                    .iter()
                    .map(|&(id, _, prob)| (results.tokens.get(&id).and_then(|t| t.2), prob))
                    .collect();
                accumulator.add_prompt(&grouped);
            }
            (layer, accumulator.shares())
        })
        .collect()
}

fn write_outputs(
    output: &Path,
    prompts: &GraftPrompts,
    results: &GraftResults,
    model: &str,
    section: &GraftSection,
) -> Result<(), GraftError> {
    write_next_tokens(&output.join("graft.parquet"), prompts, results)?;
    let shares = layer_shares(results);
    write_shares(&output.join("shares.parquet"), &shares)?;
    if section.continuation_tokens > 0 {
        write_continuations(&output.join("continuations.parquet"), prompts, results)?;
    }
    plot::write_lines(
        &shares_figure(&shares, model, section),
        &output.join("graft_shares"),
    )?;
    Ok(())
}

fn write_next_tokens(
    path: &Path,
    prompts: &GraftPrompts,
    results: &GraftResults,
) -> Result<(), TableError> {
    let mut prompt_ids = Vec::new();
    let mut layers = Vec::new();
    let mut grafted = Vec::new();
    let mut ranks = Vec::new();
    let mut token_ids = Vec::new();
    let mut tokens = Vec::new();
    let mut texts = Vec::new();
    let mut logits = Vec::new();
    let mut probs = Vec::new();
    let mut groups = Vec::new();
    for (&layer, result) in &results.layers {
        for (target, list) in prompts.targets.iter().zip(&result.top_k) {
            for (rank, &(id, logit, prob)) in list.iter().enumerate() {
                let (token, text, group) = results.tokens.get(&id).cloned().unwrap_or_default();
                prompt_ids.push(target.prompt_id.clone());
                layers.push(layer);
                grafted.push(layer != BASELINE_LAYER);
                ranks.push(rank as i32);
                token_ids.push(id);
                tokens.push(token);
                texts.push(text);
                logits.push(logit);
                probs.push(prob);
                groups.push(group_name(group));
            }
        }
    }
    let schema = Schema::new(vec![
        Field::new("prompt_id", DataType::Utf8, false),
        Field::new("layer", DataType::Int32, false),
        Field::new("grafted", DataType::Boolean, false),
        Field::new("rank", DataType::Int32, false),
        Field::new("token_id", DataType::UInt32, false),
        Field::new("token", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("logit", DataType::Float32, false),
        Field::new("prob", DataType::Float32, false),
        Field::new("group", DataType::Utf8, false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(prompt_ids)),
        Arc::new(Int32Array::from(layers)),
        Arc::new(BooleanArray::from(grafted)),
        Arc::new(Int32Array::from(ranks)),
        Arc::new(UInt32Array::from(token_ids)),
        Arc::new(StringArray::from(tokens)),
        Arc::new(StringArray::from(texts)),
        Arc::new(Float32Array::from(logits)),
        Arc::new(Float32Array::from(probs)),
        Arc::new(StringArray::from(groups)),
    ];
    write_table(path, schema, columns)
}

fn write_shares(path: &Path, shares: &[(i32, Vec<GroupShare>)]) -> Result<(), TableError> {
    let rows: Vec<(i32, &GroupShare)> = shares
        .iter()
        .flat_map(|(layer, list)| list.iter().map(move |share| (*layer, share)))
        .collect();
    let schema = Schema::new(vec![
        Field::new("layer", DataType::Int32, false),
        Field::new("grafted", DataType::Boolean, false),
        Field::new("group", DataType::Utf8, false),
        Field::new("prompts", DataType::UInt64, false),
        Field::new("top1_count", DataType::UInt64, false),
        Field::new("top1_share", DataType::Float64, false),
        Field::new("topk_mass", DataType::Float64, false),
        Field::new("topk_prob", DataType::Float64, false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.0))),
        Arc::new(BooleanArray::from(
            rows.iter()
                .map(|r| r.0 != BASELINE_LAYER)
                .collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.1.group),
        )),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.1.prompts as u64),
        )),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.1.top1_count),
        )),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.1.top1_share),
        )),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.1.topk_mass),
        )),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.1.topk_prob),
        )),
    ];
    write_table(path, schema, columns)
}

fn write_continuations(
    path: &Path,
    prompts: &GraftPrompts,
    results: &GraftResults,
) -> Result<(), TableError> {
    let mut prompt_ids = Vec::new();
    let mut layers = Vec::new();
    let mut ids = ListBuilder::new(UInt32Builder::new());
    let mut texts = Vec::new();
    for (&layer, result) in &results.layers {
        for (index, (target, generated)) in prompts
            .targets
            .iter()
            .zip(&result.continuations)
            .enumerate()
        {
            prompt_ids.push(target.prompt_id.clone());
            layers.push(layer);
            ids.values().append_slice(generated);
            ids.append(true);
            texts.push(
                results
                    .texts
                    .get(&(layer, index))
                    .cloned()
                    .unwrap_or_default(),
            );
        }
    }
    let grafted: Vec<bool> = layers
        .iter()
        .map(|&layer| layer != BASELINE_LAYER)
        .collect();
    let schema = Schema::new(vec![
        Field::new("prompt_id", DataType::Utf8, false),
        Field::new("layer", DataType::Int32, false),
        Field::new("grafted", DataType::Boolean, false),
        Field::new(
            "token_ids",
            DataType::List(Arc::new(Field::new("item", DataType::UInt32, true))),
            false,
        ),
        Field::new("text", DataType::Utf8, false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(prompt_ids)),
        Arc::new(Int32Array::from(layers)),
        Arc::new(BooleanArray::from(grafted)),
        Arc::new(ids.finish()),
        Arc::new(StringArray::from(texts)),
    ];
    write_table(path, schema, columns)
}

fn shares_figure(
    shares: &[(i32, Vec<GroupShare>)],
    model: &str,
    section: &GraftSection,
) -> LineFigure {
    let value = |list: &[GroupShare], group: Group, top1: bool| -> f64 {
        list.iter()
            .find(|share| share.group == group.name())
            .map_or(0.0, |share| {
                if top1 {
                    share.top1_share
                } else {
                    share.topk_mass
                }
            })
    };
    let grafted: Vec<&(i32, Vec<GroupShare>)> = shares
        .iter()
        .filter(|(layer, _)| *layer != BASELINE_LAYER)
        .collect();
    let baseline = shares.iter().find(|(layer, _)| *layer == BASELINE_LAYER);
    let first = grafted.first().map_or(0.0, |(layer, _)| f64::from(*layer));
    let last = grafted.last().map_or(1.0, |(layer, _)| f64::from(*layer));

    let panel = |title: &str, top1: bool| {
        let mut series = Vec::new();
        for group in [Group::Negative, Group::Positive] {
            series.push(Series {
                name: format!("{group}, grafted"),
                color: group_color(Some(group)),
                points: grafted
                    .iter()
                    .map(|(layer, list)| (f64::from(*layer), value(list, group, top1)))
                    .collect(),
                dashed: false,
            });
            if let Some((_, list)) = baseline {
                let level = value(list, group, top1);
                series.push(Series {
                    name: format!("{group}, baseline"),
                    color: group_color(Some(group)),
                    points: vec![(first, level), (last, level)],
                    dashed: true,
                });
            }
        }
        Panel {
            title: title.to_owned(),
            series,
        }
    };
    let source = match section.source {
        GraftSource::Mean => "mean state",
        GraftSource::Paired => "paired states",
    };
    LineFigure {
        title: format!(
            "{model}: {} prompts with the {source} of `{}` grafted",
            section.target_class,
            section.source_class.as_deref().unwrap_or("?"),
        ),
        x_label: "graft layer (block after which the state is replaced)".to_owned(),
        y_label: "share".to_owned(),
        columns: 2,
        panels: vec![
            panel("top-1 token in group (share of prompts)", true),
            panel("top-k probability mass in group", false),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_prompt_limit() {
        let limits = BatchLimits {
            prompts: Some(2),
            tokens: None,
        };
        assert_eq!(limits.batches(&[3, 4, 5, 6, 7]), [0..2, 2..4, 4..5]);
        assert!(limits.batches(&[]).is_empty());
    }

    #[test]
    fn batches_respect_token_limit() {
        let limits = BatchLimits {
            prompts: None,
            tokens: Some(10),
        };
        // 2 x 4 fits; a third prompt of 5 would make 3 x 5; 12 alone is over
        // the limit but still gets its own batch.
        assert_eq!(limits.batches(&[4, 4, 5, 12, 2]), [0..2, 2..3, 3..4, 4..5]);
    }

    #[test]
    fn top_k_orders_by_logit() {
        let logits = Tensor::from_slice(&[0.0_f32, 2.0, 1.0, 3.0, 0.0, 0.0]).view([2, 3]);
        let ranked = top_k(&logits, 2).unwrap();
        assert_eq!(ranked.len(), 2);
        assert_eq!(ranked[0].iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(ranked[1][0].0, 0);
        let expected = 2.0_f32.exp() / (1.0 + 2.0_f32.exp() + 1.0_f32.exp());
        assert!((ranked[0][0].2 - expected).abs() < 1e-6);
        assert_eq!(ranked[0][1].1, 1.0);
        // k larger than the vocabulary is cut to it.
        assert_eq!(top_k(&logits, 10).unwrap()[0].len(), 3);
    }
}
