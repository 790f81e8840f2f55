//! Tokenising rendered examples into padded training batches.
//!
//! [`encode`]: prompt and target are tokenised separately (no special tokens
//! added; special tokens written in the text, such as `<|im_start|>`, are still
//! matched by the tokenizer), then concatenated: `ids = prompt_ids ++ target_ids
//! [++ eos]`, with `loss_mask = 0` on prompt tokens and `1` on target (and eos)
//! tokens.
//! If `len(ids) > max_len`, prompt tokens are dropped from the left; if the
//! target alone is longer than `max_len`, the whole prompt is dropped and the
//! target keeps its first `max_len` tokens.
//!
//! [`collate`] right-pads every sequence to the longest one `T` with `pad_id`
//! and returns three `u32` tensors of shape `[B, T]`: `input_ids`,
//! `attention_mask` (1 on real tokens, 0 on padding) and `loss_mask` (1 on
//! target tokens).
//! `loss_mask[b][t] = 1` means token `t` is to be predicted, i.e. the logits at
//! position `t - 1` are scored against it; the shift is the loss function's job.

use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::prompt::Rendered;

/// Tokenisation limits and special ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Longest sequence kept, in tokens (at least 1).
    pub max_len: usize,
    /// Id written into padding positions.
    pub pad_id: u32,
    /// Appended after the target when set (plain prompts; ChatML ends with
    /// `<|im_end|>` already).
    pub eos_id: Option<u32>,
}

/// One tokenised example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub loss_mask: Vec<u32>,
}

/// A padded batch; all tensors are `u32` of shape `[B, T]`.
#[derive(Debug, Clone)]
pub struct Batch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub loss_mask: Tensor,
}

fn token_ids(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let encoding = tokenizer
        .encode(text, false)
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    Ok(encoding.get_ids().to_vec())
}

/// Tokenises and truncates one rendered example; see the module docs.
pub fn encode(tokenizer: &Tokenizer, rendered: &Rendered, cfg: &BatchConfig) -> Result<Encoded> {
    if cfg.max_len == 0 {
        return Err(Error::param("batch.max_len", "must be at least 1, got 0"));
    }
    let mut prompt = token_ids(tokenizer, &rendered.prompt)?;
    let mut target = token_ids(tokenizer, &rendered.target)?;
    target.extend(cfg.eos_id);
    if target.len() >= cfg.max_len {
        prompt.clear();
        target.truncate(cfg.max_len);
    } else if prompt.len() + target.len() > cfg.max_len {
        let keep = cfg.max_len - target.len();
        prompt.drain(..prompt.len() - keep);
    }
    let mut loss_mask = vec![0u32; prompt.len()];
    loss_mask.resize(prompt.len() + target.len(), 1);
    prompt.extend(target);
    Ok(Encoded {
        ids: prompt,
        loss_mask,
    })
}

/// Right-pads encoded examples into one [`Batch`] on `device`.
pub fn collate(items: &[Encoded], pad_id: u32, device: &Device) -> Result<Batch> {
    if items.is_empty() {
        return Err(Error::param("batch", "cannot collate zero examples"));
    }
    let t = items.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    if t == 0 {
        return Err(Error::param(
            "batch",
            "every example encoded to zero tokens",
        ));
    }
    let b = items.len();
    let mut ids = Vec::with_capacity(b * t);
    let mut attention = Vec::with_capacity(b * t);
    let mut loss = Vec::with_capacity(b * t);
    for item in items {
        let n_pad = t - item.ids.len();
        ids.extend_from_slice(&item.ids);
        ids.extend(std::iter::repeat_n(pad_id, n_pad));
        attention.extend(std::iter::repeat_n(1u32, item.ids.len()));
        attention.extend(std::iter::repeat_n(0u32, n_pad));
        loss.extend_from_slice(&item.loss_mask);
        loss.extend(std::iter::repeat_n(0u32, n_pad));
    }
    Ok(Batch {
        input_ids: Tensor::from_vec(ids, (b, t), device)?,
        attention_mask: Tensor::from_vec(attention, (b, t), device)?,
        loss_mask: Tensor::from_vec(loss, (b, t), device)?,
    })
}

/// [`encode`] every rendered example, then [`collate`].
pub fn make_batch(
    tokenizer: &Tokenizer,
    rendered: &[Rendered],
    cfg: &BatchConfig,
    device: &Device,
) -> Result<Batch> {
    let items = rendered
        .iter()
        .map(|r| encode(tokenizer, r, cfg))
        .collect::<Result<Vec<_>>>()?;
    collate(&items, cfg.pad_id, device)
}
