//! Sparse upcycling: the MoE equals the dense model at initialisation and is a valid
//! Mixtral checkpoint.

mod common;

use common::{fixture, golden_ids, max_abs_diff};

use candle_core::{Device, Tensor};
use fluxmoe_model::config::RouterKind;
use fluxmoe_model::keys::{dense_mlp_key, expert_key, router_keys, Proj};
use fluxmoe_model::upcycle::{
    btx_upcycle, sparse_upcycle, split_upcycle, BtxSpec, DomainData, NeuronPartition, RouterInit,
    SparseUpcycle, SplitRouter, SplitUpcycle,
};
use fluxmoe_model::{checkpoint, Arch, Checkpoint, MoeModel, ParamStore};

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

// Branch-Train-MiX.

/// Windows of one repeated 6-token cycle drawn from ids `lo..lo + 30`, each window
/// starting at another phase.
fn cyclic_domain(name: &str, lo: u32, n_windows: usize, seq: usize) -> DomainData {
    let cycle = [3, 11, 5, 20, 8, 27, 14].map(|x| lo + x);
    DomainData {
        name: name.into(),
        windows: (0..n_windows)
            .map(|i| (0..seq).map(|t| cycle[(i + t) % cycle.len()]).collect())
            .collect(),
    }
}

fn btx_spec(n_experts: usize, expert_steps: usize, router_steps: usize) -> BtxSpec {
    BtxSpec {
        n_experts,
        top_k: 2,
        expert_steps,
        router_steps,
        batch_size: 4,
        expert_lr: 3e-3,
        router_lr: 1e-2,
        max_grad_norm: 1.0,
        probe_windows: 4,
        router_logit_rms: 1.0,
        router_init: RouterInit::ClassMeans,
        seed: 7,
    }
}

fn batch_ids(windows: &[Vec<u32>]) -> Tensor {
    let flat: Vec<u32> = windows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (windows.len(), windows[0].len()), &Device::Cpu).unwrap()
}

fn mixtral_router(l: usize) -> String {
    router_keys(Arch::Mixtral, RouterKind::Linear, l).remove(0)
}

fn three_domains() -> [DomainData; 3] {
    [
        cyclic_domain("a", 0, 12, 16),
        cyclic_domain("b", 45, 12, 16),
        cyclic_domain("c", 90, 12, 16),
    ]
}

/// The dense model with expert `e` of `moe` as every layer's FFN.
fn branch(dense: &Checkpoint, moe: &Checkpoint, e: usize) -> MoeModel {
    let mut params = ParamStore::new();
    for (name, t) in dense.params.tensors() {
        params.insert(name, t.clone());
    }
    for l in 0..dense.config.num_layers() {
        for p in Proj::ALL {
            let w = moe
                .params
                .tensor(&expert_key(Arch::Mixtral, l, e, p))
                .unwrap();
            params.insert(dense_mlp_key(l, p), w.clone());
        }
    }
    MoeModel::new(&dense.config, &params).unwrap()
}

