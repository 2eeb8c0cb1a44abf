//! The extract stage itself: shards of prompts, batched forward passes, and
//! the files of each shard.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ihs_engine::spec::{
    Device as SpecDevice, Dtype as SpecDtype, ExtractSection, LayerSelection, ModelEntry, Positions,
};
use ihs_engine::{
    shard_dir_name, InputFiles, NodeContext, NodeView, Stage, StageError, StageSummary,
};
use ihs_model::{
    Batch, CausalLm, Dtype, ForwardRequest, Layers, LoadOptions, PaddingSide, Position,
    TextTokenizer,
};
use ihs_store::{ActivationRows, StoreDtype, TokenRow, MEAN_POSITION};
use serde_json::{json, Value};
use tch::{Kind, Tensor};

use crate::batching::{plan_batches, BatchLimits};
use crate::lens::{lens_records, LensRecords};

/// Folder of the activation shards in the stage output.
pub const ACTIVATIONS_DIR: &str = "activations";
/// Folder of the logit-lens records in the stage output.
pub const LENS_DIR: &str = "lens";

/// Logits computed at once by the lens, in bytes: bounds its memory for large
/// vocabularies and many layers.
const LENS_LOGITS_BYTES: usize = 64 << 20;

/// The extract stage.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExtractStage;

fn failed(error: impl std::fmt::Display) -> StageError {
    StageError::failed(error.to_string())
}

fn model_of<'a>(model: Option<&'a ModelEntry>) -> Result<&'a ModelEntry, StageError> {
    model.ok_or_else(|| failed("the extract stage runs once per model, but this node has no model"))
}

/// Returns the dtype and devices of a model entry as load options.
pub fn load_options(model: &ModelEntry) -> LoadOptions {
    LoadOptions {
        dtype: match model.dtype {
            SpecDtype::F32 => Dtype::F32,
            SpecDtype::F16 => Dtype::F16,
            SpecDtype::Bf16 => Dtype::Bf16,
        },
        devices: model
            .devices
            .iter()
            .map(|device| match device {
                SpecDevice::Cpu => tch::Device::Cpu,
                SpecDevice::Cuda(index) => tch::Device::Cuda(*index),
            })
            .collect(),
    }
}

impl Stage for ExtractStage {
    fn name(&self) -> &'static str {
        "extract"
    }

    fn code_version(&self) -> u32 {
        1
    }

    fn is_heavy(&self) -> bool {
        true
    }

    fn parameters(&self, node: &NodeView<'_>) -> Result<Value, StageError> {
        let model = model_of(node.model)?;
        // The device kind changes the numerics; which GPU does not.
        let kinds: Vec<&str> = model
            .devices
            .iter()
            .map(|device| match device {
                SpecDevice::Cpu => "cpu",
                SpecDevice::Cuda(_) => "cuda",
            })
            .collect();
        Ok(json!({
            "section": node.section(),
            "dtype": model.dtype,
            "device_kinds": kinds,
        }))
    }

    fn declare_inputs(
        &self,
        node: &NodeView<'_>,
        inputs: &mut InputFiles,
    ) -> Result<(), StageError> {
        if let Some(path) = node.model_path() {
            inputs.model(path).map_err(failed)?;
        }
        Ok(())
    }

    fn run(&self, ctx: &mut NodeContext<'_>) -> Result<StageSummary, StageError> {
        let model_entry = model_of(ctx.model())?.clone();
        let section = ctx.spec().extract.clone().unwrap_or_default();
        let tokens_path = ctx.input_dir("tokenize")?.join("tokens.parquet");
        let tokens = ihs_store::read_tokens(&tokens_path).map_err(failed)?;
        let shard_size = section.shard_size.max(1);
        let shard_count = tokens.len().div_ceil(shard_size);
        ctx.set_shard_count(shard_count)?;

        let mut run = ExtractRun::default();
        let pending: Vec<usize> = (0..shard_count)
            .filter(|&s| !ctx.is_shard_complete(s))
            .collect();
        if !pending.is_empty() {
            let path = ctx
                .model_path()
                .ok_or_else(|| {
                    failed(format!(
                        "model {} is not available on this machine",
                        model_entry.name
                    ))
                })?
                .to_path_buf();
            let started = Instant::now();
            let model = CausalLm::load(&path, &load_options(&model_entry)).map_err(failed)?;
            let tokenizer = ihs_model::load_tokenizer(&path).map_err(failed)?;
            run.load_seconds = started.elapsed().as_secs_f64();
            tracing::info!(
                model = %model_entry.name,
                dtype = %model.dtype(),
                load_s = run.load_seconds,
                shards = pending.len(),
                "model loaded"
            );
            run.peak_rss_after_load_mib = take_peak_rss_mib();
            let plan = ShardPlan::new(&model, &section)?;

            let bar = ctx.progress_bar(tokens.len() as u64, "prompts");
            bar.inc(((shard_count - pending.len()) * shard_size).min(tokens.len()) as u64);
            for shard in pending {
                ctx.check_stop()?;
                let rows =
                    &tokens[shard * shard_size..((shard + 1) * shard_size).min(tokens.len())];
                let output = plan.compute(&model, &tokenizer, rows, &mut run, &bar)?;
                ctx.commit_shard(shard, |dir| output.write(dir, shard, &model_entry.name))?;
                tracing::debug!(model = %model_entry.name, shard, prompts = rows.len(), "shard committed");
            }
            bar.finish_and_clear();
        }

        move_shards_into_place(ctx.output_dir(), shard_count)?;
        Ok(run.summary(tokens.len()))
    }
}

