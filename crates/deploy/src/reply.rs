//! [`ReplyMeta`]: a [`TrainReply`] without its tensors, the JSON header of an upload
//! (the deltas follow as a tensor payload).

use std::collections::BTreeMap;

use candle_core::Tensor;
use fluxmoe_fed::{ParticipantId, TrainReply, WorkCost};
use serde::{Deserialize, Serialize};

/// Everything of a [`TrainReply`] but `deltas`. JSON keeps every `f64` bit for bit
/// (`serde_json`'s `float_roundtrip`, enabled by `fluxmoe-fed`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplyMeta {
    pub participant: ParticipantId,
    pub weights: BTreeMap<String, f64>,
    pub metrics: BTreeMap<String, f64>,
    pub cost: WorkCost,
    pub report: serde_json::Value,
}

impl ReplyMeta {
    /// Split `reply` into its header and its deltas.
    pub fn split(reply: TrainReply) -> (Self, BTreeMap<String, Tensor>) {
        let meta = ReplyMeta {
            participant: reply.participant,
            weights: reply.weights,
            metrics: reply.metrics,
            cost: reply.cost,
            report: reply.report,
        };
        (meta, reply.deltas)
    }

    /// The reply again, with `deltas`.
    pub fn join(self, deltas: BTreeMap<String, Tensor>) -> TrainReply {
        TrainReply {
            participant: self.participant,
            deltas,
            weights: self.weights,
            metrics: self.metrics,
            cost: self.cost,
            report: self.report,
        }
    }
}
