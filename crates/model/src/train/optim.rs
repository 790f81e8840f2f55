//! AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization"),
//! in the form PyTorch's `torch.optim.AdamW` implements.
//!
//! For every trainable parameter θ with gradient g at its t-th update
//! (t counted per parameter, starting at 1):
//!
//! ```text
//! θ ← θ − lr·wd·θ                      (decoupled weight decay)
//! m ← β1·m + (1 − β1)·g
//! v ← β2·v + (1 − β2)·g²
//! m̂ = m / (1 − β1^t)
//! v̂ = v / (1 − β2^t)
//! θ ← θ − lr · m̂ / (√v̂ + ε)
//! ```
//!
//! This is our own implementation, not a wrapper around
//! `candle_nn::optim::AdamW`: candle's version eagerly allocates moments in
//! the parameter's dtype, has no parameter names, keeps one global step for
//! the bias correction and exposes no state for checkpointing. Here:
//!
//! - parameters are named, and state (m, v, t) exists only for the vars the
//!   optimizer was built with, allocated lazily at their first gradient;
//! - a parameter without a gradient in the [`GradStore`] is left untouched
//!   (no decay, no moment decay, no step) and its name is reported back. This
//!   matters for MoE experts that received no tokens in a batch;
//! - moments are kept in f32 whatever the parameter dtype, and the update is
//!   computed in f32 then cast back to the parameter's dtype;
//! - an f32 parameter in CPU memory is updated in one pass over its elements
//!   ([`super::fused_adamw`]), with the same arithmetic as the tensor
//!   operations used everywhere else.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::fused_adamw;
use crate::{Error, Result};

/// Default learning rate: 1e-4.
pub const fn default_lr() -> f64 {
    1e-4
}
/// Default β1: 0.9.
pub const fn default_beta1() -> f64 {
    0.9
}
/// Default β2: 0.999.
pub const fn default_beta2() -> f64 {
    0.999
}
/// Default ε: 1e-8.
pub const fn default_eps() -> f64 {
    1e-8
}
/// Default weight decay: 0.0 (off).
pub const fn default_weight_decay() -> f64 {
    0.0
}

/// AdamW hyper-parameters. Every field is optional when deserialised and
/// falls back to the `default_*` function of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: default_lr(),
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
            weight_decay: default_weight_decay(),
        }
    }
}

impl AdamWConfig {
    /// Checks every field is in its meaningful range.
    pub fn validate(&self) -> Result<()> {
        check_lr(self.lr)?;
        for (field, beta) in [("adamw.beta1", self.beta1), ("adamw.beta2", self.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(Error::config(
                    field,
                    format!("must be in [0, 1), got {beta}"),
                ));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(Error::config(
                "adamw.eps",
                format!("must be finite and > 0, got {}", self.eps),
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::config(
                "adamw.weight_decay",
                format!("must be finite and >= 0, got {}", self.weight_decay),
            ));
        }
        Ok(())
    }
}

fn check_lr(lr: f64) -> Result<()> {
    if lr.is_finite() && lr >= 0.0 {
        Ok(())
    } else {
        Err(Error::config(
            "adamw.lr",
            format!("must be finite and >= 0, got {lr}"),
        ))
    }
}

/// Optimizer state of one parameter: its own update count `step` (t in the
/// bias correction) and its f32 moments `m`, `v` (same shape as the
/// parameter).
#[derive(Debug, Clone)]
pub struct ParamState {
    pub name: String,
    pub step: u64,
    pub m: Tensor,
    pub v: Tensor,
}

/// Full optimizer state, for checkpointing: the number of [`AdamW::step`]
/// calls so far and the state of every parameter that has been updated at
/// least once (in the optimizer's parameter order).
#[derive(Debug, Clone)]
pub struct AdamWState {
    pub step: u64,
    pub params: Vec<ParamState>,
}

#[derive(Debug)]
struct Moments {
    step: u64,
    m: Tensor,
    v: Tensor,
}

#[derive(Debug)]
struct Slot {
    name: String,
    var: Var,
    moments: Option<Moments>,
}

/// AdamW over a fixed list of named trainable [`Var`]s. See the module docs
/// for the update rule.
#[derive(Debug)]
pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    steps: u64,
}

impl AdamW {
    /// Builds the optimizer over `vars`. Names must be unique, each var may
    /// appear once, and every var must have a floating-point dtype.
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        cfg.validate()?;
        let mut names = std::collections::HashSet::new();
        let mut ids = std::collections::HashSet::new();
        let mut slots = Vec::with_capacity(vars.len());
        for (name, var) in vars {
            if !var.dtype().is_float() {
                return Err(Error::Input(format!(
                    "adamw: parameter `{name}` has non-float dtype {:?}",
                    var.dtype()
                )));
            }
            if !names.insert(name.clone()) {
                return Err(Error::Input(format!(
                    "adamw: parameter name `{name}` given twice"
                )));
            }
            if !ids.insert(var.as_tensor().id()) {
                return Err(Error::Input(format!(
                    "adamw: parameter `{name}` is the same var as an earlier one"
                )));
            }
            slots.push(Slot {
                name,
                var,
                moments: None,
            });
        }
        Ok(Self {
            cfg,
            slots,
            steps: 0,
        })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    pub fn lr(&self) -> f64 {
        self.cfg.lr
    }

