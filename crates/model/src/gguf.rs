//! llama.cpp GGUF checkpoints: the model config from the file's metadata, and
//! its tensors served under their HF names, dequantized to the requested dtype
//! one tensor at a time.
//!
//! The metadata is mapped to an HF `config.json` object and parsed by the same
//! code as HF checkpoints, so both paths configure a model identically.
//! llama.cpp's converter permutes the rows of the query and key projections of
//! Llama-architecture models (it interleaves the two rotary halves of each
//! head); loading undoes that permutation. Llama-3.1 rope scaling is not in
//! the metadata: the converter stores it as one divisor per rotary frequency
//! in the tensor `rope_freqs.weight`, which becomes
//! [`RopeScaling::FrequencyFactors`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ihs_gguf::{GgmlType, GgufFile, MetadataValue};
use serde_json::{json, Map, Value};
use tch::{Device, Kind, Tensor};

use crate::config::{ModelConfig, RopeScaling};
use crate::error::{ModelError, Result};

/// GGUF `general.architecture` values this crate loads.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama"];

/// The tensor of per-frequency rope divisors that llama.cpp's converter
/// writes for Llama-3.1 (`rope_type` "llama3") checkpoints.
pub const ROPE_FREQS_TENSOR: &str = "rope_freqs.weight";

/// Opens a GGUF file, returning an error that names the path.
pub fn open(path: &Path) -> Result<GgufFile> {
    GgufFile::open(path).map_err(|e| gguf_error(path, &e))
}

fn gguf_error(path: &Path, error: &ihs_gguf::GgufError) -> ModelError {
    ModelError::Gguf {
        path: path.to_path_buf(),
        message: error.to_string(),
    }
}

/// Maps the GGUF metadata to an HF `config.json` object. The rope divisors
/// in the tensor `rope_freqs.weight` are not metadata, so [`config()`] adds
/// them to the parsed config.
pub fn hf_config_json(file: &GgufFile, path: &Path) -> Result<Value> {
    let err = |e: ihs_gguf::GgufError| gguf_error(path, &e);
    let architecture = file.get_str("general.architecture").map_err(err)?;
    if !SUPPORTED_ARCHITECTURES.contains(&architecture) {
        return Err(ModelError::Gguf {
            path: path.to_path_buf(),
            message: format!(
                "general.architecture {architecture:?} is not supported; supported: {}",
                SUPPORTED_ARCHITECTURES.join(", ")
            ),
        });
    }
    let key = |name: &str| format!("{architecture}.{name}");
    let uint = |name: &str| file.get_uint(&key(name)).map_err(err);
    let optional_uint = |name: &str| file.get_uint(&key(name)).ok();

    let heads = uint("attention.head_count")?;
    let hidden = uint("embedding_length")?;
    let vocab = match optional_uint("vocab_size") {
        Some(size) => size,
        None => file.get_array("tokenizer.ggml.tokens").map_err(err)?.len() as u64,
    };

    let mut config = Map::new();
    config.insert("model_type".into(), json!("llama"));
    config.insert("architectures".into(), json!(["LlamaForCausalLM"]));
    config.insert("vocab_size".into(), json!(vocab));
    config.insert("hidden_size".into(), json!(hidden));
    config.insert(
        "intermediate_size".into(),
        json!(uint("feed_forward_length")?),
    );
    config.insert("num_hidden_layers".into(), json!(uint("block_count")?));
    config.insert("num_attention_heads".into(), json!(heads));
    config.insert(
        "num_key_value_heads".into(),
        json!(optional_uint("attention.head_count_kv").unwrap_or(heads)),
    );
    if let Some(head_dim) = optional_uint("attention.key_length") {
        config.insert("head_dim".into(), json!(head_dim));
    }
    config.insert(
        "rms_norm_eps".into(),
        json!(file
            .get_float(&key("attention.layer_norm_rms_epsilon"))
            .map_err(err)?),
    );
    config.insert(
        "rope_theta".into(),
        json!(file.get_float(&key("rope.freq_base")).unwrap_or(10_000.0)),
    );
    if let Ok(kind) = file.get_str(&key("rope.scaling.type")) {
        if kind != "none" {
            let factor = file.get_float(&key("rope.scaling.factor")).map_err(err)?;
            config.insert(
                "rope_scaling".into(),
                json!({"type": kind, "factor": factor}),
            );
        }
    }
    if let Some(context) = optional_uint("context_length") {
        config.insert("max_position_embeddings".into(), json!(context));
    }
    config.insert(
        "tie_word_embeddings".into(),
        json!(file.tensor("output.weight").is_err()),
    );
    config.insert("torch_dtype".into(), json!(file_type_name(file)));
    if let Ok(bos) = file.get_uint("tokenizer.ggml.bos_token_id") {
        config.insert("bos_token_id".into(), json!(bos));
    }
    if let Ok(eos) = file.get_uint("tokenizer.ggml.eos_token_id") {
        config.insert("eos_token_id".into(), json!(eos));
    }
    Ok(Value::Object(config))
}

