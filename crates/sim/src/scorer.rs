//! [`ModelScorer`]: `fluxmoe_data::Scorer` (greedy generation, log-likelihoods) over a
//! [`MoeModel`], and [`ModelEvaluator`]: the runtime's `Evaluator` scoring a global
//! model on a task's test split.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use candle_core::{Device, IndexOp, Tensor, D};
use fluxmoe_data::batch::{collate, Batch, Encoded};
use fluxmoe_data::{evaluate_parallel, EvalConfig, EvalReport, Scorer, Task};
use fluxmoe_fed::{Evaluator, Global, Round};
use fluxmoe_model::generate::{generate, GenerateConfig};
use fluxmoe_model::model::{CachedLm, ModelCache};
use fluxmoe_model::sampling::{Sampler, SamplingConfig};
use fluxmoe_model::{ModelConfig, MoeModel, ParamStore};
use tokenizers::Tokenizer;

pub struct ModelScorer<'a> {
    model: &'a MoeModel,
    stop_ids: Vec<u32>,
    /// The prefix every prompt of the evaluation shares
    /// ([`Scorer::share_prompt_prefix`]: the task's instruction, e.g. 28 of
    /// wordnet-supersense's ~52 prompt tokens), and its KV cache once computed.
    shared_prefix: Vec<u32>,
    prefix_cache: Option<ModelCache>,
}

impl<'a> ModelScorer<'a> {
    pub fn new(model: &'a MoeModel, stop_ids: Vec<u32>) -> Self {
        Self {
            model,
            stop_ids,
            shared_prefix: Vec::new(),
            prefix_cache: None,
        }
    }
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

    /// The prompts left-padded into one batch, the pads masked out of attention: with
    /// rotary positions a row's attention depends only on its tokens' relative
    /// positions, so each row continues as [`Scorer::generate`] would alone, up to
    /// float rounding (test). Finished rows leave the batch.
    fn generate_batch(
        &mut self,
        prompts: &[Vec<u32>],
        max_new_tokens: usize,
    ) -> fluxmoe_data::Result<Vec<Vec<u32>>> {
        if prompts.len() < 2 {
            return prompts
                .iter()
                .map(|p| self.generate(p, max_new_tokens))
                .collect();
        }
        self.generate_padded(prompts, max_new_tokens)
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
        self.prefix_cached_logliks(items, shared).map_err(data_err)
    }

