//! Tokenizers: HF `tokenizer.json` files and byte-level BPE vocabularies embedded in GGUF.
//!
//! GGUF tokenizer facts used here (llama.cpp's `tokenizer.ggml.*` keys):
//! - `tokenizer.ggml.model` names the algorithm; `"gpt2"` is byte-level BPE
//!   (the only one supported here; `"llama"` is SentencePiece).
//! - `tokenizer.ggml.tokens` is the vocabulary in id order, already in GPT-2's
//!   byte-to-unicode form (a space is `Ġ`); `tokenizer.ggml.merges` holds the
//!   merge rules in priority order, each as `"left right"`.
//! - `tokenizer.ggml.token_type` gives one type per token: 1 normal, 2 unknown,
//!   3 control (special tokens such as `<|im_start|>`), 4 user-defined,
//!   5 unused, 6 byte.
//! - `tokenizer.ggml.pre` names the pre-tokenizer: `"smollm"` splits every digit
//!   on its own before GPT-2's regex; `"gpt2"` (or no key) is plain GPT-2.
//! - `tokenizer.ggml.{bos,eos,padding}_token_id` and `tokenizer.ggml.add_bos_token`
//!   give the special ids and whether a BOS is prepended.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use crate::gguf::value_as_u64;
use crate::{Error, Result};

/// GGUF token type of control tokens (`<|im_start|>`, `<|endoftext|>`, ...).
const TOKEN_TYPE_CONTROL: u64 = 3;
/// GGUF token type of user-defined added tokens.
const TOKEN_TYPE_USER_DEFINED: u64 = 4;

/// Special token ids, so a generator knows where to start and stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpecialTokenIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
    /// Whether encoding with special tokens prepends `bos`.
    pub add_bos: bool,
}

/// A tokenizer built from GGUF metadata together with its special ids.
#[derive(Clone)]
pub struct GgufTokenizer {
    pub tokenizer: Tokenizer,
    pub special: SpecialTokenIds,
}

/// Build the embedded tokenizer, or `None` when the file declares no `tokenizer.ggml.model`.
pub fn gguf_tokenizer(md: &HashMap<String, Value>) -> Result<Option<GgufTokenizer>> {
    if !md.contains_key("tokenizer.ggml.model") {
        return Ok(None);
    }
    Ok(Some(GgufTokenizer {
        tokenizer: tokenizer_from_gguf(md)?,
        special: special_tokens_from_gguf(md)?,
    }))
}

/// Build a byte-level BPE `Tokenizer` from `tokenizer.ggml.*` metadata (`model == "gpt2"`).
pub fn tokenizer_from_gguf(md: &HashMap<String, Value>) -> Result<Tokenizer> {
    match md.get("tokenizer.ggml.model") {
        Some(Value::String(m)) if m == "gpt2" => {}
        Some(Value::String(m)) => {
            return Err(Error::Tokenizer(format!(
                "unsupported gguf tokenizer model `{m}`: only `gpt2` (byte-level BPE) is supported"
            )))
        }
        _ => return Err(Error::Tokenizer("`tokenizer.ggml.model` is missing".into())),
    }
    let tokens = string_array(md, "tokenizer.ggml.tokens")?;
    let merges = parse_merges(&string_array(md, "tokenizer.ggml.merges")?)?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    if vocab.len() != tokens.len() {
        tracing::warn!("gguf vocabulary has duplicate tokens; later ids win");
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| Error::Tokenizer(format!("cannot build bpe model: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer(md)?));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    add_typed_tokens(&mut tokenizer, md, &tokens)?;
    let special = special_tokens_from_gguf(md)?;
    check_special_ids(&special, tokens.len())?;
    match (special.add_bos, special.bos) {
        (true, Some(bos)) => {
            tokenizer.with_post_processor(Some(bos_template(&tokens[bos as usize], bos)?));
        }
        _ => {
            tokenizer.with_post_processor(Some(ByteLevel::new(false, false, true)));
        }
    }
    Ok(tokenizer)
}

/// Read bos/eos/pad ids and `add_bos_token` from `tokenizer.ggml.*` metadata.
pub fn special_tokens_from_gguf(md: &HashMap<String, Value>) -> Result<SpecialTokenIds> {
    let id = |key: &str| -> Result<Option<u32>> {
        match md.get(key) {
            None => Ok(None),
            Some(v) => value_as_u64(v)
                .and_then(|x| u32::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| Error::Tokenizer(format!("`{key}` is not a token id: {v:?}"))),
        }
    };
    let add_bos = match md.get("tokenizer.ggml.add_bos_token") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(Error::Tokenizer(format!(
                "`tokenizer.ggml.add_bos_token` is not a bool: {v:?}"
            )))
        }
    };
    Ok(SpecialTokenIds {
        bos: id("tokenizer.ggml.bos_token_id")?,
        eos: id("tokenizer.ggml.eos_token_id")?,
        pad: id("tokenizer.ggml.padding_token_id")?,
        add_bos,
    })
}

/// Load an HF `tokenizer.json`.
pub fn load_tokenizer_json(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path)
        .map_err(|e| Error::Tokenizer(format!("cannot load {}: {e}", path.display())))
}

