//! fluxmoe-data: what federated participants train and are scored on.
//!
//! How the pieces compose:
//! - A [`Task`] is a named, non-empty list of [`Example`]s (prompt, target,
//!   optional choices/answer, optional group label) plus a [`TaskKind`] saying how
//!   it is scored. [`Task::split`] gives a seeded train/test split.
//! - [`tasks`] builds tasks: the shared `mathematics` set, two WordNet tasks from
//!   the `wordnet-base` database, and loaders for user-brought Dolly, GSM8K,
//!   MMLU (CSV or Hugging Face parquet), PIQA and generic JSONL files. Loaders share [`LoadOptions`]
//!   (strict, or skip-and-count malformed records) and return [`Loaded`].
//! - [`partition()`] splits a task's examples among participants by
//!   [`PartitionScheme`] (IID, Dirichlet over groups, pathological, natural), with
//!   Flower Datasets' semantics; [`GroupHistogram`] tabulates the result.
//! - [`Template`] renders an example into prompt and target text, plain or
//!   ChatML ([`PromptFormat`]); [`batch`] tokenises rendered examples with a
//!   `tokenizers::Tokenizer` into padded `[B, T]` `u32` candle tensors with an
//!   attention mask and a loss mask over target tokens.
//! - [`corpora`] loads plain-text domain corpora (State of the Union, Moby-Dick,
//!   the King James Bible, fortunes, WordNet glosses, mathematics) as
//!   [`Corpus`] document lists, splits off every tenth document as held-out text
//!   and cuts text into fixed-length token windows for language-model loss.
//! - [`metrics`] scores outputs: ROUGE-L F1, normalised exact match,
//!   multiple-choice accuracy from per-choice log-likelihoods, and a mean with a
//!   95% interval.
//!
//! This crate knows nothing of models or federation: it takes a tokenizer and
//! log-likelihoods in, and gives text, indices, tensors and numbers out.

pub mod batch;
pub mod corpora;
pub mod csv;
pub mod error;
pub mod evaluate;
pub mod histogram;
pub mod jsonl;
pub mod metrics;
pub mod partition;
pub mod prompt;
pub mod task;
pub mod tasks;

pub use batch::{collate, encode, make_batch, Batch, BatchConfig, Encoded};
pub use corpora::{Corpus, CorpusKind, CorpusSources, CorpusSplit, Domain, LoadedCorpus};
pub use error::{Error, Result};
pub use evaluate::{evaluate, evaluate_parallel, EvalConfig, EvalReport, ExampleOutput, Scorer};
pub use histogram::GroupHistogram;
pub use jsonl::{LoadOptions, Loaded};
pub use partition::{partition, DirichletConfig, PartitionScheme, Partitions};
pub use prompt::{ChoiceDisplay, PromptConventions, PromptFormat, Rendered, Template};
pub use task::{Example, GenerationMetric, Task, TaskKind};
