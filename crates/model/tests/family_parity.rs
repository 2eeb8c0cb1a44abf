//! Parity with HF transformers for the Mistral, Qwen2 and Falcon families.
//! Every layer's residual stream and the last position's logits are compared
//! per dtype with the reference data that `scripts/make_family_fixtures.py`
//! recorded with transformers 5.25.0 and torch 2.13.0 on CPU. The tests also
//! check the attention masks HF built for the windowed fixtures, batched runs
//! against single ones, and the errors for configs that cannot be loaded.
//!
//! Tolerances are those of `parity.rs`, relative to the largest magnitude of
//! the reference tensor: f32 1e-5, bf16 2e-2, f16 4e-3 on the CPU, wider
//! with `IHS_TEST_DEVICE=cuda` (see `common::tolerance`).

mod common;

use std::path::Path;

use common::{
    batch_tolerance, family_dir, load, max_abs, max_abs_diff, options, tolerance, Reference,
};
use ihs_model::{
    Batch, BlockLayout, CausalLm, Dtype, Family, ForwardRequest, Graft, GraftTarget, Layers,
    LoadOptions, ModelConfig, ModelError, PaddingSide, Position, TextTokenizer, Weights,
};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

/// Fixtures with HF reference data, as written by `make_family_fixtures.py`.
const FAMILIES: [&str; 10] = [
    "mistral01",
    "mistral02",
    "mistral-window",
    "qwen2",
    "qwen2-untied",
    "qwen2-window",
    "falcon7b",
    "falcon-rw",
    "falcon-newarch",
    "falcon-seq",
];

/// Fixtures whose reference stores the mask HF gave each block (`p0.mask.block{b}`).
const WINDOWED: [&str; 2] = ["mistral-window", "qwen2-window"];

fn all_positions() -> ForwardRequest {
    ForwardRequest {
        layers: Layers::All,
        position: Position::All,
        graft: None,
        logits: true,
    }
}

fn relative_diff(ours: &Tensor, reference: &Tensor) -> f64 {
    max_abs_diff(ours, reference) / max_abs(reference).max(1.0)
}

/// Runs every reference prompt through `model` and returns the worst relative
/// difference of states and of logits against the `dtype` reference.
fn worst_differences(model: &CausalLm, reference: &Reference, dtype: Dtype) -> (f64, f64) {
    let mut worst_state: f64 = 0.0;
    let mut worst_logits: f64 = 0.0;
    for prompt in 0..reference.prompt_count() {
        let batch = Batch::new(&[reference.input_ids(prompt)], PaddingSide::Left, 0).unwrap();
        let output = model.forward(&batch, &all_positions()).unwrap();

        let expected = reference.tensor(&format!("{dtype}.p{prompt}.hidden"));
        assert_eq!(output.states.len() as i64, expected.size()[0]);
        for (layer, state) in output.states.iter().enumerate() {
            let diff = relative_diff(&state.squeeze_dim(0), &expected.get(layer as i64));
            worst_state = worst_state.max(diff);
        }
        let want = reference.tensor(&format!("{dtype}.p{prompt}.logits"));
        let diff = relative_diff(&output.logits.unwrap().squeeze_dim(0), &want);
        worst_logits = worst_logits.max(diff);
    }
    (worst_state, worst_logits)
}

fn check_all_families(dtype: Dtype) {
    for family in FAMILIES {
        let model = load(family, dtype);
        let reference = Reference::load(family);
        let (state, logits) = worst_differences(&model, &reference, dtype);
        eprintln!(
            "{family:14} {dtype:4} max relative difference: states {state:.2e}, logits {logits:.2e}"
        );
        assert!(
            state <= tolerance(dtype),
            "{family} {dtype}: state difference {state:.3e} exceeds {:.0e}",
            tolerance(dtype)
        );
        assert!(
            logits <= tolerance(dtype),
            "{family} {dtype}: logits difference {logits:.3e} exceeds {:.0e}",
            tolerance(dtype)
        );
    }
}

#[test]
fn f32_states_match_hf() {
    check_all_families(Dtype::F32);
}

#[test]
fn bf16_states_match_hf() {
    check_all_families(Dtype::Bf16);
}

#[test]
fn f16_states_match_hf() {
    check_all_families(Dtype::F16);
}

