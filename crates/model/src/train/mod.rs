//! Training primitives that do not depend on the model code: the AdamW
//! optimizer ([`optim`]), global-norm gradient clipping ([`clip`]) and the
//! warm-up + cosine learning-rate schedule ([`schedule`]); and what a step's
//! activations hold at most ([`activations`]).
//!
//! A training step is meant to look like
//!
//! ```text
//! let mut grads = loss.backward()?;
//! let norm = opt.clip_grad_norm(&mut grads, max_norm)?;   // or clip::clip_grad_norm
//! opt.set_lr(schedule.lr_at(opt.step_count() + 1));
//! let missing = opt.step(&grads)?;
//! ```

pub mod activations;
pub mod clip;
mod fused_adamw;
pub mod optim;
pub mod schedule;

pub use activations::step_activation_bytes;
pub use clip::{clip_grad_norm, sum_of_squares};
pub use optim::{AdamW, AdamWConfig, AdamWState, ParamState};
pub use schedule::LrSchedule;
pub mod step;
pub use step::{train_step, train_step_prox, Batch, Proximal, StepStats};
