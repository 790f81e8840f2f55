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

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use fluxmoe_model::layers::moe::ExpertSlots;
use fluxmoe_model::layers::{Linear, SwiGlu};
use fluxmoe_model::train::{sum_of_squares, AdamW, Batch, Proximal};
use fluxmoe_model::MoeModel;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
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

/// Per-row token-mean losses of `batch` under `model`, for the rows with a target.
pub fn row_losses(model: &MoeModel, batch: &Batch) -> Result<Vec<f64>> {
    let (hidden, _) =
        model.forward_hidden(&batch.input_ids, batch.attention_mask.as_ref(), false)?;
    let (logp, rows) =
        model.target_logprobs(&hidden, &batch.input_ids, batch.loss_mask.as_ref())?;
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
///
/// A perturbed forward runs only what the perturbation can change: for explorer e of
/// layer l and sample k, the positions from the first token layer l routes to e up to
/// the sample's last target, from layer l up. Earlier positions, and every layer below
/// l, are those of one unperturbed forward (causal attention; their keys and values
/// are kept). A sample none of whose predicting positions reach e has
/// `L_k(W + σz) = L_k(W)` exactly.
pub fn zo_probe(
    model: &MoeModel,
    explorers: &[(ExpertId, [Tensor; 3])],
    batch: &Batch,
    sigma: f64,
    seed: u64,
) -> Result<ZoOutcome> {
    if !(sigma.is_finite() && sigma > 0.0) {
        return Err(Error::config(
            "zo_sigma",
            format!("must be > 0, got {sigma}"),
        ));
    }
    let (hidden, resume) =
        model.forward_hidden_resumable(&batch.input_ids, batch.attention_mask.as_ref())?;
    let base = Targets::of(model, batch, &hidden)?;
    let ids: Vec<Vec<u32>> = batch
        .input_ids
        .to_dtype(candle_core::DType::U32)?
        .to_vec2()?;
    let t = ids.first().map_or(0, Vec::len);
    let device = batch.input_ids.device();
    let mut routes_of: BTreeMap<usize, (Vec<u32>, usize)> = BTreeMap::new();
    let n_layers = model.config().layers.len();
    let mut out = ZoOutcome {
        sq_grad_norms: BTreeMap::new(),
        layer_positions: batch.input_ids.elem_count() * n_layers,
    };
    for (id, weights) in explorers {
        let (routes, k) = match routes_of.entry(id.layer) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(slot) => {
                let r = resume.routes(id.layer).ok_or_else(|| {
                    Error::Input(format!(
                        "expert {id:?}: layer {} is not an MoE layer of the model",
                        id.layer
                    ))
                })?;
                let k = r.dim(1)?;
                slot.insert((r.flatten_all()?.to_vec1()?, k))
            }
        };
        let (perturbed, z_scale) = perturb(*id, weights, sigma, seed)?;
        let probe = with_expert(model, *id, perturbed)?;
        // The rows the perturbation reaches, each with the first position whose
        // token layer l sends to the explorer, when a target comes after it (only
        // targets after it can change).
        let routed =
            |row: usize, p: usize| routes[(row * t + p) * *k..][..*k].contains(&(id.expert as u32));
        let reached: Vec<(usize, &RowTargets, usize)> = base
            .rows
            .iter()
            .enumerate()
            .filter_map(|(i, row)| Some((i, row, (0..row.last()).find(|&p| routed(row.row, p))?)))
            .collect();
        let mut change = vec![0.0f64; base.rows.len()];
        if let Some(start) = reached.iter().map(|&(_, _, first)| first).min() {
            // One forward over the reached rows, from the earliest reached position
            // to the last target of any of them.
            let end = reached
                .iter()
                .map(|(_, row, _)| row.last())
                .max()
                .unwrap_or(start);
            let n = end + 1 - start;
            out.layer_positions += n * reached.len() * (n_layers - id.layer);
            let rows: Vec<usize> = reached.iter().map(|(_, row, _)| row.row).collect();
            let seg: Vec<u32> = rows
                .iter()
                .flat_map(|&r| ids[r][start..=end].iter().copied())
                .collect();
            let seg = Tensor::from_vec(seg, (rows.len(), n), device)?;
            let hidden = probe.forward_hidden_from(&resume, id.layer, &rows, start, &seg)?;
            // Each row's targets after its own first reached position, as a loss mask
            // over the segment; the row's other targets keep their log-probability.
            let mut seg_mask = vec![0u32; rows.len() * n];
            for (j, (_, row, first)) in reached.iter().enumerate() {
                for &q in row.targets.iter().filter(|&&q| q > *first) {
                    seg_mask[j * n + q - start] = 1;
                }
            }
            let seg_mask = Tensor::from_vec(seg_mask, (rows.len(), n), device)?;
            let (logp, of_row) = model.target_logprobs(&hidden, &seg, Some(&seg_mask))?;
            let mut after = vec![0.0f64; rows.len()];
            for (v, j) in logp.to_vec1::<f32>()?.iter().zip(of_row) {
                after[j] += f64::from(*v);
            }
            for (&(i, row, first), after) in reached.iter().zip(after) {
                let before: f64 = row
                    .targets
                    .iter()
                    .zip(&row.logp)
                    .filter(|(&q, _)| q > first)
                    .map(|(_, lp)| lp)
                    .sum();
                // L_k(W + σz) − L_k(W): the token-mean loss changes only at these targets.
                change[i] = (before - after) / row.targets.len() as f64;
            }
        }
        // One estimate per row with a target; unreached rows' losses are unchanged.
        let sq: Vec<f64> = change
            .iter()
            .map(|c| (c / sigma).powi(2) * z_scale)
            .collect();
        out.sq_grad_norms.insert(*id, sq);
    }
    Ok(out)
}

