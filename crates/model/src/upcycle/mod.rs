//! Turning a dense Llama model into an MoE.
//!
//! [`split`] (**neuron split**, LLaMA-MoE) partitions the dense FFN's neurons into
//! experts and writes the LLaMA-MoE format. Two recipes share the Mixtral format:
//! - [`sparse`] (**sparse upcycling**): every expert is a copy of the dense FFN and the
//!   router is small and random, so the MoE starts as the dense model.
//! - [`btx`] (**Branch-Train-MiX**): expert `e` is the dense FFN fine-tuned on domain
//!   `e`, and the router starts from the domains' mean FFN inputs, then trains alone.
//!
//! Both keep every non-FFN tensor of the dense model (embeddings, attention, norms,
//! head) as it is, write layer `l`'s expert `e` and router under transformers'
//! `MixtralForCausalLM` key names, and describe the result with a Mixtral
//! `config.json`, so HF tools load it as is. The `fluxmoe_upcycle` entry of that
//! config records the recipe and its settings.

pub mod btx;
mod centroid;
pub mod sparse;
pub mod split;

pub use btx::{btx_upcycle, BtxOutput, BtxReport, BtxSpec, DomainData, DomainReport};
pub use centroid::RouterInit;
pub use sparse::{sparse_upcycle, SparseUpcycle};
pub use split::{split_upcycle, NeuronPartition, SplitRouter, SplitUpcycle};

use candle_core::{Device, Tensor};
use serde_json::{json, Value};

use crate::checkpoint::{Checkpoint, StorageLayout};
use crate::config::{Arch, AttentionKind, Ffn, ModelConfig, RouterKind};
use crate::keys::{dense_mlp_key, expert_key, router_keys, Proj};
use crate::params::ParamStore;
use crate::train::Batch;
use crate::{Error, Result};

/// The experts and routing of an upcycled model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MoeShape {
    pub n_experts: usize,
    pub top_k: usize,
}

/// The FFN width of a dense Llama model; an error for any other model.
pub(crate) fn dense_ffn_width(cfg: &ModelConfig) -> Result<usize> {
    if cfg.arch != Arch::Llama {
        return Err(Error::config(
            "model_type",
            format!(
                "upcycling needs a dense llama model, got `{}`",
                cfg.arch.model_type()
            ),
        ));
    }
    let width = match cfg.layers.first() {
        Some(Ffn::Dense { width }) => *width,
        _ => return Err(Error::config("intermediate_size", "missing")),
    };
    if let Some(l) = (0..cfg.num_layers()).find(|&l| cfg.layers[l] != (Ffn::Dense { width })) {
        return Err(Error::config(
            "intermediate_size",
            format!("upcycling needs every layer dense of width {width}; layer {l} is not"),
        ));
    }
    Ok(width)
}

/// Layer `layer`'s dense MLP matrix `proj` of `dense`.
pub(crate) fn dense_mlp(dense: &Checkpoint, layer: usize, proj: Proj) -> Result<Tensor> {
    let key = dense_mlp_key(layer, proj);
    dense
        .params
        .tensor(&key)
        .cloned()
        .ok_or_else(|| Error::MissingTensor {
            path: "dense model".into(),
            name: key,
        })
}

/// At least 2 experts and `1 <= top_k <= n_experts`.
pub(crate) fn check_shape(shape: MoeShape) -> Result<()> {
    if shape.n_experts < 2 || shape.top_k == 0 || shape.top_k > shape.n_experts {
        return Err(Error::Input(format!(
            "upcycling needs at least 2 experts and 1 <= top-k <= experts, got {} experts, top-{}",
            shape.n_experts, shape.top_k
        )));
    }
    Ok(())
}

