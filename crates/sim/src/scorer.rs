//! [`ModelScorer`]: `fluxmoe_data::Scorer` (greedy generation, log-likelihoods) over a
//! [`MoeModel`], and [`ModelEvaluator`]: the runtime's `Evaluator` scoring a global
//! model on a task's test split.

use std::collections::BTreeMap;

use candle_core::{Device, IndexOp, Tensor, D};
use fluxmoe_data::batch::{collate, Batch, Encoded};
use fluxmoe_data::{evaluate, EvalConfig, Scorer, Task};
use fluxmoe_fed::{Evaluator, Global, Round};
use fluxmoe_model::generate::{generate, GenerateConfig};
use fluxmoe_model::model::{CachedLm, ModelCache};
use fluxmoe_model::sampling::SamplingConfig;
use fluxmoe_model::{ModelConfig, MoeModel, ParamStore};
use tokenizers::Tokenizer;

pub struct ModelScorer<'a> {
    pub model: &'a MoeModel,
    pub stop_ids: Vec<u32>,
}

fn data_err(e: impl std::fmt::Display) -> fluxmoe_data::Error {
    fluxmoe_data::Error::Tokenizer(format!("model: {e}"))
}

impl Scorer for ModelScorer<'_> {
    fn generate(
        &mut self,
        prompt_ids: &[u32],
        max_new_tokens: usize,
    ) -> fluxmoe_data::Result<Vec<u32>> {
        let cfg = GenerateConfig {
            max_new_tokens,
            stop_ids: self.stop_ids.clone(),
            sampling: SamplingConfig::greedy(),
        };
        generate(
            &mut CachedLm::new(self.model),
            prompt_ids,
            &cfg,
            &mut |_| {},
        )
        .map_err(data_err)
    }

    fn logliks(&mut self, batch: &Batch) -> fluxmoe_data::Result<Vec<f32>> {
        let run = || -> fluxmoe_model::Result<Vec<f32>> {
            let (b, _) = batch.input_ids.dims2()?;
            let (hidden, _) =
                self.model
                    .forward_hidden(&batch.input_ids, Some(&batch.attention_mask), false)?;
            let (logp, rows) =
                self.model
                    .target_logprobs(&hidden, &batch.input_ids, Some(&batch.loss_mask))?;
            let mut sums = vec![0f32; b];
            for (lp, row) in logp.to_vec1::<f32>()?.into_iter().zip(rows) {
                sums[row] += lp;
            }
            Ok(sums)
        };
        run().map_err(data_err)
    }

    /// The prompt the items share runs once, with a KV cache; only the answers run
    /// per item. Equal to the padded batch of [`Scorer::logliks`] up to float rounding
    /// (test).
    fn choice_logliks(&mut self, items: &[Encoded], pad_id: u32) -> fluxmoe_data::Result<Vec<f32>> {
        let shared = shared_prompt(items);
        if items.len() < 2 || shared == 0 {
            return self.logliks(&collate(items, pad_id, &Device::Cpu)?);
        }
        self.prefix_cached_logliks(items, shared, pad_id)
            .map_err(data_err)
    }
}

/// Length of the longest common prefix of the items' ids that holds no target
/// (loss-mask) token of any item.
fn shared_prompt(items: &[Encoded]) -> usize {
    let Some(first) = items.first() else {
        return 0;
    };
    let mut n = first.ids.len();
    for item in items {
        let common = first
            .ids
            .iter()
            .zip(&item.ids)
            .take_while(|(a, b)| a == b)
            .count();
        let first_target = item
            .loss_mask
            .iter()
            .position(|&m| m == 1)
            .unwrap_or(item.ids.len());
        n = n.min(common).min(first_target);
    }
    n
}

