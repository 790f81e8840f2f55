//! `fluxmoe_sim::run` end to end on a fixture model with a character tokenizer:
//! output schema, determinism, resume bit for bit.

use fluxmoe_sim::run;

mod common;
use common::{
    config, final_bytes, fixture, method_config, model_dir, predictions, records, weight_moves,
};

#[test]
fn run_writes_metrics_summary_and_final_model_deterministically() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let model = model_dir(root);
    let mut seen = 0;
    let s = run(&config(root, "a", 3), &model, false, &mut |_| seen += 1).unwrap();
    assert_eq!(seen, 3);
    assert_eq!(s.rounds, 3);
    assert!(s.virtual_seconds > 0.0 && s.bytes_up > 0);
    let recs = records(root, "a");
    assert_eq!(recs.len(), 3);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["round"], i as u64 + 1);
        for key in [
            "participants",
            "accepted",
            "dropped",
            "times",
            "bytes_up",
            "bytes_down",
            "train_metrics",
            "round_s",
            "virtual_time_end",
        ] {
            assert!(r.get(key).is_some(), "record lacks {key}");
        }
        assert!(r["train_metrics"]["train_loss"]
            .as_f64()
            .unwrap()
            .is_finite());
        assert_eq!(r["eval"].is_null(), (i + 1) % 2 != 0, "eval every 2 rounds");
    }
    // Measured beside virtual: wall seconds and peak memory per participant.
    let raw = std::fs::read_to_string(root.join("a/metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(raw.lines().next().unwrap()).unwrap();
    let t = &first["times"][0];
    assert!(t["measured_s"].as_f64().unwrap() > 0.0, "{t}");
    if cfg!(target_os = "linux") {
        // Both are read from /proc, whose per-thread counters the kernel folds in
        // lazily: with other tests' threads in this process, `start` may even exceed
        // `peak` by a little, so only their presence and size are checked.
        let peak = t["peak_rss_bytes"].as_u64().unwrap();
        let start = t["rss_start_bytes"].as_u64().unwrap();
        assert!(peak > 1 << 20 && start > 1 << 20, "{t}");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("a/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["metric"], "exact_match");
    // predictions.jsonl: what the model answered per test example at each evaluation
    // (the initial model, round 2, and the final round, scored for the summary); each
    // evaluation's scores average to its metric.
    let preds = predictions(root, "a");
    let mut by_round: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
    for p in &preds {
        assert!(p["id"].is_string() && p["output"].is_string(), "{p}");
        by_round
            .entry(p["round"].as_u64().unwrap())
            .or_default()
            .push(p["score"].as_f64().unwrap());
    }
    assert_eq!(by_round.keys().copied().collect::<Vec<_>>(), vec![0, 2, 3]);
    let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
    assert!(by_round.values().all(|v| v.len() == by_round[&0].len()));
    assert!((mean(&by_round[&2]) - recs[1]["eval"].as_f64().unwrap()).abs() < 1e-9);
    assert!((mean(&by_round[&3]) - summary["final_metric"].as_f64().unwrap()).abs() < 1e-9);
    // The final model loads back with the fixture's keys.
    let ck = fluxmoe_model::checkpoint::load_dir(&root.join("a/final"), &candle_core::Device::Cpu)
        .unwrap();
    let orig = fluxmoe_model::checkpoint::load_dir(&fixture("mixtral"), &candle_core::Device::Cpu)
        .unwrap();
    assert_eq!(
        ck.params.names().collect::<Vec<_>>(),
        orig.params.names().collect::<Vec<_>>()
    );
    // Training changed the experts and nothing else.
    for (name, t) in orig.params.tensors() {
        let same = ck
            .params
            .tensor(name)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            == t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(same, !name.contains(".experts."), "{name}");
    }
    // run.json names the config and model; export of the last checkpoint equals final/.
    let prov: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("a/run.json")).unwrap()).unwrap();
    assert_eq!(prov["config"]["seed"], 5);
    assert!(prov["model_path"].as_str().unwrap().ends_with("model"));
    let round = fluxmoe_sim::export(&root.join("a"), None, &root.join("exported")).unwrap();
    assert_eq!(round, 3);
    assert_eq!(
        std::fs::read(root.join("exported/model.safetensors")).unwrap(),
        final_bytes(root, "a")
    );
    assert!(root.join("exported/tokenizer.json").exists());
    let err = fluxmoe_sim::export(&root.join("nope"), None, &root.join("x"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("run.json"), "{err}");
    // Same config and seed: identical weights and records, with a worker pool too.
    let mut pooled = config(root, "b", 3);
    pooled.rounds.workers = 2;
    run(&pooled, &model, false, &mut |_| {}).unwrap();
    assert_eq!(final_bytes(root, "a"), final_bytes(root, "b"));
    assert_eq!(records(root, "a"), records(root, "b"));
}

#[test]
fn resume_after_an_interruption_matches_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let model = model_dir(root);
    run(&config(root, "straight", 4), &model, false, &mut |_| {}).unwrap();
    // Stop after round 2, then resume to round 4 in the same folder.
    run(&config(root, "resumed", 2), &model, false, &mut |_| {}).unwrap();
    let s = run(&config(root, "resumed", 4), &model, true, &mut |_| {}).unwrap();
    assert_eq!(s.rounds, 4);
    assert_eq!(final_bytes(root, "straight"), final_bytes(root, "resumed"));
    assert_eq!(records(root, "straight"), records(root, "resumed"));
    assert_eq!(predictions(root, "straight"), predictions(root, "resumed"));
}

#[test]
fn bad_configs_are_errors_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let model = model_dir(root);
    let mut cfg = config(root, "x", 1);
    cfg.train.trainable = "nothing.matches".into();
    let err = run(&cfg, &model, false, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("train.trainable"), "{err}");
    let mut cfg = config(root, "y", 1);
    cfg.partition.scheme = "zipf".into();
    let err = run(&cfg, &model, false, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("partition.scheme"), "{err}");
    let mut cfg = config(root, "n", 1);
    cfg.train.max_delta_norm = Some(-1.0);
    let err = run(&cfg, &model, false, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("train.max_delta_norm"), "{err}");
    let err = run(
        &config(root, "z", 1),
        &root.join("nope"),
        false,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("nope"), "{err}");
    // Resuming without a checkpoint is an error, not a fresh start.
    let err = run(&config(root, "never-ran", 2), &model, true, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("never-ran"), "{err}");
}

