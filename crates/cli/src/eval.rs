//! `fluxmoe eval`: a model's metric on a task's test split, with a 95% interval.

use std::path::PathBuf;

use anyhow::{Context, Result};
use fluxmoe_data::metrics::LengthNorm;
use fluxmoe_data::tasks::registry::{load_train_test, DataDirs};
use fluxmoe_data::{evaluate_parallel, EvalConfig, LoadOptions, PromptConventions, PromptFormat};
use fluxmoe_model::{LoadedModel, MoeModel};
use fluxmoe_sim::scorer::ModelScorer;

pub struct EvalArgs {
    pub task: String,
    pub limit: Option<usize>,
    pub seed: u64,
    pub max_new_tokens: usize,
    pub length_norm: LengthNorm,
    pub dirs: DataDirs,
    /// Examples scored at once (threads).
    pub workers: usize,
}

/// The data folders: `--math-dir`/`FLUXMOE_MATH_DIR`, else `../shared/data/mathematics`
/// (the layout of a fluxmoe checkout); WordNet in Debian's place.
pub fn data_dirs(math_dir: Option<PathBuf>) -> DataDirs {
    let math = math_dir
        .or_else(|| std::env::var_os("FLUXMOE_MATH_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("../shared/data/mathematics"));
    DataDirs {
        math,
        wordnet: PathBuf::from(fluxmoe_data::tasks::wordnet::DEFAULT_DIR),
    }
}

pub fn run(lm: &LoadedModel, args: &EvalArgs) -> Result<()> {
    let tokenizer = lm
        .tokenizer
        .as_ref()
        .context("this model has no tokenizer (a folder needs tokenizer.json)")?;
    let data = load_train_test(&args.task, &args.dirs, LoadOptions::STRICT, args.seed)
        .with_context(|| format!("loading task `{}`", args.task))?;
    let conventions = PromptConventions::new(lm.chat_template.as_deref(), &lm.eos_ids, tokenizer);
    let model = MoeModel::new(&lm.checkpoint.config, &lm.checkpoint.params)?;
    let cfg = EvalConfig {
        format: conventions.format,
        max_len: 512,
        max_new_tokens: args.max_new_tokens,
        limit: args.limit,
        seed: args.seed,
        length_norm: args.length_norm,
        pad_id: conventions.pad_id,
    };
    let mut scorers: Vec<ModelScorer> = (0..args.workers.max(1))
        .map(|_| ModelScorer::new(&model, conventions.stop_ids.clone()))
        .collect();
    let report = evaluate_parallel(&data.test, tokenizer, &mut scorers, &cfg)?;
    println!(
        "task     {} ({} test examples{})",
        args.task,
        data.test.examples.len(),
        match args.limit {
            Some(n) => format!(", {n} scored"),
            None => String::new(),
        }
    );
    println!(
        "format   {}",
        match conventions.format {
            PromptFormat::ChatMl => "ChatML",
            PromptFormat::Plain => "plain",
        }
    );
    println!("{:<8} {}", report.metric, report.score);
    Ok(())
}
