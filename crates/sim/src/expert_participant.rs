//! The participant side of FLUX and its baselines: profiling a model on the shard and
//! executing an expert [`Plan`] (customise, train the tuning experts, probe explorers,
//! report utilities). Called by [`crate::participant::ModelParticipant`].

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{Device, Tensor, Var};
use fluxmoe_data::batch::{collate, Encoded};
use fluxmoe_fed::cost::tensors_bytes;
use fluxmoe_fed::seed::derive_seed;
use fluxmoe_fed::wire::{ProfileIns, ProfileReply, Scalar};
use fluxmoe_fed::{Global, TrainIns, TrainReply, WorkCost};
use fluxmoe_flux::customise::{customise, expert_tensors, Customised};
use fluxmoe_flux::local::{train_steps, zo_probe, Exploration, Sample};
use fluxmoe_flux::profile::{profile, quantized_copy, Precision, ProfileBatch};
use fluxmoe_flux::roles::{utility, ExpertId};
use fluxmoe_flux::strategy::{
    Method, Plan, PlanReport, ProfileReport, PROFILE_ERROR_KEY, PROFILE_PRECISION_KEY,
    PROFILE_TOKENS_KEY,
};
use fluxmoe_model::config::Ffn;
use fluxmoe_model::keys::{expert_key, Proj};
use fluxmoe_model::train::{AdamW, Batch, Proximal};
use fluxmoe_model::{MoeModel, ParamStore};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::participant::ModelParticipant;
use crate::{Error, Result};

const STREAM_PROFILE: u64 = 0x5052_4f46;

fn to_batch(items: &[Encoded], pad_id: u32) -> Result<Batch> {
    let b = collate(items, pad_id, &Device::Cpu)?;
    Ok(Batch {
        input_ids: b.input_ids,
        attention_mask: Some(b.attention_mask),
        loss_mask: Some(b.loss_mask),
    })
}

fn targets(e: &Encoded) -> usize {
    e.loss_mask.iter().filter(|&&m| m == 1).count()
}

