//! **Branch-Train-MiX** (Sukhbaatar et al., 2024, "Branch-Train-MiX: Mixing Expert LLMs
//! into a Mixture-of-Experts LLM"): one expert per domain, trained apart, then mixed.
//!
//! Inputs: a dense Llama checkpoint and `E` domains, each a list of token windows of
//! one common length `T` (the caller tokenises; this module knows no corpus).
//!
//! 1. **Branch and train.** For each domain `e`, a copy of the dense model trains its
//!    FFNs (every layer's `gate`/`up`/`down`) for `expert_steps` AdamW steps on batches
//!    of `batch_size` windows of domain `e`, everything else frozen. The paper trains
//!    whole copies and averages their non-FFN weights; with those weights frozen here,
//!    the average is the dense model's own, so no averaging is needed.
//! 2. **Mix.** Layer `l`'s expert `e` is copy `e`'s FFN of layer `l`; embeddings,
//!    attention, norms and head are the dense model's.
//! 3. **Router initialisation.** A [centroid router](super::centroid) with one class
//!    per domain: router row `e` of layer `l` is the mean dense FFN input of domain
//!    `e`'s *probe* tokens (`probe_windows` of its windows, evenly spaced) minus the
//!    mean of those domain means, scaled so that the logits over all probe tokens have
//!    root-mean-square `router_logit_rms` (τ). Unscaled, the centred means give logits
//!    whose size depends on the layer (on SmolLM2-135M with four corpora, RMS 0.1 in
//!    layer 1 and 4.9 in layer 29): nearly uniform routing early, a saturated softmax
//!    late. One target for every layer starts them alike; `τ = 1` puts the preferred
//!    expert clearly ahead (four experts with logits `1.5, −0.5, −0.5, −0.5` give it
//!    weight 0.71) while keeping the softmax smooth enough for router training to move.
//!    With [`RouterInit::Discriminant`] the centred means are first multiplied by the
//!    inverse within-domain covariance of the probe tokens (shrunk towards the
//!    identity): Fisher's linear discriminant, which separates domains whose means
//!    differ only along directions in which every domain varies much less
//!    ([`super::centroid`]).
//! 4. **Router training.** The routers alone train (everything else frozen) for
//!    `router_steps` AdamW steps; batch `s` holds windows `s·B .. s·B + B` of a
//!    round-robin over the domains (window `i` comes from domain `i mod E`).
//!    Mixtral renormalises the top-k weights, so with top-1 the weight is always 1 and
//!    the language-model loss gives the router no gradient. A top-1 MoE's routers
//!    therefore train *routing top-2*: the renormalised pair weight `σ(l₁ − l₂)` carries
//!    the gradient of `⟨∂L/∂y, f₁ − f₂⟩`, i.e. which of the two best experts serves the
//!    token better, which is the ranking top-1 routing uses. The checkpoint keeps top-1.
//!    (A straight-through gradient, forward weight 1 and backward as if the weight were
//!    the selected expert's softmax probability, was tried first: it only says whether
//!    more or less of the *selected* expert's output would help, never compares experts,
//!    and on the test model it raised the top-1 loss after 20 steps from 1.209 to 1.436,
//!    where routing top-2 lowered it to 0.995.) Top-k > 1 trains at its own k.
//!
//! Batches are drawn per domain from a seeded shuffle of its windows, reshuffled at
//! every pass, so the result is a function of the inputs and `seed`.
//! [`BtxReport`] gives, per domain on its probe windows, the loss of the dense model
//! and of the trained branch, and how often the MoE routes its tokens first to the
//! domain's own expert before and after router training. The probe windows are
//! training windows, so those losses are in-sample; held-out loss is measured apart
//! (`fluxmoe eval-loss`).

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::json;

use super::centroid::{CentroidRouters, RouterInit};
use super::{
    assemble, batch_of, check_shape, dense_ffn_width, evenly_spaced, window_length, MoeShape,
};
use crate::checkpoint::Checkpoint;
use crate::config::{Arch, RouterKind};
use crate::keys::{dense_mlp_key, router_keys, Proj};
use crate::model::MoeModel;
use crate::train::{train_step, AdamW, AdamWConfig};
use crate::{Error, Result};

