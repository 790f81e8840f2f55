//! `fluxmoe plan`: each participant's memory budget under a run config, before running
//! it (METHOD.md step 3), so a user sees why a method tunes what it tunes.

use fluxmoe_flux::budget::{fleet_budgets, Budget, MemoryInputs, TuneCap};
use fluxmoe_flux::strategy::Method;
use serde::Serialize;

use crate::config::RunFile;
use crate::run::experts_and_fleet;
use crate::Result;

/// One participant's budget.
#[derive(Debug, Clone, Serialize)]
pub struct PlanRow {
    pub participant: u32,
    pub device: String,
    /// `Err` text when the budget cannot hold one tuning expert.
    pub budget: std::result::Result<Budget, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub method: String,
    pub memory: MemoryInputs,
    pub total_experts: usize,
    pub rows: Vec<PlanRow>,
}

/// Budgets of every participant of `file` with the model at `model_path`.
pub fn plan(file: &RunFile, model_path: &std::path::Path) -> Result<PlanReport> {
    let (model, devices) = experts_and_fleet(file, model_path)?;
    let opts = &file.method.options;
    // As `ExpertStrategy::new` plans; fedavg-full has no budget cap.
    let cap = serde_json::from_value::<Method>(serde_json::Value::String(file.method.name.clone()))
        .map_or(TuneCap::None, |m| opts.tune_cap_for(m));
    let rows = fleet_budgets(&devices, &model.memory, &opts.memory_model(), cap)
        .into_iter()
        .map(|(id, budget)| PlanRow {
            participant: id.0,
            budget: budget.map_err(|e| e.to_string()),
            device: devices[&id].name.clone(),
        })
        .collect();
    Ok(PlanReport {
        method: file.method.name.clone(),
        total_experts: model.experts.len(),
        memory: model.memory,
        rows,
    })
}

impl PlanReport {
    /// A plain-text table in MiB.
    pub fn table(&self) -> String {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let m = &self.memory;
        let mut out = format!(
            "method {}: {} routed experts ({} MoE layers x {}), {:.2} MiB each; fixed = frozen non-expert {:.1} + activations {:.1} + overhead {:.1} MiB\n",
            self.method,
            self.total_experts,
            m.moe_layers,
            m.experts_per_layer,
            mib(m.expert_bytes),
            mib(m.frozen_non_expert_bytes),
            mib(m.activation_bytes),
            mib(m.overhead_bytes),
        );
        out.push_str(&format!(
            "{:>11} {:>9} {:>11} {:>9} {:>6} {:>11} {:>6} {:>11} {:>9}\n",
            "participant",
            "device",
            "memory MiB",
            "fixed",
            "B_tune",
            "tuning MiB",
            "B_non",
            "merged MiB",
            "free MiB"
        ));
        for r in &self.rows {
            match &r.budget {
                Ok(b) => out.push_str(&format!(
                    "{:>11} {:>9} {:>11.1} {:>9.1} {:>6} {:>11.1} {:>6} {:>11.1} {:>9.1}\n",
                    r.participant,
                    r.device,
                    mib(b.memory_bytes),
                    mib(b.fixed_bytes),
                    b.b_tune,
                    mib(b.tuning_bytes),
                    b.b_non,
                    mib(b.merged_bytes),
                    mib(b.free_bytes),
                )),
                Err(e) => out.push_str(&format!(
                    "{:>11} {:>9}  does not fit: {e}\n",
                    r.participant, r.device
                )),
            }
        }
        out
    }
}
