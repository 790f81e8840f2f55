//! Local work of a FLUX participant after customisation (METHOD.md steps 4 and 6):
//! training the tuning experts while recording per-sample gradient norms (for the
//! utility of Eq. 3), and zeroth-order probes of the exploration experts.
//!
//! Per step, each sample of the step's batch is a separate forward/backward pass that
//! yields `||g_k^e||²` per tuning expert e. The step's gradient, that of the batch's
//! token-mean loss `Σ_k (n_k / N) L_k` (n_k target tokens of sample k, N in total),
//! comes one of two ways:
//! - accumulated: the running sum `Σ_k (n_k / N) g_k` over the per-sample passes. It
//!   holds two gradients of every tuning expert (the sum and sample k's) beside one
//!   sample's activations;
//! - recomputed: one more backward pass through the weighted losses of the whole step,
//!   holding one gradient beside the whole step's activations, at twice the compute.
//!
//! The caller picks the one its memory model covers ([`train_steps`]).

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use fluxmoe_model::layers::moe::ExpertSlots;
use fluxmoe_model::layers::{Linear, SwiGlu};
use fluxmoe_model::train::{sum_of_squares, AdamW, Batch, Proximal};
use fluxmoe_model::MoeModel;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr_free::standard_normal;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::profile::{fake_quantize, Precision};
use crate::roles::ExpertId;

/// How exploration experts refresh their utility.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Exploration {
    /// Frozen; two forward passes per probe (METHOD.md's ĝ).
    #[default]
    ZerothOrder,
    /// Trained like tuning experts (ablation).
    Backprop,
}

/// One training sample: a batch of one row, and its number of target tokens.
#[derive(Clone, Debug)]
pub struct Sample {
    pub batch: Batch,
    pub targets: usize,
}

/// What [`train_steps`] did.
#[derive(Clone, Debug, Default)]
pub struct TrainOutcome {
    /// Mean over steps of the token-mean loss.
    pub loss: f64,
    /// Per tuned expert, `||g_k^e||²` of every sample k trained on.
    pub sq_grad_norms: BTreeMap<ExpertId, Vec<f64>>,
    /// Tokens passed forward and backward.
    pub tokens: usize,
}

/// Train `model` (whose trainable `Var`s are in `opt`) on `steps`, each a list of
/// samples, with global-norm clipping at `max_grad_norm`. `expert_vars` lists the
/// variables of each tuned expert, for the per-sample norms. With `accumulate`, a
/// step's gradient is the running sum of its samples' (else one more backward pass;
/// the module docs weigh the two). With `requantize`, every trainable weight is
/// quantized and dequantized after each update (FMQ); with `proximal`, FedProx's pull
/// towards the round's starting weights is added.
#[allow(clippy::too_many_arguments)]
pub fn train_steps(
    model: &MoeModel,
    opt: &mut AdamW,
    steps: &[Vec<Sample>],
    expert_vars: &BTreeMap<ExpertId, Vec<Var>>,
    max_grad_norm: f64,
    accumulate: bool,
    requantize: Option<Precision>,
    proximal: Option<&Proximal<'_>>,
) -> Result<TrainOutcome> {
    let mut out = TrainOutcome::default();
    for (step, samples) in steps.iter().enumerate() {
        let total: usize = samples.iter().map(|s| s.targets).sum();
        if total == 0 {
            return Err(Error::Input("a training step has no target tokens".into()));
        }
        // Pass 1, each sample alone: its loss and, per tuning expert, its squared
        // gradient norm (Eq. 3); with `accumulate`, also the running gradient sum.
        let mut step_loss = 0.0f64;
        let mut last: Option<GradStore> = None;
        for sample in samples {
            let loss = sample_loss(model, sample)?;
            let value = f64::from(loss.to_scalar::<f32>()?);
            if !value.is_finite() {
                return Err(Error::Input(format!("non-finite training loss {value}")));
            }
            out.tokens += sample.batch.input_ids.elem_count();
            let share = sample.targets as f64 / total as f64;
            step_loss += share * value;
            let grads = loss.backward()?;
            for (id, vars) in expert_vars {
                let mut sq = 0.0f64;
                for v in vars {
                    if let Some(g) = grads.get(v.as_tensor()) {
                        sq += sum_of_squares(g)?;
                    }
                }
                out.sq_grad_norms.entry(*id).or_default().push(sq);
            }
            if samples.len() == 1 {
                last = Some(grads);
            } else if accumulate {
                last = Some(add_scaled(last, grads, share, opt)?);
            }
        }
        // Pass 2 (unless pass 1 accumulated the step's gradient or the step has one
        // sample): one backward pass through the samples' losses weighted by their
        // target tokens (the batch's token-mean loss).
        let mut grads = match last {
            Some(grads) => grads,
            None => {
                let mut weighted: Option<Tensor> = None;
                for sample in samples {
                    out.tokens += sample.batch.input_ids.elem_count();
                    let share = sample.targets as f64 / total as f64;
                    let term = (sample_loss(model, sample)? * share)?;
                    weighted = Some(match weighted {
                        None => term,
                        Some(sum) => (sum + term)?,
                    });
                }
                weighted
                    .ok_or_else(|| Error::Input("an empty training step".into()))?
                    .backward()?
            }
        };
        if let Some(p) = proximal {
            p.apply(opt, &mut grads)?;
        }
        opt.clip_grad_norm(&mut grads, max_grad_norm)?;
        opt.step(&grads)?;
        if let Some(p) = requantize {
            // FMQ: the stored weights are quantized again after every update.
            for (_, v) in opt.vars() {
                v.set(&fake_quantize(v.as_tensor(), p)?)?;
            }
        }
        // The loss before this step's update (RUST_LOG=debug shows the local curve).
        tracing::debug!(step, loss = step_loss, "local step");
        out.loss += step_loss / steps.len() as f64;
    }
    Ok(out)
}

