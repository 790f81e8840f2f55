use std::path::PathBuf;

use candle_core::quantized::{gguf_file, QTensor};
use rand::{Rng, SeedableRng};

use super::*;
use crate::tokenizer::tests::synthetic_metadata;

/// Vocabulary size of `synthetic_metadata`: 3 control + 256 byte symbols + 5 merges.
const VOCAB: usize = 264;

/// A tiny 2-layer llama written as GGUF; every matrix is stored as `dtype`, norms as F32.
#[derive(Clone)]
struct Tiny {
    hidden: usize,
    ffn: usize,
    n_head: usize,
    n_kv: usize,
    dtype: GgmlDType,
    tied: bool,
}

type Md = Vec<(String, Value)>;
type Ts = Vec<(String, QTensor)>;

impl Tiny {
    fn new(dtype: GgmlDType) -> Self {
        let k_quant = dtype.block_size() == 256;
        Tiny {
            hidden: if k_quant { 256 } else { 64 },
            ffn: if k_quant { 512 } else { 128 },
            n_head: 4,
            n_kv: 2,
            dtype,
            tied: true,
        }
    }

    fn head_dim(&self) -> usize {
        self.hidden / self.n_head
    }

    /// Random HF-layout tensors, keyed by HF name.
    fn hf_tensors(&self, seed: u64) -> BTreeMap<String, Tensor> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut mk = |shape: Vec<usize>, offset: f32| {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n)
                .map(|_| offset + rng.gen_range(-1.0f32..1.0))
                .collect();
            Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
        };
        let (h, f, d) = (self.hidden, self.ffn, self.head_dim());
        let mut m = BTreeMap::new();
        m.insert("model.embed_tokens.weight".into(), mk(vec![VOCAB, h], 0.0));
        m.insert("model.norm.weight".into(), mk(vec![h], 1.0));
        if !self.tied {
            m.insert("lm_head.weight".into(), mk(vec![VOCAB, h], 0.0));
        }
        for l in 0..2 {
            let p = format!("model.layers.{l}");
            m.insert(format!("{p}.input_layernorm.weight"), mk(vec![h], 1.0));
            m.insert(
                format!("{p}.post_attention_layernorm.weight"),
                mk(vec![h], 1.0),
            );
            m.insert(
                format!("{p}.self_attn.q_proj.weight"),
                mk(vec![self.n_head * d, h], 0.0),
            );
            m.insert(
                format!("{p}.self_attn.k_proj.weight"),
                mk(vec![self.n_kv * d, h], 0.0),
            );
            m.insert(
                format!("{p}.self_attn.v_proj.weight"),
                mk(vec![self.n_kv * d, h], 0.0),
            );
            m.insert(
                format!("{p}.self_attn.o_proj.weight"),
                mk(vec![h, self.n_head * d], 0.0),
            );
            m.insert(format!("{p}.mlp.gate_proj.weight"), mk(vec![f, h], 0.0));
            m.insert(format!("{p}.mlp.up_proj.weight"), mk(vec![f, h], 0.0));
            m.insert(format!("{p}.mlp.down_proj.weight"), mk(vec![h, f], 0.0));
        }
        m
    }

    fn metadata(&self) -> Md {
        let mut md: Md = vec![
            ("general.architecture".into(), Value::String("llama".into())),
            (
                "llama.embedding_length".into(),
                Value::U32(self.hidden as u32),
            ),
            ("llama.block_count".into(), Value::U32(2)),
            (
                "llama.feed_forward_length".into(),
                Value::U32(self.ffn as u32),
            ),
            (
                "llama.attention.head_count".into(),
                Value::U32(self.n_head as u32),
            ),
            (
                "llama.attention.head_count_kv".into(),
                Value::U32(self.n_kv as u32),
            ),
            (
                "llama.attention.layer_norm_rms_epsilon".into(),
                Value::F32(1e-5),
            ),
            ("llama.rope.freq_base".into(), Value::F32(100000.0)),
            ("llama.context_length".into(), Value::U32(2048)),
            (
                "tokenizer.chat_template".into(),
                Value::String("{{ messages }}".into()),
            ),
        ];
        let mut tok: Vec<_> = synthetic_metadata(Some("smollm"), false)
            .into_iter()
            .collect();
        tok.sort_by(|a, b| a.0.cmp(&b.0));
        md.extend(tok);
        md
    }

    /// GGUF tensors: llama.cpp names, q/k permuted, matrices quantised to `dtype`.
    fn gguf_tensors(&self, hf: &BTreeMap<String, Tensor>) -> Ts {
        hf.iter()
            .map(|(name, t)| {
                let t = match name {
                    n if n.contains("q_proj") => permute_like_llama_cpp(t, self.n_head),
                    n if n.contains("k_proj") => permute_like_llama_cpp(t, self.n_kv),
                    _ => t.clone(),
                };
                let dtype = if t.rank() == 1 {
                    GgmlDType::F32
                } else {
                    self.dtype
                };
                (gguf_name(name), QTensor::quantize(&t, dtype).unwrap())
            })
            .collect()
    }

    /// Write the model, letting `edit` tamper with metadata and tensors first.
    fn write_with(
        &self,
        path: &Path,
        hf: &BTreeMap<String, Tensor>,
        edit: impl FnOnce(&mut Md, &mut Ts),
    ) {
        let mut md = self.metadata();
        let mut ts = self.gguf_tensors(hf);
        edit(&mut md, &mut ts);
        write_gguf(path, &md, &ts);
    }
}

