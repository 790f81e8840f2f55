//! Parameter counts and memory estimates of a model, for `fluxmoe inspect` and budgets.
//!
//! Active parameters per token = everything outside routed experts plus, per MoE layer,
//! the `top_k` largest routed experts of that layer (an upper bound when expert widths
//! differ). Memory: inference holds f32 weights; full fine-tuning with AdamW holds
//! weight, gradient and two moments in f32 (16 bytes per parameter), activations not
//! included.

use crate::config::{Ffn, ModelConfig};
use crate::keys::{expert_key, Proj};
use crate::params::ParamStore;

#[derive(Debug, Clone, PartialEq)]
pub struct LayerStats {
    pub layer: usize,
    /// `None` for a dense layer; else (experts, top-k).
    pub routed: Option<(usize, usize)>,
    /// Parameters of all routed experts of the layer.
    pub expert_params: usize,
    /// Parameters of the largest `top_k` routed experts.
    pub active_expert_params: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelStats {
    pub total_params: usize,
    pub expert_params: usize,
    pub active_params: usize,
    pub layers: Vec<LayerStats>,
}

impl ModelStats {
    pub fn of(cfg: &ModelConfig, params: &ParamStore) -> Self {
        let numel = |name: &str| params.tensor(name).map_or(0, |t| t.elem_count());
        let total_params: usize = params
            .tensors()
            .filter(|(_, t)| t.dtype().is_float())
            .map(|(_, t)| t.elem_count())
            .sum();
        let mut layers = Vec::new();
        for (l, ffn) in cfg.layers.iter().enumerate() {
            let stats = match ffn {
                Ffn::Dense { .. } => LayerStats {
                    layer: l,
                    routed: None,
                    expert_params: 0,
                    active_expert_params: 0,
                },
                Ffn::Moe(m) => {
                    let mut sizes: Vec<usize> = (0..m.n_experts)
                        .map(|e| {
                            Proj::ALL
                                .iter()
                                .map(|&p| numel(&expert_key(cfg.arch, l, e, p)))
                                .sum()
                        })
                        .collect();
                    let expert_params = sizes.iter().sum();
                    sizes.sort_unstable_by(|a, b| b.cmp(a));
                    LayerStats {
                        layer: l,
                        routed: Some((m.n_experts, m.top_k)),
                        expert_params,
                        active_expert_params: sizes.iter().take(m.top_k).sum(),
                    }
                }
            };
            layers.push(stats);
        }
        let expert_params: usize = layers.iter().map(|l| l.expert_params).sum();
        let active: usize = layers.iter().map(|l| l.active_expert_params).sum();
        ModelStats {
            total_params,
            expert_params,
            active_params: total_params - expert_params + active,
            layers,
        }
    }

    /// Bytes of f32 weights.
    pub fn inference_bytes(&self) -> usize {
        self.total_params * 4
    }

    /// Bytes of f32 weights, gradients and AdamW moments, activations excluded.
    pub fn full_finetune_bytes(&self) -> usize {
        self.total_params * 16
    }
}
