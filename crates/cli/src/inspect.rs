//! `ihs inspect MODEL`: architecture, sizes, stored weights and a sample
//! prompt rendered through the chat template, read without loading weights.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use ihs_model::{
    Batch, CausalLm, Dtype, ForwardRequest, Layers, LoadOptions, PaddingSide, Position,
    PromptFormat, RopeScaling, TemplateChoice,
};
use serde_json::json;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Model folder with config.json, tokenizer.json and safetensors weights, or a .gguf file.
    pub model: PathBuf,

    /// Chat template: "model" (the model's own), "raw" (no template) or a
    /// built-in format: llama-2, llama-3, `vicuna_v1.1`, mistral, falcon.
    #[arg(long, default_value = "model")]
    pub template: String,

    /// System prompt for the sample; omitted, the template's default applies.
    #[arg(long)]
    pub system: Option<String>,

    /// The sample user message.
    #[arg(long, default_value = "How do I bake bread at home?")]
    pub message: String,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,

    /// Also load the weights, run the sample prompt, and report the load
    /// time, peak memory and the top next tokens.
    #[arg(long)]
    pub load: bool,

    /// Dtype to load the weights in with --load: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,

    /// Devices for --load: cpu, cuda or cuda:N; several (comma-separated)
    /// split the blocks between them.
    #[arg(long, default_value = "cpu", value_delimiter = ',')]
    pub devices: Vec<String>,
}

pub fn run(args: &InspectArgs) -> Result<()> {
    let dir = model_path(&args.model)?;
    let (config, weights) = ihs_model::open_checkpoint(&dir)?;
    let (stored_values, stored_dtypes) = weights.summary();

    let tokenizer = ihs_model::load_tokenizer(&dir)?;
    let mut template = TemplateChoice::parse(&args.template)?;
    if template == TemplateChoice::Model && tokenizer.chat_template().is_none() {
        tracing::warn!(model = %dir.display(), "the model has no chat_template; showing the raw message");
        template = TemplateChoice::Raw;
    }
    let format = PromptFormat {
        template,
        system: args.system.clone(),
    };
    let prompt = format.encode(&tokenizer, &args.message).with_context(|| {
        format!(
            "rendering the sample message with template {:?}",
            format.template.name()
        )
    })?;

    let rope = match &config.rope.scaling {
        RopeScaling::None => "none".to_owned(),
        RopeScaling::Linear { factor } => format!("linear x{factor}"),
        RopeScaling::Llama3 {
            factor,
            original_max_position_embeddings,
            ..
        } => format!("llama3 x{factor} from {original_max_position_embeddings} positions"),
        RopeScaling::FrequencyFactors { factors } => {
            let smallest = factors.iter().copied().fold(f64::INFINITY, f64::min);
            let largest = factors.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!(
                "per-frequency x{smallest} to x{largest} over {} frequencies",
                factors.len()
            )
        }
    };
    let loaded = if args.load {
        Some(load_and_run(
            args,
            &dir,
            &weights,
            &config,
            &prompt.input_ids,
            &tokenizer,
        )?)
    } else {
        None
    };

    let mut summary = json!({
        "path": dir.display().to_string(),
        "family": config.family.name(),
        "architecture": config.architecture,
        "layers": config.num_layers,
        "hidden_states_per_token": config.num_layers + 1,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "heads": config.num_heads,
        "kv_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "vocab_size": config.vocab_size,
        "tokenizer_vocab_size": tokenizer.vocab_size(),
        "rope_theta": config.rope.theta,
        "rope_scaling": rope,
        "tied_embeddings": config.tie_word_embeddings,
        "dtype": config.stored_dtype,
        "stored_dtypes": stored_dtypes,
        "parameters": stored_values,
        "weight_files": weights.paths().len(),
        "template": format.template.name(),
        "sample_prompt": prompt.text,
        "sample_tokens": prompt.input_ids.len(),
    });

    if let Some(loaded) = &loaded {
        summary["load"] = loaded.clone();
    }

    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
        return Ok(());
    }
    let rows = [
        ("model", dir.display().to_string()),
        ("family", config.family.name().to_owned()),
        (
            "architecture",
            config.architecture.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "layers",
            format!(
                "{} blocks, {} hidden states per token",
                config.num_layers,
                config.num_layers + 1
            ),
        ),
        ("hidden size", config.hidden_size.to_string()),
        ("MLP size", config.intermediate_size.to_string()),
        (
            "heads",
            format!(
                "{} query, {} key/value, head dim {}",
                config.num_heads, config.num_kv_heads, config.head_dim
            ),
        ),
        (
            "vocab",
            format!(
                "{} (tokenizer {})",
                config.vocab_size,
                tokenizer.vocab_size()
            ),
        ),
        (
            "rope",
            format!("theta {}, scaling {rope}", config.rope.theta),
        ),
        ("tied embeddings", config.tie_word_embeddings.to_string()),
        (
            "dtype",
            format!(
                "{} (stored {})",
                config.stored_dtype.as_deref().unwrap_or("-"),
                stored_dtypes.join(", ")
            ),
        ),
        (
            "parameters",
            format!(
                "{} ({:.1}M) in {} file(s)",
                stored_values,
                stored_values as f64 / 1e6,
                weights.paths().len()
            ),
        ),
        ("template", format.template.name().to_owned()),
    ];
    for (name, value) in rows {
        writeln!(out, "{name:>16}  {value}")?;
    }
    writeln!(
        out,
        "\nsample prompt ({} tokens):\n{}",
        prompt.input_ids.len(),
        prompt.text
    )?;
    if let Some(loaded) = loaded {
        writeln!(
            out,
            "\nloaded in {} ({}) in {:.2} s, peak resident memory {:.0} MiB after loading, {:.0} MiB after one forward pass",
            loaded["dtype"].as_str().unwrap_or_default(),
            loaded["devices"].as_str().unwrap_or_default(),
            loaded["load_seconds"].as_f64().unwrap_or_default(),
            loaded["peak_rss_after_load_mib"].as_f64().unwrap_or_default(),
            loaded["peak_rss_mib"].as_f64().unwrap_or_default(),
        )?;
        writeln!(out, "top next tokens: {}", loaded["top_next_tokens"])?;
    }
    Ok(())
}

