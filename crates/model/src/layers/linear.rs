//! `y = x @ W^T (+ b)` with `W` in PyTorch layout `[out, in]`; `x` is `[.., in]`.

use candle_core::{Result, Tensor};

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
        let y = if x.rank() == 2 {
            x.matmul(&self.weight.t()?)?
        } else {
            let mut dims = x.dims().to_vec();
            let k = dims.pop().unwrap_or(1);
            let flat = x.reshape(((), k))?.matmul(&self.weight.t()?)?;
            dims.push(self.weight.dim(0)?);
            flat.reshape(dims)?
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}
