//! fluxmoe-model: the sparse-MoE decoder fluxmoe trains.
pub mod error;
pub mod train;
pub use error::{Error, Result};
