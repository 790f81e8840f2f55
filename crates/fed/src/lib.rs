//! fluxmoe-fed: the federation runtime. It moves named tensors; it knows nothing of
//! MoE, models or FLUX.
//!
//! How the pieces compose (Flower's server loop, in Rust):
//! - [`wire`]: [`TrainIns`] out, [`TrainReply`] or [`Failure`] back; [`Global`] is the
//!   model as `BTreeMap<String, Tensor>`.
//! - [`aggregate`]: pure per-tensor FedAvg with validation of every reply;
//!   [`server_opt`] turns the weighted mean delta into a step (SGD = FedAvg, FedAdam).
//! - [`strategy::Strategy`] decides who trains what ([`strategy::Strategy::configure_train`])
//!   and how replies become the next global model; [`FedAvgFull`] is the baseline.
//! - [`transport::Transport`] delivers instructions and collects replies;
//!   [`LocalTransport`] calls in-process [`transport::Participant`]s and simulates
//!   dropouts and a deadline.
//! - [`cost`] and [`device`] turn each reply's [`WorkCost`] into seconds on its
//!   [`DeviceProfile`]; [`Coordinator`] charges each round to a [`Clock`] and records a
//!   [`RoundRecord`] into the [`History`], with time-to-accuracy from an [`Evaluator`].
//! - [`state`]: coordinator checkpoints (JSON state + safetensors global) for resume.
//!
//! Invariants: strategies do no IO and never read a clock; all randomness comes from
//! seeds derived per round ([`seed`]), so a run is a function of its config.

pub mod aggregate;
pub mod clock;
pub mod coordinator;
pub mod cost;
pub mod device;
pub mod error;
pub mod fedavg_full;
pub mod history;
pub mod ids;
pub mod measure;
pub mod seed;
pub mod server_opt;
pub mod state;
pub mod strategy;
pub mod tensor_data;
pub mod transport;
pub mod wire;

pub use aggregate::{
    fedavg, mean_assigned_deltas, mean_deltas, AggregateConfig, AggregateReport, MeanDelta,
};
pub use clock::{Clock, VirtualClock};
pub use coordinator::{train_seconds, Coordinator, Download, Evaluator, RunConfig, TargetConfig};
pub use cost::{PhaseTimes, WorkCost};
pub use device::{Assignment, DeviceProfile, FleetConfig};
pub use error::{Error, Result};
pub use fedavg_full::{FedAvgFull, FedAvgFullConfig};
pub use history::{History, MeasuredRss, ParticipantTime, RoundRecord, TargetHit};
pub use ids::{ParticipantId, Round};
pub use server_opt::{ServerOptimizer, ServerOptimizerConfig, ServerOptimizerState};
pub use state::{load_checkpoint, load_previous, save_checkpoint, CoordinatorState};
pub use strategy::{Strategy, TrainOutcome};
pub use transport::{
    Exchange, LocalTransport, LocalTransportConfig, Participant, ProfileExchange, Transport,
};
pub use wire::{
    Failure, FailureKind, Global, ProfileIns, ProfileReply, Scalar, TrainIns, TrainReply,
};