/// Throughput of the shards this run computed.
#[derive(Debug, Default)]
struct ExtractRun {
    prompts: usize,
    tokens: usize,
    load_seconds: f64,
    /// Forward passes, the states' copy to host memory and their finite check.
    forward_seconds: f64,
    /// Logit-lens heads and top-k of the stored states.
    lens_seconds: f64,
    /// The process's peak RSS up to the end of the model load, set only when
    /// the kernel's peak tracking was restarted after it.
    peak_rss_after_load_mib: Option<f64>,
}

impl ExtractRun {
    fn summary(&self, total_prompts: usize) -> StageSummary {
        let mut summary = StageSummary::new()
            .with_rows("prompts", total_prompts as u64)
            .with_rows("prompts_computed", self.prompts as u64)
            .with_rows("tokens_computed", self.tokens as u64);
        if self.forward_seconds > 0.0 {
            summary = summary
                .with_metric("load_seconds", self.load_seconds)
                .with_metric("forward_seconds", self.forward_seconds)
                .with_metric("lens_seconds", self.lens_seconds)
                .with_metric("prompts_per_s", self.prompts as f64 / self.forward_seconds)
                .with_metric("tokens_per_s", self.tokens as f64 / self.forward_seconds);
        }
        match (self.peak_rss_after_load_mib, peak_rss_mib()) {
            (Some(after_load), Some(shards)) => {
                summary = summary
                    .with_metric("peak_rss_after_load_mib", after_load)
                    .with_metric("shards_peak_rss_mib", shards)
                    .with_metric("peak_rss_mib", after_load.max(shards));
            }
            (None, Some(peak)) => summary = summary.with_metric("peak_rss_mib", peak),
            (_, None) => {}
        }
        summary
    }
}

/// The per-shard settings of a run: layers, position, batching and storage.
struct ShardPlan {
    layers: Vec<usize>,
    position: Position,
    positions_per_prompt: usize,
    limits: BatchLimits,
    store_dtype: StoreDtype,
    lens_top_k: Option<usize>,
}

