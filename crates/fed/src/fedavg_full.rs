//! [`FedAvgFull`]: the baseline strategy. Each round samples `per_round` participants
//! uniformly without replacement, all of them tune the same tensors (a configured list,
//! or every tensor of the global model), and the replies are averaged per tensor
//! ([`crate::aggregate`]) and applied with a server optimizer (SGD lr 1 = FedAvg,
//! or FedAdam).
//!
//! Policy, all in [`FedAvgFullConfig`]: a reply with a delta for a tensor that was not
//! trainable is rejected; with fewer than `min_replies` accepted replies the round
//! keeps the previous global model.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::aggregate::{mean_assigned_deltas, AggregateConfig};
use crate::error::{Error, Result};
use crate::ids::{ParticipantId, Round};
use crate::server_opt::{ServerOptimizer, ServerOptimizerConfig, ServerOptimizerState};
use crate::strategy::{Strategy, TrainOutcome};
use crate::wire::{Failure, Global, Scalar, TrainIns, TrainReply};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FedAvgFullConfig {
    /// Participants sampled per round (1 ..= pool size).
    pub per_round: usize,
    /// Tensors every participant tunes; `None` = every tensor of the global model.
    pub trainable: Option<Vec<String>>,
    /// Fewest accepted replies that update the model; below it the round is skipped.
    pub min_replies: usize,
    pub aggregate: AggregateConfig,
    pub server_optimizer: ServerOptimizerConfig,
    /// Passed unchanged to every participant in [`TrainIns::params`].
    pub params: BTreeMap<String, Scalar>,
}

pub struct FedAvgFull {
    cfg: FedAvgFullConfig,
    optimizer: ServerOptimizer,
}

#[derive(Serialize, Deserialize)]
struct FedAvgFullState {
    server_optimizer: ServerOptimizerState,
}

impl FedAvgFull {
    pub fn new(cfg: FedAvgFullConfig) -> Result<Self> {
        if cfg.per_round == 0 {
            return Err(Error::config("per_round", "must be >= 1, got 0"));
        }
        if let Some(names) = &cfg.trainable {
            if names.is_empty() {
                return Err(Error::config(
                    "trainable",
                    "must name at least one tensor (omit it to train all)",
                ));
            }
        }
        let optimizer = ServerOptimizer::new(cfg.server_optimizer.clone())?;
        Ok(FedAvgFull { cfg, optimizer })
    }

    fn trainable(&self, global: &Global) -> Result<Vec<String>> {
        match &self.cfg.trainable {
            None => Ok(global.keys().cloned().collect()),
            Some(names) => {
                if let Some(missing) = names.iter().find(|n| !global.contains_key(*n)) {
                    return Err(Error::tensor(
                        missing,
                        "listed in `trainable` but not in the global model",
                    ));
                }
                Ok(names.clone())
            }
        }
    }
}

impl Strategy for FedAvgFull {
    fn name(&self) -> &str {
        "fedavg_full"
    }

    fn summary(&self) -> String {
        format!(
            "fedavg_full: {} per round, trainable {}, min_replies {}, max_delta_norm {:?}, server optimizer {:?}",
            self.cfg.per_round,
            self.cfg
                .trainable
                .as_ref()
                .map_or("all".to_string(), |t| format!("{} tensors", t.len())),
            self.cfg.min_replies,
            self.cfg.aggregate.max_delta_norm,
            self.cfg.server_optimizer,
        )
    }

    fn configure_train(
        &mut self,
        round: Round,
        global: &Global,
        pool: &[ParticipantId],
        rng: &mut StdRng,
    ) -> Result<Vec<(ParticipantId, TrainIns)>> {
        let mut pool = pool.to_vec();
        pool.sort();
        pool.dedup();
        if self.cfg.per_round > pool.len() {
            return Err(Error::config(
                "per_round",
                format!(
                    "{} exceeds the pool of {} participants",
                    self.cfg.per_round,
                    pool.len()
                ),
            ));
        }
        let trainable = self.trainable(global)?;
        let mut chosen: Vec<ParticipantId> =
            rand::seq::index::sample(rng, pool.len(), self.cfg.per_round)
                .into_iter()
                .map(|i| pool[i])
                .collect();
        chosen.sort();
        Ok(chosen
            .into_iter()
            .map(|id| {
                (
                    id,
                    TrainIns {
                        round,
                        trainable: trainable.clone(),
                        params: self.cfg.params.clone(),
                        changed: None,
                    },
                )
            })
            .collect())
    }