fn write_gguf(path: &Path, md: &Md, ts: &Ts) {
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts_refs: Vec<(&str, &QTensor)> = ts.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = File::create(path).unwrap();
    gguf_file::write(&mut file, &md_refs, &ts_refs).unwrap();
}

/// HF name -> llama.cpp name.
fn gguf_name(hf: &str) -> String {
    let fixed = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, rest) = rest.split_once('.').unwrap();
    let part = match rest {
        "input_layernorm.weight" => "attn_norm",
        "post_attention_layernorm.weight" => "ffn_norm",
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.o_proj.weight" => "attn_output",
        "mlp.gate_proj.weight" => "ffn_gate",
        "mlp.up_proj.weight" => "ffn_up",
        "mlp.down_proj.weight" => "ffn_down",
        other => panic!("unexpected {other}"),
    };
    format!("blk.{layer}.{part}.weight")
}

/// llama.cpp's converter permutation, written out index by index (independent of `unpermute_rows`):
/// `w.reshape(n_head, 2, d/2, in).swapaxes(1, 2).reshape(out, in)`.
fn permute_like_llama_cpp(t: &Tensor, n_head: usize) -> Tensor {
    let (out, inp) = t.dims2().unwrap();
    let rows = t.to_vec2::<f32>().unwrap();
    let d = out / n_head;
    let mut permuted = vec![0f32; out * inp];
    for h in 0..n_head {
        for j in 0..d / 2 {
            for half in 0..2 {
                let src = &rows[h * d + half * d / 2 + j];
                let dst = (h * d + 2 * j + half) * inp;
                permuted[dst..dst + inp].copy_from_slice(src);
            }
        }
    }
    Tensor::from_vec(permuted, (out, inp), &Device::Cpu).unwrap()
}

fn read(path: &Path) -> Result<GgufModel> {
    read_gguf(path, &Device::Cpu)
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn tmp(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

#[test]
fn unpermute_rows_inverts_llama_cpp_permutation() {
    for (out, n_head) in [(8, 2), (12, 3), (16, 1), (24, 6)] {
        let t = Tensor::arange(0f32, (out * 3) as f32, &Device::Cpu)
            .unwrap()
            .reshape((out, 3))
            .unwrap();
        let back = unpermute_rows(&permute_like_llama_cpp(&t, n_head), n_head).unwrap();
        assert_eq!(flat(&back), flat(&t), "out {out} heads {n_head}");
    }
}

#[test]
fn f32_round_trip_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    for tied in [true, false] {
        let spec = Tiny {
            tied,
            ..Tiny::new(GgmlDType::F32)
        };
        let path = tmp(&dir, &format!("f32-{tied}.gguf"));
        let hf = spec.hf_tensors(1);
        spec.write_with(&path, &hf, |_, _| {});
        let m = read(&path).unwrap();
        let names: Vec<_> = m.tensors.keys().collect();
        assert_eq!(names, hf.keys().collect::<Vec<_>>());
        for (name, want) in &hf {
            let got = &m.tensors[name];
            assert_eq!(got.dims(), want.dims(), "{name}");
            assert_eq!(got.dtype(), candle_core::DType::F32);
            let (g, w) = (flat(got), flat(want));
            assert!(
                g.iter().zip(&w).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name}"
            );
            assert_eq!(m.tensor_types[name], "F32");
        }
        assert_eq!(m.config["tie_word_embeddings"], tied);
        assert_eq!(m.tensors.contains_key("lm_head.weight"), !tied);
    }
}

