//! Gradient clipping by global L2 norm (as `torch.nn.utils.clip_grad_norm_`).
//!
//! ```text
//! n = sqrt( Σ_params Σ_i g_i² )
//! if n > max_norm:  g ← g · (max_norm / n)      for every gradient
//! ```
//!
//! After clipping the global norm is exactly `max_norm` (up to rounding);
//! gradients whose global norm is already ≤ `max_norm` are left alone.
//! Squares are summed in f64 for CPU f32 gradients (in f32 on other devices);
//! all gradients on other devices must live on one device.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use crate::{Error, Result};

/// Clips the gradients in `grads` of `vars` so their global L2 norm is at
/// most `max_norm` and returns the norm before clipping. Vars without a
/// gradient in `grads` are ignored. A non-finite norm (NaN/inf gradient) is an
/// [`Error::Input`] naming the index of the first offending var; use
/// [`super::AdamW::clip_grad_norm`] to get parameter names instead.
pub fn clip_grad_norm<'a>(
    grads: &mut GradStore,
    vars: impl IntoIterator<Item = &'a Var>,
    max_norm: f64,
) -> Result<f64> {
    let vars: Vec<&Var> = vars.into_iter().collect();
    clip_impl(
        grads,
        &vars,
        &|i| format!("#{i} (shape {:?})", vars[i].dims()),
        max_norm,
    )
}

pub(crate) fn clip_impl(
    grads: &mut GradStore,
    vars: &[&Var],
    name_of: &dyn Fn(usize) -> String,
    max_norm: f64,
) -> Result<f64> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(Error::Input(format!(
            "gradient clipping: max_norm must be finite and > 0, got {max_norm}"
        )));
    }
    // Per-var sums of squares: in one pass over host memory for a contiguous
    // f32 CPU gradient (accumulated in f64), else on the gradient's device
    // with one transfer at the end.
    let mut host: Vec<(usize, f64)> = Vec::new();
    let mut device: Vec<(usize, Tensor)> = Vec::new();
    for (i, var) in vars.iter().enumerate() {
        if let Some(g) = grads.get(var.as_tensor()) {
            match host_sum_of_squares(g) {
                Some(s) => host.push((i, s)),
                None => device.push((i, g.to_dtype(DType::F32)?.sqr()?.sum_all()?)),
            }
        }
    }
    if host.is_empty() && device.is_empty() {
        return Ok(0.0);
    }
    let mut total: f64 = host.iter().map(|(_, s)| s).sum();
    if let Some((_, first)) = device.first() {
        let mut on_device = first.clone();
        for (_, s) in &device[1..] {
            on_device = (on_device + s)?;
        }
        total += on_device.to_scalar::<f32>()? as f64;
    }
    let norm = total.sqrt();
    if !norm.is_finite() {
        let mut culprit = String::from("(none found: overflow of the sum)");
        let mut partials: Vec<(usize, f64)> = host.clone();
        for (i, s) in &device {
            partials.push((*i, s.to_scalar::<f32>()? as f64));
        }
        partials.sort_by_key(|(i, _)| *i);
        if let Some((i, _)) = partials.iter().find(|(_, s)| !s.is_finite()) {
            culprit = format!("first non-finite gradient: `{}`", name_of(*i));
        }
        return Err(Error::Input(format!(
            "non-finite gradient norm {norm}; {culprit}"
        )));
    }
    if norm > max_norm {
        let scale = max_norm / norm;
        for i in host
            .iter()
            .map(|(i, _)| *i)
            .chain(device.iter().map(|(i, _)| *i))
        {
            let t = vars[i].as_tensor();
            if let Some(g) = grads.get(t) {
                let clipped = (g * scale)?;
                grads.insert(t, clipped);
            }
        }
    }
    Ok(norm)
}

/// Σ x² of a tensor: in f64 in one pass for a contiguous f32 CPU tensor (see
/// [`host_sum_of_squares`]), else in f32 on the tensor's device.
pub fn sum_of_squares(x: &Tensor) -> Result<f64> {
    match host_sum_of_squares(x) {
        Some(s) => Ok(s),
        None => Ok(f64::from(
            x.to_dtype(DType::F32)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f32>()?,
        )),
    }
}

