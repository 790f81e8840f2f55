//! A run whose outcome follows from another finished run without training again.
//!
//! FMD (offloading) trains exactly what fedavg-full trains: every expert, the same
//! sampled participants, batches, updates and evaluations (the same seeds drive both).
//! They differ only on the virtual clock: each FMD participant also spends the PCIe
//! time of moving what does not fit in its device memory (`offload_bytes_per_step`,
//! the rule `ExpertStrategy` plans FMD with). [`derive_offloading`] writes the FMD run
//! folder from a fedavg-full run folder: its records with that time added to every
//! participant and the round times, clock and time to target recomputed as the
//! coordinator computes them. A test checks it against a simulated FMD run.
//!
//! What the derived folder does not have: the final model and checkpoint (the source
//! run's are the same weights) and the reply metrics only the expert methods report
//! (`tuned_experts`, `train_pool`, ...). Measured seconds are the source run's: they
//! are the measurements of this very computation.

use std::path::{Path, PathBuf};

use fluxmoe_fed::train_seconds;
use fluxmoe_flux::strategy::{all_tuning_report, offload_bytes_per_step};

use crate::config::RunFile;
use crate::run::{
    build_commit, experts_and_fleet, io, read_provenance, read_records, target_config, Provenance,
    RunSummary, INITIAL_FILE, METRICS_FILE, PREDICTIONS_FILE, PROVENANCE_FILE, SUMMARY_FILE,
};
use crate::{Error, Result};

/// The method whose runs [`derive_offloading`] writes, and the one it reads.
pub const DERIVED: &str = "fmd";
pub const SOURCE: &str = "fedavg-full";

/// `Ok` when `file` (an FMD run) is `source` (a fedavg-full run's config) with only the
/// method and the output folder changed; else an error naming the first setting that
/// differs.
pub fn check_derivable(source: &RunFile, file: &RunFile) -> Result<()> {
    if file.method.name != DERIVED || source.method.name != SOURCE {
        return Err(Error::Config(format!(
            "only a {DERIVED} run derives, from a {SOURCE} run (got {} from {})",
            file.method.name, source.method.name
        )));
    }
    if file.fleet.deadline_s.is_some() {
        // With a deadline the longer FMD rounds could drop participants fedavg-full kept.
        return Err(Error::Config(
            "`fleet.deadline_s` is set: FMD's slower rounds could drop participants, so it must run".into(),
        ));
    }
    let normalised = |f: &RunFile| -> Result<serde_json::Value> {
        let mut f = f.clone();
        f.method.name = DERIVED.into();
        f.output = PathBuf::new();
        serde_json::to_value(&f).map_err(|e| Error::Config(e.to_string()))
    };
    let (a, b) = (normalised(source)?, normalised(file)?);
    match first_difference(&a, &b, String::new()) {
        None => Ok(()),
        Some(path) => Err(Error::Config(format!(
            "the {SOURCE} run differs from this {DERIVED} run in `{path}`"
        ))),
    }
}

/// The dotted path of the first value where `a` and `b` differ.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value, at: String) -> Option<String> {
    use serde_json::Value::Object;
    match (a, b) {
        (Object(x), Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => first_difference(u, v, path),
                    _ => Some(path),
                }
            })
        }
        _ if a == b => None,
        _ => Some(if at.is_empty() {
            "(top level)".into()
        } else {
            at
        }),
    }
}

/// Write FMD run `file` (its `output` folder) from the finished fedavg-full run in
/// `source_dir`, with the model at `model_path` (for the memory model's inputs).
pub fn derive_offloading(
    source_dir: &Path,
    file: &RunFile,
    model_path: &Path,
) -> Result<RunSummary> {
    let prov = read_provenance(source_dir)?;
    check_derivable(&prov.config, file)?;
    let summary_path = source_dir.join(SUMMARY_FILE);
    let text = std::fs::read_to_string(&summary_path).map_err(|e| io(&summary_path, e))?;
    let source: RunSummary = serde_json::from_str(&text)
        .map_err(|e| Error::Config(format!("{}: {e}", summary_path.display())))?;

    let (model, devices) = experts_and_fleet(file, model_path)?;
    let memory_model = file.method.options.memory_model();
    let steps = file.rounds.local_steps as u64;

    let target = target_config(file);
    let mut records = read_records(&source_dir.join(METRICS_FILE))?;
    let (mut now, mut hit) = (0.0f64, None);
    for rec in &mut records {
        for t in &mut rec.times {
            let device = devices.get(&t.participant).ok_or_else(|| {
                Error::Config(format!(
                    "round {}: participant {} is not in this fleet",
                    rec.round, t.participant
                ))
            })?;
            let per_step = offload_bytes_per_step(
                &model.memory,
                &memory_model,
                model.experts.len(),
                device.memory_bytes,
            )?;
            t.phases.pcie = (per_step * steps) as f64 / device.pcie_bytes_per_s;
            t.phases = t.phases.totalled();
        }
        rec.train_s = train_seconds(&rec.times, file.fleet.deadline_s);
        rec.round_s = rec.train_s + rec.aggregate_s;
        now += rec.round_s;
        rec.virtual_time_end = now;
        rec.strategy = serde_json::to_value(all_tuning_report(&rec.participants, &model.experts))
            .map_err(|e| Error::Config(e.to_string()))?;
        if let (None, Some(metric), Some(target)) = (hit, rec.eval, &target) {
            if target.reached(metric) {
                hit = Some(now);
            }
        }
    }

    let out = &file.output;
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let prov = Provenance {
        config: file.clone(),
        model_path: std::fs::canonicalize(model_path).unwrap_or(model_path.to_path_buf()),
        commit: build_commit(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        derived_from: Some(source_dir.to_path_buf()),
    };
    write_json(&out.join(PROVENANCE_FILE), &prov)?;
    for name in [INITIAL_FILE, PREDICTIONS_FILE] {
        let from = source_dir.join(name);
        if from.exists() {
            let to = out.join(name);
            std::fs::copy(&from, &to).map_err(|e| io(&to, e))?;
        }
    }
    let mut lines = String::new();
    for rec in &records {
        lines.push_str(&rec.to_json_line()?);
        lines.push('\n');
    }
    let metrics = out.join(METRICS_FILE);
    fluxmoe_model::checkpoint::write_atomic(&metrics, lines.as_bytes())?;
    let summary = RunSummary {
        method: DERIVED.into(),
        virtual_seconds: now,
        time_to_target: hit,
        output: out.clone(),
        ..source
    };
    write_json(&out.join(SUMMARY_FILE), &summary)?;
    Ok(summary)
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Config(e.to_string()))?;
    fluxmoe_model::checkpoint::write_atomic(path, text.as_bytes()).map_err(Error::from)
}
