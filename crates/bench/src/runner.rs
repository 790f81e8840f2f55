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
    /// Write each FMD run from the finished fedavg-full run of the same task, seed and
    /// settings (`fluxmoe_sim::derive`: FMD trains exactly what fedavg-full trains and
    /// only adds PCIe time) instead of training it again.
    pub derive_fmd: bool,
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
    let all = suite.runs(opts.out)?;
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
            let source = (opts.derive_fmd && !interrupted)
                .then(|| offloading_source(&all, opts.out, spec))
                .flatten();
            if let Some(source) = source {
                fluxmoe_sim::derive::derive_offloading(&source, &spec.config, &model)?;
            } else {
                if !interrupted {
                    share_initial_metric(opts.out, spec, &dir, &model)?;
                }
                fluxmoe_sim::run(
                    &spec.config,
                    &model,
                    opts.resume && interrupted,
                    &mut |_| {},
                )?;
            }
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

/// The folder of a finished fedavg-full run that FMD run `spec` can be derived from:
/// same task and seed, settings equal but for the method
/// (`fluxmoe_sim::derive::check_derivable`).
fn offloading_source(all: &[RunSpec], out: &Path, spec: &RunSpec) -> Option<PathBuf> {
    use fluxmoe_sim::derive::{check_derivable, DERIVED, SOURCE};
    if spec.method != DERIVED {
        return None;
    }
    all.iter()
        .filter(|s| s.method == SOURCE && s.task.name == spec.task.name && s.seed == spec.seed)
        .filter(|s| check_derivable(&s.config, &spec.config).is_ok())
        .map(|s| out.join(&s.dir))
        .find(|dir| dir.join(fluxmoe_sim::run::SUMMARY_FILE).exists())
}

/// Offer `dir` the metric before any round that another run of the same task and seed
/// measured, if its key (model, task, partition, seed, build: what the metric depends
/// on) is this run's: the run then skips that evaluation. Saves one per method.
fn share_initial_metric(out: &Path, spec: &RunSpec, dir: &Path, model: &Path) -> Result<()> {
    let key = fluxmoe_sim::run::initial_key(&spec.config, model);
    let matches = |path: &Path| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v.get("key").and_then(|k| k.as_str()) == Some(key.as_str()))
    };
    let to = dir.join(fluxmoe_sim::run::INITIAL_FILE);
    let Some(task_dir) = out
        .join(&spec.dir)
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
    else {
        return Ok(());
    };
    let Ok(entries) = std::fs::read_dir(&task_dir) else {
        return Ok(());
    };
    let mut siblings: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| {
            e.path()
                .join(format!("seed{}", spec.seed))
                .join(fluxmoe_sim::run::INITIAL_FILE)
        })
        .filter(|p| *p != to)
        .collect();
    siblings.sort();
    if let Some(from) = siblings.iter().find(|p| matches(p)) {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        std::fs::copy(from, &to).map_err(|e| io(&to, e))?;
        // The sibling's answers go with its metric; the run keeps only those of the
        // initial model (`sim::run`, when it reuses the metric).
        let answers = from.with_file_name(fluxmoe_sim::run::PREDICTIONS_FILE);
        if answers.exists() {
            let path = dir.join(fluxmoe_sim::run::PREDICTIONS_FILE);
            std::fs::copy(&answers, &path).map_err(|e| io(&path, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUITE: &str = r#"
name = "t"
methods = ["fedavg-full", "flux"]
seeds = [0, 1]
[[tasks]]
name = "math"
[base]
[base.model]
path = "m"
[base.partition]
participants = 4
[base.rounds]
rounds = 1
per_round = 2
"#;

    fn plant(path: &Path, key: &str, metric: f64) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let text = serde_json::json!({ "initial_metric": metric, "key": key });
        std::fs::write(path, text.to_string()).unwrap();
    }

    #[test]
    fn a_run_is_offered_the_initial_metric_of_a_sibling_with_its_key_only() {
        let out = tempfile::tempdir().unwrap();
        let model = out.path().join("model");
        let suite = Suite::parse(SUITE, "t.toml").unwrap();
        let specs = suite.runs(out.path()).unwrap();
        let find = |method: &str, seed: u64| {
            specs
                .iter()
                .find(|s| s.method == method && s.seed == seed)
                .unwrap()
        };
        let (full0, flux0, flux1) = (find("fedavg-full", 0), find("flux", 0), find("flux", 1));
        let initial = |s: &RunSpec| out.path().join(&s.dir).join(fluxmoe_sim::run::INITIAL_FILE);
        // fedavg-full of seed 0 measured 0.25; flux of seed 0 is offered it.
        let key0 = fluxmoe_sim::run::initial_key(&full0.config, &model);
        plant(&initial(full0), &key0, 0.25);
        share_initial_metric(out.path(), flux0, &out.path().join(&flux0.dir), &model).unwrap();
        let copied: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(initial(flux0)).unwrap()).unwrap();
        assert_eq!(copied["initial_metric"], 0.25);
        assert_eq!(copied["key"], key0.as_str());
        // ... with the sibling's answers (the run keeps those before round 1).
        let answers = |s: &RunSpec| {
            out.path()
                .join(&s.dir)
                .join(fluxmoe_sim::run::PREDICTIONS_FILE)
        };
        let line = |round: u32| format!(r#"{{"round":{round},"id":"x","output":"y","score":1.0}}"#);
        std::fs::write(answers(full0), format!("{}\n{}\n", line(0), line(1))).unwrap();
        share_initial_metric(out.path(), flux0, &out.path().join(&flux0.dir), &model).unwrap();
        assert_eq!(
            std::fs::read_to_string(answers(flux0)).unwrap(),
            format!("{}\n{}\n", line(0), line(1))
        );
        // Seed 1 has another test split: nothing of seed 0 is offered.
        share_initial_metric(out.path(), flux1, &out.path().join(&flux1.dir), &model).unwrap();
        assert!(!initial(flux1).exists());
        // A sibling measured on another model (another key) is not offered either.
        std::fs::remove_file(initial(flux0)).unwrap();
        plant(&initial(full0), "another model", 0.5);
        share_initial_metric(out.path(), flux0, &out.path().join(&flux0.dir), &model).unwrap();
        assert!(!initial(flux0).exists());
    }
}