/// Reads the model config of a GGUF file, with the rope divisors of
/// `rope_freqs.weight` when the file has that tensor.
pub fn config(file: &GgufFile, path: &Path) -> Result<ModelConfig> {
    let mut config = ModelConfig::from_json(&hf_config_json(file, path)?, path)?;
    if let Some(factors) = rope_frequency_factors(file, path, config.head_dim)? {
        if config.rope.scaling != RopeScaling::None {
            return Err(ModelError::Gguf {
                path: path.to_path_buf(),
                message: format!(
                    "the file has both {ROPE_FREQS_TENSOR} and rope scaling {:?} in its metadata; \
                     ihs applies one or the other, not both",
                    config.rope.scaling
                ),
            });
        }
        config.rope.scaling = RopeScaling::FrequencyFactors { factors };
    }
    Ok(config)
}

/// Reads `rope_freqs.weight`: `head_dim / 2` positive divisors, one per
/// rotary frequency, or `None` when the file has no such tensor.
fn rope_frequency_factors(
    file: &GgufFile,
    path: &Path,
    head_dim: usize,
) -> Result<Option<Vec<f64>>> {
    let Ok(info) = file.tensor(ROPE_FREQS_TENSOR) else {
        return Ok(None);
    };
    let invalid = |message: String| ModelError::Gguf {
        path: path.to_path_buf(),
        message,
    };

    let expected = [head_dim / 2];
    if info.shape() != expected {
        return Err(invalid(format!(
            "{ROPE_FREQS_TENSOR} has shape {:?}, expected {expected:?}: one factor per rotary \
             frequency of head dimension {head_dim}",
            info.shape()
        )));
    }
    let values = file
        .dequantize(ROPE_FREQS_TENSOR)
        .map_err(|e| gguf_error(path, &e))?;
    if let Some((index, value)) = values
        .iter()
        .enumerate()
        .find(|(_, value)| !value.is_finite() || **value <= 0.0)
    {
        return Err(invalid(format!(
            "{ROPE_FREQS_TENSOR}[{index}] is {value}; every rope frequency factor must be a \
             positive finite number"
        )));
    }
    Ok(Some(values.into_iter().map(f64::from).collect()))
}

/// Names the quantization of the whole file (`general.file_type`).
fn file_type_name(file: &GgufFile) -> String {
    let name = match file.get_uint("general.file_type") {
        Ok(0) => "F32",
        Ok(1) => "F16",
        Ok(2) => "Q4_0",
        Ok(3) => "Q4_1",
        Ok(7) => "Q8_0",
        Ok(8) => "Q5_0",
        Ok(9) => "Q5_1",
        Ok(10) => "Q2_K",
        Ok(11..=13) => "Q3_K",
        Ok(14 | 15) => "Q4_K",
        Ok(16 | 17) => "Q5_K",
        Ok(18) => "Q6_K",
        Ok(32) => "BF16",
        _ => "mixed",
    };
    format!("gguf {name}")
}

/// The tensors of a GGUF file under their HF names.
pub struct GgufWeights {
    file: Arc<GgufFile>,
    path: PathBuf,
    /// HF name to GGUF name.
    names: HashMap<String, String>,
    num_heads: usize,
    num_kv_heads: usize,
}

