//! Per-tensor FedAvg over validated replies (pure functions; METHOD.md "Aggregate").
//!
//! For each tensor name t and the set I_t of accepted replies with a delta for t:
//!
//! ```text
//! Δ̄_t = Σ_{i∈I_t} n_i^t ΔW_i^t / Σ_{i∈I_t} n_i^t        (weighted mean delta)
//! w_t ← w_t + Δ̄_t                                        (FedAvg = server SGD, lr 1)
//! ```
//!
//! Tensors no accepted reply updated are returned as the same `Tensor` (same storage,
//! bit-identical). Replies are processed in ascending participant order, so the result
//! does not depend on arrival order. Sums run in f32 (f64 for f64 tensors) and the
//! result is cast back to the global tensor's dtype.
//!
//! Validation, before anything is summed: a reply is rejected whole (reported with its
//! reason, the round goes on) if it repeats a participant, has a delta for an unknown
//! tensor, a delta whose shape or dtype differs from the global tensor, a missing,
//! non-positive or non-finite weight, NaN/Inf in a delta, or a delta whose L2 norm
//! exceeds [`AggregateConfig::max_delta_norm`].

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::cost::WorkCost;
use crate::error::Result;
use crate::ids::ParticipantId;
use crate::server_opt::{ServerOptimizer, ServerOptimizerConfig};
use crate::wire::{Failure, FailureKind, Global, TrainReply};

/// Validation policy of aggregation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AggregateConfig {
    /// Reject a reply if any of its deltas has an L2 norm above this (`None`: no bound).
    pub max_delta_norm: Option<f64>,
}

/// The weighted mean update of one tensor.
#[derive(Clone, Debug)]
pub struct MeanDelta {
    /// `Σ n_i ΔW_i / Σ n_i`, in the accumulation dtype (f32, or f64 for f64 tensors).
    pub delta: Tensor,
    /// `Σ n_i`.
    pub total_weight: f64,
    /// Participants that contributed, ascending.
    pub contributors: Vec<ParticipantId>,
}

/// What aggregation did with the replies.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AggregateReport {
    /// Replies that passed validation, ascending.
    pub accepted: Vec<ParticipantId>,
    /// Replies that did not, each with its reason (kind [`FailureKind::Rejected`]).
    pub rejected: Vec<Failure>,
    /// Per updated tensor: `Σ n_i` and the number of contributors.
    pub updated: BTreeMap<String, (f64, usize)>,
    /// Server work of validation and averaging (not of the optimizer step).
    pub cost: WorkCost,
}

