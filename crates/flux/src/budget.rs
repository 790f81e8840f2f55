//! Per-participant memory budget: METHOD.md step 3 ("Budget") [ours].
//!
//! From a participant's memory `M` (bytes) derive `B_tune`, the number of experts it can
//! hold in full precision with training state, and `B_non`, the number of merged
//! (frozen, forward-only) expert slots summed over all MoE layers. The memory model,
//! in bytes, with `s_e` the size of one routed expert's weights:
//!
//! ```text
//! fixed     = frozen non-expert weights + activations(batch, seq) + runtime overhead
//! tune      = ⌈tuning_factor · s_e⌉   (default 4: weight, grad, two AdamW moments)
//! merged    = ⌈frozen_factor · s_e⌉   (default 1: a frozen expert is its weights)
//! need(b,k) = fixed + b · tune + k · merged
//! ```
//!
//! A `B_tune` slot is sized as a tuning expert even though an exploration expert
//! (frozen, probed with forward passes only) needs just `merged` bytes: Eq. 4 decides
//! per round how many of the `B_tune` slots exploit and how many explore, so the
//! budget must hold the round in which all of them are tuned.

use std::collections::BTreeMap;
use std::fmt;

use fluxmoe_fed::{DeviceProfile, ParticipantId};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

const MIB: f64 = 1024.0 * 1024.0;

/// Sizes that fix a participant's memory needs, in bytes (f32 master weights by default).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryInputs {
    /// Frozen non-expert weights: embeddings, attention, norms, routers, shared experts.
    pub frozen_non_expert_bytes: u64,
    /// Activations for the participant's (batch, seq), estimated by the caller.
    pub activation_bytes: u64,
    /// Runtime overhead (allocator slack, kernels' workspaces, ...).
    pub overhead_bytes: u64,
    /// `s_e`: bytes of one routed expert's weights.
    pub expert_bytes: u64,
    /// Number of MoE layers `L`.
    pub moe_layers: usize,
    /// Routed experts per MoE layer `E`.
    pub experts_per_layer: usize,
}

impl MemoryInputs {
    /// `fixed = frozen non-expert weights + activations + overhead`.
    pub fn fixed_bytes(&self) -> Result<u64> {
        self.frozen_non_expert_bytes
            .checked_add(self.activation_bytes)
            .and_then(|b| b.checked_add(self.overhead_bytes))
            .ok_or_else(|| Error::Input("memory inputs: fixed bytes overflow u64".into()))
    }

    /// Routed experts in the model, `N = L · E`.
    pub fn total_experts(&self) -> usize {
        self.moe_layers * self.experts_per_layer
    }
}

/// Bytes per expert by role, as multiples of `s_e` (METHOD.md step 3).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryModel {
    /// A tuning expert costs `tuning_factor · s_e` (default 4: weight, grad, 2 AdamW moments).
    pub tuning_factor: f64,
    /// An exploration or merged expert costs `frozen_factor · s_e` (default 1).
    pub frozen_factor: f64,
}

impl Default for MemoryModel {
    fn default() -> Self {
        MemoryModel {
            tuning_factor: 4.0,
            frozen_factor: 1.0,
        }
    }
}

impl MemoryModel {
    /// Both factors finite and positive, and `tuning_factor ≥ frozen_factor` (a tuning
    /// expert holds at least its weights; this also makes the cost in
    /// [`plan_budget`] monotone in `B_tune`).
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("tuning_factor", self.tuning_factor),
            ("frozen_factor", self.frozen_factor),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::config(
                    field,
                    format!("must be finite and > 0, got {v}"),
                ));
            }
        }
        if self.tuning_factor < self.frozen_factor {
            return Err(Error::config(
                "tuning_factor",
                format!(
                    "{} is below frozen_factor {}: a tuning expert holds at least its weights",
                    self.tuning_factor, self.frozen_factor
                ),
            ));
        }
        Ok(())
    }

    /// Bytes of one tuning expert, `⌈tuning_factor · s_e⌉`.
    pub fn tuning_expert_bytes(&self, expert_bytes: u64) -> u64 {
        (self.tuning_factor * expert_bytes as f64).ceil() as u64
    }

    /// Bytes of one exploration expert or merged slot, `⌈frozen_factor · s_e⌉`.
    pub fn frozen_expert_bytes(&self, expert_bytes: u64) -> u64 {
        (self.frozen_factor * expert_bytes as f64).ceil() as u64
    }
}

