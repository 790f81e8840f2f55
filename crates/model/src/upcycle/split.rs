//! **Neuron split** (LLaMA-MoE v1, Zhu et al. 2024): every layer's FFN neurons (rows
//! of `gate`/`up`, columns of `down`) are partitioned into `E` experts of about
//! `width / E` neurons each, so the experts together hold exactly the dense FFN and no
//! parameter is added but the routers. Written in the original LLaMA-MoE format
//! (`model_type: "llama_moe"`, `LlamaMoEForCausalLM`), with a linear router.
//!
//! - Partition: [`NeuronPartition::Random`] (a seeded permutation cut into equal
//!   parts) or [`NeuronPartition::Clustered`] (balanced k-means of the neurons' `up`
//!   rows by cosine similarity: each neuron joins the nearest centroid that still has
//!   room, nearest pairs first).
//! - Routing: top-k of the router logits, softmax over those k, times
//!   `score_scale_factor`, by default `E / K`: under a uniform router each chosen
//!   expert then weighs 1, so its neurons contribute as in the dense FFN and the
//!   others are dropped. Measured on SmolLM2 (held-out wordnet + math, 2,040 tokens):
//!   E = 8, K = 2 gives loss 17.5 / 14.9 / 13.0 / 14.8 at scales 1 / 2 / 4 / 8, and
//!   E = 4, K = 2 gives 12.9 / 9.1 / 10.1 at 1 / 2 / 4 (dense: 2.6), so `E / K` is
//!   best of those. A scale of `E` makes the expected output over a random choice of
//!   `K` experts the dense output, and with `K = E` and a zero router exactly the
//!   dense output (a test).
//!
//! - Router: [`SplitRouter::Random`] (small N(0, σ²) weights) or
//!   [`SplitRouter::Centroid`] (each expert's row points at the mean FFN input of the
//!   calibration tokens for which its neurons contribute most to the dense output).
//!
//! LLaMA-MoE's own code fixes the RoPE base at 10,000; the config keeps the dense
//! model's `rope_theta` (SmolLM2: 100,000), which fluxmoe honours.
//!
//! A model split this small needs long continual pretraining to recover (the issue's
//! PyTorch measurement; `docs/upcycling.md`): this recipe is here for completeness.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::{json, Value};

use candle_core::Tensor;

use super::centroid::{CentroidRouters, RouterInit};
use super::{
    batch_of, bias_free_head_dim, check_shape, dense_ffn_width, dense_mlp, window_length,
    DomainData, MoeShape,
};
use crate::checkpoint::{Checkpoint, StorageLayout};
use crate::config::{Arch, ModelConfig, RouterKind};
use crate::keys::{expert_key, router_keys, Proj};
use crate::layers::{Linear, SwiGlu};
use crate::model::MoeModel;
use crate::params::ParamStore;
use crate::{Error, Result};

/// How the neurons of a layer are assigned to experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeuronPartition {
    Random,
    Clustered,
}