fn loss(model: &MoeModel, windows: &[Vec<u32>]) -> f32 {
    model
        .loss(&batch_ids(windows), None, None)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// Per MoE layer, the share of the tokens of `windows` whose first-ranked expert is `e`.
fn first_choice_share(moe: &Checkpoint, windows: &[Vec<u32>], e: usize) -> Vec<f64> {
    let model = MoeModel::new(&moe.config, &moe.params).unwrap();
    let out = model.forward(&batch_ids(windows), None, true).unwrap();
    out.traces
        .iter()
        .map(|trace| {
            let first: Vec<u32> = trace
                .routing
                .topk_idx
                .narrow(1, 0, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            first.iter().filter(|&&x| x as usize == e).count() as f64 / first.len() as f64
        })
        .collect()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn btx_without_steps_on_identical_domains_is_the_dense_model() {
    let dense = checkpoint::load_dir(&fixture("llama"), &Device::Cpu).unwrap();
    let a = cyclic_domain("a", 0, 8, 16);
    let b = DomainData {
        name: "b".into(),
        ..a.clone()
    };
    let ids = golden_ids("llama");
    let want = logits(&dense, &ids);
    for router_steps in [0, 3] {
        let out = btx_upcycle(
            &dense,
            &[a.clone(), b.clone()],
            &btx_spec(2, 0, router_steps),
        )
        .unwrap();
        let moe = &out.checkpoint;
        assert_eq!(moe.config.arch, Arch::Mixtral);
        assert_eq!(moe.config_json["num_local_experts"], 2);
        assert_eq!(moe.config_json["num_experts_per_tok"], 2);
        assert_eq!(moe.config_json["fluxmoe_upcycle"]["method"], "btx");
        for l in 0..2 {
            for p in Proj::ALL {
                let dense_w = values(dense.params.tensor(&dense_mlp_key(l, p)).unwrap());
                for e in 0..2 {
                    let w = values(
                        moe.params
                            .tensor(&expert_key(Arch::Mixtral, l, e, p))
                            .unwrap(),
                    );
                    assert_eq!(w, dense_w, "layer {l} expert {e} {p:?}");
                }
            }
            // Identical domains have identical means: nothing to tell them apart.
            let router = values(moe.params.tensor(&mixtral_router(l)).unwrap());
            if router_steps == 0 {
                assert!(router.iter().all(|&x| x == 0.0), "layer {l}: {router:?}");
            }
        }
        let err = max_abs_diff(&logits(moe, &ids), &want);
        assert!(err <= 1e-5, "router steps {router_steps}: {err}");
        for r in &out.report.domains {
            assert!((r.expert_loss - r.dense_loss).abs() < 1e-6, "{r:?}");
        }
        assert_eq!(out.report.router_loss.is_some(), router_steps > 0);
        // Saved with its config, it loads back through load_model as the same model.
        let dir = tempfile::tempdir().unwrap();
        checkpoint::save_dir(dir.path(), &moe.config_json, &moe.params, &moe.layout).unwrap();
        let back = fluxmoe_model::load_model(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(back.checkpoint.config, moe.config);
        assert_eq!(
            max_abs_diff(&logits(&back.checkpoint, &ids), &logits(moe, &ids)),
            0.0
        );
    }
}

#[test]
fn btx_experts_specialise_and_the_router_sends_each_domain_to_its_expert() {
    let dense = checkpoint::load_dir(&fixture("llama"), &Device::Cpu).unwrap();
    let domains = three_domains();
    let dense_model = MoeModel::new(&dense.config, &dense.params).unwrap();
    for router_steps in [0, 20] {
        let out = btx_upcycle(&dense, &domains, &btx_spec(3, 30, router_steps)).unwrap();
        let moe = &out.checkpoint;
        for l in 0..2 {
            for p in Proj::ALL {
                let dense_w = dense.params.tensor(&dense_mlp_key(l, p)).unwrap();
                let w: Vec<&Tensor> = (0..3)
                    .map(|e| {
                        moe.params
                            .tensor(&expert_key(Arch::Mixtral, l, e, p))
                            .unwrap()
                    })
                    .collect();
                for e in 0..3 {
                    assert!(
                        max_abs_diff(w[e], dense_w) > 1e-3,
                        "layer {l} {p:?} expert {e}"
                    );
                    for d in 0..e {
                        assert!(
                            max_abs_diff(w[e], w[d]) > 1e-3,
                            "layer {l} {p:?} experts {d}, {e}"
                        );
                    }
                }
            }
        }
        // Each branch has learnt its own domain, better than the dense model and than
        // the other domains' branches.
        let branches: Vec<MoeModel> = (0..3).map(|e| branch(&dense, moe, e)).collect();
        for (e, domain) in domains.iter().enumerate() {
            let own = loss(&branches[e], &domain.windows);
            let base = loss(&dense_model, &domain.windows);
            assert!(own < 0.5 * base, "domain {e}: expert {own}, dense {base}");
            for d in (0..3).filter(|&d| d != e) {
                let other = loss(&branches[d], &domain.windows);
                assert!(
                    own < other,
                    "domain {e}: own expert {own}, expert {d} {other}"
                );
            }
            let r = &out.report.domains[e];
            assert_eq!(r.name, domain.name);
            assert!(r.expert_loss < r.dense_loss, "{r:?}");
        }
        // The router sends each domain's tokens first to its own expert far more often
        // than chance (1/3) in every layer, and mostly so over the layers. (Layer 1's
        // router was fitted to dense hidden states, which layer 0's experts have moved.)
        for (e, domain) in domains.iter().enumerate() {
            let shares = first_choice_share(moe, &domain.windows, e);
            let mean = shares.iter().sum::<f64>() / shares.len() as f64;
            assert!(
                shares.iter().all(|&s| s > 0.45) && mean > 0.7,
                "router steps {router_steps}, domain {e}: {shares:?}"
            );
        }
        if router_steps == 0 {
            check_initial_router(&dense_model, moe, &domains);
        } else {
            let (first, last) = out.report.router_loss.unwrap();
            assert!(last < first, "router loss {first} -> {last}");
        }
    }
}

#[test]
fn btx_at_top1_trains_the_routers_routing_top2_and_lowers_the_top1_loss() {
    // Mixtral's renormalised top-1 weight is exactly 1, so training at top-1 gives the
    // routers no gradient (measured: mean loss 1.2086 -> 1.2089 over these 20 steps);
    // routing top-2 while training compares the two best experts.
    let dense = checkpoint::load_dir(&fixture("llama"), &Device::Cpu).unwrap();
    let domains = three_domains();
    let build = |router_steps| {
        let spec = BtxSpec {
            top_k: 1,
            ..btx_spec(3, 5, router_steps)
        };
        btx_upcycle(&dense, &domains, &spec).unwrap().checkpoint
    };
    let (untrained, trained) = (build(0), build(20));
    for moe in [&untrained, &trained] {
        let recipe = &moe.config_json["fluxmoe_upcycle"];
        assert_eq!(recipe["router_training_top_k"], 2, "{recipe}");
        let cfg = &moe.config;
        assert!(cfg
            .moe_layers()
            .iter()
            .all(|&l| cfg.moe(l).unwrap().top_k == 1));
    }
    // The top-1 model's mean loss on the domains' windows, before and after.
    let mean_loss = |ck: &Checkpoint| {
        let model = MoeModel::new(&ck.config, &ck.params).unwrap();
        domains
            .iter()
            .map(|d| loss(&model, &d.windows))
            .sum::<f32>()
            / 3.0
    };
    let (before, after) = (mean_loss(&untrained), mean_loss(&trained));
    assert!(after < 0.9 * before, "top-1 loss {before} -> {after}");
    // Top-2 and up train at their own k.
    let top2 = btx_upcycle(&dense, &domains, &btx_spec(3, 1, 0)).unwrap();
    assert_eq!(
        top2.checkpoint.config_json["fluxmoe_upcycle"]["router_training_top_k"],
        2
    );
    let top3 = BtxSpec {
        top_k: 3,
        ..btx_spec(3, 1, 0)
    };
    let top3 = btx_upcycle(&dense, &domains, &top3).unwrap();
    assert_eq!(
        top3.checkpoint.config_json["fluxmoe_upcycle"]["router_training_top_k"],
        3
    );
}

/// The initial router rows are centred over the experts and give logits of RMS 1 on
/// the probe windows (4 of 12: windows 0, 3, 6, 9) of every domain.
fn check_initial_router(dense_model: &MoeModel, moe: &Checkpoint, domains: &[DomainData]) {
    let probes: Vec<Vec<u32>> = domains
        .iter()
        .flat_map(|d| [0, 3, 6, 9].map(|i| d.windows[i].clone()))
        .collect();
    let inputs = dense_model.ffn_inputs(&batch_ids(&probes), None).unwrap();
    for (l, x) in inputs.iter().enumerate() {
        let router = moe.params.tensor(&mixtral_router(l)).unwrap();
        let column_sums = values(&router.sum(0).unwrap());
        let scale = values(router).iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(
            column_sums.iter().all(|s| s.abs() < 1e-5 * scale.max(1.0)),
            "layer {l}"
        );
        let rows = values(router);
        let h = rows.len() / 3;
        for e in 0..3 {
            for d in 0..e {
                assert_ne!(rows[e * h..(e + 1) * h], rows[d * h..(d + 1) * h]);
            }
        }
        let logits = x.matmul(&router.t().unwrap()).unwrap();
        let rms = values(&logits.sqr().unwrap().mean_all().unwrap().sqrt().unwrap())[0];
        assert!((rms - 1.0).abs() < 1e-3, "layer {l}: logit rms {rms}");
    }
}

#[test]
fn btx_is_deterministic_per_seed() {
    let dense = checkpoint::load_dir(&fixture("llama"), &Device::Cpu).unwrap();
    let domains = three_domains();
    let saved = |seed: u64| {
        let spec = BtxSpec {
            seed,
            ..btx_spec(3, 5, 3)
        };
        let moe = btx_upcycle(&dense, &domains, &spec).unwrap().checkpoint;
        let dir = tempfile::tempdir().unwrap();
        checkpoint::save_dir(dir.path(), &moe.config_json, &moe.params, &moe.layout).unwrap();
        std::fs::read(dir.path().join("model.safetensors")).unwrap()
    };
    let a = saved(1);
    assert!(a == saved(1), "same seed, different bytes");
    assert!(a != saved(2), "another seed draws other batches");
}

#[test]
fn btx_rejects_bad_input_with_a_clear_error() {
    let dense = checkpoint::load_dir(&fixture("llama"), &Device::Cpu).unwrap();
    let [a, b, c] = three_domains();
    let err = |domains: &[DomainData], spec: &BtxSpec| {
        btx_upcycle(&dense, domains, spec).unwrap_err().to_string()
    };
    let spec = btx_spec(3, 1, 1);
    let e = err(&[a.clone(), b.clone()], &spec);
    assert!(e.contains("3 experts, got 2 domains (a,b)"), "{e}");
    let all = [a.clone(), b.clone(), c.clone()];
    let e = err(
        &all,
        &BtxSpec {
            top_k: 4,
            ..spec.clone()
        },
    );
    assert!(e.contains("top-4"), "{e}");
    let empty = DomainData {
        name: "empty".into(),
        windows: Vec::new(),
    };
    let e = err(&[a.clone(), b.clone(), empty], &spec);
    assert!(e.contains("domain `empty` has no training windows"), "{e}");
    let mut ragged = c.clone();
    ragged.windows[2].pop();
    let e = err(&[a.clone(), b.clone(), ragged], &spec);
    assert!(
        e.contains("domain `c`: window 2 has 15 ids, expected 16"),
        "{e}"
    );
    let mut outside = c.clone();
    outside.windows[1][5] = 500;
    let e = err(&[a.clone(), b.clone(), outside], &spec);
    assert!(
        e.contains("token id 500, outside the vocabulary of 128"),
        "{e}"
    );
    let e = err(
        &all,
        &BtxSpec {
            batch_size: 0,
            ..spec.clone()
        },
    );
    assert!(e.contains("batch size must be at least 1"), "{e}");
    let e = err(
        &all,
        &BtxSpec {
            expert_lr: f64::NAN,
            ..spec.clone()
        },
    );
    assert!(e.contains("expert lr must be finite"), "{e}");
    let moe = checkpoint::load_dir(&fixture("mixtral"), &Device::Cpu).unwrap();
    let e = btx_upcycle(&moe, &all, &spec).unwrap_err().to_string();
    assert!(e.contains("dense llama"), "{e}");
}

/// Tensor `key` is the same in both checkpoints, to the bit.
fn assert_same_tensor(a: &Checkpoint, b: &Checkpoint, key: &str) {
    let diff = max_abs_diff(a.params.tensor(key).unwrap(), b.params.tensor(key).unwrap());
    assert_eq!(diff, 0.0, "{key}");
}

fn split_spec(experts: usize, top_k: usize, partition: NeuronPartition) -> SplitUpcycle {
    SplitUpcycle {
        n_experts: experts,
        top_k,
        partition,
        score_scale: None,
        router: SplitRouter::Random { std: 0.0 },
        seed: 5,
    }
}

#[test]
fn split_experts_together_are_the_dense_ffn_and_round_trip_as_llama_moe() {
    let dense = checkpoint::load_dir(&fixture("llama"), &Device::Cpu).unwrap();
    let ids = golden_ids("llama");
    let want = logits(&dense, &ids);
    let width = match dense.config.layers[0] {
        fluxmoe_model::config::Ffn::Dense { width } => width,
        _ => unreachable!("the llama fixture is dense"),
    };
    for partition in [NeuronPartition::Random, NeuronPartition::Clustered] {
        for experts in [2, 4] {
            // All experts chosen, a zero router (weights 1/E) and a scale of E: the sum
            // of the experts is exactly the dense FFN.
            let spec = SplitUpcycle {
                score_scale: Some(experts as f64),
                ..split_spec(experts, experts, partition)
            };
            let moe = split_upcycle(&dense, &spec).unwrap();
            assert_eq!(moe.config.arch, Arch::LlamaMoe);
            assert!(!moe.params.names().any(|n| n.contains(".mlp.gate_proj")));
            let err = max_abs_diff(&logits(&moe, &ids), &want);
            assert!(err <= 1e-4, "{partition:?} E={experts}: {err}");
            for l in 0..dense.config.num_layers() {
                let rows: usize = (0..experts)
                    .map(|e| {
                        moe.params
                            .tensor(&expert_key(Arch::LlamaMoe, l, e, Proj::Up))
                            .unwrap()
                            .dim(0)
                            .unwrap()
                    })
                    .sum();
                assert_eq!(rows, width);
            }
        }
        // Top-1 of 4 with a random router: a different function, saved and loaded back
        // as the same model.
        let spec = SplitUpcycle {
            router: SplitRouter::Random { std: 0.02 },
            ..split_spec(4, 1, partition)
        };
        let moe = split_upcycle(&dense, &spec).unwrap();
        let got = logits(&moe, &ids);
        assert!(max_abs_diff(&got, &want) > 1e-3);
        let dir = tempfile::tempdir().unwrap();
        checkpoint::save_dir(dir.path(), &moe.config_json, &moe.params, &moe.layout).unwrap();
        let back = checkpoint::load_dir(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(back.config, moe.config);
        assert_eq!(max_abs_diff(&logits(&back, &ids), &got), 0.0);
        // The default scale is E / K.
        assert_eq!(back.config_json["score_scale_factor"], 4.0);
        // Same seed, same split.
        let again = split_upcycle(&dense, &spec).unwrap();
        assert_same_tensor(&again, &moe, &expert_key(Arch::LlamaMoe, 1, 2, Proj::Down));
    }
}

#[test]
fn split_checks_its_input() {
    let dense = checkpoint::load_dir(&fixture("llama"), &Device::Cpu).unwrap();
    let too_many = split_upcycle(&dense, &split_spec(100_000, 2, NeuronPartition::Random))
        .unwrap_err()
        .to_string();
    assert!(too_many.contains("100000 experts"), "{too_many}");
    let bad_scale = SplitUpcycle {
        score_scale: Some(0.0),
        ..split_spec(4, 2, NeuronPartition::Random)
    };
    let err = split_upcycle(&dense, &bad_scale).unwrap_err().to_string();
    assert!(err.contains("score_scale_factor"), "{err}");
    let moe = checkpoint::load_dir(&fixture("mixtral"), &Device::Cpu).unwrap();
    let err = split_upcycle(&moe, &split_spec(4, 2, NeuronPartition::Random))
        .unwrap_err()
        .to_string();
    assert!(err.contains("dense llama"), "{err}");
}

/// Per layer, the share of tokens whose first-ranked expert under `moe` is the one an
/// oracle picks: the expert whose output has the largest norm under the dense model.
fn oracle_agreement(dense: &Checkpoint, moe: &Checkpoint, ids: &Tensor) -> Vec<f64> {
    let inputs = MoeModel::new(&dense.config, &dense.params)
        .unwrap()
        .ffn_inputs(ids, None)
        .unwrap();
    let n_experts = moe.config_json["num_experts"].as_u64().unwrap() as usize;
    inputs
        .iter()
        .enumerate()
        .map(|(l, x)| {
            let w = |e, p| {
                moe.params
                    .tensor(&expert_key(Arch::LlamaMoe, l, e, p))
                    .unwrap()
                    .t()
                    .unwrap()
            };
            let norms: Vec<Tensor> = (0..n_experts)
                .map(|e| {
                    let act = (x.matmul(&w(e, Proj::Gate)).unwrap().silu().unwrap()
                        * x.matmul(&w(e, Proj::Up)).unwrap())
                    .unwrap();
                    let y = act.matmul(&w(e, Proj::Down)).unwrap();
                    y.sqr().unwrap().sum(1).unwrap()
                })
                .collect();
            let oracle: Vec<u32> = Tensor::stack(&norms, 1)
                .unwrap()
                .argmax(1)
                .unwrap()
                .to_vec1()
                .unwrap();
            let router = moe
                .params
                .tensor(&router_keys(Arch::LlamaMoe, RouterKind::Linear, l)[0])
                .unwrap();
            let first: Vec<u32> = x
                .matmul(&router.t().unwrap())
                .unwrap()
                .argmax(1)
                .unwrap()
                .to_vec1()
                .unwrap();
            let same = oracle.iter().zip(&first).filter(|(a, b)| a == b).count();
            same as f64 / oracle.len() as f64
        })
        .collect()
}

#[test]
fn a_centroid_router_follows_the_oracle_and_beats_a_random_one() {
    let dense = checkpoint::load_dir(&fixture("llama"), &Device::Cpu).unwrap();
    let calibration = three_domains().to_vec();
    let spec = SplitUpcycle {
        router: SplitRouter::Centroid {
            calibration: calibration.clone(),
            batch_size: 5,
            logit_rms: 1.0,
        },
        ..split_spec(4, 2, NeuronPartition::Random)
    };
    let moe = split_upcycle(&dense, &spec).unwrap();
    assert_eq!(moe.config_json["fluxmoe_upcycle"]["router"], "centroid");
    let windows: Vec<Vec<u32>> = calibration.iter().flat_map(|d| d.windows.clone()).collect();
    let ids = batch_ids(&windows);
    let inputs = MoeModel::new(&dense.config, &dense.params)
        .unwrap()
        .ffn_inputs(&ids, None)
        .unwrap();
    for (l, x) in inputs.iter().enumerate() {
        let router = moe
            .params
            .tensor(&router_keys(Arch::LlamaMoe, RouterKind::Linear, l)[0])
            .unwrap();
        let logits = x.matmul(&router.t().unwrap()).unwrap();
        let rms = values(&logits.sqr().unwrap().mean_all().unwrap().sqrt().unwrap())[0];
        assert!((rms - 1.0).abs() < 1e-3, "layer {l}: logit rms {rms}");
    }
    // The router's first choice is the oracle's far more often than by chance (1/4).
    let agreement = oracle_agreement(&dense, &moe, &ids);
    let mean = agreement.iter().sum::<f64>() / agreement.len() as f64;
    assert!(mean > 0.5, "agreement per layer {agreement:?}");
    // And the model it gives predicts the calibration text better than a random router.
    let random = split_upcycle(
        &dense,
        &SplitUpcycle {
            router: SplitRouter::Random { std: 0.02 },
            ..split_spec(4, 2, NeuronPartition::Random)
        },
    )
    .unwrap();
    let model = |ck: &Checkpoint| MoeModel::new(&ck.config, &ck.params).unwrap();
    let (centroid_loss, random_loss) = (
        loss(&model(&moe), &windows),
        loss(&model(&random), &windows),
    );
    assert!(
        centroid_loss < random_loss,
        "centroid {centroid_loss} vs random {random_loss}"
    );
    // Deterministic.
    let again = split_upcycle(&dense, &spec).unwrap();
    assert_same_tensor(
        &again,
        &moe,
        &router_keys(Arch::LlamaMoe, RouterKind::Linear, 1)[0],
    );
}

#[test]
fn a_centroid_router_checks_its_calibration_text() {
    let dense = checkpoint::load_dir(&fixture("llama"), &Device::Cpu).unwrap();
    let err = |calibration: Vec<DomainData>, batch_size: usize, logit_rms: f64| {
        let spec = SplitUpcycle {
            router: SplitRouter::Centroid {
                calibration,
                batch_size,
                logit_rms,
            },
            ..split_spec(4, 2, NeuronPartition::Random)
        };
        split_upcycle(&dense, &spec).unwrap_err().to_string()
    };
    let [a, b, _] = three_domains();
    let e = err(Vec::new(), 4, 1.0);
    assert!(e.contains("needs calibration text"), "{e}");
    let empty = DomainData {
        name: "empty".into(),
        windows: Vec::new(),
    };
    let e = err(vec![a.clone(), empty], 4, 1.0);
    assert!(
        e.contains("domain `empty` has no calibration windows"),
        "{e}"
    );
    let mut outside = b.clone();
    outside.windows[0][0] = 999;
    let e = err(vec![a.clone(), outside], 4, 1.0);
    assert!(e.contains("token id 999, outside the vocabulary"), "{e}");
    let e = err(vec![a.clone()], 0, 1.0);
    assert!(e.contains("batch size must be at least 1"), "{e}");
    let e = err(vec![a], 4, f64::INFINITY);
    assert!(e.contains("router logit rms must be finite"), "{e}");
}
