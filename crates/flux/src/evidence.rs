//! The paper's merging evidence, re-measured (METHOD.md "Evidence"): layer-aware slots
//! vs uniform slots and vs one merged expert per layer, and α = f·ā vs α = f, compared
//! by the output error of the customised model's MoE layers against the unmerged model.
//!
//! [`merge_evidence`] customises one copy of the model per [`MergeVariant`] (same roles,
//! same `B_non`, same seed, so variants differ only in the option under test) and
//! measures, over the real (non-padding) tokens of the given batches:
//! - **isolated**: each MoE layer of the customised model fed the unmerged model's input
//!   of that layer, against the unmerged output (relative L2 over all tokens of the
//!   layer; then the mean over layers). This is the error merging itself causes.
//! - **end to end**: the customised model run on the batches, its per-layer MoE outputs
//!   against the unmerged ones (errors of earlier layers propagate); mean over layers.
//! - **logits**: relative L2 of the final logits.
//!
//! Relative L2 is `‖y − y_ref‖ / ‖y_ref‖` with both sums taken over every token of every
//! batch (in f64), as [`crate::merge::relative_l2_error`] defines it for one tensor.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use fluxmoe_model::MoeModel;
use serde::{Deserialize, Serialize};

use crate::customise::{customise, Alpha, MergeOptions};
use crate::error::{Error, Result};
use crate::merge::SlotRule;
use crate::profile::{Profile, ProfileBatch};
use crate::roles::{ExpertId, Roles};

/// One customisation to measure: the slot rule and merge weights under test; every
/// other option comes from [`MergeEvidenceOptions::base`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeVariant {
    pub name: String,
    pub slot_rule: SlotRule,
    pub alpha: Alpha,
}

/// The four variants of the paper's merging evidence, FLUX's default first:
/// `layer-aware/f·ā`, `uniform/f·ā`, `one-per-layer/f·ā`, `layer-aware/f`.
pub fn paper_variants() -> Vec<MergeVariant> {
    let v = |name: &str, slot_rule, alpha| MergeVariant {
        name: name.into(),
        slot_rule,
        alpha,
    };
    vec![
        v(
            "layer-aware/f·ā",
            SlotRule::LayerAware,
            Alpha::FreqAttention,
        ),
        v("uniform/f·ā", SlotRule::Uniform, Alpha::FreqAttention),
        v(
            "one-per-layer/f·ā",
            SlotRule::OnePerLayer,
            Alpha::FreqAttention,
        ),
        v("layer-aware/f", SlotRule::LayerAware, Alpha::Freq),
    ]
}

/// What [`merge_evidence`] measures and with which settings.
#[derive(Clone, Debug, PartialEq)]
pub struct MergeEvidenceOptions {
    /// Merged slots summed over layers (`B_non`).
    pub b_non: usize,
    /// Options shared by every variant (`slot_rule` and `alpha` are overridden).
    pub base: MergeOptions,
    /// At least one; the first is the reference of [`MergeEvidence::change_vs_first`].
    pub variants: Vec<MergeVariant>,
    /// Clustering seed, the same for every variant.
    pub seed: u64,
}

/// Errors of one MoE layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerError {
    /// Decoder layer index.
    pub layer: usize,
    /// Merged slots this layer got.
    pub slots: usize,
    pub isolated: f64,
    pub end_to_end: f64,
}

/// Errors of one variant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VariantEvidence {
    pub variant: MergeVariant,
    /// Merged slots per MoE layer (profile order).
    pub slots: Vec<usize>,
    /// Merged experts built (clusters of two or more experts).
    pub merged: usize,
    /// Mean over layers of the isolated per-layer error.
    pub isolated: f64,
    /// Mean over layers of the end-to-end per-layer error.
    pub end_to_end: f64,
    /// Relative L2 error of the final logits.
    pub logits: f64,
    pub layers: Vec<LayerError>,
}

/// Result of [`merge_evidence`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MergeEvidence {
    /// Real (non-padding) tokens measured.
    pub tokens: u64,
    pub moe_layers: usize,
    /// Routed experts over all MoE layers.
    pub experts: usize,
    pub tuning: usize,
    pub exploration: usize,
    /// Experts neither tuning nor exploring: the ones merging may fold.
    pub non_tuning: usize,
    pub b_non: usize,
    pub seed: u64,
    pub variants: Vec<VariantEvidence>,
}

/// Which error [`MergeEvidence::change_vs_first`] compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    Isolated,
    EndToEnd,
    Logits,
}

