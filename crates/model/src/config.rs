//! Model configuration read from an HF `config.json`.
//!
//! Both layouts that transformers writes are accepted: the hub's published
//! checkpoints carry `rope_theta` and `rope_scaling` at the top level, while
//! transformers 5 writes them inside `rope_parameters`. Falcon configs are
//! read with either the current keys (`num_attention_heads`, `num_kv_heads`,
//! ...) or the keys of the original "`RefinedWeb`" code (`n_head`, `n_head_kv`,
//! `n_layer`, `n_embed`).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{ModelError, Result};

/// Architecture families with their own forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Llama-2, Llama-3, Vicuna, `SmolLM2` (`model_type` "llama").
    Llama,
    /// Mistral-7B v0.1 and v0.2 (`model_type` "mistral"): Llama with an
    /// optional sliding attention window on every block.
    Mistral,
    /// Qwen2 and Qwen2.5 (`model_type` "qwen2"): Llama with biases on the
    /// query, key and value projections.
    Qwen2,
    /// Falcon (`model_type` "falcon", "`RefinedWebModel`" or "`RefinedWeb`"):
    /// `LayerNorm`, a fused query-key-value projection, a GELU MLP and
    /// attention in parallel with the MLP.
    Falcon,
}

/// The `model_type` values this crate loads.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "falcon",
    "RefinedWebModel",
    "RefinedWeb",
];

impl Family {
    /// Returns the family's name as HF spells its `model_type`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Falcon => "falcon",
        }
    }
}

/// The normalization before attention, before the MLP and after the last block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// Root-mean-square norm with a weight and no bias (Llama, Mistral, Qwen2).
    Rms,
    /// `LayerNorm` with a weight and a bias (Falcon).
    Layer,
}

/// The arrangement of norms, attention and MLP around a block's residual stream `x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockLayout {
    /// `h = x + attn(norm1(x))`, then `h + mlp(norm2(h))` (Llama, Falcon with
    /// `parallel_attn: false`).
    Sequential,
    /// `x + (mlp(norm(x)) + attn(norm(x)))` with one norm (Falcon-7B).
    ParallelSharedNorm,
    /// `x + (mlp(norm_mlp(x)) + attn(norm_attn(x)))` with two norms (the
    /// `new_decoder_architecture` of Falcon-40B and Falcon-180B).
    ParallelSeparateNorms,
}

/// The feed-forward network of each block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpKind {
    /// `down(silu(gate(x)) * up(x))`.
    SwiGlu,
    /// `down(gelu(up(x)))` with the exact, erf-based GELU.
    Gelu,
}

/// The adjustment of rotary position frequencies for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Every frequency divided by `factor` (position interpolation).
    Linear {
        factor: f64,
    },
    /// Llama-3.1 scaling: low frequencies divided by `factor`, high ones kept,
    /// a smooth blend between `high_freq_factor` and `low_freq_factor`.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// One divisor per rotary frequency pair: inverse frequency `i` is divided
    /// by `factors[i]`, so the vector has `head_dim / 2` entries. llama.cpp
    /// stores Llama-3.1 scaling this way, as the `rope_freqs.weight` tensor
    /// of a GGUF file.
    FrequencyFactors {
        factors: Vec<f64>,
    },
}

/// Rotary embedding settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub scaling: RopeScaling,
}

