//! One federated run in-process: model, task, partition, fleet, strategy, transport,
//! coordinator, wired from a [`RunFile`].
//!
//! Outputs in `output/`: `metrics.jsonl` (one `RoundRecord` per round, with measured
//! wall seconds), `checkpoint/` (resumable coordinator state + global tensors, written
//! atomically every `checkpoint_every` rounds), `final/` (the fine-tuned model in the
//! key layout and dtypes it was loaded with, plus tokenizer files) and `summary.json`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::Device;
use fluxmoe_data::batch::{encode, Encoded};
use fluxmoe_data::metrics::LengthNorm;
use fluxmoe_data::tasks::registry::{load_train_test, DataDirs};
use fluxmoe_data::{
    partition, DirichletConfig, EvalConfig, Example, LoadOptions, PartitionScheme,
    PromptConventions, PromptFormat, Template,
};
use fluxmoe_fed::{
    load_checkpoint, load_previous, save_checkpoint, AggregateConfig, Clock, Coordinator,
    DeviceProfile, FedAvgFull, FedAvgFullConfig, FleetConfig, Global, LocalTransport,
    LocalTransportConfig, ParticipantId, RoundRecord, RunConfig, Strategy, TargetConfig, Transport,
    VirtualClock,
};
use fluxmoe_model::config::Ffn;
use fluxmoe_model::keys::{expert_key, Proj};
use fluxmoe_model::params::glob_match;
use fluxmoe_model::source::save_tokenizer_files;
use fluxmoe_model::stats::ModelStats;
use fluxmoe_model::train::{step_activation_bytes, AdamWConfig};
use fluxmoe_model::{checkpoint, load_model, LoadedModel, ParamStore};
use serde::Serialize;

use fluxmoe_flux::budget::MemoryInputs;
use fluxmoe_flux::roles::ExpertId;
use fluxmoe_flux::strategy::{ExpertModel, ExpertStrategy, Method};

use crate::config::RunFile;
use crate::participant::{LocalTraining, ModelParticipant};
use crate::scorer::{ModelEvaluator, Prediction};
use crate::{Error, Result};

pub const METRICS_FILE: &str = "metrics.jsonl";
pub const SUMMARY_FILE: &str = "summary.json";
pub const CHECKPOINT_DIR: &str = "checkpoint";
pub const FINAL_DIR: &str = "final";
/// The metric before any round, with the key of what it depends on ([`initial_key`]).
pub const INITIAL_FILE: &str = "initial.json";
/// What the model answered at each evaluation, one line per test example
/// ([`crate::scorer::Prediction`]).
pub const PREDICTIONS_FILE: &str = "predictions.jsonl";

/// What a finished run reports.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RunSummary {
    pub method: String,
    pub task: String,
    pub metric: String,
    pub rounds: u32,
    /// Metric of the model before any round.
    pub initial_metric: f64,
    pub final_metric: f64,
    /// Virtual seconds on the cost-model clock.
    pub virtual_seconds: f64,
    /// Measured seconds of all rounds (resumed runs include the rounds before the resume).
    pub wall_seconds: f64,
    /// First virtual time the target was reached.
    pub time_to_target: Option<f64>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub output: PathBuf,
}

/// One participant of a run: its id, its device profile and its local training.
pub struct Member {
    pub id: ParticipantId,
    pub profile: DeviceProfile,
    pub participant: ModelParticipant,
}

/// Makes the transport a run's coordinator drives from the run's participants: the
/// simulation hands them to a `LocalTransport`; a deployment leaves them to the
/// participant processes and returns a network transport.
pub type TransportBuilder<'a> = dyn FnMut(Vec<Member>) -> Result<Box<dyn Transport>> + 'a;

/// Run `file` with the model at `model_path` (already resolved from `file.model.path`).
/// With `resume`, continue from `output/checkpoint`.
pub fn run(
    file: &RunFile,
    model_path: &Path,
    resume: bool,
    on_round: &mut dyn FnMut(&RoundRecord),
) -> Result<RunSummary> {
    run_over(
        file,
        model_path,
        resume,
        on_round,
        &mut |members| {
            let mut transport = LocalTransport::new(LocalTransportConfig {
                dropout: file.fleet.dropout,
                seed: file.seed,
                workers: file.rounds.workers,
            })?;
            for m in members {
                transport.add(m.id, Box::new(m.participant), m.profile)?;
            }
            Ok(Box::new(transport))
        },
        None,
    )
}

