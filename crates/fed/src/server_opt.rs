//! Server optimizers: how the weighted mean delta Δ̄ of a tensor (see
//! [`crate::aggregate`]) moves the global tensor w.
//!
//! - `Sgd { lr }`: `w ← w + lr · Δ̄`; with `lr = 1` this is FedAvg.
//! - `Adam { lr, beta1, beta2, tau }`: FedAdam of Reddi et al. 2021, "Adaptive
//!   Federated Optimization" (Algorithm 2), elementwise:
//!
//!   ```text
//!   m ← β1·m + (1−β1)·Δ̄
//!   v ← β2·v + (1−β2)·Δ̄²
//!   w ← w + lr · m / (√v + τ)
//!   ```
//!
//!   with `m₀ = 0`, `v₀ = τ²` (the paper requires `v₋₁ ≥ τ²`) and no bias correction.
//!   A tensor's moments are created the first round it is updated, and only tensors
//!   updated this round step: tensors nobody tuned keep their value and moments.
//!   Moments are f32 (f64 for f64 tensors) whatever the model dtype.
//!
//! State (step count, moments) is checkpointed as [`ServerOptimizerState`], bit-exact.

use std::collections::BTreeMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::aggregate::{accumulation_dtype, MeanDelta};
use crate::cost::WorkCost;
use crate::error::{Error, Result};
use crate::tensor_data::TensorData;
use crate::wire::Global;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerOptimizerConfig {
    Sgd {
        lr: f64,
    },
    Adam {
        lr: f64,
        beta1: f64,
        beta2: f64,
        tau: f64,
    },
}

impl ServerOptimizerConfig {
    /// Plain FedAvg.
    pub fn fedavg() -> Self {
        ServerOptimizerConfig::Sgd { lr: 1.0 }
    }

    /// Whether this is plain FedAvg (`Sgd` with `lr = 1`).
    pub fn is_fedavg(&self) -> bool {
        *self == Self::fedavg()
    }

    pub fn validate(&self) -> Result<()> {
        let positive = |field: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::config(
                    format!("server_optimizer.{field}"),
                    format!("must be finite and > 0, got {v}"),
                ))
            }
        };
        let unit = |field: &str, v: f64| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(Error::config(
                    format!("server_optimizer.{field}"),
                    format!("must be in [0, 1), got {v}"),
                ))
            }
        };
        match *self {
            ServerOptimizerConfig::Sgd { lr } => positive("lr", lr),
            ServerOptimizerConfig::Adam {
                lr,
                beta1,
                beta2,
                tau,
            } => {
                positive("lr", lr)?;
                unit("beta1", beta1)?;
                unit("beta2", beta2)?;
                positive("tau", tau)
            }
        }
    }
}

/// Checkpointable optimizer state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerOptimizerState {
    /// Steps taken (rounds with at least one updated tensor).
    pub steps: u64,
    pub m: BTreeMap<String, TensorData>,
    pub v: BTreeMap<String, TensorData>,
}

/// A server optimizer with its state.
#[derive(Clone, Debug)]
pub struct ServerOptimizer {
    cfg: ServerOptimizerConfig,
    steps: u64,
    m: BTreeMap<String, Tensor>,
    v: BTreeMap<String, Tensor>,
    /// Loaded moments not yet placed on a device; they move to `m`/`v` on first use,
    /// on the device of the tensor they belong to.
    pending_m: BTreeMap<String, TensorData>,
    pending_v: BTreeMap<String, TensorData>,
}

impl ServerOptimizer {
    pub fn new(cfg: ServerOptimizerConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(ServerOptimizer {
            cfg,
            steps: 0,
            m: BTreeMap::new(),
            v: BTreeMap::new(),
            pending_m: BTreeMap::new(),
            pending_v: BTreeMap::new(),
        })
    }

    pub fn config(&self) -> &ServerOptimizerConfig {
        &self.cfg
    }

