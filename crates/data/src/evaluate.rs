//! Scoring a language model on a task's examples.
//!
//! The model is reached only through [`Scorer`] (greedy generation and per-row
//! log-likelihoods), so this crate stays model-free.
//! - Generation tasks: render the prompt, generate greedily, compare the decoded text
//!   with the example's target by the task's metric (ROUGE-L F1 or exact match).
//! - Multiple choice: score every choice as the sum of its tokens' log-probabilities
//!   after the prompt (one batch per example), pick the best under [`LengthNorm`],
//!   count 1 when it is the answer.
//!
//! The result is the mean over examples with a 95% interval ([`mean_ci`]).
//! [`evaluate_parallel`] splits the examples over several scorers, one thread each.
//! With `limit`, a seeded random subset of that size is scored (tasks are often stored
//! sorted by group, so the first N would not be representative).

use candle_core::Device;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::batch::{collate, encode, Batch, BatchConfig, Encoded};
use crate::error::{Error, Result};
use crate::metrics::{exact_match, mean_ci, pick_choice, rouge_l, ChoiceScore, LengthNorm, MeanCi};
use crate::prompt::{ChoiceDisplay, PromptFormat, Rendered, Template};
use crate::task::{GenerationMetric, Task, TaskKind};

/// What evaluation needs from a model.
pub trait Scorer {
    /// Greedy continuation of `prompt_ids`: at most `max_new_tokens` ids, without the
    /// stop token.
    fn generate(&mut self, prompt_ids: &[u32], max_new_tokens: usize) -> Result<Vec<u32>>;
    /// [`Scorer::generate`] of several prompts. A scorer may run them as one batch
    /// (each weight read once per step for all of them); the default runs them one
    /// by one.
    fn generate_batch(
        &mut self,
        prompts: &[Vec<u32>],
        max_new_tokens: usize,
    ) -> Result<Vec<Vec<u32>>> {
        prompts
            .iter()
            .map(|p| self.generate(p, max_new_tokens))
            .collect()
    }
    /// For each row of `batch`, the sum of `log p(token | prefix)` over the positions
    /// whose loss mask is 1.
    fn logliks(&mut self, batch: &Batch) -> Result<Vec<f32>>;
    /// [`Scorer::logliks`] of `items` (a multiple-choice example: one prompt, several
    /// answers). A scorer may compute the shared prompt once; the default pads the
    /// items into one batch.
    fn choice_logliks(&mut self, items: &[Encoded], pad_id: u32) -> Result<Vec<f32>> {
        self.logliks(&collate(items, pad_id, &Device::Cpu)?)
    }
    /// Told before an evaluation's examples that every one of their prompts starts with
    /// `ids` (a task's instruction, with the chat template's opening). A scorer may run
    /// them once for all; the default ignores it. Every scorer of an evaluation is told
    /// the same, so how the examples are split over scorers changes no score.
    fn share_prompt_prefix(&mut self, ids: &[u32]) {
        let _ = ids;
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EvalConfig {
    pub format: PromptFormat,
    /// Longest prompt + answer, in tokens.
    pub max_len: usize,
    pub max_new_tokens: usize,
    /// Score a seeded random subset of this many examples.
    pub limit: Option<usize>,
    pub seed: u64,
    pub length_norm: LengthNorm,
    pub pad_id: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    /// `rouge_l`, `exact_match` or `accuracy`.
    pub metric: &'static str,
    pub score: MeanCi,
    /// What the model answered and its score, per example scored.
    pub outputs: Vec<ExampleOutput>,
}

impl EvalReport {
    /// Each scored example's score, in order.
    pub fn per_example(&self) -> Vec<f64> {
        self.outputs.iter().map(|o| o.score).collect()
    }
}

/// One scored example: what the model produced and its score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExampleOutput {
    /// The example's id in the task.
    pub id: String,
    /// The generated text (generation tasks, trimmed as it was scored) or the chosen
    /// option (multiple choice).
    pub output: String,
    pub score: f64,
}

/// Score `scorer` on `task` (its examples as given: pass the test split).
pub fn evaluate(
    task: &Task,
    tokenizer: &Tokenizer,
    scorer: &mut dyn Scorer,
    cfg: &EvalConfig,
) -> Result<EvalReport> {
    let (order, shared) = plan(task, tokenizer, cfg)?;
    scorer.share_prompt_prefix(&shared);
    let outputs = score_examples(task, &order, tokenizer, scorer, cfg)?;
    report(task, outputs)
}

/// Prompts a generation task hands to [`Scorer::generate_batch`] at once. Groups are
/// fixed runs of the scoring order ([`plan`]), whatever the number of scorers, so that
/// the report does not depend on it.
///
/// A decoding step reads every weight the batch routes to (the SmolLM2 MoE: about
/// 1.5 GB of f32 weights per step for 8 prompts), so a step costs about the same for
/// 8 prompts as for 16 and the time goes with the number of steps. 16 since
/// 2026-12-02: `fluxmoe eval --model builtin:smollm2-btx --task wordnet-define
/// --limit 32 --max-new-tokens 24 --workers 2` took 13.9 s against 21.6-23.5 s with
/// 8, with the same ROUGE-L (an Intel Xeon, 2 cores). Fine-tuned models stop sooner,
/// so in the standard suite the gain is about 2 s an evaluation (README, "Performance").
pub const GENERATION_BATCH: usize = 16;

/// The order the selected examples are scored and reported in, and the token prefix
/// all their prompts share. A generation task's examples go by prompt length
/// (stable), so that each batch holds prompts of similar length: a batch is
/// left-padded to its longest prompt and the pads cost as much as tokens (math, 48
/// questions: 2,896 padded prompt positions in drawn order, 2,096 sorted, for 1,917
/// tokens). A prompt continues as it would alone (`Scorer::generate_batch`), so the
/// order changes no output.
fn plan(task: &Task, tokenizer: &Tokenizer, cfg: &EvalConfig) -> Result<(Vec<usize>, Vec<u32>)> {
    let mut order = selection(task, cfg)?;
    let prompts = order
        .iter()
        .map(|&i| prompt_ids(task, i, tokenizer, cfg))
        .collect::<Result<Vec<_>>>()?;
    let shared = common_prefix(&prompts);
    if let TaskKind::Generation { .. } = task.kind {
        let mut by_length: Vec<(usize, usize)> = order
            .iter()
            .zip(&prompts)
            .map(|(&i, p)| (p.len(), i))
            .collect();
        by_length.sort_by_key(|&(len, _)| len);
        order = by_length.into_iter().map(|(_, i)| i).collect();
    }
    Ok((order, shared))
}

/// Example `i`'s rendered prompt as token ids (no target).
fn prompt_ids(task: &Task, i: usize, tokenizer: &Tokenizer, cfg: &EvalConfig) -> Result<Vec<u32>> {
    let rendered = Template::for_task(&task.name).render(&task.examples[i], cfg.format)?;
    let r = Rendered {
        prompt: rendered.prompt,
        target: String::new(),
    };
    Ok(encode(tokenizer, &r, &batch_config(cfg))?.ids)
}

/// The longest common prefix of `prompts`, short of each one's last token.
fn common_prefix(prompts: &[Vec<u32>]) -> Vec<u32> {
    let Some(first) = prompts.first() else {
        return Vec::new();
    };
    let mut n = first.len();
    for p in prompts {
        let common = first.iter().zip(p).take_while(|(a, b)| a == b).count();
        n = n.min(common).min(p.len().saturating_sub(1));
    }
    first[..n].to_vec()
}

/// [`evaluate`] with the examples split over `scorers`, one thread each: generation
/// groups (or single multiple-choice examples) dealt out in turn, scores gathered back
/// in [`evaluate`]'s order. Each example is
/// scored as [`evaluate`] would score it, so the report is the same for any number of
/// scorers given scorers that compute alike (e.g. one compute thread each).
pub fn evaluate_parallel<S: Scorer + Send>(
    task: &Task,
    tokenizer: &Tokenizer,
    scorers: &mut [S],
    cfg: &EvalConfig,
) -> Result<EvalReport> {
    if scorers.is_empty() {
        return Err(Error::param("scorers", "need at least one"));
    }
    let (order, shared) = plan(task, tokenizer, cfg)?;
    // Units are whole generation groups, so each group is batched as `evaluate`
    // batches it; they are dealt out in turn, so that with a generation task's
    // length order every scorer gets short and long prompts alike.
    let unit = match task.kind {
        TaskKind::Generation { .. } => GENERATION_BATCH,
        TaskKind::MultipleChoice => 1,
    };
    let units: Vec<&[usize]> = order.chunks(unit).collect();
    let n = scorers.len().min(units.len()).max(1);
    let shares: Vec<Vec<usize>> = (0..n)
        .map(|w| {
            units
                .iter()
                .skip(w)
                .step_by(n)
                .flat_map(|u| u.iter().copied())
                .collect()
        })
        .collect();
    let parts: Vec<Result<Vec<ExampleOutput>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .iter()
            .zip(scorers.iter_mut())
            .map(|(share, scorer)| {
                let shared = &shared;
                scope.spawn(move || {
                    scorer.share_prompt_prefix(shared);
                    score_examples(task, share, tokenizer, scorer, cfg)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Error::task(&task.name, "an evaluation thread panicked"))
                })
            })
            .collect()
    });
    // Back in scoring order: unit j is the (j / n)-th unit of share j % n.
    let mut parts: Vec<std::vec::IntoIter<ExampleOutput>> = parts
        .into_iter()
        .map(|p| p.map(Vec::into_iter))
        .collect::<Result<_>>()?;
    let mut outputs = Vec::with_capacity(order.len());
    for (j, u) in units.iter().enumerate() {
        outputs.extend(parts[j % n].by_ref().take(u.len()));
    }
    report(task, outputs)
}

