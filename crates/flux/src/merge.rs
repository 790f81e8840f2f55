//! Layer-aware expert merging, FLUX §5 (METHOD.md "Customise"): the pure maths.
//!
//! A participant keeps its tuning and exploration experts and folds the non-tuning
//! experts of each layer into a few frozen merged experts:
//! 1. [`layer_slots`] spreads the `B_non` merged slots over layers (Eq. 1);
//! 2. [`pca_project`] reduces each non-tuning expert's flattened weights `[N, D]` to
//!    `[N, pca_dim]` through the `N×N` Gram matrix;
//! 3. [`cosine_kmeans`] clusters them with `B_non(l)` centroids per layer, all layers in
//!    one masked similarity computation;
//! 4. [`merge_coefficients`] and [`merge_tensors`] build each merged expert
//!    `W_c = Σ_{e∈c} (α_e / Σ_{e'∈c} α_{e'}) · W_e` (Eq. 2), one weight matrix at a time;
//! 5. [`relative_l2_error`] measures the output error of the customised model.
//!
//! Wiring this into a model (which experts, which tensors, gate re-routing) lives elsewhere.

mod kmeans;
mod pca;
mod slots;

pub use kmeans::{cosine_kmeans, masked_similarity};
pub use pca::{centred_gram, jacobi_eigen, pca_from_gram, pca_project};
pub use slots::{layer_slots, SlotRule};

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// Merge weights of the members of one cluster (Eq. 2): `α_e / Σ_{e'} α_{e'}`, with
/// `α_e = f_e · ā_e` (or `f_e` alone in the ablation) computed by the caller.
///
/// When every `α` is zero or the sum is not finite and positive (an infinite `α`), falls
/// back to the uniform `1/n`. Errors with [`Error::Input`] on an empty slice or a negative
/// or NaN `α`.
pub fn merge_coefficients(alpha: &[f64]) -> Result<Vec<f64>> {
    if alpha.is_empty() {
        return Err(Error::Input("merge coefficients: empty cluster".into()));
    }
    if let Some((idx, a)) = alpha
        .iter()
        .enumerate()
        .find(|(_, a)| a.is_nan() || **a < 0.0)
    {
        return Err(Error::Input(format!(
            "merge coefficients: alpha[{idx}] must be >= 0, got {a}"
        )));
    }
    let sum: f64 = alpha.iter().sum();
    if sum.is_finite() && sum > 0.0 {
        Ok(alpha.iter().map(|a| a / sum).collect())
    } else {
        Ok(vec![1.0 / alpha.len() as f64; alpha.len()])
    }
}

/// `W_c = Σ_i coef[i] · W_i` for same-shape, same-dtype, same-device tensors (one expert
/// weight matrix each). Accumulates in f32 (f64 for f64 inputs) and returns the inputs' dtype.
///
/// Errors with [`Error::Input`] naming the mismatch on an empty list, a length mismatch
/// between `weights` and `coef`, a non-finite coefficient, or a shape, dtype or device that
/// differs from the first tensor's.
pub fn merge_tensors(weights: &[&Tensor], coef: &[f64]) -> Result<Tensor> {
    let Some(first) = weights.first() else {
        return Err(Error::Input("merge tensors: no weights to merge".into()));
    };
    if weights.len() != coef.len() {
        return Err(Error::Input(format!(
            "merge tensors: {} weights but {} coefficients",
            weights.len(),
            coef.len()
        )));
    }
    if let Some((idx, c)) = coef.iter().enumerate().find(|(_, c)| !c.is_finite()) {
        return Err(Error::Input(format!(
            "merge tensors: coefficient {idx} is not finite, got {c}"
        )));
    }
    for (idx, w) in weights.iter().enumerate().skip(1) {
        if w.shape() != first.shape() || w.dtype() != first.dtype() {
            return Err(Error::Input(format!(
                "merge tensors: weight {idx} is {:?} {:?}, weight 0 is {:?} {:?}",
                w.dtype(),
                w.dims(),
                first.dtype(),
                first.dims()
            )));
        }
        if !w.device().same_device(first.device()) {
            return Err(Error::Input(format!(
                "merge tensors: weight {idx} is on {:?}, weight 0 on {:?}",
                w.device(),
                first.device()
            )));
        }
    }
    let acc_dtype = if first.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let mut acc = first.to_dtype(acc_dtype)?.affine(coef[0], 0.0)?;
    for (w, &c) in weights.iter().zip(coef).skip(1) {
        acc = (acc + w.to_dtype(acc_dtype)?.affine(c, 0.0)?)?;
    }
    Ok(acc.to_dtype(first.dtype())?)
}

