//! What a training step's activations hold at most, counted from the forward pass's
//! own tensors.
//!
//! candle's backward pass walks the graph that the loss tensor keeps alive, so every
//! tensor the forward pass computed after the first trainable parameter stays in
//! memory until the backward pass ends. The count walks [`crate::MoeModel`]'s forward
//! pass per token and per layer, adding each tensor an operation allocates (views such
//! as `narrow`, `transpose` or `broadcast_as` allocate nothing; a `contiguous` copy
//! does), and counts every layer as tracked: an upper bound when the first trainable
//! parameter sits in a later layer. The backward pass adds two things:
//! - gradients candle computes for frozen operands broadcast to activation size and
//!   never frees before it returns (listed in [`kept_gradient_floats`]; found by
//!   listing the gradient store after a step);
//! - the gradients of intermediate tensors and the temporaries of the backward
//!   operations, charged as half the forward pass's bytes. That factor is measured,
//!   not derived: on the sparse-upcycled SmolLM2 (30 layers, 4 experts, top-2; batch 4
//!   of 64 tokens) the forward count was within 1% of the heap bytes the forward pass
//!   kept (1,115 against 1,104 MB) and the whole estimate 19-22% above the step's peak
//!   when RMSNorm was built from primitives; with the fused RMSNorm the estimate is
//!   28-30% above it (1,647 against 1,284 MB at 4 x 64; see `docs/flux-evidence.md`).
//!
//! `crates/model/tests/activation_memory.rs` checks the estimate against the heap
//! bytes a step really holds for every architecture. The trainable parameters' own
//! gradients are not counted here: they belong to the parameters' memory.

use crate::config::{AttentionKind, Ffn, MoeConfig, QkNorm, RouterKind, Scoring, SharedExpert};
use crate::ModelConfig;

/// Bytes of one f32.
const F32: u64 = 4;

/// Heap bytes a training step on `batch` sequences of `seq` tokens (every token a
/// loss target, the worst case) holds for activations at its peak, excluding the
/// trainable parameters' gradients.
pub fn step_activation_bytes(cfg: &ModelConfig, batch: usize, seq: usize) -> u64 {
    let forward = forward_bytes(cfg, batch, seq);
    let kept: u64 = cfg
        .layers
        .iter()
        .map(|ffn| kept_gradient_floats(cfg, ffn, seq))
        .sum();
    // Gradients of intermediate tensors and the backward operations' temporaries:
    // half the forward pass's bytes, from measurement (the module docs).
    forward + forward / 2 + F32 * (batch * seq) as u64 * kept
}

/// Bytes the forward pass allocates and the graph keeps.
fn forward_bytes(cfg: &ModelConfig, batch: usize, seq: usize) -> u64 {
    let tokens = (batch * seq) as u64;
    let per_layer: u64 = cfg
        .layers
        .iter()
        .map(|ffn| layer_floats(cfg, ffn, seq))
        .sum();
    let h = cfg.hidden_size as u64;
    let v = cfg.vocab_size as u64;
    // Embedding output and the final norm's output, then per loss target the selected
    // hidden row and its logits.
    let head = h + norm(h);
    let targets = (batch * seq.saturating_sub(1)) as u64;
    F32 * (tokens * (per_layer + head) + targets * (h + v))
}

/// Floats per token and layer of gradients that candle's backward pass computes for
/// frozen operands broadcast to activation size (RoPE tables, the attention mask, the
/// MoE block's zero scatter buffer) and keeps until it returns: those operands are not
/// graph nodes, so their gradients are never consumed. (The fused RMSNorm computes no
/// gradient for a frozen weight.)
fn kept_gradient_floats(cfg: &ModelConfig, ffn: &Ffn, seq: usize) -> u64 {
    let h = cfg.hidden_size as u64;
    let heads = cfg.num_heads as u64;
    let mut n = heads * seq as u64;
    n += match &cfg.attention {
        AttentionKind::Standard { head_dim, .. } => {
            2 * (heads + cfg.num_kv_heads as u64) * *head_dim as u64
        }
        AttentionKind::Mla {
            qk_rope_head_dim, ..
        } => 2 * (heads + 1) * *qk_rope_head_dim as u64,
    };
    if matches!(ffn, Ffn::Moe(_)) {
        n += h;
    }
    n
}

/// Floats one row of `n` allocates in an RMSNorm: its output alone (the CPU op is
/// fused; the primitive version other devices run keeps `x²` and `x · rsqrt(..)` too).
fn norm(n: u64) -> u64 {
    n
}

