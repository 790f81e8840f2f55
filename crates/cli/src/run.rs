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
    pub keep_models: bool,
    pub derive_fmd: bool,
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
    let workers = suite
        .runs_filtered(&args.out, args.methods.as_deref(), args.tasks.as_deref())?
        .iter()
        .map(|r| r.config.rounds.workers)
        .max()
        .unwrap_or(1);
    split_threads(workers);
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
            keep_models: args.keep_models,
            derive_fmd: args.derive_fmd,
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
    split_threads(file.rounds.workers);
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

/// Whether `RAYON_NUM_THREADS` came from the user (then it is never changed).
static USER_THREADS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Fix the compute thread count before any computation: candle reads
/// `RAYON_NUM_THREADS` on every matrix product and, when it is unset, counts the
/// physical cores by reading `/proc/cpuinfo` each time (measured beside a benchmark:
/// `fluxmoe eval --workers 1` on 8 supersense examples took 20.8 s unset, 17.1 s set). Unset, it becomes the available cores; a
/// user's value is kept.
pub(crate) fn pin_thread_count() {
    let user = std::env::var_os("RAYON_NUM_THREADS").is_some();
    USER_THREADS.get_or_init(|| user);
    if !user {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", cores.to_string());
    }
}

/// Keep freed tensor buffers in the process (glibc only; a user's `MALLOC_*`
/// settings are kept). Training allocates and frees buffers of a few MiB per tensor per
/// step, about 1.5 GB a step on the standard suite's model. Three glibc defaults hand
/// that memory back to the kernel, which then faults fresh zeroed pages in on the next
/// step:
/// - every thread beyond the first gets its own arena, made of 64 MiB heaps that glibc
///   unmaps as soon as they are empty, whatever the trim threshold. The participants'
///   worker threads train in such arenas, so each step's activations were unmapped
///   after it and faulted in again. One arena for all threads keeps them;
/// - a large allocation gets its own `mmap`, unmapped on free; the cutoff is fixed at
///   glibc's 32 MiB maximum;
/// - free memory at the top of the heap goes back past 128 KiB; now only past 2 GiB.
///
/// Measured on the standard suite's fedavg-full run on wordnet-define (2 workers,
/// `/usr/bin/time -v`, one 2-core machine, 2026-12-02): with the last two settings
/// only, 321 s of measured time, 22.2 M page faults, peak RSS 21.2 GB; with one arena
/// as well, 152 s, 5.9 M page faults, 19.7 GB; the same results (README, "Performance").
pub(crate) fn retain_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let user = std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("MALLOC_"));
        if !user {
            // SAFETY: mallopt only sets allocator parameters; called before any thread
            // is spawned.
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 1);
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            }
        }
    }
}

/// With `workers` participants training at once, give each worker an equal share of
/// the cores (at least one) unless the user set `RAYON_NUM_THREADS`: a participant's
/// per-sample passes are small matrix products that gain little from a second thread,
/// so two single-threaded workers do about twice the work of one two-threaded one
/// (measured in the README, "Federated rounds"). Results do not depend on it.
pub(crate) fn split_threads(workers: usize) {
    let user = *USER_THREADS.get_or_init(|| std::env::var_os("RAYON_NUM_THREADS").is_some());
    if workers <= 1 || user {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = (cores / workers).max(1);
    // Before any computation: candle reads it per operation.
    std::env::set_var("RAYON_NUM_THREADS", per.to_string());
    tracing::info!("{workers} workers: {per} compute thread(s) each (RAYON_NUM_THREADS)");
}

/// The built-in models: `builtin:NAME` resolves to a cached folder, built on first use.
pub const BUILTIN_MODELS: [(&str, &str); 3] = [
    (
        "smollm2-moe",
        "SmolLM2-135M-Instruct sparse-upcycled to 4 experts, top-2 (seconds to build; every expert a copy of the dense FFN)",
    ),
    (
        "smollm2-btx",
        "SmolLM2-135M-Instruct Branch-Train-MiX, 4 experts (sotu, kjv, wordnet, math), top-2 (16 to 60 minutes to build on 2 cores; experts really differ)",
    ),
    (
        "tiny-moe",
        "a randomly initialised 2-layer Mixtral (tests and smoke runs)",
    ),
];

/// `builtin:NAME` → its cached folder (built on first use); anything else is a path.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    match spec.strip_prefix("builtin:") {
        Some(name) => build_builtin(name),
        None => Ok(PathBuf::from(spec)),
    }
}

/// The cached folder of built-in model `name`, built now if missing.
pub fn build_builtin(name: &str) -> Result<PathBuf> {
    let cache = assets::cache_dir()?;
    let (dir, build): (PathBuf, fn(&Path) -> Result<()>) = match name {
        "tiny-moe" => (cache.join("tiny-moe"), assets::tiny::build),
        "smollm2-moe" => (cache.join("smollm2-moe-4x-top2"), build_smollm2_moe),
        "smollm2-btx" => (cache.join("smollm2-btx-4x-top2"), build_smollm2_btx),
        other => {
            let known: Vec<String> = BUILTIN_MODELS
                .iter()
                .map(|(n, _)| format!("builtin:{n}"))
                .collect();
            anyhow::bail!(
                "unknown built-in model `builtin:{other}` (available: {})",
                known.join(", ")
            )
        }
    };
    if !dir.join("config.json").exists() {
        std::fs::create_dir_all(&cache)?;
        build(&dir)?;
    }
    Ok(dir)
}

/// The BTX recipe measured in docs/upcycling.md: one expert per domain (State of the
/// Union, King James Bible, WordNet glosses, mathematics), 50 expert steps and 25
/// router steps of 4 × 128 tokens, learning rate 1e-4, seed 0.
fn build_smollm2_btx(dir: &Path) -> Result<()> {
    let gguf = assets::ensure(&assets::SMOLLM2)?;
    eprintln!(
        "building {} (Branch-Train-MiX: 4 experts on sotu, kjv, wordnet, math; top-2; 16 to 60 minutes on 2 cores)",
        dir.display()
    );
    let dense =
        load_model(&gguf, &Device::Cpu).with_context(|| format!("loading {}", gguf.display()))?;
    let args = crate::upcycle::BtxArgs {
        domains: crate::upcycle::parse_domains("sotu,kjv,wordnet,math", Some(4))?,
        n_experts: 4,
        top_k: 2,
        steps: 50,
        router_steps: 25,
        seq: 128,
        batch: 4,
        lr: 1e-4,
        router_lr: 1e-4,
        probe_windows: 8,
        router_logit_rms: 1.0,
        router_init: fluxmoe_model::upcycle::RouterInit::ClassMeans,
        seed: 0,
        corpora_dir: None,
    };
    let tmp = dir.with_extension("part");
    let _ = std::fs::remove_dir_all(&tmp);
    crate::upcycle::run_btx(&dense, &args, &tmp)?;
    std::fs::rename(&tmp, dir)
        .with_context(|| format!("moving the built model to {}", dir.display()))?;
    Ok(())
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
