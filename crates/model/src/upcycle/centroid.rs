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
//!
//! [`RouterInit::Discriminant`] replaces `c_{l,e}` by `A_l⁻¹ c_{l,e}` before scaling,
//! Fisher's linear discriminant: `A_l` is the pooled within-class covariance
//! `W_l = S_l / N − Σ_e (N_e / N) μ_{l,e} μ_{l,e}ᵀ`, shrunk towards its own diagonal,
//! `A_l = (1 − λ) W_l + λ diag(W_l)` (the off-diagonal entries scaled by `1 − λ`).
//! Class means may differ most along directions in which every class varies a lot (a
//! few hidden dimensions of a transformer carry most of the variance), and there the
//! centred means separate the classes poorly; the discriminant weighs each direction
//! by how little the classes vary along it. `λ` keeps `A_l` well conditioned when the
//! calibration tokens are few next to `d`; shrinking towards the diagonal rather than
//! a multiple of the identity keeps each dimension's own scale, which spans orders of
//! magnitude in a transformer's hidden state. Both rules leave out the bias of the
//! textbook discriminant, as Mixtral's routers have none.

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// How router rows are made from the class statistics (module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RouterInit {
    /// The centred class means.
    ClassMeans,
    /// Fisher's discriminant: the centred class means times the inverse of the
    /// within-class covariance shrunk by `shrinkage` (λ in `[0, 1]`) towards its diagonal.
    Discriminant { shrinkage: f64 },
}

impl RouterInit {
    pub fn name(&self) -> &'static str {
        match self {
            RouterInit::ClassMeans => "class-means",
            RouterInit::Discriminant { .. } => "discriminant",
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if let RouterInit::Discriminant { shrinkage } = *self {
            if !(0.0..=1.0).contains(&shrinkage) {
                return Err(Error::Input(format!(
                    "discriminant router shrinkage must be in [0, 1], got {shrinkage}"
                )));
            }
        }
        Ok(())
    }
}

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
    pub(crate) fn routers(self, init: RouterInit, logit_rms: f64) -> Result<Vec<Tensor>> {
        init.validate()?;
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
            let centred = match init {
                RouterInit::ClassMeans => centred,
                RouterInit::Discriminant { shrinkage } => {
                    let weights: Vec<f64> = counts
                        .iter()
                        .filter(|&&n| n > 0)
                        .map(|&n| n as f64 / n_tokens as f64)
                        .collect();
                    discriminant(&centred, &means, &weights, &s, n_tokens, shrinkage)?
                }
            };
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
                "layer {l}: router from {}, tokens per class {counts:?} (logit rms {rms:.3} before scaling)",
                init.name()
            );
            routers.push(router);
        }
        Ok(routers)
    }
}

/// `A⁻¹ cᵀ` for each row `c` of `centred` (`[C, d]`), with `A` the within-class
/// covariance of the module docs shrunk by `shrinkage`; `means` `[C, d]` are the class
/// means, `weights` their token shares, `second` `Σ x xᵀ` over `n_tokens` tokens.
/// In f64 on the host: `d` is a model's hidden size, so `A` is small.
fn discriminant(
    centred: &Tensor,
    means: &Tensor,
    weights: &[f64],
    second: &Tensor,
    n_tokens: usize,
    shrinkage: f64,
) -> Result<Tensor> {
    let d = second.dim(0)?;
    let host = |t: &Tensor| -> Result<Vec<f64>> {
        Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
    };
    let mut a = host(second)?;
    a.iter_mut().for_each(|x| *x /= n_tokens as f64);
    let mu = host(means)?;
    for (e, &w) in weights.iter().enumerate() {
        let m = &mu[e * d..(e + 1) * d];
        for i in 0..d {
            for j in 0..d {
                a[i * d + j] -= w * m[i] * m[j];
            }
        }
    }
    for i in 0..d {
        for j in (0..d).filter(|&j| j != i) {
            a[i * d + j] *= 1.0 - shrinkage;
        }
    }
    let factor = cholesky(a, d).ok_or_else(|| {
        Error::Input(format!(
            "the within-class covariance (shrinkage {shrinkage}) is not positive definite: raise the shrinkage or add calibration tokens"
        ))
    })?;
    let mut rows = host(centred)?;
    for row in rows.chunks_mut(d) {
        cholesky_solve(&factor, d, row);
    }
    let rows: Vec<f32> = rows.into_iter().map(|x| x as f32).collect();
    Ok(Tensor::from_vec(rows, centred.shape(), centred.device())?)
}