/// The settings one decoder-only transformer needs, whatever its family.
// Each bool is a separate flag of the HF config, read and documented on its own.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub family: Family,
    /// `architectures[0]` of the config, when present.
    pub architecture: Option<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// The MLP's inner width (Falcon's `ffn_hidden_size`, by default 4 x hidden).
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    /// Key/value heads: fewer than `num_heads` for grouped-query attention,
    /// 1 for Falcon's multi-query attention.
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub norm: NormKind,
    pub norm_eps: f64,
    pub block_layout: BlockLayout,
    pub mlp: MlpKind,
    pub rope: RopeConfig,
    /// The sliding attention window in tokens: a query at position `i`
    /// attends to the keys `j` with `i - window < j <= i`, as transformers'
    /// `sliding_window_overlay` decides. `None` when no block uses a window.
    pub sliding_window: Option<usize>,
    /// For each block, whether it attends through `sliding_window`. All false
    /// when `sliding_window` is `None`.
    pub sliding_window_blocks: Vec<bool>,
    pub tie_word_embeddings: bool,
    /// Biases on the query, key and value projections (Falcon's fused one included).
    pub attention_bias: bool,
    /// A bias on the attention output projection (`o_proj`, Falcon's `dense`).
    pub attention_output_bias: bool,
    pub mlp_bias: bool,
    pub max_position_embeddings: Option<usize>,
    /// The dtype the checkpoint was saved in (`torch_dtype` or `dtype`).
    pub stored_dtype: Option<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::config(path, format!("not valid JSON: {e}")))?;
        Self::from_json(&value, path)
    }

    /// Builds the config from parsed JSON; `path` is only used in messages.
    pub fn from_json(value: &Value, path: &Path) -> Result<Self> {
        let fields = Fields {
            map: value
                .as_object()
                .ok_or_else(|| ModelError::config(path, "expected a JSON object"))?,
            path: path.to_path_buf(),
        };

        let model_type = fields.string("model_type")?;
        let config = match model_type.as_str() {
            "llama" => parse_llama_like(&fields, Family::Llama)?,
            "mistral" => parse_llama_like(&fields, Family::Mistral)?,
            "qwen2" => parse_llama_like(&fields, Family::Qwen2)?,
            "falcon" | "RefinedWebModel" | "RefinedWeb" => parse_falcon(&fields, &model_type)?,
            other => {
                return Err(ModelError::UnsupportedModelType {
                    path: path.to_path_buf(),
                    found: other.to_owned(),
                    supported: SUPPORTED_MODEL_TYPES.join(", "),
                })
            }
        };
        config.validate(&fields)?;
        Ok(config)
    }

    /// Returns the attention window of block `index`, `None` for full causal attention.
    #[must_use]
    pub fn block_window(&self, index: usize) -> Option<usize> {
        self.sliding_window.filter(|_| {
            self.sliding_window_blocks
                .get(index)
                .copied()
                .unwrap_or(false)
        })
    }

    /// Returns the number of parameters the checkpoint holds.
    #[must_use]
    pub fn parameter_count(&self) -> u64 {
        let h = self.hidden_size as u64;
        let q = (self.num_heads * self.head_dim) as u64;
        let kv = (self.num_kv_heads * self.head_dim) as u64;
        let inter = self.intermediate_size as u64;
        let vocab = self.vocab_size as u64;

        let mut attention = h * q + 2 * h * kv + q * h;
        if self.attention_bias {
            attention += q + 2 * kv;
        }
        if self.attention_output_bias {
            attention += h;
        }
        let mut mlp = match self.mlp {
            MlpKind::SwiGlu => 3 * h * inter,
            MlpKind::Gelu => 2 * h * inter,
        };
        if self.mlp_bias {
            mlp += match self.mlp {
                MlpKind::SwiGlu => 2 * inter + h,
                MlpKind::Gelu => inter + h,
            };
        }
        let norm = match self.norm {
            NormKind::Rms => h,
            NormKind::Layer => 2 * h,
        };
        let norms_per_block = match self.block_layout {
            BlockLayout::ParallelSharedNorm => 1,
            BlockLayout::Sequential | BlockLayout::ParallelSeparateNorms => 2,
        };
        let block = attention + mlp + norms_per_block * norm;
        let head = if self.tie_word_embeddings {
            0
        } else {
            vocab * h
        };
        vocab * h + self.num_layers as u64 * block + norm + head
    }

    /// Checks the shapes every family relies on.
    fn validate(&self, fields: &Fields<'_>) -> Result<()> {
        let (heads, kv_heads) = (self.num_heads, self.num_kv_heads);
        if heads == 0 {
            return Err(fields.invalid("the number of attention heads is 0".into()));
        }
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(fields.invalid(format!(
                "{heads} attention heads are not a multiple of {kv_heads} key/value heads"
            )));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(fields.invalid(format!(
                "head_dim {} is odd; rotary embeddings need an even head dimension",
                self.head_dim
            )));
        }
        if self.sliding_window == Some(0) {
            return Err(fields.invalid(
                "sliding_window is 0, which would hide every key; use null for no window".into(),
            ));
        }
        Ok(())
    }
}

