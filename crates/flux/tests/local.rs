//! FLUX's local work on a real (fixture) MoE: a step of per-sample passes applies the
//! gradient of the batch's token-mean loss (accumulated over the passes or
//! recomputed), and records each sample's own gradient norm per tuning expert; the
//! zeroth-order probes of explorers equal whole forwards of the perturbed model.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor, Var};
use fluxmoe_flux::local::{perturb, row_losses, train_steps, zo_probe, Sample};
use fluxmoe_flux::roles::ExpertId;
use fluxmoe_model::keys::{expert_key, Proj};
use fluxmoe_model::params::ParamStore;
use fluxmoe_model::train::{AdamW, AdamWConfig, Batch};
use fluxmoe_model::{checkpoint, Checkpoint, MergedExpert, MoeModel};

fn fixture() -> Checkpoint {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/mixtral");
    checkpoint::load_dir(&dir, &Device::Cpu).unwrap()
}

/// Two rows of different lengths (6 and 9 tokens), right-padded to 9.
const ROWS: [&[u32]; 2] = [&[3, 17, 42, 9, 88, 5], &[11, 64, 2, 99, 7, 31, 120, 45, 8]];

fn batch(rows: &[&[u32]]) -> Batch {
    let t = rows.iter().map(|r| r.len()).max().unwrap();
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for r in rows {
        ids.extend(r.iter().copied().chain(std::iter::repeat_n(0, t - r.len())));
        mask.extend((0..t).map(|i| u32::from(i < r.len())));
    }
    let shape = (rows.len(), t);
    let mask = Tensor::from_vec(mask, shape, &Device::Cpu).unwrap();
    Batch {
        input_ids: Tensor::from_vec(ids, shape, &Device::Cpu).unwrap(),
        attention_mask: Some(mask.clone()),
        loss_mask: Some(mask),
    }
}

/// Every next-token target of `rows`.
fn targets(rows: &[&[u32]]) -> usize {
    rows.iter().map(|r| r.len() - 1).sum()
}

/// The experts (layer, expert) of layer 0 are trained.
fn experts(ck: &Checkpoint) -> BTreeMap<ExpertId, Vec<String>> {
    (0..4)
        .map(|expert| {
            let names = [Proj::Gate, Proj::Up, Proj::Down]
                .map(|p| expert_key(ck.config.arch, 0, expert, p))
                .to_vec();
            (ExpertId { layer: 0, expert }, names)
        })
        .collect()
}