impl ShardPlan {
    fn new(model: &CausalLm, section: &ExtractSection) -> Result<Self, StageError> {
        let num_layers = model.num_layers();
        let layers: Vec<usize> = match &section.layers {
            LayerSelection::All => (0..=num_layers).collect(),
            LayerSelection::List(list) => {
                let mut list = list.clone();
                list.sort_unstable();
                list.dedup();
                if let Some(&bad) = list.iter().find(|&&l| l > num_layers) {
                    return Err(failed(format!(
                        "extract.layers names layer {bad}, but the model has {num_layers} blocks (layers 0..={num_layers})"
                    )));
                }
                list
            }
        };
        let (position, positions_per_prompt) = match section.positions {
            Positions::Last => (Position::Last, 1),
            Positions::Mean => (Position::Mean, 1),
            Positions::LastN(n) => (Position::LastN(n), n),
        };
        let lens_top_k = section.lens.enabled.then_some(section.lens.top_k);
        if lens_top_k.is_some() && position != Position::Last {
            return Err(failed(
                "extract.lens reads the last prompt position, so it needs `positions: last`; \
                 disable extract.lens or store the last position",
            ));
        }
        let batch_size = match (section.batch_size, section.batch_tokens) {
            (None, None) => Some(8),
            (size, _) => size,
        };
        Ok(Self {
            layers,
            position,
            positions_per_prompt,
            limits: BatchLimits {
                prompts: batch_size,
                tokens: section.batch_tokens,
            },
            store_dtype: match section.store_dtype {
                ihs_engine::spec::StoreDtype::F32 => StoreDtype::F32,
                ihs_engine::spec::StoreDtype::F16 => StoreDtype::F16,
                ihs_engine::spec::StoreDtype::Bf16 => StoreDtype::Bf16,
            },
            lens_top_k,
        })
    }

    /// Runs the forward passes of one shard and returns its rows.
    fn compute(
        &self,
        model: &CausalLm,
        tokenizer: &TextTokenizer,
        rows: &[TokenRow],
        run: &mut ExtractRun,
        bar: &indicatif::ProgressBar,
    ) -> Result<ShardOutput, StageError> {
        let hidden = model.config().hidden_size;
        let per_prompt = self.positions_per_prompt * hidden;
        let mut states: Vec<Vec<f32>> = vec![vec![0.0; rows.len() * per_prompt]; self.layers.len()];
        let lengths: Vec<usize> = rows.iter().map(|r| r.input_ids.len()).collect();

        for batch_rows in plan_batches(&lengths, self.limits) {
            let sequences: Vec<Vec<u32>> = batch_rows
                .iter()
                .map(|&i| rows[i].input_ids.clone())
                .collect();
            let batch =
                Batch::new(&sequences, PaddingSide::Left, tokenizer.pad_id()).map_err(failed)?;
            let request = ForwardRequest {
                layers: Layers::Indices(self.layers.clone()),
                position: self.position,
                graft: None,
                logits: false,
            };
            let started = Instant::now();
            let output = model.forward(&batch, &request).map_err(failed)?;

            for (slot, state) in output.states.iter().enumerate() {
                check_finite(state, &batch_rows, rows, self.layers[slot])?;
                let values: Vec<f32> =
                    Vec::try_from(state.to_device(tch::Device::Cpu).flatten(0, -1))
                        .map_err(failed)?;
                for (within, &row) in batch_rows.iter().enumerate() {
                    states[slot][row * per_prompt..(row + 1) * per_prompt]
                        .copy_from_slice(&values[within * per_prompt..(within + 1) * per_prompt]);
                }
            }
            run.forward_seconds += started.elapsed().as_secs_f64();
            run.prompts += batch_rows.len();
            run.tokens += batch_rows.iter().map(|&i| lengths[i]).sum::<usize>();
            bar.inc(batch_rows.len() as u64);
            if run.forward_seconds > 0.0 {
                bar.set_message(format!(
                    "{:.1} prompts/s, {:.0} tokens/s",
                    run.prompts as f64 / run.forward_seconds,
                    run.tokens as f64 / run.forward_seconds
                ));
            }
        }

        let lens = match self.lens_top_k {
            Some(k) => {
                let started = Instant::now();
                let records = self.lens(model, tokenizer, rows, &states, k)?;
                run.lens_seconds += started.elapsed().as_secs_f64();
                Some(records)
            }
            None => None,
        };
        Ok(ShardOutput {
            activations: self.activation_rows(rows, states, hidden),
            layers: self.layers.clone(),
            store_dtype: self.store_dtype,
            lens,
        })
    }