impl VariantEvidence {
    pub fn error(&self, kind: ErrorKind) -> f64 {
        match kind {
            ErrorKind::Isolated => self.isolated,
            ErrorKind::EndToEnd => self.end_to_end,
            ErrorKind::Logits => self.logits,
        }
    }
}

impl MergeEvidence {
    /// The paper's way of stating the comparison: the first variant's (FLUX's) error
    /// relative to variant `i`'s, `e_first / e_i − 1` (−0.656 = "65.6% less output
    /// error than variant i"). `None` for an unknown `i` or when `e_i` is 0 or not
    /// finite.
    pub fn change_vs_first(&self, i: usize, kind: ErrorKind) -> Option<f64> {
        let first = self.variants.first()?.error(kind);
        let other = self.variants.get(i)?.error(kind);
        (other.is_finite() && other > 0.0 && first.is_finite()).then(|| first / other - 1.0)
    }
}

/// Roles of the benchmark: the `k` experts with the highest activation share `f_e`
/// (over all layers; each layer's shares sum to 1, so they compare across layers) are
/// tuning, ties broken by (layer, expert) ascending; no explorers. Errors if `k`
/// exceeds the number of experts.
pub fn top_share_roles(profile: &Profile, k: usize) -> Result<Roles> {
    let freqs = profile.frequencies();
    let mut all: Vec<(f64, ExpertId)> = profile
        .layers
        .iter()
        .zip(&freqs)
        .flat_map(|(l, f)| {
            f.iter().enumerate().map(move |(expert, &share)| {
                (
                    share,
                    ExpertId {
                        layer: l.layer,
                        expert,
                    },
                )
            })
        })
        .collect();
    if k > all.len() {
        return Err(Error::Input(format!(
            "cannot tune {k} experts: the model has {} routed experts",
            all.len()
        )));
    }
    all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut tuning: Vec<ExpertId> = all[..k].iter().map(|&(_, id)| id).collect();
    tuning.sort_unstable();
    Ok(Roles {
        tuning,
        exploration: Vec::new(),
    })
}

/// Squared-difference and squared-reference sums of two same-shape tensors, in f64.
#[derive(Clone, Copy, Debug, Default)]
struct SqSums {
    diff: f64,
    norm: f64,
}

impl SqSums {
    /// Add the rows of `y` and `y_ref` (`[N, D]`) selected by `rows` (`None`: all).
    fn add(&mut self, y: &Tensor, y_ref: &Tensor, rows: Option<&Tensor>) -> Result<()> {
        if y.shape() != y_ref.shape() {
            return Err(Error::Input(format!(
                "output is {:?} but reference is {:?}",
                y.dims(),
                y_ref.dims()
            )));
        }
        let (y, y_ref) = match rows {
            Some(r) => (y.index_select(r, 0)?, y_ref.index_select(r, 0)?),
            None => (y.clone(), y_ref.clone()),
        };
        let (n, d) = y.dims2()?;
        // Convert to f64 a bounded number of elements at a time (logits rows are long).
        let chunk = (1usize << 22).div_ceil(d.max(1)).max(1);
        let mut start = 0;
        while start < n {
            let len = chunk.min(n - start);
            let a = y.narrow(0, start, len)?.to_dtype(DType::F64)?;
            let b = y_ref.narrow(0, start, len)?.to_dtype(DType::F64)?;
            self.diff += (a - &b)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
            self.norm += b.sqr()?.sum_all()?.to_scalar::<f64>()?;
            start += len;
        }
        Ok(())
    }

    /// `sqrt(diff / norm)`: 0 when nothing differs, `+∞` when only the reference is 0.
    fn relative(self) -> f64 {
        match (self.diff == 0.0, self.norm == 0.0) {
            (true, _) => 0.0,
            (false, true) => f64::INFINITY,
            (false, false) => (self.diff / self.norm).sqrt(),
        }
    }
}