/// A participant's budget: `memory_bytes = fixed_bytes + tuning_bytes + merged_bytes + free_bytes`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// The participant's memory `M`.
    pub memory_bytes: u64,
    /// `fixed` of the memory model.
    pub fixed_bytes: u64,
    /// Experts the participant can tune (or explore) per round.
    pub b_tune: usize,
    /// Merged slots summed over layers (0 when every expert is tuned).
    pub b_non: usize,
    /// `b_tune · tune`.
    pub tuning_bytes: u64,
    /// `b_non · merged`.
    pub merged_bytes: u64,
    /// What is left over.
    pub free_bytes: u64,
}

impl fmt::Display for Budget {
    /// One line in MiB, e.g.
    /// `M 1270.0 MiB = fixed 1000.0 + tuning (5 experts) 200.0 + merged (7 slots) 70.0 + free 0.0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = |b: u64| b as f64 / MIB;
        write!(
            f,
            "M {:.1} MiB = fixed {:.1} + tuning ({} experts) {:.1} + merged ({} slots) {:.1} + free {:.1}",
            m(self.memory_bytes),
            m(self.fixed_bytes),
            self.b_tune,
            m(self.tuning_bytes),
            self.b_non,
            m(self.merged_bytes),
            m(self.free_bytes)
        )
    }
}

/// Derive `B_tune` and `B_non` from memory `M` (METHOD.md step 3).
///
/// With `N = L · E` routed experts, a participant tuning `b` of them leaves `N − b`
/// non-tuning experts, which need at least one merged slot in every layer that has one:
/// `r(b) = min(L, N − b)` slots (this is the rule "B_non ≥ L", relaxed only where a
/// layer has no non-tuning expert left to merge). The rule is applied in three steps:
///
/// 1. `B_tune` = the largest `b ∈ [1, N]` with `fixed + b · tune + r(b) · merged ≤ M`
///    (the cost grows with `b` because `tune ≥ merged`);
/// 2. the leftover `M − fixed − B_tune · tune − r(B_tune) · merged` goes back to merged
///    slots: `B_non = min(N − B_tune, r(B_tune) + ⌊leftover / merged⌋)` — never more
///    slots than non-tuning experts, so `B_non = 0` when every expert is tuned;
/// 3. when even `b = 1` does not fit, [`Error::Budget`] names the shortfall
///    `fixed + tune + r(1) · merged − M` in bytes and MiB.
pub fn plan_budget(
    memory_bytes: u64,
    inputs: &MemoryInputs,
    model: &MemoryModel,
) -> Result<Budget> {
    plan_budget_capped(memory_bytes, inputs, model, usize::MAX)
}

