//! Next-token sampling from a logit vector.
//!
//! With logits `l` over a vocabulary of size V, temperature `T` and nucleus
//! mass `top_p`:
//!
//! - `T = 0` (greedy): return `argmax_i l_i`, ties going to the lowest id;
//!   `top_p` is ignored.
//! - `T > 0`: `p_i = exp((l_i − max l) / T) / Z` (softmax of `l / T`,
//!   computed in f64). If `top_p < 1`, sort ids by `p` descending (ties by
//!   ascending id), keep the smallest prefix whose cumulative probability is
//!   `≥ top_p` and renormalise over it. Then draw one id from the (kept)
//!   distribution by inverse-CDF with a uniform `u ∈ [0, 1)` from a
//!   [`StdRng`] seeded with `seed`, so a [`Sampler`] is deterministic given
//!   its seed and the logits it sees.
//!
//! A logit of `−inf` means "never pick this id" (masking); NaN or `+inf`
//! logits are an error, as are logits that are all `−inf`.

use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How to pick the next token. The default is greedy decoding
/// (`temperature 0, top_p 1, seed 0`); every field is optional when
/// deserialised and falls back to that default.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingConfig {
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f64,
    /// Nucleus mass in (0, 1]; 1 disables top-p filtering.
    pub top_p: f64,
    /// Seed of the sampler's random generator.
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl SamplingConfig {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self::default()
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::config(
                "sampling.temperature",
                format!("must be finite and >= 0, got {}", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::config(
                "sampling.top_p",
                format!("must be in (0, 1], got {}", self.top_p),
            ));
        }
        Ok(())
    }
}

/// A seeded token sampler; see the module docs for the math.
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: SamplingConfig,
    rng: StdRng,
    /// Scratch for top-p: (id, unnormalised weight).
    nucleus: Vec<(u32, f64)>,
}

