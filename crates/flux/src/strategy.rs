//! FLUX and its baselines as one `fluxmoe-fed` [`Strategy`]: [`ExpertStrategy`].
//!
//! Per round (METHOD.md "One round r"): sample participants; ask them to profile
//! (FLUX: quantized, stale by default; FMES: the same profile, to rank experts); turn
//! each participant's budget, profile and utility table into a [`Plan`] (roles, merged
//! slots, kept experts, offloaded bytes, re-quantization), sent in the instruction;
//! aggregate the returned expert deltas per expert, weighted by routed token counts,
//! and fold the reported utilities into the participant's table.
//!
//! The participant side (executing a plan on a model) lives with the model runtime.

use std::collections::{BTreeMap, BTreeSet};

use fluxmoe_fed::aggregate::{mean_assigned_deltas, AggregateConfig};
use fluxmoe_fed::server_opt::{ServerOptimizer, ServerOptimizerConfig, ServerOptimizerState};
use fluxmoe_fed::wire::{Failure, ProfileIns, ProfileReply, Scalar, TrainIns, TrainReply};
use fluxmoe_fed::{DeviceProfile, Global, ParticipantId, Round, Strategy, TrainOutcome};
use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::budget::{fleet_budgets, Budget, MemoryInputs, MemoryModel, TuneCap};
use crate::customise::MergeOptions;
use crate::error::{Error, Result};
use crate::local::Exploration;
use crate::profile::{Precision, Profile};
use crate::roles::{assign_roles, EpsilonSchedule, ExpertId, Roles, Selection, UtilityTable};

/// Which method a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Profiling, roles, layer-aware merging (METHOD.md).
    Flux,
    /// Offloading: all experts tuned, the overflow moved over PCIe every step.
    Fmd,
    /// Quantized: all experts tuned in INT4, re-quantized after every step.
    Fmq,
    /// Expert selection: keep the most frequent experts that fit, drop the rest.
    Fmes,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Flux => "flux",
            Method::Fmd => "fmd",
            Method::Fmq => "fmq",
            Method::Fmes => "fmes",
        }
    }
}

/// Every option of METHOD.md marked [ours], with its default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FluxOptions {
    pub profile_precision: Precision,
    pub stale_profiling: bool,
    /// Cap on the tokens profiled per participant and round.
    pub profile_tokens: usize,
    /// Also profile at full precision and report the profiling error (instrumentation:
    /// costs measured time, not virtual time).
    pub report_profile_error: bool,
    pub slot_rule: crate::merge::SlotRule,
    pub pca_dim: usize,
    pub alpha: crate::customise::Alpha,
    pub kmeans_iters: usize,
    /// Floor added to each layer's activation variance in Eq. 1.
    pub var_floor: f64,
    pub eps0: f64,
    pub eps_delta: f64,
    pub eps_max: f64,
    /// A constant ε instead of the growing schedule (ablation).
    pub eps_fixed: Option<f64>,
    pub utility_decay: f64,
    pub selection: Selection,
    pub exploration: Exploration,
    pub zo_sigma: f64,
    /// Train only on the local samples routed to a tuning expert (METHOD.md step 6).
    pub data_selection: bool,
    pub tuning_factor: f64,
    /// What bounds `B_tune` besides memory (FLUX only).
    pub tune_cap: TuneCap,
    /// Runtime overhead held on every device (framework, kernels, allocator), MiB.
    pub overhead_mib: f64,
}

impl Default for FluxOptions {
    fn default() -> Self {
        let eps = EpsilonSchedule::default();
        FluxOptions {
            profile_precision: Precision::Int4,
            stale_profiling: true,
            profile_tokens: 4096,
            report_profile_error: true,
            slot_rule: MergeOptions::default().slot_rule,
            pca_dim: MergeOptions::default().pca_dim,
            alpha: MergeOptions::default().alpha,
            kmeans_iters: MergeOptions::default().kmeans_iters,
            var_floor: MergeOptions::default().var_floor,
            eps0: eps.eps0,
            eps_delta: eps.delta,
            eps_max: eps.eps_max,
            eps_fixed: eps.fixed,
            utility_decay: crate::roles::DEFAULT_UTILITY_DECAY,
            selection: Selection::EpsilonGreedy,
            exploration: Exploration::ZerothOrder,
            zo_sigma: 1e-3,
            data_selection: false,
            tuning_factor: MemoryModel::default().tuning_factor,
            tune_cap: TuneCap::None,
            overhead_mib: 256.0,
        }
    }
}