/// The training windows of one domain.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainData {
    /// Names the domain in errors, logs and the config's recipe.
    pub name: String,
    /// Token windows, all of the same length (also across domains).
    pub windows: Vec<Vec<u32>>,
}

/// The settings of a Branch-Train-MiX upcycling; see the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct BtxSpec {
    pub n_experts: usize,
    pub top_k: usize,
    /// AdamW steps of each expert branch on its domain.
    pub expert_steps: usize,
    /// AdamW steps of the routers alone on the round-robin mix of domains.
    pub router_steps: usize,
    /// Windows per batch, in both phases.
    pub batch_size: usize,
    pub expert_lr: f64,
    pub router_lr: f64,
    /// Global gradient-norm clip of every step.
    pub max_grad_norm: f64,
    /// Windows per domain, evenly spaced over its windows, whose dense FFN inputs
    /// initialise the router; the report is measured on them too.
    pub probe_windows: usize,
    /// Root-mean-square of the initial router logits over the probe tokens.
    pub router_logit_rms: f64,
    /// Class means, or their discriminant (step 3 of the module docs).
    pub router_init: RouterInit,
    pub seed: u64,
}

/// What a Branch-Train-MiX run measured, per domain on its probe windows.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainReport {
    pub name: String,
    /// Mean next-token loss (nats) of the dense model.
    pub dense_loss: f64,
    /// Mean next-token loss of the dense model with this domain's trained FFNs.
    pub expert_loss: f64,
    /// Share of (token, layer) pairs the MoE routes first to this domain's expert,
    /// with the initial routers.
    pub own_expert_share_init: f64,
    /// The same after router training.
    pub own_expert_share_final: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BtxReport {
    pub domains: Vec<DomainReport>,
    /// Router-training loss of the first and the last step (`None` without steps).
    pub router_loss: Option<(f32, f32)>,
}

#[derive(Debug, Clone)]
pub struct BtxOutput {
    /// The Mixtral-format MoE, every tensor frozen.
    pub checkpoint: Checkpoint,
    pub report: BtxReport,
}

/// Upcycle the dense Llama checkpoint `dense` with one expert per domain of `domains`
/// (expert `e` learns `domains[e]`); see the module docs.
pub fn btx_upcycle(
    dense: &Checkpoint,
    domains: &[DomainData],
    spec: &BtxSpec,
) -> Result<BtxOutput> {
    let cfg = &dense.config;
    dense_ffn_width(cfg)?;
    let shape = MoeShape {
        n_experts: spec.n_experts,
        top_k: spec.top_k,
    };
    check_shape(shape)?;
    let seq = validate(dense, domains, spec)?;
    let device = dense
        .params
        .tensor("model.embed_tokens.weight")
        .map(|t| t.device().clone())
        .ok_or_else(|| Error::MissingTensor {
            path: "dense model".into(),
            name: "model.embed_tokens.weight".into(),
        })?;
    let probes: Vec<Vec<Vec<u32>>> = domains
        .iter()
        .map(|d| evenly_spaced(&d.windows, spec.probe_windows))
        .collect();

    let dense_model = MoeModel::new(cfg, &dense.params)?;
    let mut experts = Vec::with_capacity(domains.len());
    let mut reports = Vec::with_capacity(domains.len());
    for (e, domain) in domains.iter().enumerate() {
        let dense_loss = mean_loss(&dense_model, &probes[e], spec.batch_size, &device)?;
        let (ffn, expert_loss) = train_branch(dense, domain, e, &probes[e], spec, &device)?;
        tracing::info!(
            "btx: expert {e} (`{}`): probe loss {dense_loss:.4} (dense) -> {expert_loss:.4}",
            domain.name
        );
        experts.push(ffn);
        reports.push(DomainReport {
            name: domain.name.clone(),
            dense_loss,
            expert_loss,
            own_expert_share_init: 0.0,
            own_expert_share_final: 0.0,
        });
    }

    let routers = init_routers(&dense_model, &probes, spec, &device)?;
    drop(dense_model);
    let recipe = json!({
        "method": "btx",
        "domains": domains.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        "seq_len": seq,
        "expert_steps": spec.expert_steps,
        "router_steps": spec.router_steps,
        "batch_size": spec.batch_size,
        "expert_lr": spec.expert_lr,
        "router_lr": spec.router_lr,
        "max_grad_norm": spec.max_grad_norm,
        "probe_windows": spec.probe_windows,
        "router_logit_rms": spec.router_logit_rms,
        "router_init": router_init_json(&spec.router_init),
        "router_training_top_k": router_training_top_k(spec),
        "seed": spec.seed,
    });
    let mut moe = assemble(
        dense,
        shape,
        recipe,
        |l, e, proj| {
            let key = dense_mlp_key(l, proj);
            experts[e]
                .get(&key)
                .cloned()
                .ok_or_else(|| Error::MissingTensor {
                    path: "dense model".into(),
                    name: key,
                })
        },
        routers,
    )?;
    drop(experts);

    let init_shares = own_expert_shares(&moe, &probes, spec.batch_size, &device)?;
    let router_loss = train_routers(&mut moe, domains, spec, &device)?;
    let final_shares = if router_loss.is_some() {
        own_expert_shares(&moe, &probes, spec.batch_size, &device)?
    } else {
        init_shares.clone()
    };
    for (e, r) in reports.iter_mut().enumerate() {
        r.own_expert_share_init = init_shares[e];
        r.own_expert_share_final = final_shares[e];
        tracing::info!(
            "btx: `{}` tokens routed first to their own expert: {:.3} at init, {:.3} after router training",
            r.name,
            r.own_expert_share_init,
            r.own_expert_share_final
        );
    }
    Ok(BtxOutput {
        checkpoint: moe,
        report: BtxReport {
            domains: reports,
            router_loss,
        },
    })
}