/// The Mixtral checkpoint: the dense model's non-FFN tensors, `expert(l, e, proj)` as
/// layer `l`'s expert `e`, and `routers[l]` `[E, hidden]` as layer `l`'s router.
/// `recipe` becomes the config's `fluxmoe_upcycle` entry.
pub(crate) fn assemble(
    dense: &Checkpoint,
    shape: MoeShape,
    recipe: Value,
    mut expert: impl FnMut(usize, usize, Proj) -> Result<Tensor>,
    routers: Vec<Tensor>,
) -> Result<Checkpoint> {
    let cfg = &dense.config;
    let width = dense_ffn_width(cfg)?;
    check_shape(shape)?;
    if routers.len() != cfg.num_layers() {
        return Err(Error::Input(format!(
            "{} routers for {} layers",
            routers.len(),
            cfg.num_layers()
        )));
    }
    let config_json = mixtral_config(&dense.config_json, cfg, width, shape, recipe)?;
    let moe_cfg = ModelConfig::from_json(&config_json)?;
    let mut params = ParamStore::new();
    for (name, t) in dense.params.tensors() {
        if name.contains(".mlp.") {
            continue;
        }
        params.insert(name, t.clone());
    }
    for (l, router) in routers.into_iter().enumerate() {
        for e in 0..shape.n_experts {
            for proj in Proj::ALL {
                params.insert(expert_key(Arch::Mixtral, l, e, proj), expert(l, e, proj)?);
            }
        }
        let key = router_keys(Arch::Mixtral, RouterKind::Linear, l).remove(0);
        params.insert(key, router);
    }
    Ok(Checkpoint {
        config_json,
        config: moe_cfg,
        params,
        layout: StorageLayout::default(),
    })
}

/// The head size of `cfg`'s attention, which must have no biases (`format`, the
/// written format, has none).
pub(crate) fn bias_free_head_dim(cfg: &ModelConfig, format: &str) -> Result<usize> {
    match cfg.attention {
        AttentionKind::Standard {
            head_dim,
            qkv_bias: false,
            o_bias: false,
            ..
        } => Ok(head_dim),
        _ => Err(Error::config(
            "attention_bias",
            format!("{format} has no attention biases; this model has them"),
        )),
    }
}

fn mixtral_config(
    dense_json: &Value,
    cfg: &ModelConfig,
    width: usize,
    shape: MoeShape,
    recipe: Value,
) -> Result<Value> {
    let head_dim = bias_free_head_dim(cfg, "Mixtral")?;
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
        "num_local_experts": shape.n_experts,
        "num_experts_per_tok": shape.top_k,
        "router_aux_loss_coef": 0.001,
        "router_jitter_noise": 0.0,
        "output_router_logits": false,
        "attention_dropout": 0.0,
        "bos_token_id": copy("bos_token_id"),
        "eos_token_id": copy("eos_token_id"),
        "pad_token_id": copy("pad_token_id"),
        "torch_dtype": "float32",
        "fluxmoe_upcycle": recipe,
    }))
}

/// Equal-length windows as a `[B, T]` batch without masks.
pub(crate) fn batch_of(rows: &[&[u32]], device: &Device) -> Result<Batch> {
    let t = rows.first().map_or(0, |r| r.len());
    let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Ok(Batch {
        input_ids: Tensor::from_vec(flat, (rows.len(), t), device)?,
        attention_mask: None,
        loss_mask: None,
    })
}

/// `n` items evenly spaced over `items` (indices `floor(i · m / n)`), all when `n >= m`.
pub(crate) fn evenly_spaced<T: Clone>(items: &[T], n: usize) -> Vec<T> {
    let m = items.len();
    if n >= m {
        return items.to_vec();
    }
    (0..n).map(|i| items[i * m / n].clone()).collect()
}

/// Checks that every domain has windows, all of one length of at least 2, with ids
/// inside the vocabulary; returns that length. `purpose` names the windows in errors.
pub(crate) fn window_length(domains: &[DomainData], vocab: usize, purpose: &str) -> Result<usize> {
    let mut seq = None;
    for d in domains {
        if d.windows.is_empty() {
            return Err(Error::Input(format!(
                "domain `{}` has no {purpose} windows",
                d.name
            )));
        }
        for (i, w) in d.windows.iter().enumerate() {
            let want = *seq.get_or_insert(w.len());
            if w.len() != want {
                return Err(Error::Input(format!(
                    "domain `{}`: window {i} has {} ids, expected {want} (all windows of all domains need one length)",
                    d.name,
                    w.len()
                )));
            }
            if let Some(id) = w.iter().find(|&&id| id as usize >= vocab) {
                return Err(Error::Input(format!(
                    "domain `{}`: window {i} has token id {id}, outside the vocabulary of {vocab}",
                    d.name
                )));
            }
        }
    }
    let seq = seq.unwrap_or(0);
    if seq < 2 {
        return Err(Error::Input(format!(
            "{purpose} windows need at least 2 ids (one target), got {seq}"
        )));
    }
    Ok(seq)
}
