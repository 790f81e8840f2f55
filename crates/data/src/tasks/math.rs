//! `math`: DeepMind `mathematics_dataset` short-answer questions
//! (`shared/data/mathematics/{train,test}.jsonl`, see that folder's README).
//!
//! Each line is `{"id","question","answer","module","area"}`;
//! prompt = `question`, target = `answer`, group = `module` (20 modules).
//! Answers are integers, decimals, fractions (`-6/5`), `True`/`False`, letters,
//! sorted comma lists or times, so the task is scored by exact match after
//! normalisation ([`crate::metrics::exact_match`]).

use std::path::Path;

use crate::error::Result;
use crate::jsonl::{read_jsonl, LoadOptions, Loaded};
use crate::task::{Example, GenerationMetric, Task, TaskKind};

pub const NAME: &str = "math";

/// Which file of the mathematics folder to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MathSplit {
    /// `train.jsonl` (train-easy difficulty, 3000 per module).
    Train,
    /// `test.jsonl` (interpolate difficulty, 300 per module).
    Test,
}

/// Loads `<dir>/train.jsonl` or `<dir>/test.jsonl`.
pub fn load(dir: &Path, split: MathSplit, opts: LoadOptions) -> Result<Loaded> {
    let file = match split {
        MathSplit::Train => "train.jsonl",
        MathSplit::Test => "test.jsonl",
    };
    load_file(&dir.join(file), opts)
}

/// Loads one mathematics JSONL file.
pub fn load_file(path: &Path, opts: LoadOptions) -> Result<Loaded> {
    let (examples, n_skipped) = read_jsonl(path, opts, |r| {
        Ok(Example::generation(
            r.str("id")?,
            r.str("question")?,
            r.str("answer")?,
            Some(r.str("module")?.to_string()),
        ))
    })?;
    let task = Task::new(
        NAME,
        TaskKind::Generation {
            metric: GenerationMetric::ExactMatch,
        },
        examples,
    )?;
    Ok(Loaded { task, n_skipped })
}
