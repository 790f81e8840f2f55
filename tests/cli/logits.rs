//! `fluxmoe logits` reproduces the golden logits and expert choices of every fixture.

use candle_core::{DType, Device};

use super::{fixture, fluxmoe, stderr};

#[test]
fn logits_command_matches_golden_for_every_fixture() {
    let dir = tempfile::tempdir().unwrap();
    for arch in [
        "mixtral",
        "qwen2_moe",
        "qwen3_moe",
        "olmoe",
        "llama",
        "deepseek",
        "llama_moe",
        "deepseek_v2",
    ] {
        let golden =
            candle_core::safetensors::load(fixture(arch).join("golden.safetensors"), &Device::Cpu)
                .unwrap();
        let ids: Vec<Vec<i64>> = golden["input_ids"].to_vec2().unwrap();
        let ids_arg = ids
            .iter()
            .map(|r| {
                r.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect::<Vec<_>>()
            .join(";");
        let out = dir.path().join(format!("{arch}.safetensors"));
        let o = fluxmoe(&[
            "logits",
            "--model",
            fixture(arch).to_str().unwrap(),
            "--ids",
            &ids_arg,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{arch}: {}", stderr(&o));
        let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
        assert_eq!(got["logits"].dtype(), DType::F32);
        let err: f32 = (&got["logits"] - &golden["logits"])
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(err <= 1e-4, "{arch}: logits error {err}");
        let mut n_layers = 0;
        for (name, t) in &golden {
            if let Some(layer) = name.strip_prefix("topk_idx.") {
                let mine = &got[&format!("topk_idx.{layer}")];
                assert_eq!(mine.dtype(), DType::I64);
                assert_eq!(
                    mine.to_vec2::<i64>().unwrap(),
                    t.to_vec2::<i64>().unwrap(),
                    "{arch} layer {layer}"
                );
                n_layers += 1;
            }
        }
        let written = got.keys().filter(|k| k.starts_with("topk_idx.")).count();
        assert_eq!(written, n_layers, "{arch}: one topk_idx per MoE layer");
    }
}