    /// Sets the learning rate used by the next [`AdamW::step`] (e.g. from an
    /// [`super::LrSchedule`]). Rejects negative or non-finite values.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        check_lr(lr)?;
        self.cfg.lr = lr;
        Ok(())
    }

    /// Number of [`AdamW::step`] calls so far (restored by
    /// [`AdamW::load_state`]).
    pub fn step_count(&self) -> u64 {
        self.steps
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The parameters, in the order given to [`AdamW::new`].
    pub fn vars(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.slots.iter().map(|s| (s.name.as_str(), &s.var))
    }

    /// Clips the gradients of this optimizer's parameters to global L2 norm
    /// `max_norm`; see [`super::clip_grad_norm`]. Errors name the parameter
    /// whose gradient is not finite.
    pub fn clip_grad_norm(&self, grads: &mut GradStore, max_norm: f64) -> Result<f64> {
        let vars: Vec<&Var> = self.slots.iter().map(|s| &s.var).collect();
        super::clip::clip_impl(grads, &vars, &|i| self.slots[i].name.clone(), max_norm)
    }

    /// One AdamW update of every parameter that has a gradient in `grads`.
    /// Parameters without one are left untouched; their names are returned
    /// (empty when every parameter was updated).
    pub fn step(&mut self, grads: &GradStore) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                missing.push(slot.name.clone());
                continue;
            };
            if g.dims() != slot.var.dims() {
                return Err(Error::Shape {
                    name: format!("gradient of `{}`", slot.name),
                    expected: slot.var.dims().to_vec(),
                    got: g.dims().to_vec(),
                });
            }
            let g = g.to_dtype(DType::F32)?;
            let t = slot.moments.as_ref().map_or(1, |mo| mo.step + 1);
            let moments = slot.moments.as_ref().map(|mo| (&mo.m, &mo.v));
            let k = fused_adamw::Coefficients::new(&self.cfg, t);
            let fused = if slot.var.dtype() == DType::F32 {
                fused_adamw::update(slot.var.as_tensor(), &g, moments, &k)?
            } else {
                None
            };
            let (m, v, theta) = match fused {
                Some(new) => new,
                None => tensor_update(slot.var.as_tensor(), &g, moments, &k)?,
            };
            slot.var.set(&theta.to_dtype(slot.var.dtype())?)?;
            slot.moments = Some(Moments { step: t, m, v });
        }
        self.steps += 1;
        Ok(missing)
    }

    /// A snapshot of the optimizer state (cheap: tensors are shared, and the
    /// optimizer never mutates them in place).
    pub fn state(&self) -> AdamWState {
        AdamWState {
            step: self.steps,
            params: self
                .slots
                .iter()
                .filter_map(|s| {
                    s.moments.as_ref().map(|mo| ParamState {
                        name: s.name.clone(),
                        step: mo.step,
                        m: mo.m.clone(),
                        v: mo.v.clone(),
                    })
                })
                .collect(),
        }
    }

    /// Replaces the optimizer state with `state` (e.g. from a checkpoint).
    /// Every name in `state` must be one of this optimizer's parameters and
    /// its moments must match the parameter's shape; parameters absent from
    /// `state` restart with empty moments. Moments are converted to f32 and
    /// moved to the parameter's device. On error the optimizer is unchanged.
    pub fn load_state(&mut self, state: AdamWState) -> Result<()> {
        let mut restored: Vec<Option<Moments>> = self.slots.iter().map(|_| None).collect();
        for p in state.params {
            let Some(i) = self.slots.iter().position(|s| s.name == p.name) else {
                return Err(Error::Input(format!(
                    "adamw state: unknown parameter `{}`",
                    p.name
                )));
            };
            if restored[i].is_some() {
                return Err(Error::Input(format!(
                    "adamw state: parameter `{}` given twice",
                    p.name
                )));
            }
            if p.step == 0 {
                return Err(Error::Input(format!(
                    "adamw state: parameter `{}` has step 0",
                    p.name
                )));
            }
            let var = &self.slots[i].var;
            let mut moments = [p.m, p.v];
            for (which, t) in ["m", "v"].iter().zip(moments.iter_mut()) {
                if t.dims() != var.dims() {
                    return Err(Error::Shape {
                        name: format!("adamw state `{}`.{which}", p.name),
                        expected: var.dims().to_vec(),
                        got: t.dims().to_vec(),
                    });
                }
                *t = t.to_dtype(DType::F32)?.to_device(var.device())?;
            }
            let [m, v] = moments;
            restored[i] = Some(Moments { step: p.step, m, v });
        }
        for (slot, moments) in self.slots.iter_mut().zip(restored) {
            slot.moments = moments;
        }
        self.steps = state.step;
        Ok(())
    }
}