/// The dtype sums run in for a tensor of `dtype`.
pub fn accumulation_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// Why `reply` must be rejected, or `None` if it is valid. Errs only on internal
/// tensor failures, never on bad input.
pub fn check_reply(
    global: &Global,
    reply: &TrainReply,
    cfg: &AggregateConfig,
) -> Result<Option<String>> {
    for (name, delta) in &reply.deltas {
        let Some(w) = global.get(name) else {
            return Ok(Some(format!("delta for unknown tensor `{name}`")));
        };
        if delta.dims() != w.dims() {
            return Ok(Some(format!(
                "delta `{name}` has shape {:?}, the global tensor {:?}",
                delta.dims(),
                w.dims()
            )));
        }
        if delta.dtype() != w.dtype() {
            return Ok(Some(format!(
                "delta `{name}` has dtype {:?}, the global tensor {:?}",
                delta.dtype(),
                w.dtype()
            )));
        }
        match reply.weight_of(name) {
            None => return Ok(Some(format!("no weight for delta `{name}`"))),
            Some(n) if !(n.is_finite() && n > 0.0) => {
                return Ok(Some(format!(
                    "weight of delta `{name}` must be finite and > 0, got {n}"
                )))
            }
            Some(_) => {}
        }
        // In f64 no finite f32/f16 value overflows when squared, so a non-finite sum
        // means NaN or Inf in the delta itself.
        let sq_norm = delta
            .to_dtype(DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
        if !sq_norm.is_finite() {
            return Ok(Some(format!("delta `{name}` contains NaN or Inf")));
        }
        if let Some(max) = cfg.max_delta_norm {
            let norm = sq_norm.sqrt();
            if norm > max {
                return Ok(Some(format!(
                    "delta `{name}` has L2 norm {norm} above max_delta_norm {max}"
                )));
            }
        }
    }
    Ok(None)
}

/// Validate `replies` and compute the weighted mean delta of every updated tensor.
pub fn mean_deltas(
    global: &Global,
    replies: &[TrainReply],
    cfg: &AggregateConfig,
) -> Result<(BTreeMap<String, MeanDelta>, AggregateReport)> {
    mean_assigned_deltas(global, replies, cfg, |_| None)
}

/// [`mean_deltas`] for a strategy that says which tensors each participant may update:
/// a reply `unassigned` finds a reason against (typically a delta for a tensor it was
/// not given) is rejected whole with that reason before anything else is checked.
pub fn mean_assigned_deltas(
    global: &Global,
    replies: &[TrainReply],
    cfg: &AggregateConfig,
    unassigned: impl Fn(&TrainReply) -> Option<String>,
) -> Result<(BTreeMap<String, MeanDelta>, AggregateReport)> {
    let mut order: Vec<usize> = (0..replies.len()).collect();
    order.sort_by_key(|&i| replies[i].participant);

    let mut report = AggregateReport::default();
    let mut accepted: Vec<&TrainReply> = Vec::new();
    let mut previous: Option<ParticipantId> = None;
    for &i in &order {
        let reply = &replies[i];
        if let Some(reason) = unassigned(reply) {
            tracing::warn!(participant = %reply.participant, %reason, "reply rejected");
            report.rejected.push(Failure::new(
                reply.participant,
                FailureKind::Rejected,
                reason,
            ));
            continue;
        }
        let is_duplicate = previous == Some(reply.participant);
        previous = Some(reply.participant);
        let reason = if is_duplicate {
            Some("duplicate reply from the same participant".to_string())
        } else {
            check_reply(global, reply, cfg)?
        };
        let n_elems: usize = reply.deltas.values().map(|d| d.elem_count()).sum();
        report.cost.flops += 2.0 * n_elems as f64;
        match reason {
            Some(reason) => {
                tracing::warn!(participant = %reply.participant, %reason, "reply rejected");
                report.rejected.push(Failure::new(
                    reply.participant,
                    FailureKind::Rejected,
                    reason,
                ));
            }
            None => {
                report.accepted.push(reply.participant);
                accepted.push(reply);
            }
        }
    }

    let mut means = BTreeMap::new();
    for (name, w) in global {
        let acc_dtype = accumulation_dtype(w.dtype());
        let mut sum: Option<Tensor> = None;
        let mut total_weight = 0.0;
        let mut contributors = Vec::new();
        for reply in &accepted {
            let (Some(delta), Some(n)) = (reply.deltas.get(name), reply.weight_of(name)) else {
                continue;
            };
            let scaled = delta.to_dtype(acc_dtype)?.affine(n, 0.0)?;
            sum = Some(match sum {
                None => scaled,
                Some(s) => (s + scaled)?,
            });
            total_weight += n;
            contributors.push(reply.participant);
        }
        let Some(sum) = sum else { continue };
        report.cost.flops += (2 * contributors.len() + 1) as f64 * w.elem_count() as f64;
        report
            .updated
            .insert(name.clone(), (total_weight, contributors.len()));
        means.insert(
            name.clone(),
            MeanDelta {
                delta: sum.affine(1.0 / total_weight, 0.0)?,
                total_weight,
                contributors,
            },
        );
    }
    Ok((means, report))
}

/// Plain FedAvg: `w ← w + Σ n_i ΔW_i / Σ n_i` per tensor, over the valid replies.
pub fn fedavg(
    global: &Global,
    replies: &[TrainReply],
    cfg: &AggregateConfig,
) -> Result<(Global, AggregateReport)> {
    let (means, mut report) = mean_deltas(global, replies, cfg)?;
    let mut sgd = ServerOptimizer::new(ServerOptimizerConfig::Sgd { lr: 1.0 })?;
    let (next, step_cost) = sgd.step(global, &means)?;
    report.cost += step_cost;
    Ok((next, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(values: &[f32]) -> Tensor {
        Tensor::new(values, &Device::Cpu).unwrap()
    }

    fn v(t: &Tensor) -> Vec<f32> {
        t.to_vec1::<f32>().unwrap()
    }

    fn reply(id: u32, deltas: &[(&str, &[f32])], n: f64) -> TrainReply {
        TrainReply {
            participant: ParticipantId(id),
            deltas: deltas
                .iter()
                .map(|(name, d)| (name.to_string(), t(d)))
                .collect(),
            weights: BTreeMap::from([("*".to_string(), n)]),
            metrics: BTreeMap::new(),
            cost: WorkCost::default(),
            report: serde_json::Value::Null,
        }
    }

    fn global() -> Global {
        BTreeMap::from([
            ("a".to_string(), t(&[1.0, 2.0])),
            ("b".to_string(), t(&[10.0, 20.0, 30.0])),
            ("frozen".to_string(), t(&[0.5])),
        ])
    }

    fn no_bound() -> AggregateConfig {
        AggregateConfig {
            max_delta_norm: None,
        }
    }

    #[test]
    fn weighted_mean_per_tensor_over_its_contributors() {
        let g = global();
        let replies = vec![
            reply(1, &[("a", &[1.0, 0.0]), ("b", &[3.0, 3.0, 3.0])], 1.0),
            reply(2, &[("a", &[0.0, 4.0])], 3.0),
            reply(3, &[("b", &[-1.0, 1.0, 5.0])], 2.0),
        ];
        let (next, report) = fedavg(&g, &replies, &no_bound()).unwrap();
        // a: (1·[1,0] + 3·[0,4]) / 4 = [0.25, 3]
        assert_eq!(v(&next["a"]), vec![1.25, 5.0]);
        // b: (1·[3,3,3] + 2·[-1,1,5]) / 3 = [1/3, 5/3, 13/3]
        let b = v(&next["b"]);
        let expect = [10.0 + 1.0 / 3.0, 20.0 + 5.0 / 3.0, 30.0 + 13.0 / 3.0];
        for (x, e) in b.iter().zip(expect) {
            assert!((x - e).abs() < 1e-5, "{x} vs {e}");
        }
        assert_eq!(
            report.accepted,
            vec![ParticipantId(1), ParticipantId(2), ParticipantId(3)]
        );
        assert!(report.rejected.is_empty());
        assert_eq!(report.updated["a"], (4.0, 2));
        assert_eq!(report.updated["b"], (3.0, 2));
        assert!(!report.updated.contains_key("frozen"));
    }

    #[test]
    fn untouched_tensors_are_the_same_tensor() {
        let g = global();
        let replies = vec![reply(1, &[("a", &[1.0, 1.0])], 2.0)];
        let (next, _) = fedavg(&g, &replies, &no_bound()).unwrap();
        assert_eq!(next["frozen"].id(), g["frozen"].id());
        assert_eq!(next["b"].id(), g["b"].id());
        assert_eq!(v(&next["b"]), v(&g["b"]));
        assert_ne!(next["a"].id(), g["a"].id());
        // No replies at all: the whole model comes back unchanged.
        let (same, report) = fedavg(&g, &[], &no_bound()).unwrap();
        for (name, w) in &g {
            assert_eq!(same[name].id(), w.id(), "{name}");
        }
        assert!(report.accepted.is_empty());
    }

    #[test]
    fn per_tensor_weights_override_the_default() {
        let g = global();
        let mut r1 = reply(1, &[("a", &[2.0, 0.0]), ("b", &[0.0, 0.0, 0.0])], 1.0);
        r1.weights.insert("a".into(), 3.0);
        let r2 = reply(2, &[("a", &[6.0, 4.0])], 1.0);
        let (next, report) = fedavg(&g, &[r1, r2], &no_bound()).unwrap();
        // a: (3·[2,0] + 1·[6,4]) / 4 = [3, 1]
        assert_eq!(v(&next["a"]), vec![4.0, 3.0]);
        assert_eq!(report.updated["a"], (4.0, 2));
        assert_eq!(report.updated["b"], (1.0, 1));
    }

    #[test]
    fn result_does_not_depend_on_reply_order() {
        let g = global();
        let replies = vec![
            reply(3, &[("b", &[0.1, 0.2, 0.3])], 7.0),
            reply(1, &[("b", &[0.7, -0.2, 0.9])], 3.0),
            reply(2, &[("b", &[1.3, 0.4, -0.6])], 11.0),
        ];
        let mut reversed = replies.clone();
        reversed.reverse();
        let (x, rx) = fedavg(&g, &replies, &no_bound()).unwrap();
        let (y, ry) = fedavg(&g, &reversed, &no_bound()).unwrap();
        let bits = |t: &Tensor| v(t).into_iter().map(f32::to_bits).collect::<Vec<_>>();
        assert_eq!(bits(&x["b"]), bits(&y["b"]));
        assert_eq!(rx.accepted, ry.accepted);
    }

    #[test]
    fn invalid_replies_are_rejected_with_reasons_and_the_rest_aggregated() {
        let g = global();
        let good = reply(1, &[("a", &[2.0, 2.0])], 1.0);
        let unknown = reply(2, &[("nope", &[1.0])], 1.0);
        let bad_shape = reply(3, &[("a", &[1.0, 1.0, 1.0])], 1.0);
        let zero_weight = reply(4, &[("a", &[1.0, 1.0])], 0.0);
        let nan = reply(5, &[("a", &[f32::NAN, 1.0])], 1.0);
        let inf_weight = reply(6, &[("a", &[1.0, 1.0])], f64::INFINITY);
        let huge = reply(7, &[("a", &[30.0, 40.0])], 1.0);
        let mut dtype = reply(8, &[], 1.0);
        dtype.deltas.insert(
            "a".into(),
            Tensor::new(&[1.0f64, 1.0], &Device::Cpu).unwrap(),
        );
        let mut no_weight = reply(9, &[("a", &[1.0, 1.0])], 1.0);
        no_weight.weights.clear();
        let inf = reply(10, &[("a", &[f32::INFINITY, 1.0])], 1.0);
        let duplicate = reply(1, &[("a", &[100.0, 100.0])], 1.0);
        let cfg = AggregateConfig {
            max_delta_norm: Some(49.0),
        };
        let replies = vec![
            good,
            unknown,
            bad_shape,
            zero_weight,
            nan,
            inf_weight,
            huge,
            dtype,
            no_weight,
            inf,
            duplicate,
        ];
        let (next, report) = fedavg(&g, &replies, &cfg).unwrap();
        assert_eq!(v(&next["a"]), vec![3.0, 4.0]);
        assert_eq!(report.accepted, vec![ParticipantId(1)]);
        let reasons: Vec<(u32, &str)> = report
            .rejected
            .iter()
            .map(|f| (f.participant.0, f.reason.as_str()))
            .collect();
        let expect_substrings = [
            (1, "duplicate reply"),
            (2, "unknown tensor `nope`"),
            (3, "shape [3]"),
            (4, "got 0"),
            (5, "NaN or Inf"),
            (6, "got inf"),
            (7, "L2 norm 50 above max_delta_norm 49"),
            (8, "dtype F64"),
            (9, "no weight for delta `a`"),
            (10, "NaN or Inf"),
        ];
        assert_eq!(reasons.len(), expect_substrings.len(), "{reasons:?}");
        for ((id, reason), (eid, sub)) in reasons.iter().zip(expect_substrings) {
            assert_eq!(*id, eid);
            assert!(
                reason.contains(sub),
                "participant {id}: {reason:?} lacks {sub:?}"
            );
        }
        assert!(report
            .rejected
            .iter()
            .all(|f| f.kind == FailureKind::Rejected));
    }

    #[test]
    fn half_precision_tensors_average_in_f32_and_keep_their_dtype() {
        let dev = Device::Cpu;
        let g: Global = BTreeMap::from([(
            "h".to_string(),
            Tensor::new(&[1.0f32, 2.0], &dev)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap(),
        )]);
        let mut r1 = reply(1, &[], 1.0);
        r1.deltas.insert(
            "h".into(),
            Tensor::new(&[1.0f32, 1.0], &dev)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap(),
        );
        let mut r2 = reply(2, &[], 1.0);
        r2.deltas.insert(
            "h".into(),
            Tensor::new(&[0.0f32, 2.0], &dev)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap(),
        );
        let (next, _) = fedavg(&g, &[r1, r2], &no_bound()).unwrap();
        assert_eq!(next["h"].dtype(), DType::BF16);
        let out = next["h"].to_dtype(DType::F32).unwrap();
        assert_eq!(v(&out), vec![1.5, 3.5]);
    }
}
