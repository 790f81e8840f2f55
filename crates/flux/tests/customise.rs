//! Customisation on a real (fixture) MoE: nothing to merge is the identity bit for bit,
//! merging builds the expected number of slots deterministically, and profiling counts
//! add up.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use fluxmoe_flux::customise::{customise, MergeOptions};
use fluxmoe_flux::merge::relative_l2_error;
use fluxmoe_flux::profile::{profile, ProfileBatch};
use fluxmoe_flux::roles::{ExpertId, Roles};
use fluxmoe_model::{checkpoint, MoeModel};

fn load() -> (fluxmoe_model::Checkpoint, BTreeMap<String, Tensor>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/mixtral");
    let ck = checkpoint::load_dir(&dir, &Device::Cpu).unwrap();
    let tensors = ck
        .params
        .tensors()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    (ck, tensors)
}

fn batch() -> ProfileBatch {
    let ids: Vec<u32> = (0..24).map(|i| (i * 37 + 5) % 128).collect();
    let mut mask = vec![1u32; 24];
    mask[23] = 0; // one padding position
    ProfileBatch {
        input_ids: Tensor::from_vec(ids, (2, 12), &Device::Cpu).unwrap(),
        attention_mask: Tensor::from_vec(mask, (2, 12), &Device::Cpu).unwrap(),
    }
}

fn roles(tuning: &[(usize, usize)]) -> Roles {
    Roles {
        tuning: tuning
            .iter()
            .map(|&(layer, expert)| ExpertId { layer, expert })
            .collect(),
        exploration: Vec::new(),
    }
}

#[test]
fn profile_counts_every_real_token_top_k_times() {
    let (ck, _) = load();
    let model = MoeModel::new(&ck.config, &ck.params).unwrap();
    let p = profile(&model, &[batch()]).unwrap();
    assert_eq!(p.tokens, 23);
    assert_eq!(p.samples, 2);
    assert_eq!(p.layers.len(), 2);
    for l in &p.layers {
        assert_eq!(l.slots.iter().sum::<u64>(), 23 * 2, "top-2 of 23 tokens");
        assert!(l.samples.iter().all(|&s| s <= 2));
        let f: f64 = p.frequencies()[0].iter().sum();
        assert!((f - 1.0).abs() < 1e-12);
    }
}

#[test]
fn nothing_to_merge_is_bit_identical_and_merging_is_deterministic() {
    let (ck, tensors) = load();
    let model = MoeModel::new(&ck.config, &ck.params).unwrap();
    let b = batch();
    let prof = profile(&model, std::slice::from_ref(&b)).unwrap();
    let reference = model.forward(&b.input_ids, None, false).unwrap().logits;
    let opts = MergeOptions {
        pca_dim: 4,
        ..MergeOptions::default()
    };
    // Enough slots for every non-tuning expert: nothing merges.
    let mut same = model.clone();
    let c = customise(&mut same, &tensors, &roles(&[(0, 0)]), &prof, 8, &opts, 1).unwrap();
    assert_eq!(c.merged, 0);
    let logits = same.forward(&b.input_ids, None, false).unwrap().logits;
    let diff = (logits - &reference)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);

    // One slot per layer: layer 0 merges its 3 non-tuning experts, layer 1 its 4.
    let merged = |seed| {
        let mut m = model.clone();
        let c = customise(&mut m, &tensors, &roles(&[(0, 0)]), &prof, 2, &opts, seed).unwrap();
        (c, m.forward(&b.input_ids, None, false).unwrap().logits)
    };
    let (c1, l1) = merged(7);
    assert_eq!(c1.slots, vec![1, 1]);
    assert_eq!(c1.merged, 2);
    let err = relative_l2_error(&l1, &reference).unwrap();
    assert!(
        err > 0.0 && err.is_finite(),
        "merging changes the output: {err}"
    );
    let (_, l2) = merged(7);
    let diff = (l1 - l2).unwrap().abs().unwrap().max_all().unwrap();
    assert_eq!(
        diff.to_scalar::<f32>().unwrap(),
        0.0,
        "same seed, same model"
    );
}
