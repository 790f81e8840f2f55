//! RMSNorm: `y = x * rsqrt(mean(x^2, last dim) + eps) * w`, in f32.
//!
//! candle's fused `rms_norm` has no backward pass, and the same function built from
//! primitives keeps `x²` and `x · rsqrt(..)` alive for the backward pass beside the
//! output, and makes the backward pass compute a gradient for the (frozen) weight
//! broadcast to the activation's size, which candle keeps until it returns: four
//! tensors of `x`'s size per norm where the output alone is needed. On the CPU this
//! is one op with its own backward pass that keeps only its output; elsewhere the
//! primitive version runs. For a row `x` of `h` values, `r = (Σ x²/h + eps)^-½`:
//! - `∂L/∂x_k = r · (g_k w_k − x_k r² Σ_j g_j w_j x_j / h)`,
//! - `∂L/∂w_j = Σ_rows g_j x_j r` (only when the weight is trained).

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor, D};

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
        if x.device().is_cpu() {
            return x
                .contiguous()?
                .apply_op2(&self.weight.contiguous()?, FusedRmsNorm { eps: self.eps });
        }
        self.forward_primitive(x)
    }

    /// The same function from candle primitives (non-CPU devices; the test reference).
    pub fn forward_primitive(&self, x: &Tensor) -> Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let inv = (ms + self.eps)?.sqrt()?.recip()?;
        x.broadcast_mul(&inv)?.broadcast_mul(&self.weight)
    }
}

struct FusedRmsNorm {
    eps: f64,
}

