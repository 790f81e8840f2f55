//! `builtin:tiny-moe`: a small randomly initialised Mixtral (2 layers, 8 experts, top-2,
//! hidden 64) with a character-level tokenizer over the 128 ASCII codes. It needs no
//! download, so CI and the `smoke` benchmark suite can exercise every method end to
//! end in minutes. It knows no language: metrics start near zero.

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use fluxmoe_model::{checkpoint, ParamStore, StorageLayout};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const VOCAB: usize = 128;
const HIDDEN: usize = 64;
const FFN: usize = 128;
const LAYERS: usize = 2;
const EXPERTS: usize = 8;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;

/// Write the model into `dir` (config.json, model.safetensors, tokenizer.json).
pub fn build(dir: &Path) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(0);
    let mut params = ParamStore::new();
    let mut normal = |shape: &[usize], std: f32| -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                // Box–Muller on the seeded generator.
                let u1: f32 = rng.gen_range(f32::EPSILON..1.0);
                let u2: f32 = rng.gen();
                std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
            })
            .collect();
        Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
    };
    let ones = |n: usize| Tensor::ones(n, candle_core::DType::F32, &Device::Cpu);
    let head_dim = HIDDEN / HEADS;
    params.insert("model.embed_tokens.weight", normal(&[VOCAB, HIDDEN], 0.02)?);
    params.insert("lm_head.weight", normal(&[VOCAB, HIDDEN], 0.02)?);
    params.insert("model.norm.weight", ones(HIDDEN)?);
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        params.insert(format!("{p}.input_layernorm.weight"), ones(HIDDEN)?);
        params.insert(
            format!("{p}.post_attention_layernorm.weight"),
            ones(HIDDEN)?,
        );
        for (name, out) in [
            ("q_proj", HEADS * head_dim),
            ("k_proj", KV_HEADS * head_dim),
            ("v_proj", KV_HEADS * head_dim),
        ] {
            params.insert(
                format!("{p}.self_attn.{name}.weight"),
                normal(&[out, HIDDEN], 0.02)?,
            );
        }
        params.insert(
            format!("{p}.self_attn.o_proj.weight"),
            normal(&[HIDDEN, HEADS * head_dim], 0.02)?,
        );
        params.insert(
            format!("{p}.block_sparse_moe.gate.weight"),
            normal(&[EXPERTS, HIDDEN], 0.5)?,
        );
        for e in 0..EXPERTS {
            let x = format!("{p}.block_sparse_moe.experts.{e}");
            params.insert(format!("{x}.w1.weight"), normal(&[FFN, HIDDEN], 0.02)?);
            params.insert(format!("{x}.w3.weight"), normal(&[FFN, HIDDEN], 0.02)?);
            params.insert(format!("{x}.w2.weight"), normal(&[HIDDEN, FFN], 0.02)?);
        }
    }
    let config = serde_json::json!({
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "num_local_experts": EXPERTS,
        "num_experts_per_tok": 2,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": false,
        "hidden_act": "silu",
        "bos_token_id": 2,
        "eos_token_id": 3,
        "torch_dtype": "float32"
    });
    let tmp = dir.with_extension("part");
    let _ = std::fs::remove_dir_all(&tmp);
    checkpoint::save_dir(&tmp, &config, &params, &StorageLayout::default())?;
    std::fs::write(tmp.join("tokenizer.json"), tokenizer_json().to_string())?;
    std::fs::rename(&tmp, dir).with_context(|| format!("moving the model to {}", dir.display()))?;
    Ok(())
}

/// One token per ASCII character (ids 0–127); anything else becomes `?`.
fn tokenizer_json() -> serde_json::Value {
    let vocab: serde_json::Map<String, serde_json::Value> = (0u32..VOCAB as u32)
        .filter_map(|i| char::from_u32(i).map(|c| (c.to_string(), serde_json::Value::from(i))))
        .collect();
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "."}, "behavior": "Isolated", "invert": false},
        "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "?"}
    })
}