impl ModelParticipant {
    /// Profile `model` (quantized as asked) on up to `profile_tokens` tokens of the shard.
    pub(crate) fn profile_model(
        &self,
        ins: &ProfileIns,
        model: &Global,
        current: &Global,
    ) -> Result<ProfileReply> {
        let t = &self.training;
        let cap = match ins.params.get(PROFILE_TOKENS_KEY) {
            Some(Scalar::Int(n)) if *n > 0 => *n as usize,
            _ => usize::MAX,
        };
        let precision = match ins.params.get(PROFILE_PRECISION_KEY) {
            Some(Scalar::Str(s)) => Precision::from_name(s)?,
            _ => Precision::Int4,
        };
        let want_error = matches!(ins.params.get(PROFILE_ERROR_KEY), Some(Scalar::Bool(true)));
        // A seeded order of the shard, cut at the token cap.
        let mut order: Vec<usize> = (0..self.shard.len()).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(derive_seed(
            t.seed,
            ins.round,
            (u64::from(self.id.0) << 16) ^ STREAM_PROFILE,
        ));
        order.shuffle(&mut rng);
        let (mut items, mut tokens) = (Vec::new(), 0usize);
        for i in order {
            if tokens >= cap {
                break;
            }
            tokens += self.shard[i].ids.len();
            items.push(self.shard[i].clone());
        }
        let batches = items
            .chunks(t.batch_size.max(1))
            .map(|c| {
                let b = collate(c, t.pad_id, &Device::Cpu)?;
                Ok(ProfileBatch {
                    input_ids: b.input_ids,
                    attention_mask: b.attention_mask,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let run = |tensors: &Global| -> Result<fluxmoe_flux::profile::Profile> {
            let params =
                ParamStore::from_tensors(tensors.iter().map(|(k, v)| (k.clone(), v.clone())))?;
            let m = MoeModel::new(&self.config, &params)?;
            Ok(profile(&m, &batches)?)
        };
        let quantized = self.quantized.get(model, precision)?;
        let prof = run(&quantized)?;
        drop(quantized);
        let (error, quant_error) = if want_error {
            let reference = run(current)?;
            let error = prof.error_vs(&reference)?;
            let quant_error = if ins.stale {
                prof.error_vs(&run(model)?)?
            } else {
                error
            };
            (Some(error), Some(quant_error))
        } else {
            (None, None)
        };
        let report = ProfileReport {
            profile: prof,
            error,
            quant_error,
        };
        Ok(ProfileReply {
            participant: self.id,
            report: serde_json::to_value(&report).map_err(|e| Error::Config(e.to_string()))?,
            cost: WorkCost {
                quant_flops: 2.0 * t.active_params * tokens as f64,
                ..WorkCost::default()
            },
        })
    }

    fn expert_names(&self, id: ExpertId) -> [String; 3] {
        let a = self.config.arch;
        [Proj::Gate, Proj::Up, Proj::Down].map(|p| expert_key(a, id.layer, id.expert, p))
    }

    fn all_experts(&self) -> Vec<ExpertId> {
        let mut out = Vec::new();
        for (l, f) in self.config.layers.iter().enumerate() {
            if let Ffn::Moe(m) = f {
                out.extend((0..m.n_experts).map(|e| ExpertId {
                    layer: l,
                    expert: e,
                }));
            }
        }
        out
    }

    /// Execute `plan` (see [`fluxmoe_flux::strategy`]) on the global model.
    pub(crate) fn run_plan(
        &self,
        ins: &TrainIns,
        plan: &Plan,
        global: &Global,
    ) -> Result<TrainReply> {
        let t = &self.training;
        let trainable: BTreeSet<&str> = ins.trainable.iter().map(String::as_str).collect();
        let mut params =
            ParamStore::from_tensors(global.iter().map(|(k, v)| (k.clone(), v.clone())))?;
        params.set_trainable(|n| trainable.contains(n))?;
        if let Some(p) = plan.requantize {
            // FMQ stores its experts quantized from the start.
            for (name, var) in params.trainable() {
                let q = quantized_copy(&BTreeMap::from([(name, var.as_tensor().clone())]), p)?;
                if let Some(q) = q.into_values().next() {
                    var.set(&q)?;
                }
            }
        }
        let mut model = MoeModel::new(&self.config, &params)?;
        let all = self.all_experts();

        if !plan.kept.is_empty() {
            let kept: BTreeSet<ExpertId> = plan.kept.iter().copied().collect();
            let layers: BTreeSet<usize> = all.iter().map(|e| e.layer).collect();
            for l in layers {
                let keep: Vec<bool> = all
                    .iter()
                    .filter(|e| e.layer == l)
                    .map(|e| kept.contains(e))
                    .collect();
                model.set_kept_experts(l, &keep)?;
            }
        }
        let mut customised = Customised::default();
        if plan.method == Method::Flux {
            if let Some(profile) = &plan.profile {
                customised = customise(
                    &mut model,
                    global,
                    &plan.roles,
                    profile,
                    plan.b_non,
                    &plan.merge,
                    plan.seed,
                )?;
            }
        }

        // Variables of each tuned expert, for FLUX's per-sample gradient norms.
        let vars: BTreeMap<String, Var> = params.trainable().into_iter().collect();
        let mut expert_vars: BTreeMap<ExpertId, Vec<Var>> = BTreeMap::new();
        let mut tuned = plan.roles.tuning.clone();
        if plan.exploration == Exploration::Backprop {
            tuned.extend(plan.roles.exploration.iter().copied());
        }
        if plan.method == Method::Flux {
            for &e in &tuned {
                let vs: Vec<Var> = self
                    .expert_names(e)
                    .iter()
                    .filter_map(|n| vars.get(n).cloned())
                    .collect();
                if !vs.is_empty() {
                    expert_vars.insert(e, vs);
                }
            }
        }
        let mut opt = AdamW::new(params.trainable(), t.adamw)?;
        let stream = u64::from(self.id.0) << 16;
        let mut rng = rand::rngs::StdRng::seed_from_u64(derive_seed(t.seed, ins.round, stream));
        // Data selection (FLUX option): train only on samples with a token routed to
        // a tuned expert, found by one forward pass of the customised model.
        let mut pool: Vec<usize> = (0..self.shard.len()).collect();
        let mut selection_tokens = 0usize;
        if plan.data_selection && !tuned.is_empty() {
            let wanted: BTreeSet<ExpertId> = tuned.iter().copied().collect();
            let mut kept = Vec::new();
            for chunk in pool.chunks(t.batch_size.max(1)) {
                let items: Vec<Encoded> = chunk.iter().map(|&i| self.shard[i].clone()).collect();
                let b = to_batch(&items, t.pad_id)?;
                selection_tokens += b.input_ids.elem_count();
                let (_, traces) =
                    model.forward_hidden(&b.input_ids, b.attention_mask.as_ref(), true)?;
                let mask: Vec<Vec<u32>> = b
                    .attention_mask
                    .as_ref()
                    .map(|m| m.to_vec2())
                    .transpose()?
                    .unwrap_or_default();
                let width = mask.first().map_or(0, Vec::len);
                let mut hit = vec![false; chunk.len()];
                for trace in &traces {
                    let idx: Vec<Vec<u32>> = trace.routing.topk_idx.to_vec2()?;
                    for (row, h) in hit.iter_mut().enumerate() {
                        for pos in 0..width {
                            if mask[row][pos] != 0
                                && idx[row * width + pos].iter().any(|&e| {
                                    wanted.contains(&ExpertId {
                                        layer: trace.layer,
                                        expert: e as usize,
                                    })
                                })
                            {
                                *h = true;
                            }
                        }
                    }
                }
                kept.extend(chunk.iter().zip(hit).filter(|(_, h)| *h).map(|(&i, _)| i));
            }
            if kept.is_empty() {
                tracing::warn!(participant = %self.id, "no sample reaches a tuned expert; training on all");
            } else {
                pool = kept;
            }
        }
        let mut steps = Vec::with_capacity(t.local_steps);
        let mut last_items = Vec::new();
        for _ in 0..t.local_steps {
            let items: Vec<Encoded> = (0..t.batch_size.min(pool.len()))
                .map(|_| self.shard[pool[rng.gen_range(0..pool.len())]].clone())
                .collect();
            // FLUX needs per-sample gradient norms (Eq. 3), so each sample is its own
            // forward/backward; the baselines need only the step's gradient, which one
            // batched pass gives (the same token-mean gradient, less time and memory).
            let samples = if plan.method == Method::Flux {
                items
                    .iter()
                    .map(|e| {
                        Ok(Sample {
                            batch: to_batch(std::slice::from_ref(e), t.pad_id)?,
                            targets: targets(e),
                        })
                    })
                    .collect::<Result<Vec<_>>>()?
            } else {
                vec![Sample {
                    batch: to_batch(&items, t.pad_id)?,
                    targets: items.iter().map(targets).sum(),
                }]
            };
            steps.push(samples);
            last_items = items;
        }
        let prox = Proximal {
            mu: t.fedprox_mu,
            anchor: global,
        };
        // The participant and round of the trainer's per-step events.
        let _span =
            tracing::debug_span!("local", participant = %self.id, round = %ins.round).entered();
        // A running gradient sum of the tuned experts fits where the memory model
        // counted a full batch's activations and the per-sample passes hold one
        // sample's: then the step's gradient needs no second backward pass.
        let tuned_bytes: usize = vars.values().map(|v| 4 * v.elem_count()).sum();
        let accumulate = tuned_bytes as u64 <= t.gradient_sum_bytes;
        let started = std::time::Instant::now();
        let outcome = train_steps(
            &model,
            &mut opt,
            &steps,
            &expert_vars,
            t.max_grad_norm,
            accumulate,
            plan.requantize,
            Some(&prox),
        )?;
        let train_s = started.elapsed().as_secs_f64();

        // Utilities (FLUX): tuned experts from their per-sample gradients, explorers
        // from zeroth-order probes on the last step's samples.
        let mut utilities = Vec::new();
        let mut zo_tokens = 0usize;
        if plan.method == Method::Flux {
            let samples_of = |e: &ExpertId| -> usize {
                plan.profile
                    .as_ref()
                    .and_then(|p| p.layers.iter().find(|l| l.layer == e.layer))
                    .map_or(0, |l| l.samples[e.expert] as usize)
            };
            for (e, sq) in &outcome.sq_grad_norms {
                utilities.push((*e, utility(samples_of(e), sq)));
            }
            if plan.exploration == Exploration::ZerothOrder && !plan.roles.exploration.is_empty() {
                let explorers = plan
                    .roles
                    .exploration
                    .iter()
                    .map(|&e| Ok((e, expert_tensors(&self.config, global, e)?)))
                    .collect::<Result<Vec<(ExpertId, [Tensor; 3])>>>()?;
                let batch = to_batch(&last_items, t.pad_id)?;
                let started = std::time::Instant::now();
                let probes = zo_probe(&model, &explorers, &batch, plan.zo_sigma, plan.seed)?;
                // Charged as the whole-model forwards the probes amount to: each
                // perturbed forward runs only the positions and layers it can change.
                let layers = self.config.layers.len().max(1);
                zo_tokens = probes.layer_positions.div_ceil(layers);
                tracing::debug!(
                    train_s,
                    tuned = expert_vars.len(),
                    probe_s = started.elapsed().as_secs_f64(),
                    explorers = explorers.len(),
                    probe_tokens = batch.input_ids.elem_count(),
                    forward_tokens = zo_tokens,
                    "local work (measured)"
                );
                for (e, sq) in probes.sq_grad_norms {
                    utilities.push((e, utility(samples_of(&e), &sq)));
                }
            }
        }

        let mut deltas = BTreeMap::new();
        for (name, var) in params.trainable() {
            // Detached: a tensor computed from a Var keeps the Var (all trained
            // weights) alive for backprop, which would double what replies hold.
            deltas.insert(name.clone(), (var.as_tensor() - &global[&name])?.detach());
        }
        // Per-expert aggregation weight: tokens routed to the expert in the profile
        // (FLUX, FMES), else the target tokens trained on.
        let trained_targets: usize = steps.iter().flatten().map(|s| s.targets).sum();
        let mut weights = BTreeMap::new();
        for &e in &tuned {
            let n = plan
                .profile
                .as_ref()
                .and_then(|p| p.layers.iter().find(|l| l.layer == e.layer))
                .map_or(trained_targets as u64, |l| l.slots[e.expert]);
            for name in self.expert_names(e) {
                if deltas.contains_key(&name) {
                    weights.insert(name, n.max(1) as f64);
                }
            }
        }
        // Downloads: every expert the customised model is built from, unless the
        // participant's copy already has it.
        let used: Vec<&Tensor> = all
            .iter()
            .filter(|e| plan.kept.is_empty() || plan.kept.contains(e))
            .flat_map(|&e| self.expert_names(e))
            .filter(|n| ins.must_download(n))
            .filter_map(|n| global.get(&n))
            .collect();
        let steps_n = t.local_steps as u64;
        let tuned_elems: usize = vars.values().map(|v| v.elem_count()).sum();
        let requant_flops = if plan.requantize.is_some() {
            // quantize + dequantize ≈ 8 operations per element per step
            8.0 * tuned_elems as f64 * steps_n as f64
        } else {
            0.0
        };
        // FMQ stores and ships its experts quantized: bytes at the quantized width.
        let scale = |bytes: u64| match plan.requantize {
            Some(p) => (bytes as f64 * p.bits() / 32.0).ceil() as u64,
            None => bytes,
        };
        let cost = WorkCost {
            flops: 6.0 * t.active_params * outcome.tokens as f64
                + 2.0 * t.active_params * (zo_tokens + selection_tokens) as f64
                + customised.flops
                + requant_flops,
            quant_flops: 0.0,
            pcie_bytes: plan.pcie_bytes_per_step * steps_n,
            up_bytes: scale(tensors_bytes(deltas.values())),
            down_bytes: scale(tensors_bytes(used)),
        };
        let mut metrics = BTreeMap::from([
            ("train_loss".to_string(), outcome.loss),
            ("tuned_experts".to_string(), plan.roles.tuning.len() as f64),
            ("explorers".to_string(), plan.roles.exploration.len() as f64),
            ("merged_experts".to_string(), customised.merged as f64),
            ("train_pool".to_string(), pool.len() as f64),
        ]);
        if let Some((total, quant)) = self.last_profile_error.get() {
            metrics.insert("profile_error".to_string(), total);
            metrics.insert("profile_quant_error".to_string(), quant);
        }
        let report = PlanReport { utilities };
        Ok(TrainReply {
            participant: self.id,
            deltas,
            weights,
            metrics,
            cost,
            report: serde_json::to_value(&report).map_err(|e| Error::Config(e.to_string()))?,
        })
    }
}
