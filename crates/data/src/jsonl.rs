//! Line-numbered JSONL reading shared by the loaders.
//!
//! Format: UTF-8, one JSON object per line; blank lines are ignored.
//! Lines are numbered from 1.
//! A line that is not a JSON object, lacks a required field or holds a bad value
//! is a record error naming `file:line` (and the field).
//! With [`LoadOptions::skip_malformed`] such lines are skipped, logged with
//! `tracing::warn!` and counted in [`Loaded::n_skipped`]; without it the first
//! one is returned as the error.
//! I/O errors are never skipped.

use std::io::BufRead;
use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::task::{Example, Task};

/// Options shared by every file loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Skip (and count) malformed records instead of failing on the first one.
    pub skip_malformed: bool,
}

impl LoadOptions {
    /// Fail on the first malformed record.
    pub const STRICT: LoadOptions = LoadOptions {
        skip_malformed: false,
    };
    /// Skip and count malformed records.
    pub const LENIENT: LoadOptions = LoadOptions {
        skip_malformed: true,
    };

    /// What every loader does with one parsed record: keep it (push it onto `out`),
    /// or, when it is malformed (a record error) and these options skip malformed
    /// records, log it and count it in `n_skipped`; any other error is returned.
    pub fn keep<T>(self, parsed: Result<T>, out: &mut Vec<T>, n_skipped: &mut usize) -> Result<()> {
        match parsed {
            Ok(record) => {
                out.push(record);
                Ok(())
            }
            Err(e) => self.skip(e, n_skipped),
        }
    }

    /// A malformed record: skipped (logged, counted in `n_skipped`) when these
    /// options allow it and `err` is a record error, else returned.
    pub fn skip(self, err: Error, n_skipped: &mut usize) -> Result<()> {
        if self.skip_malformed && err.is_record_error() {
            tracing::warn!("skipping malformed record: {err}");
            *n_skipped += 1;
            Ok(())
        } else {
            Err(err)
        }
    }
}

/// A loaded task plus how many malformed records were skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub task: Task,
    pub n_skipped: usize,
}

/// One JSON object of a JSONL file with its position, for field access with
/// errors that name file, line and field.
pub struct Record<'a> {
    pub path: &'a Path,
    pub line: usize,
    pub object: &'a Map<String, Value>,
}

impl Record<'_> {
    /// A required string field.
    pub fn str(&self, field: &str) -> Result<&str> {
        match self.object.get(field) {
            None | Some(Value::Null) => Err(Error::missing_field(self.path, self.line, field)),
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(Error::record(
                self.path,
                self.line,
                format!("field `{field}` must be a string, got {other}"),
            )),
        }
    }

    /// An optional string field (absent or null gives `None`).
    pub fn opt_str(&self, field: &str) -> Result<Option<&str>> {
        match self.object.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.str(field).map(Some),
        }
    }

    pub fn error(&self, msg: impl Into<String>) -> Error {
        Error::record(self.path, self.line, msg)
    }
}

/// Reads `path` line by line and turns each JSON object into an [`Example`] with
/// `parse`, following the skip rules in the module docs.
/// Returns the examples and the number of skipped lines.
pub fn read_jsonl(
    path: &Path,
    opts: LoadOptions,
    mut parse: impl FnMut(&Record) -> Result<Example>,
) -> Result<(Vec<Example>, usize)> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut examples = Vec::new();
    let mut n_skipped = 0;
    for (idx, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line_no = idx + 1;
        let text = line.map_err(|e| Error::io(path, e))?;
        if text.trim().is_empty() {
            continue;
        }
        let res = match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(object)) => parse(&Record {
                path,
                line: line_no,
                object: &object,
            }),
            Ok(other) => Err(Error::Json {
                path: path.to_path_buf(),
                line: line_no,
                msg: format!("expected an object, got {}", json_kind(&other)),
            }),
            Err(e) => Err(Error::Json {
                path: path.to_path_buf(),
                line: line_no,
                msg: e.to_string(),
            }),
        };
        opts.keep(res, &mut examples, &mut n_skipped)?;
    }
    if n_skipped > 0 {
        tracing::warn!("{}: skipped {n_skipped} malformed records", path.display());
    }
    Ok((examples, n_skipped))
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn parse(r: &Record) -> Result<Example> {
        Ok(Example::generation(
            r.line.to_string(),
            r.str("q")?,
            r.str("a")?,
            None,
        ))
    }

    #[test]
    fn strict_reports_file_and_line() {
        let f = write("{\"q\":\"1\",\"a\":\"2\"}\n\n{\"q\":\"3\"\n");
        let err = read_jsonl(f.path(), LoadOptions::STRICT, parse).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("{}:3: invalid json", f.path().display())),
            "{msg}"
        );
    }

    #[test]
    fn missing_field_names_field_and_line() {
        let f = write("{\"q\":\"1\"}\n");
        let err = read_jsonl(f.path(), LoadOptions::STRICT, parse).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}:1: missing field `a`", f.path().display())
        );
        let f = write("{\"q\":\"1\",\"a\":5}\n");
        let err = read_jsonl(f.path(), LoadOptions::STRICT, parse).unwrap_err();
        assert!(err
            .to_string()
            .ends_with("field `a` must be a string, got 5"));
    }

    #[test]
    fn lenient_skips_and_counts() {
        let f = write(
            "{\"q\":\"1\",\"a\":\"2\"}\nnot json\n[1]\n{\"q\":\"x\"}\n{\"q\":\"3\",\"a\":\"4\"}\n",
        );
        let (examples, n_skipped) = read_jsonl(f.path(), LoadOptions::LENIENT, parse).unwrap();
        assert_eq!(n_skipped, 3);
        let ids: Vec<&str> = examples.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["1", "5"]);
    }

    #[test]
    fn missing_file_is_io_error_even_when_lenient() {
        let err = read_jsonl(
            Path::new("/nonexistent/x.jsonl"),
            LoadOptions::LENIENT,
            parse,
        )
        .unwrap_err();
        assert!(matches!(err, Error::Io { .. }));
    }
}