    fn aggregate_train(
        &mut self,
        round: Round,
        global: &Global,
        replies: Vec<TrainReply>,
        failures: Vec<Failure>,
    ) -> Result<TrainOutcome> {
        let trainable: BTreeSet<String> = self.trainable(global)?.into_iter().collect();
        // (A delta for a tensor the global lacks is the aggregation's own rejection.)
        let unassigned = |reply: &TrainReply| {
            reply
                .deltas
                .keys()
                .find(|n| !trainable.contains(*n) && global.contains_key(*n))
                .map(|name| format!("delta for non-trainable tensor `{name}`"))
        };
        let (means, report) =
            mean_assigned_deltas(global, &replies, &self.cfg.aggregate, unassigned)?;
        let rejected = report.rejected;
        let mut cost = report.cost;
        let next = if report.accepted.len() < self.cfg.min_replies {
            tracing::warn!(
                %round,
                accepted = report.accepted.len(),
                failures = failures.len(),
                min_replies = self.cfg.min_replies,
                "too few replies, keeping the previous global model"
            );
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

    fn state(&self) -> Result<serde_json::Value> {
        let st = FedAvgFullState {
            server_optimizer: self.optimizer.state()?,
        };
        serde_json::to_value(st).map_err(|e| Error::json("fedavg_full state", e))
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let st: FedAvgFullState = serde_json::from_value(state.clone())
            .map_err(|e| Error::json("fedavg_full state", e))?;
        self.optimizer.load_state(&st.server_optimizer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::WorkCost;
    use crate::seed::{round_rng, STREAM_SAMPLE};
    use crate::wire::FailureKind;
    use candle_core::{Device, Tensor};

    fn cfg(
        per_round: usize,
        trainable: Option<Vec<String>>,
        min_replies: usize,
    ) -> FedAvgFullConfig {
        FedAvgFullConfig {
            per_round,
            trainable,
            min_replies,
            aggregate: AggregateConfig {
                max_delta_norm: None,
            },
            server_optimizer: ServerOptimizerConfig::fedavg(),
            params: BTreeMap::from([("local_steps".to_string(), Scalar::Int(2))]),
        }
    }

    fn global() -> Global {
        Global::from([
            (
                "a".to_string(),
                Tensor::new(&[1.0f32], &Device::Cpu).unwrap(),
            ),
            (
                "b".to_string(),
                Tensor::new(&[2.0f32], &Device::Cpu).unwrap(),
            ),
        ])
    }

    fn reply(id: u32, name: &str, d: f32) -> TrainReply {
        TrainReply {
            participant: ParticipantId(id),
            deltas: BTreeMap::from([(name.to_string(), Tensor::new(&[d], &Device::Cpu).unwrap())]),
            weights: BTreeMap::from([("*".to_string(), 1.0)]),
            metrics: BTreeMap::new(),
            cost: WorkCost::default(),
            report: serde_json::Value::Null,
        }
    }

    #[test]
    fn samples_without_replacement_seeded_and_sorted() {
        let mut s = FedAvgFull::new(cfg(3, None, 1)).unwrap();
        let pool: Vec<ParticipantId> = (0..10).map(ParticipantId).collect();
        let g = global();
        let pick = |s: &mut FedAvgFull, round: u32| {
            let mut rng = round_rng(42, Round(round), STREAM_SAMPLE);
            s.configure_train(Round(round), &g, &pool, &mut rng)
                .unwrap()
        };
        let r1 = pick(&mut s, 1);
        assert_eq!(r1.len(), 3);
        let ids: Vec<ParticipantId> = r1.iter().map(|(id, _)| *id).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(ids, sorted);
        assert_eq!(r1[0].1.trainable, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(r1[0].1.round, Round(1));
        assert_eq!(r1[0].1.params["local_steps"], Scalar::Int(2));
        let again: Vec<ParticipantId> = pick(&mut s, 1).iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, again);
        // Over many rounds every participant gets picked.
        let mut seen = BTreeSet::new();
        for r in 1..=30 {
            seen.extend(pick(&mut s, r).into_iter().map(|(id, _)| id));
        }
        assert_eq!(seen.len(), 10);
    }

    #[test]
    fn bad_sampling_and_trainable_configs_are_errors() {
        assert!(FedAvgFull::new(cfg(0, None, 1)).is_err());
        let g = global();
        let pool = [ParticipantId(1), ParticipantId(2)];
        let mut rng = round_rng(1, Round(1), STREAM_SAMPLE);
        let err = FedAvgFull::new(cfg(3, None, 1))
            .unwrap()
            .configure_train(Round(1), &g, &pool, &mut rng)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("per_round") && err.contains("pool of 2"),
            "{err}"
        );
        let err = FedAvgFull::new(cfg(1, Some(vec!["zzz".into()]), 1))
            .unwrap()
            .configure_train(Round(1), &g, &pool, &mut rng)
            .unwrap_err()
            .to_string();
        assert!(err.contains("tensor `zzz`"), "{err}");
    }

    #[test]
    fn non_trainable_deltas_are_rejected_and_min_replies_keeps_the_model() {
        let g = global();
        let mut s = FedAvgFull::new(cfg(2, Some(vec!["a".into()]), 1)).unwrap();
        let out = s
            .aggregate_train(
                Round(1),
                &g,
                vec![reply(1, "a", 2.0), reply(2, "b", 5.0)],
                vec![],
            )
            .unwrap();
        let next = out.global.unwrap();
        assert_eq!(next["a"].to_vec1::<f32>().unwrap(), vec![3.0]);
        assert_eq!(next["b"].id(), g["b"].id());
        assert_eq!(out.accepted, vec![ParticipantId(1)]);
        assert_eq!(out.rejected.len(), 1);
        assert!(out.rejected[0].reason.contains("non-trainable tensor `b`"));

        let mut strict = FedAvgFull::new(cfg(2, None, 2)).unwrap();
        let dropped = Failure::new(ParticipantId(2), FailureKind::Dropout, "dropout");
        let out = strict
            .aggregate_train(Round(1), &g, vec![reply(1, "a", 2.0)], vec![dropped])
            .unwrap();
        assert!(out.global.is_none());
        assert_eq!(out.accepted, vec![ParticipantId(1)]);
    }
}
