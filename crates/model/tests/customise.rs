//! Customised routing (what FLUX's merging and FMES's expert dropping build on): an
//! identity slot map changes nothing, a merged expert stands in for the experts mapped
//! to it, a router mask keeps dropped experts out of every top-k.

mod common;

use common::{golden_ids, load, max_abs_diff, ARCHS};

use candle_core::Tensor;
use fluxmoe_model::config::Ffn;
use fluxmoe_model::keys::{expert_key, Proj};
use fluxmoe_model::{MergedExpert, MoeModel};

fn moe_layers(cfg: &fluxmoe_model::ModelConfig) -> Vec<(usize, usize, usize)> {
    cfg.layers
        .iter()
        .enumerate()
        .filter_map(|(l, f)| match f {
            Ffn::Moe(m) => Some((l, m.n_experts, m.top_k)),
            Ffn::Dense { .. } => None,
        })
        .collect()
}

/// A merged expert holding expert `e` of layer `l`'s own weights.
fn copy_of_expert(ck: &fluxmoe_model::Checkpoint, l: usize, e: usize) -> MergedExpert {
    let w = |p: Proj| {
        ck.params
            .tensor(&expert_key(ck.config.arch, l, e, p))
            .unwrap()
            .clone()
    };
    MergedExpert {
        gate: w(Proj::Gate),
        up: w(Proj::Up),
        down: w(Proj::Down),
    }
}

fn moe_archs() -> impl Iterator<Item = &'static str> {
    ARCHS.into_iter().filter(|a| *a != "llama")
}

#[test]
fn identity_slots_and_keeping_every_expert_are_bit_identical() {
    for arch in moe_archs() {
        let ck = load(arch);
        let ids = golden_ids(arch);
        let plain = MoeModel::new(&ck.config, &ck.params).unwrap();
        let reference = plain.forward(&ids, None, false).unwrap().logits;
        let mut custom = plain.clone();
        for (l, n, _) in moe_layers(&ck.config) {
            custom
                .set_merged_experts(l, (0..n).collect(), Vec::new())
                .unwrap();
            custom.set_kept_experts(l, &vec![true; n]).unwrap();
        }
        let logits = custom.forward(&ids, None, false).unwrap().logits;
        assert_eq!(
            max_abs_diff(&logits, &reference),
            0.0,
            "{arch}: identity customisation changed logits"
        );
    }
}

#[test]
fn a_merged_copy_of_an_expert_replaces_it() {
    for arch in moe_archs() {
        let ck = load(arch);
        let ids = golden_ids(arch);
        let plain = MoeModel::new(&ck.config, &ck.params).unwrap();
        let reference = plain.forward(&ids, None, false).unwrap().logits;
        let mut custom = plain.clone();
        let mut other = plain.clone();
        for (l, n, _) in moe_layers(&ck.config) {
            let copy_of = |e: usize| copy_of_expert(&ck, l, e);
            // Expert 1's slot is a merged expert holding expert 1's own weights.
            let mut slot_of: Vec<usize> = (0..n).collect();
            slot_of[1] = n;
            custom
                .set_merged_experts(l, slot_of, vec![copy_of(1)])
                .unwrap();
            // Expert 1's tokens go to a merged expert holding expert 0's weights.
            let mut slot_of: Vec<usize> = (0..n).collect();
            slot_of[1] = n;
            other
                .set_merged_experts(l, slot_of, vec![copy_of(0)])
                .unwrap();
        }
        let logits = custom.forward(&ids, None, false).unwrap().logits;
        assert!(
            max_abs_diff(&logits, &reference) < 1e-5,
            "{arch}: a merged copy changed logits"
        );
        let changed = other.forward(&ids, None, false).unwrap().logits;
        assert!(
            max_abs_diff(&changed, &reference) > 1e-4,
            "{arch}: rerouting expert 1 to expert 0's weights changed nothing"
        );
    }
}

