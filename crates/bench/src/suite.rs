//! Suite files (`suites/<name>.toml`, versioned in the repository): the base run config
//! every run shares, the methods (and ablation variants), the tasks with their target
//! metric, and the seeds.
//!
//! ```toml
//! name = "smoke"
//! description = "what it shows"
//! methods = ["fedavg-full", "flux", "fmd", "fmq", "fmes"]
//! seeds = [0]
//!
//! [[tasks]]
//! name = "math"
//! target = 0.05            # the metric value that counts as reached
//! task = { eval_limit = 96 }  # optional: overrides of [base.task] for this task
//!
//! [[variants]]             # optional: a method with [method.options] overrides
//! name = "int8"
//! method = "flux"
//! options = { profile_precision = "int8" }
//!
//! [base]                   # a run config without `output`; `task.name`,
//! seed = 0                 # `method.name` and `seed` are set per run
//! [base.model]
//! path = "builtin:tiny-moe"
//! ...
//! ```
//!
//! Every run's config is the base with those keys set, parsed as a `RunFile`, so an
//! unknown key anywhere is an error naming it.

use std::path::{Path, PathBuf};

use fluxmoe_sim::RunFile;
use serde::{Deserialize, Serialize};

use crate::error::{io, Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskEntry {
    pub name: String,
    /// Target metric value (higher is better); `None`: no time-to-accuracy.
    pub target: Option<f64>,
    /// Keys of `[base.task]` this task sets its own way (e.g. a larger `eval_limit`
    /// where scoring is cheap).
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub task: toml::Table,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub name: String,
    pub method: String,
    /// `[method.options]` overrides.
    #[serde(default)]
    pub options: toml::Table,
    /// `[train]` overrides (e.g. `lr`: a method run at its own learning rate).
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub train: toml::Table,
    /// `[rounds]` overrides (e.g. more `rounds` for a method whose rounds are short,
    /// so that every method gets a comparable span of virtual time).
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub rounds: toml::Table,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub variants: Vec<Variant>,
    pub tasks: Vec<TaskEntry>,
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    pub base: toml::Table,
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// One cell of the matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSpec {
    pub method: String,
    pub variant: String,
    pub task: TaskEntry,
    pub seed: u64,
    pub config: RunFile,
    /// Relative folder of this run under the suite's output.
    pub dir: PathBuf,
}

/// Folder-safe form of a name (`jsonl-em:/a/b.jsonl` → `jsonl-em_a_b.jsonl`).
pub fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let s = s.trim_matches('_').replace("__", "_");
    if s.is_empty() {
        "_".into()
    } else {
        s
    }
}

impl Suite {
    pub fn parse(text: &str, origin: &str) -> Result<Suite> {
        let suite: Suite =
            toml::from_str(text).map_err(|e| Error::Suite(format!("{origin}: {e}")))?;
        if suite.tasks.is_empty() {
            return Err(Error::Suite(format!("{origin}: `tasks` is empty")));
        }
        if suite.methods.is_empty() && suite.variants.is_empty() {
            return Err(Error::Suite(format!(
                "{origin}: name at least one of `methods` or `variants`"
            )));
        }
        if suite.seeds.is_empty() {
            return Err(Error::Suite(format!("{origin}: `seeds` is empty")));
        }
        if suite.base.contains_key("output") {
            return Err(Error::Suite(format!(
                "{origin}: `base.output` is set per run; remove it"
            )));
        }
        // Build every run once, so a bad key fails before anything runs.
        suite.runs(Path::new("."))?;
        Ok(suite)
    }