impl NeuronPartition {
    pub fn name(self) -> &'static str {
        match self {
            NeuronPartition::Random => "random",
            NeuronPartition::Clustered => "clustered",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SplitUpcycle {
    pub n_experts: usize,
    pub top_k: usize,
    pub partition: NeuronPartition,
    /// `score_scale_factor`; `None` means `n_experts / top_k`.
    pub score_scale: Option<f64>,
    pub router: SplitRouter,
    pub seed: u64,
}

/// How the split model's linear routers start.
#[derive(Debug, Clone, PartialEq)]
pub enum SplitRouter {
    /// N(0, σ²) weights (σ = 0: all zero, a uniform router).
    Random { std: f64 },
    /// [Centroid routers](super::centroid): in each layer a calibration token belongs
    /// to the expert whose neurons' output has the largest norm for it under the dense
    /// model (the expert an oracle would pick first); router row `e` is the centred
    /// mean FFN input of expert `e`'s tokens, scaled to logits of RMS `logit_rms`.
    Centroid {
        /// Calibration text, one entry per domain (tokens pooled over all of them).
        calibration: Vec<DomainData>,
        /// Windows per forward pass.
        batch_size: usize,
        logit_rms: f64,
    },
}

impl SplitRouter {
    pub fn name(&self) -> &'static str {
        match self {
            SplitRouter::Random { .. } => "random",
            SplitRouter::Centroid { .. } => "centroid",
        }
    }
}

/// Rounds of balanced k-means for [`NeuronPartition::Clustered`].
const KMEANS_ROUNDS: usize = 10;

/// Split the dense Llama checkpoint `dense` into a LLaMA-MoE checkpoint.
pub fn split_upcycle(dense: &Checkpoint, spec: &SplitUpcycle) -> Result<Checkpoint> {
    let cfg = &dense.config;
    let width = dense_ffn_width(cfg)?;
    let shape = MoeShape {
        n_experts: spec.n_experts,
        top_k: spec.top_k,
    };
    check_shape(shape)?;
    if spec.n_experts > width {
        return Err(Error::Input(format!(
            "cannot split an FFN of {width} neurons into {} experts",
            spec.n_experts
        )));
    }
    let scale = spec
        .score_scale
        .unwrap_or(spec.n_experts as f64 / spec.top_k as f64);
    if !(scale.is_finite() && scale > 0.0) {
        return Err(Error::config(
            "score_scale_factor",
            format!("must be a positive number, got {scale}"),
        ));
    }
    match &spec.router {
        SplitRouter::Random { std } => {
            if !(std.is_finite() && *std >= 0.0) {
                return Err(Error::Input(format!(
                    "router standard deviation must be >= 0, got {std}"
                )));
            }
        }
        SplitRouter::Centroid {
            calibration,
            batch_size,
            logit_rms,
        } => {
            if calibration.is_empty() {
                return Err(Error::Input(
                    "a centroid router needs calibration text, got none".into(),
                ));
            }
            window_length(calibration, cfg.vocab_size, "calibration")?;
            if *batch_size == 0 {
                return Err(Error::Input(
                    "calibration batch size must be at least 1, got 0".into(),
                ));
            }
            if !(logit_rms.is_finite() && *logit_rms > 0.0) {
                return Err(Error::Input(format!(
                    "router logit rms must be finite and > 0, got {logit_rms}"
                )));
            }
        }
    }
    let h = cfg.hidden_size;
    let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
    let mut params = ParamStore::new();
    for (name, t) in dense.params.tensors() {
        if !name.contains(".mlp.") {
            params.insert(name, t.clone());
        }
    }
    let mut sizes = Vec::with_capacity(cfg.num_layers());
    // Per layer, every expert's FFN, for a centroid router's labels.
    let mut experts = Vec::new();
    for l in 0..cfg.num_layers() {
        let mlp = |proj| dense_mlp(dense, l, proj);
        let (gate, up, down) = (mlp(Proj::Gate)?, mlp(Proj::Up)?, mlp(Proj::Down)?);
        let groups = match spec.partition {
            NeuronPartition::Random => random_partition(width, spec.n_experts, &mut rng),
            NeuronPartition::Clustered => {
                let rows: Vec<Vec<f32>> = up.to_dtype(candle_core::DType::F32)?.to_vec2()?;
                clustered_partition(&rows, spec.n_experts, &mut rng)
            }
        };
        sizes.push(groups.iter().map(Vec::len).collect::<Vec<_>>());
        let mut layer_experts = Vec::with_capacity(groups.len());
        for (e, neurons) in groups.iter().enumerate() {
            let idx = Tensor::new(neurons.as_slice(), gate.device())?;
            let (g, u, d) = (
                gate.index_select(&idx, 0)?,
                up.index_select(&idx, 0)?,
                down.index_select(&idx, 1)?.contiguous()?,
            );
            params.insert(expert_key(Arch::LlamaMoe, l, e, Proj::Gate), g.clone());
            params.insert(expert_key(Arch::LlamaMoe, l, e, Proj::Up), u.clone());
            params.insert(expert_key(Arch::LlamaMoe, l, e, Proj::Down), d.clone());
            layer_experts.push(SwiGlu {
                gate: Linear::new(g, None),
                up: Linear::new(u, None),
                down: Linear::new(d, None),
            });
        }
        if let SplitRouter::Random { std } = spec.router {
            let w: Vec<f32> = (0..spec.n_experts * h)
                .map(|_| (super::sparse::normal(&mut rng) * std) as f32)
                .collect();
            params.insert(
                router_keys(Arch::LlamaMoe, RouterKind::Linear, l).remove(0),
                Tensor::from_vec(w, (spec.n_experts, h), gate.device())?,
            );
        } else {
            experts.push(layer_experts);
        }
    }
    let recipe = match &spec.router {
        SplitRouter::Random { std } => json!({
            "method": "split",
            "partition": spec.partition.name(),
            "router": "random",
            "router_std": std,
            "seed": spec.seed,
        }),
        SplitRouter::Centroid {
            calibration,
            batch_size,
            logit_rms,
        } => {
            let routers = centroid_routers(dense, &experts, calibration, *batch_size, *logit_rms)?;
            for (l, router) in routers.into_iter().enumerate() {
                params.insert(
                    router_keys(Arch::LlamaMoe, RouterKind::Linear, l).remove(0),
                    router,
                );
            }
            json!({
                "method": "split",
                "partition": spec.partition.name(),
                "router": "centroid",
                "calibration": calibration
                    .iter()
                    .map(|d| json!({"name": d.name, "windows": d.windows.len()}))
                    .collect::<Vec<_>>(),
                "calibration_window": calibration[0].windows[0].len(),
                "router_logit_rms": logit_rms,
                "seed": spec.seed,
            })
        }
    };
    let config_json =
        llama_moe_config(&dense.config_json, cfg, width, shape, &sizes, scale, recipe)?;
    let config = ModelConfig::from_json(&config_json)?;
    Ok(Checkpoint {
        config_json,
        config,
        params,
        layout: StorageLayout::default(),
    })
}

/// Centroid routers for the split experts `experts[l][e]`: each calibration token of
/// layer `l` is labelled with the expert whose output has the largest norm for it
/// under the dense model.
fn centroid_routers(
    dense: &Checkpoint,
    experts: &[Vec<SwiGlu>],
    calibration: &[DomainData],
    batch_size: usize,
    logit_rms: f64,
) -> Result<Vec<Tensor>> {
    let Some(first) = experts.first().and_then(|layer| layer.first()) else {
        return Err(Error::Input(
            "a centroid router needs a layer with experts".into(),
        ));
    };
    let device = first.gate.weight().device().clone();
    let dense_model = MoeModel::new(&dense.config, &dense.params)?;
    let mut acc = CentroidRouters::new(experts.len(), experts[0].len());
    let windows: Vec<&[u32]> = calibration
        .iter()
        .flat_map(|d| d.windows.iter().map(Vec::as_slice))
        .collect();
    for chunk in windows.chunks(batch_size) {
        let ids = batch_of(chunk, &device)?.input_ids;
        for (l, x) in dense_model.ffn_inputs(&ids, None)?.iter().enumerate() {
            let norms = experts[l]
                .iter()
                .map(|expert| expert.forward(x)?.sqr()?.sum(1))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let labels: Vec<u32> = Tensor::stack(&norms, 1)?.argmax(1)?.to_vec1()?;
            acc.add_labelled(l, x, &labels)?;
        }
    }
    acc.routers(RouterInit::ClassMeans, logit_rms)
}

/// A seeded permutation of `0..width` cut into `n` parts whose sizes differ by at most
/// one, each sorted (the dense model's neuron order within an expert).
fn random_partition(width: usize, n: usize, rng: &mut impl rand::Rng) -> Vec<Vec<u32>> {
    let mut order: Vec<u32> = (0..width as u32).collect();
    order.shuffle(rng);
    let mut groups: Vec<Vec<u32>> = part_sizes(width, n)
        .into_iter()
        .scan(0, |start, len| {
            let g = order[*start..*start + len].to_vec();
            *start += len;
            Some(g)
        })
        .collect();
    for g in &mut groups {
        g.sort_unstable();
    }
    groups
}

/// `n` sizes summing to `width`, differing by at most one (larger first).
fn part_sizes(width: usize, n: usize) -> Vec<usize> {
    (0..n)
        .map(|i| width / n + usize::from(i < width % n))
        .collect()
}

/// Balanced k-means of `rows` (one per neuron) by cosine similarity: centroids start at
/// `n` distinct seeded rows; each round assigns (neuron, centroid) pairs from the most
/// similar down, a neuron to the first centroid with room (capacity: [`part_sizes`]),
/// then moves each centroid to its members' mean direction.
fn clustered_partition(rows: &[Vec<f32>], n: usize, rng: &mut impl rand::Rng) -> Vec<Vec<u32>> {
    let unit: Vec<Vec<f32>> = rows.iter().map(|r| normalised(r)).collect();
    let mut first: Vec<usize> = (0..rows.len()).collect();
    first.shuffle(rng);
    let mut centroids: Vec<Vec<f32>> = first[..n].iter().map(|&i| unit[i].clone()).collect();
    let capacity = part_sizes(rows.len(), n);
    let mut groups = Vec::new();
    for _ in 0..KMEANS_ROUNDS {
        let mut pairs: Vec<(f32, u32, u32)> = Vec::with_capacity(rows.len() * n);
        for (i, r) in unit.iter().enumerate() {
            for (c, centre) in centroids.iter().enumerate() {
                let sim: f32 = r.iter().zip(centre).map(|(a, b)| a * b).sum();
                pairs.push((sim, i as u32, c as u32));
            }
        }
        // Most similar first; ties by neuron, then centroid, so the order is total.
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let mut assigned = vec![false; rows.len()];
        groups = vec![Vec::new(); n];
        for (_, i, c) in pairs {
            let (i, c) = (i as usize, c as usize);
            if !assigned[i] && groups[c].len() < capacity[c] {
                assigned[i] = true;
                groups[c].push(i as u32);
            }
        }
        for (centre, members) in centroids.iter_mut().zip(&groups) {
            let mut sum = vec![0f32; centre.len()];
            for &i in members {
                for (s, v) in sum.iter_mut().zip(&unit[i as usize]) {
                    *s += v;
                }
            }
            *centre = normalised(&sum);
        }
    }
    for g in &mut groups {
        g.sort_unstable();
    }
    groups
}

fn normalised(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter().map(|x| x / norm).collect()
    } else {
        v.to_vec()
    }
}

