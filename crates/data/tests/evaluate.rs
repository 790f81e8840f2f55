//! The evaluation loop with a fake model: metrics, multiple-choice picking, subsets.

mod common;

use std::sync::Arc;

use common::tiny_tokenizer;
use fluxmoe_data::batch::Batch;
use fluxmoe_data::evaluate::GENERATION_BATCH;
use fluxmoe_data::metrics::LengthNorm;
use fluxmoe_data::prompt::PromptFormat;
use fluxmoe_data::{evaluate, EvalConfig, Example, GenerationMetric, Scorer, Task, TaskKind};

const FOUR: u32 = 10;

/// Always answers "four"; prefers any choice containing "four".
struct Fake {
    prompts: Vec<Vec<u32>>,
}

impl Scorer for Fake {
    fn generate(
        &mut self,
        prompt_ids: &[u32],
        max_new_tokens: usize,
    ) -> fluxmoe_data::Result<Vec<u32>> {
        self.prompts.push(prompt_ids.to_vec());
        Ok(vec![FOUR; max_new_tokens.min(1)])
    }
    fn logliks(&mut self, batch: &Batch) -> fluxmoe_data::Result<Vec<f32>> {
        let ids = batch.input_ids.to_vec2::<u32>().unwrap();
        let mask = batch.loss_mask.to_vec2::<u32>().unwrap();
        Ok(ids
            .iter()
            .zip(&mask)
            .map(|(row, m)| {
                let picks_four = row.iter().zip(m).any(|(&id, &mm)| mm == 1 && id == FOUR);
                if picks_four {
                    -1.0
                } else {
                    -5.0
                }
            })
            .collect())
    }
}

/// A generation task scored by exact match.
fn exact_match_task(examples: Vec<Example>) -> Task {
    Task::new(
        "generic",
        TaskKind::Generation {
            metric: GenerationMetric::ExactMatch,
        },
        examples,
    )
    .unwrap()
}

fn cfg(limit: Option<usize>) -> EvalConfig {
    EvalConfig {
        format: PromptFormat::ChatMl,
        max_len: 32,
        max_new_tokens: 4,
        limit,
        seed: 3,
        length_norm: LengthNorm::Sum,
        pad_id: 0,
    }
}

#[test]
fn generation_scores_with_the_task_metric() {
    let examples = vec![
        Example::generation("a", "what is two plus two", "four", None),
        Example::generation("b", "what is two", "two", None),
    ];
    for (metric, name) in [
        (GenerationMetric::RougeL, "rouge_l"),
        (GenerationMetric::ExactMatch, "exact_match"),
    ] {
        let task = Task::new("generic", TaskKind::Generation { metric }, examples.clone()).unwrap();
        let mut fake = Fake { prompts: vec![] };
        let report = evaluate(&task, &tiny_tokenizer(), &mut fake, &cfg(None)).unwrap();
        assert_eq!(report.metric, name);
        // Scored and reported by prompt length: "b" first.
        assert_eq!(report.per_example(), vec![0.0, 1.0]);
        // What the model said, per example, beside its score.
        let said: Vec<(&str, &str, f64)> = report
            .outputs
            .iter()
            .map(|o| (o.id.as_str(), o.output.as_str(), o.score))
            .collect();
        assert_eq!(said, vec![("b", "four", 0.0), ("a", "four", 1.0)]);
        assert!((report.score.mean - 0.5).abs() < 1e-12);
        // The model saw the ChatML prompt, ending with the assistant turn.
        let first = &fake.prompts[0];
        assert_eq!(first[0], 2, "starts with <|im_start|>");
        assert_eq!(*first.last().unwrap(), 5, "ends with `assistant`");
    }
}

#[test]
fn multiple_choice_picks_the_highest_likelihood() {
    let choices: Arc<[String]> = vec!["two".to_string(), "four".to_string()].into();
    let examples = vec![
        Example::multiple_choice("a", "what is two plus two", choices.clone(), 1, None).unwrap(),
        Example::multiple_choice("b", "what is two", choices, 0, None).unwrap(),
    ];
    let task = Task::new("generic", TaskKind::MultipleChoice, examples).unwrap();
    let report = evaluate(
        &task,
        &tiny_tokenizer(),
        &mut Fake { prompts: vec![] },
        &cfg(None),
    )
    .unwrap();
    assert_eq!(report.metric, "accuracy");
    assert_eq!(report.per_example(), vec![1.0, 0.0]);
    // The chosen option is recorded, right or wrong.
    let chosen: Vec<&str> = report.outputs.iter().map(|o| o.output.as_str()).collect();
    assert_eq!(chosen, vec!["four", "four"]);
}