/// The indices of the examples to score: all, or a seeded random `limit` of them.
fn selection(task: &Task, cfg: &EvalConfig) -> Result<Vec<usize>> {
    let mut order: Vec<usize> = (0..task.examples.len()).collect();
    if let Some(limit) = cfg.limit {
        if limit == 0 {
            return Err(Error::param("limit", "must be at least 1"));
        }
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(cfg.seed));
        order.truncate(limit);
    }
    Ok(order)
}

/// The outputs and scores in [0, 1] of examples `indices`, in order: generation
/// prompts in groups of [`GENERATION_BATCH`], multiple-choice examples one by one.
fn score_examples(
    task: &Task,
    indices: &[usize],
    tokenizer: &Tokenizer,
    scorer: &mut (impl Scorer + ?Sized),
    cfg: &EvalConfig,
) -> Result<Vec<ExampleOutput>> {
    let TaskKind::Generation { metric } = task.kind else {
        return indices
            .iter()
            .map(|&i| score_choice_example(task, i, tokenizer, scorer, cfg))
            .collect();
    };
    let template = Template::for_task(&task.name);
    let mut scores = Vec::with_capacity(indices.len());
    for group in indices.chunks(GENERATION_BATCH) {
        let prompts = group
            .iter()
            .map(|&i| prompt_ids(task, i, tokenizer, cfg))
            .collect::<Result<Vec<_>>>()?;
        let outs = scorer.generate_batch(&prompts, cfg.max_new_tokens)?;
        if outs.len() != group.len() {
            return Err(Error::task(
                &task.name,
                format!(
                    "the scorer returned {} generations for {} prompts",
                    outs.len(),
                    group.len()
                ),
            ));
        }
        for (&i, out) in group.iter().zip(outs) {
            let reference = template.message(&task.examples[i])?.target;
            let text = tokenizer
                .decode(&out, true)
                .map_err(|e| Error::Tokenizer(e.to_string()))?;
            let (output, score) = match metric {
                GenerationMetric::RougeL => {
                    let output = text.trim();
                    (output, rouge_l(output, &reference).f1)
                }
                GenerationMetric::ExactMatch => {
                    let first_line = text.trim().lines().next().unwrap_or("");
                    (
                        first_line,
                        f64::from(u8::from(exact_match(first_line, &reference))),
                    )
                }
            };
            scores.push(ExampleOutput {
                id: task.examples[i].id.clone(),
                output: output.to_string(),
                score,
            });
        }
    }
    Ok(scores)
}

