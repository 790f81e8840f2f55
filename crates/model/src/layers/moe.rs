//! Sparse MoE block: router → top-k selection → grouped expert evaluation.
//!
//! For tokens `x` `[N, hidden]`: `logits = router(x)` `[N, E]`; the routing rule
//! ([`Scoring`]) yields `topk_idx` `[N, k]` (sorted by descending weight) and
//! `topk_weight` `[N, k]`; `y_n = Σ_j topk_weight[n, j] · Expert_{topk_idx[n, j]}(x_n)`
//! plus shared-expert terms. Routing is computed on tensors and gradients reach the
//! router through the gathered top-k weights. The selected expert ids are read back
//! once per block to group tokens by expert: one `index_select` gathers all routed
//! token rows in expert order, each expert runs one matmul chain on its contiguous
//! slice, and one `index_add` scatters the weighted results back.
//!
//! Two customisations serve FLUX and its baselines, both off by default:
//! - an [`ExpertSlots`] map sends each router-selected expert to a *slot*: itself, or a
//!   merged expert standing in for several (the router still scores the original
//!   experts; a token whose selections land on the same slot gets that slot once per
//!   selection, i.e. their weights add). The identity map is the plain block, bit for bit.
//! - a router mask drops experts: their logits get a large negative value before the
//!   routing rule, so top-k picks only among the kept ones.

use candle_core::{DType, Result, Tensor, D};

use super::{Linear, SwiGlu};
use crate::config::Scoring;

#[derive(Debug, Clone)]
pub enum Router {
    Linear(Linear),
    /// `W2 tanh(W0 x)` (LLaMA-MoE's mlp gate).
    TanhMlp(Linear, Linear),
}

impl Router {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Router::Linear(l) => l.forward(x),
            Router::TanhMlp(w0, w2) => w2.forward(&w0.forward(x)?.tanh()?),
        }
    }
}

#[derive(Debug, Clone)]
pub enum SharedLayer {
    Plain(SwiGlu),
    SigmoidGated { mlp: SwiGlu, gate: Linear },
}

/// What the router decided for each token of one MoE block.
#[derive(Debug, Clone)]
pub struct Routing {
    /// Raw router output `[N, E]`.
    pub router_logits: Tensor,
    /// Selected experts `[N, k]` (u32), by descending weight.
    pub topk_idx: Tensor,
    /// Weights multiplied onto the selected experts' outputs `[N, k]`.
    pub topk_weight: Tensor,
}

/// Where each routed expert's tokens go: `slot_of[e]` indexes `experts ++ merged`.
#[derive(Debug, Clone)]
pub struct ExpertSlots {
    pub slot_of: Vec<usize>,
    /// Forward-only experts that replace groups of original experts.
    pub merged: Vec<SwiGlu>,
}

/// Logit given to masked experts (finite, so an all-masked row stays finite).
const DROPPED_LOGIT: f64 = -1e9;

#[derive(Debug, Clone)]
pub struct MoeBlock {
    pub router: Router,
    pub experts: Vec<SwiGlu>,
    pub shared: Option<SharedLayer>,
    pub top_k: usize,
    pub scoring: Scoring,
    /// `None`: every expert is its own slot.
    pub slots: Option<ExpertSlots>,
    /// Additive router-logit mask `[E]` (0 = kept, large negative = dropped).
    pub router_mask: Option<Tensor>,
}