/// Per variant: per-layer isolated and end-to-end sums, and the logits sums.
struct Acc {
    isolated: Vec<SqSums>,
    end_to_end: Vec<SqSums>,
    logits: SqSums,
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// Measure every variant of `opts` (see the module docs). `tensors` are the weights
/// `model` was built from; `profile` is the unmerged model's profile (f_e, ā_e) that
/// customisation uses; `batches` are the tokens the errors are measured on.
///
/// Errors with [`Error::Input`] on no variants, no batches, batches of padding only, a
/// model without MoE layers, or a profile whose layers are not the model's MoE layers.
pub fn merge_evidence(
    model: &MoeModel,
    tensors: &BTreeMap<String, Tensor>,
    batches: &[ProfileBatch],
    profile: &Profile,
    roles: &Roles,
    opts: &MergeEvidenceOptions,
) -> Result<MergeEvidence> {
    if opts.variants.is_empty() {
        return Err(Error::Input(
            "merge evidence: no variants to measure".into(),
        ));
    }
    if batches.is_empty() {
        return Err(Error::Input(
            "merge evidence: no batches to measure on".into(),
        ));
    }
    let cfg = model.config();
    let moe_layers = cfg.moe_layers();
    if moe_layers.is_empty() {
        return Err(Error::Input(
            "merge evidence: the model has no MoE layer (nothing to merge)".into(),
        ));
    }
    let profiled: Vec<usize> = profile.layers.iter().map(|l| l.layer).collect();
    if profiled != moe_layers {
        return Err(Error::Input(format!(
            "merge evidence: the profile covers layers {profiled:?} but the model's MoE \
             layers are {moe_layers:?}"
        )));
    }
    let experts: usize = profile.layers.iter().map(|l| l.slots.len()).sum();
    let all: Vec<ExpertId> = profile
        .layers
        .iter()
        .flat_map(|l| {
            (0..l.slots.len()).map(move |expert| ExpertId {
                layer: l.layer,
                expert,
            })
        })
        .collect();
    let non_tuning = roles.non_tuning(&all).len();

    let mut models = Vec::with_capacity(opts.variants.len());
    let mut customised = Vec::with_capacity(opts.variants.len());
    for v in &opts.variants {
        let mut m = model.clone();
        let merge = MergeOptions {
            slot_rule: v.slot_rule,
            alpha: v.alpha,
            ..opts.base.clone()
        };
        customised.push(customise(
            &mut m, tensors, roles, profile, opts.b_non, &merge, opts.seed,
        )?);
        models.push(m);
    }

    let n_layers = moe_layers.len();
    let mut accs: Vec<Acc> = (0..models.len())
        .map(|_| Acc {
            isolated: vec![SqSums::default(); n_layers],
            end_to_end: vec![SqSums::default(); n_layers],
            logits: SqSums::default(),
        })
        .collect();
    let mut tokens = 0u64;
    for batch in batches {
        let mask: Vec<u32> = batch
            .attention_mask
            .to_dtype(DType::U32)?
            .flatten_all()?
            .to_vec1()?;
        let real: Vec<u32> = (0..mask.len() as u32)
            .filter(|&i| mask[i as usize] != 0)
            .collect();
        if real.is_empty() {
            continue;
        }
        tokens += real.len() as u64;
        let rows = Tensor::new(real.as_slice(), model.device())?;
        let reference = model.forward(&batch.input_ids, Some(&batch.attention_mask), true)?;
        let flat = |logits: &Tensor| -> Result<Tensor> {
            let v = logits.dim(2)?;
            Ok(logits.reshape(((), v))?)
        };
        let ref_logits = flat(&reference.logits)?;
        for (m, acc) in models.iter_mut().zip(&mut accs) {
            for (i, trace) in reference.traces.iter().enumerate() {
                let (y, _) = m.moe_block_mut(trace.layer)?.forward(&trace.moe_input)?;
                acc.isolated[i].add(&y, &trace.moe_output, Some(&rows))?;
            }
            let out = m.forward(&batch.input_ids, Some(&batch.attention_mask), true)?;
            if out.traces.len() != reference.traces.len() {
                return Err(Error::Input(format!(
                    "merge evidence: the customised model traced {} MoE layers, the \
                     unmerged one {}",
                    out.traces.len(),
                    reference.traces.len()
                )));
            }
            for (i, (t, r)) in out.traces.iter().zip(&reference.traces).enumerate() {
                acc.end_to_end[i].add(&t.moe_output, &r.moe_output, Some(&rows))?;
            }
            acc.logits
                .add(&flat(&out.logits)?, &ref_logits, Some(&rows))?;
        }
    }
    if tokens == 0 {
        return Err(Error::Input(
            "merge evidence: the batches hold no real (unmasked) token".into(),
        ));
    }

    let variants = opts
        .variants
        .iter()
        .zip(customised)
        .zip(accs)
        .map(|((v, c), acc)| {
            let layers: Vec<LayerError> = moe_layers
                .iter()
                .enumerate()
                .map(|(i, &layer)| LayerError {
                    layer,
                    slots: c.slots[i],
                    isolated: acc.isolated[i].relative(),
                    end_to_end: acc.end_to_end[i].relative(),
                })
                .collect();
            let iso: Vec<f64> = layers.iter().map(|l| l.isolated).collect();
            let e2e: Vec<f64> = layers.iter().map(|l| l.end_to_end).collect();
            VariantEvidence {
                variant: v.clone(),
                slots: c.slots,
                merged: c.merged,
                isolated: mean(&iso),
                end_to_end: mean(&e2e),
                logits: acc.logits.relative(),
                layers,
            }
        })
        .collect();
    Ok(MergeEvidence {
        tokens,
        moe_layers: n_layers,
        experts,
        tuning: roles.tuning.len(),
        exploration: roles.exploration.len(),
        non_tuning,
        b_non: opts.b_non,
        seed: opts.seed,
        variants,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::LayerProfile;

    fn profile(layers: &[&[u64]]) -> Profile {
        Profile {
            layers: layers
                .iter()
                .enumerate()
                .map(|(layer, slots)| LayerProfile {
                    layer,
                    slots: slots.to_vec(),
                    samples: vec![1; slots.len()],
                    attention: vec![0.0; slots.len()],
                })
                .collect(),
            tokens: 1,
            samples: 1,
        }
    }

    #[test]
    fn top_share_roles_take_the_highest_shares_across_layers() {
        // Shares: layer 0 = [.5, .25, .25, 0], layer 1 = [.125, .125, .75, 0].
        let p = profile(&[&[4, 2, 2, 0], &[1, 1, 6, 0]]);
        let id = |layer, expert| ExpertId { layer, expert };
        let r = top_share_roles(&p, 2).unwrap();
        assert_eq!(r.tuning, vec![id(0, 0), id(1, 2)]);
        assert!(r.exploration.is_empty());
        // Tie at .25 between (0,1) and (0,2): the lower index wins.
        let r = top_share_roles(&p, 3).unwrap();
        assert_eq!(r.tuning, vec![id(0, 0), id(0, 1), id(1, 2)]);
        assert!(top_share_roles(&p, 0).unwrap().tuning.is_empty());
        assert_eq!(top_share_roles(&p, 8).unwrap().tuning.len(), 8);
        let err = top_share_roles(&p, 9).unwrap_err();
        assert!(err.to_string().contains("8 routed experts"), "{err}");
    }

    #[test]
    fn change_vs_first_is_the_papers_relative_reduction() {
        let v = |isolated: f64| VariantEvidence {
            variant: paper_variants()[0].clone(),
            slots: vec![],
            merged: 0,
            isolated,
            end_to_end: 0.0,
            logits: 0.0,
            layers: vec![],
        };
        let e = MergeEvidence {
            tokens: 1,
            moe_layers: 0,
            experts: 0,
            tuning: 0,
            exploration: 0,
            non_tuning: 0,
            b_non: 0,
            seed: 0,
            variants: vec![v(0.1), v(0.4), v(0.0)],
        };
        assert_eq!(e.change_vs_first(0, ErrorKind::Isolated), Some(0.0));
        assert_eq!(e.change_vs_first(1, ErrorKind::Isolated), Some(-0.75));
        assert_eq!(e.change_vs_first(2, ErrorKind::Isolated), None);
        assert_eq!(e.change_vs_first(3, ErrorKind::Isolated), None);
        assert_eq!(e.change_vs_first(1, ErrorKind::Logits), None);
    }

    #[test]
    fn squared_sums_accumulate_over_selected_rows_and_chunks() {
        let dev = candle_core::Device::Cpu;
        let y_ref = Tensor::new(&[[3f32, 0.0], [0.0, 4.0], [100.0, 100.0]], &dev).unwrap();
        let y = Tensor::new(&[[3f32, 1.0], [0.0, 4.0], [0.0, 0.0]], &dev).unwrap();
        let rows = Tensor::new(&[0u32, 1], &dev).unwrap();
        let mut s = SqSums::default();
        s.add(&y, &y_ref, Some(&rows)).unwrap();
        // ‖y − y_ref‖ = 1, ‖y_ref‖ = 5 over rows 0 and 1; row 2 is left out.
        assert!((s.relative() - 0.2).abs() < 1e-12);
        s.add(&y, &y_ref, Some(&rows)).unwrap();
        assert!((s.relative() - 0.2).abs() < 1e-12, "same ratio twice");
        assert_eq!(SqSums::default().relative(), 0.0);
        let mut z = SqSums::default();
        z.add(&y, &y.zeros_like().unwrap(), None).unwrap();
        assert_eq!(z.relative(), f64::INFINITY);
        let flat = y.flatten_all().unwrap();
        assert!(SqSums::default().add(&flat, &y_ref, None).is_err());
    }
}
