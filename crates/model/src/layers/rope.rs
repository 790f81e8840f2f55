//! Rotary position embeddings on `[B, heads, T, d]` tensors.
//!
//! `inv_freq[i] = theta^(-2i/d)` for `i < d/2`, angle `a_i = pos * inv_freq[i]`.
//! - rotate-half (NeoX, HF Llama): pairs `(x[i], x[i + d/2])`;
//! - interleaved (GPT-J, DeepSeek-V2 checkpoints): pairs `(x[2i], x[2i+1])`;
//!
//! each pair `(a, b)` becomes `(a cos - b sin, b cos + a sin)`. Built from
//! differentiable primitives (candle's fused `rope` kernels have no backward).

use candle_core::{DType, Device, Result, Tensor};

#[derive(Debug, Clone)]
pub struct Rope {
    dim: usize,
    theta: f64,
    interleaved: bool,
}

impl Rope {
    pub fn new(dim: usize, theta: f64, interleaved: bool) -> Self {
        Self {
            dim,
            theta,
            interleaved,
        }
    }

    /// `cos` and `sin` tables `[len, d/2]` for positions `offset..offset + len`.
    pub fn tables(&self, offset: usize, len: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.dim / 2;
        let mut angles = Vec::with_capacity(len * half);
        for pos in offset..offset + len {
            for i in 0..half {
                let inv_freq = 1.0 / self.theta.powf(2.0 * i as f64 / self.dim as f64);
                // f32 inv_freq times f32 position, as the reference implementations do.
                angles.push((inv_freq as f32) * (pos as f32));
            }
        }
        let angles = Tensor::from_vec(angles, (len, half), device)?;
        Ok((angles.cos()?, angles.sin()?))
    }

    /// Rotate `x` `[B, H, T, d]` with tables from [`Rope::tables`] for its `T` positions.
    pub fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        debug_assert_eq!(x.dtype(), DType::F32);
        let (b, h, t, d) = x.dims4()?;
        let half = d / 2;
        if self.interleaved {
            let pairs = x.reshape((b, h, t, half, 2))?;
            let a = pairs.narrow(4, 0, 1)?.squeeze(4)?;
            let bb = pairs.narrow(4, 1, 1)?.squeeze(4)?;
            let ra = (a.broadcast_mul(cos)? - bb.broadcast_mul(sin)?)?;
            let rb = (bb.broadcast_mul(cos)? + a.broadcast_mul(sin)?)?;
            Tensor::stack(&[ra, rb], 4)?.reshape((b, h, t, d))
        } else {
            let a = x.narrow(3, 0, half)?;
            let bb = x.narrow(3, half, half)?;
            let ra = (a.broadcast_mul(cos)? - bb.broadcast_mul(sin)?)?;
            let rb = (bb.broadcast_mul(cos)? + a.broadcast_mul(sin)?)?;
            Tensor::cat(&[ra, rb], 3)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaved_equals_rotate_half_on_deinterleaved_input() {
        let dev = Device::Cpu;
        let d = 8;
        let x = Tensor::randn(0f32, 1.0, (1, 2, 5, d), &dev).unwrap();
        let (cos, sin) = Rope::new(d, 10000.0, false).tables(3, 5, &dev).unwrap();
        let inter = Rope::new(d, 10000.0, true).apply(&x, &cos, &sin).unwrap();
        // De-interleave: even lanes first, then odd lanes.
        let perm: Vec<u32> = (0..d / 2)
            .map(|i| 2 * i as u32)
            .chain((0..d / 2).map(|i| 2 * i as u32 + 1))
            .collect();
        let perm = Tensor::new(perm.as_slice(), &dev).unwrap();
        let half = Rope::new(d, 10000.0, false)
            .apply(&x.index_select(&perm, 3).unwrap(), &cos, &sin)
            .unwrap();
        let diff = (inter.index_select(&perm, 3).unwrap() - half)
            .unwrap()
            .abs()
            .unwrap();
        assert!(diff.max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-6);
    }

    #[test]
    fn position_zero_is_identity_and_norm_is_preserved() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (1, 1, 4, 6), &dev).unwrap();
        let rope = Rope::new(6, 500.0, false);
        let (cos, sin) = rope.tables(0, 4, &dev).unwrap();
        let y = rope.apply(&x, &cos, &sin).unwrap();
        let x0 = x
            .narrow(2, 0, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let y0 = y
            .narrow(2, 0, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(x0, y0);
        let nx = x
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let ny = y
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((nx - ny).abs() < 1e-4 * nx);
    }
}