impl FluxOptions {
    pub fn epsilon(&self) -> EpsilonSchedule {
        EpsilonSchedule {
            eps0: self.eps0,
            delta: self.eps_delta,
            eps_max: self.eps_max,
            fixed: self.eps_fixed,
        }
    }

    pub fn merge(&self) -> MergeOptions {
        MergeOptions {
            slot_rule: self.slot_rule,
            pca_dim: self.pca_dim,
            alpha: self.alpha,
            kmeans_iters: self.kmeans_iters,
            var_floor: self.var_floor,
        }
    }

    /// The cap on `B_tune` a method plans with: [`Self::tune_cap`] under FLUX; the
    /// baselines size their experts by memory alone.
    pub fn tune_cap_for(&self, method: Method) -> TuneCap {
        match method {
            Method::Flux => self.tune_cap,
            Method::Fmd | Method::Fmq | Method::Fmes => TuneCap::None,
        }
    }

    pub fn memory_model(&self) -> MemoryModel {
        MemoryModel {
            tuning_factor: self.tuning_factor,
            ..MemoryModel::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.epsilon().validate()?;
        crate::roles::validate_decay(self.utility_decay)?;
        self.memory_model().validate()?;
        if !(self.overhead_mib.is_finite() && self.overhead_mib >= 0.0) {
            return Err(Error::config("overhead_mib", "must be >= 0"));
        }
        if self.profile_tokens == 0 {
            return Err(Error::config("profile_tokens", "must be >= 1"));
        }
        if self.pca_dim == 0 {
            return Err(Error::config("pca_dim", "must be >= 1"));
        }
        if !(self.zo_sigma.is_finite() && self.zo_sigma > 0.0) {
            return Err(Error::config(
                "zo_sigma",
                format!("must be > 0, got {}", self.zo_sigma),
            ));
        }
        Ok(())
    }
}

/// What one participant does in one round; travels in [`TrainIns::params`] under
/// [`PLAN_KEY`] as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub method: Method,
    pub roles: Roles,
    /// Merged slots over all layers (FLUX); 0 = no merging.
    pub b_non: usize,
    /// Experts routing may choose (FMES); empty = all.
    pub kept: Vec<ExpertId>,
    /// Bytes moved host ↔ device per optimizer step (FMD).
    pub pcie_bytes_per_step: u64,
    /// Re-quantize tuned experts after every step (FMQ).
    pub requantize: Option<Precision>,
    /// The profile the roles were chosen from (FLUX merging reads f and ā from it).
    pub profile: Option<Profile>,
    pub merge: MergeOptions,
    pub exploration: Exploration,
    pub zo_sigma: f64,
    /// Train only on samples routed to a tuned expert.
    #[serde(default)]
    pub data_selection: bool,
    pub seed: u64,
}

pub const PLAN_KEY: &str = "expert_plan";

impl Plan {
    pub fn from_ins(ins: &TrainIns) -> Result<Option<Plan>> {
        match ins.params.get(PLAN_KEY) {
            None => Ok(None),
            Some(Scalar::Str(json)) => serde_json::from_str(json)
                .map(Some)
                .map_err(|e| Error::Input(format!("round {}: bad expert plan: {e}", ins.round))),
            Some(other) => Err(Error::Input(format!(
                "round {}: expert plan must be a JSON string, got {other:?}",
                ins.round
            ))),
        }
    }
}

/// One participant's roles in a round, as recorded (see [`RoundReport`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundRoles {
    pub tuning: Vec<ExpertId>,
    pub exploration: Vec<ExpertId>,
    /// Experts routing may not choose (FMES).
    pub dropped: Vec<ExpertId>,
    /// Merged slots available (FLUX); the other experts are merged into them.
    pub b_non: usize,
}

/// What [`ExpertStrategy`] records per round: roles per participant and the mean
/// activation share f of each expert over this round's profiles (per MoE layer).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundReport {
    pub roles: BTreeMap<u32, RoundRoles>,
    /// `(layer, f per expert)`, averaged over the participants that profiled.
    pub activation: Vec<(usize, Vec<f64>)>,
}

/// What a participant reports back besides its deltas.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PlanReport {
    /// Utility (Eq. 3) of each tuned or explored expert.
    pub utilities: Vec<(ExpertId, f64)>,
}

/// Profiling request parameters travel in [`ProfileIns::params`].
pub const PROFILE_TOKENS_KEY: &str = "profile_tokens";
pub const PROFILE_PRECISION_KEY: &str = "profile_precision";
pub const PROFILE_ERROR_KEY: &str = "report_profile_error";