#[test]
fn config_json_matches_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = tmp(&dir, "cfg.gguf");
    let spec = Tiny::new(GgmlDType::F32);
    spec.write_with(&path, &spec.hf_tensors(2), |_, _| {});
    let m = read(&path).unwrap();
    let want = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "rope_scaling": null,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": true,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "attention_bias": false,
        "mlp_bias": false,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    });
    assert_eq!(m.config, want);
    assert_eq!(m.chat_template.as_deref(), Some("{{ messages }}"));
    let tok = m.tokenizer.expect("tokenizer");
    assert_eq!(tok.special.eos, Some(2));
    let ids = tok.tokenizer.encode("<|im_start|> the", false).unwrap();
    assert_eq!(ids.get_ids()[0], 1);
    assert!(m.tokenizer_issue.is_none());
}

#[test]
fn rope_theta_defaults_to_10000() {
    let dir = tempfile::tempdir().unwrap();
    let path = tmp(&dir, "theta.gguf");
    let spec = Tiny::new(GgmlDType::F32);
    spec.write_with(&path, &spec.hf_tensors(3), |md, _| {
        md.retain(|(k, _)| k != "llama.rope.freq_base")
    });
    assert_eq!(read(&path).unwrap().config["rope_theta"], 10000.0);
}

/// Max abs error allowed, as a fraction of the tensor's max abs value: about one
/// quantisation step for the type (Q4_0/Q5_0 can clip the extreme of the other sign,
/// K-quants also round their per-block scales), with a little headroom.
fn tolerance(dtype: GgmlDType) -> f32 {
    match dtype {
        GgmlDType::F16 => 0.001,
        GgmlDType::BF16 => 0.004,
        GgmlDType::Q8_0 => 0.006,
        GgmlDType::Q6K => 0.04,
        GgmlDType::Q5_1 => 0.04,
        GgmlDType::Q5_0 | GgmlDType::Q5K => 0.07,
        GgmlDType::Q4_1 => 0.075,
        GgmlDType::Q4K => 0.11,
        GgmlDType::Q4_0 => 0.13,
        GgmlDType::Q3K => 0.3,
        GgmlDType::Q2K => 0.5,
        _ => 0.0,
    }
}

#[test]
fn quantised_types_dequantise_within_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    let types = [
        GgmlDType::F16,
        GgmlDType::BF16,
        GgmlDType::Q8_0,
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
        GgmlDType::Q3K,
        GgmlDType::Q2K,
    ];
    for dtype in types {
        let spec = Tiny::new(dtype);
        let path = tmp(&dir, &format!("{}.gguf", type_name(dtype)));
        let hf = spec.hf_tensors(4);
        spec.write_with(&path, &hf, |_, _| {});
        let m = read(&path).unwrap();
        for (name, want) in &hf {
            let (g, w) = (flat(&m.tensors[name]), flat(want));
            let max = w.iter().fold(0f32, |a, x| a.max(x.abs()));
            let err = g
                .iter()
                .zip(&w)
                .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
            let want_type = if want.rank() == 1 {
                "F32"
            } else {
                type_name(dtype)
            };
            assert_eq!(m.tensor_types[name], want_type);
            assert!(
                err <= tolerance(dtype) * max,
                "{name} {dtype:?}: err {err} max {max}"
            );
        }
    }
}

fn err_msg(path: &Path) -> String {
    match read(path) {
        Ok(_) => panic!("{} should not load", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn truncated_files_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = tmp(&dir, "full.gguf");
    let spec = Tiny::new(GgmlDType::Q4_0);
    spec.write_with(&path, &spec.hf_tensors(5), |_, _| {});
    let bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    for cut in [0, 3, 4, 8, 20, 100, 2000, n / 3, n / 2, n - 100, n - 1] {
        let cut_path = tmp(&dir, &format!("cut-{cut}.gguf"));
        std::fs::write(&cut_path, &bytes[..cut]).unwrap();
        let msg = err_msg(&cut_path);
        assert!(msg.contains(&cut_path.display().to_string()), "{msg}");
        let named = msg.contains("truncated") || msg.contains("not a gguf file");
        assert!(named, "cut {cut}: {msg}");
    }
}

#[test]
fn garbage_and_wrong_magic_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let garbage: Vec<u8> = (0..4096).map(|_| rng.gen()).collect();
    let path = tmp(&dir, "garbage.gguf");
    std::fs::write(&path, &garbage).unwrap();
    let msg = err_msg(&path);
    assert!(
        msg.contains("garbage.gguf") && msg.contains("not a gguf file"),
        "{msg}"
    );

    // Right magic, garbage after it.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(&garbage);
    std::fs::write(&path, &bytes).unwrap();
    let msg = err_msg(&path);
    assert!(
        msg.contains("garbage.gguf") && msg.contains("gguf header"),
        "{msg}"
    );

    let missing = tmp(&dir, "missing.gguf");
    let msg = err_msg(&missing);
    assert!(msg.contains("missing.gguf"), "{msg}");
}

/// Write the tiny F32 model with `edit` applied and return the load error.
/// The temporary directory is deleted when the returned guard drops.
fn tampered(
    name: &str,
    edit: impl FnOnce(&mut Md, &mut Ts),
) -> (PathBuf, Error, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    let spec = Tiny::new(GgmlDType::F32);
    spec.write_with(&path, &spec.hf_tensors(7), edit);
    let err = read(&path).err().expect("should fail");
    (path, err, dir)
}

fn set(md: &mut Md, key: &str, v: Value) {
    md.retain(|(k, _)| k != key);
    md.push((key.to_string(), v));
}

#[test]
fn wrong_architecture_is_named() {
    let (path, e, _dir) = tampered("qwen.gguf", |md, _| {
        set(md, "general.architecture", Value::String("qwen2".into()))
    });
    let msg = e.to_string();
    assert!(
        msg.contains("`qwen2`") && msg.contains(&path.display().to_string()),
        "{msg}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let (path, e, _dir) = tampered("missing.gguf", |_, ts| {
        ts.retain(|(k, _)| k != "blk.1.ffn_up.weight")
    });
    assert!(matches!(&e, Error::MissingTensor { name, .. } if name == "blk.1.ffn_up.weight"));
    assert!(e.to_string().contains(&path.display().to_string()));
}