#[test]
fn flux_profiles_merges_tunes_a_subset_and_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let model = model_dir(root);
    run(
        &method_config(root, "f1", "flux", 3),
        &model,
        false,
        &mut |_| {},
    )
    .unwrap();
    let recs = records(root, "f1");
    assert_eq!(recs.len(), 3);
    let mut merged = 0.0;
    for r in &recs {
        let m = &r["train_metrics"];
        let err = m["profile_error"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&err), "profile error {err}");
        let tuned = m["tuned_experts"].as_f64().unwrap();
        assert!((1.0..8.0).contains(&tuned), "tuned {tuned} of 8 experts");
        merged += m["merged_experts"].as_f64().unwrap();
        for t in r["times"].as_array().unwrap() {
            assert!(t["profile_s"].as_f64().unwrap() > 0.0, "profiling charged");
        }
    }
    assert!(merged > 0.0, "the tight budget forces merging");
    // Each record holds the roles per participant and the round's activation shares.
    let report = &recs[0]["strategy"];
    let roles = report["roles"].as_object().unwrap();
    assert_eq!(roles.len(), 2, "{report}");
    for r in roles.values() {
        assert!(!r["tuning"].as_array().unwrap().is_empty());
    }
    for (_, f) in report["activation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x[0].clone(), x[1].clone()))
    {
        let sum: f64 = f
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .sum();
        assert!((sum - 1.0).abs() < 1e-9, "{f}");
    }
    // Utilities from the replies are kept per participant in the checkpoint.
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("f1/checkpoint/state.json")).unwrap(),
    )
    .unwrap();
    assert!(!state["strategy_state"]["tables"]
        .as_object()
        .unwrap()
        .is_empty());
    // Only experts change.
    let ck = fluxmoe_model::checkpoint::load_dir(&root.join("f1/final"), &candle_core::Device::Cpu)
        .unwrap();
    let orig = fluxmoe_model::checkpoint::load_dir(&fixture("mixtral"), &candle_core::Device::Cpu)
        .unwrap();
    let mut changed = 0;
    for (name, t) in orig.params.tensors() {
        let same = ck
            .params
            .tensor(name)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            == t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(same || name.contains(".experts."), "{name} changed");
        changed += usize::from(!same);
    }
    assert!(changed > 0);
    // Deterministic, also when participants profile and train on two worker threads.
    let mut pooled = method_config(root, "f2", "flux", 3);
    pooled.rounds.workers = 2;
    run(&pooled, &model, false, &mut |_| {}).unwrap();
    assert_eq!(final_bytes(root, "f1"), final_bytes(root, "f2"));
    assert_eq!(records(root, "f1"), records(root, "f2"));
}