/// A participant's profiling report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileReport {
    pub profile: Profile,
    /// Error vs the full-precision profile of the current global on the same data
    /// (quantization and staleness together), if measured.
    pub error: Option<f64>,
    /// Error vs the full-precision profile of the model that was profiled
    /// (quantization alone), if measured.
    pub quant_error: Option<f64>,
}

/// Static facts the strategy plans with.
#[derive(Clone, Debug)]
pub struct ExpertModel {
    /// Every routed expert, ascending.
    pub experts: Vec<ExpertId>,
    /// The three tensor names of each expert.
    pub keys: BTreeMap<ExpertId, [String; 3]>,
    pub memory: MemoryInputs,
    /// Experts each token selects (FMES keeps at least this many per layer).
    pub top_k: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct StrategyState {
    server_optimizer: Option<ServerOptimizerState>,
    /// Utility tables per participant id.
    tables: BTreeMap<u32, UtilityTable>,
}

pub struct ExpertStrategy {
    method: Method,
    opts: FluxOptions,
    per_round: usize,
    model: ExpertModel,
    budgets: BTreeMap<ParticipantId, Budget>,
    aggregate: AggregateConfig,
    optimizer: ServerOptimizer,
    params: BTreeMap<String, Scalar>,
    memory: BTreeMap<ParticipantId, u64>,
    tables: BTreeMap<ParticipantId, UtilityTable>,
    // This round only.
    plans: BTreeMap<ParticipantId, RoundRoles>,
    sampled: Vec<ParticipantId>,
    profiles: BTreeMap<ParticipantId, Profile>,
    assigned: BTreeMap<ParticipantId, BTreeSet<String>>,
}

impl ExpertStrategy {
    /// `devices` gives each participant's device (its memory and uplink set the budget).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        method: Method,
        opts: FluxOptions,
        per_round: usize,
        model: ExpertModel,
        devices: &BTreeMap<ParticipantId, DeviceProfile>,
        aggregate: AggregateConfig,
        params: BTreeMap<String, Scalar>,
    ) -> Result<Self> {
        opts.validate()?;
        if per_round == 0 {
            return Err(Error::config("per_round", "must be >= 1"));
        }
        if model.experts.is_empty() {
            return Err(Error::Input(format!(
                "method {} needs an MoE model; this one has no routed experts",
                method.name()
            )));
        }
        let cap = opts.tune_cap_for(method);
        let mut budgets = BTreeMap::new();
        for (id, budget) in fleet_budgets(devices, &model.memory, &opts.memory_model(), cap) {
            let budget = budget.map_err(|e| Error::Budget(format!("participant {id}: {e}")));
            match (method, budget) {
                (_, Ok(b)) => {
                    budgets.insert(id, b);
                }
                // Offloading and quantized training do not need the budget to fit.
                (Method::Fmd | Method::Fmq, Err(_)) => {}
                (_, Err(e)) => return Err(e),
            }
        }
        Ok(ExpertStrategy {
            method,
            opts,
            per_round,
            model,
            budgets,
            aggregate,
            optimizer: ServerOptimizer::new(ServerOptimizerConfig::fedavg())?,
            params,
            memory: devices
                .iter()
                .map(|(&id, d)| (id, d.memory_bytes))
                .collect(),
            tables: BTreeMap::new(),
            plans: BTreeMap::new(),
            sampled: Vec::new(),
            profiles: BTreeMap::new(),
            assigned: BTreeMap::new(),
        })
    }

    /// Use `cfg` instead of FedAvg to turn each round's mean deltas into a step.
    pub fn with_server_optimizer(mut self, cfg: ServerOptimizerConfig) -> Result<Self> {
        self.optimizer = ServerOptimizer::new(cfg)?;
        Ok(self)
    }

    /// The budget of each participant (empty for participants where it does not fit,
    /// under FMD and FMQ).
    pub fn budgets(&self) -> &BTreeMap<ParticipantId, Budget> {
        &self.budgets
    }

    fn budget_of(&self, id: ParticipantId) -> Result<&Budget> {
        self.budgets.get(&id).ok_or_else(|| {
            Error::Budget(format!(
                "participant {id} has no memory budget (its device memory was not given)"
            ))
        })
    }

    fn needs_profile(&self) -> bool {
        matches!(self.method, Method::Flux | Method::Fmes)
    }

