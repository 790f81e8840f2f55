//! fluxmoe-model: the sparse-MoE decoder fluxmoe trains.
pub mod error;
pub mod gguf;
pub mod tokenizer;
pub use error::{Error, Result};
