//! The run configuration (`fluxmoe run CONFIG.toml`): every section, its keys and
//! defaults. Unknown keys are errors naming the key. `examples/quickstart.toml` is the
//! commented reference; [`RunFile::quickstart`] is the built-in default run.

use std::path::{Path, PathBuf};

use fluxmoe_fed::ServerOptimizerConfig;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunFile {
    /// Seed of everything random in the run.
    #[serde(default)]
    pub seed: u64,
    /// Output folder (metrics.jsonl, summary.json, checkpoints, final model).
    pub output: PathBuf,
    pub model: ModelSection,
    pub task: TaskSection,
    pub partition: PartitionSection,
    pub rounds: RoundsSection,
    #[serde(default)]
    pub train: TrainSection,
    #[serde(default)]
    pub method: MethodSection,
    #[serde(default)]
    pub fleet: FleetSection,
    pub target: Option<TargetSection>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A checkpoint folder, a .gguf file, or `builtin:smollm2-moe` (SmolLM2-135M
    /// sparse-upcycled to 4 experts, top-2, built and cached on first use).
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSection {
    /// A task name as `fluxmoe eval --task` takes it (math, wordnet-define, jsonl:PATH, ...).
    pub name: String,
    /// The mathematics data folder.
    #[serde(default = "default_math_dir")]
    pub math_dir: PathBuf,
    /// Longest training sequence (prompt + answer), in tokens.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// Test examples scored per evaluation (a seeded subset).
    #[serde(default = "default_eval_limit")]
    pub eval_limit: usize,
    /// Seeds the 80/20 train/test split and the scored test subset; unset: the run's
    /// `seed`. Set it to compare seeds on the same test examples, so that a fixed
    /// target means the same on each (the suites do); the run's `seed` still drives
    /// the partition, participant sampling and training.
    #[serde(default)]
    pub test_seed: Option<u64>,
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSection {
    pub participants: usize,
    /// iid | dirichlet | pathological | natural.
    #[serde(default = "default_scheme")]
    pub scheme: String,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default = "default_min_partition_size")]
    pub min_partition_size: usize,
    #[serde(default)]
    pub self_balancing: bool,
    #[serde(default = "default_groups_per_participant")]
    pub groups_per_participant: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundsSection {
    pub rounds: u32,
    pub per_round: usize,
    #[serde(default = "default_local_steps")]
    pub local_steps: usize,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Evaluate every this many rounds (0: only at the start and the end).
    #[serde(default = "one")]
    pub eval_every: u32,
    /// Save a resumable checkpoint every this many rounds (0: never).
    #[serde(default = "one")]
    pub checkpoint_every: u32,
    /// Participants trained at once in this process (threads); results are identical
    /// for any value, memory grows with it.
    #[serde(default = "one_usize")]
    pub workers: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSection {
    pub lr: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    /// FedProx's μ: local training adds `μ/2 · ||w − w_global||²` (0 = plain FedAvg).
    pub fedprox_mu: f64,
    /// What participants tune: `experts` (every routed expert), `all`, or
    /// comma-separated name globs.
    pub trainable: String,
    /// Refuse a participant's update whole if one of its deltas has an L2 norm above
    /// this (a guard against broken or hostile participants; unset: no bound). The
    /// aggregation checks it; a deployment's coordinator also checks it on arrival.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_delta_norm: Option<f64>,
    /// How the server turns each round's weighted mean delta into a step:
    /// `{ kind = "sgd", lr = 1.0 }` is FedAvg (the default); `lr < 1` damps every
    /// round's update; `{ kind = "adam", lr, beta1, beta2, tau }` is FedAdam (Reddi et
    /// al. 2021). The same for every method.
    #[serde(skip_serializing_if = "ServerOptimizerConfig::is_fedavg")]
    pub server_optimizer: ServerOptimizerConfig,
}

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            lr: 1e-4,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            fedprox_mu: 0.0,
            trainable: "experts".into(),
            max_delta_norm: None,
            server_optimizer: ServerOptimizerConfig::fedavg(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MethodSection {
    /// `fedavg-full`, `flux`, or a baseline: `fmd` (offloading), `fmq` (INT4
    /// quantized), `fmes` (expert selection).
    pub name: String,
    /// `[method.options]`: FLUX's options (METHOD.md [ours] choices); the baselines
    /// read `tuning_factor` and, FMES, `profile_tokens`.
    pub options: fluxmoe_flux::strategy::FluxOptions,
}

impl Default for MethodSection {
    fn default() -> Self {
        MethodSection {
            name: "fedavg-full".into(),
            options: Default::default(),
        }
    }
}

/// Methods `[method] name` accepts.
pub const METHODS: [&str; 5] = ["fedavg-full", "flux", "fmd", "fmq", "fmes"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetSection {
    /// Profile names: built-in (rtx3060, rtx3080, rtx4070, rtx4090, cpu) or from
    /// `[[fleet.custom]]`; assigned round-robin, or by `weights`.
    pub profiles: Vec<String>,
    /// One weight per entry of `profiles`: each participant draws its profile with
    /// probability ∝ weight (seeded by the run seed). Unset: round-robin.
    pub weights: Option<Vec<f64>>,
    /// Extra device profiles (`name`, `memory_bytes`, `train_flops`,
    /// `quant_forward_flops`, `pcie_bytes_per_s`, `uplink_bytes_per_s`,
    /// `downlink_bytes_per_s`), usable by name in `profiles`.
    pub custom: Vec<fluxmoe_fed::DeviceProfile>,
    /// Probability that a sampled participant drops out of a round.
    pub dropout: f64,
    /// Virtual seconds a round waits for replies.
    pub deadline_s: Option<f64>,
    /// Share of each device's memory available to fine-tuning (the rest is taken by
    /// other work); scales every profile's `memory_bytes`.
    pub memory_fraction: f64,
    /// What a participant downloads before it trains: `"changed"` (default) only the
    /// global tensors changed since its last round, since it keeps its copy and
    /// starts from the public initial checkpoint; `"everything"` every tensor it
    /// computes with, every round.
    pub download: fluxmoe_fed::Download,
}

impl Default for FleetSection {
    fn default() -> Self {
        FleetSection {
            profiles: vec![
                "rtx3060".into(),
                "rtx3080".into(),
                "rtx4070".into(),
                "rtx4090".into(),
            ],
            weights: None,
            custom: Vec::new(),
            dropout: 0.0,
            deadline_s: None,
            memory_fraction: 1.0,
            download: fluxmoe_fed::Download::Changed,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    /// The task metric value that counts as reached (higher is better).
    pub value: f64,
    /// Stop at the first evaluation that reaches it.
    #[serde(default)]
    pub stop: bool,
}

fn default_math_dir() -> PathBuf {
    PathBuf::from("../shared/data/mathematics")
}
fn default_max_len() -> usize {
    128
}
fn default_eval_limit() -> usize {
    50
}
fn default_max_new_tokens() -> usize {
    32
}
fn default_scheme() -> String {
    "iid".into()
}
fn default_alpha() -> f64 {
    0.5
}
fn default_min_partition_size() -> usize {
    2
}
fn default_groups_per_participant() -> usize {
    2
}
fn default_local_steps() -> usize {
    4
}
fn default_batch_size() -> usize {
    4
}
fn one() -> u32 {
    1
}
fn one_usize() -> usize {
    1
}

/// The built-in quickstart run, also shipped as `examples/quickstart.toml`.
pub const QUICKSTART: &str = include_str!("../../../examples/quickstart.toml");

impl RunFile {
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let file: RunFile =
            toml::from_str(text).map_err(|e| Error::Config(format!("{origin}: {e}")))?;
        file.validate()?;
        Ok(file)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    pub fn quickstart() -> Result<Self> {
        Self::from_toml(QUICKSTART, "built-in quickstart")
    }

    /// The seed of the train/test split and of the scored test subset:
    /// `task.test_seed`, else the run's `seed`.
    pub fn test_seed(&self) -> u64 {
        self.task.test_seed.unwrap_or(self.seed)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, msg: String| Err(Error::Config(format!("`{field}`: {msg}")));
        if self.partition.participants == 0 {
            return bad("partition.participants", "must be >= 1".into());
        }
        if self.rounds.per_round == 0 || self.rounds.per_round > self.partition.participants {
            return bad(
                "rounds.per_round",
                format!(
                    "must be in 1..={} (partition.participants), got {}",
                    self.partition.participants, self.rounds.per_round
                ),
            );
        }
        if self.rounds.rounds == 0 {
            return bad("rounds.rounds", "must be >= 1".into());
        }
        if self.rounds.local_steps == 0 || self.rounds.batch_size == 0 {
            return bad(
                "rounds.local_steps",
                "local_steps and batch_size must be >= 1".into(),
            );
        }
        if !(self.train.lr.is_finite() && self.train.lr > 0.0) {
            return bad("train.lr", format!("must be > 0, got {}", self.train.lr));
        }
        if self.rounds.workers == 0 {
            return bad("rounds.workers", "must be >= 1".into());
        }
        if let Some(max) = self.train.max_delta_norm {
            if !(max.is_finite() && max > 0.0) {
                return bad("train.max_delta_norm", format!("must be > 0, got {max}"));
            }
        }
        if let Err(e) = self.train.server_optimizer.validate() {
            return match e {
                fluxmoe_fed::Error::Config { field, msg } => bad(&format!("train.{field}"), msg),
                other => bad("train.server_optimizer", other.to_string()),
            };
        }
        let mu = self.train.fedprox_mu;
        if !(mu.is_finite() && mu >= 0.0) {
            return bad("train.fedprox_mu", format!("must be >= 0, got {mu}"));
        }
        if !METHODS.contains(&self.method.name.as_str()) {
            return bad(
                "method.name",
                format!(
                    "unknown method `{}` (available: {})",
                    self.method.name,
                    METHODS.join(", ")
                ),
            );
        }
        self.method
            .options
            .validate()
            .map_err(|e| Error::Config(format!("`method.options`: {e}")))?;
        let f = self.fleet.memory_fraction;
        if !(f > 0.0 && f <= 1.0) {
            return bad(
                "fleet.memory_fraction",
                format!("must be in (0, 1], got {f}"),
            );
        }
        if self.fleet.profiles.is_empty() {
            return bad("fleet.profiles", "must name at least one profile".into());
        }
        if self.task.max_len < 2 {
            return bad("task.max_len", "must be >= 2".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quickstart_parses_and_unknown_keys_are_named() {
        let q = RunFile::quickstart().unwrap();
        assert_eq!(q.method.name, "fedavg-full");
        let bad = QUICKSTART.replace("[rounds]", "[rounds]\nlocal_stpes = 3");
        let err = RunFile::from_toml(&bad, "x.toml").unwrap_err().to_string();
        assert!(err.contains("unknown field `local_stpes`"), "{err}");
        let bad = QUICKSTART.replace("per_round = 2", "per_round = 99");
        let err = RunFile::from_toml(&bad, "x.toml").unwrap_err().to_string();
        assert!(err.contains("rounds.per_round"), "{err}");
        let bad = QUICKSTART.replace("name = \"fedavg-full\"", "name = \"fluxx\"");
        assert!(RunFile::from_toml(&bad, "x.toml")
            .unwrap_err()
            .to_string()
            .contains("unknown method `fluxx`"));
        let flux = QUICKSTART.replace(
            "name = \"fedavg-full\"",
            "name = \"flux\"\n[method.options]\npca_dim = 8\nalpha = \"freq\"",
        );
        let f = RunFile::from_toml(&flux, "x.toml").unwrap();
        assert_eq!(f.method.options.pca_dim, 8);
        let bad = flux.replace("pca_dim = 8", "pca_dims = 8");
        let err = RunFile::from_toml(&bad, "x.toml").unwrap_err().to_string();
        assert!(err.contains("unknown field `pca_dims`"), "{err}");
        let bad = flux.replace("pca_dim = 8", "eps0 = 2.0");
        let err = RunFile::from_toml(&bad, "x.toml").unwrap_err().to_string();
        assert!(err.contains("eps0"), "{err}");
    }

    #[test]
    fn server_optimizer_parses_defaults_to_fedavg_and_bad_values_are_named() {
        let q = RunFile::quickstart().unwrap();
        assert!(q.train.server_optimizer.is_fedavg());
        // The default is left out of a saved config, so older run.json files compare equal.
        assert!(!toml::to_string(&q).unwrap().contains("server_optimizer"));
        let with = |line: &str| QUICKSTART.replace("[train]", &format!("[train]\n{line}"));
        let adam = RunFile::from_toml(
            &with("server_optimizer = { kind = \"adam\", lr = 0.01, beta1 = 0.9, beta2 = 0.99, tau = 1e-3 }"),
            "x.toml",
        )
        .unwrap();
        assert_eq!(
            adam.train.server_optimizer,
            ServerOptimizerConfig::Adam {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.99,
                tau: 1e-3
            }
        );
        let back = RunFile::from_toml(&toml::to_string(&adam).unwrap(), "y.toml").unwrap();
        assert_eq!(back.train.server_optimizer, adam.train.server_optimizer);
        // Each bad table is an error naming what is wrong.
        for (table, named) in [
            (
                "{ kind = \"sgd\", lr = 0.5, momentum = 0.9 }",
                "unknown field `momentum`",
            ),
            ("{ kind = \"yogi\", lr = 0.5 }", "yogi"),
            ("{ kind = \"sgd\", lr = 0.0 }", "train.server_optimizer.lr"),
        ] {
            let err = RunFile::from_toml(&with(&format!("server_optimizer = {table}")), "x.toml")
                .unwrap_err()
                .to_string();
            assert!(err.contains(named), "{table}: {err}");
        }
    }
}