    /// Apply the mean deltas; tensors without one are returned as the same `Tensor`.
    /// Returns the new global model and the server work of the step.
    pub fn step(
        &mut self,
        global: &Global,
        means: &BTreeMap<String, MeanDelta>,
    ) -> Result<(Global, WorkCost)> {
        if let Some(name) = means.keys().find(|name| !global.contains_key(*name)) {
            return Err(Error::tensor(
                name,
                "mean delta for a tensor not in the global model",
            ));
        }
        let mut cost = WorkCost::default();
        let mut next = Global::new();
        for (name, w) in global {
            let Some(mean) = means.get(name) else {
                next.insert(name.clone(), w.clone());
                continue;
            };
            let acc_dtype = accumulation_dtype(w.dtype());
            let delta = mean.delta.to_dtype(acc_dtype)?;
            let n = w.elem_count() as f64;
            let update = match self.cfg {
                ServerOptimizerConfig::Sgd { lr } => {
                    cost.flops += 2.0 * n;
                    if lr == 1.0 {
                        delta
                    } else {
                        delta.affine(lr, 0.0)?
                    }
                }
                ServerOptimizerConfig::Adam {
                    lr,
                    beta1,
                    beta2,
                    tau,
                } => {
                    cost.flops += 12.0 * n;
                    let m = match self.take_moment(name, &delta, true)? {
                        Some(m) => m,
                        None => delta.zeros_like()?,
                    };
                    let v = match self.take_moment(name, &delta, false)? {
                        Some(v) => v,
                        None => delta.ones_like()?.affine(tau * tau, 0.0)?,
                    };
                    let m = (m.affine(beta1, 0.0)? + delta.affine(1.0 - beta1, 0.0)?)?;
                    let v = (v.affine(beta2, 0.0)? + delta.sqr()?.affine(1.0 - beta2, 0.0)?)?;
                    let update = (m.affine(lr, 0.0)? / v.sqrt()?.affine(1.0, tau)?)?;
                    self.m.insert(name.clone(), m);
                    self.v.insert(name.clone(), v);
                    update
                }
            };
            let new_w = (w.to_dtype(acc_dtype)? + update)?.to_dtype(w.dtype())?;
            next.insert(name.clone(), new_w);
        }
        if !means.is_empty() {
            self.steps += 1;
        }
        Ok((next, cost))
    }

    /// The stored moment of `name` (loaded lazily onto `like`'s device), checked
    /// against `like`'s shape and dtype.
    fn take_moment(&mut self, name: &str, like: &Tensor, first: bool) -> Result<Option<Tensor>> {
        let (live, pending) = if first {
            (&mut self.m, &mut self.pending_m)
        } else {
            (&mut self.v, &mut self.pending_v)
        };
        let t = match live.remove(name) {
            Some(t) => t,
            None => match pending.remove(name) {
                Some(data) => data.to_tensor(name, like.device())?,
                None => return Ok(None),
            },
        };
        if t.dims() != like.dims() || t.dtype() != like.dtype() {
            return Err(Error::State(format!(
                "optimizer moment of `{name}` has shape {:?} {:?}, the tensor {:?} {:?}",
                t.dims(),
                t.dtype(),
                like.dims(),
                like.dtype()
            )));
        }
        Ok(Some(t))
    }

    pub fn state(&self) -> Result<ServerOptimizerState> {
        let mut st = ServerOptimizerState {
            steps: self.steps,
            m: self.pending_m.clone(),
            v: self.pending_v.clone(),
        };
        for (name, t) in &self.m {
            st.m.insert(name.clone(), TensorData::from_tensor(name, t)?);
        }
        for (name, t) in &self.v {
            st.v.insert(name.clone(), TensorData::from_tensor(name, t)?);
        }
        Ok(st)
    }

