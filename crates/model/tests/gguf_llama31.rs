//! Llama-3.1 rope scaling in GGUF files. The llama31 parity fixture
//! (`rope_type` "llama3") is converted here the way llama.cpp's
//! `convert_hf_to_gguf.py` converts a Llama checkpoint: F32 tensors under
//! llama.cpp names, query and key rows permuted, and the rope scaling written
//! as the `rope_freqs.weight` divisors, not as metadata. The converted file
//! must give the states of the same fixture loaded from safetensors and the
//! states HF transformers recorded for it.
//!
//! Tolerances are relative to the largest magnitude of the reference tensor:
//! - against the safetensors checkpoint: 1e-6. Both models hold the same f32
//!   weights and run the same kernels, so only the rotary angles differ, by
//!   f32 rounding: HF multiplies inverse frequencies by a blend, the GGUF
//!   path divides them by the stored factors. An x86-64 CPU run measured at
//!   most 4.9e-7.
//! - against the HF reference: 1e-5, the f32 tolerance of `parity.rs`
//!   (measured 5.9e-7 on the same run). Without the divisors the difference
//!   was 1.6e-2 on the reference prompts and 0.21 on the 2048-token prompt.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::{family_dir, max_abs, max_abs_diff, Reference};
use ihs_model::gguf::ROPE_FREQS_TENSOR;
use ihs_model::{
    open_checkpoint, Batch, CausalLm, ForwardOutput, ForwardRequest, Layers, LoadOptions,
    ModelConfig, PaddingSide, Position, RopeScaling,
};
use tch::{Kind, Tensor};

const FAMILY: &str = "llama31";

/// Against the same fixture loaded from safetensors.
const SAME_WEIGHTS_TOLERANCE: f64 = 1e-6;

/// Against the HF transformers reference, as in `parity.rs`.
const REFERENCE_TOLERANCE: f64 = 1e-5;

/// Tokens of the synthetic long prompt. The blended frequency of the fixture
/// (wavelength about 4443 tokens) turns about 1.8 rad more over 2048
/// positions without its divisor, so a missing divisor cannot hide here.
const LONG_PROMPT_TOKENS: usize = 2048;

/// A GGUF metadata value of the types this converter writes.
enum Meta {
    U32(u32),
    F32(f32),
    Text(&'static str),
}

/// The metadata and tensors of one GGUF file, in file order.
struct GgufContent {
    metadata: Vec<(String, Meta)>,
    tensors: Vec<(String, Tensor)>,
}

impl GgufContent {
    fn set(&mut self, key: &str, value: Meta) {
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.to_owned(), value));
    }

    fn set_tensor(&mut self, name: &str, tensor: Tensor) {
        self.tensors.retain(|(n, _)| n != name);
        self.tensors.push((name.to_owned(), tensor));
    }

    fn remove_tensor(&mut self, name: &str) {
        self.tensors.retain(|(n, _)| n != name);
    }
}

fn hf_config() -> ModelConfig {
    ModelConfig::from_file(&family_dir(FAMILY).join("config.json")).unwrap()
}

