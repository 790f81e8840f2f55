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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    #[test]
    fn active_parameters_count_top_k_experts_per_layer() {
        let cfg = crate::config::ModelConfig::from_json(&serde_json::json!({
            "model_type": "mixtral", "vocab_size": 10, "hidden_size": 4,
            "intermediate_size": 3, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_local_experts": 4, "num_experts_per_tok": 2
        }))
        .unwrap();
        let z = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
        let mut tensors = vec![("model.embed_tokens.weight".to_string(), z(&[10, 4]))];
        for e in 0..4 {
            for p in Proj::ALL {
                let shape = if p == Proj::Down { [4, 3] } else { [3, 4] };
                tensors.push((expert_key(cfg.arch, 0, e, p), z(&shape)));
            }
        }
        let params = ParamStore::from_tensors(tensors).unwrap();
        let s = ModelStats::of(&cfg, &params);
        assert_eq!(s.total_params, 40 + 4 * 36);
        assert_eq!(s.expert_params, 4 * 36);
        assert_eq!(s.active_params, 40 + 2 * 36);
        assert_eq!(s.full_finetune_bytes(), 16 * s.total_params);
    }
}
