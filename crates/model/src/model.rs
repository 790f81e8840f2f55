//! [`MoeModel`]: the pre-norm decoder for every supported architecture.
//!
//! `h = x + Attn(RMSNorm_in(x))`, `out = h + FFN(RMSNorm_post(h))`, where FFN is a dense
//! SwiGLU MLP or an MoE block; after the last layer `model.norm` and `lm_head` (or the
//! tied embedding). Built from a [`ParamStore`] by HF key, so the same code serves
//! frozen inference, selective training (some tensors are `Var`s) and saving back.
//!
//! `forward` takes token ids `[B, T]` and an optional attention mask `[B, T]`
//! (1 = real token, 0 = padding) and returns logits `[B, T, V]`; with `record` it
//! also returns, per MoE layer, the routing and each token's attention score.

use candle_core::{DType, Device, Tensor, D};

use crate::config::{AttentionKind, Ffn, ModelConfig, MoeConfig, QkNorm, RouterKind, SharedExpert};
use crate::keys::{self, Proj};
use crate::layers::attention::{AttentionInputs, MlaQuery, Projections, QkNormLayer};
use crate::layers::moe::{ExpertSlots, Router, SharedLayer};
use crate::layers::{
    target_logprob, Attention, KvCache, Linear, MoeBlock, RmsNorm, Rope, Routing, SwiGlu,
};
use crate::params::ParamStore;
use crate::{Error, Result};

/// Additive mask value for disallowed keys (finite, so fully masked rows stay finite).
const MASKED: f32 = -1e9;

#[derive(Debug, Clone)]
enum FfnLayer {
    Dense(SwiGlu),
    Moe(MoeBlock),
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    input_norm: RmsNorm,
    attention: Attention,
    post_norm: RmsNorm,
    ffn: FfnLayer,
}

/// Per MoE layer, what `forward(.., record = true)` reports.
#[derive(Debug, Clone)]
pub struct LayerTrace {
    pub layer: usize,
    pub routing: Routing,
    /// Attention probability each token receives, averaged over heads and over the
    /// valid query positions that see it `[B, T]` (0 for padding).
    pub attention_score: Tensor,
    /// What the MoE block read: the post-attention-norm hidden states `[B·T, hidden]`.
    pub moe_input: Tensor,
    /// What the MoE block returned (routed + shared experts) `[B·T, hidden]`.
    pub moe_output: Tensor,
}

/// The three weight matrices of an expert built by merging others (PyTorch layout).
#[derive(Debug, Clone)]
pub struct MergedExpert {
    pub gate: Tensor,
    pub up: Tensor,
    pub down: Tensor,
}

#[derive(Debug, Clone)]
pub struct ForwardOutput {
    pub logits: Tensor,
    pub traces: Vec<LayerTrace>,
}

/// Keys and values of every layer for incremental decoding.
#[derive(Debug, Clone, Default)]
pub struct ModelCache {
    layers: Vec<KvCache>,
    len: usize,
}

impl ModelCache {
    /// Number of positions already in the cache.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A cache whose row `i` is this cache's row `rows[i]`: continuations that branch
    /// (row `rows[i]` is the prefix row `i` continues).
    pub fn select_rows(&self, rows: &[u32]) -> Result<ModelCache> {
        let mut idx = None;
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let kv = match &layer.kv {
                None => None,
                Some((k, v)) => {
                    // Every layer holds the same rows: check and build the index once.
                    let idx = match &idx {
                        Some(idx) => idx,
                        None => {
                            let b = k.dim(0)?;
                            if let Some(&bad) = rows.iter().find(|&&r| r as usize >= b) {
                                return Err(Error::Input(format!(
                                    "cache row {bad} selected, the cache has {b} rows"
                                )));
                            }
                            idx.insert(Tensor::new(rows, k.device())?)
                        }
                    };
                    Some((
                        k.contiguous()?.index_select(idx, 0)?,
                        v.contiguous()?.index_select(idx, 0)?,
                    ))
                }
            };
            layers.push(KvCache { kv });
        }
        Ok(ModelCache {
            layers,
            len: self.len,
        })
    }
}

/// What [`MoeModel::forward_hidden_resumable`] keeps of a forward, so that forwards
/// of a model changed from some layer on resume there ([`MoeModel::forward_hidden_from`]).
#[derive(Debug, Clone)]
pub struct Resume {
    /// The residual stream entering each layer, `[B, T, hidden]`.
    layer_inputs: Vec<Tensor>,
    /// Per layer, the selected experts `[B * T, k]` (u32; `None` for dense layers).
    routes: Vec<Option<Tensor>>,
    /// Every layer's keys and values.
    cache: ModelCache,
    /// The attention mask `[B][T]`.
    key_valid: Vec<Vec<u32>>,
}

