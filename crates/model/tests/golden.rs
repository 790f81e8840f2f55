//! Exactness against the reference PyTorch implementations: for every fixture in
//! `../shared/fixtures/`, logits, routing, loss and gradients.

mod common;

use common::{fixture, golden, max_abs_diff, ARCHS};

use candle_core::{DType, Device, Tensor};
use fluxmoe_model::{causal_lm_loss, checkpoint, MoeModel};

fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// Forward pass: logits, router logits, selected experts and their weights, loss.
fn check_forward(arch: &str) {
    let ck = checkpoint::load_dir(&fixture(arch), &Device::Cpu).unwrap();
    let model = MoeModel::new(&ck.config, &ck.params).unwrap();
    let g = golden(arch);
    let ids = &g["input_ids"];
    let out = model.forward(ids, None, true).unwrap();
    let err = max_abs_diff(&out.logits, &g["logits"]);
    assert!(err <= 1e-4, "{arch}: logits max abs error {err}");
    let loss = causal_lm_loss(&out.logits, ids, None)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let want = g["loss"].to_scalar::<f32>().unwrap();
    assert!((loss - want).abs() <= 1e-5, "{arch}: loss {loss} vs {want}");
    let loss = model
        .loss(ids, None, None)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        (loss - want).abs() <= 1e-5,
        "{arch}: selective-logits loss {loss} vs {want}"
    );
    let moe_layers = ck.config.moe_layers();
    // The untraced forward selects the same experts, and counts each token's first.
    let (hidden, routes) = model.forward_hidden_routed(ids, None).unwrap();
    assert!(max_abs_diff(&hidden, &model.forward_hidden(ids, None, false).unwrap().0) <= 1e-6);
    assert_eq!(routes.len(), ck.config.num_layers());
    let widest = moe_layers
        .iter()
        .map(|&l| ck.config.moe(l).unwrap().n_experts)
        .max()
        .unwrap_or(0);
    let mut want_counts = vec![0usize; widest];
    for (l, route) in routes.iter().enumerate() {
        let Some(want) = g.get(&format!("topk_idx.{l}")) else {
            assert!(
                route.is_none(),
                "{arch} layer {l}: a dense layer has no route"
            );
            continue;
        };
        let want = want.to_dtype(DType::U32).unwrap().to_vec2::<u32>().unwrap();
        assert_eq!(
            route.as_ref().unwrap().to_vec2::<u32>().unwrap(),
            want,
            "{arch} layer {l}: routes"
        );
        for row in want {
            want_counts[row[0] as usize] += 1;
        }
    }
    let counts = model.first_choice_counts(&routes).unwrap();
    assert_eq!(counts, want_counts, "{arch}: first-choice counts");
    assert_eq!(counts.iter().sum::<usize>(), 24 * moe_layers.len());
    assert_eq!(
        out.traces.len(),
        moe_layers.len(),
        "{arch}: one trace per MoE layer"
    );
    for trace in &out.traces {
        let l = trace.layer;
        let r = &trace.routing;
        let err = max_abs_diff(&r.router_logits, &g[&format!("router_logits.{l}")]);
        assert!(err <= 1e-4, "{arch} layer {l}: router logits error {err}");
        let want_idx = g[&format!("topk_idx.{l}")].to_dtype(DType::U32).unwrap();
        assert_eq!(
            r.topk_idx.to_vec2::<u32>().unwrap(),
            want_idx.to_vec2::<u32>().unwrap(),
            "{arch} layer {l}: selected experts"
        );
        let err = max_abs_diff(&r.topk_weight, &g[&format!("topk_weight.{l}")]);
        assert!(err <= 1e-5, "{arch} layer {l}: top-k weight error {err}");
        // Attention scores are column means over the T - j queries that see key j, and
        // every query row sums to 1, so sum_j score_j * (T - j) = T per sequence.
        for row in trace.attention_score.to_vec2::<f32>().unwrap() {
            let t = row.len();
            let total: f32 = row
                .iter()
                .enumerate()
                .map(|(j, s)| s * (t - j) as f32)
                .sum();
            assert!(
                (total - t as f32).abs() < 1e-4,
                "{arch} layer {l}: {total} != {t}"
            );
            assert!(row.iter().all(|x| *x > 0.0 && *x <= 1.0 + 1e-6));
        }
    }
}

/// Backward pass: every exported gradient within 1e-4 relative (max abs error over
/// max |grad|).
fn check_gradients(arch: &str) {
    let mut ck = checkpoint::load_dir(&fixture(arch), &Device::Cpu).unwrap();
    let g = golden(arch);
    let grad_keys: Vec<String> = g
        .keys()
        .filter_map(|k| k.strip_prefix("grad.").map(str::to_string))
        .collect();
    assert!(!grad_keys.is_empty());
    let n_trainable = ck
        .params
        .set_trainable(|n| grad_keys.iter().any(|k| k == n))
        .unwrap();
    assert_eq!(
        n_trainable,
        grad_keys.len(),
        "{arch}: every golden gradient names a parameter"
    );
    let model = MoeModel::new(&ck.config, &ck.params).unwrap();
    let ids = &g["input_ids"];
    // Backward through the training path (logits only at target positions).
    let loss = model.loss(ids, None, None).unwrap();
    let grads = loss.backward().unwrap();
    for (name, var) in ck.params.trainable() {
        let got = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{arch}: no grad for {name}"));
        let want = &g[&format!("grad.{name}")];
        let rel = max_abs_diff(got, want) / max_abs(want).max(1e-12);
        assert!(
            rel <= 1e-4,
            "{arch}: gradient of {name} relative error {rel}"
        );
    }
}

macro_rules! golden_tests {
    ($($arch:ident),*) => {
        mod forward { $( #[test] fn $arch() { super::check_forward(stringify!($arch)); } )* }
        mod gradients { $( #[test] fn $arch() { super::check_gradients(stringify!($arch)); } )* }
    };
}

golden_tests!(
    mixtral,
    qwen2_moe,
    qwen3_moe,
    olmoe,
    llama,
    deepseek,
    llama_moe,
    deepseek_v2
);

#[test]
fn every_fixture_is_covered() {
    for arch in ARCHS {
        assert!(fixture(arch).join("golden.safetensors").exists(), "{arch}");
    }
}
