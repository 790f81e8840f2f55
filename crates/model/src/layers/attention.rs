//! Causal self-attention, in two projection variants over one attention core.
//!
//! - **Standard** (Llama, Mixtral, Qwen, OLMoE, DeepSeek v1): `q, k, v = x W^T (+ b)`,
//!   optional QK-norm (per head after the head split, or over the whole projection
//!   before it), optional clamp, RoPE on q and k, grouped KV heads (query head `h` uses
//!   KV head `h / (heads / kv_heads)`), scale `1/sqrt(head_dim)`.
//! - **MLA** (DeepSeek-V2): `q = q_proj(x)` (or `q_b(norm(q_a(x)))`) split into
//!   `q_nope | q_pe`; `c = kv_a(x)` split into `c_kv | k_pe` (one RoPE head shared by all
//!   heads); `kv_b(norm(c_kv))` split into `k_nope | v`; `q = [q_nope, rope(q_pe)]`,
//!   `k = [k_nope, rope(k_pe)]`, scale `(d_nope + d_rope)^-1/2`. Latent norms use eps 1e-6.
//!
//! Core: `softmax(q k^T * scale + mask) v` with the additive mask `[B, 1, T, S]`
//! (causal and key padding), `x` `[B, T, hidden]` → `[B, T, hidden]`.
//! On request it also returns each token's attention score: the probability it
//! receives, averaged over heads and over the (valid) query positions that see it.

use candle_core::{Result, Tensor, D};

use super::{Linear, RmsNorm, Rope};

/// Cached keys and values of one layer, `[B, kv_heads, S, d]`, after RoPE.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub kv: Option<(Tensor, Tensor)>,
}

#[derive(Debug, Clone)]
pub enum QkNormLayer {
    None,
    PerHead { q: RmsNorm, k: RmsNorm },
    Full { q: RmsNorm, k: RmsNorm },
}

#[derive(Debug, Clone)]
pub enum Projections {
    Standard {
        q: Linear,
        k: Linear,
        v: Linear,
        qk_norm: QkNormLayer,
        clip_qkv: Option<f64>,
        head_dim: usize,
    },
    Mla {
        q: MlaQuery,
        kv_a: Linear,
        kv_a_norm: RmsNorm,
        kv_b: Linear,
        kv_lora_rank: usize,
        qk_nope_head_dim: usize,
        qk_rope_head_dim: usize,
        v_head_dim: usize,
    },
}

#[derive(Debug, Clone)]
pub enum MlaQuery {
    Direct(Linear),
    LowRank { a: Linear, norm: RmsNorm, b: Linear },
}

#[derive(Debug, Clone)]
pub struct Attention {
    pub proj: Projections,
    pub o: Linear,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub rope: Rope,
}

/// Inputs shared by every layer of one forward pass.
pub struct AttentionInputs<'a> {
    /// RoPE `cos`, `sin` tables `[T, d/2]` for this pass's positions.
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
    /// Additive mask `[B, 1, T, S]`.
    pub mask: &'a Tensor,
    /// For attention scores: query validity `[B, T]` (1 = real token) and the number of
    /// valid queries that see each key `[B, S]`.
    pub score_weights: Option<(&'a Tensor, &'a Tensor)>,
}

