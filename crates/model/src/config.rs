//! Model configuration: one normalised [`ModelConfig`] parsed from an HF `config.json`.
//!
//! Every supported `model_type` (llama, mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek,
//! deepseek_v2, llama_moe) is mapped onto one description of a sparse-MoE decoder:
//! attention kind, RoPE convention, and per layer either a dense SwiGLU MLP or an MoE
//! block with its routing rule. What transformers 4.x and 5.x write differently is
//! normalised here (`rope_parameters` vs top-level `rope_theta`, `head_dim: null`,
//! `num_local_experts` vs `num_experts`, null `sliding_window`).
//! Unsupported architectures and options are errors naming the field.

use serde_json::Value;

use crate::{Error, Result};

/// The architecture families fluxmoe reads; each fixes the checkpoint key layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mixtral,
    Qwen2Moe,
    Qwen3Moe,
    Olmoe,
    Deepseek,
    DeepseekV2,
    LlamaMoe,
}

impl Arch {
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mixtral => "mixtral",
            Arch::Qwen2Moe => "qwen2_moe",
            Arch::Qwen3Moe => "qwen3_moe",
            Arch::Olmoe => "olmoe",
            Arch::Deepseek => "deepseek",
            Arch::DeepseekV2 => "deepseek_v2",
            Arch::LlamaMoe => "llama_moe",
        }
    }

    fn from_model_type(s: &str) -> Result<Self> {
        Ok(match s {
            "llama" => Arch::Llama,
            "mixtral" => Arch::Mixtral,
            "qwen2_moe" => Arch::Qwen2Moe,
            "qwen3_moe" => Arch::Qwen3Moe,
            "olmoe" => Arch::Olmoe,
            "deepseek" => Arch::Deepseek,
            "deepseek_v2" => Arch::DeepseekV2,
            "llama_moe" => Arch::LlamaMoe,
            other => {
                return Err(Error::config(
                    "model_type",
                    format!(
                        "unsupported architecture `{other}` (supported: llama, mixtral, qwen2_moe, \
                         qwen3_moe, olmoe, deepseek, deepseek_v2, llama_moe)"
                    ),
                ))
            }
        })
    }
}

/// Where QK-norm is applied, if at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    None,
    /// RMSNorm over each head's `head_dim` vector, weights shared by heads (Qwen3-MoE).
    PerHead,
    /// RMSNorm over the whole q (and k) projection before the head split (OLMoE).
    Full,
}

/// The attention variant of every layer.
#[derive(Debug, Clone, PartialEq)]
pub enum AttentionKind {
    /// Multi-head attention with grouped KV heads.
    Standard {
        head_dim: usize,
        qkv_bias: bool,
        o_bias: bool,
        qk_norm: QkNorm,
        /// OLMoE's `clip_qkv`: q, k, v clamped to `[-c, c]`.
        clip_qkv: Option<f64>,
    },
    /// DeepSeek-V2 multi-head latent attention.
    Mla {
        q_lora_rank: Option<usize>,
        kv_lora_rank: usize,
        qk_nope_head_dim: usize,
        qk_rope_head_dim: usize,
        v_head_dim: usize,
    },
}

/// The routing rule of an MoE block.
#[derive(Debug, Clone, PartialEq)]
pub enum Scoring {
    /// `p = softmax(logits)` over all experts, top-k of `p` (optionally only within the
    /// `topk_group` best of `n_group` expert groups), weights = `p_topk` divided by their
    /// sum when `renormalize`, then multiplied by `scale`.
    SoftmaxThenTopK {
        renormalize: bool,
        scale: f64,
        groups: Option<(usize, usize)>,
    },
    /// LLaMA-MoE: top-k of the raw logits, weights = softmax over those k logits (or the
    /// raw logits when `softmax` is false), multiplied by `scale`.
    TopKThenSoftmax { softmax: bool, scale: f64 },
}