/// FMD trains what fedavg-full trains; a derived FMD run is the simulated one, record
/// for record, apart from the reply metrics only the expert methods report.
#[test]
fn fmd_derived_from_fedavg_full_equals_fmd_simulated() {
    use fluxmoe_sim::derive::{check_derivable, derive_offloading};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let model = model_dir(root);
    // Any evaluation reaches it: the time to target is the first round's end.
    let target = Some(fluxmoe_sim::config::TargetSection {
        value: 0.0,
        stop: false,
    });
    let with_target = |out: &str, method: &str| {
        let mut cfg = method_config(root, out, method, 3);
        cfg.rounds.eval_every = 1;
        cfg.target = target.clone();
        cfg
    };
    let full = with_target("full", "fedavg-full");
    let fmd = with_target("fmd", "fmd");
    run(&full, &model, false, &mut |_| {}).unwrap();
    let simulated = run(&fmd, &model, false, &mut |_| {}).unwrap();
    let derived_cfg = with_target("derived", "fmd");
    let derived = derive_offloading(&root.join("full"), &derived_cfg, &model).unwrap();

    let strip = |recs: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        recs.into_iter()
            .map(|mut r| {
                let loss = r["train_metrics"]["train_loss"].clone();
                r["train_metrics"] = serde_json::json!({ "train_loss": loss });
                r
            })
            .collect()
    };
    let (sim, der) = (strip(records(root, "fmd")), strip(records(root, "derived")));
    let pcie: f64 = der
        .iter()
        .flat_map(|r| r["times"].as_array().unwrap().clone())
        .map(|t| t["phases"]["pcie"].as_f64().unwrap())
        .sum();
    assert!(pcie > 0.0, "the fixture fleet offloads");
    assert_eq!(sim, der);
    assert_eq!(simulated.virtual_seconds, derived.virtual_seconds);
    assert_eq!(simulated.time_to_target, derived.time_to_target);
    assert!(derived.time_to_target.is_some());
    assert_eq!(simulated.final_metric, derived.final_metric);
    assert_eq!(predictions(root, "fmd"), predictions(root, "derived"));
    let prov = fluxmoe_sim::run::read_provenance(&root.join("derived")).unwrap();
    assert_eq!(
        prov.derived_from.as_deref(),
        Some(root.join("full").as_path())
    );

    // Only FMD derives, only from fedavg-full, only with the same settings.
    let mut other = with_target("x", "fmd");
    other.train.lr *= 2.0;
    let err = check_derivable(&full, &other).unwrap_err().to_string();
    assert!(err.contains("train.lr"), "{err}");
    let err = check_derivable(&full, &with_target("x", "fmq"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("only a fmd run"), "{err}");
    let mut late = with_target("x", "fmd");
    late.fleet.deadline_s = Some(100.0);
    let err = check_derivable(&full, &late).unwrap_err().to_string();
    assert!(err.contains("deadline_s"), "{err}");
}

