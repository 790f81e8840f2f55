//! Selective training on fixture models: loss goes down, frozen weights stay
//! bit-identical, the optimizer holds state only for trainable parameters.

mod common;

use common::{fixture, golden_ids};

use candle_core::{Device, Tensor};
use fluxmoe_model::keys::{expert_key, Proj};
use fluxmoe_model::params::glob_match;
use fluxmoe_model::train::{train_step, AdamW, AdamWConfig, Batch};
use fluxmoe_model::{checkpoint, MoeModel};

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

#[test]
fn one_step_on_chosen_experts_lowers_the_loss_and_freezes_the_rest() {
    for arch in [
        "mixtral",
        "qwen2_moe",
        "deepseek",
        "llama_moe",
        "deepseek_v2",
    ] {
        let dir = fixture(arch);
        let mut ck = checkpoint::load_dir(&dir, &Device::Cpu).unwrap();
        let cfg = ck.config.clone();
        let last = *cfg.moe_layers().last().unwrap();
        // Experts 0 and 1 of the last MoE layer, chosen by index.
        let chosen: Vec<String> = [0, 1]
            .iter()
            .flat_map(|&e| Proj::ALL.map(|p| expert_key(cfg.arch, last, e, p)))
            .collect();
        ck.params
            .set_trainable(|n| chosen.iter().any(|c| c == n))
            .unwrap();
        let before: Vec<(String, Vec<u32>)> = ck
            .params
            .tensors()
            .map(|(n, t)| (n.to_string(), bits(t)))
            .collect();
        let model = MoeModel::new(&cfg, &ck.params).unwrap();
        let mut opt = AdamW::new(
            ck.params.trainable(),
            AdamWConfig {
                lr: 1e-2,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            opt.len(),
            6,
            "{arch}: optimizer state only for the 6 trainable matrices"
        );
        let batch = Batch {
            input_ids: golden_ids(arch),
            attention_mask: None,
            loss_mask: None,
        };
        let first = train_step(&model, &mut opt, &batch, Some(1.0)).unwrap();
        let second = train_step(&model, &mut opt, &batch, Some(1.0)).unwrap();
        assert!(
            second.loss < first.loss,
            "{arch}: loss {} -> {}",
            first.loss,
            second.loss
        );
        for (name, old) in before {
            let now = bits(ck.params.tensor(&name).unwrap());
            if chosen.contains(&name) {
                assert_ne!(now, old, "{arch}: trainable {name} did not move");
            } else {
                assert_eq!(now, old, "{arch}: frozen {name} changed");
            }
        }
    }
}

#[test]
fn trainable_parameters_can_be_chosen_by_name_pattern() {
    let dir = fixture("olmoe");
    let mut ck = checkpoint::load_dir(&dir, &Device::Cpu).unwrap();
    let n = ck
        .params
        .set_trainable(|n| glob_match("model.layers.*.mlp.experts.3.*", n))
        .unwrap();
    assert_eq!(n, 2 * 3, "expert 3 of both layers");
    assert!(ck
        .params
        .is_trainable("model.layers.1.mlp.experts.3.down_proj.weight"));
    assert!(!ck
        .params
        .is_trainable("model.layers.1.mlp.experts.13.down_proj.weight"));
}

#[test]
fn greedy_generation_with_the_cache_matches_argmax_of_full_forwards() {
    use fluxmoe_model::generate::{generate, GenerateConfig};
    use fluxmoe_model::model::CachedLm;
    use fluxmoe_model::sampling::SamplingConfig;
    let dir = fixture("qwen3_moe");
    let ck = checkpoint::load_dir(&dir, &Device::Cpu).unwrap();
    let model = MoeModel::new(&ck.config, &ck.params).unwrap();
    let prompt = [3u32, 77, 12];
    let cfg = GenerateConfig {
        max_new_tokens: 6,
        stop_ids: vec![],
        sampling: SamplingConfig::greedy(),
    };
    let got = generate(&mut CachedLm::new(&model), &prompt, &cfg, &mut |_| {}).unwrap();
    // Reference: recompute the whole sequence each step, no cache.
    let mut seq = prompt.to_vec();
    for _ in 0..6 {
        let x = Tensor::new(seq.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = model
            .forward(&x, None, false)
            .unwrap()
            .logits
            .get(0)
            .unwrap()
            .get(seq.len() - 1)
            .unwrap();
        seq.push(logits.argmax(0).unwrap().to_scalar::<u32>().unwrap());
    }
    assert_eq!(got, seq[3..].to_vec());
}

#[test]
fn a_proximal_term_keeps_trained_weights_near_the_anchor() {
    use fluxmoe_model::train::{train_step_prox, Proximal};
    let distance = |mu: f64| {
        let mut ck = checkpoint::load_dir(&fixture("mixtral"), &Device::Cpu).unwrap();
        ck.params
            .set_trainable(|n| glob_match("model.layers.*.experts.*", n))
            .unwrap();
        let anchor: std::collections::BTreeMap<String, candle_core::Tensor> = ck
            .params
            .trainable()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().copy().unwrap()))
            .collect();
        let model = MoeModel::new(&ck.config, &ck.params).unwrap();
        let mut opt = AdamW::new(ck.params.trainable(), AdamWConfig::default()).unwrap();
        let batch = Batch {
            input_ids: golden_ids("mixtral"),
            attention_mask: None,
            loss_mask: None,
        };
        let prox = Proximal {
            mu,
            anchor: &anchor,
        };
        for _ in 0..8 {
            train_step_prox(&model, &mut opt, &batch, None, Some(&prox)).unwrap();
        }
        ck.params
            .trainable()
            .iter()
            .map(|(n, v)| {
                let d = (v.as_tensor() - &anchor[n]).unwrap();
                d.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            })
            .sum::<f32>()
            .sqrt()
    };
    let (free, pulled) = (distance(0.0), distance(1e4));
    assert!(free > 0.0);
    assert!(pulled < 0.8 * free, "mu 1e4: {pulled} vs mu 0: {free}");
}
