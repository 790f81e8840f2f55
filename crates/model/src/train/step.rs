//! One optimisation step of a model on one batch: forward, masked next-token loss,
//! backward, optional global-norm clipping, AdamW update of the trainable `Var`s.

use candle_core::Tensor;

use super::AdamW;
use crate::model::MoeModel;
use crate::{Error, Result};

/// A batch of token ids `[B, T]` with optional attention mask and loss mask `[B, T]`.
#[derive(Debug, Clone)]
pub struct Batch {
    pub input_ids: Tensor,
    pub attention_mask: Option<Tensor>,
    pub loss_mask: Option<Tensor>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// Run one step. The loss is checked before the update: a non-finite loss is an error
/// and leaves the parameters untouched.
pub fn train_step(
    model: &MoeModel,
    opt: &mut AdamW,
    batch: &Batch,
    max_grad_norm: Option<f64>,
) -> Result<StepStats> {
    let loss = model.loss(
        &batch.input_ids,
        batch.attention_mask.as_ref(),
        batch.loss_mask.as_ref(),
    )?;
    let value = loss.to_scalar::<f32>()?;
    if !value.is_finite() {
        return Err(Error::Input(format!("non-finite training loss {value}")));
    }
    let mut grads = loss.backward()?;
    let grad_norm = match max_grad_norm {
        Some(max) => opt.clip_grad_norm(&mut grads, max)?,
        None => opt.clip_grad_norm(&mut grads, f64::MAX)?,
    };
    opt.step(&grads)?;
    Ok(StepStats {
        loss: value,
        grad_norm,
    })
}