#[test]
fn shape_mismatch_is_reported() {
    let (_, e, _dir) = tampered("shape.gguf", |_, ts| {
        let wrong = Tensor::zeros((64, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
        for (k, t) in ts.iter_mut() {
            if k == "blk.0.attn_k.weight" {
                *t = QTensor::quantize(&wrong, GgmlDType::F32).unwrap();
            }
        }
    });
    match e {
        Error::Shape {
            name,
            expected,
            got,
        } => {
            assert!(name.contains("blk.0.attn_k.weight"), "{name}");
            assert_eq!((expected, got), (vec![32, 64], vec![64, 64]));
        }
        e => panic!("unexpected {e}"),
    }
}

#[test]
fn missing_or_bad_metadata_is_named() {
    let (_, e, _dir) = tampered("nolayers.gguf", |md, _| {
        md.retain(|(k, _)| k != "llama.block_count")
    });
    assert!(e.to_string().contains("llama.block_count"), "{e}");

    let (_, e, _dir) = tampered("heads.gguf", |md, _| {
        set(md, "llama.attention.head_count_kv", Value::U32(3))
    });
    assert!(e.to_string().contains("head_count_kv"), "{e}");

    let (_, e, _dir) = tampered("moe.gguf", |md, _| {
        set(md, "llama.expert_count", Value::U32(8))
    });
    assert!(e.to_string().contains("mixture-of-experts"), "{e}");
}

#[test]
fn unsupported_tensor_types_are_named() {
    // Q8_1: candle parses the header but cannot load the data.
    let (path, e, _dir) = tampered("q81.gguf", |_, ts| {
        for (k, t) in ts.iter_mut() {
            if k == "blk.0.ffn_gate.weight" {
                let w = t.dequantize(&Device::Cpu).unwrap();
                *t = QTensor::quantize(&w, GgmlDType::Q8_1).unwrap();
            }
        }
    });
    let msg = e.to_string();
    assert!(
        msg.contains("blk.0.ffn_gate.weight") && msg.contains("Q8_1"),
        "{msg}"
    );
    assert!(msg.contains(&path.display().to_string()), "{msg}");

    // An id candle does not know at all (IQ4_NL = 20): patch the type field on disk.
    let dir = tempfile::tempdir().unwrap();
    let path = tmp(&dir, "iq4nl.gguf");
    let spec = Tiny::new(GgmlDType::F32);
    spec.write_with(&path, &spec.hf_tensors(8), |_, _| {});
    let mut bytes = std::fs::read(&path).unwrap();
    let name = b"blk.1.attn_v.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap();
    // name, n_dims (u32), 2 dims (u64 each), then the type (u32).
    let ty = at + name.len() + 4 + 16;
    bytes[ty..ty + 4].copy_from_slice(&20u32.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let msg = err_msg(&path);
    assert!(
        msg.contains("blk.1.attn_v.weight") && msg.contains("IQ4_NL"),
        "{msg}"
    );
}

#[test]
fn zero_alignment_does_not_panic() {
    let (path, e, _dir) = tampered("align.gguf", |md, _| {
        set(md, "general.alignment", Value::U32(0))
    });
    let msg = e.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}
