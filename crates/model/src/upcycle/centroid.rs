//! **Centroid routers**: router rows from the mean FFN input of each expert's tokens.
//!
//! Every token of a calibration set belongs, in each layer, to one class (one per
//! expert). Branch-Train-MiX labels a token by its domain (the same in every layer);
//! the neuron split labels it, per layer, by the expert whose neurons contribute most
//! to the dense FFN's output for it. With `x_{l,n}` layer `l`'s FFN input for token `n`
//! (what the router reads), `μ_{l,e}` the mean of `x_{l,n}` over class `e` and
//! `c_{l,e} = μ_{l,e} − mean_d μ_{l,d}` (the mean over the classes that have tokens),
//! router row `e` of layer `l` is `α_l · c_{l,e}`: the centring removes what all
//! classes share, so a token scores high on the expert whose class it leans towards,
//! and its logits sum to zero over the experts. A class without tokens gets a zero row.
//!
//! The scale `α_l` makes the root-mean-square of the logits over all calibration tokens
//! and experts equal `logit_rms`:
//! `α_l = τ / sqrt((1 / (N E)) Σ_n Σ_e ⟨c_{l,e}, x_{l,n}⟩²)`, computed from the
//! second-moment matrix `S_l = Σ_n x_{l,n} x_{l,n}ᵀ` as `Σ_e c_{l,e}ᵀ S_l c_{l,e}`,
//! so the inputs are never kept. When every class mean coincides the rows are zero.

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// Running sums of FFN inputs per layer and class (in f32); [`CentroidRouters::routers`]
/// turns them into f32 router weights.
pub(crate) struct CentroidRouters {
    /// `sums[l][e]`: Σ x over the class-`e` tokens of layer `l`, `[hidden]`.
    sums: Vec<Vec<Option<Tensor>>>,
    counts: Vec<Vec<usize>>,
    /// `second[l]`: Σ x xᵀ over every token of layer `l`, `[hidden, hidden]`.
    second: Vec<Option<Tensor>>,
}

impl CentroidRouters {
    pub(crate) fn new(n_layers: usize, n_classes: usize) -> Self {
        Self {
            sums: vec![vec![None; n_classes]; n_layers],
            counts: vec![vec![0; n_classes]; n_layers],
            second: vec![None; n_layers],
        }
    }

    /// Adds layer `layer`'s FFN inputs `x` (`[N, hidden]`) of `N` tokens, all of class
    /// `class`.
    pub(crate) fn add_class(&mut self, layer: usize, class: usize, x: &Tensor) -> Result<()> {
        let x = x.detach().to_dtype(DType::F32)?;
        accumulate(&mut self.sums[layer][class], x.sum(0)?)?;
        self.counts[layer][class] += x.dim(0)?;
        accumulate(&mut self.second[layer], x.t()?.matmul(&x)?)
    }

    /// Adds layer `layer`'s FFN inputs `x` (`[N, hidden]`), row `n` of class `labels[n]`.
    pub(crate) fn add_labelled(&mut self, layer: usize, x: &Tensor, labels: &[u32]) -> Result<()> {
        let x = x.detach().to_dtype(DType::F32)?;
        if x.dim(0)? != labels.len() {
            return Err(Error::Input(format!(
                "{} class labels for {} rows",
                labels.len(),
                x.dim(0)?
            )));
        }
        let n_classes = self.counts[layer].len();
        if let Some(&bad) = labels.iter().find(|&&c| c as usize >= n_classes) {
            return Err(Error::Input(format!(
                "class label {bad} for {n_classes} classes"
            )));
        }
        for class in 0..n_classes {
            let rows: Vec<u32> = (0..labels.len() as u32)
                .filter(|&n| labels[n as usize] as usize == class)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let idx = Tensor::new(rows.as_slice(), x.device())?;
            accumulate(
                &mut self.sums[layer][class],
                x.index_select(&idx, 0)?.sum(0)?,
            )?;
            self.counts[layer][class] += rows.len();
        }
        accumulate(&mut self.second[layer], x.t()?.matmul(&x)?)
    }

