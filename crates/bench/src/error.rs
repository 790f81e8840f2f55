//! Errors of the benchmark layer; each names the suite key, run or file.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("suite {0}")]
    Suite(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sim(#[from] fluxmoe_sim::Error),
    #[error("{0}")]
    Report(String),
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}