/// The lower Cholesky factor `L` (row-major, `L Lᵀ = a`) of the symmetric `d × d`
/// matrix `a`, or `None` when `a` is not positive definite.
fn cholesky(mut a: Vec<f64>, d: usize) -> Option<Vec<f64>> {
    for j in 0..d {
        let diag = a[j * d + j] - (0..j).map(|k| a[j * d + k].powi(2)).sum::<f64>();
        if !(diag > 0.0 && diag.is_finite()) {
            return None;
        }
        let diag = diag.sqrt();
        a[j * d + j] = diag;
        for i in j + 1..d {
            let dot: f64 = (0..j).map(|k| a[i * d + k] * a[j * d + k]).sum();
            a[i * d + j] = (a[i * d + j] - dot) / diag;
        }
        for k in j + 1..d {
            a[j * d + k] = 0.0;
        }
    }
    Some(a)
}

/// Solves `L Lᵀ x = b` in place, `L` from [`cholesky`].
fn cholesky_solve(l: &[f64], d: usize, b: &mut [f64]) {
    for i in 0..d {
        let dot: f64 = (0..i).map(|k| l[i * d + k] * b[k]).sum();
        b[i] = (b[i] - dot) / l[i * d + i];
    }
    for i in (0..d).rev() {
        let dot: f64 = (i + 1..d).map(|k| l[k * d + i] * b[k]).sum();
        b[i] = (b[i] - dot) / l[i * d + i];
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
        let router = acc.routers(RouterInit::ClassMeans, 1.0).unwrap().remove(0);
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
            rows(&whole.routers(RouterInit::ClassMeans, 2.0).unwrap()[0]),
            rows(&labelled.routers(RouterInit::ClassMeans, 2.0).unwrap()[0])
        );
    }

    /// Two classes whose means differ by 2 along x, where each class spreads ±10, and
    /// by 0.4 along y, where each spreads ±0.1: only y separates them.
    fn spread_classes() -> (Tensor, Vec<u32>) {
        let mut pts = Vec::new();
        let mut labels = Vec::new();
        for (class, (mx, my)) in [(1f32, 0.2f32), (-1., -0.2)].into_iter().enumerate() {
            for (dx, dy) in [(-10f32, 0.1f32), (10., -0.1), (-10., -0.1), (10., 0.1)] {
                pts.push([mx + dx, my + dy]);
                labels.push(class as u32);
            }
        }
        (
            Tensor::from_vec(pts.concat(), (pts.len(), 2), &Device::Cpu).unwrap(),
            labels,
        )
    }

    fn accuracy(x: &Tensor, router: &Tensor, labels: &[u32]) -> f64 {
        let first: Vec<u32> = x
            .matmul(&router.t().unwrap())
            .unwrap()
            .argmax(1)
            .unwrap()
            .to_vec1()
            .unwrap();
        let right = first.iter().zip(labels).filter(|(a, b)| a == b).count();
        right as f64 / labels.len() as f64
    }

    #[test]
    fn the_discriminant_separates_classes_that_the_means_do_not() {
        let (x, labels) = spread_classes();
        let router = |init| {
            let mut acc = CentroidRouters::new(1, 2);
            acc.add_labelled(0, &x, &labels).unwrap();
            acc.routers(init, 1.0).unwrap().remove(0)
        };
        let means = router(RouterInit::ClassMeans);
        assert_eq!(accuracy(&x, &means, &labels), 0.5);
        // W = diag(100, 0.01), so row 0 ∝ (1 / 100, 0.2 / 0.01) = (0.01, 20): y decides.
        let disc = router(RouterInit::Discriminant { shrinkage: 0.1 });
        assert_eq!(accuracy(&x, &disc, &labels), 1.0);
        let r: Vec<Vec<f32>> = disc.to_vec2().unwrap();
        assert!((r[0][1] / r[0][0] - 2000.0).abs() < 0.1, "{r:?}");
        assert!((r[0][0] + r[1][0]).abs() < 1e-6 && (r[0][1] + r[1][1]).abs() < 1e-6);
        // Still scaled to the logit RMS.
        let rms = x
            .matmul(&disc.t().unwrap())
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap();
        assert!((rms.to_scalar::<f32>().unwrap() - 1.0).abs() < 1e-4);
    }

    #[test]
    fn the_discriminant_solves_with_the_full_covariance() {
        // Correlated within-class spread: deviations ±(1, 1) and ±(1, −0.5).
        let mut pts = Vec::new();
        let mut labels = Vec::new();
        for (class, m) in [[2f32, 0.], [0., 1.]].into_iter().enumerate() {
            for d in [[1f32, 1.], [-1., -1.], [1., -0.5], [-1., 0.5]] {
                pts.push([m[0] + d[0], m[1] + d[1]]);
                labels.push(class as u32);
            }
        }
        let x = Tensor::from_vec(pts.concat(), (pts.len(), 2), &Device::Cpu).unwrap();
        let mut acc = CentroidRouters::new(1, 2);
        acc.add_labelled(0, &x, &labels).unwrap();
        let r: Vec<Vec<f32>> = acc
            .routers(RouterInit::Discriminant { shrinkage: 0.0 }, 1.0)
            .unwrap()
            .remove(0)
            .to_vec2()
            .unwrap();
        // W = mean of d dᵀ = [[1, 0.25], [0.25, 0.625]]; c₀ = (1, −0.5);
        // W⁻¹ c₀ = (0.625 + 0.125, −0.25 − 0.5) / 0.5625 ∝ (1, −1).
        assert!((r[0][0] + r[0][1]).abs() < 1e-5, "{r:?}");
    }

    #[test]
    fn bad_shrinkage_and_singular_covariances_are_errors() {
        let (x, labels) = spread_classes();
        let mut acc = CentroidRouters::new(1, 2);
        acc.add_labelled(0, &x, &labels).unwrap();
        let err = acc
            .routers(RouterInit::Discriminant { shrinkage: 1.5 }, 1.0)
            .unwrap_err();
        assert!(
            err.to_string().contains("shrinkage must be in [0, 1]"),
            "{err}"
        );
        // Every point of a class on one line: no spread across it.
        let x = Tensor::new(
            &[[1f32, 1.], [2., 2.], [-1., -1.], [-2., -2.]],
            &Device::Cpu,
        )
        .unwrap();
        let mut acc = CentroidRouters::new(1, 2);
        acc.add_labelled(0, &x, &[0, 0, 1, 1]).unwrap();
        let err = acc
            .routers(RouterInit::Discriminant { shrinkage: 0.0 }, 1.0)
            .unwrap_err();
        assert!(err.to_string().contains("not positive definite"), "{err}");
    }

    #[test]
    fn bad_labels_and_no_tokens_are_errors() {
        let x = Tensor::new(&[[1f32, 2.]], &Device::Cpu).unwrap();
        let mut acc = CentroidRouters::new(1, 2);
        let err = acc.add_labelled(0, &x, &[2]).unwrap_err().to_string();
        assert!(err.contains("class label 2 for 2 classes"), "{err}");
        let err = acc.add_labelled(0, &x, &[0, 1]).unwrap_err().to_string();
        assert!(err.contains("2 class labels for 1 rows"), "{err}");
        let err = CentroidRouters::new(1, 2)
            .routers(RouterInit::ClassMeans, 1.0)
            .unwrap_err();
        assert!(err.to_string().contains("no calibration tokens"), "{err}");
    }
}