/// The participants of `file`'s run, as [`run`] builds them: participant `i` trains on
/// shard `i` of the seeded partition, on the `i`-th device of the fleet assignment. A
/// participant process calls this with the run's config and keeps its own member, so
/// its data and device are those of the simulation.
pub fn members(file: &RunFile, model_path: &Path) -> Result<Vec<Member>> {
    Ok(Setup::new(file, model_path)?.members)
}

/// [`members`] and the global model a fresh run of `file` starts from (the model at
/// `model_path`): a deployed participant keeps its own copy of the global, starting
/// from this one, and receives only what changed since.
pub fn members_and_initial(file: &RunFile, model_path: &Path) -> Result<(Vec<Member>, Global)> {
    let setup = Setup::new(file, model_path)?;
    Ok((setup.members, initial_global(&setup.lm)))
}

/// The global model of a fresh run: every parameter of the loaded model.
fn initial_global(lm: &LoadedModel) -> Global {
    lm.checkpoint
        .params
        .tensors()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect()
}

/// The model at `model_path` and its tokenizer (a model without one cannot run a task).
fn model_with_tokenizer(model_path: &Path) -> Result<(LoadedModel, tokenizers::Tokenizer)> {
    let lm = load_model(model_path, &Device::Cpu)?;
    let tokenizer = lm.tokenizer.clone().ok_or_else(|| {
        Error::Config(format!(
            "`model.path`: {} has no tokenizer",
            model_path.display()
        ))
    })?;
    Ok((lm, tokenizer))
}

/// Where `file`'s built-in tasks find their data.
fn data_dirs(file: &RunFile) -> DataDirs {
    DataDirs {
        math: file.task.math_dir.clone(),
        wordnet: PathBuf::from(fluxmoe_data::tasks::wordnet::DEFAULT_DIR),
    }
}

/// What a run is made of before a transport or coordinator exists.
struct Setup {
    lm: LoadedModel,
    tokenizer: tokenizers::Tokenizer,
    test: fluxmoe_data::Task,
    format: PromptFormat,
    pad_id: u32,
    stop_ids: Vec<u32>,
    trainable: Vec<String>,
    stats: ModelStats,
    devices: BTreeMap<ParticipantId, DeviceProfile>,
    members: Vec<Member>,
}

impl Setup {
    /// Load the model and task, partition and tokenise the training data, and build
    /// one participant per shard.
    fn new(file: &RunFile, model_path: &Path) -> Result<Self> {
        let (lm, tokenizer) = model_with_tokenizer(model_path)?;
        let data = load_train_test(
            &file.task.name,
            &data_dirs(file),
            LoadOptions::STRICT,
            file.test_seed(),
        )?;
        let conventions =
            PromptConventions::new(lm.chat_template.as_deref(), &lm.eos_ids, &tokenizer);
        let (format, pad_id) = (conventions.format, conventions.pad_id);

        // Partition the training examples and tokenise each participant's shard.
        let groups = data.train.groups();
        let parts = partition(&scheme(file)?, &groups, file.partition.participants)?;
        let shards: Vec<Vec<Encoded>> = parts
            .iter()
            .map(|part| {
                let examples = part.iter().map(|&i| &data.train.examples[i]);
                encode_examples(examples, &data.train.name, &conventions, &tokenizer, file)
            })
            .collect::<Result<_>>()?;

        let cfg = lm.checkpoint.config.clone();
        let trainable = trainable_names(&lm, &file.train.trainable)?;
        let stats = ModelStats::of(&cfg, &lm.checkpoint.params);
        let ids: Vec<ParticipantId> = (0..shards.len() as u32).map(ParticipantId).collect();
        let devices = fleet(file, &ids)?;
        let mut by_id = BTreeMap::new();
        let mut members = Vec::new();
        let quantized = std::sync::Arc::new(crate::shared_quantized::SharedQuantized::default());
        for ((id, profile), shard) in devices.into_iter().zip(shards) {
            by_id.insert(id, profile.clone());
            let participant = model_participant(file, id, &cfg, &stats, shard, pad_id, &quantized);
            members.push(Member {
                id,
                profile,
                participant,
            });
        }
        Ok(Setup {
            test: data.test,
            lm,
            tokenizer,
            format,
            pad_id,
            stop_ids: conventions.stop_ids,
            trainable,
            stats,
            devices: by_id,
            members,
        })
    }
}