    fn activation_rows(
        &self,
        rows: &[TokenRow],
        states: Vec<Vec<f32>>,
        hidden: usize,
    ) -> Vec<ActivationRows> {
        let mut prompt_ids = Vec::with_capacity(rows.len() * self.positions_per_prompt);
        let mut classes = Vec::with_capacity(prompt_ids.capacity());
        let mut positions = Vec::with_capacity(prompt_ids.capacity());
        for row in rows {
            let n = row.input_ids.len() as i32;
            for j in 0..self.positions_per_prompt as i32 {
                prompt_ids.push(row.prompt_id.clone());
                classes.push(row.class.clone());
                positions.push(match self.position {
                    Position::Mean => MEAN_POSITION,
                    Position::Last => n - 1,
                    _ => n - self.positions_per_prompt as i32 + j,
                });
            }
        }
        states
            .into_iter()
            .map(|values| ActivationRows {
                prompt_ids: prompt_ids.clone(),
                classes: classes.clone(),
                positions: positions.clone(),
                hidden: values,
                hidden_size: hidden,
            })
            .collect()
    }

    /// Logit-lens records of every stored layer, in chunks of prompts that
    /// keep the logits under [`LENS_LOGITS_BYTES`].
    fn lens(
        &self,
        model: &CausalLm,
        tokenizer: &TextTokenizer,
        rows: &[TokenRow],
        states: &[Vec<f32>],
        k: usize,
    ) -> Result<LensRecords, StageError> {
        let hidden = model.config().hidden_size;
        let per_prompt = self.layers.len() * model.config().vocab_size * 4;
        let chunk = (LENS_LOGITS_BYTES / per_prompt.max(1)).max(1);
        let mut records = LensRecords::default();
        let _no_grad = tch::no_grad_guard();
        for start in (0..rows.len()).step_by(chunk) {
            let end = (start + chunk).min(rows.len());
            let layers: Vec<Tensor> = states
                .iter()
                .map(|values| {
                    Tensor::from_slice(&values[start * hidden..end * hidden])
                        .view([(end - start) as i64, hidden as i64])
                })
                .collect();
            let stacked = Tensor::stack(&layers, 0);
            let prompts: Vec<(&str, &str)> = rows[start..end]
                .iter()
                .map(|r| (r.prompt_id.as_str(), r.class.as_str()))
                .collect();
            let mut chunk_records =
                lens_records(model, tokenizer, &stacked, &self.layers, &prompts, k)
                    .map_err(failed)?;
            sort_by_prompt(&mut chunk_records, &prompts);
            records.extend(chunk_records);
        }
        Ok(records)
    }
}

/// Orders lens records prompt by prompt (then layer, rank), as the shard lists
/// the prompts.
fn sort_by_prompt(records: &mut LensRecords, prompts: &[(&str, &str)]) {
    let position: std::collections::HashMap<&str, usize> = prompts
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (*id, i))
        .collect();
    let mut order: Vec<usize> = (0..records.len()).collect();
    order.sort_by_key(|&i| {
        (
            position[records.prompt_ids[i].as_str()],
            records.layers[i],
            records.ranks[i],
        )
    });
    let take = |values: &Vec<String>| order.iter().map(|&i| values[i].clone()).collect::<Vec<_>>();
    *records = LensRecords {
        prompt_ids: take(&records.prompt_ids),
        classes: take(&records.classes),
        layers: order.iter().map(|&i| records.layers[i]).collect(),
        ranks: order.iter().map(|&i| records.ranks[i]).collect(),
        token_ids: order.iter().map(|&i| records.token_ids[i]).collect(),
        tokens: take(&records.tokens),
        texts: take(&records.texts),
        logits: order.iter().map(|&i| records.logits[i]).collect(),
        probs: order.iter().map(|&i| records.probs[i]).collect(),
    };
}