/// One AdamW update as tensor operations, on any device and dtype: the new
/// f32 `(m, v, θ)` of parameter `theta`. It takes the fused path's f32
/// coefficients (widened back to f64 exactly; candle narrows them again), so
/// both paths multiply by the same numbers.
fn tensor_update(
    theta: &Tensor,
    g: &Tensor,
    moments: Option<(&Tensor, &Tensor)>,
    k: &fused_adamw::Coefficients,
) -> Result<(Tensor, Tensor, Tensor)> {
    let f = f64::from;
    let (m, v) = match moments {
        Some((m, v)) => (m.clone(), v.clone()),
        None => (g.zeros_like()?, g.zeros_like()?),
    };
    let m = ((m * f(k.beta1))? + (g * f(k.one_minus_beta1))?)?;
    let v = ((v * f(k.beta2))? + (g.sqr()? * f(k.one_minus_beta2))?)?;
    let m_hat = (&m * f(k.m_correction))?;
    let v_hat = (&v * f(k.v_correction))?;
    let update = (m_hat / (v_hat.sqrt()? + f(k.eps))?)?;
    let theta = (theta.to_dtype(DType::F32)? * f(k.decay))?;
    let theta = (theta - (update * f(k.lr))?)?;
    Ok((m, v, theta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn var(vals: &[f32]) -> Var {
        Var::new(vals, &Device::Cpu).unwrap()
    }

    fn vals(v: &Var) -> Vec<f32> {
        v.as_tensor().to_vec1::<f32>().unwrap()
    }

    fn assert_close(got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < tol, "got {got:?}, want {want:?}");
        }
    }

    /// loss = Σ θ², so g = 2θ.
    fn sq_grads(v: &Var) -> GradStore {
        v.as_tensor()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    }

    const CFG: AdamWConfig = AdamWConfig {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.1,
    };

    #[test]
    fn hand_computed_two_steps() {
        let theta = var(&[1.0, -2.0]);
        let mut opt = AdamW::new(vec![("theta".into(), theta.clone())], CFG).unwrap();

        // Step 1: g = [2, -4]. Decay: θ·(1 − 0.1·0.1) = [0.99, −1.98].
        // m = 0.1·g = [0.2, −0.4], v = 0.001·g² = [0.004, 0.016];
        // m̂ = [2, −4], v̂ = [4, 16], m̂/(√v̂+ε) ≈ [1, −1];
        // θ = [0.99 − 0.1, −1.98 + 0.1] = [0.89, −1.88].
        let missing = opt.step(&sq_grads(&theta)).unwrap();
        assert!(missing.is_empty());
        assert_close(&vals(&theta), &[0.89, -1.88], 1e-6);
        let st = opt.state();
        assert_eq!(st.step, 1);
        assert_eq!(st.params.len(), 1);
        assert_eq!(st.params[0].step, 1);
        assert_close(
            &st.params[0].m.to_vec1::<f32>().unwrap(),
            &[0.2, -0.4],
            1e-7,
        );
        assert_close(
            &st.params[0].v.to_vec1::<f32>().unwrap(),
            &[0.004, 0.016],
            1e-8,
        );

        // Step 2: g = 2θ = [1.78, −3.76]. Decay: θ·0.99 = [0.8811, −1.8612].
        // m = 0.9·[0.2, −0.4] + 0.1·g = [0.358, −0.736]
        // v = 0.999·[0.004, 0.016] + 0.001·g² = [0.0071644, 0.0301216]
        // m̂ = m/0.19 = [1.8842105, −3.8736842]
        // v̂ = v/0.001999 = [3.5839920, 15.0683342], √v̂ = [1.8931434, 3.8817953]
        // θ = θ − 0.1·m̂/√v̂ = [0.8811 − 0.0995281, −1.8612 + 0.0997911]
        //   = [0.7815719, −1.7614090]
        opt.step(&sq_grads(&theta)).unwrap();
        assert_close(&vals(&theta), &[0.781_571_9, -1.761_409_0], 1e-6);
        let st = opt.state();
        assert_eq!((st.step, st.params[0].step), (2, 2));
        assert_close(
            &st.params[0].m.to_vec1::<f32>().unwrap(),
            &[0.358, -0.736],
            1e-6,
        );
        assert_close(
            &st.params[0].v.to_vec1::<f32>().unwrap(),
            &[0.007_164_4, 0.030_121_6],
            1e-8,
        );
    }

    #[test]
    fn var_without_grad_is_untouched_and_reported() {
        let a = var(&[1.0, 2.0]);
        let b = var(&[3.0, 4.0]);
        let mut opt = AdamW::new(
            vec![("a".into(), a.clone()), ("b".into(), b.clone())],
            CFG, // weight decay on: b must not even decay
        )
        .unwrap();
        let missing = opt.step(&sq_grads(&a)).unwrap();
        assert_eq!(missing, vec!["b".to_string()]);
        assert_eq!(vals(&b), vec![3.0, 4.0]);
        assert_ne!(vals(&a), vec![1.0, 2.0]);
        let st = opt.state();
        assert_eq!(st.params.len(), 1);
        assert_eq!(st.params[0].name, "a");
    }

    #[test]
    fn toy_quadratic_is_minimised() {
        let target = Tensor::new(&[1.0f32, 2.0, 3.0, -4.0], &Device::Cpu).unwrap();
        let theta = var(&[3.0, -2.0, 0.0, 5.0]);
        let mut opt = AdamW::new(
            vec![("theta".into(), theta.clone())],
            AdamWConfig {
                lr: 1.0,
                ..AdamWConfig::default()
            },
        )
        .unwrap();
        let sched = super::super::LrSchedule {
            base_lr: 1.0,
            warmup_steps: 5,
            total_steps: 100,
            min_lr_ratio: 0.0,
        };
        let loss = |t: &Var| {
            (t.as_tensor() - &target)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let initial = loss(&theta).to_scalar::<f32>().unwrap();
        for _ in 0..100 {
            let mut grads = loss(&theta).backward().unwrap();
            opt.clip_grad_norm(&mut grads, 10.0).unwrap();
            opt.set_lr(sched.lr_at(opt.step_count() + 1)).unwrap();
            assert!(opt.step(&grads).unwrap().is_empty());
        }
        let last = loss(&theta).to_scalar::<f32>().unwrap();
        assert!(initial > 50.0);
        assert!(last < 1e-2, "loss after 100 steps: {last}");
    }

    #[test]
    fn state_roundtrip_resumes_exactly() {
        let mk = || var(&[0.5, -1.5, 2.0]);
        // Reference: three uninterrupted steps.
        let r = mk();
        let mut ref_opt = AdamW::new(vec![("w".into(), r.clone())], CFG).unwrap();
        for _ in 0..3 {
            ref_opt.step(&sq_grads(&r)).unwrap();
        }
        // Two steps, snapshot, fresh optimizer on a copy, restore, one step.
        let a = mk();
        let mut opt = AdamW::new(vec![("w".into(), a.clone())], CFG).unwrap();
        for _ in 0..2 {
            opt.step(&sq_grads(&a)).unwrap();
        }
        let state = opt.state();
        let b = Var::from_tensor(a.as_tensor()).unwrap();
        let mut resumed = AdamW::new(vec![("w".into(), b.clone())], CFG).unwrap();
        resumed.load_state(state).unwrap();
        assert_eq!(resumed.step_count(), 2);
        resumed.step(&sq_grads(&b)).unwrap();
        assert_eq!(vals(&b), vals(&r));
    }

    #[test]
    fn load_state_rejects_unknown_name_and_bad_shape() {
        let a = var(&[1.0, 2.0]);
        let mut opt = AdamW::new(vec![("a".into(), a.clone())], CFG).unwrap();
        let z = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        let p = |name: &str, m: Tensor| ParamState {
            name: name.into(),
            step: 1,
            m: m.clone(),
            v: m,
        };
        let err = opt
            .load_state(AdamWState {
                step: 1,
                params: vec![p("nope", z.clone())],
            })
            .unwrap_err();
        assert!(err.to_string().contains("`nope`"), "{err}");
        let z3 = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let err = opt
            .load_state(AdamWState {
                step: 1,
                params: vec![p("a", z3)],
            })
            .unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
        assert_eq!(opt.step_count(), 0);
    }

    #[test]
    fn constructor_and_config_validation() {
        let a = var(&[1.0]);
        assert!(AdamW::new(
            vec![("a".into(), a.clone()), ("a".into(), var(&[2.0]))],
            CFG
        )
        .is_err());
        assert!(AdamW::new(vec![("a".into(), a.clone()), ("b".into(), a.clone())], CFG).is_err());
        let bad = AdamWConfig { beta1: 1.0, ..CFG };
        assert!(matches!(
            AdamW::new(vec![], bad),
            Err(Error::Config { field, .. }) if field == "adamw.beta1"
        ));
        let mut opt = AdamW::new(vec![("a".into(), a)], CFG).unwrap();
        assert!(opt.set_lr(f64::NAN).is_err());
        opt.set_lr(0.25).unwrap();
        assert_eq!(opt.lr(), 0.25);
    }

    #[test]
    fn config_deserialises_with_defaults() {
        let c: AdamWConfig = serde_json::from_str(r#"{"lr": 0.001}"#).unwrap();
        assert_eq!(
            c,
            AdamWConfig {
                lr: 0.001,
                ..AdamWConfig::default()
            }
        );
        let d = AdamWConfig::default();
        assert_eq!(
            (d.lr, d.beta1, d.beta2, d.eps, d.weight_decay),
            (1e-4, 0.9, 0.999, 1e-8, 0.0)
        );
        assert!(serde_json::from_str::<AdamWConfig>(r#"{"lrr": 1}"#).is_err());
    }

    /// The one-pass CPU update gives the tensor operations' numbers exactly,
    /// over several chunks and steps, with weight decay and clipped gradients.
    #[test]
    fn fused_update_equals_tensor_operations() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let n = 3 * 22_001; // three chunks, the last one partial
        let mut random = |scale: f32| -> Tensor {
            let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-scale..scale)).collect();
            Tensor::from_vec(v, (n / 3, 3), &Device::Cpu).unwrap()
        };
        let mut theta = random(1.0);
        let mut moments: Option<(Tensor, Tensor)> = None;
        let mut fused_theta = theta.clone();
        let mut fused_moments: Option<(Tensor, Tensor)> = None;
        for t in 1..=3 {
            let g = (random(0.1) * 0.37).unwrap();
            let k = fused_adamw::Coefficients::new(&CFG, t);
            let (m, v, th) = fused_adamw::update(
                &fused_theta,
                &g,
                fused_moments.as_ref().map(|(m, v)| (m, v)),
                &k,
            )
            .unwrap()
            .expect("contiguous f32 CPU tensors take the fused path");
            fused_theta = th;
            fused_moments = Some((m, v));
            let (m, v, th) =
                tensor_update(&theta, &g, moments.as_ref().map(|(m, v)| (m, v)), &k).unwrap();
            theta = th;
            moments = Some((m, v));
            let flat = |x: &Tensor| x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(flat(&fused_theta), flat(&theta), "θ at step {t}");
            let (fm, fv) = fused_moments.as_ref().unwrap();
            let (m, v) = moments.as_ref().unwrap();
            assert_eq!(flat(fm), flat(m), "m at step {t}");
            assert_eq!(flat(fv), flat(v), "v at step {t}");
        }
        // A strided gradient is not taken by the fused path.
        let g = random(0.1).t().unwrap();
        let k = fused_adamw::Coefficients::new(&CFG, 1);
        let theta_t = Tensor::zeros((3, n / 3), DType::F32, &Device::Cpu).unwrap();
        assert!(fused_adamw::update(&theta_t, &g, None, &k)
            .unwrap()
            .is_none());
    }

    #[test]
    fn bf16_param_keeps_dtype_with_f32_moments() {
        let w = Var::from_tensor(
            &Tensor::new(&[1.0f32, -1.0], &Device::Cpu)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap(),
        )
        .unwrap();
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], CFG).unwrap();
        let grads = w
            .as_tensor()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        opt.step(&grads).unwrap();
        assert_eq!(w.dtype(), DType::BF16);
        assert_eq!(opt.state().params[0].m.dtype(), DType::F32);
    }
}
