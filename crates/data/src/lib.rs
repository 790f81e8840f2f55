//! fluxmoe-data
pub mod csv;
pub mod error;
pub mod jsonl;
pub mod metrics;
pub mod task;
pub mod tasks;