#[test]
fn baselines_run_on_the_same_runtime_with_their_costs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let model = model_dir(root);
    for method in ["fmd", "fmq", "fmes"] {
        let s = run(
            &method_config(root, method, method, 2),
            &model,
            false,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(s.method, method);
        let recs = records(root, method);
        let pcie: f64 = recs
            .iter()
            .flat_map(|r| r["times"].as_array().unwrap().clone())
            .map(|t| t["phases"]["pcie"].as_f64().unwrap())
            .sum();
        // Only offloading moves data over PCIe.
        assert_eq!(pcie > 0.0, method == "fmd", "{method}: pcie {pcie}");
        let tuned = recs[0]["train_metrics"]["tuned_experts"].as_f64().unwrap();
        if method == "fmq" {
            // INT4 experts travel at 4.5 of 32 bits: fmd sends the same experts in f32.
            let up = |rs: &[serde_json::Value]| rs[0]["bytes_up"].as_f64().unwrap();
            let ratio = up(&recs) / up(&records(root, "fmd"));
            assert!((ratio - 4.5 / 32.0).abs() < 1e-3, "fmq/fmd upload {ratio}");
        }
        if method == "fmes" {
            assert!(tuned < 8.0, "fmes keeps a subset, tuned {tuned}");
        } else {
            assert_eq!(tuned, 8.0, "{method} tunes every expert");
        }
    }
}