/// Checks the domains and the numeric settings; returns the common window length.
fn validate(dense: &Checkpoint, domains: &[DomainData], spec: &BtxSpec) -> Result<usize> {
    if domains.len() != spec.n_experts {
        let names: Vec<&str> = domains.iter().map(|d| d.name.as_str()).collect();
        return Err(Error::Input(format!(
            "btx needs one domain per expert: {} experts, got {} domains ({})",
            spec.n_experts,
            domains.len(),
            names.join(",")
        )));
    }
    for (what, n) in [
        ("batch size", spec.batch_size),
        ("probe windows", spec.probe_windows),
    ] {
        if n == 0 {
            return Err(Error::Input(format!(
                "btx {what} must be at least 1, got 0"
            )));
        }
    }
    for (what, lr) in [("expert lr", spec.expert_lr), ("router lr", spec.router_lr)] {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::Input(format!(
                "btx {what} must be finite and >= 0, got {lr}"
            )));
        }
    }
    for (what, x) in [
        ("max grad norm", spec.max_grad_norm),
        ("router logit rms", spec.router_logit_rms),
    ] {
        if !(x.is_finite() && x > 0.0) {
            return Err(Error::Input(format!(
                "btx {what} must be finite and > 0, got {x}"
            )));
        }
    }
    spec.router_init.validate()?;
    window_length(domains, dense.config.vocab_size, "training")
}

/// Branch `e`: the dense model with its FFNs trained on `domain`. Returns the trained
/// FFN tensors by dense key and the branch's mean loss on `probes`.
fn train_branch(
    dense: &Checkpoint,
    domain: &DomainData,
    e: usize,
    probes: &[Vec<u32>],
    spec: &BtxSpec,
    device: &Device,
) -> Result<(BTreeMap<String, Tensor>, f64)> {
    let cfg = &dense.config;
    let ffn_keys: BTreeSet<String> = (0..cfg.num_layers())
        .flat_map(|l| Proj::ALL.map(|p| dense_mlp_key(l, p)))
        .collect();
    let mut params = dense.params.clone();
    params.set_trainable(|n| ffn_keys.contains(n))?;
    {
        let model = MoeModel::new(cfg, &params)?;
        let mut opt = AdamW::new(
            params.trainable(),
            AdamWConfig {
                lr: spec.expert_lr,
                ..AdamWConfig::default()
            },
        )?;
        let mut stream = WindowStream::new(&domain.windows, stream_seed(spec.seed, e));
        for step in 1..=spec.expert_steps {
            let rows: Vec<&[u32]> = (0..spec.batch_size).map(|_| stream.next()).collect();
            let batch = batch_of(&rows, device)?;
            let stats =
                train_step(&model, &mut opt, &batch, Some(spec.max_grad_norm)).map_err(|err| {
                    Error::Input(format!(
                        "btx expert {e} (domain `{}`), step {step}: {err}",
                        domain.name
                    ))
                })?;
            if step == 1 || step % 10 == 0 || step == spec.expert_steps {
                tracing::info!(
                    "btx: expert {e} (`{}`) step {step}/{}: loss {:.4}, grad norm {:.3}",
                    domain.name,
                    spec.expert_steps,
                    stats.loss,
                    stats.grad_norm
                );
            }
        }
    }
    params.set_trainable(|_| false)?;
    let loss = mean_loss(
        &MoeModel::new(cfg, &params)?,
        probes,
        spec.batch_size,
        device,
    )?;
    let mut ffn = BTreeMap::new();
    for key in ffn_keys {
        let t = params
            .tensor(&key)
            .cloned()
            .ok_or_else(|| Error::MissingTensor {
                path: "dense model".into(),
                name: key.clone(),
            })?;
        ffn.insert(key, t);
    }
    Ok((ffn, loss))
}

