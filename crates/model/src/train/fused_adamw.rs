//! AdamW's update of one parameter as a single pass over CPU memory.
//!
//! Written as tensor operations, one update allocates and writes about a dozen
//! parameter-sized tensors (`m·β1`, `g·(1−β1)`, their sum, `g²`, ... ,`θ'`).
//! For a step that trains every expert of the 4-expert SmolLM2 (318M
//! parameters) that is tens of gigabytes of memory traffic and page faults,
//! which profiling (`perf` on `fluxmoe bench train-step`) put at about a
//! quarter of the step. Here each element is read once and `m'`, `v'`, `θ'`
//! written once.
//!
//! The arithmetic is the tensor version's, operation for operation, in f32
//! with the same f64 → f32 coefficient casts, so both give the same numbers
//! (a test checks equality). New `m'`/`v'` tensors are returned rather than
//! written in place, because [`super::AdamW::state`] hands out the old ones.

use candle_core::{Layout, Storage, Tensor};
use rayon::prelude::*;

use crate::Result;

/// The f32 coefficients of one update, cast from f64 exactly as candle's
/// `tensor * f64` casts its scalar.
#[derive(Debug, Clone, Copy)]
pub(super) struct Coefficients {
    pub beta1: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    /// 1 / (1 − β1^t)
    pub m_correction: f32,
    /// 1 / (1 − β2^t)
    pub v_correction: f32,
    pub eps: f32,
    /// 1 − lr·wd
    pub decay: f32,
    pub lr: f32,
}

impl Coefficients {
    pub fn new(cfg: &super::AdamWConfig, t: u64) -> Self {
        let super::AdamWConfig {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } = *cfg;
        Self {
            beta1: beta1 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            m_correction: (1.0 / (1.0 - beta1.powf(t as f64))) as f32,
            v_correction: (1.0 / (1.0 - beta2.powf(t as f64))) as f32,
            eps: eps as f32,
            decay: (1.0 - lr * weight_decay) as f32,
            lr: lr as f32,
        }
    }

    #[inline]
    fn apply(&self, theta: f32, g: f32, m: f32, v: f32) -> (f32, f32, f32) {
        let m = m * self.beta1 + g * self.one_minus_beta1;
        let v = v * self.beta2 + (g * g) * self.one_minus_beta2;
        let m_hat = m * self.m_correction;
        let v_hat = v * self.v_correction;
        let update = m_hat / (v_hat.sqrt() + self.eps);
        let theta = theta * self.decay - update * self.lr;
        (m, v, theta)
    }
}

/// Elements per parallel chunk: large enough that rayon's overhead vanishes,
/// small enough to spread a single expert matrix over the threads.
const CHUNK: usize = 1 << 15;

/// The new `(m, v, θ)` for parameter `theta` with gradient `grad` and previous
/// moments `moments` (`None`: zero moments, the first update). Returns
/// `Ok(None)` when any tensor is not contiguous f32 in CPU memory; the caller
/// then uses the tensor operations.
pub(super) fn update(
    theta: &Tensor,
    grad: &Tensor,
    moments: Option<(&Tensor, &Tensor)>,
    k: &Coefficients,
) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    let (theta_storage, theta_layout) = theta.storage_and_layout();
    let (grad_storage, grad_layout) = grad.storage_and_layout();
    let (Some(theta_v), Some(grad_v)) = (
        cpu_f32(&theta_storage, theta_layout),
        cpu_f32(&grad_storage, grad_layout),
    ) else {
        return Ok(None);
    };
    if theta_v.len() != grad_v.len() {
        return Ok(None);
    }
    let n = theta_v.len();
    let mut m_out = vec![0f32; n];
    let mut v_out = vec![0f32; n];
    let mut theta_out = vec![0f32; n];
    let outputs = m_out
        .par_chunks_mut(CHUNK)
        .zip(v_out.par_chunks_mut(CHUNK))
        .zip(theta_out.par_chunks_mut(CHUNK))
        .enumerate();
    match moments {
        None => outputs.for_each(|(c, ((m_o, v_o), t_o))| {
            let start = c * CHUNK;
            for i in 0..m_o.len() {
                let j = start + i;
                (m_o[i], v_o[i], t_o[i]) = k.apply(theta_v[j], grad_v[j], 0.0, 0.0);
            }
        }),
        Some((m, v)) => {
            let (m_storage, m_layout) = m.storage_and_layout();
            let (v_storage, v_layout) = v.storage_and_layout();
            let (Some(m_v), Some(v_v)) =
                (cpu_f32(&m_storage, m_layout), cpu_f32(&v_storage, v_layout))
            else {
                return Ok(None);
            };
            if m_v.len() != n || v_v.len() != n {
                return Ok(None);
            }
            outputs.for_each(|(c, ((m_o, v_o), t_o))| {
                let start = c * CHUNK;
                for i in 0..m_o.len() {
                    let j = start + i;
                    (m_o[i], v_o[i], t_o[i]) = k.apply(theta_v[j], grad_v[j], m_v[j], v_v[j]);
                }
            })
        }
    }
    let shape = theta.shape();
    let device = theta.device();
    Ok(Some((
        Tensor::from_vec(m_out, shape, device)?,
        Tensor::from_vec(v_out, shape, device)?,
        Tensor::from_vec(theta_out, shape, device)?,
    )))
}

/// The elements of a contiguous f32 CPU tensor, in order.
pub(super) fn cpu_f32<'a>(storage: &'a Storage, layout: &Layout) -> Option<&'a [f32]> {
    let Storage::Cpu(cpu) = storage else {
        return None;
    };
    let data = cpu.as_slice::<f32>().ok()?;
    let (start, end) = layout.contiguous_offsets()?;
    data.get(start..end)
}
