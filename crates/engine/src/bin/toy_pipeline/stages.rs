//! Toy implementations of the six stages. They read the same inputs as the
//! real stages (datasets, `config.json`, weight headers, word lists) and
//! write small, deterministic files, so that the engine's caching, sharding
//! and resumption can be tested without a model runtime.
//!
//! Test hooks, read from the environment:
//! - `TOY_SHARD_DELAY_MS`: sleep this long before writing each extract shard.
//! - `TOY_PAUSE_IN_SHARD=N`: while writing extract shard N, write half of
//!   its states file, print `PAUSED in-shard N` on stdout and wait to be
//!   killed.
//! - `TOY_EXTRACT_CODE_VERSION`: the extract stage's code version (default 1).
//! - `TOY_FAIL_STAGE=NAME`: the stage NAME fails.

#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use ihs_engine::spec::{DatasetFormat, Spec};
use ihs_engine::{InputFiles, NodeContext, NodeView, Registry, Stage, StageError, StageSummary};
use serde_json::{json, Value};

/// Returns a registry with every toy stage, the extract stage at the code
/// version in `TOY_EXTRACT_CODE_VERSION` (default 1).
pub fn registry() -> Registry {
    let extract_version = std::env::var("TOY_EXTRACT_CODE_VERSION")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(1);
    registry_with(extract_version)
}

/// Returns a registry with every toy stage and the given extract code
/// version.
pub fn registry_with(extract_version: u32) -> Registry {
    let mut registry = Registry::new();
    registry
        .register(Tokenize)
        .and_then(|r| {
            r.register(Extract {
                code_version: extract_version,
            })
        })
        .and_then(|r| r.register(Probe))
        .and_then(|r| r.register(Lens))
        .and_then(|r| r.register(Graft))
        .and_then(|r| r.register(Aggregate))
        .expect("toy stage names are unique");
    registry
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StageError + 'a {
    move |source| StageError::io(action, path, source)
}

fn fail_if_requested(stage: &str) -> Result<(), StageError> {
    if std::env::var("TOY_FAIL_STAGE").is_ok_and(|name| name == stage) {
        return Err(StageError::failed(format!(
            "{stage} failed because TOY_FAIL_STAGE is set"
        )));
    }
    Ok(())
}

fn write_json(path: &Path, value: &Value) -> Result<(), StageError> {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    fs::write(path, text).map_err(io("write", path))
}

fn read_json(path: &Path) -> Result<Value, StageError> {
    let text = fs::read_to_string(path).map_err(io("read", path))?;
    serde_json::from_str(&text).map_err(|error| {
        StageError::with_source(format!("invalid JSON in {}", path.display()), error)
    })
}

/// Reads the prompts of one class: CSV (a header line, no quoted commas) or
/// JSONL.
fn read_prompts(spec: &Spec, class: &str) -> Result<Vec<String>, StageError> {
    let dataset = &spec.datasets[class];
    let text = fs::read_to_string(&dataset.path).map_err(io("read", &dataset.path))?;
    let mut prompts: Vec<String> = match dataset.format {
        Some(DatasetFormat::Csv) => {
            let mut lines = text.lines();
            let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
            let column = header
                .iter()
                .position(|name| *name == dataset.column)
                .ok_or_else(|| {
                    StageError::failed(format!(
                        "{} has no column `{}`",
                        dataset.path.display(),
                        dataset.column
                    ))
                })?;
            lines
                .filter(|line| !line.is_empty())
                .filter_map(|line| line.split(',').nth(column).map(str::to_owned))
                .collect()
        }
        Some(DatasetFormat::Jsonl) => text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let value: Value = serde_json::from_str(line).map_err(|error| {
                    StageError::with_source(
                        format!("invalid JSONL in {}", dataset.path.display()),
                        error,
                    )
                })?;
                Ok(value[dataset.column.as_str()]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned())
            })
            .collect::<Result<_, StageError>>()?,
        other => {
            return Err(StageError::failed(format!(
                "the toy tokenize stage reads csv and jsonl, not {other:?}"
            )))
        }
    };
    if dataset.punctuation {
        for prompt in &mut prompts {
            if !prompt.ends_with('.') && !prompt.ends_with('?') {
                prompt.push('.');
            }
        }
    }
    if let Some(limit) = dataset.limit {
        prompts.truncate(limit);
    }
    Ok(prompts)
}

