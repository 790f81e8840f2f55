//! The one error type of `fluxmoe-flux`; every variant names what it is about.

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A method option is out of range or inconsistent with another one.
    #[error("method option `{field}`: {msg}")]
    Config { field: String, msg: String },
    /// A participant's memory cannot hold what the method needs.
    #[error("budget: {0}")]
    Budget(String),
    /// Inputs (profiles, utilities, weights) do not fit together.
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Model(#[from] fluxmoe_model::Error),
    #[error(transparent)]
    Fed(#[from] fluxmoe_fed::Error),
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
}