#[test]
fn limit_scores_a_seeded_subset() {
    let examples: Vec<Example> = (0..10)
        .map(|i| {
            Example::generation(
                format!("{i}"),
                "what is two",
                if i % 2 == 0 { "four" } else { "two" },
                None,
            )
        })
        .collect();
    let task = exact_match_task(examples);
    let a = evaluate(
        &task,
        &tiny_tokenizer(),
        &mut Fake { prompts: vec![] },
        &cfg(Some(4)),
    )
    .unwrap();
    let b = evaluate(
        &task,
        &tiny_tokenizer(),
        &mut Fake { prompts: vec![] },
        &cfg(Some(4)),
    )
    .unwrap();
    assert_eq!(a.per_example().len(), 4);
    assert_eq!(a.per_example(), b.per_example());
    assert!(evaluate(
        &task,
        &tiny_tokenizer(),
        &mut Fake { prompts: vec![] },
        &cfg(Some(0))
    )
    .is_err());
}

#[test]
fn parallel_evaluation_matches_the_sequential_one_in_order() {
    let examples: Vec<Example> = (0..40)
        .map(|i| {
            Example::generation(
                format!("{i}"),
                "what is two",
                if i % 3 == 0 { "four" } else { "two" },
                None,
            )
        })
        .collect();
    let task = exact_match_task(examples);
    let tokenizer = tiny_tokenizer();
    let sequential = evaluate(
        &task,
        &tokenizer,
        &mut Fake { prompts: vec![] },
        &cfg(Some(29)),
    )
    .unwrap();
    // Not all equal, so a reordering would show.
    assert!(sequential.per_example().contains(&1.0) && sequential.per_example().contains(&0.0));
    for n in [1, 2, 3, 7, 12] {
        let mut scorers: Vec<Fake> = (0..n).map(|_| Fake { prompts: vec![] }).collect();
        let parallel =
            fluxmoe_data::evaluate_parallel(&task, &tokenizer, &mut scorers, &cfg(Some(29)))
                .unwrap();
        assert_eq!(
            parallel.per_example(),
            sequential.per_example(),
            "{n} scorers"
        );
        assert_eq!(parallel.score, sequential.score);
        // Every example scored once, spread over the scorers in whole generation
        // groups dealt out in turn (the last group short).
        let n_groups = 29usize.div_ceil(GENERATION_BATCH);
        let missing = n_groups * GENERATION_BATCH - 29;
        assert!(
            n_groups >= 2 && missing > 0,
            "the test needs a short last group"
        );
        let used: Vec<usize> = scorers.iter().map(|s| s.prompts.len()).collect();
        assert_eq!(used.iter().sum::<usize>(), 29, "{n} scorers: {used:?}");
        assert_eq!(
            used.iter().filter(|&&u| u > 0).count(),
            n.min(n_groups),
            "{n} scorers: {used:?}"
        );
        for (w, &u) in used.iter().enumerate() {
            let groups = (w..n_groups).step_by(n).count();
            let short = usize::from(w == (n_groups - 1) % n);
            assert_eq!(
                u,
                groups * GENERATION_BATCH - missing * short,
                "{n} scorers: {used:?}"
            );
        }
    }
    let mut none: Vec<Fake> = Vec::new();
    assert!(fluxmoe_data::evaluate_parallel(&task, &tokenizer, &mut none, &cfg(None)).is_err());
}

/// Generation prompts are batched by length, shortest first, whatever the number of
/// scorers; the report lists the examples in that order, each with its own output.
#[test]
fn generation_batches_hold_prompts_of_similar_length() {
    let words = [
        "two",
        "two two two two",
        "two two",
        "two two two two two two",
        "two two two",
    ];
    // Three generation groups, the last one short.
    let n = 2 * GENERATION_BATCH + GENERATION_BATCH / 2;
    let examples: Vec<Example> = (0..n)
        .map(|i| Example::generation(format!("{i}"), words[i % 5], "four", None))
        .collect();
    let task = exact_match_task(examples);
    let tokenizer = tiny_tokenizer();
    let mut one = Fake { prompts: vec![] };
    let report = evaluate(&task, &tokenizer, &mut one, &cfg(None)).unwrap();
    let lengths: Vec<usize> = one.prompts.iter().map(Vec::len).collect();
    assert!(lengths.windows(2).all(|w| w[0] <= w[1]), "{lengths:?}");
    assert!(lengths[0] < lengths[n - 1], "{lengths:?}");
    // Report order = scoring order: the ids of the shortest prompts come first.
    let ids: Vec<&str> = report.outputs.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(&ids[..4], &["0", "5", "10", "15"]);
    let mut two = vec![Fake { prompts: vec![] }, Fake { prompts: vec![] }];
    let parallel =
        fluxmoe_data::evaluate_parallel(&task, &tokenizer, &mut two, &cfg(None)).unwrap();
    assert_eq!(parallel.outputs, report.outputs);
    // Groups 0 and 2 (the shortest and longest prompts) to the first scorer, 1 to the
    // second.
    let b = GENERATION_BATCH;
    assert_eq!(
        two[0].prompts,
        [&one.prompts[..b], &one.prompts[2 * b..]].concat()
    );
    assert_eq!(two[1].prompts, one.prompts[b..2 * b].to_vec());
}