struct Tokenize;

impl Stage for Tokenize {
    fn name(&self) -> &'static str {
        "tokenize"
    }

    fn code_version(&self) -> u32 {
        1
    }

    fn parameters(&self, node: &NodeView<'_>) -> Result<Value, StageError> {
        let model = node.model.map(|model| {
            json!({"template": model.template.name(), "system_prompt": model.system_prompt})
        });
        let datasets: BTreeMap<&String, Value> = node
            .spec
            .datasets
            .iter()
            .map(|(class, dataset)| {
                (
                    class,
                    json!({
                        "column": dataset.column,
                        "limit": dataset.limit,
                        "seed": dataset.seed,
                        "punctuation": dataset.punctuation,
                    }),
                )
            })
            .collect();
        Ok(json!({"section": node.section(), "model": model, "datasets": datasets}))
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
        fail_if_requested("tokenize")?;
        let path = ctx.output_dir().join("prompts.jsonl");
        let mut file = fs::File::create(&path).map_err(io("create", &path))?;
        let mut count = 0_u64;
        let classes: Vec<String> = ctx.spec().datasets.keys().cloned().collect();
        for class in classes {
            for text in read_prompts(ctx.spec(), &class)? {
                let line = json!({"class": class, "text": text, "tokens": text.len()});
                writeln!(file, "{line}").map_err(io("write", &path))?;
                count += 1;
            }
        }
        Ok(StageSummary::new().with_rows("prompts", count))
    }
}

struct Extract {
    code_version: u32,
}

impl Extract {
    fn states(seed: &[u8], prompt: &str, layers: usize, hidden: usize) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(layers * hidden * 4);
        for layer in 0..layers {
            let mut hasher = blake3::Hasher::new();
            hasher.update(seed);
            hasher.update(prompt.as_bytes());
            hasher.update(&(layer as u64).to_le_bytes());
            let mut reader = hasher.finalize_xof();
            let mut raw = vec![0_u8; hidden * 4];
            reader.fill(&mut raw);
            for chunk in raw.chunks_exact(4) {
                let value = f32::from(u16::from_le_bytes([chunk[0], chunk[1]])) / 65535.0 - 0.5;
                bytes.extend_from_slice(&value.to_le_bytes());
            }
        }
        bytes
    }
}