/// The participant `id` of `file`'s run training on `shard`.
fn model_participant(
    file: &RunFile,
    id: ParticipantId,
    cfg: &fluxmoe_model::ModelConfig,
    stats: &ModelStats,
    shard: Vec<Encoded>,
    pad_id: u32,
    quantized: &std::sync::Arc<crate::shared_quantized::SharedQuantized>,
) -> ModelParticipant {
    ModelParticipant {
        id,
        config: cfg.clone(),
        shard,
        last_profile_error: Default::default(),
        quantized: std::sync::Arc::clone(quantized),
        training: LocalTraining {
            local_steps: file.rounds.local_steps,
            batch_size: file.rounds.batch_size,
            adamw: AdamWConfig {
                lr: file.train.lr,
                weight_decay: file.train.weight_decay,
                ..AdamWConfig::default()
            },
            max_grad_norm: file.train.max_grad_norm,
            fedprox_mu: file.train.fedprox_mu,
            pad_id,
            seed: file.seed,
            active_params: stats.active_params as f64,
            gradient_sum_bytes: step_activation_bytes(
                cfg,
                file.rounds.batch_size,
                file.task.max_len,
            )
            .saturating_sub(step_activation_bytes(cfg, 1, file.task.max_len)),
        },
    }
}

/// Participant `id` of `file`'s run training on its own data instead of a shard of the
/// run's task: every example of the task `data` (a spec as `task.name` takes it, e.g.
/// `dolly:PATH` or `jsonl:PATH`), rendered with that task's template. Its device is
/// still the fleet's `id`-th, since the coordinator plans budgets from the config.
/// Returns the member and the global model a fresh run starts from.
pub fn member_with_own_data(
    file: &RunFile,
    model_path: &Path,
    id: ParticipantId,
    data: &str,
) -> Result<(Member, Global)> {
    let ids: Vec<ParticipantId> = (0..file.partition.participants as u32)
        .map(ParticipantId)
        .collect();
    let Some((_, profile)) = fleet(file, &ids)?.into_iter().find(|(i, _)| *i == id) else {
        return Err(Error::Config(format!(
            "participant {id}: the config has {} participants",
            ids.len()
        )));
    };
    let (lm, tokenizer) = model_with_tokenizer(model_path)?;
    let task =
        fluxmoe_data::tasks::registry::load_whole(data, &data_dirs(file), LoadOptions::STRICT)?
            .task;
    let conventions = PromptConventions::new(lm.chat_template.as_deref(), &lm.eos_ids, &tokenizer);
    let shard = encode_examples(&task.examples, &task.name, &conventions, &tokenizer, file)?;
    if shard.is_empty() {
        return Err(Error::Config(format!(
            "participant data `{data}` has no examples"
        )));
    }
    let cfg = lm.checkpoint.config.clone();
    let stats = ModelStats::of(&cfg, &lm.checkpoint.params);
    let quantized = std::sync::Arc::new(crate::shared_quantized::SharedQuantized::default());
    let participant = model_participant(
        file,
        id,
        &cfg,
        &stats,
        shard,
        conventions.pad_id,
        &quantized,
    );
    Ok((
        Member {
            id,
            profile,
            participant,
        },
        initial_global(&lm),
    ))
}

/// Render `examples` with the training template of task `task` and tokenise them as the
/// run's batches expect (`task.max_len`), in order, on every core (a run's setup
/// tokenises the whole training split: 117k glosses for the WordNet tasks).
fn encode_examples<'a>(
    examples: impl IntoIterator<Item = &'a Example>,
    task: &str,
    conventions: &PromptConventions,
    tokenizer: &tokenizers::Tokenizer,
    file: &RunFile,
) -> Result<Vec<Encoded>> {
    let template = Template::for_task(task);
    let batch_cfg = conventions.batch_config(file.task.max_len);
    let examples: Vec<&Example> = examples.into_iter().collect();
    let encoded = map_on_cores(&examples, |ex| {
        encode(
            tokenizer,
            &template.render(ex, conventions.format)?,
            &batch_cfg,
        )
    })?;
    Ok(encoded)
}

