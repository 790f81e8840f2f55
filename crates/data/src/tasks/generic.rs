//! `generic`: a user's own JSONL task.
//!
//! Fields per line:
//! - `prompt` (string, required);
//! - `response` (string, required for generation lines; ignored when `choices`
//!   is given, the target then being `choices[answer]`);
//! - `choices` (array of at least 2 strings, optional) with `answer` (0-based
//!   integer index into `choices`, required with `choices`);
//! - `group` (string, optional): the label used by non-IID partitioners;
//! - `id` (string, optional; default `<task name>-<line>`).
//!
//! The first well-formed line fixes the kind: with `choices` the task is
//! multiple choice, otherwise generation scored by [`GenericConfig::metric`].
//! A later line of the other kind is a record error.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use crate::error::Result;
use crate::jsonl::{read_jsonl, LoadOptions, Loaded, Record};
use crate::task::{Example, GenerationMetric, Task, TaskKind};

/// How to name and score a generic task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenericConfig {
    pub name: String,
    /// Metric of a generation task (unused for multiple choice).
    pub metric: GenerationMetric,
}

pub fn load(path: &Path, cfg: &GenericConfig, opts: LoadOptions) -> Result<Loaded> {
    let mut is_choice_task: Option<bool> = None;
    let (examples, n_skipped) = read_jsonl(path, opts, |r| {
        let ex = parse(r, &cfg.name)?;
        let has_choices = ex.choices.is_some();
        match is_choice_task {
            None => is_choice_task = Some(has_choices),
            Some(kind) if kind != has_choices => {
                return Err(r.error(if has_choices {
                    "line has `choices` but the first line of the file has none"
                } else {
                    "line has no `choices` but the first line of the file has"
                }))
            }
            Some(_) => {}
        }
        Ok(ex)
    })?;
    let kind = if is_choice_task == Some(true) {
        TaskKind::MultipleChoice
    } else {
        TaskKind::Generation { metric: cfg.metric }
    };
    let task = Task::new(cfg.name.clone(), kind, examples)?;
    Ok(Loaded { task, n_skipped })
}

fn parse(r: &Record, name: &str) -> Result<Example> {
    let id = match r.opt_str("id")? {
        Some(id) => id.to_string(),
        None => format!("{name}-{}", r.line),
    };
    let prompt = r.str("prompt")?;
    let group = r.opt_str("group")?.map(str::to_string);
    match r.object.get("choices") {
        None | Some(Value::Null) => Ok(Example::generation(id, prompt, r.str("response")?, group)),
        Some(Value::Array(items)) => {
            let mut choices = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) => choices.push(s.clone()),
                    other => {
                        return Err(
                            r.error(format!("field `choices` must hold strings, got {other}"))
                        )
                    }
                }
            }
            let answer = match r.object.get("answer") {
                None | Some(Value::Null) => {
                    return Err(crate::error::Error::missing_field(r.path, r.line, "answer"))
                }
                Some(v) => v.as_u64().ok_or_else(|| {
                    r.error(format!(
                        "field `answer` must be a non-negative integer, got {v}"
                    ))
                })? as usize,
            };
            if choices.len() < 2 || answer >= choices.len() {
                return Err(r.error(format!(
                    "field `answer` = {answer} needs at least 2 choices and must index them, got {} choices",
                    choices.len()
                )));
            }
            Example::multiple_choice(id, prompt, Arc::from(choices), answer, group)
        }
        Some(other) => Err(r.error(format!("field `choices` must be an array, got {other}"))),
    }
}