#[test]
fn masked_experts_are_never_selected() {
    for arch in moe_archs() {
        let ck = load(arch);
        let ids = golden_ids(arch);
        let mut model = MoeModel::new(&ck.config, &ck.params).unwrap();
        let layers = moe_layers(&ck.config);
        for &(l, n, k) in &layers {
            // Drop the first expert(s), keeping exactly top_k + 1 (or all but one).
            let keep: Vec<bool> = (0..n).map(|e| e >= n - (k + 1).min(n - 1)).collect();
            model.set_kept_experts(l, &keep).unwrap();
        }
        let out = model.forward(&ids, None, true).unwrap();
        for trace in &out.traces {
            let (_, n, k) = layers.iter().find(|x| x.0 == trace.layer).copied().unwrap();
            let first_kept = (n - (k + 1).min(n - 1)) as u32;
            let chosen: Vec<u32> = trace
                .routing
                .topk_idx
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert!(
                chosen.iter().all(|&e| e >= first_kept),
                "{arch} layer {}: selected a dropped expert: {chosen:?}",
                trace.layer
            );
            let w: Vec<f32> = trace
                .routing
                .topk_weight
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert!(
                w.iter().all(|x| x.is_finite()),
                "{arch}: non-finite weights"
            );
        }
    }
}

