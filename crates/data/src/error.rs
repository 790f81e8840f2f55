//! The one error type of `fluxmoe-data`: every variant names the file and line,
//! the field or the parameter it is about, so a user can act on the message alone.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading a file or listing a folder failed at the OS level.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A line is not valid JSON (or not a JSON object).
    #[error("{}:{line}: invalid json: {msg}", path.display())]
    Json {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    /// A record lacks a field its format requires.
    #[error("{}:{line}: missing field `{field}`", path.display())]
    MissingField {
        path: PathBuf,
        line: usize,
        field: String,
    },
    /// A record is present but its content breaks the format
    /// (wrong type, bad answer letter, wrong column count, ...).
    #[error("{}:{line}: {msg}", path.display())]
    Record {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    /// A whole file or folder does not fit the expected format.
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// The WordNet database is not where it was looked for.
    #[error("{}: wordnet data file `{file}` not found (install it with `apt-get install wordnet-base`)", dir.display())]
    WordnetMissing { dir: PathBuf, file: String },
    /// A task would be empty (no examples, or an empty side of a split).
    #[error("task `{name}`: {msg}")]
    Task { name: String, msg: String },
    /// A corpus would be empty, or is too small for what was asked of it.
    #[error("corpus `{name}`: {msg}")]
    Corpus { name: String, msg: String },
    /// A parameter (partitioning, split fraction, metric input, ...) is invalid.
    #[error("`{field}`: {msg}")]
    Param { field: String, msg: String },
    /// The tokenizer failed to encode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn param(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Param {
            field: field.into(),
            msg: msg.into(),
        }
    }

    pub fn task(name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Task {
            name: name.into(),
            msg: msg.into(),
        }
    }

    pub fn record(path: &Path, line: usize, msg: impl Into<String>) -> Self {
        Error::Record {
            path: path.to_path_buf(),
            line,
            msg: msg.into(),
        }
    }

    pub fn missing_field(path: &Path, line: usize, field: impl Into<String>) -> Self {
        Error::MissingField {
            path: path.to_path_buf(),
            line,
            field: field.into(),
        }
    }

    /// True for errors about one record (bad JSON, missing field, bad value):
    /// the ones a loader may skip when asked to with `skip_malformed`.
    pub fn is_record_error(&self) -> bool {
        matches!(
            self,
            Error::Json { .. } | Error::MissingField { .. } | Error::Record { .. }
        )
    }
}