/// The router network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouterKind {
    /// `logits = W x`.
    Linear,
    /// LLaMA-MoE `gate_network: "mlp"`: `logits = W2 tanh(W0 x)`.
    TanhMlp,
}

/// Shared (always-on) experts of an MoE block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedExpert {
    None,
    /// One SwiGLU MLP of this width, added ungated (DeepSeek).
    Plain {
        width: usize,
    },
    /// One SwiGLU MLP scaled by `sigmoid(shared_expert_gate(x))` (Qwen2-MoE).
    SigmoidGated {
        width: usize,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub n_experts: usize,
    pub top_k: usize,
    /// Width (intermediate size) of each routed expert; may differ per expert (LLaMA-MoE).
    pub expert_widths: Vec<usize>,
    pub router: RouterKind,
    pub scoring: Scoring,
    pub shared: SharedExpert,
}

/// The feed-forward part of one decoder layer.
#[derive(Debug, Clone, PartialEq)]
pub enum Ffn {
    Dense { width: usize },
    Moe(MoeConfig),
}

/// The normalised description of a decoder-only (MoE) language model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub attention: AttentionKind,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Rotate pairs `(x[2i], x[2i+1])` instead of `(x[i], x[i+d/2])`.
    pub rope_interleaved: bool,
    pub tie_word_embeddings: bool,
    pub layers: Vec<Ffn>,
    pub max_position_embeddings: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The MoE config of layer `layer`, if it is an MoE layer.
    pub fn moe(&self, layer: usize) -> Option<&MoeConfig> {
        match self.layers.get(layer) {
            Some(Ffn::Moe(m)) => Some(m),
            _ => None,
        }
    }

    /// Indices of the MoE layers.
    pub fn moe_layers(&self) -> Vec<usize> {
        (0..self.layers.len())
            .filter(|&l| self.moe(l).is_some())
            .collect()
    }

    /// The dimension RoPE rotates (per head).
    pub fn rope_dim(&self) -> usize {
        match &self.attention {
            AttentionKind::Standard { head_dim, .. } => *head_dim,
            AttentionKind::Mla {
                qk_rope_head_dim, ..
            } => *qk_rope_head_dim,
        }
    }

    /// Parse an HF `config.json` text.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::config("config.json", format!("not valid JSON: {e}")))?;
        Self::from_json(&value)
    }

    /// Parse an HF `config.json` value.
    pub fn from_json(v: &Value) -> Result<Self> {
        let raw = Raw(v);
        let arch = Arch::from_model_type(&raw.string("model_type")?)?;
        let hidden_size = raw.positive("hidden_size")?;
        let num_heads = raw.positive("num_attention_heads")?;
        let num_kv_heads = raw
            .opt_positive("num_key_value_heads")?
            .unwrap_or(num_heads);
        let num_layers = raw.positive("num_hidden_layers")?;
        if num_heads % num_kv_heads != 0 {
            return Err(Error::config(
                "num_key_value_heads",
                format!("{num_kv_heads} does not divide num_attention_heads {num_heads}"),
            ));
        }
        let rope_theta = rope_theta(&raw)?;
        if let Some(scaling) = v.get("rope_scaling").filter(|s| !s.is_null()) {
            let kind = scaling
                .get("rope_type")
                .or_else(|| scaling.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("default");
            if kind != "default" {
                return Err(Error::config(
                    "rope_scaling",
                    format!("RoPE scaling `{kind}` is not supported"),
                ));
            }
        }
        if let Some(params) = v.get("rope_parameters").filter(|s| !s.is_null()) {
            let kind = params
                .get("rope_type")
                .and_then(Value::as_str)
                .unwrap_or("default");
            if kind != "default" {
                return Err(Error::config(
                    "rope_parameters.rope_type",
                    format!("RoPE scaling `{kind}` is not supported"),
                ));
            }
        }
        let act = raw
            .opt_string("hidden_act")?
            .unwrap_or_else(|| "silu".into());
        if act != "silu" {
            return Err(Error::config(
                "hidden_act",
                format!("activation `{act}` is not supported (only silu)"),
            ));
        }
        if raw.opt_bool("mlp_bias")?.unwrap_or(false) {
            return Err(Error::config("mlp_bias", "MLP biases are not supported"));
        }
        if arch != Arch::LlamaMoe && arch != Arch::Deepseek {
            check_no_sliding_window(&raw)?;
        }

        let attention = attention_kind(arch, &raw, hidden_size, num_heads)?;
        let layers = (0..num_layers)
            .map(|l| ffn_of_layer(arch, &raw, l, num_layers))
            .collect::<Result<Vec<_>>>()?;
        let eos_token_ids = match v.get("eos_token_id") {
            Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_u64().map(|x| x as u32))
                .collect(),
            _ => Vec::new(),
        };
        let cfg = ModelConfig {
            arch,
            vocab_size: raw.positive("vocab_size")?,
            hidden_size,
            num_heads,
            num_kv_heads: if matches!(attention, AttentionKind::Mla { .. }) {
                num_heads
            } else {
                num_kv_heads
            },
            attention,
            rms_norm_eps: raw.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_interleaved: arch == Arch::DeepseekV2,
            tie_word_embeddings: raw.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            layers,
            max_position_embeddings: raw.opt_positive("max_position_embeddings")?.unwrap_or(2048),
            bos_token_id: raw.opt_u64("bos_token_id")?.map(|x| x as u32),
            eos_token_ids,
        };
        if cfg.rms_norm_eps.is_nan() || cfg.rms_norm_eps <= 0.0 {
            return Err(Error::config(
                "rms_norm_eps",
                format!("must be > 0, got {}", cfg.rms_norm_eps),
            ));
        }
        if !cfg.rope_dim().is_multiple_of(2) {
            return Err(Error::config(
                "head_dim",
                format!("RoPE needs an even dimension, got {}", cfg.rope_dim()),
            ));
        }
        Ok(cfg)
    }
}