#[test]
fn a_sibling_runs_initial_metric_is_reused_only_when_its_key_matches() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let model = model_dir(root);
    let cfg = config(root, "a", 1);
    let measured = run(&cfg, &model, false, &mut |_| {})
        .unwrap()
        .initial_metric;
    let key = fluxmoe_sim::run::initial_key(&cfg, &model);
    let plant = |out: &str, key: &str| {
        std::fs::create_dir_all(root.join(out)).unwrap();
        let text = serde_json::json!({ "initial_metric": 0.123456, "key": key });
        std::fs::write(root.join(out).join("initial.json"), text.to_string()).unwrap();
    };
    // The same model, task, partition, seed and build: the planted value is used, and
    // planted answers of the initial model are kept (those of later rounds are not).
    plant("b", &key);
    let answer = |round: u32| format!(r#"{{"round":{round},"id":"x","output":"y","score":1.0}}"#);
    // A line cut short (a crash during an append) is dropped, not an error.
    std::fs::write(
        root.join("b/predictions.jsonl"),
        format!("{}\n{}\n{{\"round\":0,\"id", answer(0), answer(7)),
    )
    .unwrap();
    let b = run(&config(root, "b", 1), &model, false, &mut |_| {}).unwrap();
    assert_eq!(b.initial_metric, 0.123456);
    let rounds: Vec<(u64, String)> = predictions(root, "b")
        .iter()
        .map(|p| {
            (
                p["round"].as_u64().unwrap(),
                p["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(rounds[0], (0, "x".to_string()));
    assert!(rounds[1..].iter().all(|(r, _)| *r == 1), "{rounds:?}");
    // Another seed changes the test split: the key differs and the model is scored.
    let mut other = config(root, "c", 1);
    other.seed = 6;
    assert_ne!(fluxmoe_sim::run::initial_key(&other, &model), key);
    plant("c", &key);
    std::fs::write(root.join("c/predictions.jsonl"), format!("{}\n", answer(0))).unwrap();
    let c = run(&other, &model, false, &mut |_| {}).unwrap();
    assert_ne!(c.initial_metric, 0.123456);
    // ... and its own answers replace the planted ones.
    assert!(predictions(root, "c").iter().all(|p| p["id"] != "x"));
    // ... and scored exactly as a run with nothing planted scores it.
    let mut fresh = other.clone();
    fresh.output = root.join("c-fresh");
    let c_fresh = run(&fresh, &model, false, &mut |_| {}).unwrap();
    assert_eq!(c.initial_metric, c_fresh.initial_metric);
    // A planted file that is not valid JSON is ignored the same way.
    std::fs::create_dir_all(root.join("e")).unwrap();
    std::fs::write(root.join("e/initial.json"), "{ not json").unwrap();
    let e = run(&config(root, "e", 1), &model, false, &mut |_| {}).unwrap();
    assert_eq!(e.initial_metric, measured);
    // The method does not enter the key.
    let mut flux = config(root, "d", 1);
    flux.method.name = "flux".into();
    assert_eq!(fluxmoe_sim::run::initial_key(&flux, &model), key);
}

#[test]
fn participants_download_only_the_experts_changed_since_their_last_round() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let model = model_dir(root);
    let down = |out: &str| -> Vec<u64> {
        records(root, out)
            .iter()
            .map(|r| r["bytes_down"].as_u64().unwrap())
            .collect()
    };
    let mut changed = method_config(root, "changed", "flux", 3);
    assert_eq!(
        changed.fleet.download,
        fluxmoe_fed::Download::Changed,
        "the default"
    );
    changed.rounds.per_round = 3;
    run(&changed, &model, false, &mut |_| {}).unwrap();
    let mut everything = method_config(root, "everything", "flux", 3);
    everything.fleet.download = fluxmoe_fed::Download::Everything;
    everything.rounds.per_round = 3;
    run(&everything, &model, false, &mut |_| {}).unwrap();
    // Accounting only: the same training, the same model.
    assert_eq!(
        final_bytes(root, "changed"),
        final_bytes(root, "everything")
    );
    let (c, e) = (down("changed"), down("everything"));
    // Everyone starts from the public initial checkpoint.
    assert_eq!(c[0], 0, "{c:?}");
    assert!(e.iter().all(|&b| b > 0), "{e:?}");
    // Later rounds fetch the experts the previous round tuned, never more than all.
    assert!(
        c[1] > 0 && c[1..].iter().zip(&e[1..]).all(|(c, e)| c <= e),
        "{c:?} vs {e:?}"
    );
    // FLUX tunes a subset, so some experts never need to travel again.
    assert!(
        c[1..].iter().sum::<u64>() < e[1..].iter().sum::<u64>(),
        "{c:?} vs {e:?}"
    );
    // The virtual clock charges only what moved.
    let t = |out: &str| {
        records(root, out)[0]["times"][0]["phases"]["download"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(t("changed"), 0.0);
    assert!(t("everything") > 0.0);
}

#[test]
fn flux_resume_with_stale_profiling_matches_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let model = model_dir(root);
    run(
        &method_config(root, "straight", "flux", 4),
        &model,
        false,
        &mut |_| {},
    )
    .unwrap();
    run(
        &method_config(root, "resumed", "flux", 2),
        &model,
        false,
        &mut |_| {},
    )
    .unwrap();
    let state = std::fs::read_to_string(root.join("resumed/checkpoint/state.json")).unwrap();
    assert!(state.contains("previous-r3.safetensors"), "{state}");
    run(
        &method_config(root, "resumed", "flux", 4),
        &model,
        true,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(final_bytes(root, "straight"), final_bytes(root, "resumed"));
    assert_eq!(records(root, "straight"), records(root, "resumed"));
}

#[test]
fn fedprox_keeps_the_global_model_closer_to_where_it_started() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let model = model_dir(root);
    let moved = |out: &str, mu: f64| {
        let mut cfg = config(root, out, 2);
        cfg.train.fedprox_mu = mu;
        run(&cfg, &model, false, &mut |_| {}).unwrap();
        weight_moves(root, out)
            .iter()
            .flat_map(|(_, d)| d.iter().map(|x| x * x))
            .sum::<f32>()
    };
    let (plain, prox) = (moved("plain", 0.0), moved("prox", 1e4));
    assert!(plain > 0.0);
    assert!(prox < 0.8 * plain, "fedprox {prox} vs fedavg {plain}");
    let mut cfg = config(root, "bad", 1);
    cfg.train.fedprox_mu = -1.0;
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("train.fedprox_mu"), "{err}");
}

#[test]
fn custom_and_weighted_fleets_assign_profiles() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let model = model_dir(root);
    let mut cfg = config(root, "fleet", 1);
    cfg.fleet.custom = vec![fluxmoe_fed::DeviceProfile {
        name: "laptop".into(),
        ..fluxmoe_fed::DeviceProfile::cpu()
    }];
    cfg.fleet.profiles = vec!["laptop".into(), "rtx4090".into()];
    cfg.fleet.weights = Some(vec![1.0, 0.0]);
    run(&cfg, &model, false, &mut |_| {}).unwrap();
    for r in records(root, "fleet") {
        for t in r["times"].as_array().unwrap() {
            assert_eq!(t["device"], "laptop", "weight 0 never drawn");
        }
    }
    cfg.fleet.profiles = vec!["desktop".into()];
    cfg.fleet.weights = None;
    let err = run(&cfg, &model, false, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("fleet.profiles") && err.contains("desktop"),
        "{err}"
    );
}

#[test]
fn updates_beyond_max_delta_norm_are_rejected_and_the_global_keeps_its_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let model = model_dir(root);
    let mut cfg = config(root, "bounded", 2);
    cfg.train.max_delta_norm = Some(1e-12);
    let mut rounds = Vec::new();
    run(&cfg, &model, false, &mut |rec| rounds.push(rec.clone())).unwrap();
    assert_eq!(rounds.len(), 2);
    for rec in &rounds {
        assert!(rec.accepted.is_empty(), "{rec:?}");
        assert!(!rec.global_updated, "{rec:?}");
        assert!(
            rec.dropped
                .iter()
                .any(|f| f.reason.contains("above max_delta_norm")),
            "{:?}",
            rec.dropped
        );
    }
    // A generous bound changes nothing.
    let mut loose = config(root, "loose", 2);
    loose.train.max_delta_norm = Some(1e9);
    run(&loose, &model, false, &mut |_| {}).unwrap();
    run(&config(root, "free", 2), &model, false, &mut |_| {}).unwrap();
    assert_eq!(final_bytes(root, "loose"), final_bytes(root, "free"));
}

#[test]
fn a_server_learning_rate_scales_each_rounds_update_for_every_method() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let model = model_dir(root);
    // Per tensor, the final weights minus the initial ones, after one round.
    let moved = |cfg: &fluxmoe_sim::config::RunFile, out: &str| {
        run(cfg, &model, false, &mut |_| {}).unwrap();
        weight_moves(root, out)
    };
    for method in ["fedavg-full", "flux"] {
        let full_out = format!("{method}-full");
        let half_out = format!("{method}-half");
        let mut full = method_config(root, &full_out, method, 1);
        let mut half = method_config(root, &half_out, method, 1);
        full.train.lr = 1e-2;
        half.train.lr = 1e-2;
        half.train.server_optimizer = fluxmoe_fed::ServerOptimizerConfig::Sgd { lr: 0.5 };
        let (a, b) = (moved(&full, &full_out), moved(&half, &half_out));
        let mut changed = 0;
        for ((name, da), (_, db)) in a.iter().zip(&b) {
            for (x, y) in da.iter().zip(db) {
                // The same local training (same seed), half of its mean delta applied;
                // the tolerance covers rounding of w + Δ in f32.
                assert!(
                    (y - 0.5 * x).abs() <= 1e-6 + 1e-3 * x.abs(),
                    "{method} {name}: {y} vs {x}/2"
                );
                if *x != 0.0 {
                    changed += 1;
                }
            }
        }
        assert!(changed > 0, "{method}: one round changed nothing");
    }
}

