//! The building blocks of the decoder, one per file. Every op used here has a
//! gradient in candle 0.11 (see `../shared/docs/CANDLE.md` for the ones that do not:
//! fused softmax-last-dim, fused RMSNorm and RoPE are deliberately not used).

pub mod attention;
pub mod linear;
pub mod mlp;
pub mod moe;
pub mod norm;
pub mod rope;
pub mod target_logprob;

pub use attention::{Attention, KvCache};
pub use linear::Linear;
pub use mlp::SwiGlu;
pub use moe::{MoeBlock, Routing};
pub use norm::RmsNorm;
pub use rope::Rope;
pub use target_logprob::target_logprob;
