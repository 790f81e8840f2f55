//! The building blocks of the decoder, one per file. Every op used here has a
//! gradient: candle 0.11's primitives, or our own custom ops with their backward pass
//! (`norm`, `target_logprob`). candle's own fused softmax-last-dim, RMSNorm and RoPE
//! kernels have none (`../shared/docs/CANDLE.md`) and are deliberately not used.

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

/// Helpers for the layers' unit tests.
#[cfg(test)]
pub(crate) mod test_util {
    use candle_core::Tensor;

    /// The largest absolute elementwise difference of two tensors of the same shape.
    pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }
}