/// `task.test_seed` fixes the test examples across run seeds (so a suite's fixed target
/// means the same on every seed) and leaves the rest of the run to `seed`; unset, the
/// run's seed picks the test examples too.
#[test]
fn test_seed_fixes_the_scored_examples_across_run_seeds() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let model = model_dir(root);
    let scored = |out: &str| -> Vec<String> {
        predictions(root, out)
            .iter()
            .filter(|p| p["round"] == 0)
            .map(|p| p["id"].as_str().unwrap().to_string())
            .collect()
    };
    let go = |out: &str, seed: u64, test_seed: Option<u64>| {
        let mut cfg = config(root, out, 1);
        cfg.seed = seed;
        cfg.task.test_seed = test_seed;
        cfg.task.eval_limit = 8;
        run(&cfg, &model, false, &mut |_| {}).unwrap();
    };
    go("s5", 5, None);
    go("s6", 6, None);
    go("s5-t5", 5, Some(5));
    go("s6-t5", 6, Some(5));
    assert_eq!(scored("s5").len(), 8);
    assert_ne!(
        scored("s5"),
        scored("s6"),
        "the run seed picks the examples"
    );
    assert_eq!(
        scored("s5-t5"),
        scored("s5"),
        "test_seed = seed changes nothing"
    );
    assert_eq!(
        scored("s6-t5"),
        scored("s5"),
        "test_seed fixes the examples"
    );
    assert_eq!(
        final_bytes(root, "s5-t5"),
        final_bytes(root, "s5"),
        "the same training"
    );
    assert_ne!(
        final_bytes(root, "s6-t5"),
        final_bytes(root, "s5-t5"),
        "the run seed still drives training"
    );
}
