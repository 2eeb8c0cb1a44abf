//! Grafting: replacing the residual stream at one position after a block.

mod common;

use common::{load, max_abs_diff, Reference};
use ihs_model::{Batch, Dtype, ForwardRequest, Graft, GraftTarget, Layers, PaddingSide, Position};
use tch::Tensor;

fn prompts() -> (Reference, Vec<Vec<u32>>) {
    let reference = Reference::load("llama2");
    let sequences = (0..reference.prompt_count())
        .map(|p| reference.input_ids(p))
        .collect();
    (reference, sequences)
}

fn run(
    model: &ihs_model::CausalLm,
    batch: &Batch,
    graft: Option<Graft>,
    position: Position,
) -> ihs_model::ForwardOutput {
    let request = ForwardRequest {
        layers: Layers::All,
        position,
        graft,
        logits: true,
    };
    model.forward(batch, &request).unwrap()
}

#[test]
fn grafting_own_state_changes_nothing() {
    let model = load("llama2", Dtype::F32);
    let (_, sequences) = prompts();
    let batch = Batch::new(&sequences, PaddingSide::Left, 0).unwrap();
    let plain = run(&model, &batch, None, Position::Last);

    for layer in 0..=model.num_layers() {
        let own = plain.state(layer).unwrap().squeeze_dim(1);
        let graft = Graft {
            layer,
            target: GraftTarget::Last,
            states: own,
        };
        let grafted = run(&model, &batch, Some(graft), Position::Last);
        let diff = max_abs_diff(
            plain.logits.as_ref().unwrap(),
            grafted.logits.as_ref().unwrap(),
        );
        assert_eq!(diff, 0.0, "layer {layer}");
    }
}

#[test]
fn grafting_after_last_block_gives_lens_of_source() {
    let model = load("llama2", Dtype::F32);
    let (_, sequences) = prompts();
    let batch = Batch::new(&sequences, PaddingSide::Right, 0).unwrap();
    let source = Tensor::randn(
        [sequences.len() as i64, 64],
        (tch::Kind::Float, tch::Device::Cpu),
    );
    let graft = Graft {
        layer: model.num_layers(),
        target: GraftTarget::Last,
        states: source.shallow_clone(),
    };
    let grafted = run(&model, &batch, Some(graft), Position::Last);
    let expected = model.logit_lens(&source).unwrap();
    assert_eq!(
        max_abs_diff(grafted.logits.as_ref().unwrap(), &expected),
        0.0
    );
}

#[test]
fn graft_changes_only_the_chosen_position() {
    let model = load("llama2", Dtype::F32);
    let (_, sequences) = prompts();
    let batch = Batch::new(&sequences, PaddingSide::Left, 0).unwrap();
    let plain = run(&model, &batch, None, Position::All);

    let layer = 1;
    let target = 4;
    let source = Tensor::randn(
        [sequences.len() as i64, 64],
        (tch::Kind::Float, tch::Device::Cpu),
    );
    let graft = Graft {
        layer,
        target: GraftTarget::Tokens(vec![target; sequences.len()]),
        states: source.shallow_clone(),
    };
    let grafted = run(&model, &batch, Some(graft), Position::All);

    for (row, ids) in sequences.iter().enumerate() {
        let at = batch.index_of(row, target) as i64;
        let start = batch.index_of(row, 0) as i64;
        let n = ids.len() as i64;
        let row = row as i64;
        // At the graft layer the chosen position contains the source and every other one is unchanged.
        let before = plain.states[layer].get(row);
        let after = grafted.states[layer].get(row);
        assert_eq!(max_abs_diff(&after.get(at), &source.get(row)), 0.0);
        assert_eq!(
            max_abs_diff(
                &after.narrow(0, start, at - start),
                &before.narrow(0, start, at - start)
            ),
            0.0
        );
        assert_eq!(
            max_abs_diff(
                &after.narrow(0, at + 1, start + n - at - 1),
                &before.narrow(0, at + 1, start + n - at - 1)
            ),
            0.0
        );
        // Later layers: positions before the graft cannot see it; later ones do.
        for later in layer + 1..plain.states.len() {
            let before = plain.states[later].get(row);
            let after = grafted.states[later].get(row);
            assert_eq!(
                max_abs_diff(
                    &after.narrow(0, start, at - start),
                    &before.narrow(0, start, at - start)
                ),
                0.0
            );
            assert!(max_abs_diff(&after.get(start + n - 1), &before.get(start + n - 1)) > 0.0);
        }
        // Layers before the graft are untouched.
        assert_eq!(
            max_abs_diff(&plain.states[0].get(row), &grafted.states[0].get(row)),
            0.0
        );
    }
}

#[test]
fn graft_with_wrong_batch_size_is_rejected() {
    let model = load("llama2", Dtype::F32);
    let batch = Batch::new(&[vec![1, 5, 9]], PaddingSide::Left, 0).unwrap();
    let graft = Graft {
        layer: 1,
        target: GraftTarget::Last,
        states: Tensor::zeros([2, 64], (tch::Kind::Float, tch::Device::Cpu)),
    };
    let request = ForwardRequest {
        graft: Some(graft),
        ..ForwardRequest::default()
    };
    let message = model.forward(&batch, &request).unwrap_err().to_string();
    assert!(message.contains("expected [1, hidden]"), "{message}");
}

#[test]
fn grafts_from_kept_states_match_full_passes() {
    let model = load("llama2", Dtype::F32);
    let (_, sequences) = prompts();
    let batch = Batch::new(&sequences, PaddingSide::Left, 0).unwrap();
    let rows = sequences.len() as i64;
    let blocks = model.num_layers();
    // Two grafts share layer 1 and use different sources, so each graft pass
    // must start from a fresh copy of the kept state.
    let layers = [blocks, 1, 0, 1];
    let grafts = || {
        layers
            .iter()
            .enumerate()
            .map(|(seed, &layer)| {
                tch::manual_seed(seed as i64);
                Graft {
                    layer,
                    target: GraftTarget::Last,
                    states: Tensor::randn([rows, 64], (tch::Kind::Float, tch::Device::Cpu)),
                }
            })
            .collect::<Vec<_>>()
    };

    let together = model.forward_grafts(&batch, &grafts()).unwrap();
    assert_eq!(together.grafted.len(), layers.len());
    let plain = run(&model, &batch, None, Position::Last);
    assert_eq!(
        max_abs_diff(plain.logits.as_ref().unwrap(), &together.baseline),
        0.0
    );
    for (graft, logits) in grafts().into_iter().zip(&together.grafted) {
        let layer = graft.layer;
        let alone = run(&model, &batch, Some(graft), Position::Last);
        let alone = alone.logits.as_ref().unwrap();
        assert_eq!(
            max_abs_diff(alone, logits),
            0.0,
            "graft after block {layer}"
        );
        assert!(
            max_abs_diff(alone, &together.baseline) > 0.0,
            "the graft after block {layer} changed nothing"
        );
    }
}

#[test]
fn grafts_reject_layer_past_last_block() {
    let model = load("llama2", Dtype::F32);
    let batch = Batch::new(&[vec![1, 5, 9]], PaddingSide::Left, 0).unwrap();
    let graft = Graft {
        layer: model.num_layers() + 1,
        target: GraftTarget::Last,
        states: Tensor::zeros([1, 64], (tch::Kind::Float, tch::Device::Cpu)),
    };
    let message = model
        .forward_grafts(&batch, &[graft])
        .unwrap_err()
        .to_string();
    assert!(message.contains("does not exist"), "{message}");
}
