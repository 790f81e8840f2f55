//! Sparse upcycling: the MoE equals the dense model at initialisation and is a valid
//! Mixtral checkpoint.

mod common;

use common::{fixture, max_abs_diff};

use candle_core::{Device, Tensor};
use fluxmoe_model::upcycle::{sparse_upcycle, SparseUpcycle};
use fluxmoe_model::{checkpoint, Arch, MoeModel};

fn logits(ck: &fluxmoe_model::Checkpoint, ids: &Tensor) -> Tensor {
    MoeModel::new(&ck.config, &ck.params)
        .unwrap()
        .forward(ids, None, false)
        .unwrap()
        .logits
}

#[test]
fn sparse_upcycled_moe_equals_the_dense_model_and_round_trips() {
    let dense = checkpoint::load_dir(&fixture("llama"), &Device::Cpu).unwrap();
    let ids =
        candle_core::safetensors::load(fixture("llama").join("golden.safetensors"), &Device::Cpu)
            .unwrap()
            .remove("input_ids")
            .unwrap();
    let want = logits(&dense, &ids);
    for (experts, top_k) in [(4, 1), (4, 2), (8, 2)] {
        let spec = SparseUpcycle {
            n_experts: experts,
            top_k,
            router_std: 0.02,
            seed: 7,
        };
        let moe = sparse_upcycle(&dense, &spec).unwrap();
        assert_eq!(moe.config.arch, Arch::Mixtral);
        assert_eq!(moe.config.moe_layers(), vec![0, 1]);
        assert!(
            moe.params
                .contains("model.layers.1.block_sparse_moe.experts.7.w2.weight")
                == (experts == 8)
        );
        assert!(!moe.params.names().any(|n| n.contains(".mlp.")));
        let got = logits(&moe, &ids);
        let err = max_abs_diff(&got, &want);
        assert!(err <= 1e-5, "E={experts} K={top_k}: {err}");
        // Saved as a checkpoint folder, it loads back as the same model.
        let dir = tempfile::tempdir().unwrap();
        checkpoint::save_dir(dir.path(), &moe.config_json, &moe.params, &moe.layout).unwrap();
        let back = checkpoint::load_dir(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(back.config, moe.config);
        assert_eq!(max_abs_diff(&logits(&back, &ids), &got), 0.0);
    }
}

#[test]
fn upcycling_is_deterministic_per_seed_and_checks_its_input() {
    let dense = checkpoint::load_dir(&fixture("llama"), &Device::Cpu).unwrap();
    let spec = SparseUpcycle {
        n_experts: 4,
        top_k: 2,
        router_std: 0.02,
        seed: 1,
    };
    let router = |s: &SparseUpcycle| {
        sparse_upcycle(&dense, s)
            .unwrap()
            .params
            .tensor("model.layers.0.block_sparse_moe.gate.weight")
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(router(&spec), router(&spec));
    assert_ne!(
        router(&spec),
        router(&SparseUpcycle {
            seed: 2,
            ..spec.clone()
        })
    );
    let std = {
        let r = router(&spec);
        (r.iter().map(|x| x * x).sum::<f32>() / r.len() as f32).sqrt()
    };
    assert!((std - 0.02).abs() < 0.004, "router std {std}");
    let bad = SparseUpcycle {
        top_k: 5,
        ..spec.clone()
    };
    assert!(sparse_upcycle(&dense, &bad)
        .unwrap_err()
        .to_string()
        .contains("top-5"));
    let moe = checkpoint::load_dir(&fixture("mixtral"), &Device::Cpu).unwrap();
    assert!(sparse_upcycle(&moe, &spec)
        .unwrap_err()
        .to_string()
        .contains("dense llama"));
}