/// Σ x² of a contiguous f32 CPU tensor, summed in f64 over fixed chunks in
/// order (the same value for any number of threads); `None` for any other
/// tensor.
fn host_sum_of_squares(g: &Tensor) -> Option<f64> {
    use rayon::prelude::*;
    let (storage, layout) = g.storage_and_layout();
    let values = super::fused_adamw::cpu_f32(&storage, layout)?;
    let partials: Vec<f64> = values
        .par_chunks(1 << 15)
        .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
        .collect();
    Some(partials.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn norm_of(grads: &GradStore, vars: &[Var]) -> f64 {
        vars.iter()
            .map(|v| {
                grads
                    .get(v.as_tensor())
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap() as f64
            })
            .sum::<f64>()
            .sqrt()
    }

    /// Two vars; loss = Σ a·ca + Σ b·cb so the gradients are ca and cb:
    /// [3, 0] and [0, 4] → global norm 5.
    fn setup() -> (Vec<Var>, GradStore) {
        let dev = Device::Cpu;
        let a = Var::new(&[1.0f32, 1.0], &dev).unwrap();
        let b = Var::new(&[1.0f32, 1.0], &dev).unwrap();
        let ca = Tensor::new(&[3.0f32, 0.0], &dev).unwrap();
        let cb = Tensor::new(&[0.0f32, 4.0], &dev).unwrap();
        let loss = ((a.as_tensor() * &ca).unwrap().sum_all().unwrap()
            + (b.as_tensor() * &cb).unwrap().sum_all().unwrap())
        .unwrap();
        let grads = loss.backward().unwrap();
        (vec![a, b], grads)
    }

    #[test]
    fn clips_to_max_norm() {
        let (vars, mut grads) = setup();
        let before = clip_grad_norm(&mut grads, &vars, 1.0).unwrap();
        assert!((before - 5.0).abs() < 1e-6);
        assert!((norm_of(&grads, &vars) - 1.0).abs() < 1e-6);
        let ga = grads
            .get(vars[0].as_tensor())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!((ga[0] - 0.6).abs() < 1e-6 && ga[1] == 0.0, "{ga:?}");
    }

    #[test]
    fn leaves_small_gradients_alone() {
        let (vars, mut grads) = setup();
        let before = clip_grad_norm(&mut grads, &vars, 5.5).unwrap();
        assert!((before - 5.0).abs() < 1e-6);
        let gb = grads
            .get(vars[1].as_tensor())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(gb, vec![0.0, 4.0]);
    }

    #[test]
    fn vars_without_grads_are_ignored() {
        let (vars, mut grads) = setup();
        let c = Var::new(&[100.0f32], &Device::Cpu).unwrap();
        let all = [vars[0].clone(), vars[1].clone(), c];
        let before = clip_grad_norm(&mut grads, &all, 10.0).unwrap();
        assert!((before - 5.0).abs() < 1e-6);
        assert!(grads.get(all[2].as_tensor()).is_none());
    }

    #[test]
    fn non_finite_norm_is_an_error_naming_the_param() {
        let dev = Device::Cpu;
        let a = Var::new(&[1.0f32], &dev).unwrap();
        let b = Var::new(&[0.0f32], &dev).unwrap();
        // d/db sqrt(b) at b = 0 is +inf.
        let loss = (a.as_tensor().sum_all().unwrap()
            + b.as_tensor().sqrt().unwrap().sum_all().unwrap())
        .unwrap();
        let mut grads = loss.backward().unwrap();
        let err = clip_grad_norm(&mut grads, [&a, &b], 1.0).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("non-finite gradient norm") && msg.contains("#1"),
            "{msg}"
        );

        let opt = crate::train::AdamW::new(
            vec![("a".into(), a), ("layer.b".into(), b)],
            Default::default(),
        )
        .unwrap();
        let msg = opt.clip_grad_norm(&mut grads, 1.0).unwrap_err().to_string();
        assert!(msg.contains("`layer.b`"), "{msg}");
    }

    #[test]
    fn bad_max_norm_is_rejected() {
        let (vars, mut grads) = setup();
        assert!(clip_grad_norm(&mut grads, &vars, 0.0).is_err());
        assert!(clip_grad_norm(&mut grads, &vars, f64::NAN).is_err());
    }
}
