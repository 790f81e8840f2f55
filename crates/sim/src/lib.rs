//! fluxmoe-sim: federated fine-tuning simulated in one process.
//!
//! How the pieces compose: a [`config::RunFile`] (TOML) names the model, task,
//! partition, rounds, training and fleet; [`run::run`] loads the model and the task,
//! partitions and tokenises the training data, and wires one
//! [`participant::ModelParticipant`] per shard into `fluxmoe-fed`'s `LocalTransport`, a
//! strategy and the `Coordinator`, with [`scorer::ModelEvaluator`] scoring the global
//! model on the test split. This is the only crate that knows models, data and the
//! runtime together.

pub mod config;
pub mod derive;
pub mod error;
mod expert_participant;
pub mod participant;
pub mod plan;
pub mod run;
pub mod scorer;
pub mod shared_quantized;

pub use config::RunFile;
pub use error::{Error, Result};
pub use run::{
    export, member_with_own_data, members, members_and_initial, run, run_over, Member, Provenance,
    RunSummary, TransportBuilder,
};
