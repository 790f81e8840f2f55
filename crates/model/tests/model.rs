//! Behaviour of the decoder beyond the golden values: padding, KV cache, which
//! parameters receive gradients, bad input.

mod common;

use common::{golden_ids, load, max_abs_diff, ARCHS};

use candle_core::{Device, Tensor, D};
use fluxmoe_model::keys::{expert_key, router_keys, Proj};
use fluxmoe_model::{causal_lm_loss, ModelCache, MoeModel};

fn ids(rows: &[&[u32]]) -> Tensor {
    let t = rows[0].len();
    let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (rows.len(), t), &Device::Cpu).unwrap()
}

const SEQ: [u32; 8] = [5, 17, 99, 3, 42, 7, 120, 64];

#[test]
fn padding_on_either_side_leaves_real_token_logits_unchanged() {
    for arch in ARCHS {
        let ck = load(arch);
        let model = MoeModel::new(&ck.config, &ck.params).unwrap();
        let alone = model.forward(&ids(&[&SEQ]), None, false).unwrap().logits;
        let alone = alone.squeeze(0).unwrap();
        // Right padding: real tokens at 0..8, pads after.
        let right: Vec<u32> = SEQ.iter().copied().chain([0; 4]).collect();
        let left: Vec<u32> = [0; 4].into_iter().chain(SEQ.iter().copied()).collect();
        let mask_r = Tensor::new(&[[1u32, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]], &Device::Cpu).unwrap();
        let mask_l = Tensor::new(&[[0u32, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]], &Device::Cpu).unwrap();
        let out_r = model.forward(&ids(&[&right]), Some(&mask_r), true).unwrap();
        let out_l = model.forward(&ids(&[&left]), Some(&mask_l), false).unwrap();
        let r = out_r.logits.squeeze(0).unwrap().narrow(0, 0, 8).unwrap();
        let l = out_l.logits.squeeze(0).unwrap().narrow(0, 4, 8).unwrap();
        assert!(
            max_abs_diff(&r, &alone) < 1e-4,
            "{arch}: right padding changed logits"
        );
        // RoPE is relative, so shifting a sequence right by the pads changes nothing either.
        assert!(
            max_abs_diff(&l, &alone) < 1e-4,
            "{arch}: left padding changed logits"
        );
        for trace in &out_r.traces {
            let scores = trace.attention_score.to_vec2::<f32>().unwrap();
            let sum: f32 = scores[0][..8]
                .iter()
                .enumerate()
                .map(|(j, s)| s * (8 - j) as f32)
                .sum();
            assert!((sum - 8.0).abs() < 1e-4, "{arch}: padded scores {sum}");
        }
    }
}

#[test]
fn kv_cache_decoding_matches_the_full_forward() {
    for arch in ARCHS {
        let ck = load(arch);
        let model = MoeModel::new(&ck.config, &ck.params).unwrap();
        let full = model
            .forward(&ids(&[&SEQ]), None, false)
            .unwrap()
            .logits
            .squeeze(0)
            .unwrap();
        let mut cache = ModelCache::default();
        let first = model
            .forward_cached(&ids(&[&SEQ[..5]]), &mut cache)
            .unwrap();
        assert!(max_abs_diff(&first.squeeze(0).unwrap(), &full.narrow(0, 0, 5).unwrap()) < 1e-4);
        for (pos, &tok) in SEQ.iter().enumerate().skip(5) {
            let step = model.forward_cached(&ids(&[&[tok]]), &mut cache).unwrap();
            let want = full.narrow(0, pos, 1).unwrap();
            assert!(
                max_abs_diff(&step.squeeze(0).unwrap(), &want) < 1e-4,
                "{arch}: position {pos}"
            );
        }
        assert_eq!(cache.len(), SEQ.len());
    }
}

