//! The one error type of `fluxmoe-fed`. Every variant names the config field,
//! participant, tensor or file it is about, so a user can act on the message alone.
//!
//! A participant that drops out, misses the deadline or sends an invalid update is
//! *not* an error: it becomes a [`crate::Failure`] and the round goes on.

use std::path::PathBuf;

use crate::ids::ParticipantId;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A config value is missing, out of range or inconsistent with another one.
    #[error("config field `{field}`: {msg}")]
    Config { field: String, msg: String },
    /// A tensor is missing, or has the wrong shape or dtype for what it is used as.
    #[error("tensor `{name}`: {msg}")]
    Tensor { name: String, msg: String },
    /// A message addresses a participant the transport does not know.
    #[error("unknown participant {0}")]
    UnknownParticipant(ParticipantId),
    /// A strategy addressed the same participant twice in one round.
    #[error("participant {0} was sent more than one instruction in a round")]
    DuplicateParticipant(ParticipantId),
    /// A participant's own code failed; the transport turns this into a `Failure`.
    #[error("participant {participant}: {msg}")]
    Participant {
        participant: ParticipantId,
        msg: String,
    },
    /// Saved state does not fit the object it is loaded into.
    #[error("state: {0}")]
    State(String),
    /// Reading or writing a file failed at the OS level.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A JSON document (config, state, record) could not be read or written.
    #[error("{context}: {source}")]
    Json {
        context: String,
        source: serde_json::Error,
    },
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
    pub fn tensor(name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Tensor {
            name: name.into(),
            msg: msg.into(),
        }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn json(context: impl Into<String>, source: serde_json::Error) -> Self {
        Error::Json {
            context: context.into(),
            source,
        }
    }
}