    fn sample(&mut self, pool: &[ParticipantId], rng: &mut StdRng) -> Result<()> {
        let mut pool = pool.to_vec();
        pool.sort();
        pool.dedup();
        if self.per_round > pool.len() {
            return Err(Error::config(
                "per_round",
                format!(
                    "{} exceeds the pool of {} participants",
                    self.per_round,
                    pool.len()
                ),
            ));
        }
        let mut chosen: Vec<ParticipantId> =
            rand::seq::index::sample(rng, pool.len(), self.per_round)
                .into_iter()
                .map(|i| pool[i])
                .collect();
        chosen.sort();
        self.sampled = chosen;
        Ok(())
    }

    fn plan_for(&mut self, id: ParticipantId, round: Round, rng: &mut StdRng) -> Result<Plan> {
        let all = &self.model.experts;
        let profile = self.profiles.get(&id).cloned();
        let seed = rng.gen();
        let mut plan = Plan {
            method: self.method,
            roles: Roles {
                tuning: Vec::new(),
                exploration: Vec::new(),
            },
            b_non: 0,
            kept: Vec::new(),
            pcie_bytes_per_step: 0,
            requantize: None,
            profile: None,
            merge: self.opts.merge(),
            exploration: self.opts.exploration,
            zo_sigma: self.opts.zo_sigma,
            data_selection: self.method == Method::Flux && self.opts.data_selection,
            seed,
        };
        match self.method {
            Method::Flux => {
                let budget = self.budget_of(id)?.clone();
                let profile = profile
                    .ok_or_else(|| Error::Input(format!("participant {id} sent no profile")))?;
                let table = match self.tables.get(&id) {
                    Some(t) if !t.is_empty() => t.clone(),
                    _ => {
                        let freqs = frequencies_by_expert(&profile);
                        UtilityTable::init_from_frequencies(&freqs, round.0 as usize)?
                    }
                };
                self.tables.insert(id, table.clone());
                let eps = self.opts.epsilon().at(round.0 as usize - 1);
                plan.roles = assign_roles(
                    all,
                    &table,
                    round.0 as usize,
                    self.opts.utility_decay,
                    budget.b_tune,
                    eps,
                    self.opts.selection,
                    rng,
                );
                plan.b_non = budget.b_non;
                plan.profile = Some(profile);
            }
            Method::Fmes => {
                let budget = self.budget_of(id)?.clone();
                let profile = profile
                    .ok_or_else(|| Error::Input(format!("participant {id} sent no profile")))?;
                plan.kept = most_frequent_per_layer(&profile, budget.b_tune, self.model.top_k);
                plan.roles.tuning = plan.kept.clone();
            }
            Method::Fmd => {
                plan.roles.tuning = all.clone();
                plan.pcie_bytes_per_step = offload_bytes_per_step(
                    &self.model.memory,
                    &self.opts.memory_model(),
                    all.len(),
                    self.memory.get(&id).copied().unwrap_or(0),
                )?;
            }
            Method::Fmq => {
                plan.roles.tuning = all.clone();
                plan.requantize = Some(Precision::Int4);
            }
        }
        Ok(plan)
    }

    fn expert_names(&self, experts: &[ExpertId]) -> Vec<String> {
        experts
            .iter()
            .flat_map(|e| self.model.keys[e].iter().cloned())
            .collect()
    }
}

/// Bytes FMD moves between host and device memory per optimizer step on a device
/// offering `memory` bytes: it tunes all `experts`, and what does not fit beside the
/// fixed part (their weights, gradients and optimizer state) goes out and back once.
pub fn offload_bytes_per_step(
    inputs: &MemoryInputs,
    model: &MemoryModel,
    experts: usize,
    memory: u64,
) -> Result<u64> {
    let need =
        inputs.fixed_bytes()? + experts as u64 * model.tuning_expert_bytes(inputs.expert_bytes);
    Ok(2 * need.saturating_sub(memory))
}

/// The [`RoundReport`] of a round in which each of `participants` tuned every one of
/// `experts` (FMD and FMQ: no roles, no dropped experts, no profiles).
pub fn all_tuning_report(participants: &[ParticipantId], experts: &[ExpertId]) -> RoundReport {
    RoundReport {
        roles: participants
            .iter()
            .map(|id| {
                (
                    id.0,
                    RoundRoles {
                        tuning: experts.to_vec(),
                        ..RoundRoles::default()
                    },
                )
            })
            .collect(),
        activation: Vec::new(),
    }
}