/// `items.map(f)` in order, the items split into one contiguous part per core; the
/// first error in item order wins.
fn map_on_cores<T: Sync, R: Send, E: Send>(
    items: &[T],
    f: impl Fn(&T) -> std::result::Result<R, E> + Sync,
) -> std::result::Result<Vec<R>, E> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = items.len().div_ceil(threads).max(1);
    let f = &f;
    let parts: Vec<std::result::Result<Vec<R>, E>> = std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(f).collect()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut out = Vec::with_capacity(items.len());
    for part in parts {
        out.extend(part?);
    }
    Ok(out)
}

/// [`run`] over the transport `transport` makes from the run's participants. When
/// `interrupt` is set (a signal handler sets it), the run stops after the round in
/// progress, saves a checkpoint and returns [`Error::Interrupted`].
pub fn run_over(
    file: &RunFile,
    model_path: &Path,
    resume: bool,
    on_round: &mut dyn FnMut(&RoundRecord),
    transport: &mut TransportBuilder<'_>,
    interrupt: Option<&AtomicBool>,
) -> Result<RunSummary> {
    // A config built in code has not been through `RunFile::load`'s checks.
    file.validate()?;
    let Setup {
        lm,
        tokenizer,
        test,
        format,
        pad_id,
        stop_ids,
        trainable,
        stats,
        devices,
        members,
    } = Setup::new(file, model_path)?;
    let cfg = lm.checkpoint.config.clone();
    let mut transport = transport(members)?;
    let aggregate = AggregateConfig {
        max_delta_norm: file.train.max_delta_norm,
    };
    let mut strategy: Box<dyn Strategy> = match file.method.name.as_str() {
        "fedavg-full" => Box::new(FedAvgFull::new(FedAvgFullConfig {
            per_round: file.rounds.per_round,
            trainable: Some(trainable),
            min_replies: 1,
            aggregate,
            server_optimizer: file.train.server_optimizer.clone(),
            params: BTreeMap::new(),
        })?),
        name => {
            let method: Method = serde_json::from_value(serde_json::Value::String(name.into()))
                .map_err(|e| Error::Config(format!("`method.name`: {e}")))?;
            let model = expert_model(&lm, &stats, file)?;
            Box::new(
                ExpertStrategy::new(
                    method,
                    file.method.options.clone(),
                    file.rounds.per_round,
                    model,
                    &devices,
                    aggregate,
                    BTreeMap::new(),
                )?
                .with_server_optimizer(file.train.server_optimizer.clone())?,
            )
        }
    };
    let mut evaluator = ModelEvaluator {
        config: cfg.clone(),
        tokenizer: tokenizer.clone(),
        test,
        eval: EvalConfig {
            format,
            max_len: 512,
            max_new_tokens: file.task.max_new_tokens,
            limit: Some(file.task.eval_limit),
            seed: file.test_seed(),
            length_norm: LengthNorm::Sum,
            pad_id,
        },
        stop_ids,
        scores: BTreeMap::new(),
        workers: file.rounds.workers,
        predictions: file.output.join(PREDICTIONS_FILE),
    };
    let run_cfg = RunConfig {
        n_rounds: file.rounds.rounds,
        seed: file.seed,
        deadline_s: file.fleet.deadline_s,
        eval_every: file.rounds.eval_every,
        target: target_config(file),
        server: DeviceProfile::cpu(),
        download: file.fleet.download,
    };

    let out = &file.output;
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    if !resume {
        let prov = Provenance {
            config: file.clone(),
            model_path: std::fs::canonicalize(model_path).unwrap_or(model_path.to_path_buf()),
            commit: build_commit(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            derived_from: None,
        };
        let text = serde_json::to_string_pretty(&prov).map_err(|e| Error::Config(e.to_string()))?;
        checkpoint::write_atomic(&out.join(PROVENANCE_FILE), text.as_bytes())?;
    }
    let mut clock = VirtualClock::new();
    let ckpt_dir = out.join(CHECKPOINT_DIR);
    let (mut coordinator, initial_metric) = if resume {
        let (state, global) = load_checkpoint(&ckpt_dir, &Device::Cpu)?;
        let previous = load_previous(&ckpt_dir, &state, &global, &Device::Cpu)?;
        let done = state.next_round.0.saturating_sub(1);
        keep_metrics_up_to(&out.join(METRICS_FILE), done)?;
        keep_predictions_up_to(&out.join(PREDICTIONS_FILE), done)?;
        let initial = read_initial(out)?;
        let c = Coordinator::resume(run_cfg, global, &state, strategy.as_mut(), &mut clock)?
            .with_previous(previous);
        (c, initial)
    } else {
        let global = initial_global(&lm);
        // Another method's run of the same model, task, data and seed (a suite's
        // sibling) may already have scored this very model: its metric is reused.
        let key = initial_key(file, model_path);
        // Answers already there are kept only with a reused metric, and only those
        // of the initial model (a suite copies them with the metric).
        let predictions = out.join(PREDICTIONS_FILE);
        let reused = reusable_initial(out, &key);
        if reused.is_some() {
            keep_predictions_up_to(&predictions, 0)?;
        } else if predictions.exists() {
            std::fs::remove_file(&predictions).map_err(|e| io(&predictions, e))?;
        }
        let initial = match reused {
            Some(metric) => metric,
            None => evaluator.score(0, &global)?,
        };
        std::fs::write(out.join(METRICS_FILE), "").map_err(|e| io(out, e))?;
        let text = serde_json::json!({ "initial_metric": initial, "key": key });
        std::fs::write(out.join(INITIAL_FILE), format!("{text}\n")).map_err(|e| io(out, e))?;
        (Coordinator::new(run_cfg, global)?, initial)
    };

    let metrics_path = out.join(METRICS_FILE);
    while !coordinator.finished() {
        let start = Instant::now();
        let history = coordinator.run_rounds(
            strategy.as_mut(),
            transport.as_mut(),
            &mut clock,
            Some(&mut evaluator),
            1,
            &mut |rec| rec.wall_seconds = Some(start.elapsed().as_secs_f64()),
        )?;
        for rec in history.records {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&metrics_path)
                .map_err(|e| io(&metrics_path, e))?;
            writeln!(f, "{}", rec.to_json_line()?).map_err(|e| io(&metrics_path, e))?;
            on_round(&rec);
            let every = file.rounds.checkpoint_every;
            let stop = interrupt.is_some_and(|i| i.load(Ordering::SeqCst));
            if stop || (every > 0 && rec.round.0 % every == 0) {
                let state = coordinator.state(strategy.as_ref(), &clock)?;
                save_checkpoint(
                    &ckpt_dir,
                    &state,
                    coordinator.global(),
                    coordinator.previous(),
                )?;
            }
            if stop && !coordinator.finished() {
                tracing::info!(round = rec.round.0, "stopping on request; checkpoint saved");
                return Err(Error::Interrupted {
                    round: rec.round.0,
                    dir: ckpt_dir,
                });
            }
        }
    }

    let all = read_records(&metrics_path)?;
    let last_eval = all.iter().rev().find_map(|r| r.eval);
    let final_metric = match (all.last(), last_eval) {
        (Some(last), Some(m)) if last.eval.is_some() => m,
        _ => evaluator.score(all.last().map_or(0, |r| r.round.0), coordinator.global())?,
    };
    save_hf_model(&out.join(FINAL_DIR), coordinator.global(), &lm)?;
    let summary = RunSummary {
        method: file.method.name.clone(),
        task: file.task.name.clone(),
        metric: metric_name(&evaluator),
        rounds: all.last().map_or(0, |r| r.round.0),
        initial_metric,
        final_metric,
        virtual_seconds: clock.now(),
        wall_seconds: all.iter().filter_map(|r| r.wall_seconds).sum(),
        time_to_target: coordinator.target_hit().map(|h| h.virtual_time_s),
        bytes_up: all.iter().map(|r| r.bytes_up).sum(),
        bytes_down: all.iter().map(|r| r.bytes_down).sum(),
        output: out.clone(),
    };
    let text = serde_json::to_string_pretty(&summary).map_err(|e| Error::Config(e.to_string()))?;
    checkpoint::write_atomic(&out.join(SUMMARY_FILE), text.as_bytes())?;
    Ok(summary)
}

