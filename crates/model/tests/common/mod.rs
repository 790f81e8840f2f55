//! Helpers shared by the model crate's integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use fluxmoe_model::{checkpoint, Checkpoint};

pub const ARCHS: [&str; 8] = [
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
    "llama",
    "deepseek",
    "llama_moe",
    "deepseek_v2",
];

/// `../shared/fixtures/<arch>` (the shared folder beside the repository).
pub fn fixture(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures")
        .join(arch)
}

pub fn load(arch: &str) -> Checkpoint {
    checkpoint::load_dir(&fixture(arch), &Device::Cpu).unwrap()
}

pub fn golden(arch: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(arch).join("golden.safetensors"), &Device::Cpu)
        .expect("golden file")
}

/// The fixture's golden input ids `[2, 12]`.
pub fn golden_ids(arch: &str) -> Tensor {
    golden(arch).remove("input_ids").unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}