/// [`plan_budget`] with `B_tune` at most `max_b_tune` (at least 1): step 1 stops at the
/// cap and the memory it leaves goes back to merged slots in step 2, exactly as any
/// other leftover.
pub fn plan_budget_capped(
    memory_bytes: u64,
    inputs: &MemoryInputs,
    model: &MemoryModel,
    max_b_tune: usize,
) -> Result<Budget> {
    model.validate()?;
    let n = inputs.total_experts();
    if n == 0 || inputs.expert_bytes == 0 {
        return Err(Error::Input(format!(
            "memory inputs: need routed experts of non-zero size, got {} layers × {} experts of {} bytes",
            inputs.moe_layers, inputs.experts_per_layer, inputs.expert_bytes
        )));
    }
    let fixed = inputs.fixed_bytes()?;
    let tune = model.tuning_expert_bytes(inputs.expert_bytes) as u128;
    let merged = model.frozen_expert_bytes(inputs.expert_bytes) as u128;
    let slots = |b: usize| inputs.moe_layers.min(n - b);
    // Expert memory for `b` tuning experts and the minimum merged slots, in u128 so no
    // product overflows.
    let cost = |b: usize| b as u128 * tune + slots(b) as u128 * merged;
    let avail = (memory_bytes as u128).saturating_sub(fixed as u128);
    if fixed as u128 + cost(1) > memory_bytes as u128 {
        let need = fixed as u128 + cost(1);
        let short = need - memory_bytes as u128;
        return Err(Error::Budget(format!(
            "memory of {} bytes ({:.1} MiB) cannot hold one tuning expert: fixed {:.1} MiB + \
             1 tuning expert {:.1} MiB + {} merged slot(s) {:.1} MiB = {:.1} MiB; short by {} bytes ({:.1} MiB)",
            memory_bytes,
            memory_bytes as f64 / MIB,
            fixed as f64 / MIB,
            tune as f64 / MIB,
            slots(1),
            (slots(1) as u128 * merged) as f64 / MIB,
            need as f64 / MIB,
            short,
            short as f64 / MIB
        )));
    }
    // Largest b in [1, n] with cost(b) <= avail; cost is non-decreasing, cost(1) fits.
    let (mut lo, mut hi) = (1usize, n.min(max_b_tune.max(1)));
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if cost(mid) <= avail {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let b_tune = lo;
    let extra = ((avail - cost(b_tune)) / merged).min(n as u128) as usize;
    let b_non = (slots(b_tune) + extra).min(n - b_tune);
    let tuning_bytes = (b_tune as u128 * tune) as u64;
    let merged_bytes = (b_non as u128 * merged) as u64;
    Ok(Budget {
        memory_bytes,
        fixed_bytes: fixed,
        b_tune,
        b_non,
        tuning_bytes,
        merged_bytes,
        free_bytes: memory_bytes - fixed - tuning_bytes - merged_bytes,
    })
}

/// What bounds `B_tune` besides memory [ours].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TuneCap {
    /// Memory alone (METHOD.md step 3).
    #[default]
    None,
    /// Memory, and no more experts than the participant uploads in the fleet's median
    /// upload time: with `t_i = B_tune_i · s_e / uplink_i` from memory alone and `T` the
    /// (lower) median of the `t_i` over the participants whose budget fits,
    /// `B_tune_i ≤ max(1, ⌊T · uplink_i / s_e⌋)`. A synchronous round waits for its
    /// slowest upload, so a device with far more memory than the rest would otherwise
    /// set every round's length; its freed memory goes to merged slots.
    MedianUpload,
}