/// Every layer's router `[E, hidden]` from the dense FFN inputs of each domain's
/// probe windows; see step 3 of the module docs.
fn init_routers(
    dense_model: &MoeModel,
    probes: &[Vec<Vec<u32>>],
    spec: &BtxSpec,
    device: &Device,
) -> Result<Vec<Tensor>> {
    let mut acc = CentroidRouters::new(dense_model.config().num_layers(), probes.len());
    for (e, windows) in probes.iter().enumerate() {
        for chunk in windows.chunks(spec.batch_size) {
            let rows: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
            let ids = batch_of(&rows, device)?.input_ids;
            for (l, x) in dense_model.ffn_inputs(&ids, None)?.iter().enumerate() {
                acc.add_class(l, e, x)?;
            }
        }
    }
    acc.routers(spec.router_init, spec.router_logit_rms)
}

/// The recipe's record of the router initialisation.
fn router_init_json(init: &RouterInit) -> serde_json::Value {
    match *init {
        RouterInit::ClassMeans => json!({ "rule": init.name() }),
        RouterInit::Discriminant { shrinkage } => {
            json!({ "rule": init.name(), "shrinkage": shrinkage })
        }
    }
}

/// The top-k that router training routes with: top-1 trains routing top-2 (see step 4
/// of the module docs). `check_shape` has ensured at least two experts.
fn router_training_top_k(spec: &BtxSpec) -> usize {
    spec.top_k.max(2)
}

/// Trains the routers of `moe` alone; the first and last step's loss.
fn train_routers(
    moe: &mut Checkpoint,
    domains: &[DomainData],
    spec: &BtxSpec,
    device: &Device,
) -> Result<Option<(f32, f32)>> {
    if spec.router_steps == 0 {
        return Ok(None);
    }
    let router_names: BTreeSet<String> = (0..moe.config.num_layers())
        .flat_map(|l| router_keys(Arch::Mixtral, RouterKind::Linear, l))
        .collect();
    moe.params.set_trainable(|n| router_names.contains(n))?;
    let n_domains = domains.len();
    let mut losses = (f32::NAN, f32::NAN);
    {
        let mut model = MoeModel::new(&moe.config, &moe.params)?;
        for l in 0..moe.config.num_layers() {
            model.moe_block_mut(l)?.top_k = router_training_top_k(spec);
        }
        let mut opt = AdamW::new(
            moe.params.trainable(),
            AdamWConfig {
                lr: spec.router_lr,
                ..AdamWConfig::default()
            },
        )?;
        let mut streams: Vec<WindowStream> = domains
            .iter()
            .enumerate()
            .map(|(e, d)| WindowStream::new(&d.windows, stream_seed(spec.seed, n_domains + e)))
            .collect();
        for step in 1..=spec.router_steps {
            let rows: Vec<&[u32]> = (0..spec.batch_size)
                .map(|j| streams[((step - 1) * spec.batch_size + j) % n_domains].next())
                .collect();
            let batch = batch_of(&rows, device)?;
            let stats = train_step(&model, &mut opt, &batch, Some(spec.max_grad_norm))
                .map_err(|err| Error::Input(format!("btx router training, step {step}: {err}")))?;
            if step == 1 {
                losses.0 = stats.loss;
            }
            losses.1 = stats.loss;
            if step == 1 || step % 10 == 0 || step == spec.router_steps {
                tracing::info!(
                    "btx: router step {step}/{}: loss {:.4}, grad norm {:.4}",
                    spec.router_steps,
                    stats.loss,
                    stats.grad_norm
                );
            }
        }
    }
    moe.params.set_trainable(|_| false)?;
    Ok(Some(losses))
}

