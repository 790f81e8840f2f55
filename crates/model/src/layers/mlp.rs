//! SwiGLU MLP (dense layers, routed and shared experts):
//! `y = down(silu(gate(x)) * up(x))`, `x` `[N, hidden]` → `[N, hidden]`.

use candle_core::{Result, Tensor};

use super::Linear;

#[derive(Debug, Clone)]
pub struct SwiGlu {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

impl SwiGlu {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = (self.gate.forward(x)?.silu()? * self.up.forward(x)?)?;
        self.down.forward(&h)
    }
}
