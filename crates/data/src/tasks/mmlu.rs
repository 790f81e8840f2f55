//! `mmlu`: Hendrycks et al.'s MMLU, the per-subject CSV release
//! (`data/{dev,val,test}/<subject>_<split>.csv`).
//!
//! No header; each record is `question,A,B,C,D,answer` with `answer` one of
//! `A`..`D` (RFC 4180 quoting, see [`crate::csv`]).
//! The subject is the file name minus `_test.csv` / `_val.csv` / `_dev.csv`
//! (e.g. `high_school_physics`).
//! prompt = `question`, choices = the four options, answer = the letter's index,
//! group = subject, id = `<subject>-<line>`.
//! A CSV syntax error (such as an unterminated quote) fails the whole file even
//! with `skip_malformed`, since the records after it cannot be trusted.
//! Parquet files are not read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::csv::parse_csv;
use crate::error::{Error, Result};
use crate::jsonl::{LoadOptions, Loaded};
use crate::task::{Example, Task, TaskKind};

pub const NAME: &str = "mmlu";

/// The subject named by an MMLU file name (`<subject>_test.csv` and friends).
pub fn subject_of(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".csv")?;
    ["_test", "_val", "_dev"]
        .iter()
        .find_map(|suffix| stem.strip_suffix(suffix))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Loads one subject file, or every `*_test.csv` of a folder (sorted by name).
pub fn load(path: &Path, opts: LoadOptions) -> Result<Loaded> {
    let files = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with("_test.csv"))
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::Format {
                path: path.to_path_buf(),
                msg: "no `<subject>_test.csv` files in this folder".into(),
            });
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut examples = Vec::new();
    let mut n_skipped = 0;
    for file in &files {
        n_skipped += load_subject(file, opts, &mut examples)?;
    }
    let task = Task::new(NAME, TaskKind::MultipleChoice, examples)?;
    Ok(Loaded { task, n_skipped })
}

fn load_subject(path: &Path, opts: LoadOptions, out: &mut Vec<Example>) -> Result<usize> {
    let Some(subject) = subject_of(path) else {
        return Err(Error::Format {
            path: path.to_path_buf(),
            msg: "file name must be `<subject>_test.csv` (or `_val`/`_dev`)".into(),
        });
    };
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut n_skipped = 0;
    for record in parse_csv(path, &text)? {
        match parse_record(path, &subject, record.line, &record.fields) {
            Ok(ex) => out.push(ex),
            Err(e) if opts.skip_malformed && e.is_record_error() => {
                tracing::warn!("skipping malformed record: {e}");
                n_skipped += 1;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(n_skipped)
}

fn parse_record(path: &Path, subject: &str, line: usize, fields: &[String]) -> Result<Example> {
    let [question, a, b, c, d, letter] = fields else {
        return Err(Error::record(
            path,
            line,
            format!(
                "expected 6 columns (question,A,B,C,D,answer), got {}",
                fields.len()
            ),
        ));
    };
    let answer = match letter.trim() {
        "A" => 0,
        "B" => 1,
        "C" => 2,
        "D" => 3,
        other => {
            return Err(Error::record(
                path,
                line,
                format!("answer must be one of A, B, C, D, got `{other}`"),
            ))
        }
    };
    let choices: Arc<[String]> = vec![a.clone(), b.clone(), c.clone(), d.clone()].into();
    Example::multiple_choice(
        format!("{subject}-{line}"),
        question.clone(),
        choices,
        answer,
        Some(subject.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_from_file_name() {
        assert_eq!(
            subject_of(Path::new("/x/high_school_physics_test.csv")).as_deref(),
            Some("high_school_physics")
        );
        assert_eq!(
            subject_of(Path::new("anatomy_dev.csv")).as_deref(),
            Some("anatomy")
        );
        assert_eq!(subject_of(Path::new("anatomy.csv")), None);
        assert_eq!(subject_of(Path::new("_test.csv")), None);
    }
}