/// Floats one token allocates in one decoder layer's forward pass.
fn layer_floats(cfg: &ModelConfig, ffn: &Ffn, seq: usize) -> u64 {
    let h = cfg.hidden_size as u64;
    // Both norms and both residual additions.
    let frame = 2 * norm(h) + 2 * h;
    frame + attention_floats(cfg, seq as u64) + ffn_floats(h, ffn)
}

fn attention_floats(cfg: &ModelConfig, s: u64) -> u64 {
    let h = cfg.hidden_size as u64;
    let heads = cfg.num_heads as u64;
    let kv_heads = cfg.num_kv_heads as u64;
    // Rotate-half or interleaved RoPE: four half-size products, their sum and
    // difference, and the joined result.
    let rope = |n: u64| 4 * n;
    // Scores, scaled, masked; softmax: shifted, exponentials, normalised.
    let scores = 6 * heads * s;
    match &cfg.attention {
        AttentionKind::Standard {
            head_dim,
            qkv_bias,
            o_bias,
            qk_norm,
            clip_qkv,
        } => {
            let d = *head_dim as u64;
            let (q, kv) = (heads * d, kv_heads * d);
            let qkv = q + 2 * kv;
            let mut n = 2 * qkv; // projections, then [B, H, T, d] copies
            if *qkv_bias {
                n += qkv;
            }
            if *qk_norm != QkNorm::None {
                n += norm(q) + norm(kv);
            }
            if clip_qkv.is_some() {
                n += qkv;
            }
            n += rope(q) + rope(kv);
            if heads != kv_heads {
                n += 2 * q; // keys and values repeated to every query head
            }
            n += q; // keys transposed for the score product
            n += scores;
            n += 2 * q; // weighted values, and their [B, T, H·d] copy
            n += h;
            if *o_bias {
                n += h;
            }
            n
        }
        AttentionKind::Mla {
            q_lora_rank,
            kv_lora_rank,
            qk_nope_head_dim,
            qk_rope_head_dim,
            v_head_dim,
        } => {
            let (r, dn, dr, dv) = (
                *kv_lora_rank as u64,
                *qk_nope_head_dim as u64,
                *qk_rope_head_dim as u64,
                *v_head_dim as u64,
            );
            let qk = heads * (dn + dr);
            let mut n = match q_lora_rank {
                Some(rq) => *rq as u64 + norm(*rq as u64),
                None => 0,
            };
            n += 2 * qk; // query projection and its [B, H, T, d] copy
            n += heads * dr + rope(heads * dr); // rotated query part
            n += r + dr; // compressed kv and the shared rotary key
            n += 2 * dr + rope(dr); // the rotary key's copies and rotation
            n += r + norm(r); // latent copy and norm
            n += 2 * heads * (dn + dv); // kv expansion and its copy
            n += heads * dv; // values made contiguous
            n += qk + heads * dr + qk; // joined queries, broadcast rotary keys, joined keys
            n += qk; // keys transposed for the score product
            n += scores;
            n += 2 * heads * dv;
            n + h
        }
    }
}

fn ffn_floats(h: u64, ffn: &Ffn) -> u64 {
    // SwiGLU of width f: gate, silu(gate), up, their product, down.
    let swiglu = |f: u64| 4 * f + h;
    match ffn {
        Ffn::Dense { width } => swiglu(*width as u64),
        Ffn::Moe(m) => moe_floats(h, m, swiglu),
    }
}

fn moe_floats(h: u64, m: &MoeConfig, swiglu: impl Fn(u64) -> u64) -> u64 {
    let (e, k) = (m.n_experts as u64, m.top_k as u64);
    let widest = m.expert_widths.iter().copied().max().unwrap_or(0) as u64;
    let mut n = match m.router {
        RouterKind::Linear => e,
        // LLaMA-MoE's gate: a hidden layer of `n_experts` units, its tanh, the logits.
        RouterKind::TanhMlp => 3 * e,
    };
    n += e; // router mask
    n += match m.scoring {
        Scoring::SoftmaxThenTopK { .. } => 3 * e + 4 * k,
        Scoring::TopKThenSoftmax { .. } => 5 * k,
    };
    // Gathered token rows, each selected expert's SwiGLU, the joined outputs, weighted,
    // and the scatter back (a zero buffer and the sum).
    n += k * h + k * swiglu(widest) + 2 * k * h + k + 2 * h;
    n += match m.shared {
        SharedExpert::None => 0,
        SharedExpert::Plain { width } => swiglu(width as u64) + h,
        SharedExpert::SigmoidGated { width } => 5 + swiglu(width as u64) + 2 * h,
    };
    n
}