/// Runs every reference prompt alone and in one padded batch and compares
/// each prompt's real positions at every layer.
fn batched_equals_single(family: &str, side: PaddingSide) {
    let model = load(family, Dtype::F32);
    let reference = Reference::load(family);
    let sequences: Vec<Vec<u32>> = (0..reference.prompt_count())
        .map(|p| reference.input_ids(p))
        .collect();
    let batch = Batch::new(&sequences, side, 0).unwrap();
    let batched = model.forward(&batch, &all_positions()).unwrap();

    for (row, ids) in sequences.iter().enumerate() {
        let alone_batch = Batch::new(std::slice::from_ref(ids), side, 0).unwrap();
        let single = model.forward(&alone_batch, &all_positions()).unwrap();
        let start = batch.index_of(row, 0) as i64;
        for layer in 0..single.states.len() {
            let alone = single.states[layer].get(0);
            let within = batched.states[layer]
                .get(row as i64)
                .narrow(0, start, ids.len() as i64);
            let diff = relative_diff(&within, &alone);
            assert!(
                diff <= batch_tolerance(),
                "{family} {side:?} row {row} layer {layer}: {diff:.3e}"
            );
        }
        let diff = max_abs_diff(
            &single.logits.as_ref().unwrap().get(0),
            &batched.logits.as_ref().unwrap().get(row as i64),
        );
        assert!(
            diff <= 1e-4,
            "{family} {side:?} row {row} logits: {diff:.3e}"
        );
    }
}

#[test]
fn batched_left_padding_equals_single() {
    for family in FAMILIES {
        batched_equals_single(family, PaddingSide::Left);
    }
}

#[test]
fn batched_right_padding_equals_single() {
    for family in FAMILIES {
        batched_equals_single(family, PaddingSide::Right);
    }
}

fn fixture_config(family: &str) -> ModelConfig {
    ModelConfig::from_file(&family_dir(family).join("config.json")).unwrap()
}

/// Loads a fixture's weights under a config changed by `edit`.
fn load_with(family: &str, edit: impl FnOnce(&mut ModelConfig)) -> CausalLm {
    let mut config = fixture_config(family);
    edit(&mut config);
    let weights = Weights::open_dir(&family_dir(family)).unwrap();
    CausalLm::from_weights(config, &weights, &options(Dtype::F32)).unwrap()
}

/// Compares each block's sliding or full mask with the boolean mask HF passed
/// to that block's attention for prompt 0: a query at i attends to keys j with
/// `i - window < j <= i`.
#[test]
fn window_masks_match_hf() {
    for family in WINDOWED {
        let config = fixture_config(family);
        let reference = Reference::load(family);
        let batch = Batch::new(&[reference.input_ids(0)], PaddingSide::Left, 0).unwrap();
        for block in 0..config.num_layers {
            let ours = batch
                .attention_mask_4d(Device::Cpu, config.block_window(block))
                .get(0)
                .get(0)
                .to_kind(Kind::Float);
            let hf = reference.tensor(&format!("p0.mask.block{block}"));
            assert_eq!(
                max_abs_diff(&ours, &hf),
                0.0,
                "{family} block {block} (window {:?})",
                config.block_window(block)
            );
        }
    }
}

#[test]
fn window_fixtures_use_their_windows() {
    let mistral = fixture_config("mistral-window");
    assert_eq!(mistral.sliding_window, Some(5));
    assert_eq!(mistral.sliding_window_blocks, vec![true; 3]);

    let qwen2 = fixture_config("qwen2-window");
    assert_eq!(qwen2.sliding_window, Some(5));
    assert_eq!(qwen2.sliding_window_blocks, vec![false, true, true]);

    // The tied Qwen2 fixture has sliding_window 4 with use_sliding_window: false.
    let disabled = fixture_config("qwen2");
    assert_eq!(disabled.sliding_window, None);
}

/// Returns the worst f32 state difference from the reference when a fixture
/// runs with another window. It is far above the f32 tolerance when the window matters.
fn f32_difference_with_window(family: &str, window: Option<usize>) -> f64 {
    let model = load_with(family, |config| {
        config.sliding_window = window;
        config.sliding_window_blocks = vec![window.is_some(); config.num_layers];
    });
    let diff = worst_differences(&model, &Reference::load(family), Dtype::F32).0;
    eprintln!("{family} with window {window:?}: f32 state difference {diff:.2e}");
    diff
}

