//! The round loop: the one place where a federated run happens (Flower's `Server.fit`).
//!
//! For each round r = next_round ..= n_rounds:
//! 1. `configure_train(r, global, pool, rng_r)` with `rng_r` seeded from `(seed, r)`;
//! 2. `send_and_receive(instructions, global, deadline)`;
//! 3. `aggregate_train(r, global, replies, failures)`; `None` keeps the model;
//! 4. clock += `train_s + aggregate_s`, where `train_s` = max over working participants
//!    of their virtual time (capped at the deadline: the server stops waiting there)
//!    and `aggregate_s` = the strategy's aggregation work on the server profile;
//! 5. every `eval_every` rounds, the caller's [`Evaluator`] scores the new model; the
//!    first score that reaches the target fixes the time-to-accuracy;
//! 6. the [`RoundRecord`] goes to `on_round` (which may stamp `wall_seconds`), then
//!    into the [`History`].
//!
//! Evaluation is not charged to the virtual clock: it measures the run, it is not
//! part of it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::device::DeviceProfile;
use crate::error::{Error, Result};
use crate::history::{History, ParticipantTime, RoundRecord, TargetHit};
use crate::ids::{ParticipantId, Round};
use crate::seed::{round_rng, STREAM_SAMPLE};
use crate::state::CoordinatorState;
use crate::strategy::Strategy;
use crate::transport::{ProfileExchange, Transport};
use crate::wire::Global;

/// Scores a global model; the crate does not know what the number means.
pub trait Evaluator {
    fn evaluate(&mut self, round: Round, global: &Global) -> Result<f64>;
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetConfig {
    /// Metric value that counts as reached.
    pub value: f64,
    /// `true`: reached when metric >= value (accuracy); `false`: metric <= value (loss).
    pub higher_is_better: bool,
    /// Stop the run at the first round that reaches the target.
    pub stop: bool,
}

impl TargetConfig {
    pub fn reached(&self, metric: f64) -> bool {
        if self.higher_is_better {
            metric >= self.value
        } else {
            metric <= self.value
        }
    }
}

/// A round's training time: its slowest working participant's critical path, capped
/// at the deadline (the server stops waiting there).
pub fn train_seconds(times: &[ParticipantTime], deadline_s: Option<f64>) -> f64 {
    let deadline = deadline_s.unwrap_or(f64::INFINITY);
    times
        .iter()
        .map(|t| t.critical_s().min(deadline))
        .fold(0.0, f64::max)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Last round of the run (rounds count from 1).
    pub n_rounds: u32,
    /// Seed of every per-round generator handed to the strategy.
    pub seed: u64,
    /// Virtual seconds a round waits for replies (`None`: waits for all).
    pub deadline_s: Option<f64>,
    /// Evaluate every this many rounds (0: never).
    pub eval_every: u32,
    pub target: Option<TargetConfig>,
    /// The profile aggregation runs on.
    pub server: DeviceProfile,
    /// What a participant downloads each round.
    #[serde(default)]
    pub download: Download,
}

/// What a participant downloads before it trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Download {
    /// Every global tensor it uses, every round (it keeps nothing between rounds).
    #[default]
    Everything,
    /// Only the tensors that changed since the global its copy reflects: participants
    /// keep their copy between rounds and start from the initial model (a public
    /// checkpoint). Each instruction's [`crate::TrainIns::changed`] names them.
    Changed,
}

impl RunConfig {
    pub fn validate(&self) -> Result<()> {
        if self.n_rounds == 0 {
            return Err(Error::config("n_rounds", "must be >= 1, got 0"));
        }
        if let Some(d) = self.deadline_s {
            if !(d.is_finite() && d > 0.0) {
                return Err(Error::config(
                    "deadline_s",
                    format!("must be finite and > 0, got {d}"),
                ));
            }
        }
        if let Some(t) = &self.target {
            if !t.value.is_finite() {
                return Err(Error::config(
                    "target.value",
                    format!("must be finite, got {}", t.value),
                ));
            }
            if self.eval_every == 0 {
                return Err(Error::config(
                    "eval_every",
                    "must be >= 1 when a target is set",
                ));
            }
        }
        self.server.validate()
    }
}

/// A run in progress: the global model, the next round and the target hit so far.
pub struct Coordinator {
    cfg: RunConfig,
    global: Global,
    /// The global before the last aggregation (what stale profiling reads); after a
    /// resume, the current global until the next aggregation.
    previous: Option<Global>,
    last_aggregate_s: f64,
    next_round: Round,
    target_hit: Option<TargetHit>,
    /// Per global tensor, the last round that changed it (absent: never).
    changed_in: BTreeMap<String, u32>,
    /// Per participant, how many rounds its copy of the global reflects (absent: 0).
    held: BTreeMap<ParticipantId, u32>,
}

