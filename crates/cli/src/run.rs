//! `fluxmoe run [CONFIG.toml] [--resume]`: a federated fine-tuning run (in-process
//! simulation). Without a config, the built-in quickstart (`examples/quickstart.toml`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Device;
use fluxmoe_model::source::save_tokenizer_files;
use fluxmoe_model::upcycle::{sparse_upcycle, SparseUpcycle};
use fluxmoe_model::{checkpoint, load_model};
use fluxmoe_sim::RunFile;
use indicatif::{ProgressBar, ProgressStyle};

use crate::assets;

pub struct RunArgs {
    pub config: Option<PathBuf>,
    pub resume: bool,
    pub quiet: bool,
    pub json: bool,
}

pub struct TtaArgs {
    pub suite: String,
    pub methods: Option<Vec<String>>,
    pub tasks: Option<Vec<String>>,
    pub seeds: Option<usize>,
    pub out: PathBuf,
    pub resume: bool,
}

/// The suite file of `name`: a path, or `suites/<name>.toml` of this source tree.
fn suite_path(name: &str) -> Result<PathBuf> {
    let as_path = PathBuf::from(name);
    if as_path.exists() {
        return Ok(as_path);
    }
    let builtin = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("suites")
        .join(format!("{name}.toml"));
    if builtin.exists() {
        return Ok(builtin);
    }
    anyhow::bail!(
        "suite `{name}`: neither a file nor one of {}",
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("suites")
            .display()
    )
}

/// `fluxmoe bench tta`: run a suite's matrix and write its report.
pub fn bench_tta(args: &TtaArgs) -> Result<()> {
    let path = suite_path(&args.suite)?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let suite = fluxmoe_bench::suite::Suite::parse(&text, &path.display().to_string())?;
    let needs_wordnet = suite.tasks.iter().any(|t| t.name.starts_with("wordnet"));
    if needs_wordnet {
        assets::ensure_wordnet()?;
    }
    let resolve = |spec: &str| -> fluxmoe_bench::Result<PathBuf> {
        resolve_model(spec).map_err(|e| fluxmoe_bench::Error::Suite(format!("{e:#}")))
    };
    let mut on_run = |i: usize,
                      n: usize,
                      spec: &fluxmoe_bench::suite::RunSpec,
                      done: Option<&fluxmoe_bench::results::RunResult>| {
        let key = if spec.variant.is_empty() {
            spec.method.clone()
        } else {
            format!("{}-{}", spec.method, spec.variant)
        };
        match done {
            None => eprintln!(
                "[{}/{n}] {key} on {} seed {}",
                i + 1,
                spec.task.name,
                spec.seed
            ),
            Some(r) => eprintln!(
                "[{}/{n}] {key}: final {} {:.4}, TTA {}, virtual {:.1} s, measured {:.1} s",
                i + 1,
                r.metric,
                r.final_metric,
                r.tta_virtual_s
                    .map_or("not reached".into(), |t| format!("{t:.1} s")),
                r.virtual_s,
                r.measured_s
            ),
        }
    };
    let results = fluxmoe_bench::runner::run_suite(
        &suite,
        &text,
        fluxmoe_bench::runner::RunOptions {
            out: &args.out,
            methods: args.methods.as_deref(),
            tasks: args.tasks.as_deref(),
            seeds: args.seeds,
            resume: args.resume,
            resolve_model: &resolve,
            on_run: &mut on_run,
        },
    )?;
    let files = fluxmoe_bench::write_report(&results, &args.out)?;
    print!(
        "{}",
        std::fs::read_to_string(&files.tables_md).unwrap_or_default()
    );
    eprintln!(
        "wrote {} ({} files; results.csv, results.json, tables.md, plots)",
        files.report_html.display(),
        files.all().len()
    );
    Ok(())
}