fn rope_theta(raw: &Raw) -> Result<f64> {
    let nested = raw
        .0
        .get("rope_parameters")
        .and_then(|p| p.get("rope_theta"))
        .and_then(Value::as_f64);
    let theta = match (nested, raw.opt_f64("rope_theta")?) {
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => 10000.0,
    };
    if theta.is_nan() || theta <= 0.0 {
        return Err(Error::config(
            "rope_theta",
            format!("must be > 0, got {theta}"),
        ));
    }
    Ok(theta)
}

fn check_no_sliding_window(raw: &Raw) -> Result<()> {
    let enabled = raw.opt_bool("use_sliding_window")?;
    let window = raw.0.get("sliding_window").and_then(Value::as_u64);
    // transformers writes `sliding_window` even when unused; it only applies when
    // `use_sliding_window` is true (Qwen) or, for Mixtral, when it is a number.
    let active = match enabled {
        Some(flag) => flag,
        None => window.is_some_and(|w| w > 0),
    };
    if active {
        return Err(Error::config(
            "sliding_window",
            "sliding-window attention is not supported",
        ));
    }
    Ok(())
}

fn attention_kind(
    arch: Arch,
    raw: &Raw,
    hidden_size: usize,
    num_heads: usize,
) -> Result<AttentionKind> {
    if arch == Arch::DeepseekV2 {
        return Ok(AttentionKind::Mla {
            q_lora_rank: raw.opt_positive("q_lora_rank")?,
            kv_lora_rank: raw.positive("kv_lora_rank")?,
            qk_nope_head_dim: raw.positive("qk_nope_head_dim")?,
            qk_rope_head_dim: raw.positive("qk_rope_head_dim")?,
            v_head_dim: raw.positive("v_head_dim")?,
        });
    }
    let head_dim = match raw.opt_positive("head_dim")? {
        Some(d) => d,
        None => {
            if !hidden_size.is_multiple_of(num_heads) {
                return Err(Error::config(
                    "num_attention_heads",
                    format!("{num_heads} heads do not divide hidden_size {hidden_size}"),
                ));
            }
            hidden_size / num_heads
        }
    };
    let attention_bias = raw.opt_bool("attention_bias")?.unwrap_or(false);
    let qkv_bias = match arch {
        Arch::Qwen2Moe => raw.opt_bool("qkv_bias")?.unwrap_or(true),
        _ => attention_bias,
    };
    let qk_norm = match arch {
        Arch::Qwen3Moe => QkNorm::PerHead,
        Arch::Olmoe => QkNorm::Full,
        _ => QkNorm::None,
    };
    let clip_qkv = match arch {
        Arch::Olmoe => raw.opt_f64("clip_qkv")?,
        _ => None,
    };
    Ok(AttentionKind::Standard {
        head_dim,
        qkv_bias,
        o_bias: attention_bias && arch != Arch::Qwen2Moe,
        qk_norm,
        clip_qkv,
    })
}

