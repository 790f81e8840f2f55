//! Errors of the simulation: each names the config key, file or participant.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config {0}")]
    Config(String),
    #[error(transparent)]
    Model(#[from] fluxmoe_model::Error),
    #[error(transparent)]
    Data(#[from] fluxmoe_data::Error),
    #[error(transparent)]
    Fed(#[from] fluxmoe_fed::Error),
    #[error(transparent)]
    Method(#[from] fluxmoe_flux::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The run was asked to stop (SIGTERM): it finished its round and saved a
    /// checkpoint, from which `resume` continues it.
    #[error(
        "stopped on request after round {round}; the checkpoint in {} continues it (resume)",
        dir.display()
    )]
    Interrupted { round: u32, dir: std::path::PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;