/// Relative L2 error `‖y − y_ref‖ / ‖y_ref‖` of two same-shape tensors, computed in f64:
/// METHOD.md's output error of the customised MoE layer (`y`) against the unmerged one
/// (`y_ref`). It is 0 when both are zero and `+∞` when only `y_ref` is zero.
pub fn relative_l2_error(y: &Tensor, y_ref: &Tensor) -> Result<f64> {
    if y.shape() != y_ref.shape() {
        return Err(Error::Input(format!(
            "relative l2 error: output is {:?} but reference is {:?}",
            y.dims(),
            y_ref.dims()
        )));
    }
    let y = y.to_dtype(DType::F64)?;
    let y_ref = y_ref.to_dtype(DType::F64)?;
    let diff = (y - &y_ref)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let norm = y_ref.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    Ok(match (diff == 0.0, norm == 0.0) {
        (true, _) => 0.0,
        (false, true) => f64::INFINITY,
        (false, false) => diff / norm,
    })
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn coefficients_normalise_and_fall_back_to_uniform() {
        let c = merge_coefficients(&[1.0, 3.0, 0.0, 4.0]).unwrap();
        assert_eq!(c, vec![0.125, 0.375, 0.0, 0.5]);
        assert_eq!(c.iter().sum::<f64>(), 1.0);
        assert_eq!(merge_coefficients(&[0.0; 4]).unwrap(), vec![0.25; 4]);
        assert_eq!(
            merge_coefficients(&[f64::INFINITY, 1.0]).unwrap(),
            vec![0.5; 2]
        );
        assert!(matches!(merge_coefficients(&[]), Err(Error::Input(_))));
        assert!(matches!(
            merge_coefficients(&[1.0, -0.5]),
            Err(Error::Input(_))
        ));
        assert!(matches!(
            merge_coefficients(&[f64::NAN]),
            Err(Error::Input(_))
        ));
    }

    #[test]
    fn merged_tensor_is_the_weighted_sum() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &dev).unwrap();
        let b = Tensor::new(&[[10f32, 0.0], [-2.0, 8.0]], &dev).unwrap();
        let w = merge_tensors(&[&a, &b], &[0.25, 0.75]).unwrap();
        assert_eq!(w.dtype(), DType::F32);
        // 0.25·a + 0.75·b = [[7.75, 0.5], [-0.75, 7]].
        assert_eq!(
            w.to_vec2::<f32>().unwrap(),
            vec![vec![7.75, 0.5], vec![-0.75, 7.0]]
        );
        let wrong_shape = Tensor::new(&[1f32, 2.0, 3.0, 4.0], &dev).unwrap();
        let err = merge_tensors(&[&a, &wrong_shape], &[0.5, 0.5]).unwrap_err();
        assert!(err.to_string().contains("weight 1"), "{err}");
        let wrong_dtype = a.to_dtype(DType::F64).unwrap();
        assert!(matches!(
            merge_tensors(&[&a, &wrong_dtype], &[0.5, 0.5]),
            Err(Error::Input(_))
        ));
        assert!(matches!(
            merge_tensors(&[&a, &b], &[1.0]),
            Err(Error::Input(_))
        ));
        assert!(matches!(merge_tensors(&[], &[]), Err(Error::Input(_))));
    }

    #[test]
    fn relative_error_hand_case() {
        let dev = Device::Cpu;
        let y_ref = Tensor::new(&[[3f32, 0.0], [0.0, 4.0]], &dev).unwrap();
        let y = Tensor::new(&[[3f32, 1.0], [0.0, 4.0]], &dev).unwrap();
        // ‖y − y_ref‖ = 1, ‖y_ref‖ = 5.
        assert!((relative_l2_error(&y, &y_ref).unwrap() - 0.2).abs() < 1e-12);
        assert_eq!(relative_l2_error(&y_ref, &y_ref).unwrap(), 0.0);
        let zero = y_ref.zeros_like().unwrap();
        assert_eq!(relative_l2_error(&zero, &zero).unwrap(), 0.0);
        assert_eq!(relative_l2_error(&y, &zero).unwrap(), f64::INFINITY);
        let flat = y.flatten_all().unwrap();
        assert!(matches!(
            relative_l2_error(&flat, &y_ref),
            Err(Error::Input(_))
        ));
    }
}