fn string_array(md: &HashMap<String, Value>, key: &str) -> Result<Vec<String>> {
    let Some(Value::Array(items)) = md.get(key) else {
        return Err(Error::Tokenizer(format!(
            "`{key}` is missing or not an array"
        )));
    };
    items
        .iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.clone()),
            v => Err(Error::Tokenizer(format!(
                "`{key}` holds a non-string: {v:?}"
            ))),
        })
        .collect()
}

/// GGUF merges are `"left right"`; byte-level tokens never contain a plain space.
fn parse_merges(merges: &[String]) -> Result<Vec<(String, String)>> {
    merges
        .iter()
        .enumerate()
        .map(|(i, m)| match m.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a.to_string(), b.to_string())),
            _ => Err(Error::Tokenizer(format!(
                "merge #{i} `{m}` is not `left right`"
            ))),
        })
        .collect()
}

/// The pre-tokenizer named by `tokenizer.ggml.pre`.
fn pre_tokenizer(md: &HashMap<String, Value>) -> Result<PreTokenizerWrapper> {
    let byte_level = ByteLevel::new(false, true, true);
    match md.get("tokenizer.ggml.pre") {
        None => Ok(byte_level.into()),
        Some(Value::String(p)) if p == "gpt2" || p == "default" => Ok(byte_level.into()),
        Some(Value::String(p)) if p == "smollm" => {
            Ok(Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into())
        }
        Some(v) => Err(Error::Tokenizer(format!(
            "unsupported `tokenizer.ggml.pre` {v:?}: supported are `gpt2` and `smollm`"
        ))),
    }
}

/// Register control tokens as special and user-defined tokens as plain added tokens,
/// so each encodes as a single id.
fn add_typed_tokens(
    tokenizer: &mut Tokenizer,
    md: &HashMap<String, Value>,
    tokens: &[String],
) -> Result<()> {
    let Some(types) = md.get("tokenizer.ggml.token_type") else {
        return Ok(());
    };
    let Value::Array(types) = types else {
        return Err(Error::Tokenizer(
            "`tokenizer.ggml.token_type` is not an array".into(),
        ));
    };
    if types.len() != tokens.len() {
        return Err(Error::Tokenizer(format!(
            "{} token types for {} tokens",
            types.len(),
            tokens.len()
        )));
    }
    let mut special = Vec::new();
    let mut user = Vec::new();
    for (token, ty) in tokens.iter().zip(types) {
        match value_as_u64(ty) {
            Some(TOKEN_TYPE_CONTROL) => special.push(AddedToken::from(token.clone(), true)),
            Some(TOKEN_TYPE_USER_DEFINED) => {
                user.push(AddedToken::from(token.clone(), false).normalized(false))
            }
            Some(_) => {}
            None => return Err(Error::Tokenizer(format!("bad token type {ty:?}"))),
        }
    }
    tokenizer
        .add_special_tokens(special)
        .map_err(|e| Error::Tokenizer(format!("adding special tokens: {e}")))?;
    tokenizer
        .add_tokens(user)
        .map_err(|e| Error::Tokenizer(format!("adding user tokens: {e}")))?;
    Ok(())
}

fn check_special_ids(special: &SpecialTokenIds, n_tokens: usize) -> Result<()> {
    for (what, id) in [
        ("bos", special.bos),
        ("eos", special.eos),
        ("padding", special.pad),
    ] {
        if let Some(id) = id.filter(|&id| id as usize >= n_tokens) {
            return Err(Error::Tokenizer(format!(
                "{what} token id {id} is outside the vocabulary of {n_tokens} tokens"
            )));
        }
    }
    Ok(())
}

/// `<bos> $A` (and `<bos> $A <bos> $B` for pairs).
fn bos_template(bos_token: &str, bos: u32) -> Result<TemplateProcessing> {
    let err = |e: String| Error::Tokenizer(format!("cannot build bos template: {e}"));
    TemplateProcessing::builder()
        .try_single(vec![bos_token.to_string(), "$A".into()])
        .map_err(err)?
        .try_pair(vec![
            bos_token.to_string(),
            "$A".into(),
            bos_token.to_string(),
            "$B:1".into(),
        ])
        .map_err(err)?
        .special_tokens(vec![(bos_token.to_string(), bos)])
        .build()
        .map_err(|e| err(e.to_string()))
}

#[cfg(test)]
pub(crate) mod tests;
