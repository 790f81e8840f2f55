//! **Sparse upcycling** (Komatsuzaki et al., 2023): every layer's FFN is copied into
//! `E` identical experts and a router `[E, hidden]` is added, initialised small and
//! random (seeded). Mixtral's routing renormalises the top-k weights to sum to one, so
//! `Σ_j w_j · FFN(x) = FFN(x)`: at initialisation the MoE computes the dense model's
//! function (up to float rounding), whatever the router says. Fine-tuning then lets
//! the copies diverge.

use rand::{Rng, SeedableRng};
use serde_json::json;

use super::{assemble, check_shape, dense_ffn_width, dense_mlp, MoeShape};
use crate::checkpoint::Checkpoint;
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
    dense_ffn_width(cfg)?;
    let shape = MoeShape {
        n_experts: spec.n_experts,
        top_k: spec.top_k,
    };
    check_shape(shape)?;
    let h = cfg.hidden_size;
    let device = dense
        .params
        .tensor("model.embed_tokens.weight")
        .map(|t| t.device().clone())
        .unwrap_or(candle_core::Device::Cpu);
    let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
    let routers = (0..cfg.num_layers())
        .map(|_| {
            let w: Vec<f32> = (0..spec.n_experts * h)
                .map(|_| (normal(&mut rng) * spec.router_std) as f32)
                .collect();
            candle_core::Tensor::from_vec(w, (spec.n_experts, h), &device).map_err(Error::from)
        })
        .collect::<Result<Vec<_>>>()?;
    let recipe = json!({
        "method": "sparse",
        "router_std": spec.router_std,
        "seed": spec.seed,
    });
    assemble(
        dense,
        shape,
        recipe,
        |l, _, proj| dense_mlp(dense, l, proj),
        routers,
    )
}

/// A standard normal draw (Box–Muller), from a seeded generator.
pub(crate) fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}
