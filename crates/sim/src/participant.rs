//! [`ModelParticipant`]: local training of an [`MoeModel`] on one data shard, as the
//! runtime's `Participant`.
//!
//! Per instruction: build the model from the global tensors (shared handles, no copy),
//! make exactly the instructed tensors trainable, run `local_steps` AdamW steps on
//! batches drawn (seeded by run seed, round and participant) from the shard, and
//! return `ΔW = W_local − W_global` per tuned tensor, weighted by the number of target
//! (loss) tokens trained on.
//! Cost charged on the virtual clock: `6 · active_params · tokens` FLOPs (forward 2,
//! backward 4) over the padded batches' positions, as the expert methods count them
//! (an FMD run is this run plus PCIe time: `derive`), download of the tuned tensors,
//! upload of the deltas.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::Device;
use fluxmoe_data::batch::{collate, Encoded};
use fluxmoe_fed::cost::tensors_bytes;
use fluxmoe_fed::seed::derive_seed;
use fluxmoe_fed::wire::{ProfileIns, ProfileReply, DEFAULT_WEIGHT_KEY};
use fluxmoe_fed::{Global, Participant, ParticipantId, TrainIns, TrainReply, WorkCost};
use fluxmoe_flux::strategy::Plan;
use fluxmoe_model::train::{train_step_prox, AdamW, AdamWConfig, Batch, Proximal};
use fluxmoe_model::{ModelConfig, MoeModel, ParamStore};
use rand::{Rng, SeedableRng};

pub struct LocalTraining {
    pub local_steps: usize,
    pub batch_size: usize,
    pub adamw: AdamWConfig,
    pub max_grad_norm: f64,
    /// FedProx μ (0 = off).
    pub fedprox_mu: f64,
    pub pad_id: u32,
    pub seed: u64,
    /// Parameters a token passes through (total minus unselected routed experts).
    pub active_params: f64,
    /// What the memory model's activation term (a full batch) holds beyond one
    /// sample's activations: FLUX's per-sample passes may keep a running gradient sum
    /// of its tuning experts there instead of recomputing the step's gradient.
    pub gradient_sum_bytes: u64,
}

pub struct ModelParticipant {
    pub id: ParticipantId,
    pub config: ModelConfig,
    pub shard: Vec<Encoded>,
    pub training: LocalTraining,
    /// Profiling errors (total, quantization only) of this participant's latest
    /// profile, for its round metrics.
    pub last_profile_error: std::cell::Cell<Option<(f64, f64)>>,
    /// The quantized model profiling runs on, shared by the simulated participants.
    pub quantized: std::sync::Arc<crate::shared_quantized::SharedQuantized>,
}

impl ModelParticipant {
    fn fail(&self, e: impl std::fmt::Display) -> fluxmoe_fed::Error {
        fluxmoe_fed::Error::Participant {
            participant: self.id,
            msg: e.to_string(),
        }
    }

    fn run(&self, ins: &TrainIns, global: &Global) -> crate::Result<TrainReply> {
        if let Some(plan) = Plan::from_ins(ins)? {
            return self.run_plan(ins, &plan, global);
        }
        let t = &self.training;
        let trainable: BTreeSet<&str> = ins.trainable.iter().map(String::as_str).collect();
        let mut params =
            ParamStore::from_tensors(global.iter().map(|(k, v)| (k.clone(), v.clone())))?;
        params.set_trainable(|n| trainable.contains(n))?;
        let model = MoeModel::new(&self.config, &params)?;
        let mut opt = AdamW::new(params.trainable(), t.adamw)?;
        let stream = u64::from(self.id.0) << 16;
        let mut rng = rand::rngs::StdRng::seed_from_u64(derive_seed(t.seed, ins.round, stream));
        let (mut loss_sum, mut tokens, mut targets) = (0.0f64, 0usize, 0usize);
        for step in 0..t.local_steps {
            let items: Vec<Encoded> = (0..t.batch_size.min(self.shard.len()))
                .map(|_| self.shard[rng.gen_range(0..self.shard.len())].clone())
                .collect();
            let b = collate(&items, t.pad_id, &Device::Cpu)?;
            tokens += b.input_ids.elem_count();
            targets += items
                .iter()
                .map(|e| e.loss_mask.iter().filter(|&&m| m == 1).count())
                .sum::<usize>();
            let batch = Batch {
                input_ids: b.input_ids,
                attention_mask: Some(b.attention_mask),
                loss_mask: Some(b.loss_mask),
            };
            let prox = Proximal {
                mu: t.fedprox_mu,
                anchor: global,
            };
            let stats =
                train_step_prox(&model, &mut opt, &batch, Some(t.max_grad_norm), Some(&prox))?;
            // The loss before this step's update (RUST_LOG=debug shows the local curve).
            tracing::debug!(participant = %self.id, round = %ins.round, step, loss = stats.loss, "local step");
            loss_sum += f64::from(stats.loss);
        }
        let mut deltas = BTreeMap::new();
        for (name, var) in params.trainable() {
            // Detached: a tensor computed from a Var keeps the Var (all trained
            // weights) alive for backprop, which would double what replies hold.
            deltas.insert(name.clone(), (var.as_tensor() - &global[&name])?.detach());
        }
        let tuned: Vec<_> = ins
            .trainable
            .iter()
            .filter(|n| ins.must_download(n))
            .filter_map(|n| global.get(n))
            .collect();
        let cost = WorkCost {
            flops: 6.0 * t.active_params * tokens as f64,
            quant_flops: 0.0,
            pcie_bytes: 0,
            up_bytes: tensors_bytes(deltas.values()),
            down_bytes: tensors_bytes(tuned),
        };
        Ok(TrainReply {
            participant: self.id,
            deltas,
            weights: BTreeMap::from([(DEFAULT_WEIGHT_KEY.to_string(), targets.max(1) as f64)]),
            metrics: BTreeMap::from([("train_loss".to_string(), loss_sum / t.local_steps as f64)]),
            cost,
            report: serde_json::Value::Null,
        })
    }
}

impl Participant for ModelParticipant {
    fn train(&mut self, ins: &TrainIns, global: &Global) -> fluxmoe_fed::Result<TrainReply> {
        if self.shard.is_empty() {
            return Err(self.fail("has no training examples"));
        }
        self.run(ins, global).map_err(|e| self.fail(e))
    }

    fn profile(
        &mut self,
        ins: &ProfileIns,
        model: &Global,
        current: &Global,
    ) -> fluxmoe_fed::Result<ProfileReply> {
        if self.shard.is_empty() {
            return Err(self.fail("has no training examples"));
        }
        let reply = self
            .profile_model(ins, model, current)
            .map_err(|e| self.fail(e))?;
        let get = |k: &str| reply.report.get(k).and_then(serde_json::Value::as_f64);
        self.last_profile_error
            .set(get("error").zip(get("quant_error")));
        Ok(reply)
    }
}