/// `rope_freqs.weight` as `convert_hf_to_gguf.py` derives it from HF's llama3
/// parameters, in f32 as its torch code computes: 1 for wavelengths below
/// `context / high_freq_factor`, `factor` above `context / low_freq_factor`,
/// and `1 / ((1 - smooth) / factor + smooth)` in between.
fn converter_rope_factors(config: &ModelConfig) -> Vec<f32> {
    let RopeScaling::Llama3 {
        factor,
        low_freq_factor: low,
        high_freq_factor: high,
        original_max_position_embeddings: context,
    } = config.rope.scaling
    else {
        panic!(
            "the {FAMILY} fixture should use llama3 rope scaling, found {:?}",
            config.rope.scaling
        );
    };
    let (factor, low, high, context) = (factor as f32, low as f32, high as f32, context as f32);
    let dim = config.head_dim;
    (0..dim)
        .step_by(2)
        .map(|i| {
            let freq = 1.0 / (config.rope.theta as f32).powf(i as f32 / dim as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            if wavelen < context / high {
                1.0
            } else if wavelen > context / low {
                factor
            } else {
                let smooth = (context / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

/// Interleaves the two rotary halves of each head in the rows of a
/// `[heads * head_dim, in]` projection, as llama.cpp's converter does.
fn permute_rows(weight: &Tensor, heads: usize) -> Tensor {
    let size = weight.size();
    let (rows, cols) = (size[0], size[1]);
    let heads = heads as i64;
    weight
        .reshape([heads, 2, rows / heads / 2, cols])
        .transpose(1, 2)
        .reshape([rows, cols])
}

/// Converts the fixture's config and safetensors weights to GGUF content.
fn convert_fixture() -> GgufContent {
    let config = hf_config();
    let weights: HashMap<String, Tensor> =
        Tensor::read_safetensors(family_dir(FAMILY).join("model.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let take = |name: &str| weights[name].to_kind(Kind::Float);

    let count = |n: usize| Meta::U32(u32::try_from(n).unwrap());
    let mut content = GgufContent {
        metadata: vec![
            ("general.architecture".into(), Meta::Text("llama")),
            // llama.cpp's LLAMA_FTYPE_ALL_F32.
            ("general.file_type".into(), Meta::U32(0)),
            ("llama.vocab_size".into(), count(config.vocab_size)),
            (
                "llama.context_length".into(),
                count(config.max_position_embeddings.unwrap()),
            ),
            ("llama.embedding_length".into(), count(config.hidden_size)),
            (
                "llama.feed_forward_length".into(),
                count(config.intermediate_size),
            ),
            ("llama.block_count".into(), count(config.num_layers)),
            ("llama.attention.head_count".into(), count(config.num_heads)),
            (
                "llama.attention.head_count_kv".into(),
                count(config.num_kv_heads),
            ),
            ("llama.attention.key_length".into(), count(config.head_dim)),
            (
                "llama.attention.value_length".into(),
                count(config.head_dim),
            ),
            ("llama.rope.dimension_count".into(), count(config.head_dim)),
            (
                "llama.rope.freq_base".into(),
                Meta::F32(config.rope.theta as f32),
            ),
            (
                "llama.attention.layer_norm_rms_epsilon".into(),
                Meta::F32(config.norm_eps as f32),
            ),
        ],
        tensors: Vec::new(),
    };

    let factors = converter_rope_factors(&config);
    content.set_tensor(ROPE_FREQS_TENSOR, Tensor::from_slice(&factors));
    content.set_tensor("token_embd.weight", take("model.embed_tokens.weight"));
    for block in 0..config.num_layers {
        let hf = |module: &str| take(&format!("model.layers.{block}.{module}.weight"));
        let gguf = |module: &str| format!("blk.{block}.{module}.weight");
        content.set_tensor(&gguf("attn_norm"), hf("input_layernorm"));
        content.set_tensor(
            &gguf("attn_q"),
            permute_rows(&hf("self_attn.q_proj"), config.num_heads),
        );
        content.set_tensor(
            &gguf("attn_k"),
            permute_rows(&hf("self_attn.k_proj"), config.num_kv_heads),
        );
        content.set_tensor(&gguf("attn_v"), hf("self_attn.v_proj"));
        content.set_tensor(&gguf("attn_output"), hf("self_attn.o_proj"));
        content.set_tensor(&gguf("ffn_norm"), hf("post_attention_layernorm"));
        content.set_tensor(&gguf("ffn_gate"), hf("mlp.gate_proj"));
        content.set_tensor(&gguf("ffn_up"), hf("mlp.up_proj"));
        content.set_tensor(&gguf("ffn_down"), hf("mlp.down_proj"));
    }
    content.set_tensor("output_norm.weight", take("model.norm.weight"));
    assert!(!config.tie_word_embeddings);
    content.set_tensor("output.weight", take("lm_head.weight"));
    content
}

/// Serializes GGUF v3 with F32 tensors, each aligned to 32 bytes.
fn gguf_bytes(content: &GgufContent) -> Vec<u8> {
    const ALIGNMENT: usize = 32;
    const GGUF_TYPE_U32: u32 = 4;
    const GGUF_TYPE_F32: u32 = 6;
    const GGUF_TYPE_STRING: u32 = 8;
    const GGML_TYPE_F32: u32 = 0;

    fn write_string(out: &mut Vec<u8>, text: &str) {
        out.extend_from_slice(&(text.len() as u64).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    fn pad(out: &mut Vec<u8>) {
        out.resize(out.len().next_multiple_of(ALIGNMENT), 0);
    }

    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3_u32.to_le_bytes());
    out.extend_from_slice(&(content.tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(content.metadata.len() as u64).to_le_bytes());
    for (key, value) in &content.metadata {
        write_string(&mut out, key);
        match value {
            Meta::U32(v) => {
                out.extend_from_slice(&GGUF_TYPE_U32.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
            Meta::F32(v) => {
                out.extend_from_slice(&GGUF_TYPE_F32.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
            Meta::Text(text) => {
                out.extend_from_slice(&GGUF_TYPE_STRING.to_le_bytes());
                write_string(&mut out, text);
            }
        }
    }

    let mut data = Vec::new();
    for (name, tensor) in &content.tensors {
        write_string(&mut out, name);
        let shape = tensor.size();
        out.extend_from_slice(&(shape.len() as u32).to_le_bytes());
        // ggml lists dimensions innermost first.
        for &dim in shape.iter().rev() {
            out.extend_from_slice(&(dim as u64).to_le_bytes());
        }
        out.extend_from_slice(&GGML_TYPE_F32.to_le_bytes());
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        let values = Vec::<f32>::try_from(tensor.to_kind(Kind::Float).flatten(0, -1)).unwrap();
        for value in values {
            data.extend_from_slice(&value.to_le_bytes());
        }
        pad(&mut data);
    }
    pad(&mut out);
    out.extend_from_slice(&data);
    out
}

/// Writes the converted fixture, changed by `edit`, to a `.gguf` file under
/// cargo's scratch folder for integration tests.
fn write_gguf(label: &str, edit: impl FnOnce(&mut GgufContent)) -> PathBuf {
    let mut content = convert_fixture();
    edit(&mut content);
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("llama31-{label}.gguf"));
    std::fs::write(&path, gguf_bytes(&content)).unwrap();
    path
}

fn load(path: &std::path::Path) -> CausalLm {
    CausalLm::load(path, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

fn run_all_positions(model: &CausalLm, ids: &[u32]) -> ForwardOutput {
    let batch = Batch::new(&[ids.to_vec()], PaddingSide::Left, 0).unwrap();
    let request = ForwardRequest {
        layers: Layers::All,
        position: Position::All,
        graft: None,
        logits: true,
    };
    model.forward(&batch, &request).unwrap()
}

fn relative_diff(ours: &Tensor, reference: &Tensor) -> f64 {
    max_abs_diff(ours, reference) / max_abs(reference).max(1.0)
}

/// Returns the worst relative difference between two runs, over every layer
/// at every position and over the logits.
fn worst_difference(ours: &ForwardOutput, reference: &ForwardOutput) -> f64 {
    assert_eq!(ours.states.len(), reference.states.len());
    let states = ours
        .states
        .iter()
        .zip(&reference.states)
        .map(|(a, b)| relative_diff(a, b));
    let logits = relative_diff(
        ours.logits.as_ref().unwrap(),
        reference.logits.as_ref().unwrap(),
    );
    states.fold(logits, f64::max)
}

/// Returns the worst relative difference from the HF reference states and
/// logits (f32) over every reference prompt, layer and position.
fn worst_reference_difference(model: &CausalLm) -> f64 {
    let reference = Reference::load(FAMILY);
    let mut worst: f64 = 0.0;
    for prompt in 0..reference.prompt_count() {
        let output = run_all_positions(model, &reference.input_ids(prompt));
        let hidden = reference.tensor(&format!("f32.p{prompt}.hidden"));
        assert_eq!(output.states.len() as i64, hidden.size()[0]);
        for (layer, state) in output.states.iter().enumerate() {
            let diff = relative_diff(&state.squeeze_dim(0), &hidden.get(layer as i64));
            worst = worst.max(diff);
        }
        let logits = reference.tensor(&format!("f32.p{prompt}.logits"));
        let diff = relative_diff(&output.logits.unwrap().squeeze_dim(0), &logits);
        worst = worst.max(diff);
    }
    worst
}

/// Returns the reference prompts and a long synthetic one.
fn prompts() -> Vec<Vec<u32>> {
    let reference = Reference::load(FAMILY);
    let mut prompts: Vec<Vec<u32>> = (0..reference.prompt_count())
        .map(|p| reference.input_ids(p))
        .collect();
    let vocab = hf_config().vocab_size as u32;
    prompts.push(
        (0..LONG_PROMPT_TOKENS as u32)
            .map(|i| (i * 37 + 11) % vocab)
            .collect(),
    );
    prompts
}

#[test]
fn config_holds_rope_divisors() {
    let path = write_gguf("config", |_| {});
    let (config, _) = open_checkpoint(&path).unwrap();
    let hf = hf_config();
    assert_eq!(config.num_layers, hf.num_layers);
    assert_eq!(config.hidden_size, hf.hidden_size);
    assert_eq!(config.num_heads, hf.num_heads);
    assert_eq!(config.num_kv_heads, hf.num_kv_heads);
    assert_eq!(config.head_dim, hf.head_dim);
    assert_eq!(config.rope.theta, hf.rope.theta);

    let RopeScaling::FrequencyFactors { factors } = &config.rope.scaling else {
        panic!(
            "expected frequency factors, found {:?}",
            config.rope.scaling
        );
    };
    let expected: Vec<f64> = converter_rope_factors(&hf)
        .into_iter()
        .map(f64::from)
        .collect();
    assert_eq!(factors, &expected);
    // head_dim 16 and theta 5e5 put four frequencies above the high cutoff,
    // one in the blended band and three below the low cutoff.
    assert_eq!(factors[..4], [1.0; 4]);
    assert!(factors[4] > 1.0, "blended factor {}", factors[4]);
    assert!(factors[4] < 8.0, "blended factor {}", factors[4]);
    assert_eq!(factors[5..], [8.0; 3]);
}

#[test]
fn states_match_safetensors_checkpoint() {
    let gguf = load(&write_gguf("same-weights", |_| {}));
    let safetensors = CausalLm::load_dir(&family_dir(FAMILY), &LoadOptions::default()).unwrap();
    for (index, ids) in prompts().iter().enumerate() {
        let diff = worst_difference(
            &run_all_positions(&gguf, ids),
            &run_all_positions(&safetensors, ids),
        );
        eprintln!(
            "prompt {index} ({} tokens): GGUF against safetensors, max relative difference {diff:.2e}",
            ids.len()
        );
        assert!(
            diff <= SAME_WEIGHTS_TOLERANCE,
            "prompt {index} ({} tokens): relative difference {diff:.3e} exceeds {SAME_WEIGHTS_TOLERANCE:.0e}",
            ids.len()
        );
    }
}

#[test]
fn states_match_hf_reference() {
    let model = load(&write_gguf("reference", |_| {}));
    let diff = worst_reference_difference(&model);
    eprintln!("GGUF with rope_freqs against HF: max relative difference {diff:.2e}");
    assert!(
        diff <= REFERENCE_TOLERANCE,
        "relative difference {diff:.3e} exceeds {REFERENCE_TOLERANCE:.0e}"
    );
}

#[test]
fn ignoring_rope_freqs_breaks_parity() {
    let model = load(&write_gguf("without-rope-freqs", |content| {
        content.remove_tensor(ROPE_FREQS_TENSOR);
    }));
    assert_eq!(model.config().rope.scaling, RopeScaling::None);

    let diff = worst_reference_difference(&model);
    eprintln!("GGUF without rope_freqs against HF: max relative difference {diff:.2e}");
    assert!(
        diff > 10.0 * REFERENCE_TOLERANCE,
        "unscaled rope still matches HF ({diff:.3e})"
    );

    let safetensors = CausalLm::load_dir(&family_dir(FAMILY), &LoadOptions::default()).unwrap();
    let long = prompts().pop().unwrap();
    let diff = worst_difference(
        &run_all_positions(&model, &long),
        &run_all_positions(&safetensors, &long),
    );
    eprintln!(
        "GGUF without rope_freqs, {} tokens: max relative difference {diff:.2e}",
        long.len()
    );
    assert!(
        diff > 1e-2,
        "unscaled rope barely changes a {}-token prompt ({diff:.3e})",
        long.len()
    );
}

/// Returns the message of loading the converted fixture changed by `edit`.
fn config_error(label: &str, edit: impl FnOnce(&mut GgufContent)) -> String {
    let path = write_gguf(label, edit);
    match open_checkpoint(&path) {
        Ok((config, _)) => panic!("{label}: loaded with rope {:?}", config.rope),
        Err(error) => error.to_string(),
    }
}

#[test]
fn invalid_rope_freqs_are_rejected() {
    let short = config_error("short-rope-freqs", |content| {
        content.set_tensor(ROPE_FREQS_TENSOR, Tensor::from_slice(&[1.0_f32; 7]));
    });
    assert!(
        short.contains("rope_freqs.weight has shape [7], expected [8]"),
        "{short}"
    );

    let zero = config_error("zero-rope-freq", |content| {
        let mut factors = [1.0_f32; 8];
        factors[6] = 0.0;
        content.set_tensor(ROPE_FREQS_TENSOR, Tensor::from_slice(&factors));
    });
    assert!(zero.contains("rope_freqs.weight[6] is 0"), "{zero}");

    let not_a_number = config_error("nan-rope-freq", |content| {
        let mut factors = [1.0_f32; 8];
        factors[2] = f32::NAN;
        content.set_tensor(ROPE_FREQS_TENSOR, Tensor::from_slice(&factors));
    });
    assert!(
        not_a_number.contains("rope_freqs.weight[2] is NaN"),
        "{not_a_number}"
    );

    let both = config_error("rope-freqs-and-linear", |content| {
        content.set("llama.rope.scaling.type", Meta::Text("linear"));
        content.set("llama.rope.scaling.factor", Meta::F32(2.0));
    });
    assert!(
        both.contains("both rope_freqs.weight and rope scaling"),
        "{both}"
    );
}