/// Parses the families that share Llama's block: `RMSNorm`, separate
/// q/k/v/o projections and a `SwiGLU` MLP.
fn parse_llama_like(fields: &Fields<'_>, family: Family) -> Result<ModelConfig> {
    let hidden_size = fields.usize("hidden_size")?;
    let num_heads = fields.usize("num_attention_heads")?;
    let num_kv_heads = fields
        .opt_usize("num_key_value_heads")?
        .unwrap_or(num_heads);
    let head_dim = match fields.opt_usize("head_dim")? {
        Some(dim) => dim,
        None => divide_hidden(fields, hidden_size, num_heads)?,
    };
    let num_layers = fields.usize("num_hidden_layers")?;

    let hidden_act = fields
        .opt_string("hidden_act")?
        .unwrap_or_else(|| "silu".into());
    if hidden_act != "silu" {
        return Err(fields.invalid(format!(
            "hidden_act {hidden_act:?} is not supported for {}; expected \"silu\"",
            family.name()
        )));
    }

    // transformers hard-codes the biases of Mistral and Qwen2 instead of reading them.
    let (attention_bias, attention_output_bias, mlp_bias) = match family {
        Family::Mistral => (false, false, false),
        Family::Qwen2 => (true, false, false),
        // Falcon configs are parsed by `parse_falcon` and never reach this arm.
        Family::Llama | Family::Falcon => {
            let attention = fields.opt_bool("attention_bias")?.unwrap_or(false);
            let mlp = fields.opt_bool("mlp_bias")?.unwrap_or(false);
            (attention, attention, mlp)
        }
    };
    let (sliding_window, sliding_window_blocks) = match family {
        Family::Mistral => {
            let window = fields.opt_usize("sliding_window")?;
            (window, vec![window.is_some(); num_layers])
        }
        Family::Qwen2 => qwen2_windows(fields, num_layers)?,
        Family::Llama | Family::Falcon => (None, vec![false; num_layers]),
    };

    Ok(ModelConfig {
        family,
        architecture: fields.architecture(),
        vocab_size: fields.usize("vocab_size")?,
        hidden_size,
        intermediate_size: fields.usize("intermediate_size")?,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        norm: NormKind::Rms,
        norm_eps: fields.f64("rms_norm_eps")?,
        block_layout: BlockLayout::Sequential,
        mlp: MlpKind::SwiGlu,
        rope: parse_rope(fields)?,
        sliding_window,
        sliding_window_blocks,
        tie_word_embeddings: fields.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        attention_bias,
        attention_output_bias,
        mlp_bias,
        max_position_embeddings: fields.opt_usize("max_position_embeddings")?,
        stored_dtype: fields.stored_dtype()?,
        bos_token_id: fields.opt_usize("bos_token_id")?.map(|id| id as u32),
        eos_token_ids: fields.token_ids("eos_token_id")?,
    })
}

/// Reads Qwen2's window settings as transformers 5.25 does: `sliding_window`
/// counts only with `use_sliding_window: true`, and then applies to the
/// blocks that `layer_types` marks "`sliding_attention`", or without that key
/// to the blocks from `max_window_layers` (default 28) on.
fn qwen2_windows(fields: &Fields<'_>, num_layers: usize) -> Result<(Option<usize>, Vec<bool>)> {
    let enabled = fields.opt_bool("use_sliding_window")?.unwrap_or(false);
    let window = if enabled {
        fields.opt_usize("sliding_window")?
    } else {
        None
    };
    let Some(window) = window else {
        return Ok((None, vec![false; num_layers]));
    };

    let blocks = match fields.present("layer_types") {
        Some(Value::Array(types)) => types
            .iter()
            .map(|kind| match kind.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                _ => Err(fields.invalid(format!(
                    "layer_types entry {kind} is not \"full_attention\" or \"sliding_attention\""
                ))),
            })
            .collect::<Result<Vec<bool>>>()?,
        Some(other) => {
            return Err(fields.wrong_type("layer_types", "a list of strings", other));
        }
        None => {
            let first = fields.opt_usize("max_window_layers")?.unwrap_or(28);
            (0..num_layers).map(|index| index >= first).collect()
        }
    };
    if blocks.len() != num_layers {
        return Err(fields.invalid(format!(
            "layer_types has {} entries but num_hidden_layers is {num_layers}",
            blocks.len()
        )));
    }
    let window = blocks.iter().any(|&b| b).then_some(window);
    Ok((window, blocks))
}

