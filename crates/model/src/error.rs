//! The one error type of `fluxmoe-model`: every variant names the file, config
//! field or tensor it is about, so a user can act on the message alone.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed at the OS level.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file exists but its bytes are not what its format requires
    /// (truncated, corrupt header, unsupported tensor type, ...).
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// A config value is missing, unsupported or nonsensical.
    #[error("config field `{field}`: {msg}")]
    Config { field: String, msg: String },
    /// The checkpoint lacks a tensor the architecture needs.
    #[error("missing tensor `{name}` in {}", path.display())]
    MissingTensor { path: PathBuf, name: String },
    /// A tensor has the wrong shape.
    #[error("tensor `{name}`: expected shape {expected:?}, got {got:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// The tokenizer could not be built or failed to encode/decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Invalid input to an API call (ids out of range, ragged batches, ...).
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            msg: msg.into(),
        }
    }
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