/// `(expert, f_e)` for every expert of a profile.
pub fn frequencies_by_expert(profile: &Profile) -> Vec<(ExpertId, f64)> {
    profile
        .frequencies()
        .iter()
        .zip(&profile.layers)
        .flat_map(|(f, l)| {
            f.iter().enumerate().map(move |(e, &v)| {
                (
                    ExpertId {
                        layer: l.layer,
                        expert: e,
                    },
                    v,
                )
            })
        })
        .collect()
}

/// FMES's choice: `budget` experts in total, spread evenly over layers (at least
/// `top_k` per layer, so routing can still fill its top-k), each layer keeping its most
/// frequent ones (ties by lower index).
pub fn most_frequent_per_layer(profile: &Profile, budget: usize, top_k: usize) -> Vec<ExpertId> {
    let n_layers = profile.layers.len().max(1);
    let freqs = profile.frequencies();
    let mut kept = Vec::new();
    for (i, (l, f)) in profile.layers.iter().zip(&freqs).enumerate() {
        let per_layer = budget / n_layers + usize::from(i < budget % n_layers);
        let mut order: Vec<usize> = (0..f.len()).collect();
        order.sort_by(|&a, &b| f[b].total_cmp(&f[a]).then(a.cmp(&b)));
        for &e in order.iter().take(per_layer.max(top_k).clamp(1, f.len())) {
            kept.push(ExpertId {
                layer: l.layer,
                expert: e,
            });
        }
    }
    kept.sort();
    kept
}

impl Strategy for ExpertStrategy {
    fn name(&self) -> &str {
        self.method.name()
    }