impl Resume {
    /// The experts layer `layer` selected for each token, `[B * T, k]` (u32, rows in
    /// `(batch, position)` order); `None` for a dense layer or one out of range.
    pub fn routes(&self, layer: usize) -> Option<&Tensor> {
        self.routes.get(layer).and_then(Option::as_ref)
    }
}

#[derive(Debug, Clone)]
pub struct MoeModel {
    cfg: ModelConfig,
    embed: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    device: Device,
}

impl MoeModel {
    /// Build the model from `params`, checking every tensor's presence and shape.
    pub fn new(cfg: &ModelConfig, params: &ParamStore) -> Result<Self> {
        let h = cfg.hidden_size;
        let v = cfg.vocab_size;
        let embed = params.get("model.embed_tokens.weight", &[v, h])?;
        let device = embed.device().clone();
        let rope = Rope::new(cfg.rope_dim(), cfg.rope_theta, cfg.rope_interleaved);
        let layers = (0..cfg.num_layers())
            .map(|l| build_layer(cfg, params, l, &rope))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(params.get("model.norm.weight", &[h])?, cfg.rms_norm_eps);
        let lm_head = Linear::new(
            if cfg.tie_word_embeddings && !params.contains("lm_head.weight") {
                embed.clone()
            } else {
                params.get("lm_head.weight", &[v, h])?
            },
            None,
        );
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            layers,
            norm,
            lm_head,
            rope,
            device,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The MoE block of decoder layer `layer`, to customise its routing (see
    /// [`crate::layers::moe`]: expert slots, router masks).
    pub fn moe_block_mut(&mut self, layer: usize) -> Result<&mut MoeBlock> {
        let n_layers = self.layers.len();
        match self.layers.get_mut(layer).map(|l| &mut l.ffn) {
            Some(FfnLayer::Moe(moe)) => Ok(moe),
            Some(FfnLayer::Dense(_)) => Err(Error::Input(format!("layer {layer} is dense"))),
            None => Err(Error::Input(format!(
                "layer {layer} does not exist ({n_layers} layers)"
            ))),
        }
    }

    /// Replace groups of routed experts of `layer` by forward-only merged experts:
    /// `slot_of[e]` is `e` itself or `n_experts + c` for `merged[c]`. Each merged
    /// expert has the routed experts' shapes.
    pub fn set_merged_experts(
        &mut self,
        layer: usize,
        slot_of: Vec<usize>,
        merged: Vec<MergedExpert>,
    ) -> Result<()> {
        let block = self.moe_block_mut(layer)?;
        let reference = block.experts.first().cloned();
        let mut layers = Vec::with_capacity(merged.len());
        for (c, m) in merged.into_iter().enumerate() {
            if let Some(r) = &reference {
                for (name, w, want) in [
                    ("gate", &m.gate, r.gate.weight()),
                    ("up", &m.up, r.up.weight()),
                    ("down", &m.down, r.down.weight()),
                ] {
                    if w.dims() != want.dims() {
                        return Err(Error::Input(format!(
                            "merged expert {c} of layer {layer}: {name} is {:?}, experts have {:?}",
                            w.dims(),
                            want.dims()
                        )));
                    }
                }
            }
            layers.push(SwiGlu {
                gate: Linear::new(m.gate.detach(), None),
                up: Linear::new(m.up.detach(), None),
                down: Linear::new(m.down.detach(), None),
            });
        }
        block
            .set_slots(ExpertSlots {
                slot_of,
                merged: layers,
            })
            .map_err(|e| Error::Input(format!("layer {layer}: {e}")))
    }

    /// Route layer `layer`'s tokens only to the experts with `keep[e]`.
    pub fn set_kept_experts(&mut self, layer: usize, keep: &[bool]) -> Result<()> {
        self.moe_block_mut(layer)?
            .set_kept_experts(keep)
            .map_err(|e| Error::Input(format!("layer {layer}: {e}")))
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Logits `[B, T, V]` for `input_ids` `[B, T]` (u32 or i64); see the module docs.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        record: bool,
    ) -> Result<ForwardOutput> {
        self.run(input_ids, attention_mask, record, None)
    }

    /// Incremental forward: `input_ids` `[B, T]` continue the positions in `cache`.
    pub fn forward_cached(&self, input_ids: &Tensor, cache: &mut ModelCache) -> Result<Tensor> {
        if cache.layers.is_empty() {
            cache.layers = vec![KvCache::default(); self.layers.len()];
        }
        Ok(self.run(input_ids, None, false, Some(cache))?.logits)
    }

    /// [`MoeModel::forward_cached`] with an attention mask `[B, cached + T]` over every
    /// key (cached ones first): continuations of different lengths, right-padded.
    pub fn forward_cached_masked(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        cache: &mut ModelCache,
    ) -> Result<Tensor> {
        if cache.layers.is_empty() {
            cache.layers = vec![KvCache::default(); self.layers.len()];
        }
        let (hidden, _) = self.run_hidden(
            input_ids,
            Some(attention_mask),
            Hooks {
                cache: Some(cache),
                ..Hooks::default()
            },
        )?;
        Ok(self.lm_head.forward(&hidden)?)
    }

    fn run(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        record: bool,
        cache: Option<&mut ModelCache>,
    ) -> Result<ForwardOutput> {
        let (hidden, traces) = self.run_hidden(
            input_ids,
            attention_mask,
            Hooks {
                record,
                cache,
                ..Hooks::default()
            },
        )?;
        let logits = self.lm_head.forward(&hidden)?;
        Ok(ForwardOutput { logits, traces })
    }

    /// The final-norm hidden states `[B, T, hidden]` (what `lm_head` reads) and traces.
    pub fn forward_hidden(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        record: bool,
    ) -> Result<(Tensor, Vec<LayerTrace>)> {
        self.run_hidden(
            input_ids,
            attention_mask,
            Hooks {
                record,
                ..Hooks::default()
            },
        )
    }

    /// [`MoeModel::forward_hidden`] without traces, plus the experts each layer
    /// selected for each token: `[B * T, k]` (u32, by descending weight, rows in
    /// `(batch, position)` order; `None` for a dense layer). Cheaper than a recorded
    /// forward, which also keeps every MoE block's inputs, outputs and attention scores.
    pub fn forward_hidden_routed(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<(Tensor, Vec<Option<Tensor>>)> {
        let mut routes = Vec::with_capacity(self.layers.len());
        let (hidden, _) = self.run_hidden(
            input_ids,
            attention_mask,
            Hooks {
                routes: Some(&mut routes),
                ..Hooks::default()
            },
        )?;
        Ok((hidden, routes))
    }

    /// Per routed expert, how many (token, MoE layer) pairs of `routes` (from
    /// [`MoeModel::forward_hidden_routed`]) rank it first. As long as the widest MoE
    /// layer has experts; empty for a dense model.
    pub fn first_choice_counts(&self, routes: &[Option<Tensor>]) -> Result<Vec<usize>> {
        let n_experts = (0..self.cfg.num_layers())
            .filter_map(|l| self.cfg.moe(l).map(|m| m.n_experts))
            .max()
            .unwrap_or(0);
        let mut counts = vec![0usize; n_experts];
        for (l, route) in routes.iter().enumerate() {
            let Some(route) = route else { continue };
            let first: Vec<u32> = route.narrow(1, 0, 1)?.flatten_all()?.to_vec1()?;
            for e in first {
                let slot = counts.get_mut(e as usize).ok_or_else(|| {
                    Error::Input(format!(
                        "layer {l} routes to expert {e}, the model has {n_experts}"
                    ))
                })?;
                *slot += 1;
            }
        }
        Ok(counts)
    }

    /// [`MoeModel::forward_hidden`] without traces, plus what later forwards need to
    /// resume from it ([`Resume`]; [`MoeModel::forward_hidden_from`]).
    pub fn forward_hidden_resumable(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<(Tensor, Resume)> {
        let (b, t) = input_ids.dims2().map_err(|_| {
            Error::Input(format!(
                "input ids must be [batch, seq], got {:?}",
                input_ids.dims()
            ))
        })?;
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut routes = Vec::with_capacity(self.layers.len());
        let mut cache = ModelCache {
            layers: vec![KvCache::default(); self.layers.len()],
            len: 0,
        };
        let (hidden, _) = self.run_hidden(
            input_ids,
            attention_mask,
            Hooks {
                cache: Some(&mut cache),
                layer_inputs: Some(&mut inputs),
                routes: Some(&mut routes),
                ..Hooks::default()
            },
        )?;
        let key_valid = match attention_mask {
            Some(m) => m.to_dtype(DType::U32)?.to_vec2::<u32>()?,
            None => vec![vec![1; t]; b],
        };
        Ok((
            hidden,
            Resume {
                layer_inputs: inputs,
                routes,
                cache,
                key_valid,
            },
        ))
    }

    /// The final-norm hidden states `[R, n, hidden]` at positions `start..start + n`
    /// of batch rows `rows` (R of them) of the forward that left `resume`, computed by
    /// this model from layer `layer` on, where `input_ids` `[R, n]` are those rows'
    /// tokens at those positions. Layers before `layer` are not run: their results,
    /// and the keys and values of positions before `start` in every layer, come from
    /// `resume`, as does the attention mask.
    ///
    /// Exact when this model agrees with the one that left `resume` on layers
    /// `0..layer` and, at layer `layer` and later, on every position before `start`:
    /// with causal attention, a change confined to tokens at `start` or later (e.g.
    /// to an expert no earlier token is routed to) leaves earlier positions as they
    /// were. `resume` must come from a model with the same attention layout.
    pub fn forward_hidden_from(
        &self,
        resume: &Resume,
        layer: usize,
        rows: &[usize],
        start: usize,
        input_ids: &Tensor,
    ) -> Result<Tensor> {
        if resume.layer_inputs.len() != self.layers.len() {
            return Err(Error::Input(format!(
                "the resume state has {} layers, the model {}",
                resume.layer_inputs.len(),
                self.layers.len()
            )));
        }
        let x = resume.layer_inputs.get(layer).ok_or_else(|| {
            Error::Input(format!(
                "layer {layer} is out of range: the model has {} layers",
                self.layers.len()
            ))
        })?;
        let (b, t, _) = x.dims3()?;
        let n = match input_ids.dims2() {
            Ok((r, n)) if r == rows.len() && r > 0 && n > 0 => n,
            _ => {
                return Err(Error::Input(format!(
                    "resumed input ids must be [{} rows, n > 0], got {:?}",
                    rows.len(),
                    input_ids.dims()
                )))
            }
        };
        if let Some(bad) = rows.iter().find(|&&r| r >= b) {
            return Err(Error::Input(format!(
                "row {bad} is outside the resumed batch of {b} rows"
            )));
        }
        if start + n > t {
            return Err(Error::Input(format!(
                "positions {start}..{} are outside the resumed batch's {t}",
                start + n
            )));
        }
        let index: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let index = Tensor::new(index.as_slice(), &self.device)?;
        let x = x.index_select(&index, 0)?.narrow(1, start, n)?;
        let mut cache = ModelCache {
            layers: vec![KvCache::default(); self.layers.len()],
            len: start,
        };
        if start > 0 {
            for (kept, new) in resume
                .cache
                .layers
                .iter()
                .zip(&mut cache.layers)
                .skip(layer)
            {
                if let Some((k, v)) = &kept.kv {
                    new.kv = Some((
                        k.index_select(&index, 0)?.narrow(2, 0, start)?,
                        v.index_select(&index, 0)?.narrow(2, 0, start)?,
                    ));
                }
            }
        }
        let valid: Vec<u32> = rows
            .iter()
            .flat_map(|&r| resume.key_valid[r][..start + n].iter().copied())
            .collect();
        let mask = Tensor::from_vec(valid, (rows.len(), start + n), &self.device)?;
        let (hidden, _) = self.run_hidden(
            input_ids,
            Some(&mask),
            Hooks {
                cache: Some(&mut cache),
                start: Some((layer, &x)),
                ..Hooks::default()
            },
        )?;
        Ok(hidden)
    }

    /// The input of every decoder layer's FFN, in layer order: the post-attention
    /// RMSNorm output `[B * T, hidden]` (rows in `(batch, position)` order), which is
    /// what a dense MLP or an MoE block and its router read.
    pub fn ffn_inputs(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<Vec<Tensor>> {
        let mut res = Vec::with_capacity(self.layers.len());
        self.run_hidden(
            input_ids,
            attention_mask,
            Hooks {
                ffn_inputs: Some(&mut res),
                ..Hooks::default()
            },
        )?;
        Ok(res)
    }

    /// `log p(input_ids[b, t+1] | ..t)` for every target position, i.e. every `(b, t+1)`
    /// with `loss_mask[b, t+1] == 1` (all positions after the first when `None`), from
    /// hidden states of [`MoeModel::forward_hidden`]. Logits are computed only at those
    /// positions, so a response-only loss never materialises `[B, T, V]`.
    /// Returns the log-probabilities `[n]` and the batch row of each.
    pub fn target_logprobs(
        &self,
        hidden: &Tensor,
        input_ids: &Tensor,
        loss_mask: Option<&Tensor>,
    ) -> Result<(Tensor, Vec<usize>)> {
        let (b, t, h) = hidden.dims3()?;
        let ids: Vec<Vec<u32>> = input_ids.to_dtype(DType::U32)?.to_vec2()?;
        let mask: Vec<Vec<u32>> = match loss_mask {
            Some(m) => m.to_dtype(DType::U32)?.to_vec2()?,
            None => vec![vec![1; t]; b],
        };
        if mask.len() != b || mask.iter().any(|r| r.len() != t) {
            return Err(Error::Input(format!("loss mask must be [{b}, {t}]")));
        }
        let (mut positions, mut targets, mut rows) = (Vec::new(), Vec::new(), Vec::new());
        for (row, (row_ids, row_mask)) in ids.iter().zip(&mask).enumerate() {
            for pos in 0..t.saturating_sub(1) {
                if row_mask[pos + 1] != 0 {
                    positions.push((row * t + pos) as u32);
                    targets.push(row_ids[pos + 1]);
                    rows.push(row);
                }
            }
        }
        if positions.is_empty() {
            return Err(Error::Input("the loss mask selects no target token".into()));
        }
        let n = positions.len();
        let positions = Tensor::from_vec(positions, n, &self.device)?;
        let targets = Tensor::from_vec(targets, n, &self.device)?;
        let selected = hidden.reshape((b * t, h))?.index_select(&positions, 0)?;
        let logits = self.lm_head.forward(&selected)?;
        Ok((target_logprob(&logits, &targets)?, rows))
    }

    /// Mean next-token cross-entropy over the target positions of `loss_mask` (see
    /// [`MoeModel::target_logprobs`]); equals [`causal_lm_loss`] on the full logits.
    pub fn loss(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        loss_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (hidden, _) = self.forward_hidden(input_ids, attention_mask, false)?;
        let (logp, _) = self.target_logprobs(&hidden, input_ids, loss_mask)?;
        Ok(logp.mean(0)?.neg()?)
    }

    fn run_hidden(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        hooks: Hooks<'_>,
    ) -> Result<(Tensor, Vec<LayerTrace>)> {
        let Hooks {
            record,
            mut cache,
            mut ffn_inputs,
            mut layer_inputs,
            start,
            mut routes,
        } = hooks;
        let (b, t) = input_ids.dims2().map_err(|_| {
            Error::Input(format!(
                "input ids must be [batch, seq], got {:?}",
                input_ids.dims()
            ))
        })?;
        if t == 0 {
            return Err(Error::Input("input ids are empty".into()));
        }
        let ids = input_ids.to_dtype(DType::U32)?;
        let max_id = ids.flatten_all()?.max(0)?.to_scalar::<u32>()? as usize;
        if max_id >= self.cfg.vocab_size {
            return Err(Error::Input(format!(
                "token id {max_id} is outside the vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        let offset = cache.as_ref().map_or(0, |c| c.len);
        let s = offset + t;
        let key_valid = match attention_mask {
            Some(m) => {
                if m.dims() != [b, s] {
                    return Err(Error::Input(format!(
                        "attention mask must be [{b}, {s}], got {:?}",
                        m.dims()
                    )));
                }
                m.to_dtype(DType::F32)?.to_vec2::<f32>()?
            }
            None => vec![vec![1.0; s]; b],
        };
        let mask = additive_mask(&key_valid, offset, t, &self.device)?;
        let (cos, sin) = self.rope.tables(offset, t, &self.device)?;
        let score_weights = if record {
            Some(score_weights(&key_valid, offset, t, &self.device)?)
        } else {
            None
        };
        let inputs = AttentionInputs {
            cos: &cos,
            sin: &sin,
            mask: &mask,
            score_weights: score_weights.as_ref().map(|(q, c)| (q, c)),
        };

        let (first, mut x) = match start {
            Some((l, x)) => {
                if x.dims3()? != (b, t, self.cfg.hidden_size) {
                    return Err(Error::Input(format!(
                        "layer input must be [{b}, {t}, {}], got {:?}",
                        self.cfg.hidden_size,
                        x.dims()
                    )));
                }
                (l, x.clone())
            }
            None => (
                0,
                self.embed
                    .index_select(&ids.flatten_all()?, 0)?
                    .reshape((b, t, ()))?,
            ),
        };
        let mut traces = Vec::new();
        for (l, layer) in self.layers.iter().enumerate().skip(first) {
            if let Some(inputs) = layer_inputs.as_deref_mut() {
                inputs.push(x.clone());
            }
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[l]);
            let (a, scores) =
                layer
                    .attention
                    .forward(&layer.input_norm.forward(&x)?, &inputs, layer_cache)?;
            let hres = (x + a)?;
            let normed = layer.post_norm.forward(&hres)?.reshape((b * t, ()))?;
            if let Some(inputs) = ffn_inputs.as_deref_mut() {
                inputs.push(normed.clone());
            }
            let f = match &layer.ffn {
                FfnLayer::Dense(mlp) => {
                    if let Some(routes) = routes.as_deref_mut() {
                        routes.push(None);
                    }
                    mlp.forward(&normed)?
                }
                FfnLayer::Moe(moe) => {
                    let (y, routing) = moe.forward(&normed)?;
                    if let Some(routes) = routes.as_deref_mut() {
                        routes.push(Some(routing.topk_idx.clone()));
                    }
                    if let Some(attention_score) = scores {
                        traces.push(LayerTrace {
                            layer: l,
                            routing,
                            attention_score,
                            moe_input: normed.clone(),
                            moe_output: y.clone(),
                        });
                    }
                    y
                }
            };
            x = (hres + f.reshape((b, t, ()))?)?;
        }
        if let Some(c) = cache {
            c.len += t;
        }
        Ok((self.norm.forward(&x)?, traces))
    }
}

/// What [`MoeModel::run_hidden`] records or resumes from, besides the hidden states.
#[derive(Default)]
struct Hooks<'a> {
    /// Collect a [`LayerTrace`] per MoE layer.
    record: bool,
    /// Incremental decoding state.
    cache: Option<&'a mut ModelCache>,
    /// Collect each layer's FFN input `[B * T, hidden]`.
    ffn_inputs: Option<&'a mut Vec<Tensor>>,
    /// Collect the residual stream entering each layer `[B, T, hidden]`.
    layer_inputs: Option<&'a mut Vec<Tensor>>,
    /// Start at this layer with this residual stream instead of the embeddings.
    start: Option<(usize, &'a Tensor)>,
    /// Collect each layer's selected experts `[B * T, k]` (`None` for dense layers).
    routes: Option<&'a mut Vec<Option<Tensor>>>,
}

/// `[B, 1, T, S]`: 0 where query `i` (at position `offset + i`) may see key `j`
/// (causal and not padding), [`MASKED`] elsewhere.
fn additive_mask(
    key_valid: &[Vec<f32>],
    offset: usize,
    t: usize,
    device: &Device,
) -> Result<Tensor> {
    let b = key_valid.len();
    let s = offset + t;
    let mut data = Vec::with_capacity(b * t * s);
    for row in key_valid {
        for i in 0..t {
            for (j, &valid) in row.iter().enumerate() {
                let ok = j <= offset + i && valid > 0.0;
                data.push(if ok { 0.0 } else { MASKED });
            }
        }
    }
    Ok(Tensor::from_vec(data, (b, 1, t, s), device)?)
}

/// Query validity `[B, T]` and, per key, the number of valid queries that see it `[B, S]`
/// (at least 1, to keep the average finite for padding keys).
fn score_weights(
    key_valid: &[Vec<f32>],
    offset: usize,
    t: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let b = key_valid.len();
    let s = offset + t;
    let mut query_valid = Vec::with_capacity(b * t);
    let mut counts = Vec::with_capacity(b * s);
    for row in key_valid {
        let q: Vec<f32> = row[offset..].to_vec();
        for (j, &key_ok) in row.iter().enumerate() {
            let c = (0..t)
                .filter(|&i| offset + i >= j && q[i] > 0.0 && key_ok > 0.0)
                .count() as f32;
            counts.push(c.max(1.0));
        }
        query_valid.extend(q);
    }
    Ok((
        Tensor::from_vec(query_valid, (b, t), device)?,
        Tensor::from_vec(counts, (b, s), device)?,
    ))
}

/// Mean next-token cross-entropy: `logits[:, :-1]` against `input_ids[:, 1:]`.
/// `loss_mask` `[B, T]` (1 = this token is a target) restricts the mean to the marked
/// target positions, e.g. response tokens only.
pub fn causal_lm_loss(
    logits: &Tensor,
    input_ids: &Tensor,
    loss_mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, t, v) = logits.dims3()?;
    if t < 2 {
        return Err(Error::Input(
            "need at least 2 tokens for a next-token loss".into(),
        ));
    }
    let logits = logits.narrow(1, 0, t - 1)?.reshape((b * (t - 1), v))?;
    let targets = input_ids
        .to_dtype(DType::U32)?
        .narrow(1, 1, t - 1)?
        .reshape((b * (t - 1), 1))?;
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let log_z = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let target_logit = shifted.gather(&targets, 1)?;
    let nll = (log_z - target_logit)?.squeeze(1)?;
    match loss_mask {
        None => Ok(nll.mean(0)?),
        Some(m) => {
            let m = m
                .to_dtype(DType::F32)?
                .narrow(1, 1, t - 1)?
                .reshape(b * (t - 1))?;
            let n = m.sum_all()?.to_scalar::<f32>()?;
            if n == 0.0 {
                return Err(Error::Input("the loss mask selects no target token".into()));
            }
            Ok(((nll * m)?.sum_all()? / n as f64)?)
        }
    }
}

fn build_layer(cfg: &ModelConfig, p: &ParamStore, l: usize, rope: &Rope) -> Result<DecoderLayer> {
    let h = cfg.hidden_size;
    let pre = keys::layer_prefix(l);
    let eps = cfg.rms_norm_eps;
    let norm = |name: &str| -> Result<RmsNorm> {
        Ok(RmsNorm::new(
            p.get(&format!("{pre}.{name}.weight"), &[h])?,
            eps,
        ))
    };
    let ffn = match &cfg.layers[l] {
        Ffn::Dense { width } => {
            FfnLayer::Dense(swiglu(p, |proj| keys::dense_mlp_key(l, proj), h, *width)?)
        }
        Ffn::Moe(m) => FfnLayer::Moe(build_moe(cfg, p, l, m)?),
    };
    Ok(DecoderLayer {
        input_norm: norm("input_layernorm")?,
        attention: build_attention(cfg, p, l, rope)?,
        post_norm: norm("post_attention_layernorm")?,
        ffn,
    })
}

fn build_attention(cfg: &ModelConfig, p: &ParamStore, l: usize, rope: &Rope) -> Result<Attention> {
    let h = cfg.hidden_size;
    let (nh, nkv) = (cfg.num_heads, cfg.num_kv_heads);
    let pre = format!("{}.self_attn", keys::layer_prefix(l));
    let w = |name: &str, shape: &[usize]| p.get(&format!("{pre}.{name}.weight"), shape);
    let linear = |name: &str, out: usize, inp: usize, bias: bool| -> Result<Linear> {
        let b = if bias {
            Some(p.get(&format!("{pre}.{name}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Linear::new(w(name, &[out, inp])?, b))
    };
    let (proj, o) = match &cfg.attention {
        AttentionKind::Standard {
            head_dim,
            qkv_bias,
            o_bias,
            qk_norm,
            clip_qkv,
        } => {
            let d = *head_dim;
            let qk_norm = match qk_norm {
                QkNorm::None => QkNormLayer::None,
                QkNorm::PerHead => QkNormLayer::PerHead {
                    q: RmsNorm::new(w("q_norm", &[d])?, cfg.rms_norm_eps),
                    k: RmsNorm::new(w("k_norm", &[d])?, cfg.rms_norm_eps),
                },
                QkNorm::Full => QkNormLayer::Full {
                    q: RmsNorm::new(w("q_norm", &[nh * d])?, cfg.rms_norm_eps),
                    k: RmsNorm::new(w("k_norm", &[nkv * d])?, cfg.rms_norm_eps),
                },
            };
            (
                Projections::Standard {
                    q: linear("q_proj", nh * d, h, *qkv_bias)?,
                    k: linear("k_proj", nkv * d, h, *qkv_bias)?,
                    v: linear("v_proj", nkv * d, h, *qkv_bias)?,
                    qk_norm,
                    clip_qkv: *clip_qkv,
                    head_dim: d,
                },
                linear("o_proj", h, nh * d, *o_bias)?,
            )
        }
        AttentionKind::Mla {
            q_lora_rank,
            kv_lora_rank,
            qk_nope_head_dim,
            qk_rope_head_dim,
            v_head_dim,
        } => {
            let (r, dn, dr, dv) = (
                *kv_lora_rank,
                *qk_nope_head_dim,
                *qk_rope_head_dim,
                *v_head_dim,
            );
            // The latent norms use a fixed eps of 1e-6 in the reference implementation.
            let q = match q_lora_rank {
                None => MlaQuery::Direct(linear("q_proj", nh * (dn + dr), h, false)?),
                Some(qr) => MlaQuery::LowRank {
                    a: linear("q_a_proj", *qr, h, false)?,
                    norm: RmsNorm::new(w("q_a_layernorm", &[*qr])?, 1e-6),
                    b: linear("q_b_proj", nh * (dn + dr), *qr, false)?,
                },
            };
            (
                Projections::Mla {
                    q,
                    kv_a: linear("kv_a_proj_with_mqa", r + dr, h, false)?,
                    kv_a_norm: RmsNorm::new(w("kv_a_layernorm", &[r])?, 1e-6),
                    kv_b: linear("kv_b_proj", nh * (dn + dv), r, false)?,
                    kv_lora_rank: r,
                    qk_nope_head_dim: dn,
                    qk_rope_head_dim: dr,
                    v_head_dim: dv,
                },
                linear("o_proj", h, nh * dv, false)?,
            )
        }
    };
    Ok(Attention {
        proj,
        o,
        num_heads: nh,
        num_kv_heads: nkv,
        rope: rope.clone(),
    })
}

fn build_moe(cfg: &ModelConfig, p: &ParamStore, l: usize, m: &MoeConfig) -> Result<MoeBlock> {
    let (h, e) = (cfg.hidden_size, m.n_experts);
    let router_keys = keys::router_keys(cfg.arch, m.router, l);
    let router = match m.router {
        RouterKind::Linear => Router::Linear(Linear::new(p.get(&router_keys[0], &[e, h])?, None)),
        RouterKind::TanhMlp => Router::TanhMlp(
            Linear::new(p.get(&router_keys[0], &[e, h])?, None),
            Linear::new(p.get(&router_keys[1], &[e, e])?, None),
        ),
    };
    let experts = m
        .expert_widths
        .iter()
        .enumerate()
        .map(|(idx, &width)| swiglu(p, |proj| keys::expert_key(cfg.arch, l, idx, proj), h, width))
        .collect::<Result<Vec<_>>>()?;
    let shared_mlp = |width| {
        swiglu(
            p,
            |proj| keys::shared_expert_key(cfg.arch, l, proj),
            h,
            width,
        )
    };
    let shared = match m.shared {
        SharedExpert::None => None,
        SharedExpert::Plain { width } => Some(SharedLayer::Plain(shared_mlp(width)?)),
        SharedExpert::SigmoidGated { width } => Some(SharedLayer::SigmoidGated {
            mlp: shared_mlp(width)?,
            gate: Linear::new(
                p.get(&keys::shared_expert_gate_key(cfg.arch, l), &[1, h])?,
                None,
            ),
        }),
    };
    Ok(MoeBlock {
        router,
        experts,
        shared,
        top_k: m.top_k,
        scoring: m.scoring.clone(),
        slots: None,
        router_mask: None,
    })
}

fn swiglu(
    p: &ParamStore,
    key: impl Fn(Proj) -> String,
    hidden: usize,
    width: usize,
) -> Result<SwiGlu> {
    Ok(SwiGlu {
        gate: Linear::new(p.get(&key(Proj::Gate), &[width, hidden])?, None),
        up: Linear::new(p.get(&key(Proj::Up), &[width, hidden])?, None),
        down: Linear::new(p.get(&key(Proj::Down), &[hidden, width])?, None),
    })
}

/// A model with its KV cache, decoding one sequence for [`crate::generate::generate`].
pub struct CachedLm<'a> {
    model: &'a MoeModel,
    cache: ModelCache,
}

impl<'a> CachedLm<'a> {
    pub fn new(model: &'a MoeModel) -> Self {
        Self {
            model,
            cache: ModelCache::default(),
        }
    }
}

impl crate::generate::StepLm for CachedLm<'_> {
    fn step(&mut self, ids: &[u32]) -> Result<Tensor> {
        let x = Tensor::new(ids, self.model.device())?.unsqueeze(0)?;
        let logits = self.model.forward_cached(&x, &mut self.cache)?;
        let t = logits.dim(1)?;
        Ok(logits.get(0)?.get(t - 1)?)
    }
}
