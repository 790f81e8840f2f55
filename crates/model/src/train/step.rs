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

/// FedProx's proximal term `μ/2 · ||w − w_anchor||²` over the trainable variables,
/// applied as its gradient `μ (w − w_anchor)` added to each variable's gradient.
#[derive(Debug, Clone, Copy)]
pub struct Proximal<'a> {
    pub mu: f64,
    /// The round's starting weights, by variable name.
    pub anchor: &'a std::collections::BTreeMap<String, Tensor>,
}

impl Proximal<'_> {
    /// Add `μ (w − w_anchor)` to the gradient of every variable of `opt`.
    pub fn apply(&self, opt: &AdamW, grads: &mut candle_core::backprop::GradStore) -> Result<()> {
        if self.mu == 0.0 {
            return Ok(());
        }
        for (name, var) in opt.vars() {
            let anchor = self
                .anchor
                .get(name)
                .ok_or_else(|| Error::Input(format!("proximal anchor lacks `{name}`")))?;
            let pull = ((var.as_tensor() - anchor)? * self.mu)?;
            let g = match grads.remove(var.as_tensor()) {
                Some(g) => (g + pull)?,
                None => pull,
            };
            grads.insert(var.as_tensor(), g);
        }
        Ok(())
    }
}

/// Run one step. The loss is checked before the update: a non-finite loss is an error
/// and leaves the parameters untouched.
pub fn train_step(
    model: &MoeModel,
    opt: &mut AdamW,
    batch: &Batch,
    max_grad_norm: Option<f64>,
) -> Result<StepStats> {
    train_step_prox(model, opt, batch, max_grad_norm, None)
}

/// [`train_step`] with an optional FedProx proximal term (added before clipping).
pub fn train_step_prox(
    model: &MoeModel,
    opt: &mut AdamW,
    batch: &Batch,
    max_grad_norm: Option<f64>,
    proximal: Option<&Proximal<'_>>,
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
    if let Some(p) = proximal {
        p.apply(opt, &mut grads)?;
    }
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