fn batch_config(cfg: &EvalConfig) -> BatchConfig {
    BatchConfig {
        max_len: cfg.max_len,
        pad_id: cfg.pad_id,
        eos_id: None,
    }
}

/// Multiple-choice example `i`'s chosen option and score (1 when it is right).
fn score_choice_example(
    task: &Task,
    i: usize,
    tokenizer: &Tokenizer,
    scorer: &mut (impl Scorer + ?Sized),
    cfg: &EvalConfig,
) -> Result<ExampleOutput> {
    let template = Template::for_task(&task.name);
    let batch_cfg = batch_config(cfg);
    let ex = &task.examples[i];
    let rendered = template.render(ex, cfg.format)?;
    Ok(match task.kind {
        TaskKind::Generation { .. } => {
            return Err(Error::task(
                &task.name,
                "a generation task scored as multiple choice",
            ))
        }
        TaskKind::MultipleChoice => {
            let (choices, answer) = match (&ex.choices, ex.answer) {
                (Some(c), Some(a)) => (c, a),
                _ => {
                    return Err(Error::task(
                        &task.name,
                        format!("example `{}` has no choices or answer", ex.id),
                    ))
                }
            };
            let options: Vec<String> = match template.choices {
                ChoiceDisplay::Hidden => choices.iter().cloned().collect(),
                ChoiceDisplay::Lettered => (b'A'..)
                    .take(choices.len())
                    .map(|c| (c as char).to_string())
                    .collect(),
            };
            let items = options
                .iter()
                .map(|o| {
                    let r = Rendered {
                        prompt: rendered.prompt.clone(),
                        target: o.clone(),
                    };
                    encode(tokenizer, &r, &batch_cfg)
                })
                .collect::<Result<Vec<_>>>()?;
            let logliks = scorer.choice_logliks(&items, cfg.pad_id)?;
            let scored: Vec<ChoiceScore> = items
                .iter()
                .zip(&logliks)
                .zip(&options)
                .map(|((item, &loglik), o)| ChoiceScore {
                    loglik,
                    n_tokens: item.loss_mask.iter().filter(|&&m| m == 1).count(),
                    n_chars: o.chars().count(),
                })
                .collect();
            let picked = pick_choice(&scored, cfg.length_norm)?;
            ExampleOutput {
                id: ex.id.clone(),
                output: choices.get(picked).cloned().unwrap_or_default(),
                score: f64::from(u8::from(picked == answer)),
            }
        }
    })
}

fn report(task: &Task, outputs: Vec<ExampleOutput>) -> Result<EvalReport> {
    let scores: Vec<f64> = outputs.iter().map(|o| o.score).collect();
    let metric = match task.kind {
        TaskKind::Generation {
            metric: GenerationMetric::RougeL,
        } => "rouge_l",
        TaskKind::Generation {
            metric: GenerationMetric::ExactMatch,
        } => "exact_match",
        TaskKind::MultipleChoice => "accuracy",
    };
    Ok(EvalReport {
        metric,
        // Every metric here scores an example in [0, 1].
        score: mean_ci(&scores)?.within(0.0, 1.0),
        outputs,
    })
}