/// `sum + share · grads` over the trainable variables of `opt` (`sum` absent: the
/// first sample), one variable at a time so that at most one extra matrix is live.
fn add_scaled(
    mut sum: Option<GradStore>,
    mut grads: GradStore,
    share: f64,
    opt: &AdamW,
) -> Result<GradStore> {
    for (_, v) in opt.vars() {
        let Some(g) = grads.remove(v.as_tensor()) else {
            continue;
        };
        let scaled = (g * share)?;
        let store = match sum.as_mut() {
            Some(store) => store,
            None => &mut grads,
        };
        let total = match store.remove(v.as_tensor()) {
            Some(previous) => (previous + scaled)?,
            None => scaled,
        };
        store.insert(v.as_tensor(), total);
    }
    Ok(sum.unwrap_or(grads))
}

/// The token-mean loss of one sample under `model`.
fn sample_loss(model: &MoeModel, sample: &Sample) -> Result<Tensor> {
    let b = &sample.batch;
    Ok(model.loss(
        &b.input_ids,
        b.attention_mask.as_ref(),
        b.loss_mask.as_ref(),
    )?)
}

/// Per-row token-mean losses of `batch` under `model`.
pub fn row_losses(model: &MoeModel, batch: &Batch) -> Result<Vec<f64>> {
    let (hidden, _) =
        model.forward_hidden(&batch.input_ids, batch.attention_mask.as_ref(), false)?;
    losses_of_hidden(model, batch, &hidden)
}

/// Per-row token-mean losses of `batch` from final hidden states `hidden`.
fn losses_of_hidden(model: &MoeModel, batch: &Batch, hidden: &Tensor) -> Result<Vec<f64>> {
    let (logp, rows) = model.target_logprobs(hidden, &batch.input_ids, batch.loss_mask.as_ref())?;
    let logp: Vec<f32> = logp.to_vec1()?;
    let n_rows = batch.input_ids.dim(0)?;
    let (mut sum, mut count) = (vec![0.0f64; n_rows], vec![0usize; n_rows]);
    for (lp, r) in logp.iter().zip(rows) {
        sum[r] -= f64::from(*lp);
        count[r] += 1;
    }
    Ok(sum
        .iter()
        .zip(&count)
        .filter(|(_, &c)| c > 0)
        .map(|(s, &c)| s / c as f64)
        .collect())
}