impl GgufWeights {
    /// Maps every tensor of `file` that a Llama-family model reads.
    #[must_use]
    pub fn new(file: Arc<GgufFile>, path: &Path, config: &ModelConfig) -> Self {
        let mut names = HashMap::new();
        for info in file.tensors() {
            if let Some(hf) = hf_name(info.name()) {
                names.insert(hf, info.name().to_owned());
            }
        }
        Self {
            file,
            path: path.to_path_buf(),
            names,
            num_heads: config.num_heads,
            num_kv_heads: config.num_kv_heads,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    pub(crate) fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.names.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Returns the number of stored values and the tensor types, sorted.
    pub(crate) fn summary(&self) -> (u64, Vec<String>) {
        let mut count = 0;
        let mut types: Vec<GgmlType> = Vec::new();
        for info in self.file.tensors() {
            count += info.n_elements();
            if !types.contains(&info.ggml_type()) {
                types.push(info.ggml_type());
            }
        }
        let mut names: Vec<String> = types.iter().map(ToString::to_string).collect();
        names.sort();
        (count, names)
    }

    /// Dequantizes one tensor to `kind` on `device`, undoing llama.cpp's
    /// query and key row permutation.
    pub(crate) fn load(
        &self,
        name: &str,
        shape: &[i64],
        kind: Kind,
        device: Device,
    ) -> Result<Tensor> {
        let gguf_name = self
            .names
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_owned(),
                path: self.path.clone(),
            })?;
        let info = self
            .file
            .tensor(gguf_name)
            .map_err(|e| gguf_error(&self.path, &e))?;

        let found: Vec<i64> = info.shape().iter().map(|&d| d as i64).collect();
        if found != shape {
            return Err(ModelError::TensorShape {
                name: format!("{name} ({gguf_name})"),
                path: self.path.clone(),
                expected: shape.to_vec(),
                found,
            });
        }

        let data = self
            .file
            .tensor_data(info)
            .map_err(|e| gguf_error(&self.path, &e))?;
        let values = ihs_gguf::dequantize(info, data).map_err(|e| gguf_error(&self.path, &e))?;
        let mut tensor = Tensor::from_slice(&values).view(shape);
        drop(values);

        if name.ends_with("self_attn.q_proj.weight") {
            tensor = unpermute_rows(&tensor, self.num_heads);
        } else if name.ends_with("self_attn.k_proj.weight") {
            tensor = unpermute_rows(&tensor, self.num_kv_heads);
        }
        Ok(tensor.f_to_kind(kind)?.f_to_device(device)?)
    }
}

/// Restores HF's row order of a `[heads * head_dim, in]` projection that
/// llama.cpp stored with the two halves of each head's rotary dimensions
/// interleaved.
fn unpermute_rows(weight: &Tensor, heads: usize) -> Tensor {
    let size = weight.size();
    let (rows, cols) = (size[0], size[1]);
    let heads = heads as i64;
    weight
        .view([heads, rows / heads / 2, 2, cols])
        .transpose(1, 2)
        .reshape([rows, cols])
}

/// Maps a llama.cpp tensor name to the HF name of the same weight.
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_owned());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (index, tensor) = rest.split_once('.')?;
    let index: usize = index.parse().ok()?;
    let (module, suffix) = tensor.rsplit_once('.')?;
    let hf_module = match module {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{index}.{hf_module}.{suffix}"))
}

/// Returns a metadata value as JSON, for display.
#[must_use]
pub fn metadata_json(value: &MetadataValue) -> Value {
    match value {
        MetadataValue::String(s) => json!(s),
        MetadataValue::Bool(b) => json!(b),
        other => other
            .as_f64()
            .map_or_else(|| json!(other.type_name()), |number| json!(number)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_names_map_to_hf() {
        assert_eq!(
            hf_name("blk.12.attn_q.weight").as_deref(),
            Some("model.layers.12.self_attn.q_proj.weight")
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight").as_deref(),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
        assert_eq!(hf_name(ROPE_FREQS_TENSOR), None);
    }

    #[test]
    fn unpermute_inverts_the_llama_cpp_permutation() {
        // llama.cpp: view [heads, 2, head_dim / 2, in], swap axes 1 and 2.
        let heads = 3;
        let head_dim = 4;
        let original = Tensor::arange(heads * head_dim * 2, (Kind::Float, Device::Cpu))
            .view([heads * head_dim, 2]);
        let permuted = original
            .view([heads, 2, head_dim / 2, 2])
            .transpose(1, 2)
            .reshape([heads * head_dim, 2]);
        let restored = unpermute_rows(&permuted, heads as usize);
        assert_eq!(
            Vec::<f32>::try_from(restored.flatten(0, -1)).unwrap(),
            Vec::<f32>::try_from(original.flatten(0, -1)).unwrap()
        );
    }
}