impl Sampler {
    pub fn new(cfg: SamplingConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            rng: StdRng::seed_from_u64(cfg.seed),
            nucleus: Vec::new(),
        })
    }

    pub fn config(&self) -> &SamplingConfig {
        &self.cfg
    }

    /// Picks the next token id from `logits`, a 1-D tensor `[V]` of any
    /// float dtype on any device (it is copied to the host as f32).
    pub fn sample(&mut self, logits: &Tensor) -> Result<u32> {
        if logits.rank() != 1 {
            return Err(Error::Input(format!(
                "sampling: logits must be 1-D [vocab], got shape {:?}",
                logits.dims()
            )));
        }
        let host = logits.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        self.sample_slice(&host)
    }

    /// [`Sampler::sample`] on host logits.
    pub fn sample_slice(&mut self, logits: &[f32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(Error::Input("sampling: empty logits".into()));
        }
        if logits.len() > u32::MAX as usize {
            return Err(Error::Input(format!(
                "sampling: vocabulary of {} does not fit u32 ids",
                logits.len()
            )));
        }
        // Greedy pass doubles as validation: ties keep the lowest id.
        let mut best: Option<(usize, f32)> = None;
        for (i, &l) in logits.iter().enumerate() {
            if l.is_nan() || l == f32::INFINITY {
                return Err(Error::Input(format!("sampling: logit of id {i} is {l}")));
            }
            if l != f32::NEG_INFINITY && best.is_none_or(|(_, b)| l > b) {
                best = Some((i, l));
            }
        }
        let Some((argmax, max)) = best else {
            return Err(Error::Input("sampling: every logit is -inf".into()));
        };
        if self.cfg.temperature == 0.0 {
            return Ok(argmax as u32);
        }
        let inv_t = 1.0 / self.cfg.temperature;
        let max = max as f64;
        let weight = |l: f32| -> f64 {
            if l == f32::NEG_INFINITY {
                0.0
            } else {
                ((l as f64 - max) * inv_t).exp()
            }
        };
        if self.cfg.top_p >= 1.0 {
            let z: f64 = logits.iter().map(|&l| weight(l)).sum();
            let u = self.rng.gen::<f64>() * z;
            let mut cum = 0.0;
            let mut last = argmax;
            for (i, &l) in logits.iter().enumerate() {
                let w = weight(l);
                if w > 0.0 {
                    cum += w;
                    last = i;
                    if u < cum {
                        return Ok(i as u32);
                    }
                }
            }
            // Only reachable through rounding in the running sum.
            return Ok(last as u32);
        }
        self.nucleus.clear();
        self.nucleus.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, weight(l)))
                .filter(|&(_, w)| w > 0.0),
        );
        let z: f64 = self.nucleus.iter().map(|&(_, w)| w).sum();
        self.nucleus
            .sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let target = self.cfg.top_p * z;
        let mut kept_mass = 0.0;
        let mut kept = 0;
        for &(_, w) in &self.nucleus {
            kept_mass += w;
            kept += 1;
            if kept_mass >= target {
                break;
            }
        }
        let u = self.rng.gen::<f64>() * kept_mass;
        let mut cum = 0.0;
        for &(id, w) in &self.nucleus[..kept] {
            cum += w;
            if u < cum {
                return Ok(id);
            }
        }
        Ok(self.nucleus[kept - 1].0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn sampler(temperature: f64, top_p: f64, seed: u64) -> Sampler {
        Sampler::new(SamplingConfig {
            temperature,
            top_p,
            seed,
        })
        .unwrap()
    }

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    #[test]
    fn greedy_picks_argmax_lowest_on_ties() {
        let mut s = Sampler::new(SamplingConfig::greedy()).unwrap();
        assert_eq!(s.sample(&t(&[0.1, 2.0, -1.0, 1.9])).unwrap(), 1);
        assert_eq!(s.sample(&t(&[0.1, 3.0, 3.0, 3.0])).unwrap(), 1);
        assert_eq!(s.sample(&t(&[f32::NEG_INFINITY, -5.0])).unwrap(), 1);
        // Any float dtype is accepted.
        let bf = t(&[0.0, 1.0, 4.0]).to_dtype(DType::BF16).unwrap();
        assert_eq!(s.sample(&bf).unwrap(), 2);
    }

    #[test]
    fn tiny_top_p_always_gives_argmax() {
        let logits = t(&[1.0, 2.5, 2.4, 0.0, -3.0]);
        for seed in 0..50 {
            let mut s = sampler(1.5, 1e-9, seed);
            for _ in 0..10 {
                assert_eq!(s.sample(&logits).unwrap(), 1);
            }
        }
    }

    #[test]
    fn seeded_determinism() {
        let logits = t(&[0.3, 0.1, 0.5, 0.2, 0.4, 0.0]);
        let draw = |seed, top_p| {
            let mut s = sampler(1.0, top_p, seed);
            (0..200)
                .map(|_| s.sample(&logits).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7, 1.0), draw(7, 1.0));
        assert_eq!(draw(7, 0.9), draw(7, 0.9));
        assert_ne!(draw(7, 1.0), draw(8, 1.0));
    }

    fn frequencies(s: &mut Sampler, logits: &[f32], n: usize) -> Vec<f64> {
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..n {
            counts[s.sample_slice(logits).unwrap() as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / n as f64).collect()
    }

    fn softmax(logits: &[f32], temperature: f64) -> Vec<f64> {
        let e: Vec<f64> = logits
            .iter()
            .map(|&l| (l as f64 / temperature).exp())
            .collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|x| x / z).collect()
    }

    #[test]
    fn empirical_frequencies_match_softmax() {
        let logits = [1.0f32, 2.0, 0.5, 3.0, -1.0];
        let n = 40_000;
        for temperature in [1.0, 2.0, 0.5] {
            let freq = frequencies(&mut sampler(temperature, 1.0, 42), &logits, n);
            let want = softmax(&logits, temperature);
            for (f, p) in freq.iter().zip(&want) {
                // 5 standard deviations of a binomial proportion.
                let tol = 5.0 * (p * (1.0 - p) / n as f64).sqrt() + 1e-3;
                assert!((f - p).abs() < tol, "T={temperature}: {freq:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn top_p_keeps_smallest_prefix_and_renormalises() {
        // p = [0.5, 0.3, 0.15, 0.05]; top_p 0.75 keeps {0, 1} → [0.625, 0.375].
        let logits: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let n = 40_000;
        let freq = frequencies(&mut sampler(1.0, 0.75, 3), &logits, n);
        assert_eq!((freq[2], freq[3]), (0.0, 0.0), "{freq:?}");
        assert!((freq[0] - 0.625).abs() < 0.015, "{freq:?}");
        // top_p 0.85 also keeps id 2: [0.5, 0.3, 0.15] / 0.95.
        let freq = frequencies(&mut sampler(1.0, 0.85, 3), &logits, n);
        assert_eq!(freq[3], 0.0, "{freq:?}");
        assert!((freq[2] - 0.15 / 0.95).abs() < 0.015, "{freq:?}");
    }

    #[test]
    fn masked_ids_are_never_drawn() {
        let logits = [0.0f32, f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY];
        for top_p in [1.0, 0.9] {
            let freq = frequencies(&mut sampler(1.0, top_p, 1), &logits, 2000);
            assert_eq!((freq[1], freq[3]), (0.0, 0.0));
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mut s = sampler(1.0, 1.0, 0);
        let err = s.sample(&t(&[0.0, f32::NAN])).unwrap_err();
        assert!(err.to_string().contains("id 1"), "{err}");
        let mut g = Sampler::new(SamplingConfig::greedy()).unwrap();
        assert!(g.sample(&t(&[f32::NAN, 1.0])).is_err());
        assert!(g.sample(&t(&[f32::INFINITY, 1.0])).is_err());
        assert!(g
            .sample(&t(&[f32::NEG_INFINITY, f32::NEG_INFINITY]))
            .is_err());
        assert!(g.sample_slice(&[]).is_err());
        let two_d = Tensor::zeros((1, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(g.sample(&two_d).is_err());
    }

    #[test]
    fn config_validation_and_serde() {
        for (temperature, top_p) in [(-1.0, 1.0), (f64::NAN, 1.0), (1.0, 0.0), (1.0, 1.5)] {
            assert!(Sampler::new(SamplingConfig {
                temperature,
                top_p,
                seed: 0
            })
            .is_err());
        }
        let c: SamplingConfig = serde_json::from_str(r#"{"temperature": 0.7}"#).unwrap();
        assert_eq!(
            c,
            SamplingConfig {
                temperature: 0.7,
                top_p: 1.0,
                seed: 0
            }
        );
    }
}
