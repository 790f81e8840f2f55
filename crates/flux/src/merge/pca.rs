//! PCA of flattened expert weights through the Gram matrix, FLUX §5 (clustering input).
//!
//! The rows of `X` `[N, D]` are experts, and `D` (every weight of an expert) can be in
//! the millions, so the `D×D` covariance is never formed. With `Xc` the centred rows,
//! the Gram matrix `G = Xc Xcᵀ` `[N, N]` has the eigendecomposition `G = U Λ Uᵀ`, and the
//! projections onto the top principal axes are `Xc V_k = U_k Λ_k^{1/2}` `[N, k]`.
//! `G` is computed by candle matmuls in f32 (on whatever device `X` lives) and
//! decomposed on the host in f64 by the cyclic Jacobi method, which is deterministic.
//! [`centred_gram`] gathers `G` over blocks of columns taken from the rows' own tensors,
//! so `X` is never materialised: centring is per column, so centring each block is
//! exact, and `G` is the sum of the blocks' Gram matrices.

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// Projects the rows of `x` (`[N, D]`, any float dtype, `N ≥ 1`) onto their top `dim`
/// principal components, `dim` clamped to `N`; returns `[N][dim]` in f64.
///
/// Component `j` is `U_j · sqrt(λ_j)` for the `j`-th largest eigenvalue `λ_j` of the centred
/// Gram matrix (negative rounding noise clamped to 0), with the eigenvector's largest-magnitude
/// entry made positive so that the result does not depend on the solver's signs.
/// Errors on a tensor that is not 2-D or has no rows, and with [`Error::Config`] on `dim == 0`.
pub fn pca_project(x: &Tensor, dim: usize) -> Result<Vec<Vec<f64>>> {
    let (n_rows, _) = x.dims2()?;
    if n_rows == 0 {
        return Err(Error::Input("pca: no rows to project".into()));
    }
    if dim == 0 {
        return Err(Error::config("pca_dim", "must be >= 1, got 0"));
    }
    let x = x.to_dtype(DType::F32)?;
    let centred = x.broadcast_sub(&x.mean_keepdim(0)?)?;
    let gram = centred.matmul(&centred.t()?)?.to_dtype(DType::F64)?;
    pca_from_gram(gram.to_vec2::<f64>()?, dim)
}

/// Elements per row of one block of [`centred_gram`]: an `[N, 65536]` f32 block of 100
/// experts is 25 MiB.
const BLOCK_ELEMS: usize = 1 << 16;