impl Stage for Extract {
    fn name(&self) -> &'static str {
        "extract"
    }

    fn code_version(&self) -> u32 {
        self.code_version
    }

    fn is_heavy(&self) -> bool {
        true
    }

    fn parameters(&self, node: &NodeView<'_>) -> Result<Value, StageError> {
        let dtype = node.model.map(|model| model.dtype);
        Ok(json!({"section": node.section(), "dtype": dtype}))
    }

    fn declare_inputs(
        &self,
        node: &NodeView<'_>,
        inputs: &mut InputFiles,
    ) -> Result<(), StageError> {
        if let Some(path) = node.model_path() {
            inputs.model_config(path);
            inputs
                .weights(path)
                .map_err(|error| StageError::with_source("cannot list the weights", error))?;
        }
        Ok(())
    }

    fn run(&self, ctx: &mut NodeContext<'_>) -> Result<StageSummary, StageError> {
        fail_if_requested("extract")?;
        let prompts_path = ctx.input_dir("tokenize")?.join("prompts.jsonl");
        let text = fs::read_to_string(&prompts_path).map_err(io("read", &prompts_path))?;
        let prompts: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or(Value::Null))
            .collect();

        let model_path = ctx
            .model_path()
            .ok_or_else(|| StageError::failed("extract needs a model"))?
            .to_owned();
        let config = read_json(&model_path.join("config.json"))?;
        let layers = config["num_hidden_layers"].as_u64().unwrap_or(2) as usize + 1;
        let hidden = config["hidden_size"].as_u64().unwrap_or(4) as usize;
        let seed = fs::read(model_path.join("config.json")).map_err(io("read", &model_path))?;

        let shard_size = ctx.parameters()["section"]["shard_size"]
            .as_u64()
            .unwrap_or(256)
            .max(1) as usize;
        let shard_count = prompts.len().div_ceil(shard_size);
        ctx.set_shard_count(shard_count)?;

        let delay = std::env::var("TOY_SHARD_DELAY_MS")
            .ok()
            .and_then(|value| value.parse().ok())
            .map(std::time::Duration::from_millis);
        let pause_in: Option<usize> = std::env::var("TOY_PAUSE_IN_SHARD")
            .ok()
            .and_then(|value| value.parse().ok());

        let bar = ctx.progress_bar(prompts.len() as u64, "prompts");
        for (index, chunk) in prompts.chunks(shard_size).enumerate() {
            if ctx.is_shard_complete(index) {
                bar.inc(chunk.len() as u64);
                continue;
            }
            ctx.check_stop()?;
            if let Some(delay) = delay {
                std::thread::sleep(delay);
            }
            ctx.commit_shard(index, |dir| {
                let states_path = dir.join("states.bin");
                let mut states =
                    fs::File::create(&states_path).map_err(io("create", &states_path))?;
                let mut index_lines = String::new();
                for (row, prompt) in chunk.iter().enumerate() {
                    let text = prompt["text"].as_str().unwrap_or_default();
                    let bytes = Self::states(&seed, text, layers, hidden);
                    if pause_in == Some(index) && row == chunk.len() / 2 {
                        states.flush().map_err(io("write", &states_path))?;
                        println!("PAUSED in-shard {index}");
                        std::io::stdout().flush().ok();
                        loop {
                            std::thread::sleep(std::time::Duration::from_secs(1));
                        }
                    }
                    states
                        .write_all(&bytes)
                        .map_err(io("write", &states_path))?;
                    index_lines
                        .push_str(&json!({"class": prompt["class"], "text": text}).to_string());
                    index_lines.push('\n');
                }
                let index_path = dir.join("index.jsonl");
                fs::write(&index_path, index_lines).map_err(io("write", &index_path))?;
                Ok(chunk.len() as u64)
            })?;
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();

        let layout =
            json!({"layers": layers, "hidden": hidden, "shards": shard_count, "dtype": "f32"});
        write_json(&ctx.output_dir().join("layout.json"), &layout)?;
        Ok(StageSummary::new()
            .with_rows("prompts", prompts.len() as u64)
            .with_rows("layers", layers as u64))
    }
}