    fn share_prompt_prefix(&mut self, ids: &[u32]) {
        if ids != self.shared_prefix {
            self.shared_prefix = ids.to_vec();
            self.prefix_cache = None;
        }
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
    fn generate_padded(
        &self,
        prompts: &[Vec<u32>],
        max_new_tokens: usize,
    ) -> fluxmoe_model::Result<Vec<Vec<u32>>> {
        let mut out = vec![Vec::new(); prompts.len()];
        if max_new_tokens == 0 {
            return Ok(out);
        }
        if prompts.iter().any(|p| p.is_empty()) {
            return Err(fluxmoe_model::Error::Input("generate: empty prompt".into()));
        }
        let device = self.model.device();
        let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let (mut ids, mut mask) = (Vec::new(), Vec::new());
        for p in prompts {
            let pad = width - p.len();
            ids.extend(std::iter::repeat_n(p[0], pad).chain(p.iter().copied()));
            mask.push([vec![0u32; pad], vec![1u32; p.len()]].concat());
        }
        let b = prompts.len();
        let mut cache = ModelCache::default();
        let ids = Tensor::from_vec(ids, (b, width), device)?;
        let mask_t = Tensor::from_vec(mask.concat(), (b, width), device)?;
        let logits = self
            .model
            .forward_cached_masked(&ids, &mask_t, &mut cache)?
            .i((.., width - 1))?;
        let mut sampler = Sampler::new(SamplingConfig::greedy())?;
        // `active[r]`: the prompt that row r of the cache and of `logits` continues.
        let mut active: Vec<usize> = (0..b).collect();
        let mut logits: Vec<Vec<f32>> = logits.to_vec2()?;
        loop {
            let (mut keep, mut next) = (Vec::new(), Vec::new());
            for (row, &p) in active.iter().enumerate() {
                let tok = sampler.sample_slice(&logits[row])?;
                if self.stop_ids.contains(&tok) {
                    continue;
                }
                out[p].push(tok);
                if out[p].len() < max_new_tokens {
                    keep.push(row as u32);
                    next.push(tok);
                }
            }
            if keep.is_empty() {
                return Ok(out);
            }
            if keep.len() < active.len() {
                cache = cache.select_rows(&keep)?;
                mask = keep.iter().map(|&r| mask[r as usize].clone()).collect();
                active = keep.iter().map(|&r| active[r as usize]).collect();
            }
            for m in &mut mask {
                m.push(1);
            }
            let n = active.len();
            let ids = Tensor::from_vec(next, (n, 1), device)?;
            let mask_t = Tensor::from_vec(mask.concat(), (n, mask[0].len()), device)?;
            logits = self
                .model
                .forward_cached_masked(&ids, &mask_t, &mut cache)?
                .squeeze(1)?
                .to_vec2()?;
        }
    }

    /// The answers as a prefix tree: the shared prompt runs once, then one token per
    /// answer depth for each distinct answer prefix at that depth (multiple-choice
    /// labels share their first tokens: `noun.`, `verb.` ...), every row continuing its
    /// parent prefix's cache row. Each answer token's log-probability is read from the
    /// row of the prefix before it.
    fn prefix_cached_logliks(
        &mut self,
        items: &[Encoded],
        shared: usize,
    ) -> fluxmoe_model::Result<Vec<f32>> {
        // The model outlives `self`'s borrow (`run_prompt` takes `&mut self`).
        let model = self.model;
        let device = model.device();
        let (mut cache, last_logits) = self.run_prompt(&items[0].ids[..shared])?;
        // log p(first answer token | prompt), the same for every item.
        let after_prompt: Vec<f32> = log_softmax(&last_logits)?.to_vec1()?;
        let answers: Vec<&[u32]> = items.iter().map(|e| &e.ids[shared..]).collect();
        // logp[i][j]: log p(answer i's token j | prompt, its tokens before j).
        let mut logp: Vec<Vec<f32>> = answers
            .iter()
            .map(|a| {
                let mut row = vec![0f32; a.len()];
                if let Some(&first) = a.first() {
                    row[0] = after_prompt[first as usize];
                }
                row
            })
            .collect();
        // Depth d runs token d of every distinct prefix `a[..=d]` that some answer
        // continues past; `parent_rows` maps the prefixes of depth d - 1 to the rows of
        // `cache`.
        let mut parent_rows: std::collections::HashMap<&[u32], u32> =
            std::collections::HashMap::new();
        let depth = answers.iter().map(|a| a.len()).max().unwrap_or(0);
        for d in 0..depth.saturating_sub(1) {
            let mut rows: std::collections::HashMap<&[u32], u32> = std::collections::HashMap::new();
            let (mut ids, mut from) = (Vec::new(), Vec::new());
            for a in answers.iter().filter(|a| a.len() > d + 1) {
                let prefix = &a[..=d];
                if rows.contains_key(prefix) {
                    continue;
                }
                rows.insert(prefix, ids.len() as u32);
                ids.push(a[d]);
                from.push(if d == 0 { 0 } else { parent_rows[&a[..d]] });
            }
            let m = ids.len();
            let mut step = cache.select_rows(&from)?;
            let ids = Tensor::from_vec(ids, (m, 1), device)?;
            let mask = Tensor::ones((m, shared + d + 1), candle_core::DType::U32, device)?;
            let logits = model.forward_cached_masked(&ids, &mask, &mut step)?;
            let lp: Vec<Vec<f32>> = log_softmax(&logits.squeeze(1)?)?.to_vec2()?;
            for (a, out) in answers.iter().zip(logp.iter_mut()) {
                if a.len() > d + 1 {
                    out[d + 1] = lp[rows[&a[..=d]] as usize][a[d + 1] as usize];
                }
            }
            cache = step;
            parent_rows = rows;
        }
        Ok(items
            .iter()
            .zip(&logp)
            .map(|(item, row)| {
                (shared..item.ids.len())
                    .filter(|&pos| item.loss_mask[pos] == 1)
                    .map(|pos| row[pos - shared])
                    .sum()
            })
            .collect())
    }
}

impl ModelScorer<'_> {
    /// The KV cache of `prompt` and the logits after its last token. A prompt that
    /// continues the evaluation's shared prefix starts from that prefix's cache
    /// (computed once); only the rest runs. Equal to running the whole prompt up to
    /// float rounding (test).
    fn run_prompt(&mut self, prompt: &[u32]) -> fluxmoe_model::Result<(ModelCache, Tensor)> {
        let model = self.model;
        let device = model.device();
        let n = self.shared_prefix.len();
        let mut cache = if n > 0 && prompt.len() > n && prompt.starts_with(&self.shared_prefix) {
            if self.prefix_cache.is_none() {
                let ids = Tensor::from_vec(self.shared_prefix.clone(), (1, n), device)?;
                let mut cache = ModelCache::default();
                model.forward_cached(&ids, &mut cache)?;
                self.prefix_cache = Some(cache);
            }
            self.prefix_cache.clone().unwrap_or_default()
        } else {
            ModelCache::default()
        };
        let rest = &prompt[cache.len()..];
        let ids = Tensor::from_vec(rest.to_vec(), (1, rest.len()), device)?;
        let logits = model.forward_cached(&ids, &mut cache)?;
        Ok((cache, logits.i((0, rest.len() - 1))?))
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
    /// Threads scoring examples at once (the run's `workers`), each with the compute
    /// threads a worker has; the metric does not depend on it.
    pub workers: usize,
    /// Where each evaluation's outputs go, one JSON line per example
    /// (`{"round", "id", "output", "score"}`), appended.
    pub predictions: PathBuf,
}

/// One line of a run's `predictions.jsonl`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Prediction {
    /// The round after which the model was scored (0: the initial model).
    pub round: u32,
    #[serde(flatten)]
    pub example: fluxmoe_data::ExampleOutput,
}

