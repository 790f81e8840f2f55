//! RMSNorm: `y = x * rsqrt(mean(x^2, last dim) + eps) * w`, in f32, built from
//! differentiable primitives (candle's fused `rms_norm` has no backward).

use candle_core::{DType, Result, Tensor, D};

#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f64) -> Self {
        Self { weight, eps }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        debug_assert_eq!(x.dtype(), DType::F32);
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let inv = (ms + self.eps)?.sqrt()?.recip()?;
        x.broadcast_mul(&inv)?.broadcast_mul(&self.weight)
    }
}