/// Fails on the first NaN or infinite state, naming the prompt and layer.
fn check_finite(
    state: &Tensor,
    batch_rows: &[usize],
    rows: &[TokenRow],
    layer: usize,
) -> Result<(), StageError> {
    let finite = state.isfinite().flatten(1, -1).all_dim(1, false);
    let finite: Vec<bool> =
        Vec::try_from(finite.to_kind(Kind::Bool).to_device(tch::Device::Cpu)).map_err(failed)?;
    match finite.iter().position(|ok| !ok) {
        None => Ok(()),
        Some(within) => {
            let row = &rows[batch_rows[within]];
            Err(failed(format!(
                "the state of prompt {} at layer {layer} is not finite (NaN or infinity); \
                 f16 overflows in late layers of some models: use dtype bf16 or f32",
                row.prompt_id
            )))
        }
    }
}

/// The files of one shard, ready to write.
struct ShardOutput {
    activations: Vec<ActivationRows>,
    layers: Vec<usize>,
    store_dtype: StoreDtype,
    lens: Option<LensRecords>,
}

impl ShardOutput {
    fn write(&self, dir: &Path, shard: usize, model: &str) -> Result<u64, StageError> {
        let file_name = ihs_store::shard_file_name(shard);
        for (rows, &layer) in self.activations.iter().zip(&self.layers) {
            let layer_dir = ihs_store::layer_dir(&dir.join(ACTIVATIONS_DIR), layer);
            std::fs::create_dir_all(&layer_dir)
                .map_err(|e| StageError::io("create", &layer_dir, e))?;
            let metadata = [("ihs.model", model.to_owned())];
            ihs_store::write_activation_shard(
                &layer_dir.join(&file_name),
                rows,
                layer,
                self.store_dtype,
                &metadata,
            )
            .map_err(failed)?;
        }
        if let Some(lens) = &self.lens {
            let lens_dir = dir.join(LENS_DIR);
            std::fs::create_dir_all(&lens_dir)
                .map_err(|e| StageError::io("create", &lens_dir, e))?;
            lens.write(&lens_dir.join(&file_name)).map_err(failed)?;
        }
        Ok(self.activations.first().map_or(0, |rows| rows.len() as u64))
    }
}

/// Moves every committed shard's files from `shard-NNNNN/` to the Hive
/// layout at the top of the output. A run killed during the moves leaves
/// shards whose files are gone; the engine recomputes those on resume.
fn move_shards_into_place(output: &Path, shard_count: usize) -> Result<(), StageError> {
    for shard in 0..shard_count {
        let shard_dir = output.join(shard_dir_name(shard));
        if !shard_dir.is_dir() {
            continue;
        }
        for file in files_under(&shard_dir)? {
            let relative = file.strip_prefix(&shard_dir).unwrap_or(&file);
            let target = output.join(relative);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| StageError::io("create", parent, e))?;
            }
            std::fs::rename(&file, &target).map_err(|e| StageError::io("move", &file, e))?;
        }
        std::fs::remove_dir_all(&shard_dir).map_err(|e| StageError::io("remove", &shard_dir, e))?;
    }
    Ok(())
}

fn files_under(dir: &Path) -> Result<Vec<PathBuf>, StageError> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries =
            std::fs::read_dir(&current).map_err(|e| StageError::io("list", &current, e))?;
        for entry in entries {
            let path = entry
                .map_err(|e| StageError::io("list", &current, e))?
                .path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Returns the process's peak resident set size in MiB (Linux only).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?;
    let kib: f64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024.0)
}

/// Returns the process's peak resident set size in MiB and restarts the
/// kernel's peak tracking from the current RSS, so that a later
/// [`peak_rss_mib`] covers only what follows. Returns `None`, and leaves the
/// peak as it is, where `/proc/self/clear_refs` does not accept the reset
/// (Linux before 4.0, other systems).
///
/// NOTE: the peak is one per process. An extract node running alongside
/// (several models on separate devices) reads a peak restarted by this one.
fn take_peak_rss_mib() -> Option<f64> {
    let peak = peak_rss_mib()?;
    // Writing `5` resets the peak to the current RSS (proc_pid_clear_refs(5), Linux 4.0 and newer).
    std::fs::write("/proc/self/clear_refs", "5").ok()?;
    Some(peak)
}