/// Reads the first value of each layer's state for every extracted prompt.
fn read_states(dir: &Path) -> Result<(Vec<String>, Vec<Vec<f32>>), StageError> {
    let layout = read_json(&dir.join("layout.json"))?;
    let layers = layout["layers"].as_u64().unwrap_or(0) as usize;
    let hidden = layout["hidden"].as_u64().unwrap_or(0) as usize;
    let shards = layout["shards"].as_u64().unwrap_or(0) as usize;
    let mut classes = Vec::new();
    let mut firsts = Vec::new();
    for index in 0..shards {
        let shard = dir.join(ihs_engine::shard_dir_name(index));
        let index_path = shard.join("index.jsonl");
        let text = fs::read_to_string(&index_path).map_err(io("read", &index_path))?;
        let states_path = shard.join("states.bin");
        let bytes = fs::read(&states_path).map_err(io("read", &states_path))?;
        for (row, line) in text.lines().enumerate() {
            let value: Value = serde_json::from_str(line).unwrap_or(Value::Null);
            classes.push(value["class"].as_str().unwrap_or_default().to_owned());
            let base = row * layers * hidden * 4;
            let per_layer = (0..layers)
                .map(|layer| {
                    let at = base + layer * hidden * 4;
                    bytes
                        .get(at..at + 4)
                        .map_or(0.0, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                })
                .collect();
            firsts.push(per_layer);
        }
    }
    Ok((classes, firsts))
}

struct Probe;

impl Stage for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }

    fn code_version(&self) -> u32 {
        1
    }

    fn run(&self, ctx: &mut NodeContext<'_>) -> Result<StageSummary, StageError> {
        fail_if_requested("probe")?;
        let (classes, states) = read_states(ctx.input_dir("extract")?)?;
        let layers = states.first().map_or(0, Vec::len);
        let mut results = serde_json::Map::new();
        let tasks = ctx.spec().probe.clone().unwrap_or_default().tasks;
        for task in &tasks {
            let positive = task.classes.first().cloned().unwrap_or_default();
            let scores: Vec<f64> = (0..layers)
                .map(|layer| {
                    let correct = classes
                        .iter()
                        .zip(&states)
                        .filter(|(class, state)| (**class == positive) == (state[layer] > 0.0))
                        .count();
                    correct as f64 / classes.len().max(1) as f64
                })
                .collect();
            results.insert(task.name.clone(), json!(scores));
        }
        write_json(
            &ctx.output_dir().join("results.json"),
            &Value::Object(results),
        )?;
        Ok(StageSummary::new().with_rows("tasks", tasks.len() as u64))
    }
}

struct Lens;

impl Stage for Lens {
    fn name(&self) -> &'static str {
        "lens"
    }

    fn code_version(&self) -> u32 {
        1
    }

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
        if let Some(lens) = &node.spec.lens {
            inputs.content("word_lists", lens.word_lists.clone());
        }
        Ok(())
    }

    fn run(&self, ctx: &mut NodeContext<'_>) -> Result<StageSummary, StageError> {
        fail_if_requested("lens")?;
        let (classes, _) = read_states(ctx.input_dir("extract")?)?;
        let words = ctx
            .spec()
            .lens
            .as_ref()
            .map(|lens| fs::read_to_string(&lens.word_lists).unwrap_or_default())
            .unwrap_or_default();
        let value = json!({"prompts": classes.len(), "word_list_bytes": words.len()});
        write_json(&ctx.output_dir().join("lens.json"), &value)?;
        Ok(StageSummary::new().with_rows("prompts", classes.len() as u64))
    }
}

struct Graft;

impl Stage for Graft {
    fn name(&self) -> &'static str {
        "graft"
    }

    fn code_version(&self) -> u32 {
        1
    }

    fn is_heavy(&self) -> bool {
        true
    }

    fn run(&self, ctx: &mut NodeContext<'_>) -> Result<StageSummary, StageError> {
        fail_if_requested("graft")?;
        let (classes, _) = read_states(ctx.input_dir("extract")?)?;
        let value = json!({"prompts": classes.len(), "parameters": ctx.parameters()});
        write_json(&ctx.output_dir().join("graft.json"), &value)?;
        Ok(StageSummary::new().with_rows("prompts", classes.len() as u64))
    }
}

struct Aggregate;

impl Stage for Aggregate {
    fn name(&self) -> &'static str {
        "aggregate"
    }

    fn code_version(&self) -> u32 {
        1
    }

    fn run(&self, ctx: &mut NodeContext<'_>) -> Result<StageSummary, StageError> {
        fail_if_requested("aggregate")?;
        let mut summary = serde_json::Map::new();
        for input in ctx
            .upstream()
            .iter()
            .filter(|input| input.id.stage() == "probe")
        {
            let results = read_json(&input.dir.join("results.json"))?;
            summary.insert(input.id.to_string(), results);
        }
        let models = summary.len() as u64;
        write_json(
            &ctx.output_dir().join("summary.json"),
            &Value::Object(summary),
        )?;
        Ok(StageSummary::new().with_rows("models", models))
    }
}
