//! Test helpers shared by `crates/sim/tests/run.rs` and the deployment's loopback
//! test (`crates/deploy/tests/loopback.rs` includes this file by path): a fixture model
//! with a character tokenizer, a tiny arithmetic task and a small run config.
// Each including test uses a subset of the helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use fluxmoe_sim::RunFile;

/// `../shared/fixtures/<arch>` beside the repository, found from whichever package
/// includes this file (a crate's tests or the root package's).
pub fn fixture(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join("shared/fixtures"))
        .find(|dir| dir.is_dir())
        .expect("no shared/fixtures above the package")
        .join(arch)
}

/// A copy of the mixtral fixture with a character-level tokenizer over its 128 ids.
pub fn model_dir(root: &Path) -> PathBuf {
    let dir = root.join("model");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("mixtral").join(f), dir.join(f)).unwrap();
    }
    let vocab: serde_json::Map<String, serde_json::Value> = (0u32..128)
        .map(|i| {
            (
                char::from_u32(i).unwrap().to_string(),
                serde_json::Value::from(i),
            )
        })
        .collect();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "."}, "behavior": "Isolated", "invert": false},
        "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "?"}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    dir
}

pub fn task_file(root: &Path) -> PathBuf {
    let path = root.join("sums.jsonl");
    let lines: Vec<String> = (0..40)
        .map(|i| {
            let (a, b) = (i % 7, i % 5);
            serde_json::json!({"prompt": format!("{a}+{b}="), "response": format!("{}", a + b), "group": format!("g{}", i % 4)}).to_string()
        })
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

pub fn config(root: &Path, out: &str, rounds: u32) -> RunFile {
    RunFile::from_toml(&config_text(root, out, rounds, "unused"), "test.toml").unwrap()
}

/// The TOML of [`config`] with `model.path = model` (for the `fluxmoe` binary).
pub fn config_text(root: &Path, out: &str, rounds: u32, model: &str) -> String {
    format!(
        r#"
seed = 5
output = "{out}"
[model]
path = "{model}"
[task]
name = "jsonl-em:{task}"
max_len = 16
eval_limit = 4
max_new_tokens = 2
[partition]
participants = 3
scheme = "dirichlet"
alpha = 1.0
min_partition_size = 1
[rounds]
rounds = {rounds}
per_round = 2
local_steps = 2
batch_size = 2
eval_every = 2
checkpoint_every = 1
[train]
lr = 1e-2
trainable = "experts"
[fleet]
profiles = ["rtx3060", "cpu"]
"#,
        out = root.join(out).display(),
        task = task_file(root).display(),
    )
}

pub fn final_bytes(root: &Path, out: &str) -> Vec<u8> {
    std::fs::read(root.join(out).join("final/model.safetensors")).unwrap()
}

/// Per tensor of the fixture model, its final weights in run `out` minus its initial
/// ones, flattened.
pub fn weight_moves(root: &Path, out: &str) -> Vec<(String, Vec<f32>)> {
    let device = candle_core::Device::Cpu;
    let orig = fluxmoe_model::checkpoint::load_dir(&fixture("mixtral"), &device).unwrap();
    let ck = fluxmoe_model::checkpoint::load_dir(&root.join(out).join("final"), &device).unwrap();
    orig.params
        .tensors()
        .map(|(n, t)| {
            let d = (ck.params.tensor(n).unwrap() - t).unwrap();
            (
                n.to_string(),
                d.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        })
        .collect()
}

/// The lines of a run's `predictions.jsonl`.
pub fn predictions(root: &Path, out: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(root.join(out).join("predictions.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn records(root: &Path, out: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(root.join(out).join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let r: fluxmoe_fed::RoundRecord = serde_json::from_str(l).unwrap();
            serde_json::to_value(r.without_measurements()).unwrap()
        })
        .collect()
}

/// The fixture run with `method`, on one device kind whose memory holds the fixed part
/// (frozen weights and activations, as the plan of [`model_dir`] reports it) and 0.5 MB
/// more: two tuning experts and two merged slots (the experts are 48 KiB each).
pub fn method_config(root: &Path, out: &str, method: &str, rounds: u32) -> RunFile {
    let mut cfg = config(root, out, rounds);
    cfg.method.name = method.into();
    cfg.method.options.overhead_mib = 0.0;
    cfg.method.options.pca_dim = 4;
    cfg.fleet.profiles = vec!["rtx3060".into()];
    let rtx3060 = fluxmoe_fed::DeviceProfile::preset("rtx3060")
        .unwrap()
        .memory_bytes as f64;
    let fixed = fluxmoe_sim::plan::plan(&cfg, &model_dir(root))
        .unwrap()
        .memory
        .fixed_bytes()
        .unwrap();
    cfg.fleet.memory_fraction = (fixed as f64 + 500_000.0) / rtx3060;
    cfg
}