fn ffn_of_layer(arch: Arch, raw: &Raw, layer: usize, num_layers: usize) -> Result<Ffn> {
    let dense = || -> Result<Ffn> {
        Ok(Ffn::Dense {
            width: raw.positive("intermediate_size")?,
        })
    };
    let plain_softmax = |renormalize: bool| Scoring::SoftmaxThenTopK {
        renormalize,
        scale: 1.0,
        groups: None,
    };
    let moe = match arch {
        Arch::Llama => return dense(),
        Arch::Mixtral => {
            let n = raw.positive("num_local_experts")?;
            MoeConfig {
                n_experts: n,
                top_k: raw.positive("num_experts_per_tok")?,
                expert_widths: vec![raw.positive("intermediate_size")?; n],
                router: RouterKind::Linear,
                scoring: plain_softmax(true),
                shared: SharedExpert::None,
            }
        }
        Arch::Qwen2Moe | Arch::Qwen3Moe => {
            let n = match raw.opt_u64("num_experts")? {
                Some(n) => n as usize,
                None => raw.opt_u64("num_local_experts")?.unwrap_or(0) as usize,
            };
            let step = raw.opt_positive("decoder_sparse_step")?.unwrap_or(1);
            let mlp_only = raw.usize_list("mlp_only_layers")?;
            if n == 0 || mlp_only.contains(&layer) || !(layer + 1).is_multiple_of(step) {
                return dense();
            }
            let shared = if arch == Arch::Qwen2Moe {
                match raw.opt_u64("shared_expert_intermediate_size")? {
                    Some(w) if w > 0 => SharedExpert::SigmoidGated { width: w as usize },
                    _ => SharedExpert::None,
                }
            } else {
                SharedExpert::None
            };
            MoeConfig {
                n_experts: n,
                top_k: raw.positive("num_experts_per_tok")?,
                expert_widths: vec![raw.positive("moe_intermediate_size")?; n],
                router: RouterKind::Linear,
                scoring: plain_softmax(raw.opt_bool("norm_topk_prob")?.unwrap_or(false)),
                shared,
            }
        }
        Arch::Olmoe => {
            let n = raw.positive("num_experts")?;
            MoeConfig {
                n_experts: n,
                top_k: raw.positive("num_experts_per_tok")?,
                expert_widths: vec![raw.positive("intermediate_size")?; n],
                router: RouterKind::Linear,
                scoring: plain_softmax(raw.opt_bool("norm_topk_prob")?.unwrap_or(false)),
                shared: SharedExpert::None,
            }
        }
        Arch::Deepseek | Arch::DeepseekV2 => {
            let Some(n) = raw.opt_u64("n_routed_experts")? else {
                return dense();
            };
            let first_dense = raw.opt_u64("first_k_dense_replace")?.unwrap_or(0) as usize;
            let freq = raw.opt_positive("moe_layer_freq")?.unwrap_or(1);
            // transformers' DeepSeek-V2 ignores `moe_layer_freq`; DeepSeek-MoE v1 honours it.
            let is_moe =
                layer >= first_dense && (arch == Arch::DeepseekV2 || layer.is_multiple_of(freq));
            if !is_moe {
                return dense();
            }
            let scoring_func = raw.opt_string("scoring_func")?.unwrap_or("softmax".into());
            if scoring_func != "softmax" {
                return Err(Error::config(
                    "scoring_func",
                    format!("`{scoring_func}` is not supported (only softmax)"),
                ));
            }
            let top_k = raw.positive("num_experts_per_tok")?;
            let width = raw.positive("moe_intermediate_size")?;
            let n_shared = raw.opt_u64("n_shared_experts")?.unwrap_or(0) as usize;
            let scoring = if arch == Arch::Deepseek {
                plain_softmax(top_k > 1 && raw.opt_bool("norm_topk_prob")?.unwrap_or(false))
            } else {
                let method = raw
                    .opt_string("topk_method")?
                    .unwrap_or_else(|| "greedy".into());
                let groups = match method.as_str() {
                    "greedy" => None,
                    "group_limited_greedy" => {
                        let n_group = raw.positive("n_group")?;
                        let topk_group = raw.positive("topk_group")?;
                        if !(n as usize).is_multiple_of(n_group) || topk_group > n_group {
                            return Err(Error::config(
                                "n_group",
                                format!(
                                    "{n_group} groups with topk_group {topk_group} do not fit \
                                     {n} experts"
                                ),
                            ));
                        }
                        Some((n_group, topk_group))
                    }
                    other => {
                        return Err(Error::config(
                            "topk_method",
                            format!("`{other}` is not supported"),
                        ))
                    }
                };
                Scoring::SoftmaxThenTopK {
                    renormalize: false,
                    scale: raw.opt_f64("routed_scaling_factor")?.unwrap_or(1.0),
                    groups,
                }
            };
            MoeConfig {
                n_experts: n as usize,
                top_k,
                expert_widths: vec![width; n as usize],
                router: RouterKind::Linear,
                scoring,
                shared: if n_shared > 0 {
                    SharedExpert::Plain {
                        width: width * n_shared,
                    }
                } else {
                    SharedExpert::None
                },
            }
        }
        Arch::LlamaMoe => llama_moe_layer(raw, layer, num_layers)?,
    };
    validate_moe(&moe)?;
    Ok(Ffn::Moe(moe))
}