/// Per domain, the share of (probe token, MoE layer) pairs whose first-ranked expert
/// is the domain's own.
fn own_expert_shares(
    moe: &Checkpoint,
    probes: &[Vec<Vec<u32>>],
    batch_size: usize,
    device: &Device,
) -> Result<Vec<f64>> {
    let model = MoeModel::new(&moe.config, &moe.params)?;
    let mut shares = Vec::with_capacity(probes.len());
    for (e, windows) in probes.iter().enumerate() {
        let (mut own, mut total) = (0usize, 0usize);
        for chunk in windows.chunks(batch_size) {
            let rows: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
            let ids = batch_of(&rows, device)?.input_ids;
            let (_, routes) = model.forward_hidden_routed(&ids, None)?;
            let counts = model.first_choice_counts(&routes)?;
            own += counts.get(e).copied().unwrap_or(0);
            total += counts.iter().sum::<usize>();
        }
        shares.push(own as f64 / total.max(1) as f64);
    }
    Ok(shares)
}

/// Mean next-token loss over `windows`, scored `batch_size` at a time.
fn mean_loss(
    model: &MoeModel,
    windows: &[Vec<u32>],
    batch_size: usize,
    device: &Device,
) -> Result<f64> {
    let (mut sum, mut n) = (0.0f64, 0usize);
    for chunk in windows.chunks(batch_size) {
        let rows: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
        let ids = batch_of(&rows, device)?.input_ids;
        let loss = model.loss(&ids, None, None)?.to_scalar::<f32>()? as f64;
        sum += loss * chunk.len() as f64;
        n += chunk.len();
    }
    Ok(sum / n.max(1) as f64)
}

/// The seed of random stream `stream` of a run seeded `seed` (a SplitMix64 step, so
/// neighbouring streams are unrelated).
fn stream_seed(seed: u64, stream: usize) -> u64 {
    let mut z = seed ^ (stream as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An endless stream of one domain's windows: a seeded shuffle, reshuffled after every
/// pass.
struct WindowStream<'a> {
    windows: &'a [Vec<u32>],
    order: Vec<usize>,
    pos: usize,
    rng: StdRng,
}

impl<'a> WindowStream<'a> {
    fn new(windows: &'a [Vec<u32>], seed: u64) -> Self {
        Self {
            windows,
            order: (0..windows.len()).collect(),
            pos: windows.len(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    fn next(&mut self) -> &'a [u32] {
        if self.pos == self.order.len() {
            self.order.shuffle(&mut self.rng);
            self.pos = 0;
        }
        self.pos += 1;
        &self.windows[self.order[self.pos - 1]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_streams_visit_every_window_once_per_pass_and_depend_on_the_seed() {
        let windows: Vec<Vec<u32>> = (0..7).map(|i| vec![i]).collect();
        let pass = |seed| {
            let mut s = WindowStream::new(&windows, seed);
            (0..14).map(|_| s.next()[0]).collect::<Vec<u32>>()
        };
        let a = pass(stream_seed(3, 0));
        for half in a.chunks(7) {
            let mut sorted = half.to_vec();
            sorted.sort();
            assert_eq!(sorted, (0..7).collect::<Vec<u32>>());
        }
        assert_eq!(a, pass(stream_seed(3, 0)));
        assert_ne!(a, pass(stream_seed(3, 1)));
        assert_ne!(a, pass(stream_seed(4, 0)));
    }

    #[test]
    fn probes_are_spread_over_the_windows() {
        let items: Vec<u32> = (0..10).collect();
        assert_eq!(evenly_spaced(&items, 3), [0, 3, 6]);
        assert_eq!(evenly_spaced(&items, 20), items);
    }
}