#[test]
fn bad_customisations_are_errors_naming_the_layer() {
    let ck = load("mixtral");
    let mut model = MoeModel::new(&ck.config, &ck.params).unwrap();
    let (l, n, k) = moe_layers(&ck.config)[0];
    let msg = |e: fluxmoe_model::Error| e.to_string();
    let err = msg(model
        .set_merged_experts(l, vec![0; n - 1], Vec::new())
        .unwrap_err());
    assert!(
        err.contains(&format!("layer {l}")) && err.contains("entries"),
        "{err}"
    );
    let err = msg(model
        .set_merged_experts(l, vec![n; n], Vec::new())
        .unwrap_err());
    assert!(err.contains("outside"), "{err}");
    let wrong = Tensor::zeros((3, 3), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let bad = MergedExpert {
        gate: wrong.clone(),
        up: wrong.clone(),
        down: wrong,
    };
    let err = msg(model
        .set_merged_experts(l, vec![n; n], vec![bad])
        .unwrap_err());
    assert!(
        err.contains("merged expert 0") && err.contains("gate"),
        "{err}"
    );
    let mut keep = vec![false; n];
    keep[0] = true;
    if k > 1 {
        let err = msg(model.set_kept_experts(l, &keep).unwrap_err());
        assert!(err.contains("cannot fill"), "{err}");
    }
    let err = msg(model.set_kept_experts(99, &keep).unwrap_err());
    assert!(err.contains("layer 99"), "{err}");
}

#[test]
fn traces_hold_each_moe_blocks_input_and_output() {
    let ck = load("mixtral");
    let ids = golden_ids("mixtral");
    let mut model = MoeModel::new(&ck.config, &ck.params).unwrap();
    let out = model.forward(&ids, None, true).unwrap();
    for trace in &out.traces {
        let block = model.moe_block_mut(trace.layer).unwrap();
        let (y, _) = block.forward(&trace.moe_input).unwrap();
        assert_eq!(max_abs_diff(&y, &trace.moe_output), 0.0);
        assert_eq!(
            trace.moe_input.dims(),
            [ids.elem_count(), ck.config.hidden_size]
        );
    }
}

/// `hidden[row, start..start + n]` as `[1, n, h]`.
fn segment(hidden: &Tensor, row: usize, start: usize, n: usize) -> Tensor {
    hidden
        .narrow(0, row, 1)
        .unwrap()
        .narrow(1, start, n)
        .unwrap()
}

#[test]
fn resuming_a_row_at_a_layer_and_position_matches_a_full_forward() {
    for arch in ARCHS {
        let ck = load(arch);
        let ids = golden_ids(arch);
        let (b, t) = ids.dims2().unwrap();
        // Right padding: row 0's last two positions are not tokens.
        let mut valid = vec![1u32; b * t];
        valid[t - 2..t].fill(0);
        let mask = Tensor::from_vec(valid, (b, t), ids.device()).unwrap();
        let plain = MoeModel::new(&ck.config, &ck.params).unwrap();
        let (hidden, resume) = plain.forward_hidden_resumable(&ids, Some(&mask)).unwrap();
        let (reference, _) = plain.forward_hidden(&ids, Some(&mask), false).unwrap();
        assert_eq!(max_abs_diff(&hidden, &reference), 0.0, "{arch}");
        let row_ids = |row: usize, start: usize, n: usize| {
            ids.narrow(0, row, 1).unwrap().narrow(1, start, n).unwrap()
        };
        // Every row at once, from the middle on (row 0's padding is resumed too).
        let half = t / 2;
        let all: Vec<usize> = (0..b).collect();
        for l in 0..ck.config.layers.len() {
            let resumed = plain
                .forward_hidden_from(
                    &resume,
                    l,
                    &all,
                    half,
                    &ids.narrow(1, half, t - half).unwrap(),
                )
                .unwrap();
            for row in 0..b {
                let n = if row == 0 { t - 2 - half } else { t - half };
                let diff = max_abs_diff(
                    &resumed.narrow(0, row, 1).unwrap().narrow(1, 0, n).unwrap(),
                    &segment(&reference, row, half, n),
                );
                assert!(
                    diff < 1e-4,
                    "{arch}: layer {l}, all rows, row {row}: {diff}"
                );
            }
        }
        for l in 0..ck.config.layers.len() {
            for (row, start) in [(0, 0), (0, t / 2), (b - 1, t - 3)] {
                let n = t - 2 - start;
                let resumed = plain
                    .forward_hidden_from(&resume, l, &[row], start, &row_ids(row, start, n))
                    .unwrap();
                let diff = max_abs_diff(&resumed, &segment(&reference, row, start, n));
                assert!(
                    diff < 1e-4,
                    "{arch}: layer {l} row {row} from {start}: {diff}"
                );
            }
        }
        // A model whose layer l differs only in expert 1, resumed at the first token
        // routed to expert 1, equals its own full forward there; earlier positions
        // are those of the unchanged model.
        for (l, n_experts, k) in moe_layers(&ck.config) {
            let mut slot_of: Vec<usize> = (0..n_experts).collect();
            slot_of[1] = n_experts;
            let mut changed = plain.clone();
            changed
                .set_merged_experts(l, slot_of, vec![copy_of_expert(&ck, l, 0)])
                .unwrap();
            let (full, _) = changed.forward_hidden(&ids, Some(&mask), false).unwrap();
            let routes: Vec<u32> = resume
                .routes(l)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(routes.len(), b * t * k, "{arch} layer {l}");
            let row = b - 1;
            let Some(start) = (0..t).find(|p| routes[(row * t + p) * k..][..k].contains(&1)) else {
                continue;
            };
            let n = t - start;
            let resumed = changed
                .forward_hidden_from(&resume, l, &[row], start, &row_ids(row, start, n))
                .unwrap();
            let diff = max_abs_diff(&resumed, &segment(&full, row, start, n));
            assert!(diff < 1e-4, "{arch} layer {l} from {start}: {diff}");
            if start > 0 {
                let before = max_abs_diff(
                    &segment(&full, row, 0, start),
                    &segment(&reference, row, 0, start),
                );
                assert!(before < 1e-5, "{arch} layer {l}: {before}");
            }
            assert!(max_abs_diff(&full, &reference) > 1e-3, "{arch} layer {l}");
        }
        assert!(resume.routes(ck.config.layers.len()).is_none());
        let n_layers = ck.config.layers.len();
        let one = row_ids(0, 0, 1);
        for (layer, row, start, ids) in [
            (n_layers, 0, 0, one.clone()),
            (0, b, 0, one.clone()),
            (0, 0, t - 1, row_ids(0, 0, 2)),
            (0, 0, t, one.clone()),
            (0, 0, 0, ids.clone()),
        ] {
            assert!(
                plain
                    .forward_hidden_from(&resume, layer, &[row], start, &ids)
                    .is_err(),
                "{arch}: layer {layer} row {row} start {start} ids {:?}",
                ids.dims()
            );
        }
    }
}
