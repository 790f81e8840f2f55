//! Running a suite's matrix: each run in its own folder, one after another; with
//! `resume`, finished runs (a `summary.json`) are read back instead of rerun and
//! interrupted ones continue from their checkpoint.

use std::path::{Path, PathBuf};

use crate::error::{io, Result};
use crate::results::{read_run, RunResult, SuiteResults};
use crate::suite::{RunSpec, Suite};

/// Progress callback: (index, total, spec), and the result once the run is done.
pub type OnRun<'a> = dyn FnMut(usize, usize, &RunSpec, Option<&RunResult>) + 'a;

/// What to run.
pub struct RunOptions<'a> {
    pub out: &'a Path,
    pub methods: Option<&'a [String]>,
    pub tasks: Option<&'a [String]>,
    /// Replace the suite's seeds with `0..n`.
    pub seeds: Option<usize>,
    pub resume: bool,
    /// Keep each finished run's `checkpoint/` and `final/` model (by default they are
    /// removed once the run's metrics are written: at SmolLM2 size they are 1.5 GB
    /// each, and a suite has dozens of runs).
    pub keep_models: bool,
    /// Turns `model.path` (e.g. `builtin:…`) into a folder or file.
    pub resolve_model: &'a dyn Fn(&str) -> Result<PathBuf>,
    /// Called before each run with (index, total, spec) and after it with its result.
    pub on_run: &'a mut OnRun<'a>,
}

/// Run the suite (or its filtered part) and gather the results.
pub fn run_suite(suite: &Suite, suite_file: &str, opts: RunOptions<'_>) -> Result<SuiteResults> {
    let mut suite = suite.clone();
    if let Some(n) = opts.seeds {
        suite.seeds = (0..n as u64).collect();
    }
    std::fs::create_dir_all(opts.out).map_err(|e| io(opts.out, e))?;
    let specs = suite.runs_filtered(opts.out, opts.methods, opts.tasks)?;
    let total = specs.len();
    let mut runs = Vec::with_capacity(total);
    for (i, spec) in specs.iter().enumerate() {
        (opts.on_run)(i, total, spec, None);
        let dir = opts.out.join(&spec.dir);
        let finished = dir.join(fluxmoe_sim::run::SUMMARY_FILE).exists();
        if !(opts.resume && finished) {
            let interrupted = dir
                .join(fluxmoe_sim::run::CHECKPOINT_DIR)
                .join("state.json")
                .exists();
            let model = (opts.resolve_model)(&spec.config.model.path)?;
            fluxmoe_sim::run(
                &spec.config,
                &model,
                opts.resume && interrupted,
                &mut |_| {},
            )?;
        }
        if !opts.keep_models {
            for sub in [
                fluxmoe_sim::run::CHECKPOINT_DIR,
                fluxmoe_sim::run::FINAL_DIR,
            ] {
                let path = dir.join(sub);
                if path.exists() {
                    std::fs::remove_dir_all(&path).map_err(|e| io(&path, e))?;
                }
            }
        }
        let result = read_run(
            &dir,
            &spec.method,
            &spec.variant,
            &spec.task.name,
            spec.seed,
            spec.task.target,
        )?;
        (opts.on_run)(i, total, spec, Some(&result));
        runs.push(result);
    }
    Ok(SuiteResults {
        suite: suite.name.clone(),
        description: suite.description.clone(),
        commit: fluxmoe_sim::run::build_commit(),
        suite_file: suite_file.to_string(),
        runs,
    })
}
