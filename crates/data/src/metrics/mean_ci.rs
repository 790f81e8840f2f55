//! Mean of per-example scores with a 95% confidence interval.
//!
//! [`mean_ci`] uses the normal approximation: with `n` values, mean `m` and
//! sample standard deviation `s` (divisor `n - 1`), the interval is
//! `m ± 1.96 * s / sqrt(n)`.
//! With one value there is no variance estimate and the interval is `[m, m]`.
//! [`bootstrap_ci`] is the percentile bootstrap: `n_resamples` means of `n`
//! values drawn with replacement (`StdRng::seed_from_u64(seed)`), sorted; the
//! bounds are the resample means at ranks `floor(0.025 * (B - 1))` and
//! `ceil(0.975 * (B - 1))`.
//! Empty input or a non-finite value is an error.

use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};

/// Two-sided 95% normal quantile.
const Z_95: f64 = 1.959963984540054;

/// A mean with its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanCi {
    pub mean: f64,
    pub lower: f64,
    pub upper: f64,
    pub n: usize,
}

impl std::fmt::Display for MeanCi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.4} [{:.4}, {:.4}] (n={})",
            self.mean, self.lower, self.upper, self.n
        )
    }
}

fn check(values: &[f64]) -> Result<f64> {
    if values.is_empty() {
        return Err(Error::param("values", "no values to average"));
    }
    if let Some(idx) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::param(
            "values",
            format!("value {idx} is not finite: {}", values[idx]),
        ));
    }
    Ok(values.iter().sum::<f64>() / values.len() as f64)
}

/// Mean with a normal-approximation 95% interval.
pub fn mean_ci(values: &[f64]) -> Result<MeanCi> {
    let mean = check(values)?;
    let n = values.len();
    if n == 1 {
        return Ok(MeanCi {
            mean,
            lower: mean,
            upper: mean,
            n,
        });
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let half = Z_95 * (var / n as f64).sqrt();
    Ok(MeanCi {
        mean,
        lower: mean - half,
        upper: mean + half,
        n,
    })
}

impl MeanCi {
    /// The interval cut to `[lo, hi]`, the range every score lies in (the normal
    /// approximation can reach past it, e.g. below 0 for a rare exact match).
    pub fn within(self, lo: f64, hi: f64) -> MeanCi {
        MeanCi {
            lower: self.lower.max(lo),
            upper: self.upper.min(hi),
            ..self
        }
    }
}

/// Mean with a seeded percentile-bootstrap 95% interval.
pub fn bootstrap_ci(values: &[f64], n_resamples: usize, seed: u64) -> Result<MeanCi> {
    let mean = check(values)?;
    if n_resamples < 2 {
        return Err(Error::param(
            "n_resamples",
            format!("must be at least 2, got {n_resamples}"),
        ));
    }
    let n = values.len();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..n_resamples)
        .map(|_| (0..n).map(|_| values[rng.gen_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let last = (n_resamples - 1) as f64;
    Ok(MeanCi {
        mean,
        lower: means[(0.025 * last).floor() as usize],
        upper: means[(0.975 * last).ceil() as usize],
        n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rare_success_keeps_its_interval_inside_zero_one() {
        // 3 of 100: 0.03 ± 1.96 · 0.171 / 10 reaches below 0 unclamped.
        let mut v = vec![0.0; 97];
        v.extend([1.0; 3]);
        let raw = mean_ci(&v).unwrap();
        assert!(raw.lower < 0.0, "{raw}");
        let cut = raw.within(0.0, 1.0);
        assert_eq!((cut.mean, cut.lower, cut.upper), (raw.mean, 0.0, raw.upper));
        let all = mean_ci(&[1.0, 1.0, 0.0]).unwrap().within(0.0, 1.0);
        assert!(all.upper <= 1.0 && all.lower >= 0.0, "{all}");
    }

    #[test]
    fn normal_interval_hand_computed() {
        // values 1,2,3,4: mean 2.5, s^2 = 5/3, s/sqrt(4) = sqrt(5/12).
        let ci = mean_ci(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        let half = Z_95 * (5.0f64 / 12.0).sqrt();
        assert_eq!(ci.mean, 2.5);
        assert!((ci.upper - (2.5 + half)).abs() < 1e-12);
        assert!((ci.lower - (2.5 - half)).abs() < 1e-12);
        let one = mean_ci(&[0.7]).unwrap();
        assert_eq!((one.lower, one.upper), (0.7, 0.7));
        assert!(mean_ci(&[]).is_err());
        assert!(mean_ci(&[1.0, f64::NAN]).is_err());
    }

    #[test]
    fn bootstrap_is_seeded_and_brackets_the_mean() {
        let values: Vec<f64> = (0..200).map(|i| (i % 2) as f64).collect();
        let a = bootstrap_ci(&values, 500, 3).unwrap();
        assert_eq!(a, bootstrap_ci(&values, 500, 3).unwrap());
        assert_eq!(a.mean, 0.5);
        assert!(a.lower < 0.5 && a.upper > 0.5);
        // Close to the normal interval half-width 1.96 * 0.5 / sqrt(200) ~ 0.069.
        assert!((a.upper - a.lower - 0.139).abs() < 0.03, "{a}");
        // Constant values give a zero-width interval.
        let c = bootstrap_ci(&[2.0; 10], 100, 0).unwrap();
        assert_eq!((c.lower, c.upper), (2.0, 2.0));
        assert!(bootstrap_ci(&values, 1, 0).is_err());
    }
}
