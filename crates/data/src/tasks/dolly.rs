//! `dolly`: `databricks-dolly-15k.jsonl`.
//!
//! Each line is `{"instruction","context","response","category"}` (all strings;
//! `context` is empty for closed tasks).
//! prompt = `instruction`, followed by `"\n\nContext:\n" + context` when the
//! context is not blank; target = `response`; group = `category` (8 categories
//! such as `open_qa`, `summarization`).
//! Ids are `dolly-<line>`. Scored by ROUGE-L F1.

use std::path::Path;

use crate::error::Result;
use crate::jsonl::{read_jsonl, LoadOptions, Loaded};
use crate::task::{Example, GenerationMetric, Task, TaskKind};

pub const NAME: &str = "dolly";

pub fn load(path: &Path, opts: LoadOptions) -> Result<Loaded> {
    let (examples, n_skipped) = read_jsonl(path, opts, |r| {
        let instruction = r.str("instruction")?;
        let context = r.opt_str("context")?.unwrap_or("");
        let prompt = if context.trim().is_empty() {
            instruction.to_string()
        } else {
            format!("{instruction}\n\nContext:\n{context}")
        };
        Ok(Example::generation(
            format!("dolly-{}", r.line),
            prompt,
            r.str("response")?,
            Some(r.str("category")?.to_string()),
        ))
    })?;
    let task = Task::new(
        NAME,
        TaskKind::Generation {
            metric: GenerationMetric::RougeL,
        },
        examples,
    )?;
    Ok(Loaded { task, n_skipped })
}