    pub fn load_state(&mut self, st: &ServerOptimizerState) -> Result<()> {
        if matches!(self.cfg, ServerOptimizerConfig::Sgd { .. })
            && !(st.m.is_empty() && st.v.is_empty())
        {
            return Err(Error::State(
                "saved server optimizer has moments, this one is sgd".to_string(),
            ));
        }
        self.steps = st.steps;
        self.m.clear();
        self.v.clear();
        self.pending_m = st.m.clone();
        self.pending_v = st.v.clone();
        Ok(())
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(values: &[f32]) -> Tensor {
        Tensor::new(values, &Device::Cpu).unwrap()
    }

    fn mean(values: &[f32]) -> MeanDelta {
        MeanDelta {
            delta: t(values),
            total_weight: 1.0,
            contributors: vec![],
        }
    }

    fn adam(lr: f64, beta1: f64, beta2: f64, tau: f64) -> ServerOptimizer {
        ServerOptimizer::new(ServerOptimizerConfig::Adam {
            lr,
            beta1,
            beta2,
            tau,
        })
        .unwrap()
    }

    /// Scalar FedAdam, the slow reference.
    fn adam_slow(w: f64, deltas: &[f64], lr: f64, b1: f64, b2: f64, tau: f64) -> f64 {
        let (mut w, mut m, mut v) = (w, 0.0, tau * tau);
        for d in deltas {
            m = b1 * m + (1.0 - b1) * d;
            v = b2 * v + (1.0 - b2) * d * d;
            w += lr * m / (v.sqrt() + tau);
        }
        w
    }

    #[test]
    fn sgd_scales_the_mean_delta() {
        let mut sgd = ServerOptimizer::new(ServerOptimizerConfig::Sgd { lr: 0.5 }).unwrap();
        let g = Global::from([("w".to_string(), t(&[1.0, 1.0]))]);
        let (next, cost) = sgd
            .step(&g, &BTreeMap::from([("w".to_string(), mean(&[2.0, -4.0]))]))
            .unwrap();
        assert_eq!(next["w"].to_vec1::<f32>().unwrap(), vec![2.0, -1.0]);
        assert_eq!(cost.flops, 4.0);
    }

    #[test]
    fn adam_with_zero_betas_is_sign_like_step() {
        // β1 = β2 = 0: m = Δ, v = Δ², step = lr·Δ/(|Δ| + τ). Δ = 3, τ = 1 → 0.75.
        let mut opt = adam(1.0, 0.0, 0.0, 1.0);
        let g = Global::from([("w".to_string(), t(&[0.0, 10.0]))]);
        let (next, _) = opt
            .step(&g, &BTreeMap::from([("w".to_string(), mean(&[3.0, -1.0]))]))
            .unwrap();
        // Second element: −1/(1 + 1) = −0.5.
        assert_eq!(next["w"].to_vec1::<f32>().unwrap(), vec![0.75, 9.5]);
    }

    #[test]
    fn adam_matches_the_scalar_reference_over_rounds_and_skips_untouched() {
        let (lr, b1, b2, tau) = (0.1, 0.9, 0.99, 1e-3);
        let mut opt = adam(lr, b1, b2, tau);
        let mut g = Global::from([("w".to_string(), t(&[1.0])), ("u".to_string(), t(&[5.0]))]);
        let deltas = [0.5, -0.2, 0.3];
        for (r, d) in deltas.iter().enumerate() {
            let mut means = BTreeMap::from([("w".to_string(), mean(&[*d as f32]))]);
            if r == 0 {
                means.insert("u".to_string(), mean(&[1.0]));
            }
            let before_u = g["u"].clone();
            let (next, _) = opt.step(&g, &means).unwrap();
            if r > 0 {
                assert_eq!(next["u"].id(), before_u.id());
            }
            g = next;
        }
        let deltas_f32: Vec<f64> = deltas.iter().map(|d| *d as f32 as f64).collect();
        let expect = adam_slow(1.0, &deltas_f32, lr, b1, b2, tau);
        let got = g["w"].to_vec1::<f32>().unwrap()[0] as f64;
        assert!((got - expect).abs() < 1e-5, "{got} vs {expect}");
        let expect_u = adam_slow(5.0, &[1.0], lr, b1, b2, tau);
        assert!((g["u"].to_vec1::<f32>().unwrap()[0] as f64 - expect_u).abs() < 1e-5);
        assert_eq!(opt.steps(), 3);
    }

    #[test]
    fn adam_state_round_trip_continues_bit_identically() {
        let cfg = ServerOptimizerConfig::Adam {
            lr: 0.05,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-3,
        };
        let g0 = Global::from([("w".to_string(), t(&[1.0, -2.0, 0.25]))]);
        let d1 = BTreeMap::from([("w".to_string(), mean(&[0.3, 0.1, -0.7]))]);
        let d2 = BTreeMap::from([("w".to_string(), mean(&[-0.2, 0.4, 0.05]))]);

        let mut straight = ServerOptimizer::new(cfg.clone()).unwrap();
        let (g1, _) = straight.step(&g0, &d1).unwrap();
        let (g2, _) = straight.step(&g1, &d2).unwrap();

        let mut first = ServerOptimizer::new(cfg.clone()).unwrap();
        let (g1b, _) = first.step(&g0, &d1).unwrap();
        let json = serde_json::to_string(&first.state().unwrap()).unwrap();
        let mut resumed = ServerOptimizer::new(cfg).unwrap();
        resumed
            .load_state(&serde_json::from_str(&json).unwrap())
            .unwrap();
        let (g2b, _) = resumed.step(&g1b, &d2).unwrap();
        let bits = |t: &Tensor| {
            t.to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(f32::to_bits)
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&g2["w"]), bits(&g2b["w"]));
        assert_eq!(resumed.steps(), 2);
        assert_eq!(resumed.state().unwrap(), straight.state().unwrap());
    }

    #[test]
    fn bad_configs_and_mismatched_state_are_errors() {
        let err = ServerOptimizer::new(ServerOptimizerConfig::Adam {
            lr: 0.1,
            beta1: 1.0,
            beta2: 0.9,
            tau: 1e-3,
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("server_optimizer.beta1"), "{err}");
        let err = ServerOptimizer::new(ServerOptimizerConfig::Sgd { lr: 0.0 })
            .unwrap_err()
            .to_string();
        assert!(err.contains("server_optimizer.lr"), "{err}");

        let mut opt = adam(0.1, 0.9, 0.99, 1e-3);
        let mut st = ServerOptimizerState::default();
        st.m.insert(
            "w".into(),
            TensorData::from_tensor("w", &t(&[0.0, 0.0])).unwrap(),
        );
        opt.load_state(&st).unwrap();
        let g = Global::from([("w".to_string(), t(&[1.0, 2.0, 3.0]))]);
        let err = opt
            .step(
                &g,
                &BTreeMap::from([("w".to_string(), mean(&[1.0, 1.0, 1.0]))]),
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("moment of `w`"), "{err}");
        let mut sgd = ServerOptimizer::new(ServerOptimizerConfig::fedavg()).unwrap();
        assert!(sgd.load_state(&st).is_err());
    }
}
