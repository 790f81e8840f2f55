//! The one error type of `fluxmoe-deploy`: bad configuration, a refused payload, a
//! broken connection or a protocol violation, each naming what it is about.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting or file (tokens, address) is missing or malformed.
    #[error("config: {0}")]
    Config(String),
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A tensor payload was refused.
    #[error("tensor payload: {0}")]
    Codec(#[from] crate::codec::Error),
    /// The other side broke the protocol (unexpected message, unknown task, bad JSON).
    #[error("protocol: {0}")]
    Protocol(String),
    /// The connection could not be made or was lost.
    #[error("connection: {0}")]
    Connection(String),
    /// The coordinator answered a call with an error status (or the call failed on
    /// the way: the status then carries the cause, a TLS failure for instance).
    #[error("coordinator refused {call}: {}", describe(status))]
    Status {
        call: &'static str,
        status: tonic::Status,
    },
    #[error(transparent)]
    Fed(#[from] fluxmoe_fed::Error),
}

/// A status as `Code: message`, then its causes (a failed TLS handshake, a lost
/// connection), without tonic's metadata dump.
pub(crate) fn describe(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(tls) = crate::tls::tls_failure(status) {
        text.push_str(&format!(" (TLS: {tls})"));
    } else if let Some(source) = std::error::Error::source(status) {
        let causes = chain(source);
        let repeated = format!("{}: ", status.message());
        let causes = causes.strip_prefix(&repeated).unwrap_or(&causes);
        text.push_str(&format!(" ({causes})"));
    }
    text
}

/// An error and its sources, `outer: inner: ...`, each said once.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        next = e.source();
    }
    text
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for fluxmoe_fed::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Fed(e) => e,
            other => fluxmoe_fed::Error::State(other.to_string()),
        }
    }
}
