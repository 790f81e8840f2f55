//! `fluxmoe upcycle` writes a Mixtral folder that computes what the dense model does.

use candle_core::Device;

use super::{fixture, fluxmoe, stderr};

/// `fluxmoe logits` of `reference` and `model` on the same two rows (files in `dir`):
/// the largest absolute logit difference, and everything `model`'s run wrote.
fn logits_against(
    dir: &std::path::Path,
    reference: &std::path::Path,
    model: &std::path::Path,
) -> (f32, std::collections::HashMap<String, candle_core::Tensor>) {
    let ids = "5,17,99,3,42;7,120,64,1,2";
    let (a, b) = (dir.join("a.st"), dir.join("b.st"));
    for (m, out) in [(reference, &a), (model, &b)] {
        let o = fluxmoe(&[
            "logits",
            "--model",
            m.to_str().unwrap(),
            "--ids",
            ids,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let la = candle_core::safetensors::load(&a, &Device::Cpu).unwrap();
    let lb = candle_core::safetensors::load(&b, &Device::Cpu).unwrap();
    let err: f32 = (&la["logits"] - &lb["logits"])
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    (err, lb)
}

#[test]
fn upcycled_fixture_gives_the_dense_logits_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let moe = dir.path().join("moe");
    let o = fluxmoe(&[
        "upcycle",
        "--from",
        fixture("llama").to_str().unwrap(),
        "--method",
        "sparse",
        "--experts",
        "4",
        "--top-k",
        "2",
        "--out",
        moe.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(moe.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "mixtral");
    assert_eq!(cfg["num_local_experts"], 4);
    let (err, lb) = logits_against(dir.path(), &fixture("llama"), &moe);
    assert!(err <= 1e-5, "{err}");
    assert!(lb.contains_key("topk_idx.0") && lb.contains_key("topk_idx.1"));
    // Upcycling an MoE is refused with a clear message.
    let o = fluxmoe(&[
        "upcycle",
        "--from",
        fixture("mixtral").to_str().unwrap(),
        "--out",
        dir.path().join("x").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("dense llama"), "{}", stderr(&o));
}

#[test]
fn btx_refuses_a_domain_list_that_does_not_match_the_experts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("moe");
    let dense = fixture("llama");
    let upcycle = |extra: &[&str]| {
        let mut args = vec![
            "upcycle",
            "--from",
            dense.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        fluxmoe(&args)
    };
    let o = upcycle(&["--method", "btx", "--experts", "4", "--domains", "sotu,kjv"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("--domains lists 2 domains (sotu,kjv) but --experts is 4"),
        "{err}"
    );
    let o = upcycle(&[
        "--method",
        "btx",
        "--experts",
        "2",
        "--domains",
        "sotu,bible",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown corpus `bible`"),
        "{}",
        stderr(&o)
    );
    let o = upcycle(&["--method", "btx", "--experts", "2", "--domains", "kjv,kjv"]);
    assert!(
        stderr(&o).contains("`kjv` is listed twice"),
        "{}",
        stderr(&o)
    );
    // Slices of one corpus are separate domains only when they share no label.
    let o = upcycle(&[
        "--method",
        "btx",
        "--experts",
        "2",
        "--domains",
        "math:arithmetic+algebra,math:algebra",
    ]);
    assert!(
        stderr(&o).contains("`math:arithmetic+algebra` and `math:algebra` share documents"),
        "{}",
        stderr(&o)
    );
    let o = upcycle(&[
        "--method",
        "btx",
        "--experts",
        "2",
        "--domains",
        "wordnet,wordnet:noun",
    ]);
    assert!(stderr(&o).contains("share documents"), "{}", stderr(&o));
    let o = upcycle(&[
        "--method",
        "btx",
        "--experts",
        "2",
        "--domains",
        "sotu,math:",
    ]);
    assert!(stderr(&o).contains("empty label"), "{}", stderr(&o));
    let o = upcycle(&["--method", "btx", "--experts", "2"]);
    assert!(stderr(&o).contains("needs --domains"), "{}", stderr(&o));
    let o = upcycle(&["--method", "sparse", "--router-init", "discriminant"]);
    assert!(
        stderr(&o).contains("--router-init only applies to --method btx"),
        "{}",
        stderr(&o)
    );
    let o = upcycle(&[
        "--method",
        "btx",
        "--experts",
        "2",
        "--domains",
        "sotu,kjv",
        "--router-init",
        "discriminant",
        "--router-shrinkage",
        "1.5",
    ]);
    assert!(
        stderr(&o).contains("--router-shrinkage must be in [0, 1], got 1.5"),
        "{}",
        stderr(&o)
    );
    let o = upcycle(&["--method", "sparse", "--domains", "kjv,sotu"]);
    assert!(
        stderr(&o).contains("only applies to --method btx"),
        "{}",
        stderr(&o)
    );
    // A split's calibration corpora need a centroid router, and only a split has one.
    let o = upcycle(&["--method", "split", "--domains", "kjv"]);
    assert!(
        stderr(&o).contains("or split with --router centroid"),
        "{}",
        stderr(&o)
    );
    let o = upcycle(&["--method", "split", "--router-logit-rms", "0.5"]);
    assert!(
        stderr(&o).contains("--router-logit-rms only applies"),
        "{}",
        stderr(&o)
    );
    for method in ["sparse", "btx"] {
        let o = upcycle(&["--method", method, "--router", "centroid"]);
        assert!(
            stderr(&o).contains("--router only applies to --method split"),
            "{method}: {}",
            stderr(&o)
        );
    }
    let o = upcycle(&[
        "--method",
        "split",
        "--router",
        "centroid",
        "--domains",
        "kjv,bible",
    ]);
    assert!(
        stderr(&o).contains("unknown corpus `bible`"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists(), "nothing is written on bad input");
}

#[test]
fn split_writes_llama_moe_whose_experts_sum_to_the_dense_ffn() {
    let dir = tempfile::tempdir().unwrap();
    let dense = fixture("llama");
    let split = |out: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "upcycle",
            "--from",
            dense.to_str().unwrap(),
            "--method",
            "split",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        fluxmoe(&args)
    };
    let moe = dir.path().join("moe");
    // Every expert chosen, a zero router: the experts' sum is the dense FFN.
    let o = split(
        &moe,
        &[
            "--experts",
            "4",
            "--top-k",
            "4",
            "--router-std",
            "0",
            "--partition",
            "clustered",
            "--score-scale",
            "4",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(moe.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "llama_moe");
    assert_eq!(cfg["score_scale_factor"], 4.0);
    assert_eq!(cfg["fluxmoe_upcycle"]["partition"], "clustered");
    let (err, _) = logits_against(dir.path(), &dense, &moe);
    assert!(err <= 1e-4, "{err}");
    let bad = dir.path().join("bad");
    let o = split(&bad, &["--score-scale=-1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("score_scale_factor"), "{}", stderr(&o));
    assert!(!bad.exists(), "nothing is written on bad input");
}