/// The centred Gram matrix (`[N][N]`, f64) of `N` rows, row `i` being the tensors
/// `rows[i]` flattened and concatenated; every row must have tensors of the same shapes.
/// Gathered over blocks of at most [`BLOCK_ELEMS`] columns (slices of leading rows of
/// one tensor), so that memory beyond the tensors themselves is one `[N, block]` block
/// and the result.
pub fn centred_gram(rows: &[Vec<Tensor>]) -> Result<Vec<Vec<f64>>> {
    let n = rows.len();
    let Some(first) = rows.first() else {
        return Err(Error::Input("pca: no rows to project".into()));
    };
    for (i, r) in rows.iter().enumerate() {
        let same = r.len() == first.len() && r.iter().zip(first).all(|(a, b)| a.dims() == b.dims());
        if !same {
            return Err(Error::Input(format!(
                "pca: row {i}'s tensors have other shapes than row 0's"
            )));
        }
    }
    // Accumulated on the rows' device, read back once (a read per block would stall
    // an accelerator once per block).
    let mut gram: Option<Tensor> = None;
    for (k, t) in first.iter().enumerate() {
        let leading = t.dims().first().copied().unwrap_or(1).max(1);
        let per_leading = t.elem_count() / leading;
        let step = (BLOCK_ELEMS / per_leading.max(1)).max(1);
        for start in (0..leading).step_by(step) {
            let len = step.min(leading - start);
            let slices = rows
                .iter()
                .map(|r| {
                    let t = &r[k];
                    let t = if t.rank() == 0 {
                        t.reshape(1)?
                    } else {
                        t.clone()
                    };
                    t.narrow(0, start, len)?.flatten_all()?.to_dtype(DType::F32)
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let block = Tensor::stack(&slices, 0)?;
            drop(slices);
            let centred = block.broadcast_sub(&block.mean_keepdim(0)?)?;
            let g = centred.matmul(&centred.t()?)?.to_dtype(DType::F64)?;
            gram = Some(match gram {
                Some(acc) => (acc + g)?,
                None => g,
            });
        }
    }
    match gram {
        Some(g) => Ok(g.to_vec2::<f64>()?),
        None => Ok(vec![vec![0.0f64; n]; n]),
    }
}

/// [`pca_project`] from the rows' centred Gram matrix (`[N][N]`, see [`centred_gram`]).
pub fn pca_from_gram(gram: Vec<Vec<f64>>, dim: usize) -> Result<Vec<Vec<f64>>> {
    let n_rows = gram.len();
    if n_rows == 0 {
        return Err(Error::Input("pca: no rows to project".into()));
    }
    if dim == 0 {
        return Err(Error::config("pca_dim", "must be >= 1, got 0"));
    }
    let dim = dim.min(n_rows);
    let (values, vectors) = jacobi_eigen(gram);
    Ok((0..n_rows)
        .map(|i| {
            (0..dim)
                .map(|j| vectors[i][j] * values[j].max(0.0).sqrt())
                .collect()
        })
        .collect())
}

/// Eigendecomposition of a symmetric matrix `a` (`n×n`, rows) by the cyclic Jacobi method.
///
/// Sweeps over every pair `p < q` and applies the rotation `A ← Jᵀ A J` that zeroes `a_pq`,
/// with `t = tan φ` the smaller root of `t² + 2θt − 1 = 0`, `θ = (a_qq − a_pp) / (2 a_pq)`;
/// the product of the rotations accumulates the eigenvectors. Stops when the off-diagonal
/// mass is below `1e-24` of the total (or after 100 sweeps). Returns the eigenvalues in
/// descending order and the matrix whose column `j` is the eigenvector of value `j`, each
/// with its largest-magnitude entry positive (the first such entry on ties).
/// A sweep costs `O(n³)`; meant for `n` up to a few hundred (experts of one PCA call).
pub fn jacobi_eigen(mut a: Vec<Vec<f64>>) -> (Vec<f64>, Vec<Vec<f64>>) {
    let n = a.len();
    let mut v: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..n).map(|j| if i == j { 1.0 } else { 0.0 }).collect())
        .collect();
    let total: f64 = a.iter().flatten().map(|x| x * x).sum();
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j] * a[i][j])
            .sum();
        if off <= 1e-24 * total {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                if a[p][q] == 0.0 {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                let t = if theta.abs() > 1e150 {
                    0.5 / theta
                } else {
                    let sign = if theta >= 0.0 { 1.0 } else { -1.0 };
                    sign / (theta.abs() + (theta * theta + 1.0).sqrt())
                };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for row in a.iter_mut().chain(v.iter_mut()) {
                    let (kp, kq) = (row[p], row[q]);
                    row[p] = c * kp - s * kq;
                    row[q] = s * kp + c * kq;
                }
                let (head, tail) = a.split_at_mut(q);
                for (pk, qk) in head[p].iter_mut().zip(tail[0].iter_mut()) {
                    let (x, y) = (*pk, *qk);
                    *pk = c * x - s * y;
                    *qk = s * x + c * y;
                }
                a[p][q] = 0.0;
                a[q][p] = 0.0;
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[j][j].total_cmp(&a[i][i]));
    let values = order.iter().map(|&j| a[j][j]).collect();
    let mut vectors = vec![vec![0.0; n]; n];
    for (col, &j) in order.iter().enumerate() {
        let lead = (0..n).fold(0, |best, i| {
            if v[i][j].abs() > v[best][j].abs() {
                i
            } else {
                best
            }
        });
        let sign = if v[lead][j] < 0.0 { -1.0 } else { 1.0 };
        for i in 0..n {
            vectors[i][col] = sign * v[i][j];
        }
    }
    (values, vectors)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    #[test]
    fn the_blockwise_gram_is_the_gram_of_the_concatenated_rows() {
        // 5 rows of two tensors, [300, 500] (several blocks) and [7]: the blockwise
        // Gram equals that of the rows concatenated, and so do the projections.
        let dev = Device::Cpu;
        let rows: Vec<Vec<Tensor>> = (0..5)
            .map(|i| {
                let a = Tensor::arange(0f32, 150_000.0, &dev)
                    .unwrap()
                    .affine(1e-5 * (i as f64 + 1.0), (i * i) as f64)
                    .unwrap()
                    .sin()
                    .unwrap()
                    .reshape((300, 500))
                    .unwrap();
                let b = Tensor::new(&[i as f32, 1.0, -2.0, 0.5, 3.0, i as f32 * 0.5, 7.0], &dev)
                    .unwrap();
                vec![a, b]
            })
            .collect();
        let flat: Vec<Tensor> = rows
            .iter()
            .map(|r| {
                let parts: Vec<Tensor> = r.iter().map(|t| t.flatten_all().unwrap()).collect();
                Tensor::cat(&parts, 0).unwrap()
            })
            .collect();
        let x = Tensor::stack(&flat, 0).unwrap();
        let centred = x.broadcast_sub(&x.mean_keepdim(0).unwrap()).unwrap();
        let direct = centred
            .matmul(&centred.t().unwrap())
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        let blockwise = centred_gram(&rows).unwrap();
        for (d, b) in direct.iter().flatten().zip(blockwise.iter().flatten()) {
            assert!(close(*b, *d, 1e-4), "{b} vs {d}");
        }
        let p1 = pca_project(&x, 3).unwrap();
        let p2 = pca_from_gram(blockwise, 3).unwrap();
        for (a, b) in p1.iter().flatten().zip(p2.iter().flatten()) {
            assert!(close(*a, *b, 1e-3), "{a} vs {b}");
        }
        // Rows of other shapes are an error, not a panic.
        let mut bad = rows.clone();
        bad[2][1] = Tensor::new(&[1f32, 2.0], &dev).unwrap();
        assert!(centred_gram(&bad)
            .unwrap_err()
            .to_string()
            .contains("row 2"));
        assert!(centred_gram(&[]).is_err());
    }

    fn tensor(rows: &[Vec<f32>]) -> Tensor {
        let d = rows[0].len();
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_vec(flat, (rows.len(), d), &Device::Cpu).unwrap()
    }

    fn dist(a: &[f64], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f64>()
            .sqrt()
    }

    #[test]
    fn jacobi_matches_hand_eigen_cases() {
        let (values, vectors) = jacobi_eigen(vec![vec![2.0, 1.0], vec![1.0, 2.0]]);
        let h = 0.5f64.sqrt();
        assert!(
            close(values[0], 3.0, 1e-12) && close(values[1], 1.0, 1e-12),
            "{values:?}"
        );
        assert!(close(vectors[0][0], h, 1e-12) && close(vectors[1][0], h, 1e-12));
        // The second eigenvector is ±(1, −1)/√2; the tie on magnitude goes to the first entry.
        assert!(close(vectors[0][1], h, 1e-12) && close(vectors[1][1], -h, 1e-12));

        // [[3, 4], [4, 9]] has eigenvalues 6 ± 5 with vectors (1, 2)/√5 and (2, −1)/√5.
        let a = vec![
            vec![2.0, 0.0, 0.0],
            vec![0.0, 3.0, 4.0],
            vec![0.0, 4.0, 9.0],
        ];
        let (values, vectors) = jacobi_eigen(a);
        let r5 = 5f64.sqrt();
        let want_values = [11.0, 2.0, 1.0];
        let want_vectors = [
            [0.0, 1.0, 0.0],
            [1.0 / r5, 0.0, 2.0 / r5],
            [2.0 / r5, 0.0, -1.0 / r5],
        ];
        for j in 0..3 {
            assert!(close(values[j], want_values[j], 1e-12), "{values:?}");
        }
        for i in 0..3 {
            for j in 0..3 {
                assert!(
                    close(vectors[i][j], want_vectors[i][j], 1e-12),
                    "{vectors:?}"
                );
            }
        }
    }

    #[test]
    fn jacobi_diagonalises_a_larger_matrix() {
        let n = 7;
        let a: Vec<Vec<f64>> = (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| ((i * j + i + j) as f64 * 0.37).sin())
                    .collect()
            })
            .collect();
        let (values, vectors) = jacobi_eigen(a.clone());
        assert!(values.windows(2).all(|w| w[0] >= w[1]), "{values:?}");
        // A v_j = λ_j v_j and the v_j are orthonormal.
        for j in 0..n {
            for i in 0..n {
                let av: f64 = (0..n).map(|k| a[i][k] * vectors[k][j]).sum();
                assert!((av - values[j] * vectors[i][j]).abs() < 1e-10);
            }
            for m in 0..n {
                let vv: f64 = (0..n).map(|k| vectors[k][j] * vectors[k][m]).sum();
                assert!((vv - f64::from(u8::from(j == m))).abs() < 1e-10);
            }
        }
    }

    #[test]
    fn points_on_a_line_have_one_component() {
        // x_i = t_i · (1, 2, 2) + (5, 5, 5), |d| = 3, t = 0, 1, 2, 5 with mean 2.
        let rows: Vec<Vec<f32>> = [0.0f32, 1.0, 2.0, 5.0]
            .iter()
            .map(|t| vec![5.0 + t, 5.0 + 2.0 * t, 5.0 + 2.0 * t])
            .collect();
        let proj = pca_project(&tensor(&rows), 3).unwrap();
        assert_eq!(proj.len(), 4);
        assert!(proj.iter().all(|p| p.len() == 3));
        // Largest-magnitude entry of the axis (the point t = 5) is positive.
        let want = [-6.0, -3.0, 0.0, 9.0];
        for (p, w) in proj.iter().zip(want) {
            assert!(close(p[0], w, 1e-4), "{proj:?}");
            assert!(p[1].abs() < 1e-3 && p[2].abs() < 1e-3, "{proj:?}");
        }
    }

    #[test]
    fn full_rank_projection_preserves_distances() {
        let rows: Vec<Vec<f32>> = vec![
            vec![1.0, 0.0, 2.0, -1.0, 0.5],
            vec![0.0, 3.0, 1.0, 1.0, -2.0],
            vec![2.0, 1.0, 0.0, 4.0, 1.0],
            vec![-1.0, 2.0, 2.0, 0.0, 0.0],
        ];
        let proj = pca_project(&tensor(&rows), 3).unwrap();
        let as64: Vec<Vec<f64>> = rows
            .iter()
            .map(|r| r.iter().map(|&v| f64::from(v)).collect())
            .collect();
        for i in 0..4 {
            for j in 0..4 {
                assert!(close(
                    dist(&proj[i], &proj[j]),
                    dist(&as64[i], &as64[j]),
                    1e-5
                ));
            }
        }
        // Components come in decreasing variance, and dim is clamped to N.
        let var = |j: usize| proj.iter().map(|p| p[j] * p[j]).sum::<f64>();
        assert!(var(0) >= var(1) && var(1) >= var(2));
        assert_eq!(pca_project(&tensor(&rows), 32).unwrap()[0].len(), 4);
        assert!(matches!(
            pca_project(&tensor(&rows), 0),
            Err(Error::Config { .. })
        ));
    }

    #[test]
    fn single_row_projects_to_zero() {
        let proj = pca_project(&tensor(&[vec![1.0, 2.0, 3.0]]), 4).unwrap();
        assert_eq!(proj, vec![vec![0.0]]);
    }
}
