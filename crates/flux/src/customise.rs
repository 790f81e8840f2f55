//! Building a participant's customised model (METHOD.md step 5): tuning and exploration
//! experts stay as they are; the non-tuning experts of each layer are clustered and
//! merged into `B_non(l)` forward-only experts, and the router's choices are re-routed
//! to the merged slots. A cluster of one expert is that expert itself, so with nothing
//! to merge the customised model is the original, bit for bit.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::Tensor;
use fluxmoe_model::keys::{expert_key, Proj};
use fluxmoe_model::{MergedExpert, ModelConfig, MoeModel};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::merge::{
    centred_gram, cosine_kmeans, layer_slots, merge_coefficients, merge_tensors, pca_from_gram,
    SlotRule,
};
use crate::profile::Profile;
use crate::roles::{ExpertId, Roles};

/// Merge weights α_e of Eq. 2.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Alpha {
    /// α_e = f_e · ā_e (activation share times mean attention score).
    #[default]
    FreqAttention,
    /// α_e = f_e (ablation).
    Freq,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MergeOptions {
    pub slot_rule: SlotRule,
    pub pca_dim: usize,
    pub alpha: Alpha,
    pub kmeans_iters: usize,
    /// Floor added to each layer's activation variance in Eq. 1.
    pub var_floor: f64,
}

impl Default for MergeOptions {
    fn default() -> Self {
        MergeOptions {
            slot_rule: SlotRule::LayerAware,
            pca_dim: 32,
            alpha: Alpha::FreqAttention,
            kmeans_iters: 20,
            var_floor: 1e-6,
        }
    }
}

/// What customisation did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Customised {
    /// Merged slots per MoE layer (in profile order).
    pub slots: Vec<usize>,
    /// Merged experts actually built (clusters of two or more).
    pub merged: usize,
    /// Work done (PCA Gram matrix and weighted sums), FLOP.
    pub flops: f64,
}

/// The three matrices of routed expert `e`.
pub fn expert_tensors(
    cfg: &ModelConfig,
    tensors: &BTreeMap<String, Tensor>,
    e: ExpertId,
) -> Result<[Tensor; 3]> {
    let get = |p: Proj| {
        let key = expert_key(cfg.arch, e.layer, e.expert, p);
        tensors
            .get(&key)
            .cloned()
            .ok_or_else(|| Error::Input(format!("expert tensor `{key}` is missing")))
    };
    Ok([get(Proj::Gate)?, get(Proj::Up)?, get(Proj::Down)?])
}

/// Merge the experts of `model` outside `roles` into `b_non` slots (see module docs).
/// `tensors` are the weights the model was built from; `profile` gives f_e and ā_e.
pub fn customise(
    model: &mut MoeModel,
    tensors: &BTreeMap<String, Tensor>,
    roles: &Roles,
    profile: &Profile,
    b_non: usize,
    opts: &MergeOptions,
    seed: u64,
) -> Result<Customised> {
    let cfg = model.config().clone();
    let kept: BTreeSet<ExpertId> = roles
        .tuning
        .iter()
        .chain(&roles.exploration)
        .copied()
        .collect();
    let freqs = profile.frequencies();
    let attention = profile.mean_attention();
    let non_tuning: Vec<Vec<usize>> = profile
        .layers
        .iter()
        .map(|l| {
            (0..l.slots.len())
                .filter(|&e| {
                    !kept.contains(&ExpertId {
                        layer: l.layer,
                        expert: e,
                    })
                })
                .collect()
        })
        .collect();
    let counts: Vec<usize> = non_tuning.iter().map(Vec::len).collect();
    let slots = layer_slots(&freqs, &counts, b_non, opts.slot_rule, opts.var_floor)?;

    // Rows to cluster: the non-tuning experts of every layer that must merge, as their
    // own tensors (PCA needs only their Gram matrix, gathered block by block, so the
    // experts are never copied into one matrix).
    let (mut rows, mut group, mut members) = (Vec::new(), Vec::new(), Vec::new());
    for (i, experts) in non_tuning.iter().enumerate() {
        if slots[i] >= experts.len() {
            continue;
        }
        for &e in experts {
            let id = ExpertId {
                layer: profile.layers[i].layer,
                expert: e,
            };
            rows.push(expert_tensors(&cfg, tensors, id)?.to_vec());
            group.push(i);
            members.push(id);
        }
    }
    let mut out = Customised {
        slots: slots.clone(),
        ..Customised::default()
    };
    if rows.is_empty() {
        return Ok(out);
    }
    let (n, d) = (
        rows.len(),
        rows[0].iter().map(Tensor::elem_count).sum::<usize>(),
    );
    out.flops += 2.0 * (n * n * d) as f64;
    let points = pca_from_gram(centred_gram(&rows)?, opts.pca_dim)?;
    drop(rows);
    let assignment = cosine_kmeans(&points, &group, &slots, seed, opts.kmeans_iters)?;

    // Per layer: clusters → slot map and merged experts.
    let mut by_layer: BTreeMap<usize, BTreeMap<usize, Vec<ExpertId>>> = BTreeMap::new();
    for ((&g, &c), &id) in group.iter().zip(&assignment).zip(&members) {
        by_layer
            .entry(g)
            .or_default()
            .entry(c)
            .or_default()
            .push(id);
    }
    for (g, clusters) in by_layer {
        let layer = &profile.layers[g];
        let n_experts = layer.slots.len();
        let mut slot_of: Vec<usize> = (0..n_experts).collect();
        let mut merged = Vec::new();
        for ids in clusters.values().filter(|ids| ids.len() > 1) {
            let alpha: Vec<f64> = ids
                .iter()
                .map(|id| match opts.alpha {
                    Alpha::FreqAttention => freqs[g][id.expert] * attention[g][id.expert],
                    Alpha::Freq => freqs[g][id.expert],
                })
                .collect();
            let coef = merge_coefficients(&alpha)?;
            let weights: Vec<[Tensor; 3]> = ids
                .iter()
                .map(|&id| expert_tensors(&cfg, tensors, id))
                .collect::<Result<_>>()?;
            let matrix = |j: usize| -> Result<Tensor> {
                let ws: Vec<&Tensor> = weights.iter().map(|w| &w[j]).collect();
                merge_tensors(&ws, &coef)
            };
            let expert = MergedExpert {
                gate: matrix(0)?,
                up: matrix(1)?,
                down: matrix(2)?,
            };
            out.flops += 2.0 * ids.len() as f64 * (d as f64);
            for id in ids {
                slot_of[id.expert] = n_experts + merged.len();
            }
            merged.push(expert);
        }
        out.merged += merged.len();
        if !merged.is_empty() {
            model.set_merged_experts(layer.layer, slot_of, merged)?;
        }
    }
    Ok(out)
}
