//! Tasks by name: the spelling users write on the command line and in configs.
//!
//! | spec | task |
//! |---|---|
//! | `math` | shared mathematics data (its own train/test files) |
//! | `wordnet-define`, `wordnet-supersense` | WordNet from `wordnet-base` |
//! | `dolly:PATH`, `gsm8k:PATH`, `mmlu:PATH` | a user-brought file (MMLU: a CSV or Hugging Face parquet file, or a folder of them; see [`mmlu`]) |
//! | `piqa:DATA,LABELS` | PIQA jsonl plus its labels file |
//! | `jsonl:PATH` | the generic JSONL task, scored by ROUGE-L |
//! | `jsonl-em:PATH` | the generic JSONL task, scored by exact match |
//!
//! [`TrainTest`] gives the train and test examples: the files' own split where a task
//! has one (`math`), else a seeded 80/20 split.

use std::path::{Path, PathBuf};

use super::generic::GenericConfig;
use super::{dolly, generic, gsm8k, math, mmlu, piqa, wordnet};
use crate::error::{Error, Result};
use crate::jsonl::{LoadOptions, Loaded};
use crate::task::{GenerationMetric, Task};

/// Where the built-in tasks' data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDirs {
    /// The `mathematics` folder (`train.jsonl`, `test.jsonl`).
    pub math: PathBuf,
    /// The WordNet database folder (`data.noun`, ...).
    pub wordnet: PathBuf,
}

/// A task's train and test examples.
#[derive(Debug, Clone)]
pub struct TrainTest {
    pub train: Task,
    pub test: Task,
    /// Malformed records skipped while loading (only with `skip_malformed`).
    pub n_skipped: usize,
}

/// Names of the built-in tasks, for help texts.
pub const BUILT_IN: [&str; 3] = [math::NAME, wordnet::DEFINE_NAME, wordnet::SUPERSENSE_NAME];

/// Load the task `spec` and split it (seeded, 20% test) unless it has its own split.
pub fn load_train_test(
    spec: &str,
    dirs: &DataDirs,
    opts: LoadOptions,
    seed: u64,
) -> Result<TrainTest> {
    if spec == math::NAME {
        let train = math::load(&dirs.math, math::MathSplit::Train, opts)?;
        let test = math::load(&dirs.math, math::MathSplit::Test, opts)?;
        return Ok(TrainTest {
            n_skipped: train.n_skipped + test.n_skipped,
            train: train.task,
            test: test.task,
        });
    }
    let loaded = load_whole(spec, dirs, opts)?;
    let (train, test) = loaded.task.split(seed, 0.2)?;
    Ok(TrainTest {
        train,
        test,
        n_skipped: loaded.n_skipped,
    })
}

/// Load every example of the task `spec`, unsplit (`math`: its training file): a
/// deployed participant's own data, all of it for training.
pub fn load_whole(spec: &str, dirs: &DataDirs, opts: LoadOptions) -> Result<Loaded> {
    if spec == math::NAME {
        return math::load(&dirs.math, math::MathSplit::Train, opts);
    }
    let loaded = match spec.split_once(':') {
        None if spec == wordnet::DEFINE_NAME => wordnet::load_define(&dirs.wordnet, opts)?,
        None if spec == wordnet::SUPERSENSE_NAME => wordnet::load_supersense(&dirs.wordnet, opts)?,
        Some((kind, arg)) => {
            let path = Path::new(arg);
            match kind {
                dolly::NAME => dolly::load(path, opts)?,
                gsm8k::NAME => gsm8k::load(path, opts)?,
                mmlu::NAME => mmlu::load(path, opts)?,
                piqa::NAME => {
                    let (data, labels) = arg.split_once(',').ok_or_else(|| {
                        Error::param("task", "piqa needs `piqa:DATA.jsonl,LABELS.lst`")
                    })?;
                    piqa::load(Path::new(data), Path::new(labels), opts)?
                }
                "jsonl" | "jsonl-em" => {
                    let metric = if kind == "jsonl" {
                        GenerationMetric::RougeL
                    } else {
                        GenerationMetric::ExactMatch
                    };
                    let name = path
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "jsonl".into());
                    generic::load(path, &GenericConfig { name, metric }, opts)?
                }
                other => return Err(unknown(other)),
            }
        }
        None => return Err(unknown(spec)),
    };
    Ok(loaded)
}

fn unknown(spec: &str) -> Error {
    Error::param(
        "task",
        format!(
            "unknown task `{spec}` (built in: {}; files: dolly:PATH, gsm8k:PATH, mmlu:PATH, \
             piqa:DATA,LABELS, jsonl:PATH, jsonl-em:PATH)",
            BUILT_IN.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs() -> DataDirs {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        DataDirs {
            math: root.join("../../../shared/data/mathematics"),
            wordnet: root.join("tests/data/wordnet"),
        }
    }

    #[test]
    fn file_tasks_are_split_80_20_and_unknown_names_are_errors() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let spec = format!("dolly:{}", root.join("dolly.jsonl").display());
        let tt = load_train_test(&spec, &dirs(), LoadOptions::STRICT, 1).unwrap();
        let n = tt.train.examples.len() + tt.test.examples.len();
        assert!(n > 0 && tt.test.examples.len() == (n as f64 * 0.2).round() as usize);
        let err = load_train_test("nope", &dirs(), LoadOptions::STRICT, 1).unwrap_err();
        assert!(err.to_string().contains("unknown task `nope`"), "{err}");
        let err = load_train_test("piqa:x.jsonl", &dirs(), LoadOptions::STRICT, 1).unwrap_err();
        assert!(
            err.to_string().contains("piqa:DATA.jsonl,LABELS.lst"),
            "{err}"
        );
    }

    #[test]
    fn math_uses_its_own_split() {
        let tt = load_train_test("math", &dirs(), LoadOptions::STRICT, 1).unwrap();
        assert_eq!(tt.train.examples.len(), 60_000);
        assert_eq!(tt.test.examples.len(), 6_000);
    }
}
