//! Parity with HF transformers: every layer's residual stream and the last
//! position's logits, per family and dtype, against the reference data that
//! `scripts/make_parity_fixtures.py` recorded with transformers 5.25.0 and
//! torch 2.13.0 on CPU.
//!
//! Tolerances are relative to the largest magnitude of the reference tensor
//! they compare, because the random fixtures' states grow with depth:
//! - f32: 1e-5. Both sides run the same libtorch kernels in the same order,
//!   so what remains is summation order inside fused attention.
//! - bf16: 2e-2, about five bf16 rounding steps (8-bit mantissa, 2^-8 = 0.0039).
//! - f16: 4e-3, about four f16 rounding steps (11-bit mantissa, 2^-11 = 0.00049).
//!
//! With `IHS_TEST_DEVICE=cuda` the models run on a GPU and the tolerances
//! are wider; `common::tolerance` lists the values for both devices.

mod common;

use common::{batch_tolerance, load, max_abs, max_abs_diff, tolerance, Reference, FAMILIES};
use ihs_model::{Batch, Dtype, ForwardRequest, Layers, PaddingSide, Position};
use tch::Tensor;

/// Returns the worst relative difference of states and logits over all prompts.
fn compare_family(family: &str, dtype: Dtype) -> (f64, f64) {
    let model = load(family, dtype);
    let reference = Reference::load(family);
    let mut worst_state: f64 = 0.0;
    let mut worst_logits: f64 = 0.0;

    for prompt in 0..reference.prompt_count() {
        let ids = reference.input_ids(prompt);
        let batch = Batch::new(&[ids], PaddingSide::Left, 0).unwrap();
        let request = ForwardRequest {
            layers: Layers::All,
            position: Position::All,
            graft: None,
            logits: true,
        };
        let output = model.forward(&batch, &request).unwrap();

        let expected = reference.tensor(&format!("{dtype}.p{prompt}.hidden"));
        assert_eq!(
            output.states.len() as i64,
            expected.size()[0],
            "{family}: one state per index"
        );
        for (layer, state) in output.states.iter().enumerate() {
            let want = expected.get(layer as i64);
            let diff = max_abs_diff(&state.squeeze_dim(0), &want) / max_abs(&want).max(1.0);
            worst_state = worst_state.max(diff);
            assert!(
                diff <= tolerance(dtype),
                "{family} {dtype} prompt {prompt} layer {layer}: relative difference {diff:.3e} exceeds {:.0e}",
                tolerance(dtype)
            );
        }

        let want = reference.tensor(&format!("{dtype}.p{prompt}.logits"));
        let logits = output.logits.unwrap().squeeze_dim(0);
        let diff = max_abs_diff(&logits, &want) / max_abs(&want).max(1.0);
        worst_logits = worst_logits.max(diff);
        assert!(
            diff <= tolerance(dtype),
            "{family} {dtype} prompt {prompt} logits: relative difference {diff:.3e} exceeds {:.0e}",
            tolerance(dtype)
        );
    }
    (worst_state, worst_logits)
}

fn check_all_families(dtype: Dtype) {
    for family in FAMILIES {
        let (state, logits) = compare_family(family, dtype);
        eprintln!(
            "{family:8} {dtype:4} max relative difference: states {state:.2e}, logits {logits:.2e}"
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
    let request = || ForwardRequest {
        layers: Layers::All,
        position: Position::All,
        graft: None,
        logits: true,
    };

    let batch = Batch::new(&sequences, side, 0).unwrap();
    let batched = model.forward(&batch, &request()).unwrap();
    for (row, ids) in sequences.iter().enumerate() {
        let single = model
            .forward(
                &Batch::new(std::slice::from_ref(ids), side, 0).unwrap(),
                &request(),
            )
            .unwrap();
        let start = batch.index_of(row, 0) as i64;
        for layer in 0..single.states.len() {
            let alone = single.states[layer].get(0);
            let within = batched.states[layer]
                .get(row as i64)
                .narrow(0, start, ids.len() as i64);
            let diff = max_abs_diff(&alone, &within) / max_abs(&alone).max(1.0);
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

#[test]
fn position_modes_agree_with_all_positions() {
    let model = load("llama3", Dtype::F32);
    let reference = Reference::load("llama3");
    let sequences: Vec<Vec<u32>> = (0..reference.prompt_count())
        .map(|p| reference.input_ids(p))
        .collect();
    let batch = Batch::new(&sequences, PaddingSide::Left, 0).unwrap();
    let run = |position| {
        let request = ForwardRequest {
            layers: Layers::Indices(vec![0, 2, 3]),
            position,
            graft: None,
            logits: false,
        };
        model.forward(&batch, &request).unwrap()
    };

    let all = run(Position::All);
    let last = run(Position::Last);
    let last_three = run(Position::LastN(3));
    let mean = run(Position::Mean);
    assert_eq!(last.layers, vec![0, 2, 3]);
    for (slot, layer) in all.layers.iter().enumerate() {
        for (row, ids) in sequences.iter().enumerate() {
            let real = all.states[slot].get(row as i64).narrow(
                0,
                batch.index_of(row, 0) as i64,
                ids.len() as i64,
            );
            let n = ids.len() as i64;
            let want_last = real.get(n - 1);
            let want_three = real.narrow(0, n - 3, 3);
            let want_mean = real.mean_dim(0, false, tch::Kind::Float);
            let row = row as i64;
            assert!(
                max_abs_diff(&last.states[slot].get(row).get(0), &want_last) == 0.0,
                "last, layer {layer}"
            );
            assert!(
                max_abs_diff(&last_three.states[slot].get(row), &want_three) == 0.0,
                "last 3, layer {layer}"
            );
            assert!(
                max_abs_diff(&mean.states[slot].get(row).get(0), &want_mean) < 1e-5,
                "mean, layer {layer}"
            );
        }
    }
}

#[test]
fn last_n_longer_than_prompt_is_rejected() {
    let model = load("llama2", Dtype::F32);
    let batch = Batch::new(&[vec![1, 2, 3]], PaddingSide::Left, 0).unwrap();
    let request = ForwardRequest {
        position: Position::LastN(5),
        ..ForwardRequest::default()
    };
    let message = model.forward(&batch, &request).unwrap_err().to_string();
    assert!(message.contains("has 3 tokens"), "{message}");
}

#[test]
fn logit_lens_of_last_state_equals_logits() {
    let model = load("smollm2", Dtype::F32);
    let reference = Reference::load("smollm2");
    let batch = Batch::new(&[reference.input_ids(0)], PaddingSide::Left, 0).unwrap();
    let request = ForwardRequest {
        layers: Layers::All,
        position: Position::Last,
        graft: None,
        logits: true,
    };
    let output = model.forward(&batch, &request).unwrap();
    let last = output.state(model.num_layers()).unwrap().squeeze_dim(1);
    let lens = model.logit_lens(&last).unwrap();
    assert_eq!(max_abs_diff(&lens, output.logits.as_ref().unwrap()), 0.0);

    // Every layer at once: [layers, batch, hidden] in, [layers, batch, vocab] out.
    let stacked = Tensor::stack(&output.states, 0).squeeze_dim(2);
    let all = model.logit_lens(&stacked).unwrap();
    assert_eq!(
        all.size(),
        vec![
            output.states.len() as i64,
            1,
            model.config().vocab_size as i64
        ]
    );
}
