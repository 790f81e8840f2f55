//! fluxmoe-model: the sparse-MoE decoder fluxmoe fine-tunes, on candle.
//!
//! How the pieces compose:
//! - [`config::ModelConfig`] normalises an HF `config.json` (eight architectures) into
//!   one description: attention kind, RoPE convention, and per layer a dense MLP or an
//!   MoE block with its routing rule.
//! - [`checkpoint`] reads and writes HF checkpoint folders (single or sharded
//!   safetensors) into a [`params::ParamStore`]: every tensor by its HF key, frozen or
//!   trainable.
//! - [`model::MoeModel`] is built from a config and a store (key names live in
//!   [`keys`]); its forward pass returns logits and, on request, per-MoE-layer routing
//!   and attention scores (what FLUX's profiler needs).
//! - [`train`] (AdamW, clipping, LR schedule) updates the trainable `Var`s;
//!   [`generate`] decodes with a KV cache through [`sampling`] and [`chat`] templates.
//! - [`layers`] holds the building blocks (norm, RoPE, attention, SwiGLU, MoE block).

pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod keys;
pub mod layers;
pub mod model;
pub mod params;
pub mod sampling;
pub mod source;
pub mod stats;
pub mod tokenizer;
pub mod train;
pub mod upcycle;

pub use checkpoint::{Checkpoint, StorageLayout};
pub use config::{Arch, ModelConfig};
pub use error::{Error, Result};
pub use model::{
    causal_lm_loss, ForwardOutput, LayerTrace, MergedExpert, ModelCache, MoeModel, Resume,
};
pub use params::ParamStore;
pub use source::{load_model, LoadedModel};