impl Attention {
    /// Returns the output `[B, T, hidden]` and, when `inputs.score_weights` is given,
    /// the per-token attention scores `[B, S]`.
    pub fn forward(
        &self,
        x: &Tensor,
        inputs: &AttentionInputs,
        cache: Option<&mut KvCache>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, t, _) = x.dims3()?;
        let (q, k, v, scale) = self.project(x, inputs)?;
        let (k, v) = match cache {
            Some(cache) => {
                let (k, v) = match &cache.kv {
                    Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
                    None => (k, v),
                };
                cache.kv = Some((k.clone(), v.clone()));
                (k, v)
            }
            None => (k, v),
        };
        let k = self.repeat_kv(&k)?;
        let v = self.repeat_kv(&v)?;
        // One new token per row of a batch (cached scoring of branching answers)
        // leaves `q` with strides the matmul rejects; a no-op when already contiguous.
        let q = q.contiguous()?;
        let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(inputs.mask)?;
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let out = probs.matmul(&v)?; // [B, H, T, dv]
        let dv = out.dim(3)?;
        let out = out
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, self.num_heads * dv))?;
        let out = self.o.forward(&out)?;
        let token_scores = match inputs.score_weights {
            Some((query_valid, counts)) => {
                let p = probs.detach().mean(1)?; // [B, T, S]
                let seen = p.broadcast_mul(&query_valid.unsqueeze(2)?)?.sum(1)?; // [B, S]
                Some((seen / counts)?)
            }
            None => None,
        };
        Ok((out, token_scores))
    }

    /// q `[B, H, T, dq]`, k `[B, Hkv, T, dq]`, v `[B, Hkv, T, dv]` (RoPE applied), scale.
    fn project(
        &self,
        x: &Tensor,
        inputs: &AttentionInputs,
    ) -> Result<(Tensor, Tensor, Tensor, f64)> {
        let (b, t, _) = x.dims3()?;
        let (h, hkv) = (self.num_heads, self.num_kv_heads);
        let heads = |y: Tensor, n: usize, d: usize| y.reshape((b, t, n, d));
        let to_bhtd = |y: Tensor| y.transpose(1, 2)?.contiguous();
        match &self.proj {
            Projections::Standard {
                q,
                k,
                v,
                qk_norm,
                clip_qkv,
                head_dim,
            } => {
                let d = *head_dim;
                let (mut qs, mut ks, mut vs) = (q.forward(x)?, k.forward(x)?, v.forward(x)?);
                if let QkNormLayer::Full { q, k } = qk_norm {
                    qs = q.forward(&qs)?;
                    ks = k.forward(&ks)?;
                }
                if let Some(c) = clip_qkv {
                    qs = qs.clamp(-c, *c)?;
                    ks = ks.clamp(-c, *c)?;
                    vs = vs.clamp(-c, *c)?;
                }
                let (mut qs, mut ks) = (heads(qs, h, d)?, heads(ks, hkv, d)?);
                if let QkNormLayer::PerHead { q, k } = qk_norm {
                    qs = q.forward(&qs)?;
                    ks = k.forward(&ks)?;
                }
                let qs = self.rope.apply(&to_bhtd(qs)?, inputs.cos, inputs.sin)?;
                let ks = self.rope.apply(&to_bhtd(ks)?, inputs.cos, inputs.sin)?;
                let vs = to_bhtd(heads(vs, hkv, d)?)?;
                Ok((qs, ks, vs, 1.0 / (d as f64).sqrt()))
            }
            Projections::Mla {
                q,
                kv_a,
                kv_a_norm,
                kv_b,
                kv_lora_rank,
                qk_nope_head_dim: dn,
                qk_rope_head_dim: dr,
                v_head_dim: dv,
            } => {
                let (dn, dr, dv) = (*dn, *dr, *dv);
                let qs = match q {
                    MlaQuery::Direct(l) => l.forward(x)?,
                    MlaQuery::LowRank { a, norm, b } => {
                        b.forward(&norm.forward(&a.forward(x)?)?)?
                    }
                };
                let qs = to_bhtd(heads(qs, h, dn + dr)?)?;
                let q_nope = qs.narrow(3, 0, dn)?;
                let q_pe = self.rope.apply(
                    &qs.narrow(3, dn, dr)?.contiguous()?,
                    inputs.cos,
                    inputs.sin,
                )?;
                let c = kv_a.forward(x)?; // [B, T, r + dr]
                let c_kv = c.narrow(2, 0, *kv_lora_rank)?;
                let k_pe = c.narrow(2, *kv_lora_rank, dr)?.reshape((b, t, 1, dr))?;
                let k_pe = self.rope.apply(&to_bhtd(k_pe)?, inputs.cos, inputs.sin)?;
                let kv = kv_b.forward(&kv_a_norm.forward(&c_kv.contiguous()?)?)?;
                let kv = to_bhtd(heads(kv, h, dn + dv)?)?;
                let k_nope = kv.narrow(3, 0, dn)?;
                let vs = kv.narrow(3, dn, dv)?.contiguous()?;
                let k_pe = k_pe.broadcast_as((b, h, t, dr))?;
                let qs = Tensor::cat(&[&q_nope, &q_pe], 3)?;
                let ks = Tensor::cat(&[&k_nope, &k_pe.contiguous()?], 3)?;
                Ok((qs, ks, vs, 1.0 / ((dn + dr) as f64).sqrt()))
            }
        }
    }

    fn repeat_kv(&self, x: &Tensor) -> Result<Tensor> {
        let rep = self.num_heads / self.num_kv_heads;
        if rep == 1 {
            return Ok(x.clone());
        }
        let (b, hkv, s, d) = x.dims4()?;
        x.unsqueeze(2)?
            .broadcast_as((b, hkv, rep, s, d))?
            .contiguous()?
            .reshape((b, hkv * rep, s, d))
    }
}
