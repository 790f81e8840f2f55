//! fluxmoe-model: the sparse-MoE decoder fluxmoe trains.
pub mod chat;
pub mod error;
pub mod generate;
pub mod sampling;
pub mod train;
pub use error::{Error, Result};