impl Coordinator {
    /// A fresh run starting at round 1 from `global`.
    pub fn new(cfg: RunConfig, global: Global) -> Result<Self> {
        cfg.validate()?;
        Ok(Coordinator {
            cfg,
            global,
            previous: None,
            last_aggregate_s: 0.0,
            next_round: Round::FIRST,
            target_hit: None,
            changed_in: BTreeMap::new(),
            held: BTreeMap::new(),
        })
    }

    /// Continue a run from a checkpoint: restores the strategy's state and the clock.
    pub fn resume(
        cfg: RunConfig,
        global: Global,
        state: &CoordinatorState,
        strategy: &mut dyn Strategy,
        clock: &mut dyn Clock,
    ) -> Result<Self> {
        cfg.validate()?;
        if state.seed != cfg.seed {
            return Err(Error::State(format!(
                "checkpoint was made with seed {}, the run config has seed {}",
                state.seed, cfg.seed
            )));
        }
        if state.strategy != strategy.name() {
            return Err(Error::State(format!(
                "checkpoint holds state of strategy `{}`, not `{}`",
                state.strategy,
                strategy.name()
            )));
        }
        if state.next_round.0 == 0 {
            return Err(Error::State("next_round must be >= 1, got 0".to_string()));
        }
        strategy.load_state(&state.strategy_state)?;
        clock.restore(state.clock_s)?;
        Ok(Coordinator {
            cfg,
            global,
            previous: None,
            last_aggregate_s: state.last_aggregate_s,
            next_round: state.next_round,
            target_hit: state.target_hit,
            changed_in: state.changed_in.clone(),
            held: state.held.clone(),
        })
    }

    /// A checkpoint of the run between rounds (the global tensors are saved separately).
    pub fn state(&self, strategy: &dyn Strategy, clock: &dyn Clock) -> Result<CoordinatorState> {
        Ok(CoordinatorState {
            next_round: self.next_round,
            seed: self.cfg.seed,
            clock_s: clock.now(),
            strategy: strategy.name().to_string(),
            strategy_state: strategy.state()?,
            target_hit: self.target_hit,
            last_aggregate_s: self.last_aggregate_s,
            previous_file: None,
            changed_in: self.changed_in.clone(),
            held: self.held.clone(),
        })
    }

    /// Restore the previous global saved with a checkpoint (see
    /// [`crate::state::load_previous`]), so stale profiling resumes bit for bit.
    pub fn with_previous(mut self, previous: Option<Global>) -> Self {
        self.previous = previous;
        self
    }

    /// The global before the last aggregation, if this run has one.
    pub fn previous(&self) -> Option<&Global> {
        self.previous.as_ref()
    }

    pub fn global(&self) -> &Global {
        &self.global
    }

    pub fn into_global(self) -> Global {
        self.global
    }

    pub fn next_round(&self) -> Round {
        self.next_round
    }

    pub fn target_hit(&self) -> Option<TargetHit> {
        self.target_hit
    }

    /// Whether the run is over: all rounds done, or the target reached with `stop`.
    pub fn finished(&self) -> bool {
        let stopped = self.target_hit.is_some() && self.cfg.target.as_ref().is_some_and(|t| t.stop);
        stopped || self.next_round.0 > self.cfg.n_rounds
    }

    /// Run up to `max_rounds` more rounds (fewer if the run finishes first).
    pub fn run_rounds(
        &mut self,
        strategy: &mut dyn Strategy,
        transport: &mut dyn Transport,
        clock: &mut dyn Clock,
        mut evaluator: Option<&mut dyn Evaluator>,
        max_rounds: u32,
        on_round: &mut dyn FnMut(&mut RoundRecord),
    ) -> Result<History> {
        let mut history = History {
            records: Vec::new(),
            target_hit: self.target_hit,
        };
        tracing::info!(next_round = %self.next_round, n_rounds = self.cfg.n_rounds, "{}", strategy.summary());
        for _ in 0..max_rounds {
            if self.finished() {
                break;
            }
            let mut record =
                self.run_round(strategy, transport, clock, evaluator.as_deref_mut())?;
            on_round(&mut record);
            history.records.push(record);
            history.target_hit = self.target_hit;
        }
        Ok(history)
    }