fn llama_moe_config(
    dense_json: &Value,
    cfg: &ModelConfig,
    width: usize,
    shape: MoeShape,
    sizes: &[Vec<usize>],
    scale: f64,
    recipe: Value,
) -> Result<Value> {
    let head_dim = bias_free_head_dim(cfg, "LLaMA-MoE")?;
    if head_dim * cfg.num_heads != cfg.hidden_size {
        return Err(Error::config(
            "head_dim",
            "LLaMA-MoE derives head_dim from hidden_size / heads; this model differs",
        ));
    }
    let copy = |k: &str| dense_json.get(k).cloned().unwrap_or(Value::Null);
    Ok(json!({
        "architectures": ["LlamaMoEForCausalLM"],
        "model_type": "llama_moe",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": width,
        "num_hidden_layers": cfg.num_layers(),
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": null,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "num_experts": shape.n_experts,
        "num_selects": shape.top_k,
        "size_experts": sizes,
        "gate_type": "TopKBalancedNoisyGate",
        "gate_network": "linear",
        "gate_use_softmax": true,
        "gate_add_noise": false,
        "gate_noise_epsilon": 0.01,
        "gate_use_balance": true,
        "gate_balance_loss_weight": 0.01,
        "calculator_type": "UniversalCalculator",
        "multiply_gate_scores": true,
        "score_scale_factor": scale,
        "add_weight_norm": false,
        "bos_token_id": copy("bos_token_id"),
        "eos_token_id": copy("eos_token_id"),
        "pad_token_id": copy("pad_token_id"),
        "torch_dtype": "float32",
        "fluxmoe_upcycle": recipe,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_parts_cover_every_neuron_once_with_balanced_sizes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let groups = random_partition(10, 4, &mut rng);
        assert_eq!(
            groups.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![3, 3, 2, 2]
        );
        let mut all: Vec<u32> = groups.concat();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert!(groups.iter().all(|g| g.windows(2).all(|w| w[0] < w[1])));
    }

    #[test]
    fn clustering_groups_neurons_pointing_the_same_way() {
        // Two directions, four neurons each, interleaved.
        let rows: Vec<Vec<f32>> = (0..8)
            .map(|i| {
                let s = 1.0 + i as f32 * 0.1;
                if i % 2 == 0 {
                    vec![s, 0.05 * s, 0.0]
                } else {
                    vec![0.0, 0.05 * s, s]
                }
            })
            .collect();
        for seed in 0..5 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut groups = clustered_partition(&rows, 2, &mut rng);
            groups.sort();
            assert_eq!(
                groups,
                vec![vec![0, 2, 4, 6], vec![1, 3, 5, 7]],
                "seed {seed}"
            );
        }
    }
}