#[test]
fn only_trainable_parameters_receive_gradients() {
    for arch in ARCHS {
        let mut ck = load(arch);
        let cfg = ck.config.clone();
        let Some(&last) = cfg.moe_layers().last() else {
            continue;
        };
        let moe = cfg.moe(last).unwrap();
        let mut names: Vec<String> = router_keys(cfg.arch, moe.router, last);
        for e in [0, 1] {
            names.extend(Proj::ALL.map(|p| expert_key(cfg.arch, last, e, p)));
        }
        let n = ck
            .params
            .set_trainable(|n| names.iter().any(|x| x == n))
            .unwrap();
        assert_eq!(n, names.len(), "{arch}");
        let model = MoeModel::new(&cfg, &ck.params).unwrap();
        // The fixtures' inputs route at least one token to experts 0 and 1 of the last layer.
        let x = golden_ids(arch);
        let out = model.forward(&x, None, true).unwrap();
        let used: Vec<u32> = out
            .traces
            .last()
            .unwrap()
            .routing
            .topk_idx
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(used.contains(&0) && used.contains(&1), "{arch}");
        let loss = causal_lm_loss(&out.logits, &x, None).unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in ck.params.trainable() {
            let g = grads.get(var.as_tensor());
            let norm = g
                .unwrap_or_else(|| panic!("{arch}: {name} has no gradient"))
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0, "{arch}: {name} has a zero gradient");
        }
        for (name, t) in ck.params.tensors() {
            if !ck.params.is_trainable(name) {
                assert!(
                    grads.get(t).is_none(),
                    "{arch}: frozen {name} got a gradient"
                );
            }
        }
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let ck = load("mixtral");
    let model = MoeModel::new(&ck.config, &ck.params).unwrap();
    let err = model
        .forward(&ids(&[&[1, 2, 128]]), None, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("token id 128 is outside the vocabulary of 128"),
        "{err}"
    );
    let mask = Tensor::new(&[[1u32, 1]], &Device::Cpu).unwrap();
    let err = model
        .forward(&ids(&[&[1, 2, 3]]), Some(&mask), false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("attention mask must be [1, 3]"), "{err}");
    let flat = Tensor::new(&[1u32, 2], &Device::Cpu).unwrap();
    assert!(model.forward(&flat, None, false).is_err());
    let logits = model.forward(&ids(&[&[1]]), None, false).unwrap().logits;
    assert!(causal_lm_loss(&logits, &ids(&[&[1]]), None).is_err());
}

#[test]
fn loss_mask_restricts_the_mean_to_marked_targets() {
    let ck = load("llama");
    let model = MoeModel::new(&ck.config, &ck.params).unwrap();
    let x = ids(&[&SEQ]);
    let logits = model.forward(&x, None, false).unwrap().logits;
    // Per-position losses by hand.
    let logp = candle_nn::ops::log_softmax(&logits.squeeze(0).unwrap(), D::Minus1).unwrap();
    let per: Vec<f32> = (0..7)
        .map(|i| {
            -logp
                .get(i)
                .unwrap()
                .get(SEQ[i + 1] as usize)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        })
        .collect();
    let mask = Tensor::new(&[[0u32, 0, 0, 0, 0, 1, 1, 0]], &Device::Cpu).unwrap();
    let got = causal_lm_loss(&logits, &x, Some(&mask))
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let want = (per[4] + per[5]) / 2.0;
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    let selective = model
        .loss(&x, None, Some(&mask))
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((selective - want).abs() < 1e-5, "{selective} vs {want}");
    assert!(model
        .loss(
            &x,
            None,
            Some(&Tensor::zeros((1, 8), candle_core::DType::U32, &Device::Cpu).unwrap())
        )
        .is_err());
    let none = Tensor::zeros((1, 8), candle_core::DType::U32, &Device::Cpu).unwrap();
    assert!(causal_lm_loss(&logits, &x, Some(&none)).is_err());
}

#[test]
fn ffn_inputs_are_the_post_attention_norm_output_the_router_reads() {
    for arch in ["llama", "mixtral"] {
        let ck = load(arch);
        let model = MoeModel::new(&ck.config, &ck.params).unwrap();
        let input = golden_ids(arch);
        let (b, t) = input.dims2().unwrap();
        let inputs = model.ffn_inputs(&input, None).unwrap();
        assert_eq!(inputs.len(), ck.config.num_layers(), "{arch}");
        for (l, x) in inputs.iter().enumerate() {
            assert_eq!(x.dims(), [b * t, ck.config.hidden_size], "{arch} layer {l}");
            // Undoing the norm's gain leaves rows of unit RMS (eps is 1e-5 or less).
            let gain = ck
                .params
                .tensor(&format!("model.layers.{l}.post_attention_layernorm.weight"))
                .unwrap();
            let rms = x
                .broadcast_div(gain)
                .unwrap()
                .sqr()
                .unwrap()
                .mean(D::Minus1)
                .unwrap()
                .sqrt()
                .unwrap();
            let ones = Tensor::ones(b * t, candle_core::DType::F32, &Device::Cpu).unwrap();
            assert!(max_abs_diff(&rms, &ones) < 1e-3, "{arch} layer {l}");
        }
        // For an MoE, the router logits of the trace are the router applied to them.
        let traces = model.forward(&input, None, true).unwrap().traces;
        assert_eq!(traces.len(), ck.config.moe_layers().len(), "{arch}");
        for trace in traces {
            let router = ck.config.moe(trace.layer).unwrap().router;
            let gate = ck
                .params
                .tensor(&router_keys(ck.config.arch, router, trace.layer)[0])
                .unwrap();
            assert_eq!(max_abs_diff(&trace.moe_input, &inputs[trace.layer]), 0.0);
            let want = inputs[trace.layer].matmul(&gate.t().unwrap()).unwrap();
            assert!(max_abs_diff(&trace.routing.router_logits, &want) < 1e-5);
        }
    }
}
