//! Checkpoint key names of each architecture: the one place that spells them.
//!
//! | arch | router | expert `e` (gate / up / down) |
//! |---|---|---|
//! | mixtral | `block_sparse_moe.gate.weight` | `block_sparse_moe.experts.e.{w1,w3,w2}.weight` |
//! | qwen2_moe, qwen3_moe, olmoe, deepseek, deepseek_v2 | `mlp.gate.weight` | `mlp.experts.e.{gate,up,down}_proj.weight` |
//! | llama_moe | `mlp.gate.gate_network.{0,2}.weight` (mlp) or `mlp.gate.gate_network.weight` | `mlp.calculator.experts.weight_{gate,up,down}.e` |

use crate::config::{Arch, RouterKind};

/// One of the three matrices of a SwiGLU MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proj {
    Gate,
    Up,
    Down,
}

impl Proj {
    pub const ALL: [Proj; 3] = [Proj::Gate, Proj::Up, Proj::Down];

    fn hf(self) -> &'static str {
        match self {
            Proj::Gate => "gate_proj",
            Proj::Up => "up_proj",
            Proj::Down => "down_proj",
        }
    }
}

pub fn layer_prefix(layer: usize) -> String {
    format!("model.layers.{layer}")
}

/// Prefix of layer `layer`'s MoE block.
pub fn moe_prefix(arch: Arch, layer: usize) -> String {
    match arch {
        Arch::Mixtral => format!("model.layers.{layer}.block_sparse_moe"),
        _ => format!("model.layers.{layer}.mlp"),
    }
}

/// Key of one matrix of routed expert `expert` in layer `layer`.
pub fn expert_key(arch: Arch, layer: usize, expert: usize, proj: Proj) -> String {
    let p = moe_prefix(arch, layer);
    match arch {
        Arch::Mixtral => {
            let w = match proj {
                Proj::Gate => "w1",
                Proj::Up => "w3",
                Proj::Down => "w2",
            };
            format!("{p}.experts.{expert}.{w}.weight")
        }
        Arch::LlamaMoe => {
            let w = match proj {
                Proj::Gate => "weight_gate",
                Proj::Up => "weight_up",
                Proj::Down => "weight_down",
            };
            format!("{p}.calculator.experts.{w}.{expert}")
        }
        _ => format!("{p}.experts.{expert}.{}.weight", proj.hf()),
    }
}

/// Keys of the router of layer `layer`, in application order.
pub fn router_keys(arch: Arch, router: RouterKind, layer: usize) -> Vec<String> {
    let p = moe_prefix(arch, layer);
    match (arch, router) {
        (Arch::LlamaMoe, RouterKind::TanhMlp) => vec![
            format!("{p}.gate.gate_network.0.weight"),
            format!("{p}.gate.gate_network.2.weight"),
        ],
        (Arch::LlamaMoe, RouterKind::Linear) => vec![format!("{p}.gate.gate_network.weight")],
        _ => vec![format!("{p}.gate.weight")],
    }
}

/// Key of one matrix of the shared expert(s) of layer `layer`.
pub fn shared_expert_key(arch: Arch, layer: usize, proj: Proj) -> String {
    let p = moe_prefix(arch, layer);
    let block = if arch == Arch::Qwen2Moe {
        "shared_expert"
    } else {
        "shared_experts"
    };
    format!("{p}.{block}.{}.weight", proj.hf())
}

/// Key of Qwen2-MoE's scalar shared-expert gate.
pub fn shared_expert_gate_key(arch: Arch, layer: usize) -> String {
    format!("{}.shared_expert_gate.weight", moe_prefix(arch, layer))
}

/// Key of one matrix of a dense layer's MLP.
pub fn dense_mlp_key(layer: usize, proj: Proj) -> String {
    format!("model.layers.{layer}.mlp.{}.weight", proj.hf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_real_checkpoints() {
        assert_eq!(
            expert_key(Arch::Mixtral, 1, 3, Proj::Up),
            "model.layers.1.block_sparse_moe.experts.3.w3.weight"
        );
        assert_eq!(
            expert_key(Arch::LlamaMoe, 0, 2, Proj::Down),
            "model.layers.0.mlp.calculator.experts.weight_down.2"
        );
        assert_eq!(
            expert_key(Arch::Qwen3Moe, 0, 7, Proj::Gate),
            "model.layers.0.mlp.experts.7.gate_proj.weight"
        );
        assert_eq!(
            shared_expert_key(Arch::Qwen2Moe, 1, Proj::Down),
            "model.layers.1.mlp.shared_expert.down_proj.weight"
        );
        assert_eq!(
            shared_expert_key(Arch::Deepseek, 2, Proj::Gate),
            "model.layers.2.mlp.shared_experts.gate_proj.weight"
        );
    }
}
