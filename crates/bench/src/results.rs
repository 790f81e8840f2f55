//! What a benchmark produces: one [`RunResult`] per method × task × seed, read back from
//! the run's output folder (`metrics.jsonl`, `summary.json`, `run.json`), gathered into
//! [`SuiteResults`]. Reports and plots are pure functions of these.

use std::path::Path;

use fluxmoe_fed::RoundRecord;
use fluxmoe_flux::strategy::RoundReport;
use fluxmoe_sim::run::{read_initial, read_records, METRICS_FILE};
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// One evaluation of the global model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// 0 = before any round.
    pub round: u32,
    pub virtual_s: f64,
    pub measured_s: f64,
    pub metric: f64,
}

/// Seconds summed over rounds, per phase of the round's critical path: the slowest
/// participant's phases (profiling counted where not hidden) and the aggregation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseBreakdown {
    pub compute: f64,
    pub profile: f64,
    pub pcie: f64,
    pub upload: f64,
    pub download: f64,
    pub aggregate: f64,
}

impl PhaseBreakdown {
    pub fn total(&self) -> f64 {
        self.compute + self.profile + self.pcie + self.upload + self.download + self.aggregate
    }
}

/// One participant's expert roles in one round (FLUX and the baselines).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoleRecord {
    pub round: u32,
    pub participant: u32,
    /// `(layer, expert)` of tuning, exploration and dropped experts; the rest merged.
    pub tuning: Vec<(usize, usize)>,
    pub exploration: Vec<(usize, usize)>,
    pub dropped: Vec<(usize, usize)>,
    pub b_non: usize,
}

/// Mean activation share per expert of each MoE layer in one round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivationRecord {
    pub round: u32,
    pub layers: Vec<(usize, Vec<f64>)>,
}

/// One method on one task with one seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub method: String,
    /// Variant label within the method (ablations), empty for the plain method.
    pub variant: String,
    pub task: String,
    pub seed: u64,
    pub metric: String,
    pub target: Option<f64>,
    /// Virtual seconds until the target was first reached.
    pub tta_virtual_s: Option<f64>,
    /// Measured seconds of the rounds up to that point.
    pub tta_measured_s: Option<f64>,
    pub rounds_to_target: Option<u32>,
    pub rounds: u32,
    pub initial_metric: f64,
    pub final_metric: f64,
    pub best_metric: f64,
    pub virtual_s: f64,
    pub measured_s: f64,
    pub bytes_moved: u64,
    /// Largest measured peak resident memory of a participant (Linux), bytes.
    pub peak_rss_bytes: Option<u64>,
    /// Largest heap peak of one participant's training call above its start, bytes
    /// (its own memory; measured when participants train one at a time).
    #[serde(default)]
    pub participant_heap_peak_bytes: Option<u64>,
    /// Share of the virtual time spent on FLUX's own work (profiling on the critical
    /// path and merging), `None` for methods without it.
    pub overhead_share: Option<f64>,
    pub curve: Vec<CurvePoint>,
    pub phases: PhaseBreakdown,
    pub roles: Vec<RoleRecord>,
    pub activation: Vec<ActivationRecord>,
}

/// Every run of a suite plus what reproduces it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SuiteResults {
    pub suite: String,
    pub description: String,
    /// Commit of the binary that ran it (`-dirty` with local changes).
    pub commit: Option<String>,
    /// The suite file as run (TOML).
    pub suite_file: String,
    pub runs: Vec<RunResult>,
}

/// Read one run's folder. `merge_flops_share` is not recorded separately, so the
/// overhead counts profiling on the critical path only.
pub fn read_run(
    dir: &Path,
    method: &str,
    variant: &str,
    task: &str,
    seed: u64,
    target: Option<f64>,
) -> Result<RunResult> {
    let records = read_records(&dir.join(METRICS_FILE))?;
    let initial = read_initial(dir)?;
    let summary: fluxmoe_sim::RunSummary = {
        let path = dir.join(fluxmoe_sim::run::SUMMARY_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| crate::error::io(&path, e))?;
        serde_json::from_str(&text)
            .map_err(|e| crate::Error::Report(format!("{}: {e}", path.display())))?
    };
    Ok(from_records(
        &records, initial, &summary, method, variant, task, seed, target,
    ))
}

