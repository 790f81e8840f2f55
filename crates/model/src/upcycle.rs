//! Turning a dense Llama model into a Mixtral-format MoE.
//!
//! **Sparse upcycling** (Komatsuzaki et al., 2023): every layer's FFN is copied into
//! `E` identical experts and a router `[E, hidden]` is added, initialised small and
//! random (seeded). Mixtral's routing renormalises the top-k weights to sum to one, so
//! `Σ_j w_j · FFN(x) = FFN(x)`: at initialisation the MoE computes the dense model's
//! function (up to float rounding), whatever the router says. Fine-tuning then lets
//! the copies diverge.
//!
//! The result uses transformers' `MixtralForCausalLM` config and key names, so HF tools
//! load it as is.

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::checkpoint::{Checkpoint, StorageLayout};
use crate::config::{Arch, AttentionKind, Ffn, ModelConfig};
use crate::keys::{dense_mlp_key, expert_key, router_keys, Proj};
use crate::params::ParamStore;
use crate::{Error, Result};

/// How to initialise the router of an upcycled model.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseUpcycle {
    pub n_experts: usize,
    pub top_k: usize,
    /// Standard deviation of the N(0, σ²) router weights.
    pub router_std: f64,
    pub seed: u64,
}

/// Upcycle the dense Llama checkpoint `dense` into a Mixtral-format MoE.
pub fn sparse_upcycle(dense: &Checkpoint, spec: &SparseUpcycle) -> Result<Checkpoint> {
    let cfg = &dense.config;
    if cfg.arch != Arch::Llama {
        return Err(Error::config(
            "model_type",
            format!(
                "upcycling needs a dense llama model, got `{}`",
                cfg.arch.model_type()
            ),
        ));
    }
    if spec.n_experts < 2 || spec.top_k == 0 || spec.top_k > spec.n_experts {
        return Err(Error::Input(format!(
            "upcycling needs at least 2 experts and 1 <= top-k <= experts, got {} experts, top-{}",
            spec.n_experts, spec.top_k
        )));
    }
    let width = match cfg.layers.first() {
        Some(Ffn::Dense { width }) => *width,
        _ => return Err(Error::config("intermediate_size", "missing")),
    };
    let config_json = mixtral_config(&dense.config_json, cfg, width, spec)?;
    let moe_cfg = ModelConfig::from_json(&config_json)?;
    let h = cfg.hidden_size;
    let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
    let mut params = ParamStore::new();
    for (name, t) in dense.params.tensors() {
        if name.contains(".mlp.") {
            continue;
        }
        params.insert(name, t.clone());
    }
    for l in 0..cfg.num_layers() {
        for proj in Proj::ALL {
            let w = dense
                .params
                .tensor(&dense_mlp_key(l, proj))
                .ok_or_else(|| Error::MissingTensor {
                    path: "dense model".into(),
                    name: dense_mlp_key(l, proj),
                })?;
            for e in 0..spec.n_experts {
                params.insert(expert_key(Arch::Mixtral, l, e, proj), w.clone());
            }
        }
        let router: Vec<f32> = (0..spec.n_experts * h)
            .map(|_| (normal(&mut rng) * spec.router_std) as f32)
            .collect();
        let device = params
            .tensor("model.embed_tokens.weight")
            .map(|t| t.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        let router = candle_core::Tensor::from_vec(router, (spec.n_experts, h), &device)?;
        let key = router_keys(Arch::Mixtral, crate::config::RouterKind::Linear, l).remove(0);
        params.insert(key, router);
    }
    Ok(Checkpoint {
        config_json,
        config: moe_cfg,
        params,
        layout: StorageLayout::default(),
    })
}

fn mixtral_config(
    dense_json: &Value,
    cfg: &ModelConfig,
    width: usize,
    spec: &SparseUpcycle,
) -> Result<Value> {
    let head_dim = match cfg.attention {
        AttentionKind::Standard {
            head_dim,
            qkv_bias: false,
            o_bias: false,
            ..
        } => head_dim,
        _ => {
            return Err(Error::config(
                "attention_bias",
                "Mixtral has no attention biases; this model has them",
            ))
        }
    };
    let copy = |k: &str| dense_json.get(k).cloned().unwrap_or(Value::Null);
    Ok(json!({
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": width,
        "num_hidden_layers": cfg.num_layers(),
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": null,
        "sliding_window": null,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "num_local_experts": spec.n_experts,
        "num_experts_per_tok": spec.top_k,
        "router_aux_loss_coef": 0.001,
        "router_jitter_noise": 0.0,
        "output_router_logits": false,
        "attention_dropout": 0.0,
        "bos_token_id": copy("bos_token_id"),
        "eos_token_id": copy("eos_token_id"),
        "pad_token_id": copy("pad_token_id"),
        "torch_dtype": "float32",
        "fluxmoe_upcycle": {
            "method": "sparse",
            "router_std": spec.router_std,
            "seed": spec.seed,
        },
    }))
}

/// A standard normal draw (Box–Muller), from a seeded generator.
fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}
