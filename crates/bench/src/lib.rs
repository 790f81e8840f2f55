//! fluxmoe-bench: time-to-accuracy benchmark suites. A suite file (TOML, versioned in
//! `suites/`) names a base run config, methods, tasks with their targets and seeds;
//! [`runner`] runs the matrix (resumable), [`results`] reads each run back, and
//! [`report`] writes `results.csv`/`results.json`, markdown tables, plots and a
//! self-contained `report.html`.

pub mod error;
pub mod report;
pub mod results;
pub mod runner;
pub mod suite;

pub use error::{Error, Result};
pub use report::{write_report, ReportFiles};