/// `model` with expert `id` replaced (for this forward only) by `weights`.
fn with_expert(model: &MoeModel, id: ExpertId, weights: [Tensor; 3]) -> Result<MoeModel> {
    let mut m = model.clone();
    let block = m.moe_block_mut(id.layer)?;
    let n = block.experts.len();
    let mut slots = block.slots.clone().unwrap_or(ExpertSlots {
        slot_of: (0..n).collect(),
        merged: Vec::new(),
    });
    let [gate, up, down] = weights;
    slots.merged.push(SwiGlu {
        gate: Linear::new(gate, None),
        up: Linear::new(up, None),
        down: Linear::new(down, None),
    });
    slots.slot_of[id.expert] = n + slots.merged.len() - 1;
    block.set_slots(slots)?;
    Ok(m)
}

/// Zeroth-order probe of each explorer on `batch` (METHOD.md step 4): with z ~ N(0, I)
/// drawn per expert from `seed`, per sample k the estimate of `||g_k^e||²` is
/// `((L_k(W + σz) − L_k(W)) / σ)² · ||z||² / d`: the squared norm of
/// ĝ = ((L(W+σz) − L(W))/σ)·z divided by the expert's dimension d, because
/// E||ĝ||² ≈ d·||g||² while E[(zᵀg)²] = ||g||² [ours: this scaling keeps explorers'
/// utilities comparable with the tuning experts' backprop norms].
pub fn zo_probe(
    model: &MoeModel,
    explorers: &[(ExpertId, [Tensor; 3])],
    batch: &Batch,
    sigma: f64,
    seed: u64,
) -> Result<BTreeMap<ExpertId, Vec<f64>>> {
    if !(sigma.is_finite() && sigma > 0.0) {
        return Err(Error::config(
            "zo_sigma",
            format!("must be > 0, got {sigma}"),
        ));
    }
    // One unperturbed forward keeps the residual stream entering every layer; a probe
    // of an expert in layer l changes nothing before l, so it resumes there.
    let (hidden, inputs) =
        model.forward_hidden_layer_inputs(&batch.input_ids, batch.attention_mask.as_ref())?;
    let base = losses_of_hidden(model, batch, &hidden)?;
    let mut out = BTreeMap::new();
    for (id, weights) in explorers {
        let mut rng = StdRng::seed_from_u64(
            seed ^ ((id.layer as u64) << 32 | id.expert as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let (mut z_sq, mut d) = (0.0f64, 0usize);
        let mut perturbed = Vec::with_capacity(3);
        for w in weights {
            let n = w.elem_count();
            let z: Vec<f32> = (0..n).map(|_| standard_normal(&mut rng) as f32).collect();
            z_sq += z.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>();
            d += n;
            let z = Tensor::from_vec(z, w.dims(), w.device())?;
            perturbed.push((w + (z * sigma)?)?);
        }
        let perturbed: [Tensor; 3] = perturbed
            .try_into()
            .map_err(|_| Error::Input("an expert has three matrices".into()))?;
        let x = inputs.get(id.layer).ok_or_else(|| {
            Error::Input(format!("expert {id:?}: layer {} is out of range", id.layer))
        })?;
        let hidden = with_expert(model, *id, perturbed)?.forward_hidden_from(
            &batch.input_ids,
            batch.attention_mask.as_ref(),
            id.layer,
            x,
        )?;
        let plus = losses_of_hidden(model, batch, &hidden)?;
        let sq: Vec<f64> = plus
            .iter()
            .zip(&base)
            .map(|(p, b)| ((p - b) / sigma).powi(2) * z_sq / d as f64)
            .collect();
        out.insert(*id, sq);
    }
    Ok(out)
}

/// Standard normal draws without an extra crate (Box–Muller on the seeded generator).
mod rand_distr_free {
    use rand::Rng;

    pub fn standard_normal(rng: &mut impl Rng) -> f64 {
        let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
        let u2: f64 = rng.gen();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}
