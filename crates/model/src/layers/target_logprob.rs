//! `log softmax(logits)[target]` per row, with a fused backward pass.
//!
//! For logits `[n, V]` and targets `[n]`: `logp_i = x_{i,t_i} − m_i − log Σ_j e^{x_ij − m_i}`
//! (`m_i` the row maximum), and `∂logp_i/∂x_ij = [j = t_i] − softmax(x_i)_j`.
//! Built from candle primitives, the same value keeps the shifted logits and their
//! exponentials alive for the backward pass and allocates several more `[n, V]`
//! tensors during it; with SmolLM2's 49,152-token vocabulary those are about 50 MB per
//! 256 targets each (this op saves 142 MiB of a 1,566 MiB step at batch 4 x 64,
//! `crates/model/tests/activation_memory.rs`). Here the forward pass
//! keeps nothing but its input and the backward pass allocates exactly one `[n, V]`
//! tensor, the gradient. CPU only: [`target_logprob`] uses the primitive version
//! elsewhere.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor, D};

/// `log softmax(logits)[targets]` `[n]` for `logits` `[n, V]` (f32) and `targets` `[n]`
/// (u32), differentiable with respect to `logits`.
pub fn target_logprob(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if logits.device().is_cpu() {
        return logits
            .contiguous()?
            .apply_op2(&targets.contiguous()?, TargetLogProb);
    }
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let log_z = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    (shifted.gather(&targets.unsqueeze(1)?, 1)? - log_z)?.squeeze(1)
}

struct TargetLogProb;

/// The contiguous f32 rows and u32 targets of the op's two inputs.
fn rows<'a>(
    s1: &'a CpuStorage,
    l1: &Layout,
    s2: &'a CpuStorage,
    l2: &Layout,
) -> Result<(&'a [f32], &'a [u32], usize)> {
    let (n, v) = l1.shape().dims2()?;
    if l2.shape().dims() != [n] {
        candle_core::bail!(
            "target log-prob: {n} rows of logits but targets of shape {:?}",
            l2.shape().dims()
        );
    }
    let (CpuStorage::F32(x), CpuStorage::U32(t)) = (s1, s2) else {
        candle_core::bail!("target log-prob: expects f32 logits and u32 targets");
    };
    let (Some((a1, b1)), Some((a2, b2))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
    else {
        candle_core::bail!("target log-prob: inputs must be contiguous");
    };
    let (x, t) = (&x[a1..b1], &t[a2..b2]);
    if let Some(&bad) = t.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("target log-prob: target {bad} is outside the {v} logits");
    }
    Ok((x, t, v))
}

/// `(m, log Σ_j e^{x_j − m})` of one row.
fn max_and_log_sum_exp(row: &[f32]) -> (f32, f32) {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f32 = row.iter().map(|&x| (x - m).exp()).sum();
    (m, z.ln())
}

impl CustomOp2 for TargetLogProb {
    fn name(&self) -> &'static str {
        "target-logprob"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, t, v) = rows(s1, l1, s2, l2)?;
        let out: Vec<f32> = x
            .chunks_exact(v)
            .zip(t)
            .map(|(row, &t)| {
                let (m, lse) = max_and_log_sum_exp(row);
                row[t as usize] - m - lse
            })
            .collect();
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g: Vec<f32> = grad_res.to_vec1()?;
        let (s1, l1) = logits.storage_and_layout();
        let (s2, l2) = targets.storage_and_layout();
        let (Storage::Cpu(s1), Storage::Cpu(s2)) = (&*s1, &*s2) else {
            candle_core::bail!("target log-prob: backward expects CPU tensors");
        };
        let (x, t, v) = rows(s1, l1, s2, l2)?;
        let mut grad = vec![0f32; x.len()];
        for (((out, row), &t), &g) in grad
            .chunks_exact_mut(v)
            .zip(x.chunks_exact(v))
            .zip(t)
            .zip(&g)
        {
            let (m, lse) = max_and_log_sum_exp(row);
            let shift = m + lse;
            for (o, &x) in out.iter_mut().zip(row) {
                *o = -g * (x - shift).exp();
            }
            out[t as usize] += g;
        }
        let grad = Tensor::from_vec(grad, logits.shape(), logits.device())?;
        Ok((Some(grad), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::test_util::max_abs_diff;
    use candle_core::{Device, Var};

    /// The primitive composition the op replaces.
    fn reference(logits: &Tensor, targets: &Tensor) -> Tensor {
        let max = logits.max_keepdim(D::Minus1).unwrap().detach();
        let shifted = logits.broadcast_sub(&max).unwrap();
        let log_z = shifted
            .exp()
            .unwrap()
            .sum_keepdim(D::Minus1)
            .unwrap()
            .log()
            .unwrap();
        (shifted.gather(&targets.unsqueeze(1).unwrap(), 1).unwrap() - log_z)
            .unwrap()
            .squeeze(1)
            .unwrap()
    }

    #[test]
    fn value_and_gradient_match_the_primitive_composition() {
        let dev = Device::Cpu;
        // Large logits check the max shift; a weighted sum checks the incoming gradient.
        let x = Var::from_tensor(&(Tensor::randn(0f32, 30.0, (5, 11), &dev).unwrap())).unwrap();
        let t = Tensor::new(&[0u32, 10, 3, 3, 7], &dev).unwrap();
        let w = Tensor::new(&[1f32, -2.0, 0.5, 3.0, 0.0], &dev).unwrap();
        let fused = target_logprob(x.as_tensor(), &t).unwrap();
        let plain = reference(x.as_tensor(), &t);
        assert!(max_abs_diff(&fused, &plain) < 1e-5);
        let gf = (&fused * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gp = (&plain * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (a, b) = (
            gf.get(x.as_tensor()).unwrap(),
            gp.get(x.as_tensor()).unwrap(),
        );
        assert!(max_abs_diff(a, b) < 1e-5, "{}", max_abs_diff(a, b));
        // Each row's gradient is a one-hot minus a distribution, times a weight: it sums to 0.
        let sums: Vec<f32> = a.sum(1).unwrap().to_vec1().unwrap();
        assert!(sums.iter().all(|s| s.abs() < 1e-5), "{sums:?}");
    }

    #[test]
    fn bad_targets_and_shapes_are_errors() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 4), candle_core::DType::F32, &dev).unwrap();
        let err = target_logprob(&x, &Tensor::new(&[0u32, 4], &dev).unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("target 4 is outside the 4 logits"),
            "{err}"
        );
        let err = target_logprob(&x, &Tensor::new(&[0u32, 1, 2], &dev).unwrap()).unwrap_err();
        assert!(err.to_string().contains("2 rows of logits"), "{err}");
    }
}