/// Loads the weights, runs the sample prompt, and returns what was measured.
fn load_and_run(
    args: &InspectArgs,
    path: &Path,
    weights: &ihs_model::Weights,
    config: &ihs_model::ModelConfig,
    input_ids: &[u32],
    tokenizer: &ihs_model::TextTokenizer,
) -> Result<serde_json::Value> {
    let dtype: Dtype = args.dtype.parse()?;
    let devices = args
        .devices
        .iter()
        .map(|name| ihs_model::parse_device(name))
        .collect::<Result<Vec<_>, _>>()?;
    let options = LoadOptions { dtype, devices };

    let started = std::time::Instant::now();
    let model = CausalLm::from_weights(config.clone(), weights, &options)
        .with_context(|| format!("loading {} in {dtype}", path.display()))?;
    let load_seconds = started.elapsed().as_secs_f64();
    let peak_after_load = peak_rss_mib();

    let batch = Batch::new(&[input_ids.to_vec()], PaddingSide::Left, tokenizer.pad_id())?;
    let request = ForwardRequest {
        layers: Layers::None,
        position: Position::Last,
        graft: None,
        logits: true,
    };
    let output = model.forward(&batch, &request)?;
    let logits = output
        .logits
        .context("the forward pass returned no logits")?;
    let (_, top) = logits.get(0).topk(5, 0, true, true);
    let top: Vec<i64> = Vec::try_from(&top)?;
    let tokens: Vec<String> = top
        .iter()
        .map(|&id| {
            tokenizer
                .decode(&[id as u32], false)
                .unwrap_or_else(|_| format!("<{id}>"))
        })
        .collect();

    Ok(json!({
        "dtype": dtype.name(),
        "devices": args.devices.join(","),
        "load_seconds": load_seconds,
        "peak_rss_after_load_mib": peak_after_load,
        "peak_rss_mib": peak_rss_mib(),
        "top_next_tokens": tokens,
    }))
}

/// Returns the process's peak resident set size (`VmHWM`) in MiB, or NaN
/// where /proc is not available.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Accepts a model folder, a path to its config.json, or a `.gguf` file.
fn model_path(path: &Path) -> Result<PathBuf> {
    if path.is_dir() || ihs_model::is_gguf(path) {
        return Ok(path.to_path_buf());
    }
    if path.file_name().is_some_and(|name| name == "config.json") && path.is_file() {
        return Ok(path.parent().unwrap_or(Path::new(".")).to_path_buf());
    }
    anyhow::bail!(
        "model {} not found: pass a folder with config.json, tokenizer.json and safetensors weights, or a .gguf file",
        path.display()
    )
}
