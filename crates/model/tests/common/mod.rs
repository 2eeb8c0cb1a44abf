//! Helpers shared by the model crate's integration tests: fixture paths and
//! the HF reference data written by `scripts/make_parity_fixtures.py`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use ihs_model::{CausalLm, Dtype, LoadOptions};
use tch::{Device, Kind, Tensor};

/// Families with HF reference data under tests/fixtures/parity.
pub const FAMILIES: [&str; 5] = ["llama2", "llama3", "llama31", "vicuna", "smollm2"];

pub fn fixture_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/parity")
}

pub fn family_dir(family: &str) -> PathBuf {
    fixture_root().join(family)
}

pub fn load(family: &str, dtype: Dtype) -> CausalLm {
    let options = LoadOptions {
        dtype,
        devices: vec![Device::Cpu],
    };
    CausalLm::load_dir(&family_dir(family), &options)
        .unwrap_or_else(|e| panic!("loading {family}: {e}"))
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

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Float) - b.to_kind(Kind::Float))
        .abs()
        .max()
        .double_value(&[])
}

pub fn max_abs(a: &Tensor) -> f64 {
    a.to_kind(Kind::Float).abs().max().double_value(&[])
}
