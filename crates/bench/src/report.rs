//! The outputs of a suite (issue #6): `results.csv` and `results.json` (one row per
//! run / the whole [`SuiteResults`](crate::results::SuiteResults)), `tables.md`, SVG
//! and PNG plots, and one self-contained `report.html`.

pub mod csv;
pub mod tables;

pub use tables::{method_key, Table};