    pub fn load(path: &Path) -> Result<Suite> {
        let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Every column: the plain methods (variants with an empty name and no overrides),
    /// then the variants.
    fn columns(&self) -> Vec<Variant> {
        let plain = self.methods.iter().map(|m| Variant {
            name: String::new(),
            method: m.clone(),
            options: toml::Table::new(),
            train: toml::Table::new(),
            rounds: toml::Table::new(),
        });
        plain.chain(self.variants.iter().cloned()).collect()
    }

    /// Every run of the matrix, outputs under `out/runs/<task>/<method[-variant]>/seed<k>`,
    /// keeping only the `methods`/`tasks` filters when given.
    pub fn runs(&self, out: &Path) -> Result<Vec<RunSpec>> {
        self.runs_filtered(out, None, None)
    }

    /// The runs of [`Suite::runs`] whose task is one of `tasks` and whose method key
    /// (`flux`, `flux-int8`: a method, or a method and its variant) is one of `methods`,
    /// each exactly or, for an entry ending in `*`, by prefix (`flux*`: FLUX and all its
    /// variants). A filter entry that selects nothing is an error naming what exists.
    pub fn runs_filtered(
        &self,
        out: &Path,
        methods: Option<&[String]>,
        tasks: Option<&[String]>,
    ) -> Result<Vec<RunSpec>> {
        let keys: Vec<String> = self
            .columns()
            .into_iter()
            .map(|c| method_key(&c.method, &c.name))
            .collect();
        let selects = |entry: &str, key: &str| match entry.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix),
            None => key == entry,
        };
        for entry in methods.unwrap_or_default() {
            if !keys.iter().any(|k| selects(entry, k)) {
                return Err(Error::Suite(format!(
                    "--methods `{entry}` selects no run of suite `{}` (its runs: {}; end an entry \
                     with `*` to select by prefix)",
                    self.name,
                    keys.join(", ")
                )));
            }
        }
        for entry in tasks.unwrap_or_default() {
            if !self.tasks.iter().any(|t| &t.name == entry) {
                return Err(Error::Suite(format!(
                    "--tasks `{entry}` is not a task of suite `{}` (its tasks: {})",
                    self.name,
                    self.tasks
                        .iter()
                        .map(|t| t.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let mut specs = Vec::new();
        for task in &self.tasks {
            if tasks.is_some_and(|t| !t.contains(&task.name)) {
                continue;
            }
            for column in self.columns() {
                let key = method_key(&column.method, &column.name);
                if methods.is_some_and(|m| !m.iter().any(|e| selects(e, &key))) {
                    continue;
                }
                for &seed in &self.seeds {
                    let dir = PathBuf::from("runs")
                        .join(slug(&task.name))
                        .join(slug(&key))
                        .join(format!("seed{seed}"));
                    let config = self.config(&column, task, seed, &out.join(&dir))?;
                    specs.push(RunSpec {
                        method: column.method.clone(),
                        variant: column.name.clone(),
                        task: task.clone(),
                        seed,
                        config,
                        dir,
                    });
                }
            }
        }
        Ok(specs)
    }

    /// The run config of `column` on `task`: the base with the task's, the variant's
    /// and the run's keys set.
    fn config(
        &self,
        column: &Variant,
        task: &TaskEntry,
        seed: u64,
        output: &Path,
    ) -> Result<RunFile> {
        let mut t = self.base.clone();
        t.insert("seed".into(), toml::Value::Integer(seed as i64));
        t.insert(
            "output".into(),
            toml::Value::String(output.display().to_string()),
        );
        let section = |t: &mut toml::Table, name: &str| -> Result<toml::Table> {
            match t.remove(name) {
                None => Ok(toml::Table::new()),
                Some(toml::Value::Table(s)) => Ok(s),
                Some(_) => Err(Error::Suite(format!("`base.{name}` must be a table"))),
            }
        };
        let mut task_t = section(&mut t, "task")?;
        for (k, v) in &task.task {
            if k == "name" {
                return Err(Error::Suite(format!(
                    "task `{}`: `task.name` is the entry's `name`; remove it",
                    task.name
                )));
            }
            task_t.insert(k.clone(), v.clone());
        }
        task_t.insert("name".into(), toml::Value::String(task.name.clone()));
        t.insert("task".into(), toml::Value::Table(task_t));
        let mut method_t = section(&mut t, "method")?;
        let Variant {
            method,
            options,
            train,
            rounds,
            ..
        } = column;
        method_t.insert("name".into(), toml::Value::String(method.clone()));
        if !options.is_empty() {
            let mut opts = match method_t.remove("options") {
                Some(toml::Value::Table(o)) => o,
                _ => toml::Table::new(),
            };
            for (k, v) in options {
                opts.insert(k.clone(), v.clone());
            }
            method_t.insert("options".into(), toml::Value::Table(opts));
        }
        t.insert("method".into(), toml::Value::Table(method_t));
        for (name, keys) in [("train", train), ("rounds", rounds)] {
            if !keys.is_empty() {
                let mut table = section(&mut t, name)?;
                for (k, v) in keys {
                    table.insert(k.clone(), v.clone());
                }
                t.insert(name.into(), toml::Value::Table(table));
            }
        }
        if let Some(target) = task.target {
            let mut target_t = section(&mut t, "target")?;
            target_t.insert("value".into(), toml::Value::Float(target));
            t.insert("target".into(), toml::Value::Table(target_t));
        }
        let text = toml::to_string(&t).map_err(|e| Error::Suite(e.to_string()))?;
        RunFile::from_toml(
            &text,
            &format!("suite `{}` run {method} on {}", self.name, task.name),
        )
        .map_err(|e| Error::Suite(e.to_string()))
    }
}

/// The key of a suite column: its method, or method and variant (`flux-int8`).
pub fn method_key(method: &str, variant: &str) -> String {
    if variant.is_empty() {
        method.to_string()
    } else {
        format!("{method}-{variant}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUITE: &str = r#"
name = "t"
methods = ["fedavg-full", "flux"]
seeds = [1, 2]
[[tasks]]
name = "jsonl-em:/data/x.jsonl"
target = 0.5
[[tasks]]
name = "math"
task = { eval_limit = 96 }
[[variants]]
name = "int8"
method = "flux"
options = { profile_precision = "int8" }
[[variants]]
name = "lr1e-4"
method = "flux"
train = { lr = 1e-4 }
rounds = { rounds = 6 }
[base]
[base.model]
path = "m"
[base.task]
max_len = 32
[base.partition]
participants = 4
[base.rounds]
rounds = 2
per_round = 2
[base.train]
lr = 1e-3
max_grad_norm = 0.5
[base.method.options]
pca_dim = 8
"#;

    #[test]
    fn the_matrix_sets_task_method_seed_target_and_variant_options() {
        let s = Suite::parse(SUITE, "t.toml").unwrap();
        let runs = s.runs(Path::new("/out")).unwrap();
        assert_eq!(runs.len(), 2 * 4 * 2);
        let r = runs
            .iter()
            .find(|r| r.variant == "int8" && r.seed == 2 && r.task.name == "math")
            .unwrap();
        assert_eq!(r.config.method.name, "flux");
        assert_eq!(r.config.seed, 2);
        assert_eq!(r.config.method.options.pca_dim, 8, "base options kept");
        assert_eq!(
            r.config.method.options.profile_precision,
            fluxmoe_flux::profile::Precision::Int8
        );
        assert!(r.config.target.is_none(), "math has no target");
        assert_eq!(r.config.task.eval_limit, 96, "the task's own override");
        assert_eq!(r.config.task.max_len, 32, "the base's other task keys kept");
        assert_eq!(r.dir, PathBuf::from("runs/math/flux-int8/seed2"));
        // A variant's `train` overrides its keys of `[base.train]` and keeps the rest;
        // every other run keeps the base.
        for r in &runs {
            let lr = if r.variant == "lr1e-4" { 1e-4 } else { 1e-3 };
            assert_eq!(r.config.train.lr, lr, "{}", r.variant);
            assert_eq!(r.config.train.max_grad_norm, 0.5, "{}", r.variant);
            let rounds = if r.variant == "lr1e-4" { 6 } else { 2 };
            assert_eq!(r.config.rounds.rounds, rounds, "{}", r.variant);
            assert_eq!(r.config.rounds.per_round, 2, "{}", r.variant);
        }
        let j = &runs[0];
        assert_eq!(j.config.target.as_ref().unwrap().value, 0.5);
        assert_eq!(
            j.dir,
            PathBuf::from("runs/jsonl-em_data_x.jsonl/fedavg-full/seed1")
        );
        assert_eq!(j.config.output, PathBuf::from("/out").join(&j.dir));
        let only = s
            .runs_filtered(
                Path::new("/o"),
                Some(&["flux-int8".into()]),
                Some(&["math".into()]),
            )
            .unwrap();
        assert_eq!(only.len(), 2);
        // A method's name selects its plain runs only; `*` selects by prefix.
        let plain = s
            .runs_filtered(Path::new("/o"), Some(&["flux".into()]), None)
            .unwrap();
        assert!(plain.iter().all(|r| r.variant.is_empty()), "{plain:?}");
        let all_flux = s
            .runs_filtered(Path::new("/o"), Some(&["flux*".into()]), None)
            .unwrap();
        assert!(all_flux.len() > plain.len());
        assert!(all_flux.iter().all(|r| r.method == "flux"));
        // Filters that select nothing are errors naming what exists.
        let err = s
            .runs_filtered(Path::new("/o"), Some(&["flux-int9".into()]), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("flux-int9") && err.contains("flux-int8"),
            "{err}"
        );
        let err = s
            .runs_filtered(Path::new("/o"), None, Some(&["mathh".into()]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("mathh") && err.contains("math"), "{err}");
    }

    #[test]
    fn bad_suites_are_errors_naming_the_problem() {
        let bad = SUITE.replace("pca_dim = 8", "pca_dimm = 8");
        let err = Suite::parse(&bad, "t.toml").unwrap_err().to_string();
        assert!(err.contains("pca_dimm"), "{err}");
        let bad = SUITE.replace("seeds = [1, 2]", "seeds = []");
        assert!(Suite::parse(&bad, "t.toml")
            .unwrap_err()
            .to_string()
            .contains("seeds"));
        let bad = SUITE.replace("name = \"t\"", "name = \"t\"\nrepeats = 3");
        assert!(Suite::parse(&bad, "t.toml")
            .unwrap_err()
            .to_string()
            .contains("repeats"));
        let bad = SUITE.replace("\"flux\"]", "\"fluxx\"]");
        assert!(Suite::parse(&bad, "t.toml")
            .unwrap_err()
            .to_string()
            .contains("fluxx"));
        // Unknown keys in a task's or a variant's overrides, and a task that names itself.
        for (from, to, named) in [
            ("eval_limit = 96", "eval_limitt = 96", "eval_limitt"),
            ("train = { lr = 1e-4 }", "train = { lrr = 1e-4 }", "lrr"),
            (
                "rounds = { rounds = 6 }",
                "rounds = { roundz = 6 }",
                "roundz",
            ),
            ("eval_limit = 96", "name = \"gsm8k\"", "task.name"),
        ] {
            let bad = SUITE.replace(from, to);
            let err = Suite::parse(&bad, "t.toml").unwrap_err().to_string();
            assert!(err.contains(named), "{to}: {err}");
        }
    }
}

#[cfg(test)]
mod shipped {
    use super::*;

    /// Every suite in the repository's `suites/` parses and builds its whole matrix.
    #[test]
    fn every_shipped_suite_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../suites");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let suite = Suite::load(&path).unwrap();
                assert!(!suite.runs(Path::new("/o")).unwrap().is_empty());
                names.push(suite.name);
            }
        }
        names.sort();
        assert_eq!(names, ["ablations", "roles", "smoke", "standard"]);
    }
}