/// Every participant's budget (METHOD.md step 3) under `cap`; an `Err` where even one
/// tuning expert does not fit.
pub fn fleet_budgets(
    devices: &BTreeMap<ParticipantId, DeviceProfile>,
    inputs: &MemoryInputs,
    model: &MemoryModel,
    cap: TuneCap,
) -> BTreeMap<ParticipantId, Result<Budget>> {
    let mut budgets: BTreeMap<ParticipantId, Result<Budget>> = devices
        .iter()
        .map(|(&id, d)| (id, plan_budget(d.memory_bytes, inputs, model)))
        .collect();
    if cap == TuneCap::None || inputs.expert_bytes == 0 {
        return budgets;
    }
    let expert = inputs.expert_bytes as f64;
    let mut times: Vec<f64> = budgets
        .iter()
        .filter_map(|(id, b)| {
            let b = b.as_ref().ok()?;
            Some(b.b_tune as f64 * expert / devices[id].uplink_bytes_per_s)
        })
        .collect();
    if times.is_empty() {
        return budgets;
    }
    times.sort_by(f64::total_cmp);
    let median = times[(times.len() - 1) / 2];
    for (id, budget) in budgets.iter_mut() {
        let Ok(b) = budget else { continue };
        // The relative slack keeps a participant whose time is the median itself (or
        // equal to it up to rounding) at its own B_tune.
        let fits = (median * devices[id].uplink_bytes_per_s / expert * (1.0 + 1e-9)).floor();
        let cap = (fits as usize).max(1);
        if cap < b.b_tune {
            *budget = plan_budget_capped(devices[id].memory_bytes, inputs, model, cap);
        }
    }
    budgets
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    /// 4 layers × 8 experts of 10 MiB; fixed = 600 + 300 + 100 = 1000 MiB.
    fn inputs() -> MemoryInputs {
        MemoryInputs {
            frozen_non_expert_bytes: 600 * MB,
            activation_bytes: 300 * MB,
            overhead_bytes: 100 * MB,
            expert_bytes: 10 * MB,
            moe_layers: 4,
            experts_per_layer: 8,
        }
    }

    #[test]
    fn exact_fit_has_no_leftover() {
        // fixed 1000 + 5 tuning × 40 + 4 merged slots × 10 = 1240 MiB.
        let b = plan_budget(1240 * MB, &inputs(), &MemoryModel::default()).unwrap();
        assert_eq!((b.b_tune, b.b_non, b.free_bytes), (5, 4, 0));
        assert_eq!(
            (b.fixed_bytes, b.tuning_bytes, b.merged_bytes),
            (1000 * MB, 200 * MB, 40 * MB)
        );
        // One byte less: only 4 tuning experts; the 40 MiB - 1 left give 3 more slots.
        let b = plan_budget(1240 * MB - 1, &inputs(), &MemoryModel::default()).unwrap();
        assert_eq!((b.b_tune, b.b_non), (4, 7));
        assert_eq!(b.free_bytes, 10 * MB - 1);
    }

    #[test]
    fn leftover_goes_to_merged_slots() {
        // 1270 MiB: 5 tuning (200) + 4 slots (40) leave 30 MiB: 3 more slots, 0 free.
        let b = plan_budget(1270 * MB, &inputs(), &MemoryModel::default()).unwrap();
        assert_eq!((b.b_tune, b.b_non, b.free_bytes), (5, 7, 0));
        assert_eq!(
            b.memory_bytes,
            b.fixed_bytes + b.tuning_bytes + b.merged_bytes + b.free_bytes
        );
        let line = b.to_string();
        assert!(
            line.contains("fixed 1000.0") && line.contains("tuning (5 experts) 200.0"),
            "{line}"
        );
        assert!(
            line.contains("merged (7 slots) 70.0") && line.contains("free 0.0"),
            "{line}"
        );
    }

    #[test]
    fn every_expert_tuned_needs_no_merged_slot() {
        // 32 experts × 40 MiB = 1280 MiB on top of fixed.
        let b = plan_budget(2280 * MB, &inputs(), &MemoryModel::default()).unwrap();
        assert_eq!((b.b_tune, b.b_non, b.free_bytes), (32, 0, 0));
        // Plenty of memory: still capped at N, the rest is free.
        let b = plan_budget(10_000 * MB, &inputs(), &MemoryModel::default()).unwrap();
        assert_eq!((b.b_tune, b.b_non, b.free_bytes), (32, 0, 7720 * MB));
        // 31 tuned leave one non-tuning expert: one slot (10), not one per layer (40).
        let b = plan_budget(2280 * MB - 1, &inputs(), &MemoryModel::default()).unwrap();
        assert_eq!((b.b_tune, b.b_non), (31, 1));
        assert_eq!(b.free_bytes, 30 * MB - 1);
    }

    #[test]
    fn too_small_names_the_shortfall() {
        // Needs 1000 + 40 + 4 × 10 = 1080 MiB; 1000 MiB is 80 MiB short.
        let err = plan_budget(1000 * MB, &inputs(), &MemoryModel::default()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Budget(_)), "{msg}");
        assert!(
            msg.contains(&format!("short by {} bytes (80.0 MiB)", 80 * MB)),
            "{msg}"
        );
        // Below even the fixed part.
        let msg = plan_budget(10 * MB, &inputs(), &MemoryModel::default())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(&format!("short by {} bytes", 1070 * MB)),
            "{msg}"
        );
    }

    #[test]
    fn custom_factors_and_bad_inputs() {
        // bf16 weights with f32 Adam: say 3 × s_e per tuning expert.
        let model = MemoryModel {
            tuning_factor: 3.0,
            frozen_factor: 1.0,
        };
        let b = plan_budget(1240 * MB, &inputs(), &model).unwrap();
        assert_eq!((b.b_tune, b.b_non, b.free_bytes), (6, 6, 0));
        let bad = MemoryModel {
            tuning_factor: 0.5,
            frozen_factor: 1.0,
        };
        let err = plan_budget(1240 * MB, &inputs(), &bad).unwrap_err();
        assert!(matches!(err, Error::Config { ref field, .. } if field == "tuning_factor"));
        let nan = MemoryModel {
            frozen_factor: f64::NAN,
            ..MemoryModel::default()
        };
        let err = plan_budget(1240 * MB, &inputs(), &nan).unwrap_err();
        assert!(matches!(err, Error::Config { ref field, .. } if field == "frozen_factor"));
        let none = MemoryInputs {
            moe_layers: 0,
            ..inputs()
        };
        assert!(matches!(
            plan_budget(1240 * MB, &none, &MemoryModel::default()),
            Err(Error::Input(_))
        ));
    }

    fn device(memory_mib: u64, uplink: f64) -> DeviceProfile {
        DeviceProfile {
            uplink_bytes_per_s: uplink,
            ..DeviceProfile::uniform(format!("{memory_mib} MiB"), memory_mib * MB, 1e9)
        }
    }

    #[test]
    fn a_cap_below_the_memory_bound_gives_its_memory_to_merged_slots() {
        let free = plan_budget(1240 * MB, &inputs(), &MemoryModel::default()).unwrap();
        assert_eq!((free.b_tune, free.b_non), (5, 4));
        let capped = plan_budget_capped(1240 * MB, &inputs(), &MemoryModel::default(), 2).unwrap();
        // 3 tuning experts fewer free 3 × 40 MiB = 12 merged slots.
        assert_eq!((capped.b_tune, capped.b_non, capped.free_bytes), (2, 16, 0));
        assert_eq!(
            capped.fixed_bytes + capped.tuning_bytes + capped.merged_bytes + capped.free_bytes,
            capped.memory_bytes
        );
        // A cap at or above the memory bound changes nothing; a cap of 0 means 1.
        let same = plan_budget_capped(1240 * MB, &inputs(), &MemoryModel::default(), 5).unwrap();
        assert_eq!(same, free);
        let one = plan_budget_capped(1240 * MB, &inputs(), &MemoryModel::default(), 0).unwrap();
        assert_eq!(one.b_tune, 1);
    }

    #[test]
    fn the_median_upload_cap_bounds_only_the_slow_uploaders() {
        // B_tune from memory: 1240 MiB -> 5, 1320 MiB -> 7, 1640 MiB -> 15.
        let devices: BTreeMap<ParticipantId, DeviceProfile> = [
            (0, device(1240, 1e6)),
            (1, device(1320, 1e6)),
            (2, device(1320, 1e6)),
            (3, device(1640, 1e6)),
            // The same memory on a link twice as fast: its 15 take 7.5, just over the
            // median, so it is cut to the 14 that fit in 7.
            (4, device(1640, 2e6)),
            // Cannot hold one tuning expert: no budget, and no say in the median.
            (5, device(500, 1e6)),
        ]
        .into_iter()
        .map(|(i, d)| (ParticipantId(i), d))
        .collect();
        let model = MemoryModel::default();
        let none = fleet_budgets(&devices, &inputs(), &model, TuneCap::None);
        let b_tune = |m: &BTreeMap<ParticipantId, Result<Budget>>| -> Vec<Option<usize>> {
            m.values()
                .map(|b| b.as_ref().ok().map(|b| b.b_tune))
                .collect()
        };
        assert_eq!(
            b_tune(&none),
            [Some(5), Some(7), Some(7), Some(15), Some(15), None]
        );
        // Upload times (in expert-sizes per MB/s): 5, 7, 7, 15, 7.5; lower median 7.
        let capped = fleet_budgets(&devices, &inputs(), &model, TuneCap::MedianUpload);
        assert_eq!(
            b_tune(&capped),
            [Some(5), Some(7), Some(7), Some(7), Some(14), None]
        );
        // The capped participant keeps its memory: what tuning no longer holds is merged.
        let three = capped[&ParticipantId(3)].as_ref().unwrap();
        let uncapped = none[&ParticipantId(3)].as_ref().unwrap();
        assert!(three.b_non > uncapped.b_non);
        assert_eq!(three.memory_bytes, uncapped.memory_bytes);
        assert!(matches!(capped[&ParticipantId(5)], Err(Error::Budget(_))));
    }
}