/// The contiguous f32 values of `x` (rows of `h`) and of the weight `[h]`.
fn operands<'a>(
    s1: &'a CpuStorage,
    l1: &Layout,
    s2: &'a CpuStorage,
    l2: &Layout,
) -> Result<(&'a [f32], &'a [f32])> {
    let h = l1.shape().dims().last().copied().unwrap_or(0);
    if l2.shape().dims() != [h] {
        candle_core::bail!(
            "rms norm: weight of shape {:?} for rows of {h}",
            l2.shape().dims()
        );
    }
    let (CpuStorage::F32(x), CpuStorage::F32(w)) = (s1, s2) else {
        candle_core::bail!("rms norm: expects f32 input and weight");
    };
    let (Some((a1, b1)), Some((a2, b2))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
    else {
        candle_core::bail!("rms norm: inputs must be contiguous");
    };
    Ok((&x[a1..b1], &w[a2..b2]))
}

/// `(Σ x²/h + eps)^-½` of one row, accumulated in f64.
fn inv_rms(row: &[f32], eps: f64) -> f32 {
    let ss: f64 = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    (1.0 / (ss / row.len() as f64 + eps).sqrt()) as f32
}

impl CustomOp2 for FusedRmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = operands(s1, l1, s2, l2)?;
        let mut y = vec![0f32; x.len()];
        if !w.is_empty() {
            for (out, row) in y.chunks_exact_mut(w.len()).zip(x.chunks_exact(w.len())) {
                let r = inv_rms(row, self.eps);
                for ((o, &v), &wj) in out.iter_mut().zip(row).zip(w) {
                    *o = v * r * wj;
                }
            }
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad_res = grad_res.contiguous()?;
        let g: Vec<f32> = grad_res.flatten_all()?.to_vec1()?;
        let (s1, l1) = x.storage_and_layout();
        let (s2, l2) = weight.storage_and_layout();
        let (Storage::Cpu(s1), Storage::Cpu(s2)) = (&*s1, &*s2) else {
            candle_core::bail!("rms norm: backward expects CPU tensors");
        };
        let (xs, w) = operands(s1, l1, s2, l2)?;
        let h = w.len();
        if g.len() != xs.len() || h == 0 {
            candle_core::bail!("rms norm: gradient of {} values for {}", g.len(), xs.len());
        }
        let want_w = weight.track_op();
        let mut dx = vec![0f32; xs.len()];
        let mut dw = vec![0f64; if want_w { h } else { 0 }];
        for ((out, row), gr) in dx
            .chunks_exact_mut(h)
            .zip(xs.chunks_exact(h))
            .zip(g.chunks_exact(h))
        {
            let r = inv_rms(row, self.eps);
            let dot: f64 = gr
                .iter()
                .zip(w)
                .zip(row)
                .map(|((&gj, &wj), &xj)| f64::from(gj) * f64::from(wj) * f64::from(xj))
                .sum();
            let c = (f64::from(r) * f64::from(r) * dot / h as f64) as f32;
            for (((o, &gj), &wj), &xj) in out.iter_mut().zip(gr).zip(w).zip(row) {
                *o = r * (gj * wj - xj * c);
            }
            for ((d, &gj), &xj) in dw.iter_mut().zip(gr).zip(row) {
                *d += f64::from(gj) * f64::from(xj) * f64::from(r);
            }
        }
        let dx = Tensor::from_vec(dx, x.shape(), x.device())?;
        let dw = if want_w {
            let dw: Vec<f32> = dw.into_iter().map(|v| v as f32).collect();
            Some(Tensor::from_vec(dw, h, weight.device())?)
        } else {
            None
        };
        Ok((Some(dx), dw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::test_util::max_abs_diff;
    use candle_core::{Device, Var};

    #[test]
    fn value_and_gradients_match_the_primitive_composition() {
        let dev = Device::Cpu;
        for trained_weight in [false, true] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 3.0, (2, 3, 16), &dev).unwrap()).unwrap();
            let w0 = Tensor::randn(1f32, 0.5, 16, &dev).unwrap();
            let wv = Var::from_tensor(&w0).unwrap();
            let w = if trained_weight {
                wv.as_tensor().clone()
            } else {
                w0.clone()
            };
            let norm = RmsNorm::new(w, 1e-5);
            // A weighted sum, so the incoming gradient is not uniform.
            let g = Tensor::randn(0f32, 1.0, (2, 3, 16), &dev).unwrap();
            let fused = norm.forward(x.as_tensor()).unwrap();
            let plain = norm.forward_primitive(x.as_tensor()).unwrap();
            assert!(max_abs_diff(&fused, &plain) < 1e-5);
            let gf = (&fused * &g)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gp = (&plain * &g)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let d = max_abs_diff(
                gf.get(x.as_tensor()).unwrap(),
                gp.get(x.as_tensor()).unwrap(),
            );
            assert!(d < 1e-5, "dx differs by {d}");
            if trained_weight {
                let d = max_abs_diff(
                    gf.get(wv.as_tensor()).unwrap(),
                    gp.get(wv.as_tensor()).unwrap(),
                );
                assert!(d < 1e-4, "dw differs by {d}");
            } else {
                // A frozen weight gets no gradient (the primitive version keeps one).
                assert!(gf.get(&w0).is_none());
            }
        }
    }

    #[test]
    fn strided_input_is_normalised_like_a_contiguous_one() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (8, 4), &dev).unwrap();
        let t = x.t().unwrap(); // [4, 8], not contiguous
        let norm = RmsNorm::new(Tensor::ones(8, DType::F32, &dev).unwrap(), 1e-6);
        let a = norm.forward(&t).unwrap();
        let b = norm.forward_primitive(&t.contiguous().unwrap()).unwrap();
        assert!(max_abs_diff(&a, &b) < 1e-6);
    }

    #[test]
    fn a_weight_of_the_wrong_size_is_an_error() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 4), DType::F32, &dev).unwrap();
        let norm = RmsNorm::new(Tensor::ones(5, DType::F32, &dev).unwrap(), 1e-6);
        let err = norm.forward(&x).unwrap_err();
        assert!(
            err.to_string()
                .contains("weight of shape [5] for rows of 4"),
            "{err}"
        );
    }
}