fn llama_moe_layer(raw: &Raw, layer: usize, num_layers: usize) -> Result<MoeConfig> {
    let n = raw.positive("num_experts")?;
    let top_k = raw.positive("num_selects")?;
    let intermediate = raw.positive("intermediate_size")?;
    let widths = match raw.0.get("size_experts") {
        None | Some(Value::Null) => {
            if intermediate % n != 0 {
                return Err(Error::config(
                    "num_experts",
                    format!("{n} experts do not divide intermediate_size {intermediate}"),
                ));
            }
            vec![intermediate / n; n]
        }
        Some(Value::Array(per_layer)) => {
            if per_layer.len() != num_layers {
                return Err(Error::config(
                    "size_experts",
                    format!(
                        "has {} entries, expected one per layer ({num_layers})",
                        per_layer.len()
                    ),
                ));
            }
            let sizes: Option<Vec<usize>> = per_layer[layer].as_array().and_then(|a| {
                a.iter()
                    .map(|x| x.as_u64().map(|x| x as usize))
                    .collect::<Option<Vec<_>>>()
            });
            match sizes {
                Some(s) if s.len() == n && s.iter().all(|&w| w > 0) => s,
                _ => {
                    return Err(Error::config(
                        "size_experts",
                        format!("layer {layer}: expected {n} positive expert sizes"),
                    ))
                }
            }
        }
        Some(_) => return Err(Error::config("size_experts", "must be a list per layer")),
    };
    for (field, want) in [
        ("gate_type", "TopKBalancedNoisyGate"),
        ("calculator_type", "UniversalCalculator"),
    ] {
        if let Some(got) = raw.opt_string(field)? {
            if got != want {
                return Err(Error::config(
                    field,
                    format!("`{got}` is not supported (only {want})"),
                ));
            }
        }
    }
    let router = match raw.opt_string("gate_network")?.as_deref() {
        None | Some("mlp") => RouterKind::TanhMlp,
        Some("linear") => RouterKind::Linear,
        Some(other) => {
            return Err(Error::config(
                "gate_network",
                format!("`{other}` is not supported (mlp or linear)"),
            ))
        }
    };
    let scale = if raw.opt_bool("multiply_gate_scores")?.unwrap_or(true) {
        match raw.0.get("score_scale_factor") {
            None | Some(Value::Null) => 1.0,
            Some(Value::Array(a)) => a.get(layer).and_then(Value::as_f64).ok_or_else(|| {
                Error::config(
                    "score_scale_factor",
                    format!("has no numeric entry for layer {layer}"),
                )
            })?,
            Some(x) => x
                .as_f64()
                .ok_or_else(|| Error::config("score_scale_factor", "must be a number or list"))?,
        }
    } else {
        1.0
    };
    Ok(MoeConfig {
        n_experts: n,
        top_k,
        expert_widths: widths,
        router,
        scoring: Scoring::TopKThenSoftmax {
            softmax: raw.opt_bool("gate_use_softmax")?.unwrap_or(true),
            scale,
        },
        shared: SharedExpert::None,
    })
}

