//! fluxmoe-flux: the FLUX method (arXiv 2508.19078) and its baselines, as strategies of
//! the `fluxmoe-fed` runtime. `../shared/docs/METHOD.md` is the specification; every
//! choice it marks [ours] is an option here with the default it states.

pub mod budget;
pub mod customise;
pub mod error;
pub mod evidence;
pub mod local;
pub mod merge;
pub mod profile;
pub mod roles;
pub mod strategy;

pub use error::{Error, Result};
