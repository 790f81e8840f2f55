//! Learning-rate schedule: linear warm-up then cosine decay to a floor,
//! the lambda of Hugging Face's `get_cosine_with_min_lr_schedule_with_warmup`
//! (with `num_cycles = 0.5`):
//!
//! ```text
//! W = warmup_steps, T = total_steps, r = min_lr_ratio
//! step <  W:  lr = base_lr · step / W
//! step >= W:  p  = clamp((step − W) / max(1, T − W), 0, 1)
//!             lr = base_lr · (r + (1 − r) · ½(1 + cos(π·p)))
//! ```
//!
//! so `lr_at(0) = 0` (when W > 0), `lr_at(W) = base_lr`, and
//! `lr_at(T) = base_lr · r`, staying there after T.
//!
//! Convention: pass the **1-based index of the update about to be made**
//! (`optimizer.step_count() + 1`), so the first update uses `base_lr / W`
//! instead of wasting a step at lr 0 (which HF does, as it steps its
//! scheduler after the optimizer), and the last of T updates uses the floor.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrSchedule {
    /// Peak learning rate, reached at the end of the warm-up.
    pub base_lr: f64,
    /// Length of the linear warm-up from 0 (0 = no warm-up).
    pub warmup_steps: u64,
    /// Step at which the cosine reaches its floor.
    pub total_steps: u64,
    /// Floor of the cosine as a fraction of `base_lr`, in [0, 1].
    #[serde(default)]
    pub min_lr_ratio: f64,
}

impl LrSchedule {
    /// A constant learning rate (no warm-up, no decay).
    pub fn constant(lr: f64) -> Self {
        Self {
            base_lr: lr,
            warmup_steps: 0,
            total_steps: 0,
            min_lr_ratio: 1.0,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.base_lr.is_finite() && self.base_lr >= 0.0) {
            return Err(Error::config(
                "schedule.base_lr",
                format!("must be finite and >= 0, got {}", self.base_lr),
            ));
        }
        if self.warmup_steps > self.total_steps {
            return Err(Error::config(
                "schedule.warmup_steps",
                format!(
                    "must be <= total_steps ({}), got {}",
                    self.total_steps, self.warmup_steps
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(Error::config(
                "schedule.min_lr_ratio",
                format!("must be in [0, 1], got {}", self.min_lr_ratio),
            ));
        }
        Ok(())
    }

    /// Learning rate at `step` (see the module docs for the formula and the
    /// step convention).
    pub fn lr_at(&self, step: u64) -> f64 {
        let w = self.warmup_steps;
        if step < w {
            return self.base_lr * step as f64 / w as f64;
        }
        let span = self.total_steps.saturating_sub(w).max(1) as f64;
        let p = ((step - w) as f64 / span).clamp(0.0, 1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * p).cos());
        let r = self.min_lr_ratio;
        self.base_lr * (r + (1.0 - r) * cosine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn warmup_then_cosine() {
        let s = LrSchedule {
            base_lr: 1e-3,
            warmup_steps: 10,
            total_steps: 110,
            min_lr_ratio: 0.1,
        };
        s.validate().unwrap();
        close(s.lr_at(0), 0.0);
        close(s.lr_at(1), 1e-4);
        close(s.lr_at(5), 5e-4); // mid warm-up
        close(s.lr_at(10), 1e-3); // end of warm-up: peak
                                  // Halfway through the cosine: cos(π/2) = 0 → r + (1 − r)/2 = 0.55.
        close(s.lr_at(60), 0.55e-3);
        // A quarter in: ½(1 + cos(π/4)).
        close(
            s.lr_at(35),
            1e-3 * (0.1 + 0.9 * 0.5 * (1.0 + std::f64::consts::FRAC_1_SQRT_2)),
        );
        close(s.lr_at(110), 1e-4); // end: floor
        close(s.lr_at(1000), 1e-4); // stays at the floor
    }

    #[test]
    fn no_warmup_and_constant() {
        let s = LrSchedule {
            base_lr: 2.0,
            warmup_steps: 0,
            total_steps: 4,
            min_lr_ratio: 0.0,
        };
        close(s.lr_at(0), 2.0);
        close(s.lr_at(2), 1.0);
        close(s.lr_at(4), 0.0);
        let c = LrSchedule::constant(3e-4);
        c.validate().unwrap();
        for step in [0, 1, 7, 1_000_000] {
            close(c.lr_at(step), 3e-4);
        }
    }

    #[test]
    fn validation() {
        let ok = LrSchedule {
            base_lr: 1.0,
            warmup_steps: 5,
            total_steps: 10,
            min_lr_ratio: 0.0,
        };
        ok.validate().unwrap();
        let e = LrSchedule {
            warmup_steps: 11,
            ..ok
        }
        .validate()
        .unwrap_err();
        assert!(matches!(e, Error::Config { field, .. } if field == "schedule.warmup_steps"));
        assert!(LrSchedule {
            min_lr_ratio: 1.5,
            ..ok
        }
        .validate()
        .is_err());
        assert!(LrSchedule {
            base_lr: -1.0,
            ..ok
        }
        .validate()
        .is_err());
    }
}