impl MoeBlock {
    /// `x` `[N, hidden]` → `([N, hidden], routing)`.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Routing)> {
        let routing = self.route(x)?;
        let mut out = self.dispatch(x, &routing)?;
        match &self.shared {
            Some(SharedLayer::Plain(mlp)) => out = (out + mlp.forward(x)?)?,
            Some(SharedLayer::SigmoidGated { mlp, gate }) => {
                let g = sigmoid(&gate.forward(x)?)?;
                out = (out + mlp.forward(x)?.broadcast_mul(&g)?)?;
            }
            None => {}
        }
        Ok((out, routing))
    }

    /// Map routed experts to slots (see the module docs). `slot_of` must have one entry
    /// per expert, each `< experts.len() + merged.len()`.
    pub fn set_slots(&mut self, slots: ExpertSlots) -> Result<()> {
        let n = self.experts.len();
        let total = n + slots.merged.len();
        if slots.slot_of.len() != n {
            candle_core::bail!(
                "slot map has {} entries for {n} experts",
                slots.slot_of.len()
            );
        }
        if let Some(s) = slots.slot_of.iter().find(|&&s| s >= total) {
            candle_core::bail!("slot {s} is outside the {total} slots");
        }
        self.slots = Some(slots);
        Ok(())
    }

    /// Keep only the experts with `keep[e]` (at least `top_k` of them) in routing.
    pub fn set_kept_experts(&mut self, keep: &[bool]) -> Result<()> {
        let n = self.experts.len();
        if keep.len() != n {
            candle_core::bail!("expert mask has {} entries for {n} experts", keep.len());
        }
        let kept = keep.iter().filter(|&&k| k).count();
        if kept < self.top_k {
            candle_core::bail!("{kept} kept experts cannot fill top-{}", self.top_k);
        }
        let mask: Vec<f32> = keep
            .iter()
            .map(|&k| if k { 0.0 } else { DROPPED_LOGIT as f32 })
            .collect();
        let device = match &self.router {
            Router::Linear(l) | Router::TanhMlp(_, l) => l.weight().device().clone(),
        };
        self.router_mask = Some(Tensor::from_vec(mask, n, &device)?);
        Ok(())
    }

    /// Apply the router and the routing rule.
    pub fn route(&self, x: &Tensor) -> Result<Routing> {
        let mut logits = self.router.forward(x)?;
        if let Some(mask) = &self.router_mask {
            logits = logits.broadcast_add(mask)?;
        }
        let k = self.top_k;
        let (topk_idx, topk_weight) = match &self.scoring {
            Scoring::SoftmaxThenTopK {
                renormalize,
                scale,
                groups,
            } => {
                let probs = candle_nn::ops::softmax(&logits, D::Minus1)?;
                let candidates = match groups {
                    Some((n_group, topk_group)) => {
                        group_limited(&probs.detach(), *n_group, *topk_group)?
                    }
                    None => probs.detach(),
                };
                let idx = top_k_indices(&candidates, k)?;
                let mut w = probs.gather(&idx, 1)?;
                if *renormalize {
                    w = w.broadcast_div(&w.sum_keepdim(1)?)?;
                }
                if *scale != 1.0 {
                    w = (w * *scale)?;
                }
                (idx, w)
            }
            Scoring::TopKThenSoftmax { softmax, scale } => {
                let idx = top_k_indices(&logits.detach(), k)?;
                let selected = logits.gather(&idx, 1)?;
                let mut w = if *softmax {
                    candle_nn::ops::softmax(&selected, D::Minus1)?
                } else {
                    selected
                };
                if *scale != 1.0 {
                    w = (w * *scale)?;
                }
                (idx, w)
            }
        };
        Ok(Routing {
            router_logits: logits,
            topk_idx,
            topk_weight,
        })
    }

    /// Evaluate the routed experts on their tokens and combine with the top-k weights.
    pub fn dispatch(&self, x: &Tensor, routing: &Routing) -> Result<Tensor> {
        let (n, hidden) = x.dims2()?;
        let k = self.top_k;
        let n_routed = self.experts.len();
        let mut ids: Vec<u32> = routing.topk_idx.flatten_all()?.to_vec1()?;
        if let Some(&e) = ids.iter().find(|&&e| e as usize >= n_routed) {
            candle_core::bail!("router selected expert {e} of {n_routed}");
        }
        let merged: &[SwiGlu] = match &self.slots {
            Some(slots) => {
                for e in ids.iter_mut() {
                    *e = slots.slot_of[*e as usize] as u32;
                }
                &slots.merged
            }
            None => &[],
        };
        let n_experts = n_routed + merged.len();
        // Counting sort of the (token, k) positions by slot.
        let mut starts = vec![0usize; n_experts + 1];
        for &e in &ids {
            starts[e as usize + 1] += 1;
        }
        for e in 0..n_experts {
            starts[e + 1] += starts[e];
        }
        let mut fill = starts.clone();
        let mut positions = vec![0u32; ids.len()];
        for (p, &e) in ids.iter().enumerate() {
            positions[fill[e as usize]] = p as u32;
            fill[e as usize] += 1;
        }
        let tokens: Vec<u32> = positions.iter().map(|&p| p / k as u32).collect();
        let device = x.device();
        let n_sel = positions.len();
        let tokens = Tensor::from_vec(tokens, n_sel, device)?;
        let positions = Tensor::from_vec(positions, n_sel, device)?;
        let xs = x.index_select(&tokens, 0)?;
        let mut outs = Vec::with_capacity(n_experts);
        for (e, expert) in self.experts.iter().chain(merged).enumerate() {
            let (start, count) = (starts[e], starts[e + 1] - starts[e]);
            if count > 0 {
                outs.push(expert.forward(&xs.narrow(0, start, count)?)?);
            }
        }
        let ys = Tensor::cat(&outs, 0)?;
        let w = routing
            .topk_weight
            .flatten_all()?
            .index_select(&positions, 0)?;
        let ys = ys.broadcast_mul(&w.unsqueeze(1)?)?;
        Tensor::zeros((n, hidden), DType::F32, device)?.index_add(&tokens, &ys, 0)
    }
}

/// Indices of the `k` largest entries of each row, by descending value (u32, contiguous).
fn top_k_indices(scores: &Tensor, k: usize) -> Result<Tensor> {
    scores
        .arg_sort_last_dim(false)?
        .narrow(D::Minus1, 0, k)?
        .contiguous()
}

/// Zero the scores of experts outside the `topk_group` best of `n_group` consecutive
/// expert groups (a group's score is its best expert's score).
fn group_limited(probs: &Tensor, n_group: usize, topk_group: usize) -> Result<Tensor> {
    let (n, e) = probs.dims2()?;
    let group_scores = probs.reshape((n, n_group, e / n_group))?.max(D::Minus1)?;
    let (sorted, _) = group_scores.sort_last_dim(false)?;
    let threshold = sorted.narrow(1, topk_group - 1, 1)?;
    let keep = group_scores
        .broadcast_ge(&threshold)?
        .unsqueeze(2)?
        .broadcast_as((n, n_group, e / n_group))?
        .reshape((n, e))?;
    keep.where_cond(probs, &probs.zeros_like()?)
}

/// `1 / (1 + exp(-x))` from differentiable primitives.
fn sigmoid(x: &Tensor) -> Result<Tensor> {
    (x.neg()?.exp()? + 1.0)?.recip()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn group_limited_keeps_only_the_best_groups() {
        let dev = Device::Cpu;
        // 4 experts in 2 groups; group 1 holds the best expert.
        let p = Tensor::new(&[[0.1f32, 0.2, 0.6, 0.1]], &dev).unwrap();
        let kept = group_limited(&p, 2, 1).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(kept, vec![vec![0.0, 0.0, 0.6, 0.1]]);
    }
}
