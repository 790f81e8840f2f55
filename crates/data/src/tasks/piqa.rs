//! `piqa`: physical commonsense two-way choice.
//!
//! Data file: JSONL with `{"goal","sol1","sol2"}` per line (`id` optional).
//! Labels file (`*-labels.lst`): one `0` or `1` per line, line `i` labelling
//! data line `i` (blank lines are not allowed in either, so the two stay
//! aligned).
//! prompt = `goal`, choices = `[sol1, sol2]`, answer = the label; no group.
//! A count mismatch between the two files is an error; a bad label is a record
//! error of the labels file.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::jsonl::{read_jsonl, LoadOptions, Loaded};
use crate::task::{Example, Task, TaskKind};

pub const NAME: &str = "piqa";

pub fn load(data: &Path, labels: &Path, opts: LoadOptions) -> Result<Loaded> {
    let label_text = std::fs::read_to_string(labels).map_err(|e| Error::io(labels, e))?;
    let mut answers = Vec::new();
    for (idx, line) in label_text.lines().enumerate() {
        match line.trim() {
            "0" => answers.push(0),
            "1" => answers.push(1),
            other => {
                return Err(Error::record(
                    labels,
                    idx + 1,
                    format!("label must be 0 or 1, got `{other}`"),
                ))
            }
        }
    }
    let data_text = std::fs::read_to_string(data).map_err(|e| Error::io(data, e))?;
    let n_data = data_text.lines().count();
    if n_data != answers.len() {
        return Err(Error::Format {
            path: labels.to_path_buf(),
            msg: format!(
                "{} labels for {n_data} lines of {}",
                answers.len(),
                data.display()
            ),
        });
    }
    let (examples, n_skipped) = read_jsonl(data, opts, |r| {
        let choices: Arc<[String]> =
            vec![r.str("sol1")?.to_string(), r.str("sol2")?.to_string()].into();
        let id = match r.opt_str("id")? {
            Some(id) => id.to_string(),
            None => format!("piqa-{}", r.line),
        };
        let Some(&answer) = answers.get(r.line - 1) else {
            return Err(r.error("no label for this line"));
        };
        Example::multiple_choice(id, r.str("goal")?, choices, answer, None)
    })?;
    let task = Task::new(NAME, TaskKind::MultipleChoice, examples)?;
    Ok(Loaded { task, n_skipped })
}