/// `global` as an HF checkpoint folder in the key layout and dtypes `lm` was loaded
/// with, plus its tokenizer files.
fn save_hf_model(dir: &Path, global: &Global, lm: &LoadedModel) -> Result<()> {
    let params = ParamStore::from_tensors(global.iter().map(|(k, v)| (k.clone(), v.clone())))?;
    checkpoint::save_dir(
        dir,
        &lm.checkpoint.config_json,
        &params,
        &lm.checkpoint.layout,
    )?;
    if let Some(tokenizer) = &lm.tokenizer {
        save_tokenizer_files(dir, tokenizer, &lm.eos_ids, lm.chat_template.as_deref())?;
    }
    Ok(())
}

/// What produced a run: the resolved config, the model, the code (`run.json`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Provenance {
    pub config: RunFile,
    pub model_path: PathBuf,
    /// `git describe`-style commit of the source tree the binary was built from
    /// (`-dirty` with uncommitted changes), when built from a git checkout.
    pub commit: Option<String>,
    pub version: String,
    /// The run this one was computed from instead of trained (`derive`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derived_from: Option<PathBuf>,
}

pub const PROVENANCE_FILE: &str = "run.json";

/// The commit the binary was built from (see `build.rs`).
pub fn build_commit() -> Option<String> {
    option_env!("FLUXMOE_GIT_COMMIT")
        .filter(|c| !c.is_empty())
        .map(str::to_string)
}