#[test]
fn window_off_by_one_breaks_parity() {
    for window in [None, Some(4), Some(6)] {
        let diff = f32_difference_with_window("mistral-window", window);
        assert!(
            diff > 1e-3,
            "mistral-window with window {window:?} still matches HF ({diff:.3e})"
        );
    }
}

#[test]
fn ignored_qwen2_window_would_change_states() {
    let diff = f32_difference_with_window("qwen2", Some(4));
    assert!(
        diff > 1e-3,
        "applying the disabled window changed nothing ({diff:.3e})"
    );
}

#[test]
fn refinedweb_keys_give_the_falcon7b_config() {
    let original = fixture_config("falcon-rw");
    let current = fixture_config("falcon7b");
    assert_eq!(original.family, Family::Falcon);
    assert_eq!(original.block_layout, BlockLayout::ParallelSharedNorm);
    assert_eq!(original.num_kv_heads, 1);
    for (name, ours, theirs) in [
        ("hidden_size", original.hidden_size, current.hidden_size),
        ("num_heads", original.num_heads, current.num_heads),
        ("num_kv_heads", original.num_kv_heads, current.num_kv_heads),
        ("num_layers", original.num_layers, current.num_layers),
        (
            "intermediate_size",
            original.intermediate_size,
            current.intermediate_size,
        ),
    ] {
        assert_eq!(ours, theirs, "{name}");
    }
    assert_eq!(original.rope, current.rope);
    assert_eq!(original.tie_word_embeddings, current.tie_word_embeddings);
    assert_eq!(original.norm_eps, current.norm_eps);
}

#[test]
fn falcon_layouts_of_fixtures() {
    let expected = [
        ("falcon7b", BlockLayout::ParallelSharedNorm, 1),
        ("falcon-newarch", BlockLayout::ParallelSeparateNorms, 2),
        ("falcon-seq", BlockLayout::Sequential, 8),
    ];
    for (family, layout, kv_heads) in expected {
        let config = fixture_config(family);
        assert_eq!(config.block_layout, layout, "{family}");
        assert_eq!(config.num_kv_heads, kv_heads, "{family}");
    }
    assert!(fixture_config("falcon-seq").attention_bias);
}

#[test]
fn parameter_count_matches_fixture_weights() {
    for family in FAMILIES {
        let config = fixture_config(family);
        let weights = Weights::open_dir(&family_dir(family)).unwrap();
        let (stored, _) = weights.summary();
        assert_eq!(config.parameter_count(), stored, "{family}");
    }
}

#[test]
fn logit_lens_of_last_state_equals_logits() {
    for family in ["falcon7b", "qwen2-untied", "mistral02"] {
        let model = load(family, Dtype::F32);
        let reference = Reference::load(family);
        let batch = Batch::new(&[reference.input_ids(0)], PaddingSide::Left, 0).unwrap();
        let request = ForwardRequest {
            layers: Layers::Indices(vec![model.num_layers()]),
            position: Position::Last,
            graft: None,
            logits: true,
        };
        let output = model.forward(&batch, &request).unwrap();
        let last = output.state(model.num_layers()).unwrap().squeeze_dim(1);
        let lens = model.logit_lens(&last).unwrap();
        assert_eq!(
            max_abs_diff(&lens, output.logits.as_ref().unwrap()),
            0.0,
            "{family}"
        );
    }
}

#[test]
fn falcon_grafting_own_state_changes_nothing() {
    let model = load("falcon-newarch", Dtype::F32);
    let reference = Reference::load("falcon-newarch");
    let sequences: Vec<Vec<u32>> = (0..reference.prompt_count())
        .map(|p| reference.input_ids(p))
        .collect();
    let batch = Batch::new(&sequences, PaddingSide::Left, 0).unwrap();
    let plain = model
        .forward(
            &batch,
            &ForwardRequest {
                logits: true,
                ..ForwardRequest::default()
            },
        )
        .unwrap();
    for layer in 0..=model.num_layers() {
        let graft = Graft {
            layer,
            target: GraftTarget::Last,
            states: plain.state(layer).unwrap().squeeze_dim(1),
        };
        let request = ForwardRequest {
            graft: Some(graft),
            logits: true,
            ..ForwardRequest::default()
        };
        let grafted = model.forward(&batch, &request).unwrap();
        let diff = max_abs_diff(
            plain.logits.as_ref().unwrap(),
            grafted.logits.as_ref().unwrap(),
        );
        assert_eq!(diff, 0.0, "layer {layer}");
    }
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .expect("a list of ids")
        .iter()
        .map(|v| v.as_u64().expect("an id") as u32)
        .collect()
}