/// The weights [`zo_probe`] evaluates for expert `id`: `W + σz`, z ~ N(0, I) drawn from
/// `seed` and the expert's position, and the scale `||z||² / d` of its estimate.
pub fn perturb(
    id: ExpertId,
    weights: &[Tensor; 3],
    sigma: f64,
    seed: u64,
) -> Result<([Tensor; 3], f64)> {
    let mut rng = StdRng::seed_from_u64(
        seed ^ ((id.layer as u64) << 32 | id.expert as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    let (mut z_sq, mut d) = (0.0f64, 0usize);
    let mut perturbed = Vec::with_capacity(3);
    for w in weights {
        let n = w.elem_count();
        let z: Vec<f32> = StandardNormal.sample_iter(&mut rng).take(n).collect();
        z_sq += z.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>();
        d += n;
        let step: Vec<f32> = z.into_iter().map(|v| v * sigma as f32).collect();
        perturbed.push((w + Tensor::from_vec(step, w.dims(), w.device())?)?);
    }
    let perturbed: [Tensor; 3] = perturbed
        .try_into()
        .map_err(|_| Error::Input("an expert has three matrices".into()))?;
    Ok((perturbed, z_sq / d.max(1) as f64))
}

/// What [`zo_probe`] measured and how much it ran.
#[derive(Clone, Debug, PartialEq)]
pub struct ZoOutcome {
    /// Per explorer, the estimate of `||g_k||²` for every row of the batch with a target.
    pub sq_grad_norms: BTreeMap<ExpertId, Vec<f64>>,
    /// Decoder-layer passes of one position, summed: the unperturbed forward's
    /// (positions × layers) plus every perturbed one's (positions run × layers above
    /// and including the explorer's).
    pub layer_positions: usize,
}

/// A batch's target tokens and their log-probabilities under the unperturbed model.
struct Targets {
    /// Rows with at least one target, in batch order.
    rows: Vec<RowTargets>,
}

struct RowTargets {
    row: usize,
    /// Positions of the row's target tokens, ascending.
    targets: Vec<usize>,
    /// `log p` of each target given the positions before it.
    logp: Vec<f64>,
}

impl RowTargets {
    fn last(&self) -> usize {
        self.targets.last().copied().unwrap_or(0)
    }
}

impl Targets {
    fn of(model: &MoeModel, batch: &Batch, hidden: &Tensor) -> Result<Self> {
        let (b, t) = batch.input_ids.dims2()?;
        let mask: Vec<Vec<u32>> = match &batch.loss_mask {
            Some(m) => m.to_dtype(candle_core::DType::U32)?.to_vec2()?,
            None => vec![vec![1; t]; b],
        };
        // target_logprobs lists targets row by row, positions ascending.
        let (logp, _) =
            model.target_logprobs(hidden, &batch.input_ids, batch.loss_mask.as_ref())?;
        let logp: Vec<f32> = logp.to_vec1()?;
        let mut values = logp.iter();
        let mut rows = Vec::new();
        for (row, m) in mask.iter().enumerate() {
            let targets: Vec<usize> = (1..t).filter(|&q| m[q] != 0).collect();
            let logp = targets
                .iter()
                .map(|_| {
                    values
                        .next()
                        .map(|v| f64::from(*v))
                        .ok_or_else(|| Error::Input("fewer log-probabilities than targets".into()))
                })
                .collect::<Result<Vec<f64>>>()?;
            if !targets.is_empty() {
                rows.push(RowTargets { row, targets, logp });
            }
        }
        Ok(Targets { rows })
    }
}
