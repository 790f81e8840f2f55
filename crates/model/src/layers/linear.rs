//! `y = x @ W^T (+ b)` with `W` in PyTorch layout `[out, in]`; `x` is `[.., in]`.
//!
//! When `W` is frozen (not a `Var`), the product runs as a custom op whose backward
//! returns only `dx = dy @ W`: candle's generic matmul backward would also compute (and
//! keep until the end of the backward pass) a gradient for the frozen weight, doubling
//! the backward matmul work and holding one weight-sized tensor per frozen matrix.
//! Both paths call the same backend matmul, so their outputs are bit-identical.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};

#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        let k = dims.pop().unwrap_or(1);
        let flat = if x.rank() == 2 {
            x.clone()
        } else {
            x.reshape(((), k))?
        };
        let y = if self.weight.is_variable() {
            flat.matmul(&self.weight.t()?)?
        } else {
            flat.contiguous()?.apply_op1(FrozenWeightMatmul {
                weight: self.weight.clone(),
            })?
        };
        let y = if x.rank() == 2 {
            y
        } else {
            dims.push(self.weight.dim(0)?);
            y.reshape(dims)?
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// `x [m, k] @ W^T` for a frozen `W [n, k]`; the backward pass yields only `dx`.
struct FrozenWeightMatmul {
    weight: Tensor,
}

impl FrozenWeightMatmul {
    fn dims(&self, x: &Layout) -> Result<(usize, usize, usize, Layout)> {
        let (m, k) = x.shape().dims2()?;
        let (n, k_w) = self.weight.dims2()?;
        if k != k_w {
            candle_core::bail!("linear: input has {k} features, weight expects {k_w}");
        }
        let w_t = self.weight.layout().transpose(0, 1)?;
        Ok((m, n, k, w_t))
    }
}

impl CustomOp1 for FrozenWeightMatmul {
    fn name(&self) -> &'static str {
        "frozen-weight-matmul"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, n, k, w_t) = self.dims(x_layout)?;
        let (storage, _) = self.weight.storage_and_layout();
        match &*storage {
            Storage::Cpu(w) => Ok((x.matmul(w, (1, m, n, k), x_layout, &w_t)?, (m, n).into())),
            _ => candle_core::bail!("linear: weight and input are on different devices"),
        }
    }

    fn cuda_fwd(&self, x: &CudaStorage, x_layout: &Layout) -> Result<(CudaStorage, Shape)> {
        let (m, n, k, w_t) = self.dims(x_layout)?;
        let (storage, _) = self.weight.storage_and_layout();
        match &*storage {
            Storage::Cuda(w) => Ok((x.matmul(w, (1, m, n, k), x_layout, &w_t)?, (m, n).into())),
            _ => candle_core::bail!("linear: weight and input are on different devices"),
        }
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad_y: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_y.matmul(&self.weight)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn frozen_and_trainable_paths_agree_forward_and_backward() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (5, 3), &dev).unwrap();
        let x = Var::randn(0f32, 1.0, (4, 3), &dev).unwrap();
        let frozen = Linear::new(w.clone(), None);
        let trainable = Linear::new(Var::from_tensor(&w).unwrap().as_tensor().clone(), None);
        let yf = frozen.forward(x.as_tensor()).unwrap();
        let yt = trainable.forward(x.as_tensor()).unwrap();
        assert_eq!(yf.to_vec2::<f32>().unwrap(), yt.to_vec2::<f32>().unwrap());
        let gf = yf.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let gt = yt.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let (a, b) = (
            gf.get(x.as_tensor()).unwrap(),
            gt.get(x.as_tensor()).unwrap(),
        );
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{diff}");
        // Rank-3 input and a strided (non-contiguous) input go through the same path.
        let x3 = x.as_tensor().reshape((2, 2, 3)).unwrap();
        let y3 = frozen.forward(&x3).unwrap().reshape((4, 5)).unwrap();
        assert_eq!(y3.to_vec2::<f32>().unwrap(), yf.to_vec2::<f32>().unwrap());
        let xt = x
            .as_tensor()
            .t()
            .unwrap()
            .contiguous()
            .unwrap()
            .t()
            .unwrap();
        assert_eq!(
            frozen.forward(&xt).unwrap().to_vec2::<f32>().unwrap(),
            yf.to_vec2::<f32>().unwrap()
        );
    }
}