/// Read a run folder's `run.json`.
pub fn read_provenance(run_dir: &Path) -> Result<Provenance> {
    let path = run_dir.join(PROVENANCE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// Write the global model of a run's last checkpoint as an HF folder at `out`, in the
/// layout of the model the run started from (`model` overrides the path in
/// `run.json`, e.g. when the model moved). Returns the round the checkpoint ends.
pub fn export(run_dir: &Path, model: Option<&Path>, out: &Path) -> Result<u32> {
    let prov = read_provenance(run_dir)?;
    let model_path = model.map_or(prov.model_path.clone(), Path::to_path_buf);
    let lm = load_model(&model_path, &Device::Cpu)?;
    let (state, global) = load_checkpoint(&run_dir.join(CHECKPOINT_DIR), &Device::Cpu)?;
    let expected: BTreeMap<&str, &[usize]> = lm
        .checkpoint
        .params
        .tensors()
        .map(|(n, t)| (n, t.dims()))
        .collect();
    for (name, t) in &global {
        match expected.get(name.as_str()) {
            Some(dims) if *dims == t.dims() => {}
            Some(dims) => {
                return Err(Error::Config(format!(
                    "checkpoint tensor `{name}` is {:?}, the model {} has {dims:?}",
                    t.dims(),
                    model_path.display()
                )))
            }
            None => {
                return Err(Error::Config(format!(
                    "checkpoint tensor `{name}` is not in the model {}",
                    model_path.display()
                )))
            }
        }
    }
    save_hf_model(out, &global, &lm)?;
    Ok(state.next_round.0.saturating_sub(1))
}

fn metric_name(evaluator: &ModelEvaluator) -> String {
    match evaluator.test.kind {
        fluxmoe_data::TaskKind::Generation { metric } => match metric {
            fluxmoe_data::GenerationMetric::RougeL => "rouge_l",
            fluxmoe_data::GenerationMetric::ExactMatch => "exact_match",
        },
        fluxmoe_data::TaskKind::MultipleChoice => "accuracy",
    }
    .to_string()
}

fn scheme(file: &RunFile) -> Result<PartitionScheme> {
    let p = &file.partition;
    Ok(match p.scheme.as_str() {
        "iid" => PartitionScheme::Iid { seed: file.seed },
        "dirichlet" => PartitionScheme::Dirichlet(DirichletConfig {
            alpha: p.alpha,
            min_partition_size: p.min_partition_size,
            self_balancing: p.self_balancing,
            seed: file.seed,
        }),
        "pathological" => PartitionScheme::Pathological {
            groups_per_participant: p.groups_per_participant,
            seed: file.seed,
        },
        "natural" => PartitionScheme::Natural,
        other => {
            return Err(Error::Config(format!(
            "`partition.scheme`: unknown scheme `{other}` (iid, dirichlet, pathological, natural)"
        )))
        }
    })
}

/// The tensors participants tune: `experts`, `all` (floating-point tensors) or
/// comma-separated name globs.
/// Each participant's device profile: built-in profiles assigned round-robin, memory
/// scaled by `fleet.memory_fraction`.
pub(crate) fn fleet(
    file: &RunFile,
    ids: &[ParticipantId],
) -> Result<Vec<(ParticipantId, DeviceProfile)>> {
    let profiles = file
        .fleet
        .profiles
        .iter()
        .map(
            |name| match file.fleet.custom.iter().find(|c| &c.name == name) {
                Some(custom) => {
                    custom
                        .validate()
                        .map_err(|e| Error::Config(format!("`fleet.custom`: {e}")))?;
                    Ok(custom.clone())
                }
                None => DeviceProfile::preset(name).map_err(|e| {
                    Error::Config(format!(
                        "`fleet.profiles`: {e} (or one of [[fleet.custom]])"
                    ))
                }),
            },
        )
        .collect::<Result<Vec<_>>>()?;
    let assignment = match &file.fleet.weights {
        None => fluxmoe_fed::Assignment::RoundRobin,
        Some(weights) => fluxmoe_fed::Assignment::Weighted {
            weights: weights.clone(),
            seed: file.seed,
        },
    };
    let fleet = FleetConfig {
        profiles,
        assignment,
    };
    let mut out = fleet.assign(ids)?;
    for (_, p) in &mut out {
        p.memory_bytes = (p.memory_bytes as f64 * file.fleet.memory_fraction) as u64;
    }
    Ok(out)
}

/// The run's target as the coordinator checks it (every task metric is higher-better).
pub(crate) fn target_config(file: &RunFile) -> Option<TargetConfig> {
    file.target.as_ref().map(|t| TargetConfig {
        value: t.value,
        higher_is_better: true,
        stop: t.stop,
    })
}

/// The expert model of `file`'s model at `model_path` and each participant's device:
/// what a budget depends on (`plan`, `derive`). Errs on a model without routed experts.
pub(crate) fn experts_and_fleet(
    file: &RunFile,
    model_path: &Path,
) -> Result<(ExpertModel, BTreeMap<ParticipantId, DeviceProfile>)> {
    let lm = load_model(model_path, &Device::Cpu)?;
    let stats = ModelStats::of(&lm.checkpoint.config, &lm.checkpoint.params);
    let model = expert_model(&lm, &stats, file)?;
    if model.experts.is_empty() {
        return Err(Error::Config(format!(
            "`model.path`: {} has no routed experts",
            model_path.display()
        )));
    }
    let ids: Vec<ParticipantId> = (0..file.partition.participants as u32)
        .map(ParticipantId)
        .collect();
    let devices = fleet(file, &ids)?.into_iter().collect();
    Ok((model, devices))
}

/// What the expert strategies plan with: every routed expert, its tensor names and
/// the memory model's inputs (f32 weights; activations of a full batch of `max_len`
/// tokens, as `fluxmoe_model::train::step_activation_bytes` counts them).
pub(crate) fn expert_model(
    lm: &LoadedModel,
    stats: &ModelStats,
    file: &RunFile,
) -> Result<ExpertModel> {
    let cfg = &lm.checkpoint.config;
    let mut experts = Vec::new();
    let mut keys = BTreeMap::new();
    let (mut expert_params, mut top_k) = (0usize, 1usize);
    for (l, f) in cfg.layers.iter().enumerate() {
        if let Ffn::Moe(m) = f {
            top_k = top_k.max(m.top_k);
            for e in 0..m.n_experts {
                let id = ExpertId {
                    layer: l,
                    expert: e,
                };
                let names =
                    [Proj::Gate, Proj::Up, Proj::Down].map(|p| expert_key(cfg.arch, l, e, p));
                expert_params = names
                    .iter()
                    .filter_map(|n| lm.checkpoint.params.tensor(n))
                    .map(|t| t.elem_count())
                    .sum();
                experts.push(id);
                keys.insert(id, names);
            }
        }
    }
    let moe_layers = stats.layers.iter().filter(|l| l.routed.is_some()).count();
    let per_layer = experts.len() / moe_layers.max(1);
    let activation_bytes = step_activation_bytes(cfg, file.rounds.batch_size, file.task.max_len);
    Ok(ExpertModel {
        experts,
        keys,
        memory: MemoryInputs {
            frozen_non_expert_bytes: 4 * (stats.total_params - stats.expert_params) as u64,
            activation_bytes,
            overhead_bytes: (file.method.options.overhead_mib * (1u64 << 20) as f64) as u64,
            expert_bytes: 4 * expert_params as u64,
            moe_layers,
            experts_per_layer: per_layer,
        },
        top_k,
    })
}

fn trainable_names(lm: &LoadedModel, spec: &str) -> Result<Vec<String>> {
    let cfg = &lm.checkpoint.config;
    let params = &lm.checkpoint.params;
    let names: Vec<String> = match spec {
        "experts" => {
            let mut v = Vec::new();
            for (l, ffn) in cfg.layers.iter().enumerate() {
                if let Ffn::Moe(m) = ffn {
                    for e in 0..m.n_experts {
                        v.extend(Proj::ALL.map(|p| expert_key(cfg.arch, l, e, p)));
                    }
                }
            }
            v
        }
        "all" => params
            .tensors()
            .filter(|(_, t)| t.dtype().is_float())
            .map(|(n, _)| n.to_string())
            .collect(),
        globs => params
            .names()
            .filter(|n| globs.split(',').any(|g| glob_match(g.trim(), n)))
            .map(str::to_string)
            .collect(),
    };
    if names.is_empty() {
        return Err(Error::Config(format!(
            "`train.trainable`: `{spec}` selects no tensor of this model"
        )));
    }
    Ok(names)
}

pub(crate) fn io(path: &Path, e: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

/// Drop the predictions of rounds after `last_round` (a resumed run scores them again).
/// A line that does not parse (a crash cut the last append short) is dropped with a
/// warning: the answers are a record, not state a resume needs.
fn keep_predictions_up_to(path: &Path, last_round: u32) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let mut kept = String::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match serde_json::from_str::<Prediction>(line) {
            Ok(p) if p.round <= last_round => {
                kept.push_str(line);
                kept.push('\n');
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(file = %path.display(), line = i + 1, "dropped: {e}"),
        }
    }
    checkpoint::write_atomic(path, kept.as_bytes()).map_err(Error::from)
}

/// The round records of a run's `metrics.jsonl`.
pub fn read_records(path: &Path) -> Result<Vec<RoundRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| Error::Config(format!("{} line {}: {e}", path.display(), i + 1)))
        })
        .collect()
}