    fn summary(&self) -> String {
        format!(
            "{}: {} per round, {} experts, budgets {}",
            self.method.name(),
            self.per_round,
            self.model.experts.len(),
            self.budgets
                .iter()
                .map(|(id, b)| format!("p{id}: B_tune {} B_non {}", b.b_tune, b.b_non))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    fn configure_profile(
        &mut self,
        round: Round,
        _global: &Global,
        pool: &[ParticipantId],
        rng: &mut StdRng,
    ) -> fluxmoe_fed::Result<Vec<(ParticipantId, ProfileIns)>> {
        self.sample(pool, rng).map_err(fed_err)?;
        self.profiles.clear();
        if !self.needs_profile() {
            return Ok(Vec::new());
        }
        let precision = if self.method == Method::Flux {
            self.opts.profile_precision
        } else {
            Precision::Full
        };
        let ins = ProfileIns {
            round,
            stale: self.method == Method::Flux && self.opts.stale_profiling,
            params: BTreeMap::from([
                (
                    PROFILE_TOKENS_KEY.to_string(),
                    Scalar::Int(self.opts.profile_tokens as i64),
                ),
                (
                    PROFILE_PRECISION_KEY.to_string(),
                    Scalar::Str(precision.name().to_string()),
                ),
                (
                    PROFILE_ERROR_KEY.to_string(),
                    Scalar::Bool(self.method == Method::Flux && self.opts.report_profile_error),
                ),
            ]),
        };
        Ok(self.sampled.iter().map(|&id| (id, ins.clone())).collect())
    }

    fn receive_profiles(
        &mut self,
        round: Round,
        replies: Vec<ProfileReply>,
        failures: Vec<Failure>,
    ) -> fluxmoe_fed::Result<()> {
        for f in failures {
            tracing::warn!(%round, participant = %f.participant, reason = %f.reason, "no profile");
        }
        for reply in replies {
            let report: ProfileReport = serde_json::from_value(reply.report).map_err(|e| {
                fluxmoe_fed::Error::json(format!("profile of participant {}", reply.participant), e)
            })?;
            self.profiles.insert(reply.participant, report.profile);
        }
        Ok(())
    }

    fn configure_train(
        &mut self,
        round: Round,
        _global: &Global,
        _pool: &[ParticipantId],
        rng: &mut StdRng,
    ) -> fluxmoe_fed::Result<Vec<(ParticipantId, TrainIns)>> {
        self.assigned.clear();
        self.plans.clear();
        let mut out = Vec::new();
        for id in self.sampled.clone() {
            if self.needs_profile() && !self.profiles.contains_key(&id) {
                continue; // its profiling failed: it sits this round out
            }
            let plan = self.plan_for(id, round, rng).map_err(fed_err)?;
            let mut trainable = plan.roles.tuning.clone();
            if plan.exploration == Exploration::Backprop {
                trainable.extend(plan.roles.exploration.iter().copied());
            }
            let names = self.expert_names(&trainable);
            self.assigned.insert(id, names.iter().cloned().collect());
            let dropped = if plan.kept.is_empty() {
                Vec::new()
            } else {
                let kept: BTreeSet<ExpertId> = plan.kept.iter().copied().collect();
                self.model
                    .experts
                    .iter()
                    .filter(|e| !kept.contains(e))
                    .copied()
                    .collect()
            };
            self.plans.insert(
                id,
                RoundRoles {
                    tuning: plan.roles.tuning.clone(),
                    exploration: plan.roles.exploration.clone(),
                    dropped,
                    b_non: plan.b_non,
                },
            );
            let mut params = self.params.clone();
            let json = serde_json::to_string(&plan)
                .map_err(|e| fluxmoe_fed::Error::json("expert plan", e))?;
            params.insert(PLAN_KEY.to_string(), Scalar::Str(json));
            out.push((
                id,
                TrainIns {
                    round,
                    trainable: names,
                    params,
                    changed: None,
                },
            ));
        }
        Ok(out)
    }

    fn aggregate_train(
        &mut self,
        round: Round,
        global: &Global,
        replies: Vec<TrainReply>,
        _failures: Vec<Failure>,
    ) -> fluxmoe_fed::Result<TrainOutcome> {
        let unassigned = |reply: &TrainReply| {
            let allowed = self.assigned.get(&reply.participant);
            reply
                .deltas
                .keys()
                .find(|n| !allowed.is_some_and(|a| a.contains(*n)))
                .map(|name| format!("delta for `{name}`, which it was not assigned"))
        };
        let (means, report) = mean_assigned_deltas(global, &replies, &self.aggregate, unassigned)?;
        let rejected = report.rejected;
        for reply in replies
            .iter()
            .filter(|r| report.accepted.contains(&r.participant))
        {
            if reply.report.is_null() {
                continue;
            }
            let rep: PlanReport = serde_json::from_value(reply.report.clone()).map_err(|e| {
                fluxmoe_fed::Error::json(format!("report of participant {}", reply.participant), e)
            })?;
            let table = self.tables.entry(reply.participant).or_default();
            for (e, u) in rep.utilities {
                table.observe(e, u, round.0 as usize).map_err(fed_err)?;
            }
        }
        let mut cost = report.cost;
        let next = if report.accepted.is_empty() {
            None
        } else {
            let (next, step_cost) = self.optimizer.step(global, &means)?;
            cost += step_cost;
            Some(next)
        };
        Ok(TrainOutcome {
            global: next,
            accepted: report.accepted,
            rejected,
            cost,
        })
    }

    fn round_report(&self) -> serde_json::Value {
        let mut sums: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
        for p in self.profiles.values() {
            for (l, f) in p.layers.iter().zip(p.frequencies()) {
                let acc = sums.entry(l.layer).or_insert_with(|| vec![0.0; f.len()]);
                for (a, v) in acc.iter_mut().zip(f) {
                    *a += v;
                }
            }
        }
        let n = self.profiles.len().max(1) as f64;
        let report = RoundReport {
            roles: self.plans.iter().map(|(id, r)| (id.0, r.clone())).collect(),
            activation: sums
                .into_iter()
                .map(|(l, f)| (l, f.into_iter().map(|v| v / n).collect()))
                .collect(),
        };
        serde_json::to_value(report).unwrap_or(serde_json::Value::Null)
    }

    fn state(&self) -> fluxmoe_fed::Result<serde_json::Value> {
        let st = StrategyState {
            server_optimizer: Some(self.optimizer.state()?),
            tables: self
                .tables
                .iter()
                .map(|(id, t)| (id.0, t.clone()))
                .collect(),
        };
        serde_json::to_value(st).map_err(|e| fluxmoe_fed::Error::json("expert strategy state", e))
    }

    fn load_state(&mut self, state: &serde_json::Value) -> fluxmoe_fed::Result<()> {
        let st: StrategyState = serde_json::from_value(state.clone())
            .map_err(|e| fluxmoe_fed::Error::json("expert strategy state", e))?;
        if let Some(o) = &st.server_optimizer {
            self.optimizer.load_state(o)?;
        }
        self.tables = st
            .tables
            .into_iter()
            .map(|(id, t)| (ParticipantId(id), t))
            .collect();
        Ok(())
    }
}

fn fed_err(e: Error) -> fluxmoe_fed::Error {
    match e {
        Error::Fed(e) => e,
        Error::Config { field, msg } => fluxmoe_fed::Error::config(field, msg),
        other => fluxmoe_fed::Error::State(other.to_string()),
    }
}