fn validate_moe(m: &MoeConfig) -> Result<()> {
    if m.n_experts == 0 {
        return Err(Error::config("num_experts", "must be > 0"));
    }
    if m.top_k > m.n_experts {
        return Err(Error::config(
            "num_experts_per_tok",
            format!(
                "top-k {} exceeds the number of experts {}",
                m.top_k, m.n_experts
            ),
        ));
    }
    if let Scoring::SoftmaxThenTopK {
        groups: Some((n_group, topk_group)),
        ..
    } = m.scoring
    {
        if topk_group * (m.n_experts / n_group) < m.top_k {
            return Err(Error::config(
                "topk_group",
                format!(
                    "{topk_group} groups hold fewer than top-k {} experts",
                    m.top_k
                ),
            ));
        }
    }
    Ok(())
}

/// Typed accessors over the raw JSON, with errors naming the field.
struct Raw<'a>(&'a Value);

impl Raw<'_> {
    fn get(&self, field: &str) -> Option<&Value> {
        self.0.get(field).filter(|v| !v.is_null())
    }
    fn string(&self, field: &str) -> Result<String> {
        self.opt_string(field)?
            .ok_or_else(|| Error::config(field, "missing"))
    }
    fn opt_string(&self, field: &str) -> Result<Option<String>> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(Error::config(
                field,
                format!("expected a string, got {other}"),
            )),
        }
    }
    fn opt_u64(&self, field: &str) -> Result<Option<u64>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                Error::config(field, format!("expected a non-negative integer, got {v}"))
            }),
        }
    }
    fn opt_positive(&self, field: &str) -> Result<Option<usize>> {
        match self.opt_u64(field)? {
            Some(0) => Err(Error::config(field, "must be > 0, got 0")),
            other => Ok(other.map(|x| x as usize)),
        }
    }
    fn positive(&self, field: &str) -> Result<usize> {
        self.opt_positive(field)?
            .ok_or_else(|| Error::config(field, "missing"))
    }
    fn opt_f64(&self, field: &str) -> Result<Option<f64>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| Error::config(field, format!("expected a number, got {v}"))),
        }
    }
    fn opt_bool(&self, field: &str) -> Result<Option<bool>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| Error::config(field, format!("expected true or false, got {v}"))),
        }
    }
    fn usize_list(&self, field: &str) -> Result<Vec<usize>> {
        match self.get(field) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_u64()
                        .map(|x| x as usize)
                        .ok_or_else(|| Error::config(field, "expected a list of integers"))
                })
                .collect(),
            Some(_) => Err(Error::config(field, "expected a list of integers")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mixtral() -> Value {
        serde_json::json!({
            "model_type": "mixtral", "vocab_size": 128, "hidden_size": 64,
            "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2,
            "rope_parameters": {"rope_theta": 1e6, "rope_type": "default"},
            "head_dim": null, "sliding_window": null, "rms_norm_eps": 1e-5
        })
    }

    #[test]
    fn transformers5_rope_parameters_and_null_head_dim_are_normalised() {
        let cfg = ModelConfig::from_json(&mixtral()).unwrap();
        assert_eq!(cfg.rope_theta, 1e6);
        assert_eq!(cfg.rope_dim(), 16);
        assert_eq!(cfg.moe_layers(), vec![0, 1]);
        let m = cfg.moe(0).unwrap();
        assert_eq!((m.n_experts, m.top_k), (4, 2));
    }

    fn err_of(v: Value) -> String {
        ModelConfig::from_json(&v).unwrap_err().to_string()
    }

    #[test]
    fn nonsense_values_are_errors_naming_the_field() {
        let mut v = mixtral();
        v["num_local_experts"] = 0.into();
        assert!(err_of(v).contains("num_local_experts"));
        let mut v = mixtral();
        v["num_experts_per_tok"] = 5.into();
        assert!(err_of(v).contains("top-k 5 exceeds the number of experts 4"));
        let mut v = mixtral();
        v["num_attention_heads"] = 5.into();
        v["num_key_value_heads"] = 5.into();
        assert!(err_of(v).contains("5 heads do not divide hidden_size 64"));
        let mut v = mixtral();
        v["num_key_value_heads"] = 3.into();
        assert!(err_of(v).contains("num_key_value_heads"));
        let mut v = mixtral();
        v["model_type"] = "gpt_oss".into();
        assert!(err_of(v).contains("unsupported architecture `gpt_oss`"));
        let mut v = mixtral();
        v["sliding_window"] = 4096.into();
        assert!(err_of(v).contains("sliding_window"));
        let mut v = mixtral();
        v["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
        assert!(err_of(v).contains("yarn"));
        let mut v = mixtral();
        v["hidden_size"] = "64".into();
        assert!(err_of(v).contains("hidden_size"));
    }

    #[test]
    fn deepseek_layer_pattern_follows_first_k_dense_and_frequency() {
        let v = serde_json::json!({
            "model_type": "deepseek", "vocab_size": 16, "hidden_size": 8,
            "intermediate_size": 16, "moe_intermediate_size": 4, "num_hidden_layers": 5,
            "num_attention_heads": 2, "n_routed_experts": 4, "n_shared_experts": 2,
            "num_experts_per_tok": 2, "first_k_dense_replace": 1, "moe_layer_freq": 2
        });
        let cfg = ModelConfig::from_json(&v).unwrap();
        assert_eq!(cfg.moe_layers(), vec![2, 4]);
        assert_eq!(cfg.moe(2).unwrap().shared, SharedExpert::Plain { width: 8 });
    }

    #[test]
    fn qwen_sparse_step_and_mlp_only_layers() {
        let v = serde_json::json!({
            "model_type": "qwen2_moe", "vocab_size": 16, "hidden_size": 8,
            "intermediate_size": 16, "moe_intermediate_size": 4, "num_hidden_layers": 4,
            "num_attention_heads": 2, "num_experts": 4, "num_experts_per_tok": 2,
            "decoder_sparse_step": 2, "mlp_only_layers": [3], "use_sliding_window": false,
            "sliding_window": 4096
        });
        let cfg = ModelConfig::from_json(&v).unwrap();
        assert_eq!(cfg.moe_layers(), vec![1]);
    }
}