/// One step on `samples` from the fixture; the trained experts' updates and the
/// recorded per-sample squared gradient norms.
fn step(
    samples: Vec<Sample>,
    accumulate: bool,
) -> (BTreeMap<String, Vec<f32>>, BTreeMap<ExpertId, Vec<f64>>) {
    let ck = fixture();
    let experts = experts(&ck);
    let mut params =
        ParamStore::from_tensors(ck.params.tensors().map(|(n, t)| (n.to_string(), t.clone())))
            .unwrap();
    params
        .set_trainable(|n| experts.values().flatten().any(|e| e == n))
        .unwrap();
    let vars: BTreeMap<String, Var> = params.trainable().into_iter().collect();
    let expert_vars: BTreeMap<ExpertId, Vec<Var>> = experts
        .iter()
        .map(|(e, names)| (*e, names.iter().map(|n| vars[n].clone()).collect()))
        .collect();
    let before: BTreeMap<String, Tensor> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().copy().unwrap()))
        .collect();
    let model = MoeModel::new(&ck.config, &params).unwrap();
    // With eps far above every gradient, AdamW's first update is lr · g / eps: linear
    // in the gradient, so equal updates mean equal gradients.
    let cfg = AdamWConfig {
        lr: 1.0,
        eps: 1e3,
        weight_decay: 0.0,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(params.trainable(), cfg).unwrap();
    let out = train_steps(
        &model,
        &mut opt,
        &[samples],
        &expert_vars,
        1e9,
        accumulate,
        None,
        None,
    )
    .unwrap();
    let updates = vars
        .iter()
        .map(|(n, v)| {
            let d = (v.as_tensor() - &before[n]).unwrap();
            (
                n.clone(),
                d.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        })
        .collect();
    (updates, out.sq_grad_norms)
}

#[test]
fn per_sample_passes_apply_the_batch_gradient_and_record_each_samples_norm() {
    let per_sample: Vec<Sample> = ROWS
        .iter()
        .map(|r| Sample {
            batch: batch(&[r]),
            targets: targets(&[r]),
        })
        .collect();
    let (split, norms) = step(per_sample.clone(), false);
    let (summed, summed_norms) = step(per_sample, true);
    let (whole, batched_norms) = step(
        vec![Sample {
            batch: batch(&ROWS),
            targets: targets(&ROWS),
        }],
        false,
    );
    let scale = whole.values().flatten().fold(0f32, |m, x| m.max(x.abs()));
    assert!(scale > 1e-7, "the step moved nothing");
    // The step's gradient, recomputed or accumulated over the per-sample passes, is
    // the batch's.
    for (name, w) in &whole {
        for (a, b) in split[name].iter().zip(w) {
            assert!((a - b).abs() <= 1e-4 * scale, "{name}: {a} vs {b}");
        }
        for (a, b) in summed[name].iter().zip(w) {
            assert!(
                (a - b).abs() <= 1e-4 * scale,
                "{name}, accumulated: {a} vs {b}"
            );
        }
    }
    assert_eq!(norms, summed_norms);
    // One squared norm per sample per expert; the batched step records one per expert.
    // The token-weighted per-sample gradients sum to the batch gradient, so their norms
    // bound its norm: ||Σ w_k g_k|| ≤ Σ w_k ||g_k||.
    let w = ROWS.map(|r| (r.len() - 1) as f64 / targets(&ROWS) as f64);
    for (e, sq) in &norms {
        assert_eq!(sq.len(), 2, "{e:?}");
        let bound: f64 = sq.iter().zip(w).map(|(s, w)| w * s.sqrt()).sum();
        let batch_norm = batched_norms[e][0].sqrt();
        assert!(
            batch_norm <= bound * (1.0 + 1e-4) + 1e-12,
            "{e:?}: {batch_norm} > {bound}"
        );
    }
    assert!(norms.values().flatten().any(|&s| s > 0.0));
}

/// Expert `id`'s gate, up and down matrices in the fixture.
fn expert_weights(ck: &Checkpoint, id: ExpertId) -> [Tensor; 3] {
    [Proj::Gate, Proj::Up, Proj::Down].map(|p| {
        ck.params
            .tensor(&expert_key(ck.config.arch, id.layer, id.expert, p))
            .unwrap()
            .clone()
    })
}

#[test]
fn zeroth_order_probes_equal_whole_forwards_of_the_perturbed_model() {
    let ck = fixture();
    let model = MoeModel::new(&ck.config, &ck.params).unwrap();
    // Row 0's targets are its every next token; row 1's only positions 1..=3, so that
    // experts first routed at position 3 or later cannot change its loss.
    let mut b = batch(&ROWS);
    let t = ROWS[1].len();
    let loss: Vec<u32> = (0..2 * t)
        .map(|i| {
            let (row, pos) = (i / t, i % t);
            u32::from(if row == 0 {
                pos < ROWS[0].len()
            } else {
                (1..=3).contains(&pos)
            })
        })
        .collect();
    b.loss_mask = Some(Tensor::from_vec(loss, (2, t), &Device::Cpu).unwrap());
    let explorers: Vec<(ExpertId, [Tensor; 3])> = (0..2)
        .flat_map(|layer| (0..4).map(move |expert| ExpertId { layer, expert }))
        .map(|id| (id, expert_weights(&ck, id)))
        .collect();
    let (sigma, seed) = (1e-2, 7);
    let outcome = zo_probe(&model, &explorers, &b, sigma, seed).unwrap();
    let probes = &outcome.sq_grad_norms;
    assert_eq!(probes.len(), explorers.len());
    // The unperturbed forward runs every position through both layers; each perturbed
    // one at most every position from the explorer's layer up, and less for some.
    let full = b.input_ids.elem_count() * 2;
    let most = full
        + explorers
            .iter()
            .map(|(id, _)| b.input_ids.elem_count() * (2 - id.layer))
            .sum::<usize>();
    assert!(
        outcome.layer_positions > full && outcome.layer_positions < most,
        "{}",
        outcome.layer_positions
    );
    let base = row_losses(&model, &b).unwrap();
    let (mut zeros, mut positive) = (0, 0);
    for (id, weights) in &explorers {
        let ([gate, up, down], scale) = perturb(*id, weights, sigma, seed).unwrap();
        let mut perturbed = model.clone();
        let mut slot_of: Vec<usize> = (0..4).collect();
        slot_of[id.expert] = 4;
        perturbed
            .set_merged_experts(id.layer, slot_of, vec![MergedExpert { gate, up, down }])
            .unwrap();
        let plus = row_losses(&perturbed, &b).unwrap();
        let got = &probes[id];
        assert_eq!(got.len(), 2, "{id:?}");
        for (k, g) in got.iter().enumerate() {
            let want = ((plus[k] - base[k]) / sigma).powi(2) * scale;
            assert!(
                (g - want).abs() <= 3e-3 * want + 1e-6,
                "{id:?} row {k}: probe {g}, whole forward {want}"
            );
            if *g == 0.0 {
                zeros += 1;
            } else {
                positive += 1;
            }
        }
    }
    // Both kinds occur: rows the explorer cannot reach (exactly 0) and rows it does.
    assert!(
        zeros > 0 && positive > 0,
        "{zeros} zero, {positive} positive"
    );
    // The same seed draws the same perturbation; σ must be positive.
    assert_eq!(
        zo_probe(&model, &explorers, &b, sigma, seed).unwrap(),
        outcome
    );
    let err = zo_probe(&model, &explorers, &b, 0.0, seed)
        .unwrap_err()
        .to_string();
    assert!(err.contains("zo_sigma"), "{err}");
}