/// Parses a Falcon config in the current or the original "`RefinedWeb`" keys.
///
/// Defaults follow transformers 5.25's `FalconConfig`, except where the
/// original configs differ: "`RefinedWeb`" (falcon-40b's first config, which
/// has no `new_decoder_architecture` key) implies the new decoder
/// architecture, and its `n_head_kv` defaults to 1. As `FalconConfig`
/// documents, the new architecture ignores `multi_query` and `parallel_attn`.
///
/// NOTE: the "`RefinedWeb`" rule follows vLLM's `RWConfig`, which switches
/// falcon-40b (hidden size 8192) to the new architecture. No fixture has that
/// config, because transformers 5.25 reads only the current keys.
fn parse_falcon(fields: &Fields<'_>, model_type: &str) -> Result<ModelConfig> {
    if fields.opt_bool("alibi")?.unwrap_or(false) {
        return Err(unsupported(
            fields,
            model_type,
            "ALiBi position biases (alibi: true)",
            "ihs implements only the rotary Falcon models (falcon-7b, falcon-40b, falcon-180B), \
             so ALiBi models such as falcon-rw-1b cannot be loaded.",
        ));
    }
    if fields
        .opt_bool("apply_residual_connection_post_layernorm")?
        .unwrap_or(false)
    {
        return Err(unsupported(
            fields,
            model_type,
            "a residual taken after the layer norm (apply_residual_connection_post_layernorm: true)",
            "transformers 5.25 ignores this key for Falcon, so ihs has no reference to match. \
             falcon-7b and falcon-40b set it to false.",
        ));
    }
    let activation = fields
        .opt_string("activation")?
        .unwrap_or_else(|| "gelu".into());
    if activation != "gelu" {
        return Err(unsupported(
            fields,
            model_type,
            &format!("the activation {activation:?}"),
            "Only \"gelu\" (the exact, erf-based GELU) is implemented.",
        ));
    }

    let hidden_size = fields.usize_any(&["hidden_size", "n_embed"])?;
    let num_heads = fields.usize_any(&["num_attention_heads", "n_head"])?;
    let num_layers = fields.usize_any(&["num_hidden_layers", "n_layer"])?;
    let head_dim = divide_hidden(fields, hidden_size, num_heads)?;
    let (num_kv_heads, block_layout) = falcon_layout(fields, model_type, num_heads)?;
    let bias = fields.opt_bool("bias")?.unwrap_or(false);

    Ok(ModelConfig {
        family: Family::Falcon,
        architecture: fields.architecture(),
        vocab_size: fields.usize("vocab_size")?,
        hidden_size,
        intermediate_size: fields
            .opt_usize("ffn_hidden_size")?
            .unwrap_or(4 * hidden_size),
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        norm: NormKind::Layer,
        norm_eps: fields.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5),
        block_layout,
        mlp: MlpKind::Gelu,
        rope: parse_rope(fields)?,
        sliding_window: None,
        sliding_window_blocks: vec![false; num_layers],
        tie_word_embeddings: fields.opt_bool("tie_word_embeddings")?.unwrap_or(true),
        attention_bias: bias,
        attention_output_bias: bias,
        mlp_bias: bias,
        max_position_embeddings: fields.opt_usize("max_position_embeddings")?,
        stored_dtype: fields.stored_dtype()?,
        bos_token_id: fields.opt_usize("bos_token_id")?.map(|id| id as u32),
        eos_token_ids: fields.token_ids("eos_token_id")?,
    })
}

/// Returns the key/value head count and the block layout of a Falcon config.
fn falcon_layout(
    fields: &Fields<'_>,
    model_type: &str,
    num_heads: usize,
) -> Result<(usize, BlockLayout)> {
    let new_architecture = fields
        .opt_bool("new_decoder_architecture")?
        .unwrap_or(model_type == "RefinedWeb");
    let multi_query = fields.opt_bool("multi_query")?.unwrap_or(true);
    let parallel = fields.opt_bool("parallel_attn")?.unwrap_or(true);
    let kv_key = fields.opt_usize_any(&["num_kv_heads", "n_head_kv"])?;
    let norms_in_parallel = fields.opt_usize("num_ln_in_parallel_attn")?;
    if let Some(count) = norms_in_parallel.filter(|&n| n != 1 && n != 2) {
        return Err(fields.invalid(format!(
            "num_ln_in_parallel_attn is {count}; expected 1, 2 or null"
        )));
    }

    if new_architecture {
        let default_kv = if model_type == "falcon" { num_heads } else { 1 };
        let layout = if norms_in_parallel == Some(1) {
            BlockLayout::ParallelSharedNorm
        } else {
            BlockLayout::ParallelSeparateNorms
        };
        return Ok((kv_key.unwrap_or(default_kv), layout));
    }

    // Multi-query attention has one key/value head, and the plain multi-head
    // layout one per query head.
    let kv_heads = if multi_query {
        1
    } else {
        if let Some(kv) = kv_key.filter(|&kv| kv != num_heads) {
            return Err(unsupported(
                fields,
                model_type,
                &format!("{kv} key/value heads for {num_heads} heads without multi_query"),
                "Grouped key/value heads need new_decoder_architecture: true.",
            ));
        }
        num_heads
    };
    let layout = match (parallel, norms_in_parallel) {
        (false, _) => BlockLayout::Sequential,
        (true, Some(2)) => return Err(unsupported(
            fields,
            model_type,
            "two layer norms in parallel attention without new_decoder_architecture",
            "Set num_ln_in_parallel_attn to 1 or null. transformers 5.25 fails on this layout too.",
        )),
        (true, _) => BlockLayout::ParallelSharedNorm,
    };
    Ok((kv_heads, layout))
}

