//! Tasks: a named list of [`Example`]s plus how they are scored ([`TaskKind`]).
//!
//! - A generation example has a `prompt` and a reference `target`; it is scored
//!   by [`GenerationMetric`] (exact match or ROUGE-L F1) on the generated text.
//! - A multiple-choice example also has `choices` and `answer` (an index into
//!   `choices`); `target` is then `choices[answer]`.
//!   It is scored by comparing per-choice log-likelihoods
//!   ([`crate::metrics::choice_accuracy`]).
//! - `group` is the example's natural label (math module, Dolly category, MMLU
//!   subject, WordNet supersense); partitioners use it for non-IID splits.
//!
//! `choices` is an `Arc<[String]>` so that tasks where every example shares one
//! label set (WordNet supersenses: 45 labels, 117k synsets) hold it once.
//!
//! [`Task::split`] is a deterministic train/test split: a seeded shuffle of the
//! example indices (`rand::rngs::StdRng::seed_from_u64(seed)`), the first
//! `round(n * test_fraction)` shuffled indices become the test side, and both
//! sides keep the original example order and the task's name and kind.

use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::error::{Error, Result};

/// One prompt with its reference answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub id: String,
    pub prompt: String,
    pub target: String,
    /// The options of a multiple-choice example.
    pub choices: Option<Arc<[String]>>,
    /// Index of the correct option in `choices`.
    pub answer: Option<usize>,
    /// Natural label used by non-IID partitioners.
    pub group: Option<String>,
}

impl Example {
    /// A generation example (no choices).
    pub fn generation(
        id: impl Into<String>,
        prompt: impl Into<String>,
        target: impl Into<String>,
        group: Option<String>,
    ) -> Self {
        Example {
            id: id.into(),
            prompt: prompt.into(),
            target: target.into(),
            choices: None,
            answer: None,
            group,
        }
    }

    /// A multiple-choice example; `target` becomes `choices[answer]`.
    /// Fails when `answer` is out of range or there are fewer than two choices.
    pub fn multiple_choice(
        id: impl Into<String>,
        prompt: impl Into<String>,
        choices: Arc<[String]>,
        answer: usize,
        group: Option<String>,
    ) -> Result<Self> {
        let id = id.into();
        if choices.len() < 2 {
            return Err(Error::task(
                &id,
                format!("needs at least 2 choices, got {}", choices.len()),
            ));
        }
        let Some(target) = choices.get(answer).cloned() else {
            return Err(Error::task(
                &id,
                format!("answer {answer} out of range for {} choices", choices.len()),
            ));
        };
        Ok(Example {
            id,
            prompt: prompt.into(),
            target,
            choices: Some(choices),
            answer: Some(answer),
            group,
        })
    }
}

/// How generated text is compared with the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GenerationMetric {
    /// [`crate::metrics::exact_match`] after numeric normalisation.
    ExactMatch,
    /// [`crate::metrics::rouge_l`] F1.
    RougeL,
}

/// How a task is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    Generation { metric: GenerationMetric },
    MultipleChoice,
}

/// A named, non-empty list of examples of one kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub name: String,
    pub kind: TaskKind,
    pub examples: Vec<Example>,
}

impl Task {
    /// Checks the invariants: at least one example, and every example of a
    /// multiple-choice task has choices and an in-range answer (and none of a
    /// generation task has choices).
    pub fn new(name: impl Into<String>, kind: TaskKind, examples: Vec<Example>) -> Result<Self> {
        let name = name.into();
        if examples.is_empty() {
            return Err(Error::task(&name, "has no examples"));
        }
        for ex in &examples {
            match (kind, &ex.choices, ex.answer) {
                (TaskKind::MultipleChoice, Some(choices), Some(answer))
                    if answer < choices.len() => {}
                (TaskKind::MultipleChoice, _, _) => {
                    return Err(Error::task(
                        &name,
                        format!(
                            "example `{}` of a multiple-choice task lacks choices or an in-range answer",
                            ex.id
                        ),
                    ))
                }
                (TaskKind::Generation { .. }, None, None) => {}
                (TaskKind::Generation { .. }, _, _) => {
                    return Err(Error::task(
                        &name,
                        format!(
                            "example `{}` of a generation task has choices or an answer",
                            ex.id
                        ),
                    ))
                }
            }
        }
        Ok(Task {
            name,
            kind,
            examples,
        })
    }

    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Always false for a task built by [`Task::new`]; here for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// The group label of every example, in order (what partitioners take).
    pub fn groups(&self) -> Vec<Option<&str>> {
        self.examples.iter().map(|ex| ex.group.as_deref()).collect()
    }

