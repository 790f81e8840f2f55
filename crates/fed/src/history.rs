//! What a run records: one [`RoundRecord`] per round (serialisable as one JSON line)
//! and the [`History`] with time-to-accuracy.
//!
//! Times are virtual seconds from the cost model, except `wall_seconds`, which the
//! caller stamps from its own wall clock in the `on_round` callback.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cost::PhaseTimes;
use crate::error::{Error, Result};
use crate::ids::{ParticipantId, Round};
use crate::wire::Failure;

/// One participant's virtual time in a round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParticipantTime {
    pub participant: ParticipantId,
    /// Name of its device profile.
    pub device: String,
    /// Training round trip: download, local work, upload.
    pub phases: PhaseTimes,
    pub up_bytes: u64,
    pub down_bytes: u64,
    /// Seconds of profiling before training (0 without a profiling phase).
    #[serde(default)]
    pub profile_s: f64,
    /// The part of `profile_s` hidden behind the previous aggregation and this round's
    /// download (stale profiling), not on the round's critical path.
    #[serde(default)]
    pub profile_hidden_s: f64,
    /// Measured wall seconds of its training call on this machine (simulation).
    #[serde(default)]
    pub measured_s: f64,
    /// Measured wall seconds of its profiling call.
    #[serde(default)]
    pub profile_measured_s: f64,
    /// Peak resident memory of the process while it trained (Linux, measured when
    /// participants train one at a time), bytes.
    #[serde(default)]
    pub peak_rss_bytes: Option<u64>,
    /// Resident memory of the process when its training call started, bytes: the
    /// participant's own peak is `peak_rss_bytes − rss_start_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_start_bytes: Option<u64>,
    /// Most heap bytes its training call held at once above what was live when it
    /// started: the participant's own peak, exact whatever the allocator keeps
    /// (measured when participants train one at a time and the binary counts heap
    /// allocations, see `measure::CountingAlloc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heap_peak_bytes: Option<u64>,
}

/// Measured resident memory of one training call (see [`ParticipantTime`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MeasuredRss {
    pub start_bytes: Option<u64>,
    pub peak_bytes: Option<u64>,
    /// Peak live heap bytes above those live at the start.
    pub heap_peak_bytes: Option<u64>,
}

impl ParticipantTime {
    /// Seconds on the round's critical path: training plus unhidden profiling.
    pub fn critical_s(&self) -> f64 {
        self.phases.total + self.profile_s - self.profile_hidden_s
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    pub round: Round,
    /// Participants sent an instruction, ascending.
    pub participants: Vec<ParticipantId>,
    /// Participants whose update went into the model, ascending.
    pub accepted: Vec<ParticipantId>,
    /// Dropouts, stragglers, errors and rejected replies, with reasons.
    pub dropped: Vec<Failure>,
    /// Per participant that did work (stragglers included), by phase.
    pub times: Vec<ParticipantTime>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Mean over accepted replies of each reply metric (e.g. training loss).
    pub train_metrics: BTreeMap<String, f64>,
    /// Whether the global model changed this round.
    pub global_updated: bool,
    /// Slowest participant, capped at the deadline.
    pub train_s: f64,
    /// Aggregation on the server profile.
    pub aggregate_s: f64,
    /// `train_s + aggregate_s`, the time this round added to the clock.
    pub round_s: f64,
    /// Evaluation metric of the new global model, on evaluation rounds.
    pub eval: Option<f64>,
    pub virtual_time_end: f64,
    /// Measured seconds, filled in by the caller.
    pub wall_seconds: Option<f64>,
    /// Measured seconds of the coordinator's aggregation, and of the evaluation on
    /// evaluation rounds (absent in records written before 2026-12-02).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate_wall_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_wall_seconds: Option<f64>,
    /// The strategy's [`crate::Strategy::round_report`] (absent when `Null`).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub strategy: serde_json::Value,
}

impl RoundRecord {
    /// The record with everything measured on this machine (wall seconds, peak
    /// memory) cleared: what two runs of the same config and seed must agree on.
    pub fn without_measurements(&self) -> RoundRecord {
        let mut r = self.clone();
        r.wall_seconds = None;
        r.aggregate_wall_seconds = None;
        r.eval_wall_seconds = None;
        for t in &mut r.times {
            t.measured_s = 0.0;
            t.profile_measured_s = 0.0;
            t.peak_rss_bytes = None;
            t.rss_start_bytes = None;
            t.heap_peak_bytes = None;
        }
        r
    }

    /// The record as one line of JSON (no trailing newline).
    pub fn to_json_line(&self) -> Result<String> {
        serde_json::to_string(self)
            .map_err(|e| Error::json(format!("round {} record", self.round), e))
    }
}

/// The first evaluation that reached the target.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetHit {
    pub round: Round,
    /// Virtual time at the end of that round: the time-to-accuracy.
    pub virtual_time_s: f64,
    pub metric: f64,
}

/// The records of the rounds run by one call, and the target hit of the whole run
/// (carried over a resume).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    pub records: Vec<RoundRecord>,
    pub target_hit: Option<TargetHit>,
}

impl History {
    /// Virtual seconds until the target was first reached.
    pub fn time_to_target(&self) -> Option<f64> {
        self.target_hit.map(|hit| hit.virtual_time_s)
    }

    /// The last evaluation metric recorded.
    pub fn last_eval(&self) -> Option<f64> {
        self.records.iter().rev().find_map(|r| r.eval)
    }
}
