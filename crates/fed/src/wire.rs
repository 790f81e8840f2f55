//! What travels between coordinator and participants, per round.
//!
//! - [`TrainIns`]: coordinator → participant. The round, the names of the tensors to
//!   tune (the participant receives the whole global model alongside) and free-form
//!   scalar parameters (local steps, learning rate, ...), which this crate never reads.
//! - [`TrainReply`]: participant → coordinator. Per tuned tensor the update
//!   `ΔW = W_local − W_global` and the aggregation weight `n` (e.g. token count), plus
//!   metrics and the [`WorkCost`] of the work done, which the virtual clock charges.
//! - [`Failure`]: a participant that did not contribute, as data (Flower's `failures`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::cost::WorkCost;
use crate::ids::{ParticipantId, Round};

/// The model every round starts from: named tensors (names are opaque to this crate).
pub type Global = BTreeMap<String, Tensor>;

/// Key of [`TrainReply::weights`] that applies to every delta without its own entry.
pub const DEFAULT_WEIGHT_KEY: &str = "*";

/// A small configuration value sent with an instruction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

/// Instruction for one participant in one round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainIns {
    pub round: Round,
    /// Names of the global tensors the participant tunes and returns deltas for.
    pub trainable: Vec<String>,
    /// Strategy-defined parameters, passed through untouched.
    pub params: BTreeMap<String, Scalar>,
    /// The global tensors that differ from the copy the participant already holds
    /// (set by the coordinator under [`crate::Download::Changed`]); `None`: it holds
    /// no copy and needs every tensor it uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<BTreeSet<String>>,
}

impl TrainIns {
    /// Whether global tensor `name` must travel to the participant this round (it is
    /// not in the copy the participant holds).
    pub fn must_download(&self, name: &str) -> bool {
        self.changed.as_ref().is_none_or(|c| c.contains(name))
    }
}

/// Request to profile the model on local data before a round's instructions are made
/// (FLUX's profiling phase; strategies without one never send it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileIns {
    pub round: Round,
    /// Profile the previous round's global model (stale profiling: the work overlaps
    /// the previous aggregation and this round's download) instead of the current one.
    pub stale: bool,
    /// Strategy-defined parameters, passed through untouched.
    pub params: BTreeMap<String, Scalar>,
}

/// A participant's answer to a [`ProfileIns`]: a strategy-defined JSON report and the
/// work it cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileReply {
    pub participant: ParticipantId,
    pub report: serde_json::Value,
    pub cost: WorkCost,
}

/// A participant's answer to a [`TrainIns`].
///
/// Not serde: tensors travel through the transport's own encoding.
#[derive(Clone, Debug)]
pub struct TrainReply {
    pub participant: ParticipantId,
    /// `ΔW` per tuned tensor, same shape and dtype as the global tensor.
    pub deltas: BTreeMap<String, Tensor>,
    /// Aggregation weight `n > 0` per delta name, or one weight under
    /// [`DEFAULT_WEIGHT_KEY`] for all of them.
    pub weights: BTreeMap<String, f64>,
    /// Participant metrics (e.g. training loss), averaged over replies in the record.
    pub metrics: BTreeMap<String, f64>,
    /// The work this reply cost the participant, charged on the virtual clock.
    pub cost: WorkCost,
    /// Strategy-defined structured report (e.g. per-expert utilities); `Null` if none.
    pub report: serde_json::Value,
}

impl TrainReply {
    /// The aggregation weight of delta `name`, if the reply gives one.
    pub fn weight_of(&self, name: &str) -> Option<f64> {
        self.weights
            .get(name)
            .or_else(|| self.weights.get(DEFAULT_WEIGHT_KEY))
            .copied()
    }
}

/// Why a participant did not contribute to a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// It dropped out (simulated or real disconnect) and sent nothing.
    Dropout,
    /// Its reply arrived after the round deadline (virtual seconds).
    Deadline,
    /// Its local code returned an error.
    Error,
    /// Its reply was received but failed validation at aggregation.
    Rejected,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            FailureKind::Dropout => "dropout",
            FailureKind::Deadline => "deadline",
            FailureKind::Error => "error",
            FailureKind::Rejected => "rejected",
        };
        f.write_str(s)
    }
}

/// A participant that did not contribute, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub participant: ParticipantId,
    pub kind: FailureKind,
    pub reason: String,
}

impl Failure {
    pub fn new(participant: ParticipantId, kind: FailureKind, reason: impl Into<String>) -> Self {
        Failure {
            participant,
            kind,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_falls_back_to_default_key() {
        let reply = TrainReply {
            participant: ParticipantId(1),
            deltas: BTreeMap::new(),
            weights: BTreeMap::from([("a".to_string(), 3.0), ("*".to_string(), 5.0)]),
            metrics: BTreeMap::new(),
            cost: WorkCost::default(),
            report: serde_json::Value::Null,
        };
        assert_eq!(reply.weight_of("a"), Some(3.0));
        assert_eq!(reply.weight_of("b"), Some(5.0));
    }

    #[test]
    fn train_ins_round_trips_through_json() {
        let ins = TrainIns {
            round: Round(2),
            trainable: vec!["layers.0.w".into()],
            params: BTreeMap::from([
                ("lr".to_string(), Scalar::Float(0.5)),
                ("steps".to_string(), Scalar::Int(4)),
                ("opt".to_string(), Scalar::Str("adamw".into())),
            ]),
            changed: None,
        };
        let json = serde_json::to_string(&ins).unwrap();
        assert_eq!(serde_json::from_str::<TrainIns>(&json).unwrap(), ins);
        assert!(ins.must_download("anything"));
        let ins = TrainIns {
            changed: Some(["layers.0.w".to_string()].into()),
            ..ins
        };
        let json = serde_json::to_string(&ins).unwrap();
        assert_eq!(serde_json::from_str::<TrainIns>(&json).unwrap(), ins);
        assert!(ins.must_download("layers.0.w"));
        assert!(!ins.must_download("layers.1.w"));
        let failure = Failure::new(ParticipantId(3), FailureKind::Deadline, "late");
        assert_eq!(
            serde_json::to_string(&failure).unwrap(),
            r#"{"participant":3,"kind":"deadline","reason":"late"}"#
        );
    }
}
