//! fluxmoe-model: the sparse-MoE decoder fluxmoe trains.
pub mod error;
pub use error::{Error, Result};