    /// Deterministic `(train, test)` split; see the module docs.
    /// Fails when `test_fraction` is not in (0, 1) or either side would be empty.
    pub fn split(&self, seed: u64, test_fraction: f64) -> Result<(Task, Task)> {
        if !(test_fraction > 0.0 && test_fraction < 1.0) {
            return Err(Error::param(
                "test_fraction",
                format!("must be in (0, 1), got {test_fraction}"),
            ));
        }
        let n = self.examples.len();
        let n_test = (n as f64 * test_fraction).round() as usize;
        if n_test == 0 || n_test == n {
            return Err(Error::task(
                &self.name,
                format!("a {test_fraction} test split of {n} examples leaves one side empty"),
            ));
        }
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        order.shuffle(&mut rng);
        let mut is_test = vec![false; n];
        for &idx in &order[..n_test] {
            is_test[idx] = true;
        }
        let (mut train, mut test) = (Vec::with_capacity(n - n_test), Vec::with_capacity(n_test));
        for (ex, &t) in self.examples.iter().zip(&is_test) {
            if t {
                test.push(ex.clone());
            } else {
                train.push(ex.clone());
            }
        }
        Ok((
            Task::new(self.name.clone(), self.kind, train)?,
            Task::new(self.name.clone(), self.kind, test)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize) -> Task {
        let examples = (0..n)
            .map(|i| Example::generation(format!("e{i}"), format!("q{i}"), format!("a{i}"), None))
            .collect();
        Task::new(
            "toy",
            TaskKind::Generation {
                metric: GenerationMetric::ExactMatch,
            },
            examples,
        )
        .unwrap()
    }

    #[test]
    fn empty_task_is_an_error() {
        let err = Task::new("none", TaskKind::MultipleChoice, vec![]).unwrap_err();
        assert_eq!(err.to_string(), "task `none`: has no examples");
    }

    #[test]
    fn split_is_80_20_disjoint_covering_and_seeded() {
        let task = toy(50);
        let (train, test) = task.split(7, 0.2).unwrap();
        assert_eq!((train.len(), test.len()), (40, 10));
        assert_eq!((train.name.as_str(), test.kind), ("toy", task.kind));
        let mut ids: Vec<&str> = train
            .examples
            .iter()
            .chain(&test.examples)
            .map(|e| e.id.as_str())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 50);
        let (train2, test2) = task.split(7, 0.2).unwrap();
        assert_eq!((&train, &test), (&train2, &test2));
        let (_, test3) = task.split(8, 0.2).unwrap();
        assert_ne!(test, test3);
        // Each side keeps the original order.
        let pos = |id: &str| task.examples.iter().position(|e| e.id == id).unwrap();
        assert!(test
            .examples
            .windows(2)
            .all(|w| pos(&w[0].id) < pos(&w[1].id)));
    }

    #[test]
    fn split_rejects_bad_fractions_and_empty_sides() {
        assert!(toy(10).split(0, 0.0).is_err());
        assert!(toy(10).split(0, 1.0).is_err());
        assert!(toy(10).split(0, f64::NAN).is_err());
        assert!(matches!(toy(2).split(0, 0.1), Err(Error::Task { .. })));
    }

    #[test]
    fn multiple_choice_checks_answer_range() {
        let choices: Arc<[String]> = vec!["a".to_string(), "b".to_string()].into();
        let ex = Example::multiple_choice("x", "p", choices.clone(), 1, None).unwrap();
        assert_eq!(ex.target, "b");
        assert!(Example::multiple_choice("x", "p", choices, 2, None).is_err());
        let gen = Example::generation("g", "p", "t", None);
        assert!(Task::new("mc", TaskKind::MultipleChoice, vec![ex.clone(), gen]).is_err());
        assert!(Task::new("mc", TaskKind::MultipleChoice, vec![ex]).is_ok());
    }
}