    /// The global tensors that differ from participant `id`'s copy.
    fn changed_since(&self, id: ParticipantId) -> BTreeSet<String> {
        let held = self.held.get(&id).copied().unwrap_or(0);
        self.changed_in
            .iter()
            .filter(|&(_, &r)| r > held)
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn run_round(
        &mut self,
        strategy: &mut dyn Strategy,
        transport: &mut dyn Transport,
        clock: &mut dyn Clock,
        evaluator: Option<&mut (dyn Evaluator + '_)>,
    ) -> Result<RoundRecord> {
        let round = self.next_round;
        let pool = transport.pool();
        let mut rng = round_rng(self.cfg.seed, round, STREAM_SAMPLE);
        let profile_msgs = strategy.configure_profile(round, &self.global, &pool, &mut rng)?;
        let stale: BTreeMap<ParticipantId, bool> =
            profile_msgs.iter().map(|(id, m)| (*id, m.stale)).collect();
        let profiled = if profile_msgs.is_empty() {
            ProfileExchange::default()
        } else {
            let previous = self.previous.as_ref().unwrap_or(&self.global);
            transport.profile(profile_msgs, &self.global, previous)?
        };
        let profile_failures = profiled.failures.clone();
        strategy.receive_profiles(round, profiled.replies, profiled.failures)?;
        let mut msgs = strategy.configure_train(round, &self.global, &pool, &mut rng)?;
        if self.cfg.download == Download::Changed {
            for (id, ins) in &mut msgs {
                ins.changed = Some(self.changed_since(*id));
            }
        }
        let mut participants: Vec<ParticipantId> = msgs.iter().map(|(id, _)| *id).collect();
        participants.sort();

        let mut exchange = transport.send_and_receive(msgs, &self.global, self.cfg.deadline_s)?;
        for t in &mut exchange.times {
            if let Some(&s) = profiled.measured.get(&t.participant) {
                t.profile_measured_s = s;
            }
            if let Some(&s) = profiled.seconds.get(&t.participant) {
                t.profile_s = s;
                if stale.get(&t.participant) == Some(&true) {
                    t.profile_hidden_s = s.min(self.last_aggregate_s + t.phases.download);
                }
            }
        }
        let reply_metrics: BTreeMap<ParticipantId, BTreeMap<String, f64>> = exchange
            .replies
            .iter()
            .map(|r| (r.participant, r.metrics.clone()))
            .collect();
        let mut dropped = exchange.failures.clone();
        let aggregate_start = std::time::Instant::now();
        let outcome =
            strategy.aggregate_train(round, &self.global, exchange.replies, exchange.failures)?;
        let aggregate_wall_seconds = aggregate_start.elapsed().as_secs_f64();
        dropped.extend(outcome.rejected.iter().cloned());
        dropped.extend(
            profile_failures
                .into_iter()
                .filter(|f| !participants.contains(&f.participant)),
        );
        dropped.sort_by_key(|f| f.participant);

        let train_s = train_seconds(&exchange.times, self.cfg.deadline_s);
        let aggregate_s = outcome.cost.seconds(&self.cfg.server)?.total;
        let round_s = train_s + aggregate_s;
        clock.advance(round_s)?;
        self.last_aggregate_s = aggregate_s;

        // Everyone who did work downloaded this round's starting global.
        for t in &exchange.times {
            self.held.insert(t.participant, round.0 - 1);
        }
        let global_updated = outcome.global.is_some();
        if let Some(next) = outcome.global {
            for (name, t) in &next {
                // Tensors nobody updated come back as the same tensor.
                if self.global.get(name).is_none_or(|old| old.id() != t.id()) {
                    self.changed_in.insert(name.clone(), round.0);
                }
            }
            self.previous = Some(std::mem::replace(&mut self.global, next));
        }

        let eval_start = std::time::Instant::now();
        let eval = match evaluator {
            Some(ev) if self.cfg.eval_every > 0 && round.0.is_multiple_of(self.cfg.eval_every) => {
                Some(ev.evaluate(round, &self.global)?)
            }
            _ => None,
        };
        let eval_wall_seconds = eval.map(|_| eval_start.elapsed().as_secs_f64());
        if let (Some(metric), Some(target), None) = (eval, &self.cfg.target, self.target_hit) {
            if target.reached(metric) {
                self.target_hit = Some(TargetHit {
                    round,
                    virtual_time_s: clock.now(),
                    metric,
                });
                tracing::info!(%round, metric, virtual_time_s = clock.now(), "target reached");
            }
        }

        let record = RoundRecord {
            round,
            participants,
            train_metrics: mean_metrics(&outcome.accepted, &reply_metrics),
            accepted: outcome.accepted,
            dropped,
            bytes_up: exchange.times.iter().map(|t| t.up_bytes).sum(),
            bytes_down: exchange.times.iter().map(|t| t.down_bytes).sum(),
            times: exchange.times,
            global_updated,
            train_s,
            aggregate_s,
            round_s,
            eval,
            virtual_time_end: clock.now(),
            wall_seconds: None,
            aggregate_wall_seconds: Some(aggregate_wall_seconds),
            eval_wall_seconds,
            strategy: strategy.round_report(),
        };
        tracing::info!(
            %round,
            accepted = record.accepted.len(),
            dropped = record.dropped.len(),
            round_s,
            virtual_time = record.virtual_time_end,
            "round done"
        );
        self.next_round = round.next();
        Ok(record)
    }
}

/// Per metric name, the mean over the accepted participants that reported it.
fn mean_metrics(
    accepted: &[ParticipantId],
    metrics: &BTreeMap<ParticipantId, BTreeMap<String, f64>>,
) -> BTreeMap<String, f64> {
    let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for id in accepted {
        for (name, v) in metrics.get(id).into_iter().flatten() {
            let e = sums.entry(name.clone()).or_insert((0.0, 0));
            e.0 += v;
            e.1 += 1;
        }
    }
    sums.into_iter()
        .map(|(name, (sum, n))| (name, sum / n as f64))
        .collect()
}
