//! Helpers shared by the model crate's integration tests: fixture paths, the
//! HF reference data written by `scripts/make_parity_fixtures.py`, and the
//! device and tolerances the parity tests use.
//!
//! The parity tests run on the CPU unless `IHS_TEST_DEVICE` names another
//! device (`cuda` or `cuda:N`). The references were recorded on a CPU, so a
//! CUDA run gets wider tolerances: its matmul and attention kernels sum in
//! other orders than the CPU kernels HF ran. libtorch 2.13 computes f32
//! matmuls on CUDA without TF32 unless `TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1`
//! is set (the default of `float32_matmul_precision` in `ATen/Context.h`),
//! so [`test_device`] rejects that variable instead of widening the f32
//! tolerance for it.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use ihs_model::{parse_device, CausalLm, Dtype, LoadOptions};
use tch::{Device, Kind, Tensor};

/// The variable that selects the device of the parity tests.
pub const DEVICE_VARIABLE: &str = "IHS_TEST_DEVICE";

/// Returns the device the parity tests load models on: `IHS_TEST_DEVICE`
/// (`cpu`, `cuda` or `cuda:N`), the CPU when it is unset.
///
/// # Panics
/// When the variable is not a device name, or names a CUDA device while
/// `TORCH_ALLOW_TF32_CUBLAS_OVERRIDE` turns on TF32 matmuls.
pub fn test_device() -> Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    *DEVICE.get_or_init(|| {
        let name = match std::env::var(DEVICE_VARIABLE) {
            Ok(name) => name,
            Err(std::env::VarError::NotPresent) => return Device::Cpu,
            Err(error) => panic!("{DEVICE_VARIABLE}: {error}"),
        };
        let device = parse_device(&name).unwrap_or_else(|e| panic!("{DEVICE_VARIABLE}: {e}"));
        let tf32 = std::env::var_os("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE").is_some();
        assert!(
            device == Device::Cpu || !tf32,
            "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE is set, which makes f32 matmuls on CUDA use TF32; \
             unset it for the f32 parity tolerances to hold"
        );
        device
    })
}

/// Returns the parity tolerance of `dtype` on [`test_device`], relative to
/// the largest magnitude of the reference tensor.
///
/// - CPU, where the reference was recorded with the same libtorch kernels:
///   f32 1e-5 (summation order inside fused attention), bf16 2e-2 (about
///   five bf16 rounding steps of 2^-8), f16 4e-3 (about four f16 rounding
///   steps of 2^-11).
/// - CUDA: f32 1e-4, bf16 4e-2, f16 8e-3, twice to ten times the CPU values
///   for kernels that sum in another order than the CPU reference.
pub fn tolerance(dtype: Dtype) -> f64 {
    // NOTE: the CUDA values are estimates that no GPU run has confirmed yet;
    // `scripts/gpu-check.sh` prints the measured maxima next to them.
    match (test_device(), dtype) {
        (Device::Cpu, Dtype::F32) => 1e-5,
        (Device::Cpu, Dtype::Bf16) => 2e-2,
        (Device::Cpu, Dtype::F16) => 4e-3,
        (_, Dtype::F32) => 1e-4,
        (_, Dtype::Bf16) => 4e-2,
        (_, Dtype::F16) => 8e-3,
    }
}

/// Returns the tolerance for one f32 prompt run alone against the same
/// prompt inside a padded batch, relative to the larger state: 1e-5 on the
/// CPU, 1e-4 on CUDA, where the kernels may change with the batch shape.
pub fn batch_tolerance() -> f64 {
    match test_device() {
        Device::Cpu => 1e-5,
        _ => 1e-4,
    }
}

/// Returns the load options of `dtype` on [`test_device`].
pub fn options(dtype: Dtype) -> LoadOptions {
    LoadOptions {
        dtype,
        devices: vec![test_device()],
    }
}

/// Families with HF reference data under tests/fixtures/parity.
pub const FAMILIES: [&str; 5] = ["llama2", "llama3", "llama31", "vicuna", "smollm2"];

pub fn fixture_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/parity")
}

pub fn family_dir(family: &str) -> PathBuf {
    fixture_root().join(family)
}

/// Loads a fixture in `dtype` on [`test_device`].
pub fn load(family: &str, dtype: Dtype) -> CausalLm {
    CausalLm::load_dir(&family_dir(family), &options(dtype))
        .unwrap_or_else(|e| panic!("loading {family} on {:?}: {e}", test_device()))
}

/// The reference tensors and JSON of one family.
pub struct Reference {
    pub tensors: HashMap<String, Tensor>,
    pub json: serde_json::Value,
}

impl Reference {
    pub fn load(family: &str) -> Self {
        let dir = family_dir(family);
        let tensors = Tensor::read_safetensors(dir.join("reference.safetensors"))
            .expect("reading reference.safetensors")
            .into_iter()
            .collect();
        let text =
            std::fs::read_to_string(dir.join("reference.json")).expect("reading reference.json");
        Self {
            tensors,
            json: serde_json::from_str(&text).expect("reference.json is JSON"),
        }
    }

    pub fn tensor(&self, key: &str) -> Tensor {
        self.tensors
            .get(key)
            .unwrap_or_else(|| panic!("reference tensor {key} missing"))
            .to_kind(Kind::Float)
    }

    pub fn prompt_count(&self) -> usize {
        self.json["prompts"].as_array().map_or(0, Vec::len)
    }

    pub fn input_ids(&self, prompt: usize) -> Vec<u32> {
        let ids = Vec::<i64>::try_from(
            &self
                .tensor(&format!("p{prompt}.input_ids"))
                .to_kind(Kind::Int64),
        )
        .expect("input ids");
        ids.into_iter().map(|id| id as u32).collect()
    }
}

/// Returns the largest absolute difference, in f32 on the CPU, so that
/// states on a CUDA device compare with references read from disk.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    let a = a.to_device(Device::Cpu).to_kind(Kind::Float);
    let b = b.to_device(Device::Cpu).to_kind(Kind::Float);
    (a - b).abs().max().double_value(&[])
}

pub fn max_abs(a: &Tensor) -> f64 {
    a.to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .abs()
        .max()
        .double_value(&[])
}