    /// Every layer's router `[classes, hidden]`, scaled to logits of root-mean-square
    /// `logit_rms` over the tokens added.
    pub(crate) fn routers(self, logit_rms: f64) -> Result<Vec<Tensor>> {
        let mut routers = Vec::with_capacity(self.sums.len());
        for (l, ((sums, counts), second)) in self
            .sums
            .into_iter()
            .zip(self.counts)
            .zip(self.second)
            .enumerate()
        {
            let s = second.ok_or_else(|| Error::Input("no calibration tokens".into()))?;
            let n_classes = counts.len();
            let n_tokens: usize = counts.iter().sum();
            let means = sums
                .into_iter()
                .zip(&counts)
                .filter_map(|(sum, &n)| sum.map(|sum| sum / n as f64))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let means = Tensor::stack(&means, 0)?;
            let centred = means.broadcast_sub(&means.mean_keepdim(0)?)?;
            let centred = if means.dim(0)? == n_classes {
                centred
            } else {
                // Zero rows for the classes without tokens.
                let zero = centred.get(0)?.zeros_like()?;
                let mut filled = 0;
                let rows = counts
                    .iter()
                    .map(|&n| {
                        if n == 0 {
                            Ok(zero.clone())
                        } else {
                            filled += 1;
                            centred.get(filled - 1)
                        }
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::stack(&rows, 0)?
            };
            let sum_sq = (centred.matmul(&s)? * &centred)?
                .sum_all()?
                .to_scalar::<f32>()? as f64;
            let rms = (sum_sq / (n_tokens * n_classes) as f64).sqrt();
            let router = if rms.is_finite() && rms > 0.0 {
                (centred * (logit_rms / rms))?
            } else {
                centred
            };
            tracing::info!(
                "layer {l}: router from class means, tokens per class {counts:?} (logit rms {rms:.3} before scaling)"
            );
            routers.push(router);
        }
        Ok(routers)
    }
}

fn accumulate(acc: &mut Option<Tensor>, x: Tensor) -> Result<()> {
    *acc = Some(match acc.take() {
        Some(a) => (a + x)?,
        None => x,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn rows(t: &Tensor) -> Vec<Vec<f32>> {
        t.to_vec2().unwrap()
    }

    #[test]
    fn labelled_rows_give_the_class_means_centred_and_scaled() {
        // Two classes in two dimensions: class 0 at (2, 0) and (4, 0), class 1 at (0, 2).
        let x = Tensor::new(&[[2f32, 0.], [0., 2.], [4., 0.]], &Device::Cpu).unwrap();
        let mut acc = CentroidRouters::new(1, 3);
        acc.add_labelled(0, &x, &[0, 1, 0]).unwrap();
        let router = acc.routers(1.0).unwrap().remove(0);
        // Means (3, 0) and (0, 2), their mean (1.5, 1): centred (1.5, −1), (−1.5, 1);
        // class 2 has no tokens, so a zero row. Logits before scaling: 3, −2, 6 for
        // class 0 and their negatives for class 1, so Σ² = 2 · 49 = 98 over 3 tokens ×
        // 3 classes.
        let alpha = (1.0 / (98f64 / 9.0).sqrt()) as f32;
        let want = [[1.5 * alpha, -alpha], [-1.5 * alpha, alpha], [0., 0.]];
        for (got, want) in rows(&router).iter().zip(want) {
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
            }
        }
        let logits = x.matmul(&router.t().unwrap()).unwrap();
        let rms = logits.sqr().unwrap().mean_all().unwrap();
        assert!((rms.to_scalar::<f32>().unwrap() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn classes_given_whole_equal_classes_given_row_by_row() {
        let a = Tensor::new(&[[1f32, 2., 0.], [3., 1., 1.]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[[0f32, 1., 5.]], &Device::Cpu).unwrap();
        let mut whole = CentroidRouters::new(1, 2);
        whole.add_class(0, 0, &a).unwrap();
        whole.add_class(0, 1, &b).unwrap();
        let mut labelled = CentroidRouters::new(1, 2);
        let x = Tensor::cat(&[&a, &b], 0).unwrap();
        labelled.add_labelled(0, &x, &[0, 0, 1]).unwrap();
        assert_eq!(
            rows(&whole.routers(2.0).unwrap()[0]),
            rows(&labelled.routers(2.0).unwrap()[0])
        );
    }

    #[test]
    fn bad_labels_and_no_tokens_are_errors() {
        let x = Tensor::new(&[[1f32, 2.]], &Device::Cpu).unwrap();
        let mut acc = CentroidRouters::new(1, 2);
        let err = acc.add_labelled(0, &x, &[2]).unwrap_err().to_string();
        assert!(err.contains("class label 2 for 2 classes"), "{err}");
        let err = acc.add_labelled(0, &x, &[0, 1]).unwrap_err().to_string();
        assert!(err.contains("2 class labels for 1 rows"), "{err}");
        let err = CentroidRouters::new(1, 2).routers(1.0).unwrap_err();
        assert!(err.to_string().contains("no calibration tokens"), "{err}");
    }
}