impl ModelScorer<'_> {
    fn prefix_cached_logliks(
        &self,
        items: &[Encoded],
        shared: usize,
        pad_id: u32,
    ) -> fluxmoe_model::Result<Vec<f32>> {
        let device = self.model.device();
        let prompt = Tensor::from_vec(items[0].ids[..shared].to_vec(), (1, shared), device)?;
        let mut cache = ModelCache::default();
        let prompt_logits = self.model.forward_cached(&prompt, &mut cache)?;
        // log p(first answer token | prompt), the same for every item.
        let after_prompt: Vec<f32> = log_softmax(&prompt_logits.i((0, shared - 1))?)?.to_vec1()?;
        let n = items.len();
        let width = items
            .iter()
            .map(|e| e.ids.len() - shared)
            .max()
            .unwrap_or(0);
        let (mut ids, mut mask, mut next) = (
            Vec::with_capacity(n * width),
            Vec::with_capacity(n * (shared + width)),
            Vec::with_capacity(n * width),
        );
        for item in items {
            let answer = &item.ids[shared..];
            mask.extend(std::iter::repeat_n(1u32, shared + answer.len()));
            mask.extend(std::iter::repeat_n(0u32, width - answer.len()));
            ids.extend_from_slice(answer);
            ids.extend(std::iter::repeat_n(pad_id, width - answer.len()));
            // The token each answer position predicts (0 where nothing is scored).
            for j in 0..width {
                next.push(answer.get(j + 1).copied().unwrap_or(0));
            }
        }
        let mut cache = cache.expand_batch(n)?;
        let ids = Tensor::from_vec(ids, (n, width), device)?;
        let mask = Tensor::from_vec(mask, (n, shared + width), device)?;
        let logits = self.model.forward_cached_masked(&ids, &mask, &mut cache)?;
        let next = Tensor::from_vec(next, (n, width, 1), device)?;
        let logp: Vec<Vec<f32>> = log_softmax(&logits)?
            .gather(&next, D::Minus1)?
            .squeeze(D::Minus1)?
            .to_vec2()?;
        Ok(items
            .iter()
            .zip(&logp)
            .map(|(item, row)| {
                let mut sum = 0f32;
                for pos in shared..item.ids.len() {
                    if item.loss_mask[pos] != 1 {
                        continue;
                    }
                    sum += if pos == shared {
                        after_prompt[item.ids[pos] as usize]
                    } else {
                        row[pos - shared - 1]
                    };
                }
                sum
            })
            .collect())
    }
}

/// Log-softmax over the last dimension.
fn log_softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// Scores global models on a fixed test task.
pub struct ModelEvaluator {
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub test: Task,
    pub eval: EvalConfig,
    pub stop_ids: Vec<u32>,
    /// Metric per evaluated round, for the summary.
    pub scores: BTreeMap<u32, f64>,
}

impl ModelEvaluator {
    /// Score the model whose tensors are `global`.
    pub fn score(&self, global: &Global) -> crate::Result<f64> {
        let params = ParamStore::from_tensors(global.iter().map(|(k, v)| (k.clone(), v.clone())))?;
        let model = MoeModel::new(&self.config, &params)?;
        let mut scorer = ModelScorer {
            model: &model,
            stop_ids: self.stop_ids.clone(),
        };
        Ok(
            evaluate(&self.test, &self.tokenizer, &mut scorer, &self.eval)?
                .score
                .mean,
        )
    }
}

impl Evaluator for ModelEvaluator {
    fn evaluate(&mut self, round: Round, global: &Global) -> fluxmoe_fed::Result<f64> {
        let score = self.score(global).map_err(|e| {
            fluxmoe_fed::Error::State(format!("evaluation after round {round}: {e}"))
        })?;
        self.scores.insert(round.0, score);
        Ok(score)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(prompt: &[u32], answers: &[&[u32]]) -> Vec<Encoded> {
        answers
            .iter()
            .map(|a| Encoded {
                ids: prompt.iter().chain(a.iter()).copied().collect(),
                loss_mask: std::iter::repeat_n(0, prompt.len())
                    .chain(std::iter::repeat_n(1, a.len()))
                    .collect(),
            })
            .collect()
    }

    #[test]
    fn shared_prompt_stops_at_the_first_difference_or_target() {
        let it = items(&[5, 6, 7], &[&[8], &[9, 1]]);
        assert_eq!(shared_prompt(&it), 3);
        // Answers that start alike: the common prefix runs into a target token.
        let it = items(&[5, 6, 7], &[&[8, 1], &[8, 2]]);
        assert_eq!(shared_prompt(&it), 3);
        let mut it = items(&[5, 6, 7], &[&[8], &[9]]);
        it[1].ids[1] = 0;
        assert_eq!(shared_prompt(&it), 1);
    }

    #[test]
    fn prompt_cached_choices_match_the_padded_batch() {
        for arch in ["mixtral", "qwen2_moe", "deepseek_v2", "llama"] {
            let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/fixtures")
                .join(arch);
            let lm = fluxmoe_model::load_model(&path, &Device::Cpu).unwrap();
            let params = &lm.checkpoint.params;
            let model = MoeModel::new(&lm.checkpoint.config, params).unwrap();
            let mut scorer = ModelScorer {
                model: &model,
                stop_ids: Vec::new(),
            };
            let it = items(
                &[3, 17, 42, 9, 11, 64, 2],
                &[&[5], &[7, 8, 9, 10], &[1, 100], &[99, 98, 97]],
            );
            let cached = scorer.choice_logliks(&it, 0).unwrap();
            let batched = scorer
                .logliks(&collate(&it, 0, &Device::Cpu).unwrap())
                .unwrap();
            assert_eq!(cached.len(), 4);
            for (c, b) in cached.iter().zip(&batched) {
                assert!(
                    (c - b).abs() <= 1e-4 * b.abs().max(1.0),
                    "{arch}: cached {cached:?} vs batched {batched:?}"
                );
            }
            // The answers really differ in likelihood (the test is not vacuous).
            assert!(batched.iter().any(|&x| (x - batched[0]).abs() > 1e-3));
        }
    }
}
