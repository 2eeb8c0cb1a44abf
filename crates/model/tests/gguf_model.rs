//! The embedded default model, SmolLM2-135M-Instruct as a `Q4_1` GGUF file,
//! against HF transformers loading the same file (`scripts/make_embedded_reference.py`).
//!
//! Both sides dequantize the same blocks to identical f32 values and run f32
//! math, so the tolerance is 1e-4 relative to each reference tensor's largest
//! magnitude: 30 blocks of summation-order differences in the matmuls.

mod common;

use std::path::PathBuf;

use common::{max_abs, max_abs_diff};
use ihs_model::{
    open_checkpoint, Batch, CausalLm, Dtype, ForwardRequest, Layers, LoadOptions, PaddingSide,
    Position,
};
use tch::{Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

fn model_path() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run `just setup` to fetch the embedded default model",
        path.display()
    );
    path
}

fn reference() -> Vec<(Vec<u32>, Tensor, Tensor)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf");
    let tensors: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("smollm2-states.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    (0..)
        .map_while(|i| {
            let ids = tensors.get(&format!("p{i}.input_ids"))?;
            let ids: Vec<i64> = Vec::try_from(ids).unwrap();
            Some((
                ids.into_iter().map(|id| id as u32).collect(),
                tensors[&format!("p{i}.hidden")].to_kind(Kind::Float),
                tensors[&format!("p{i}.logits")].to_kind(Kind::Float),
            ))
        })
        .collect()
}

#[test]
fn config_from_metadata() {
    let (config, weights) = open_checkpoint(&model_path()).unwrap();
    assert_eq!(config.num_layers, 30);
    assert_eq!(config.hidden_size, 576);
    assert_eq!(config.num_heads, 9);
    assert_eq!(config.num_kv_heads, 3);
    assert_eq!(config.vocab_size, 49152);
    assert_eq!(config.rope.theta, 100_000.0);
    assert!(config.tie_word_embeddings);
    // 30 blocks x 9 tensors, embeddings and final norm; the head is tied.
    assert_eq!(weights.names().len(), 30 * 9 + 2);
}

#[test]
fn states_and_logits_match_hf() {
    let model = CausalLm::load(&model_path(), &LoadOptions::default()).unwrap();
    let cases = reference();
    assert_eq!(cases.len(), 3);

    let sequences: Vec<Vec<u32>> = cases.iter().map(|(ids, _, _)| ids.clone()).collect();
    let batch = Batch::new(&sequences, PaddingSide::Left, 0).unwrap();
    let request = ForwardRequest {
        layers: Layers::All,
        position: Position::Last,
        graft: None,
        logits: true,
    };
    let output = model.forward(&batch, &request).unwrap();
    assert_eq!(output.states.len(), 31);

    let mut worst: f64 = 0.0;
    for (row, (_, hidden, logits)) in cases.iter().enumerate() {
        for layer in 0..31 {
            let ours = output.states[layer].get(row as i64).get(0);
            let want = hidden.get(layer as i64);
            let diff = max_abs_diff(&ours, &want) / max_abs(&want).max(1.0);
            worst = worst.max(diff);
            assert!(diff <= TOLERANCE, "prompt {row} layer {layer}: {diff:.3e}");
        }
        let ours = output.logits.as_ref().unwrap().get(row as i64);
        let diff = max_abs_diff(&ours, logits) / max_abs(logits).max(1.0);
        assert!(diff <= TOLERANCE, "prompt {row} logits: {diff:.3e}");
        assert_eq!(
            ours.argmax(0, false).int64_value(&[]),
            logits.argmax(0, false).int64_value(&[])
        );
    }
    eprintln!("embedded GGUF f32: max relative difference {worst:.2e}");
}

#[test]
fn bf16_load_is_close_to_f32() {
    let options = LoadOptions {
        dtype: Dtype::Bf16,
        ..LoadOptions::default()
    };
    let model = CausalLm::load(&model_path(), &options).unwrap();
    let (ids, hidden, _) = reference().remove(0);
    let batch = Batch::new(&[ids], PaddingSide::Left, 0).unwrap();
    let output = model.forward(&batch, &ForwardRequest::default()).unwrap();
    // bf16 keeps 8 mantissa bits; over 30 blocks the error compounds to a few percent.
    for layer in [1, 15, 30] {
        let want = hidden.get(layer);
        let diff = max_abs_diff(&output.states[layer as usize].get(0).get(0), &want)
            / max_abs(&want).max(1.0);
        assert!(diff <= 0.1, "layer {layer}: {diff:.3e}");
    }
}