fn unsupported(fields: &Fields<'_>, model_type: &str, feature: &str, hint: &str) -> ModelError {
    ModelError::UnsupportedFeature {
        path: fields.path.clone(),
        model_type: model_type.to_owned(),
        feature: feature.to_owned(),
        hint: hint.to_owned(),
    }
}

/// Returns `hidden_size / num_heads`, the head dimension when none is given.
fn divide_hidden(fields: &Fields<'_>, hidden_size: usize, num_heads: usize) -> Result<usize> {
    if num_heads == 0 || !hidden_size.is_multiple_of(num_heads) {
        return Err(fields.invalid(format!(
            "hidden size {hidden_size} is not divisible by {num_heads} attention heads"
        )));
    }
    Ok(hidden_size / num_heads)
}

/// Reads `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling`.
fn parse_rope(fields: &Fields<'_>) -> Result<RopeConfig> {
    let (theta, scaling) = match fields.map.get("rope_parameters") {
        Some(Value::Object(params)) => {
            let theta = params.get("rope_theta").and_then(Value::as_f64);
            (theta, Some(params))
        }
        Some(Value::Null) | None => {
            let theta = fields.opt_f64("rope_theta")?;
            let scaling = match fields.map.get("rope_scaling") {
                Some(Value::Object(scaling)) => Some(scaling),
                Some(Value::Null) | None => None,
                Some(other) => {
                    return Err(fields.invalid(format!(
                        "rope_scaling must be an object or null, found {other}"
                    )))
                }
            };
            (theta, scaling)
        }
        Some(other) => {
            return Err(fields.invalid(format!("rope_parameters must be an object, found {other}")))
        }
    };

    let scaling = match scaling {
        None => RopeScaling::None,
        Some(params) => {
            let kind = params
                .get("rope_type")
                .or_else(|| params.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("default");
            let number = |key: &str| {
                params.get(key).and_then(Value::as_f64).ok_or_else(|| {
                    fields.invalid(format!("rope scaling {kind:?} needs a number for {key:?}"))
                })
            };
            match kind {
                "default" => RopeScaling::None,
                "linear" => RopeScaling::Linear {
                    factor: number("factor")?,
                },
                "llama3" => RopeScaling::Llama3 {
                    factor: number("factor")?,
                    low_freq_factor: number("low_freq_factor")?,
                    high_freq_factor: number("high_freq_factor")?,
                    original_max_position_embeddings: number("original_max_position_embeddings")?,
                },
                other => {
                    return Err(ModelError::UnsupportedRopeScaling {
                        path: fields.path.clone(),
                        found: other.to_owned(),
                    })
                }
            }
        }
    };

    Ok(RopeConfig {
        theta: theta.unwrap_or(10_000.0),
        scaling,
    })
}

/// Typed access to config keys with messages that name the key.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: PathBuf,
}

