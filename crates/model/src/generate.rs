//! Model-agnostic autoregressive generation.
//!
//! With a model that maps a token prefix to next-token logits and keeps its
//! own cache (a [`StepLm`]):
//!
//! ```text
//! logits ← lm.step(prompt)
//! repeat up to max_new_tokens times:
//!     t ← sample(logits)
//!     if t ∈ stop_ids: stop (t is not returned nor reported)
//!     emit t; logits ← lm.step([t])       (skipped after the last token)
//! ```

use candle_core::Tensor;

use crate::sampling::{Sampler, SamplingConfig};
use crate::{Error, Result};

/// A language model that can be fed tokens incrementally.
pub trait StepLm {
    /// Feed `ids` (1-D, new tokens only) at positions continuing the cache;
    /// return logits `[V]` of the last position.
    fn step(&mut self, ids: &[u32]) -> Result<Tensor>;
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateConfig {
    /// Upper bound on the number of returned tokens.
    pub max_new_tokens: usize,
    /// Tokens that end generation (e.g. the id of `<|im_end|>` or EOS).
    pub stop_ids: Vec<u32>,
    pub sampling: SamplingConfig,
}

/// Generates a continuation of `prompt_ids` (which must be non-empty) and
/// returns the new tokens, without the stop token. `on_token` is called once
/// per returned token, in order, as soon as it is chosen (for streaming).
/// With `max_new_tokens == 0` the model is not called at all.
pub fn generate(
    lm: &mut dyn StepLm,
    prompt_ids: &[u32],
    cfg: &GenerateConfig,
    on_token: &mut dyn FnMut(u32),
) -> Result<Vec<u32>> {
    if prompt_ids.is_empty() {
        return Err(Error::Input("generate: empty prompt".into()));
    }
    let mut sampler = Sampler::new(cfg.sampling)?;
    let mut out = Vec::with_capacity(cfg.max_new_tokens.min(4096));
    if cfg.max_new_tokens == 0 {
        return Ok(out);
    }
    let mut logits = lm.step(prompt_ids)?;
    loop {
        let tok = sampler.sample(&logits)?;
        if cfg.stop_ids.contains(&tok) {
            break;
        }
        out.push(tok);
        on_token(tok);
        if out.len() == cfg.max_new_tokens {
            break;
        }
        logits = lm.step(&[tok])?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    const V: usize = 8;

    /// Toy LM: the next token is `(last + 1) % V`, with logit 5 (others 0).
    /// Records every call for inspection.
    struct Counter {
        calls: Vec<Vec<u32>>,
    }

    impl StepLm for Counter {
        fn step(&mut self, ids: &[u32]) -> Result<Tensor> {
            self.calls.push(ids.to_vec());
            let last = *ids.last().ok_or_else(|| Error::Input("no ids".into()))?;
            let mut logits = vec![0f32; V];
            logits[(last as usize + 1) % V] = 5.0;
            Ok(Tensor::new(logits, &Device::Cpu)?)
        }
    }

    fn cfg(max_new_tokens: usize, stop_ids: Vec<u32>) -> GenerateConfig {
        GenerateConfig {
            max_new_tokens,
            stop_ids,
            sampling: SamplingConfig::greedy(),
        }
    }

    #[test]
    fn stops_at_stop_id_without_returning_it() {
        let mut lm = Counter { calls: vec![] };
        let mut seen = vec![];
        let out = generate(&mut lm, &[1, 2], &cfg(100, vec![6]), &mut |t| seen.push(t)).unwrap();
        assert_eq!(out, vec![3, 4, 5]);
        assert_eq!(seen, out);
        // Prompt once, then one token per step; the stop token is never fed.
        assert_eq!(lm.calls, vec![vec![1, 2], vec![3], vec![4], vec![5]]);
    }

    #[test]
    fn respects_max_new_tokens() {
        let mut lm = Counter { calls: vec![] };
        let mut n = 0;
        let out = generate(&mut lm, &[0], &cfg(10, vec![]), &mut |_| n += 1).unwrap();
        assert_eq!(out, vec![1, 2, 3, 4, 5, 6, 7, 0, 1, 2]);
        assert_eq!(n, 10);
        // No wasted forward after the last token.
        assert_eq!(lm.calls.len(), 10);

        let mut lm = Counter { calls: vec![] };
        let out = generate(&mut lm, &[0], &cfg(0, vec![]), &mut |_| {}).unwrap();
        assert!(out.is_empty() && lm.calls.is_empty());
    }

    #[test]
    fn immediate_stop_gives_nothing() {
        let mut lm = Counter { calls: vec![] };
        let mut n = 0;
        let out = generate(&mut lm, &[4], &cfg(5, vec![5, 7]), &mut |_| n += 1).unwrap();
        assert!(out.is_empty());
        assert_eq!(n, 0);
    }

    #[test]
    fn empty_prompt_is_an_error() {
        let mut lm = Counter { calls: vec![] };
        let err = generate(&mut lm, &[], &cfg(5, vec![]), &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("empty prompt"), "{err}");
        assert!(lm.calls.is_empty());
    }

    #[test]
    fn sampled_generation_is_deterministic_per_seed() {
        /// Uniform logits: every token equally likely.
        struct Flat;
        impl StepLm for Flat {
            fn step(&mut self, _ids: &[u32]) -> Result<Tensor> {
                Ok(Tensor::zeros(V, candle_core::DType::F32, &Device::Cpu)?)
            }
        }
        let run = |seed| {
            let c = GenerateConfig {
                max_new_tokens: 32,
                stop_ids: vec![],
                sampling: SamplingConfig {
                    temperature: 1.0,
                    top_p: 1.0,
                    seed,
                },
            };
            generate(&mut Flat, &[0], &c, &mut |_| {}).unwrap()
        };
        assert_eq!(run(11), run(11));
        assert_ne!(run(11), run(12));
    }
}