/// [`RunResult`] from a run's records (pure; see [`read_run`]).
#[allow(clippy::too_many_arguments)]
pub fn from_records(
    records: &[RoundRecord],
    initial_metric: f64,
    summary: &fluxmoe_sim::RunSummary,
    method: &str,
    variant: &str,
    task: &str,
    seed: u64,
    target: Option<f64>,
) -> RunResult {
    let mut curve = vec![CurvePoint {
        round: 0,
        virtual_s: 0.0,
        measured_s: 0.0,
        metric: initial_metric,
    }];
    let mut measured = 0.0;
    let mut phases = PhaseBreakdown::default();
    let (mut tta_v, mut tta_m, mut tta_r) = (None, None, None);
    let mut roles = Vec::new();
    let mut activation = Vec::new();
    let mut profile_critical = 0.0;
    let mut peak: Option<u64> = None;
    let mut heap_peak: Option<u64> = None;
    for r in records {
        measured += r.wall_seconds.unwrap_or(0.0);
        if let Some(m) = r.eval {
            curve.push(CurvePoint {
                round: r.round.0,
                virtual_s: r.virtual_time_end,
                measured_s: measured,
                metric: m,
            });
            if tta_v.is_none() && target.is_some_and(|t| m >= t) {
                tta_v = Some(r.virtual_time_end);
                tta_m = Some(measured);
                tta_r = Some(r.round.0);
            }
        }
        if let Some(slowest) = r
            .times
            .iter()
            .max_by(|a, b| a.critical_s().total_cmp(&b.critical_s()))
        {
            let p = &slowest.phases;
            phases.compute += p.compute + p.quant;
            let prof = slowest.profile_s - slowest.profile_hidden_s;
            phases.profile += prof;
            profile_critical += prof;
            phases.pcie += p.pcie;
            phases.upload += p.upload;
            phases.download += p.download;
        }
        phases.aggregate += r.aggregate_s;
        for t in &r.times {
            if let Some(b) = t.peak_rss_bytes {
                peak = Some(peak.map_or(b, |p: u64| p.max(b)));
            }
            if let Some(b) = t.heap_peak_bytes {
                heap_peak = Some(heap_peak.map_or(b, |p: u64| p.max(b)));
            }
        }
        if let Ok(report) = serde_json::from_value::<RoundReport>(r.strategy.clone()) {
            let pairs = |v: &[fluxmoe_flux::roles::ExpertId]| -> Vec<(usize, usize)> {
                v.iter().map(|e| (e.layer, e.expert)).collect()
            };
            for (p, rr) in &report.roles {
                roles.push(RoleRecord {
                    round: r.round.0,
                    participant: *p,
                    tuning: pairs(&rr.tuning),
                    exploration: pairs(&rr.exploration),
                    dropped: pairs(&rr.dropped),
                    b_non: rr.b_non,
                });
            }
            if !report.activation.is_empty() {
                activation.push(ActivationRecord {
                    round: r.round.0,
                    layers: report.activation,
                });
            }
        }
    }
    let best = curve
        .iter()
        .map(|c| c.metric)
        .fold(f64::NEG_INFINITY, f64::max);
    let uses_profiling = records
        .iter()
        .any(|r| r.times.iter().any(|t| t.profile_s > 0.0));
    RunResult {
        method: method.to_string(),
        variant: variant.to_string(),
        task: task.to_string(),
        seed,
        metric: summary.metric.clone(),
        target,
        tta_virtual_s: tta_v,
        tta_measured_s: tta_m,
        rounds_to_target: tta_r,
        rounds: summary.rounds,
        initial_metric,
        final_metric: summary.final_metric,
        best_metric: best,
        virtual_s: summary.virtual_seconds,
        measured_s: summary.wall_seconds,
        bytes_moved: summary.bytes_up + summary.bytes_down,
        peak_rss_bytes: peak,
        participant_heap_peak_bytes: heap_peak,
        overhead_share: (uses_profiling && summary.virtual_seconds > 0.0)
            .then(|| profile_critical / summary.virtual_seconds),
        curve,
        phases,
        roles,
        activation,
    }
}