impl Fields<'_> {
    fn invalid(&self, message: String) -> ModelError {
        ModelError::config(&self.path, message)
    }

    fn missing(&self, key: &str) -> ModelError {
        self.invalid(format!("missing key {key:?}"))
    }

    fn wrong_type(&self, key: &str, expected: &str, found: &Value) -> ModelError {
        self.invalid(format!("key {key:?} must be {expected}, found {found}"))
    }

    fn present(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn string(&self, key: &str) -> Result<String> {
        self.opt_string(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_string(&self, key: &str) -> Result<Option<String>> {
        match self.present(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.wrong_type(key, "a string", other)),
        }
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.present(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, "a non-negative integer", v)),
        }
    }

    fn f64(&self, key: &str) -> Result<f64> {
        self.opt_f64(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.present(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, "a number", v)),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.present(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.wrong_type(key, "true or false", other)),
        }
    }

    /// Reads the first of `keys` that is present; the message names them all.
    fn usize_any(&self, keys: &[&str]) -> Result<usize> {
        self.opt_usize_any(keys)?.ok_or_else(|| {
            self.invalid(format!("missing key: expected one of {}", keys.join(", ")))
        })
    }

    fn opt_usize_any(&self, keys: &[&str]) -> Result<Option<usize>> {
        for key in keys {
            if let Some(value) = self.opt_usize(key)? {
                return Ok(Some(value));
            }
        }
        Ok(None)
    }

    /// Returns `architectures[0]`, when present.
    fn architecture(&self) -> Option<String> {
        self.map
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// Reads `torch_dtype` (hub configs) or `dtype` (transformers 5).
    fn stored_dtype(&self) -> Result<Option<String>> {
        match self.opt_string("torch_dtype")? {
            Some(dtype) => Ok(Some(dtype)),
            None => self.opt_string("dtype"),
        }
    }

    /// Reads a token id that may be a single integer or a list of them.
    fn token_ids(&self, key: &str) -> Result<Vec<u32>> {
        let as_id = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
        match self.present(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| as_id(v).ok_or_else(|| self.wrong_type(key, "a list of token ids", v)))
                .collect(),
            Some(v) => as_id(v)
                .map(|id| vec![id])
                .ok_or_else(|| self.wrong_type(key, "a token id", v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn llama_json() -> Value {
        json!({
            "model_type": "llama", "vocab_size": 32000, "hidden_size": 4096,
            "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 32, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "rope_scaling": null, "tie_word_embeddings": false, "architectures": ["LlamaForCausalLM"]
        })
    }

    fn parse(value: &Value) -> Result<ModelConfig> {
        ModelConfig::from_json(value, Path::new("config.json"))
    }

    #[test]
    fn llama2_7b_parameter_count() {
        let config = parse(&llama_json()).unwrap();
        assert_eq!(config.head_dim, 128);
        // Llama-2-7b has 6,738,415,616 parameters.
        assert_eq!(config.parameter_count(), 6_738_415_616);
    }

    #[test]
    fn llama3_scaling_from_legacy_keys() {
        let mut value = llama_json();
        value["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let config = parse(&value).unwrap();
        assert!(matches!(config.rope.scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
    }

    #[test]
    fn rope_parameters_layout() {
        let mut value = llama_json();
        value.as_object_mut().unwrap().remove("rope_theta");
        value["rope_parameters"] = json!({"rope_type": "linear", "factor": 4.0, "rope_theta": 5e5});
        let config = parse(&value).unwrap();
        assert_eq!(config.rope.theta, 5e5);
        assert_eq!(config.rope.scaling, RopeScaling::Linear { factor: 4.0 });
    }

    #[test]
    fn unknown_rope_scaling_is_rejected() {
        let mut value = llama_json();
        value["rope_scaling"] = json!({"type": "dynamic", "factor": 2.0});
        let message = parse(&value).unwrap_err().to_string();
        assert!(message.contains("\"dynamic\""), "{message}");
        assert!(message.contains("llama3"), "{message}");
    }

    #[test]
    fn unknown_model_type_lists_supported() {
        let mut value = llama_json();
        value["model_type"] = json!("gpt_neox");
        let message = parse(&value).unwrap_err().to_string();
        assert!(message.contains("gpt_neox"), "{message}");
        assert!(message.contains("llama"), "{message}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let mut value = llama_json();
        value["hidden_size"] = json!("4096");
        let message = parse(&value).unwrap_err().to_string();
        assert!(message.contains("\"hidden_size\""), "{message}");
    }

    #[test]
    fn missing_key_names_the_key() {
        let mut value = llama_json();
        value.as_object_mut().unwrap().remove("intermediate_size");
        let message = parse(&value).unwrap_err().to_string();
        assert!(
            message.contains("missing key \"intermediate_size\""),
            "{message}"
        );
    }

    /// mistralai/Mistral-7B-v0.1's config.json.
    fn mistral_json() -> Value {
        json!({
            "model_type": "mistral", "vocab_size": 32000, "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "sliding_window": 4096, "tie_word_embeddings": false, "hidden_act": "silu",
            "architectures": ["MistralForCausalLM"]
        })
    }

    /// Qwen/Qwen2.5-0.5B-Instruct's config.json.
    fn qwen2_json() -> Value {
        json!({
            "model_type": "qwen2", "vocab_size": 151_936, "hidden_size": 896,
            "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
            "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
            "sliding_window": 32768, "use_sliding_window": false, "max_window_layers": 21,
            "tie_word_embeddings": true, "hidden_act": "silu"
        })
    }

    /// tiiuae/falcon-7b's original config.json, in the "`RefinedWebModel`" keys.
    fn falcon7b_json() -> Value {
        json!({
            "model_type": "RefinedWebModel", "alibi": false,
            "apply_residual_connection_post_layernorm": false, "bias": false,
            "hidden_size": 4544, "layer_norm_epsilon": 1e-5, "multi_query": true,
            "n_head": 71, "n_layer": 32, "parallel_attn": true, "vocab_size": 65024,
            "bos_token_id": 11, "eos_token_id": 11
        })
    }

    #[test]
    fn mistral_7b_parameter_count() {
        let config = parse(&mistral_json()).unwrap();
        assert_eq!(config.family, Family::Mistral);
        assert_eq!(config.head_dim, 128);
        assert_eq!(config.parameter_count(), 7_241_732_096);
    }

    #[test]
    fn mistral_window_covers_every_block() {
        let config = parse(&mistral_json()).unwrap();
        assert_eq!(config.sliding_window, Some(4096));
        assert!((0..32).all(|block| config.block_window(block) == Some(4096)));
        assert!(!config.attention_bias);
    }

    #[test]
    fn mistral_v02_null_window() {
        let mut value = mistral_json();
        value["sliding_window"] = Value::Null;
        value["rope_theta"] = json!(1e6);
        let config = parse(&value).unwrap();
        assert_eq!(config.sliding_window, None);
        assert_eq!(config.block_window(0), None);
        assert_eq!(config.rope.theta, 1e6);
    }

    #[test]
    fn qwen25_half_b_parameter_count() {
        let config = parse(&qwen2_json()).unwrap();
        assert_eq!(config.family, Family::Qwen2);
        assert!(config.attention_bias);
        assert!(!config.attention_output_bias);
        // Qwen2.5-0.5B has 494,032,768 parameters.
        assert_eq!(config.parameter_count(), 494_032_768);
    }

    #[test]
    fn qwen2_disabled_window_is_ignored() {
        let config = parse(&qwen2_json()).unwrap();
        assert_eq!(config.sliding_window, None);
        assert!(config.sliding_window_blocks.iter().all(|&b| !b));
    }

    #[test]
    fn qwen2_window_from_max_window_layers() {
        let mut value = qwen2_json();
        value["use_sliding_window"] = json!(true);
        let config = parse(&value).unwrap();
        assert_eq!(config.block_window(20), None);
        assert_eq!(config.block_window(21), Some(32768));
        assert_eq!(config.block_window(23), Some(32768));
    }

    #[test]
    fn qwen2_window_from_layer_types() {
        let mut value = qwen2_json();
        value["num_hidden_layers"] = json!(3);
        value["use_sliding_window"] = json!(true);
        value["sliding_window"] = json!(8);
        value["layer_types"] = json!(["sliding_attention", "full_attention", "sliding_attention"]);
        let config = parse(&value).unwrap();
        assert_eq!(config.sliding_window_blocks, vec![true, false, true]);
        assert_eq!(config.block_window(0), Some(8));
        assert_eq!(config.block_window(1), None);
    }

    #[test]
    fn qwen2_layer_types_length_is_checked() {
        let mut value = qwen2_json();
        value["use_sliding_window"] = json!(true);
        value["layer_types"] = json!(["sliding_attention"]);
        let message = parse(&value).unwrap_err().to_string();
        assert!(
            message.contains("layer_types has 1 entries but num_hidden_layers is 24"),
            "{message}"
        );
    }

    #[test]
    fn zero_window_is_rejected() {
        let mut value = mistral_json();
        value["sliding_window"] = json!(0);
        let message = parse(&value).unwrap_err().to_string();
        assert!(message.contains("sliding_window is 0"), "{message}");
    }

    #[test]
    fn falcon_7b_parameter_count() {
        let config = parse(&falcon7b_json()).unwrap();
        assert_eq!(config.family, Family::Falcon);
        assert_eq!(config.num_kv_heads, 1);
        assert_eq!(config.head_dim, 64);
        assert_eq!(config.intermediate_size, 4 * 4544);
        assert_eq!(config.block_layout, BlockLayout::ParallelSharedNorm);
        assert!(config.tie_word_embeddings);
        // Embeddings 65024 x 4544, then per block a fused qkv of 4544 x (4544 + 2 x 64),
        // dense 4544 x 4544, MLP 2 x 4544 x 18176 and one LayerNorm (2 x 4544), then ln_f.
        // FalconForCausalLM of transformers 5.25 counts the same.
        assert_eq!(config.parameter_count(), 6_921_720_704);
    }

    #[test]
    fn falcon_current_keys_match_original_keys() {
        let original = parse(&falcon7b_json()).unwrap();
        let current = parse(&json!({
            "model_type": "falcon", "alibi": false, "bias": false, "hidden_size": 4544,
            "layer_norm_epsilon": 1e-5, "multi_query": true, "num_attention_heads": 71,
            "num_hidden_layers": 32, "parallel_attn": true, "vocab_size": 65024,
            "new_decoder_architecture": false, "bos_token_id": 11, "eos_token_id": 11
        }))
        .unwrap();
        assert_eq!(original, current);
    }

    #[test]
    fn falcon_40b_refinedweb_uses_new_architecture() {
        let config = parse(&json!({
            "model_type": "RefinedWeb", "alibi": false, "bias": false, "hidden_size": 8192,
            "layer_norm_epsilon": 1e-5, "n_head": 128, "n_head_kv": 8, "n_layer": 60,
            "parallel_attn": true, "vocab_size": 65024
        }))
        .unwrap();
        assert_eq!(config.block_layout, BlockLayout::ParallelSeparateNorms);
        assert_eq!(config.num_kv_heads, 8);
        // The count of FalconForCausalLM (transformers 5.25) for falcon-40b's config.
        assert_eq!(config.parameter_count(), 41_303_293_952);
    }

    #[test]
    fn falcon_alibi_is_rejected() {
        let mut value = falcon7b_json();
        value["alibi"] = json!(true);
        let error = parse(&value).unwrap_err();
        assert!(
            matches!(error, ModelError::UnsupportedFeature { .. }),
            "{error}"
        );
        let message = error.to_string();
        assert!(message.contains("alibi: true"), "{message}");
        assert!(message.contains("RefinedWebModel"), "{message}");
    }

    #[test]
    fn falcon_unsupported_layouts_are_rejected() {
        let cases = [
            (
                "apply_residual_connection_post_layernorm",
                json!(true),
                "post_layernorm: true",
            ),
            ("activation", json!("relu"), "\"relu\""),
            ("num_ln_in_parallel_attn", json!(2), "two layer norms"),
            ("num_ln_in_parallel_attn", json!(3), "expected 1, 2 or null"),
        ];
        for (key, value, expected) in cases {
            let mut config = falcon7b_json();
            config[key] = value;
            let message = parse(&config).unwrap_err().to_string();
            assert!(message.contains(expected), "{key}: {message}");
        }

        let mut grouped = falcon7b_json();
        grouped["multi_query"] = json!(false);
        grouped["n_head_kv"] = json!(8);
        let message = parse(&grouped).unwrap_err().to_string();
        assert!(
            message.contains("8 key/value heads for 71 heads"),
            "{message}"
        );
    }

    #[test]
    fn falcon_dynamic_rope_scaling_is_rejected() {
        let mut value = falcon7b_json();
        value["rope_scaling"] = json!({"type": "dynamic", "factor": 2.0});
        let error = parse(&value).unwrap_err();
        assert!(
            matches!(error, ModelError::UnsupportedRopeScaling { .. }),
            "{error}"
        );
    }

    #[test]
    fn unknown_model_type_lists_every_family() {
        let mut value = llama_json();
        value["model_type"] = json!("gemma");
        let message = parse(&value).unwrap_err().to_string();
        for supported in SUPPORTED_MODEL_TYPES {
            assert!(message.contains(supported), "{supported}: {message}");
        }
    }

    #[test]
    fn uneven_gqa_is_rejected() {
        let mut value = llama_json();
        value["num_key_value_heads"] = json!(5);
        let message = parse(&value).unwrap_err().to_string();
        assert!(message.contains("5 key/value heads"), "{message}");
    }
}