#[test]
fn token_ids_match_hf() {
    for family in FAMILIES {
        let tokenizer = TextTokenizer::from_dir(&family_dir(family)).unwrap();
        let reference = Reference::load(family);
        for case in reference.json["tokenizer_cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            assert_eq!(
                tokenizer.encode(text, true).unwrap(),
                ids(&case["with_special"]),
                "{family}: {text:?} with special tokens"
            );
            assert_eq!(
                tokenizer.encode(text, false).unwrap(),
                ids(&case["without_special"]),
                "{family}: {text:?} without special tokens"
            );
        }
        // HF encoded templated prompts without special tokens, plain ones with them.
        let with_special = tokenizer.chat_template().is_none();
        for (index, prompt) in reference.json["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            let rendered = prompt["rendered"].as_str().unwrap();
            assert_eq!(
                tokenizer.encode(rendered, with_special).unwrap(),
                reference.input_ids(index),
                "{family} prompt {index}"
            );
        }
    }
}

fn parse(value: &Value) -> ihs_model::Result<ModelConfig> {
    ModelConfig::from_json(value, Path::new("config.json"))
}

/// falcon7b's config.json with `key` set to `value`.
fn falcon_config_with(key: &str, value: Value) -> Value {
    let text = std::fs::read_to_string(family_dir("falcon7b").join("config.json")).unwrap();
    let mut config: Value = serde_json::from_str(&text).unwrap();
    config[key] = value;
    config
}

#[test]
fn unknown_model_type_lists_supported_types() {
    let config = falcon_config_with("model_type", json!("gpt_neox"));
    let error = parse(&config).unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, ModelError::UnsupportedModelType { .. }),
        "{message}"
    );
    for supported in [
        "llama",
        "mistral",
        "qwen2",
        "falcon",
        "RefinedWebModel",
        "RefinedWeb",
    ] {
        assert!(message.contains(supported), "{supported}: {message}");
    }
}

#[test]
fn falcon_alibi_is_rejected() {
    let error = parse(&falcon_config_with("alibi", json!(true))).unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, ModelError::UnsupportedFeature { .. }),
        "{message}"
    );
    assert!(message.contains("ALiBi"), "{message}");
}

#[test]
fn falcon_unsupported_layouts_are_rejected() {
    let cases = [
        (
            falcon_config_with("num_ln_in_parallel_attn", json!(2)),
            "two layer norms",
        ),
        (
            falcon_config_with("activation", json!("gelu_new")),
            "\"gelu_new\"",
        ),
        (
            falcon_config_with("apply_residual_connection_post_layernorm", json!(true)),
            "apply_residual_connection_post_layernorm",
        ),
    ];
    for (config, expected) in cases {
        let error = parse(&config).unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(error, ModelError::UnsupportedFeature { .. }),
            "{message}"
        );
        assert!(message.contains(expected), "{message}");
    }

    let mut grouped = falcon_config_with("multi_query", json!(false));
    grouped["num_kv_heads"] = json!(2);
    let message = parse(&grouped).unwrap_err().to_string();
    assert!(message.contains("new_decoder_architecture"), "{message}");
}

#[test]
fn falcon_weights_missing_for_layout_are_named() {
    // The separate-norm layout needs ln_attn, but falcon7b's checkpoint has input_layernorm only.
    let mut config = fixture_config("falcon7b");
    config.block_layout = BlockLayout::ParallelSeparateNorms;
    let weights = Weights::open_dir(&family_dir("falcon7b")).unwrap();
    let message = CausalLm::from_weights(config, &weights, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("transformer.h.0.ln_attn.weight"),
        "{message}"
    );
}
