//! Weight loading: sharded and single-file checkpoints, dtype conversion, and
//! the errors for missing, mis-shaped and pickled tensors.

mod common;

use std::path::Path;

use common::{family_dir, load, max_abs_diff};
use ihs_model::{Batch, CausalLm, Dtype, ForwardRequest, LoadOptions, PaddingSide, Weights};
use tch::{Device, Kind, Tensor};

fn copy_fixture(family: &str, to: &Path) {
    for entry in std::fs::read_dir(family_dir(family)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ihs-weights-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn sharded_checkpoint_loads_every_tensor() {
    let weights = Weights::open_dir(&family_dir("llama2")).unwrap();
    assert_eq!(
        weights.paths().len(),
        4,
        "the llama2 fixture is saved in four shards"
    );
    // 3 blocks x 9 tensors, embeddings, final norm, LM head.
    assert_eq!(weights.names().len(), 3 * 9 + 3);
}

#[test]
fn bf16_weights_load_exactly_into_f32() {
    let weights = Weights::open_dir(&family_dir("smollm2")).unwrap();
    let as_f32 = weights
        .load("model.norm.weight", &[72], Kind::Float, Device::Cpu)
        .unwrap();
    let as_bf16 = weights
        .load("model.norm.weight", &[72], Kind::BFloat16, Device::Cpu)
        .unwrap();
    assert_eq!(as_f32.kind(), Kind::Float);
    assert_eq!(as_bf16.kind(), Kind::BFloat16);
    assert_eq!(max_abs_diff(&as_f32, &as_bf16), 0.0);
}

#[test]
fn missing_tensor_is_named() {
    let dir = temp_dir("missing");
    copy_fixture("smollm2", &dir);
    let mut tensors = Tensor::read_safetensors(dir.join("model.safetensors")).unwrap();
    tensors.retain(|(name, _)| name != "model.layers.1.mlp.up_proj.weight");
    Tensor::write_safetensors(&tensors, dir.join("model.safetensors")).unwrap();

    let message = CausalLm::load_dir(&dir, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("\"model.layers.1.mlp.up_proj.weight\""),
        "{message}"
    );
    assert!(message.contains("model.safetensors"), "{message}");
}

#[test]
fn misshaped_tensor_names_both_shapes() {
    let dir = temp_dir("shape");
    copy_fixture("smollm2", &dir);
    let mut tensors = Tensor::read_safetensors(dir.join("model.safetensors")).unwrap();
    for (name, tensor) in &mut tensors {
        if name == "model.norm.weight" {
            *tensor = Tensor::ones([71], (Kind::BFloat16, Device::Cpu));
        }
    }
    Tensor::write_safetensors(&tensors, dir.join("model.safetensors")).unwrap();

    let message = CausalLm::load_dir(&dir, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(message.contains("\"model.norm.weight\""), "{message}");
    assert!(
        message.contains("[71]") && message.contains("[72]"),
        "{message}"
    );
}

#[test]
fn pickled_checkpoint_is_rejected() {
    let dir = temp_dir("pickle");
    std::fs::copy(
        family_dir("smollm2").join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    // Never opened: the file name alone decides.
    std::fs::write(dir.join("pytorch_model.bin"), b"not read").unwrap();
    let message = CausalLm::load_dir(&dir, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(message.contains("pytorch_model.bin"), "{message}");
    assert!(message.contains("safetensors"), "{message}");
}

#[test]
fn missing_weights_are_reported() {
    let dir = temp_dir("empty");
    std::fs::copy(
        family_dir("smollm2").join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let message = CausalLm::load_dir(&dir, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(message.contains("model.safetensors"), "{message}");
}

#[test]
fn model_dtype_is_applied() {
    let model = load("llama3", Dtype::Bf16);
    assert_eq!(model.dtype(), Dtype::Bf16);
    let batch = Batch::new(&[vec![1, 2, 3]], PaddingSide::Left, 0).unwrap();
    let output = model.forward(&batch, &ForwardRequest::default()).unwrap();
    // Captured states are always returned as f32.
    assert_eq!(output.states[0].kind(), Kind::Float);
}

#[test]
fn blocks_split_over_devices_give_the_same_states() {
    // Two CPU entries exercise the split and the moves between devices.
    let options = LoadOptions {
        dtype: Dtype::F32,
        devices: vec![Device::Cpu, Device::Cpu],
    };
    let split = CausalLm::load_dir(&family_dir("llama2"), &options).unwrap();
    let single = load("llama2", Dtype::F32);
    let batch = Batch::new(&[vec![1, 20, 30, 40]], PaddingSide::Left, 0).unwrap();
    let a = split.forward(&batch, &ForwardRequest::default()).unwrap();
    let b = single.forward(&batch, &ForwardRequest::default()).unwrap();
    for (x, y) in a.states.iter().zip(&b.states) {
        assert_eq!(max_abs_diff(x, y), 0.0);
    }
}
