//! Merging evidence on the fixture Mixtral (2 MoE layers of 4 experts, top-2): what must
//! hold whatever the weights are.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use fluxmoe_flux::customise::MergeOptions;
use fluxmoe_flux::evidence::{
    merge_evidence, paper_variants, top_share_roles, ErrorKind, MergeEvidence, MergeEvidenceOptions,
};
use fluxmoe_flux::profile::{profile, Profile, ProfileBatch};
use fluxmoe_flux::roles::Roles;
use fluxmoe_model::{checkpoint, MoeModel};

struct Setup {
    model: MoeModel,
    tensors: BTreeMap<String, Tensor>,
    batches: Vec<ProfileBatch>,
    profile: Profile,
    roles: Roles,
}

fn batch(b: usize, t: usize, salt: u32, padding: &[usize]) -> ProfileBatch {
    let ids: Vec<u32> = (0..(b * t) as u32).map(|i| (i * 37 + salt) % 128).collect();
    let mut mask = vec![1u32; b * t];
    for &p in padding {
        mask[p] = 0;
    }
    ProfileBatch {
        input_ids: Tensor::from_vec(ids, (b, t), &Device::Cpu).unwrap(),
        attention_mask: Tensor::from_vec(mask, (b, t), &Device::Cpu).unwrap(),
    }
}

/// Two batches, 23 + 21 = 44 real tokens; two tuning experts (the top shares).
fn setup() -> Setup {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/mixtral");
    let ck = checkpoint::load_dir(&dir, &Device::Cpu).unwrap();
    let tensors = ck
        .params
        .tensors()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    let model = MoeModel::new(&ck.config, &ck.params).unwrap();
    let batches = vec![batch(2, 12, 5, &[23]), batch(3, 8, 11, &[14, 15, 23])];
    let profile = profile(&model, &batches).unwrap();
    let roles = top_share_roles(&profile, 2).unwrap();
    Setup {
        model,
        tensors,
        batches,
        profile,
        roles,
    }
}

fn measure(s: &Setup, b_non: usize) -> MergeEvidence {
    let opts = MergeEvidenceOptions {
        b_non,
        base: MergeOptions {
            pca_dim: 4,
            ..MergeOptions::default()
        },
        variants: paper_variants(),
        seed: 3,
    };
    merge_evidence(
        &s.model, &s.tensors, &s.batches, &s.profile, &s.roles, &opts,
    )
    .unwrap()
}

fn errors(v: &fluxmoe_flux::evidence::VariantEvidence) -> [f64; 3] {
    [v.isolated, v.end_to_end, v.logits]
}

#[test]
fn enough_slots_for_every_non_tuning_expert_is_exactly_lossless() {
    let s = setup();
    let e = measure(&s, 6);
    assert_eq!((e.tokens, e.moe_layers, e.experts), (44, 2, 8));
    assert_eq!((e.tuning, e.exploration, e.non_tuning), (2, 0, 6));
    let names: Vec<&str> = e.variants.iter().map(|v| v.variant.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "layer-aware/f·ā",
            "uniform/f·ā",
            "one-per-layer/f·ā",
            "layer-aware/f"
        ]
    );
    // Layer-aware and uniform slots cover every non-tuning expert: nothing merges.
    for i in [0, 1, 3] {
        let v = &e.variants[i];
        assert_eq!(v.slots.iter().sum::<usize>(), 6, "{}", v.variant.name);
        assert_eq!(v.merged, 0, "{}", v.variant.name);
        assert_eq!(errors(v), [0.0; 3], "{}", v.variant.name);
        assert!(v
            .layers
            .iter()
            .all(|l| l.isolated == 0.0 && l.end_to_end == 0.0));
    }
    // One merged expert per layer whatever B_non is: every layer with two or more
    // non-tuning experts merges, so the output changes.
    let one = &e.variants[2];
    assert_eq!(one.slots, vec![1, 1]);
    assert_eq!(one.merged, 2);
    for err in errors(one) {
        assert!(err > 0.0 && err.is_finite(), "{err}");
    }
    // FLUX vs a variant with a non-zero error: −100%; vs a zero error: undefined.
    assert_eq!(e.change_vs_first(2, ErrorKind::Isolated), Some(-1.0));
    assert_eq!(e.change_vs_first(1, ErrorKind::Isolated), None);
}

#[test]
fn fewer_slots_give_finite_positive_errors_and_slot_rules_order_as_they_must() {
    let s = setup();
    let e = measure(&s, 4);
    let (aware, uniform, one, freq) = (
        &e.variants[0],
        &e.variants[1],
        &e.variants[2],
        &e.variants[3],
    );
    assert_eq!(aware.slots.iter().sum::<usize>(), 4);
    assert_eq!(uniform.slots, vec![2, 2]);
    assert_eq!(one.slots, vec![1, 1]);
    assert_eq!(freq.slots, aware.slots, "α does not change slots");
    for v in &e.variants {
        for err in errors(v) {
            assert!(err > 0.0 && err.is_finite(), "{}: {err}", v.variant.name);
        }
        // Layer 0 is the first MoE layer: the end-to-end model feeds it the very
        // input the isolated measurement uses.
        assert_eq!(v.layers[0].isolated, v.layers[0].end_to_end);
        for (l, &slots) in v.layers.iter().zip(&v.slots) {
            assert_eq!(l.slots, slots);
        }
    }
    // One slot per layer is never more than layer-aware gives any layer.
    for (a, o) in aware.slots.iter().zip(&one.slots) {
        assert!(o <= a);
    }
}

#[test]
fn one_slot_per_layer_makes_every_slot_rule_the_same_customisation() {
    let s = setup();
    // B_non = number of MoE layers: every rule gives each layer one slot, and with the
    // same roles, profile and seed the clustering and the merged weights are the same.
    let e = measure(&s, 2);
    for v in &e.variants[..3] {
        assert_eq!(v.slots, vec![1, 1]);
        assert_eq!(errors(v), errors(&e.variants[0]), "{}", v.variant.name);
    }
    assert_eq!(e.change_vs_first(2, ErrorKind::EndToEnd), Some(0.0));
    // Only α differs for the last variant.
    assert_eq!(e.variants[3].slots, vec![1, 1]);
    assert_eq!(e.variants[3].merged, e.variants[0].merged);
}

#[test]
fn deterministic_for_a_seed() {
    let s = setup();
    assert_eq!(measure(&s, 3), measure(&s, 3));
}

#[test]
fn bad_input_is_a_clear_error() {
    let s = setup();
    let opts = MergeEvidenceOptions {
        b_non: 2,
        base: MergeOptions {
            pca_dim: 4,
            ..MergeOptions::default()
        },
        variants: paper_variants(),
        seed: 0,
    };
    let run = |batches: &[ProfileBatch], profile: &Profile, opts: &MergeEvidenceOptions| {
        merge_evidence(&s.model, &s.tensors, batches, profile, &s.roles, opts)
            .unwrap_err()
            .to_string()
    };
    assert!(run(&[], &s.profile, &opts).contains("no batches"));
    let none = MergeEvidenceOptions {
        variants: Vec::new(),
        ..opts.clone()
    };
    assert!(run(&s.batches, &s.profile, &none).contains("no variants"));
    let mut one_layer = s.profile.clone();
    one_layer.layers.pop();
    let err = run(&s.batches, &one_layer, &opts);
    assert!(err.contains("covers layers [0]"), "{err}");
    let padding_only = batch(1, 4, 0, &[0, 1, 2, 3]);
    let err = run(&[padding_only], &s.profile, &opts);
    assert!(err.contains("no real"), "{err}");
}
