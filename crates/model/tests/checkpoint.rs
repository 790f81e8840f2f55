//! Checkpoint folders: round trips (single, sharded, f16/bf16) and bad input.

mod common;

use common::fixture;

use std::path::Path;

use candle_core::{DType, Device};
use fluxmoe_model::checkpoint::{self, INDEX_FILE, SINGLE_FILE};
use fluxmoe_model::MoeModel;

fn f32_bits(t: &candle_core::Tensor) -> Vec<u32> {
    let v = t.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    v.to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

fn assert_bit_identical(a: &Path, b: &Path) {
    let (ta, la) = checkpoint::load_weights(a, &Device::Cpu).unwrap();
    let (tb, lb) = checkpoint::load_weights(b, &Device::Cpu).unwrap();
    assert_eq!(la.dtype_of, lb.dtype_of);
    assert_eq!(la.shard_of, lb.shard_of);
    assert_eq!(ta.len(), tb.len());
    for ((na, xa), (nb, xb)) in ta.iter().zip(tb.iter()) {
        assert_eq!(na, nb);
        let (ba, bb) = (f32_bits(xa), f32_bits(xb));
        assert!(ba == bb, "tensor {na} differs");
    }
}

#[test]
fn load_save_load_is_bit_exact_single_file() {
    let dir = tempfile::tempdir().unwrap();
    let ck = checkpoint::load_dir(&fixture("llama_moe"), &Device::Cpu).unwrap();
    checkpoint::save_dir(dir.path(), &ck.config_json, &ck.params, &ck.layout).unwrap();
    assert_bit_identical(&fixture("llama_moe"), dir.path());
    // The extra buffer of the original code survives the round trip.
    let again = checkpoint::load_dir(dir.path(), &Device::Cpu).unwrap();
    assert!(again
        .params
        .contains("model.layers.0.self_attn.rotary_emb.inv_freq"));
    assert_eq!(again.config, ck.config);
}

#[test]
fn sharded_half_precision_round_trip_keeps_layout_and_dtypes() {
    // Make a sharded bf16/f16 checkpoint from the mixtral fixture.
    let src = checkpoint::load_dir(&fixture("mixtral"), &Device::Cpu).unwrap();
    let mut layout = src.layout.clone();
    layout.shards = vec![
        "model-00001-of-00002.safetensors".into(),
        "model-00002-of-00002.safetensors".into(),
    ];
    layout.sharded = true;
    for (i, name) in src.params.names().enumerate() {
        layout.shard_of.insert(name.to_string(), i % 2);
        layout.dtype_of.insert(
            name.to_string(),
            if i % 3 == 0 { DType::F16 } else { DType::BF16 },
        );
    }
    let a = tempfile::tempdir().unwrap();
    checkpoint::save_dir(a.path(), &src.config_json, &src.params, &layout).unwrap();
    assert!(a.path().join(INDEX_FILE).exists());
    assert!(!a.path().join(SINGLE_FILE).exists());
    let loaded = checkpoint::load_dir(a.path(), &Device::Cpu).unwrap();
    assert_eq!(loaded.layout.dtype_of, layout.dtype_of);
    // Computation happens in f32.
    assert!(loaded
        .params
        .tensors()
        .all(|(_, t)| t.dtype() == DType::F32));
    let b = tempfile::tempdir().unwrap();
    checkpoint::save_dir(
        b.path(),
        &loaded.config_json,
        &loaded.params,
        &loaded.layout,
    )
    .unwrap();
    assert_bit_identical(a.path(), b.path());
    // The half-precision model still runs.
    let model = MoeModel::new(&loaded.config, &loaded.params).unwrap();
    let ids = candle_core::Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
    model.forward(&ids, None, false).unwrap();
}

fn copy_fixture(arch: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", SINGLE_FILE] {
        std::fs::copy(fixture(arch).join(f), dir.path().join(f)).unwrap();
    }
    dir
}

fn load_err(dir: &Path) -> String {
    let ck = match checkpoint::load_dir(dir, &Device::Cpu) {
        Ok(ck) => ck,
        Err(e) => return e.to_string(),
    };
    MoeModel::new(&ck.config, &ck.params)
        .unwrap_err()
        .to_string()
}

#[test]
fn truncated_or_corrupt_safetensors_name_the_file() {
    let dir = copy_fixture("mixtral");
    let path = dir.path().join(SINGLE_FILE);
    let bytes = std::fs::read(&path).unwrap();
    for cut in [0, 4, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = load_err(dir.path());
        assert!(err.contains("model.safetensors"), "cut {cut}: {err}");
    }
    let mut garbage = bytes.clone();
    garbage[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&path, &garbage).unwrap();
    assert!(load_err(dir.path()).contains("not a valid safetensors file"));
}

#[test]
fn missing_or_misshaped_tensors_are_named() {
    let src = checkpoint::load_dir(&fixture("mixtral"), &Device::Cpu).unwrap();
    let key = "model.layers.1.block_sparse_moe.experts.2.w3.weight";
    let mut params = src.params.clone();
    let mut tensors: Vec<(String, candle_core::Tensor)> = params
        .tensors()
        .filter(|(n, _)| *n != key)
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    let missing = fluxmoe_model::ParamStore::from_tensors(tensors.clone()).unwrap();
    let err = MoeModel::new(&src.config, &missing)
        .unwrap_err()
        .to_string();
    assert!(err.contains(key) && err.contains("missing"), "{err}");
    tensors.push((
        key.to_string(),
        candle_core::Tensor::zeros((3, 64), DType::F32, &Device::Cpu).unwrap(),
    ));
    params = fluxmoe_model::ParamStore::from_tensors(tensors).unwrap();
    let err = MoeModel::new(&src.config, &params).unwrap_err().to_string();
    assert!(
        err.contains(key) && err.contains("expected shape [64, 64], got [3, 64]"),
        "{err}"
    );
}

#[test]
fn bad_config_and_missing_files_are_clear_errors() {
    let dir = copy_fixture("mixtral");
    let cfg_path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(
        &cfg_path,
        text.replace("\"num_local_experts\": 4", "\"num_local_experts\": 0"),
    )
    .unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("config.json") && err.contains("num_local_experts"),
        "{err}"
    );
    std::fs::write(&cfg_path, "{not json").unwrap();
    assert!(load_err(dir.path()).contains("not valid JSON"));
    std::fs::write(&cfg_path, text).unwrap();
    std::fs::remove_file(dir.path().join(SINGLE_FILE)).unwrap();
    assert!(load_err(dir.path()).contains("no model.safetensors"));
    let empty = tempfile::tempdir().unwrap();
    assert!(load_err(empty.path()).contains("config.json"));
}

#[test]
fn index_listing_a_missing_tensor_is_an_error() {
    let dir = copy_fixture("mixtral");
    let index = serde_json::json!({"metadata": {}, "weight_map": {"model.extra.weight": "model.safetensors", "model.norm.weight": "model.safetensors"}});
    std::fs::write(dir.path().join(INDEX_FILE), index.to_string()).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("not listed") || err.contains("model.extra.weight"),
        "{err}"
    );
}
