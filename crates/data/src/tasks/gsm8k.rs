//! `gsm8k`: grade-school math word problems (`train.jsonl` / `test.jsonl`).
//!
//! Each line is `{"question","answer"}`; `answer` is a worked solution whose last
//! line is `#### <final answer>` (e.g. `#### 1,080`).
//! prompt = `question`, target = the text after the last `#### `, trimmed
//! (the worked solution is dropped, so the task trains and scores direct
//! answers); a missing `#### ` marker is a record error.
//! Ids are `gsm8k-<line>`; no group. Scored by exact match.

use std::path::Path;

use crate::error::Result;
use crate::jsonl::{read_jsonl, LoadOptions, Loaded};
use crate::task::{Example, GenerationMetric, Task, TaskKind};

pub const NAME: &str = "gsm8k";

/// The final answer of a GSM8K solution: the trimmed text after the last `####`.
pub fn final_answer(solution: &str) -> Option<&str> {
    let (_, tail) = solution.rsplit_once("####")?;
    let tail = tail.trim();
    (!tail.is_empty()).then_some(tail)
}

pub fn load(path: &Path, opts: LoadOptions) -> Result<Loaded> {
    let (examples, n_skipped) = read_jsonl(path, opts, |r| {
        let solution = r.str("answer")?;
        let Some(answer) = final_answer(solution) else {
            return Err(r.error("field `answer` has no `#### <final answer>` line"));
        };
        Ok(Example::generation(
            format!("gsm8k-{}", r.line),
            r.str("question")?,
            answer,
            None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_answer_takes_text_after_last_marker() {
        assert_eq!(final_answer("a\nb #### 3\n#### 1,080 "), Some("1,080"));
        assert_eq!(final_answer("no marker"), None);
        assert_eq!(final_answer("#### "), None);
    }
}
