//! `mmlu`: Hendrycks et al.'s MMLU, from the original per-subject CSV release
//! (`data/{dev,val,test}/<subject>_<split>.csv`) or from the Hugging Face
//! parquet files (dataset `cais/mmlu`: `all/test-00000-of-00001.parquet`,
//! `<subject>/test-*.parquet`).
//!
//! **CSV**: no header; each record is `question,A,B,C,D,answer` with `answer` one
//! of `A`..`D` (RFC 4180 quoting, see [`crate::csv`]).
//! The subject is the file name minus `_test.csv` / `_val.csv` / `_dev.csv`
//! (e.g. `high_school_physics`); id = `<subject>-<line>`, the record's first line.
//! A CSV syntax error (such as an unterminated quote) fails the whole file even
//! with `skip_malformed`, since the records after it cannot be trusted.
//!
//! **Parquet**: columns `question: string`, `subject: string`,
//! `choices: list<string>` and `answer: int` (0-based index into `choices`);
//! other columns are ignored. id = `<subject>-<n>` with `n` the 1-based count of
//! that subject's rows read so far (in file order, then row order), so a subject
//! file gives the same ids as its CSV twin (when no CSV record spans lines), and
//! `all/` gives the same ids as the subject folders.
//! Errors name the file and, for one row, its 1-based row number (where a CSV
//! error has its line) and the column. A missing or mistyped column, or a file
//! that is not readable parquet (truncated, corrupt, compressed with a codec
//! other than snappy), fails the whole file even with `skip_malformed`.
//!
//! Both: prompt = `question`, choices = the options, answer = the index,
//! group = subject.
//!
//! `mmlu:PATH` takes
//! - a `.parquet` file (any name, any split), or any other file as CSV;
//! - a folder holding `<subject>_test.csv` files (read sorted by name) or
//!   `test*.parquet` files (HF's `test-00000-of-00001.parquet` shards, read sorted
//!   by name); a folder holding both kinds is an error, since either may be a
//!   stale copy of the other;
//! - a folder with neither, whose subfolders hold `test*.parquet` files (the HF
//!   dataset's root, or a folder of subject folders): if it has `all/` with
//!   `test*.parquet` files only those are read (`all/` repeats every subject);
//!   otherwise those of every subfolder, sorted by path. Only one level is searched.

use std::collections::HashMap;
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

/// Loads one file (parquet or CSV) or a folder of them; see the module doc for
/// which files of a folder are read.
pub fn load(path: &Path, opts: LoadOptions) -> Result<Loaded> {
    let (files, kind) = if path.is_dir() {
        files_of_folder(path)?
    } else if is_parquet(path) {
        (vec![path.to_path_buf()], Kind::Parquet)
    } else {
        (vec![path.to_path_buf()], Kind::Csv)
    };
    let mut examples = Vec::new();
    let mut n_skipped = 0;
    let mut rows_per_subject = HashMap::new();
    for file in &files {
        n_skipped += match kind {
            Kind::Csv => load_subject(file, opts, &mut examples)?,
            Kind::Parquet => {
                hf_parquet::load_file(file, opts, &mut rows_per_subject, &mut examples)?
            }
        };
    }
    let task = Task::new(NAME, TaskKind::MultipleChoice, examples)?;
    Ok(Loaded { task, n_skipped })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Csv,
    Parquet,
}

fn is_parquet(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

/// The entries of a folder, sorted by path.
fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|entry| entry.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
        .collect::<Result<Vec<_>>>()?;
    entries.sort();
    Ok(entries)
}

fn file_name(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

/// The `test*.parquet` files directly in `dir`, sorted.
fn test_parquets(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(list(dir)?
        .into_iter()
        .filter(|p| p.is_file() && is_parquet(p) && file_name(p).starts_with("test"))
        .collect())
}

fn files_of_folder(dir: &Path) -> Result<(Vec<PathBuf>, Kind)> {
    let entries = list(dir)?;
    let csvs: Vec<PathBuf> = entries
        .iter()
        .filter(|p| p.is_file() && file_name(p).ends_with("_test.csv"))
        .cloned()
        .collect();
    let parquets = test_parquets(dir)?;
    match (csvs.is_empty(), parquets.is_empty()) {
        (false, false) => {
            return Err(Error::Format {
                path: dir.to_path_buf(),
                msg: format!(
                    "holds both `<subject>_test.csv` files ({}) and `test*.parquet` files ({}); \
                     point `mmlu:` at a folder (or a file) of one kind",
                    csvs.len(),
                    parquets.len()
                ),
            })
        }
        (false, true) => return Ok((csvs, Kind::Csv)),
        (true, false) => return Ok((parquets, Kind::Parquet)),
        (true, true) => {}
    }
    let subdirs: Vec<&PathBuf> = entries.iter().filter(|p| p.is_dir()).collect();
    if let Some(all) = subdirs.iter().find(|p| file_name(p) == "all") {
        let files = test_parquets(all)?;
        if !files.is_empty() {
            return Ok((files, Kind::Parquet));
        }
    }
    let mut files = Vec::new();
    for sub in subdirs {
        files.extend(test_parquets(sub)?);
    }
    if files.is_empty() {
        return Err(Error::Format {
            path: dir.to_path_buf(),
            msg: "no `<subject>_test.csv` or `test*.parquet` files in this folder \
                  (nor `test*.parquet` files in its subfolders)"
                .into(),
        });
    }
    Ok((files, Kind::Parquet))
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
        let parsed = parse_record(path, &subject, record.line, &record.fields);
        opts.keep(parsed, out, &mut n_skipped)?;
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

mod hf_parquet;

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