impl ModelEvaluator {
    /// Score the model whose tensors are `global` after `round`, recording its outputs.
    pub fn score(&self, round: u32, global: &Global) -> crate::Result<f64> {
        let report = self.report(global)?;
        let mut text = String::new();
        for example in report.outputs {
            let line = serde_json::to_string(&Prediction { round, example })
                .map_err(|e| crate::Error::Config(format!("prediction: {e}")))?;
            text.push_str(&line);
            text.push('\n');
        }
        let path = &self.predictions;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|source| crate::Error::Io {
                path: path.clone(),
                source,
            })?;
        Ok(report.score.mean)
    }

    /// The evaluation report of the model whose tensors are `global`.
    pub fn report(&self, global: &Global) -> crate::Result<EvalReport> {
        let params = ParamStore::from_tensors(global.iter().map(|(k, v)| (k.clone(), v.clone())))?;
        let model = MoeModel::new(&self.config, &params)?;
        let mut scorers: Vec<ModelScorer> = (0..self.workers.max(1))
            .map(|_| ModelScorer::new(&model, self.stop_ids.clone()))
            .collect();
        Ok(evaluate_parallel(
            &self.test,
            &self.tokenizer,
            &mut scorers,
            &self.eval,
        )?)
    }
}

impl Evaluator for ModelEvaluator {
    fn evaluate(&mut self, round: Round, global: &Global) -> fluxmoe_fed::Result<f64> {
        let score = self.score(round.0, global).map_err(|e| {
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

    fn fixture_model(arch: &str) -> MoeModel {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/fixtures")
            .join(arch);
        let lm = fluxmoe_model::load_model(&path, &Device::Cpu).unwrap();
        MoeModel::new(&lm.checkpoint.config, &lm.checkpoint.params).unwrap()
    }

    const ARCHS: [&str; 8] = [
        "mixtral",
        "qwen2_moe",
        "qwen3_moe",
        "olmoe",
        "deepseek",
        "deepseek_v2",
        "llama_moe",
        "llama",
    ];

    /// Left-padded batched generation continues every prompt as generation alone
    /// does, also when rows stop early (a stop token, or a prompt shorter by many
    /// pads).
    #[test]
    fn batched_generation_matches_one_prompt_at_a_time() {
        let prompts: Vec<Vec<u32>> = vec![
            vec![3, 17, 42, 9, 11, 64, 2],
            vec![5],
            vec![8, 1, 77, 30],
            vec![12, 12, 90, 4, 6, 7, 19, 23, 31, 2, 44],
        ];
        for arch in ARCHS {
            let model = fixture_model(arch);
            let mut alone = ModelScorer::new(&model, Vec::new());
            // A stop token that ends the first prompt's continuation after two tokens.
            let first = alone.generate(&prompts[0], 6).unwrap();
            let stop = first[2];
            for stop_ids in [Vec::new(), vec![stop]] {
                let mut scorer = ModelScorer::new(&model, stop_ids.clone());
                let want: Vec<Vec<u32>> = prompts
                    .iter()
                    .map(|p| scorer.generate(p, 6).unwrap())
                    .collect();
                let got = scorer.generate_batch(&prompts, 6).unwrap();
                assert_eq!(got, want, "{arch}, stop ids {stop_ids:?}");
                if !stop_ids.is_empty() {
                    assert!(want[0].len() <= 2, "{arch}: {want:?}");
                }
            }
            assert_eq!(
                alone.generate_batch(&prompts, 0).unwrap(),
                vec![Vec::<u32>::new(); 4]
            );
            assert!(alone.generate_batch(&[vec![1], vec![]], 3).is_err());
        }
    }

    #[test]
    fn prompt_cached_choices_match_the_padded_batch() {
        for arch in ARCHS {
            let model = fixture_model(arch);
            let mut scorer = ModelScorer::new(&model, Vec::new());
            let it = items(
                &[3, 17, 42, 9, 11, 64, 2],
                &[
                    &[5],
                    &[7, 8, 9, 10],
                    &[1, 100],
                    &[99, 98, 97],
                    // Answers that share prefixes of different lengths (a branching
                    // tree), and one that is a prefix of another.
                    &[7, 8, 1],
                    &[7, 2],
                    &[7, 8],
                ],
            );
            let cached = scorer.choice_logliks(&it, 0).unwrap();
            let batched = scorer
                .logliks(&collate(&it, 0, &Device::Cpu).unwrap())
                .unwrap();
            assert_eq!(cached.len(), 7);
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

    /// Questions that continue the evaluation's shared prefix start from its cache
    /// and score as a scorer without it (which runs each whole prompt) does; a
    /// question that does not continue it, or is no longer than it, runs whole.
    #[test]
    fn questions_start_from_the_shared_prefix_and_score_the_same() {
        let answers: &[&[u32]] = &[&[5], &[7, 8, 9], &[7, 2]];
        let prompts: [&[u32]; 5] = [
            &[3, 17, 42, 9, 11, 64, 2],
            &[3, 17, 42, 9, 50],
            &[3, 17, 42, 9],
            &[3, 17, 90],
            &[88, 17, 42, 9, 1],
        ];
        for arch in ARCHS {
            let model = fixture_model(arch);
            let mut sharing = ModelScorer::new(&model, Vec::new());
            sharing.share_prompt_prefix(&[3, 17, 42, 9]);
            for (q, prompt) in prompts.iter().enumerate() {
                let it = items(prompt, answers);
                let got = sharing.choice_logliks(&it, 0).unwrap();
                let want = ModelScorer::new(&model, Vec::new())
                    .choice_logliks(&it, 0)
                    .unwrap();
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                        "{arch}, question {q}: sharing {got:?} vs whole {want:?}"
                    );
                }
            }
            assert_eq!(sharing.prefix_cache.as_ref().map(ModelCache::len), Some(4));
            // A new prefix drops the old cache.
            sharing.share_prompt_prefix(&[3, 17]);
            assert!(sharing.prefix_cache.is_none());
        }
    }
}