/// On resume, drop records of rounds after the checkpoint (they are run again).
fn keep_metrics_up_to(path: &Path, last_round: u32) -> Result<()> {
    let kept: Vec<String> = read_records(path)?
        .into_iter()
        .filter(|r| r.round.0 <= last_round)
        .map(|r| r.to_json_line())
        .collect::<fluxmoe_fed::Result<_>>()?;
    let mut text = kept.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    checkpoint::write_atomic(path, text.as_bytes()).map_err(Error::from)
}

/// What the metric before any round depends on: the model, the task with its
/// evaluation settings, the partition, the seed (the test split) and the build.
/// Methods, rounds, training and fleet do not enter.
pub fn initial_key(file: &RunFile, model_path: &Path) -> String {
    let model = std::fs::canonicalize(model_path).unwrap_or(model_path.to_path_buf());
    serde_json::json!({
        "model": model,
        "task": file.task,
        "partition": file.partition,
        "seed": file.seed,
        "build": [env!("CARGO_PKG_VERSION").to_string(), build_commit().unwrap_or_default()],
    })
    .to_string()
}

/// The metric of an `initial.json` already in `out` whose key is `key`.
fn reusable_initial(out: &Path, key: &str) -> Option<f64> {
    let text = std::fs::read_to_string(out.join(INITIAL_FILE)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    if v.get("key")?.as_str()? != key {
        return None;
    }
    v.get("initial_metric")?.as_f64().filter(|m| m.is_finite())
}

/// The metric of the model before any round (`initial.json`).
pub fn read_initial(out: &Path) -> Result<f64> {
    let path = out.join(INITIAL_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    v.get("initial_metric")
        .and_then(serde_json::Value::as_f64)
        .ok_or_else(|| Error::Config(format!("{}: no initial_metric", path.display())))
}

#[cfg(test)]
mod tests {
    use super::map_on_cores;

    #[test]
    fn map_on_cores_keeps_item_order_and_reports_the_first_error() {
        for n in [0usize, 1, 2, 7, 101] {
            let items: Vec<usize> = (0..n).collect();
            let out: Vec<usize> = map_on_cores(&items, |&i| Ok::<_, String>(i * 3)).unwrap();
            assert_eq!(
                out,
                items.iter().map(|i| i * 3).collect::<Vec<_>>(),
                "{n} items"
            );
        }
        let items: Vec<usize> = (0..50).collect();
        let err = map_on_cores(&items, |&i| if i % 20 == 19 { Err(i) } else { Ok(i) }).unwrap_err();
        assert_eq!(err, 19);
    }
}
