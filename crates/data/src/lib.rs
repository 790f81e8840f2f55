//! fluxmoe-data
pub mod csv;
pub mod error;
pub mod jsonl;
pub mod metrics;
pub mod task;
pub mod tasks;

pub use error::{Error, Result};
pub use jsonl::{LoadOptions, Loaded};
pub use task::{Example, GenerationMetric, Task, TaskKind};
pub mod histogram;
pub mod partition;
pub use histogram::GroupHistogram;
pub use partition::{partition, DirichletConfig, PartitionScheme, Partitions};
