//! Built-in tasks and loaders for user-brought standard files, one per file.
//!
//! Every loader takes a path and [`LoadOptions`](crate::jsonl::LoadOptions) and
//! returns a [`Loaded`](crate::jsonl::Loaded) (the task plus the number of skipped
//! malformed records).
//!
//! | task | file | kind | group |
//! |---|---|---|---|
//! | [`math`] | `mathematics/{train,test}.jsonl` | exact match | module |
//! | [`wordnet`] `wordnet-define` | `/usr/share/wordnet/data.*` | ROUGE-L | supersense |
//! | [`wordnet`] `wordnet-supersense` | same | multiple choice (45) | supersense |
//! | [`dolly`] | `databricks-dolly-15k.jsonl` | ROUGE-L | category |
//! | [`gsm8k`] | GSM8K `*.jsonl` | exact match | none |
//! | [`mmlu`] | `<subject>_test.csv`, or HF `test-*.parquet` | multiple choice (4) | subject |
//! | [`piqa`] | `*.jsonl` + labels `*.lst` | multiple choice (2) | none |
//! | [`generic`] | `prompt`/`response` JSONL | either | optional `group` |

pub mod dolly;
pub mod generic;
pub mod gsm8k;
pub mod math;
pub mod mmlu;
pub mod piqa;
pub mod registry;
pub mod wordnet;
