//! [`ModelScorer`]: `fluxmoe_data::Scorer` (greedy generation, log-likelihoods) over a
//! [`MoeModel`], and [`ModelEvaluator`]: the runtime's `Evaluator` scoring a global
//! model on a task's test split.

use std::collections::BTreeMap;

use fluxmoe_data::batch::Batch;
use fluxmoe_data::{evaluate, EvalConfig, Scorer, Task};
use fluxmoe_fed::{Evaluator, Global, Round};
use fluxmoe_model::generate::{generate, GenerateConfig};
use fluxmoe_model::model::CachedLm;
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