/// `fluxmoe plan`: the budget table of a run config.
pub fn plan(config: Option<&Path>, suite: Option<&str>, json: bool) -> Result<()> {
    let file = match (config, suite) {
        (Some(path), _) => RunFile::load(path)?,
        (None, Some(name)) => {
            let path = suite_path(name)?;
            let suite = fluxmoe_bench::suite::Suite::load(&path)?;
            let mut flux = suite.clone();
            flux.methods = vec!["flux".into()];
            flux.variants.clear();
            let runs = flux.runs(Path::new("."))?;
            runs.into_iter()
                .next()
                .map(|r| r.config)
                .context("the suite has no runs")?
        }
        (None, None) => RunFile::quickstart()?,
    };
    let model_path = resolve_model(&file.model.path)?;
    let report = fluxmoe_sim::plan::plan(&file, &model_path)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

pub fn run(args: &RunArgs) -> Result<()> {
    let file = match &args.config {
        Some(path) => RunFile::load(path)?,
        None => RunFile::quickstart()?,
    };
    let model_path = resolve_model(&file.model.path)?;
    if file.task.name.starts_with("wordnet") {
        assets::ensure_wordnet()?;
    }
    if !args.quiet && !args.json {
        eprintln!(
            "run: {} on {} with {} participants ({} per round), {} rounds -> {}",
            file.method.name,
            file.task.name,
            file.partition.participants,
            file.rounds.per_round,
            file.rounds.rounds,
            file.output.display()
        );
    }
    let (quiet, json) = (args.quiet, args.json);
    let bar = if quiet || json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(u64::from(file.rounds.rounds))
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} round {pos}/{len} [{elapsed_precise}, ETA {eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let summary = fluxmoe_sim::run(&file, &model_path, args.resume, &mut |rec| {
        let loss = rec
            .train_metrics
            .get("train_loss")
            .copied()
            .unwrap_or(f64::NAN);
        let eval = rec.eval.map_or("-".to_string(), |e| format!("{e:.4}"));
        bar.set_position(u64::from(rec.round.0));
        let line = format!(
            "round {}: participants {:?} dropped {}, train loss {loss:.4}, eval {eval}, virtual {:.1}s (round {:.1}s), wall {:.1}s",
            rec.round,
            rec.accepted.iter().map(|p| p.0).collect::<Vec<_>>(),
            rec.dropped.len(),
            rec.virtual_time_end,
            rec.round_s,
            rec.wall_seconds.unwrap_or(0.0)
        );
        // Without a terminal the bar is hidden and drops its lines: print them plainly.
        if !bar.is_hidden() {
            bar.println(line);
        } else if !(quiet || json) {
            eprintln!("{line}");
        }
    })?;
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else if !quiet {
        println!("method         {}", summary.method);
        println!("task           {} ({})", summary.task, summary.metric);
        println!("rounds         {}", summary.rounds);
        println!(
            "metric         {:.4} -> {:.4}",
            summary.initial_metric, summary.final_metric
        );
        println!("virtual time   {:.1} s", summary.virtual_seconds);
        println!("measured time  {:.1} s", summary.wall_seconds);
        match summary.time_to_target {
            Some(t) => println!("target reached at {t:.1} virtual s"),
            None => println!("target         not set or not reached"),
        }
        println!(
            "bytes up/down  {} / {}",
            summary.bytes_up, summary.bytes_down
        );
        println!("output         {}", summary.output.display());
    }
    Ok(())
}

/// `builtin:smollm2-moe` → the cached sparse-upcycled SmolLM2 (built on first use);
/// anything else is a path.
fn resolve_model(spec: &str) -> Result<PathBuf> {
    match spec {
        "builtin:tiny-moe" => {
            let dir = assets::cache_dir()?.join("tiny-moe");
            if !dir.join("config.json").exists() {
                std::fs::create_dir_all(dir.parent().unwrap_or(Path::new(".")))?;
                assets::tiny::build(&dir)?;
            }
            Ok(dir)
        }
        "builtin:smollm2-moe" => {
            let dir = assets::cache_dir()?.join("smollm2-moe-4x-top2");
            if !dir.join("config.json").exists() {
                build_smollm2_moe(&dir)?;
            }
            Ok(dir)
        }
        other if other.starts_with("builtin:") => {
            anyhow::bail!(
                "`model.path`: unknown built-in model `{other}` (available: builtin:smollm2-moe, builtin:tiny-moe)"
            )
        }
        path => Ok(PathBuf::from(path)),
    }
}

fn build_smollm2_moe(dir: &Path) -> Result<()> {
    let gguf = assets::ensure(&assets::SMOLLM2)?;
    eprintln!(
        "building {} (sparse upcycling: 4 experts, top-2)",
        dir.display()
    );
    let dense =
        load_model(&gguf, &Device::Cpu).with_context(|| format!("loading {}", gguf.display()))?;
    let spec = SparseUpcycle {
        n_experts: 4,
        top_k: 2,
        router_std: 0.02,
        seed: 0,
    };
    let moe = sparse_upcycle(&dense.checkpoint, &spec)?;
    let tmp = dir.with_extension("part");
    let _ = std::fs::remove_dir_all(&tmp);
    checkpoint::save_dir(&tmp, &moe.config_json, &moe.params, &moe.layout)?;
    if let Some(tok) = &dense.tokenizer {
        save_tokenizer_files(&tmp, tok, &dense.eos_ids, dense.chat_template.as_deref())?;
    }
    std::fs::rename(&tmp, dir)
        .with_context(|| format!("moving the built model to {}", dir.display()))?;
    Ok(())
}
