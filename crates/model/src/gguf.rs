//! Reading llama-architecture GGUF checkpoints into HF-named f32 tensors.
//!
//! Format facts this module relies on:
//! - A GGUF file is a little-endian header (magic `GGUF`, version 1-3, tensor
//!   count, metadata key/value pairs, tensor infos) followed by the tensor data
//!   section, which starts at the header end rounded up to `general.alignment`
//!   (default 32). Each tensor info holds a name, its dims (innermost first on
//!   disk; candle reverses them, so a matrix reads as PyTorch `[out, in]`), a
//!   ggml type id and an offset relative to the data section.
//! - llama.cpp names llama tensors `token_embd`, `output_norm`, `output`,
//!   `blk.N.{attn_norm,attn_q,attn_k,attn_v,attn_output,ffn_norm,ffn_gate,ffn_up,ffn_down}`
//!   (all `.weight`); `output.weight` is absent when embeddings are tied.
//! - llama.cpp's converter permutes the rows of HF `q_proj`/`k_proj` per head
//!   (`w.reshape(n_head, 2, head_dim/2, in).swap(1, 2)`) so that its
//!   interleaved RoPE matches HF's rotate-half RoPE; [`read_gguf`] undoes that.
//! - Hyper-parameters live under `llama.*` metadata keys; the tokenizer under
//!   `tokenizer.ggml.*` (see [`crate::tokenizer`]); the chat template under
//!   `tokenizer.chat_template`.
//!
//! Parsing and dequantisation go through `candle_core::quantized::gguf_file`;
//! this module adds the checks that make bad files fail with a clear error
//! instead of a panic or an opaque message.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};

use crate::tokenizer::{gguf_tokenizer, GgufTokenizer, SpecialTokenIds};
use crate::{Error, Result};

/// A llama GGUF checkpoint converted to what an HF `LlamaForCausalLM` loader expects.
pub struct GgufModel {
    /// An HF-style `config.json` (model_type "llama", LlamaForCausalLM).
    pub config: serde_json::Value,
    /// Dequantised f32 tensors keyed by HF names, PyTorch `[out, in]` layout,
    /// q/k projections back in HF rotate-half row order.
    pub tensors: BTreeMap<String, Tensor>,
    /// The on-disk GGUF type of each tensor (llama.cpp spelling, e.g. "Q4_1"), keyed by HF name.
    pub tensor_types: BTreeMap<String, String>,
    /// The embedded tokenizer, when the file has a supported one.
    pub tokenizer: Option<GgufTokenizer>,
    /// Why `tokenizer` is `None` although the file declares a tokenizer model.
    pub tokenizer_issue: Option<String>,
    /// `tokenizer.chat_template`, if present.
    pub chat_template: Option<String>,
}

/// Llama hyper-parameters read from `llama.*` metadata.
#[derive(Debug, Clone, PartialEq)]
struct LlamaHParams {
    vocab_size: usize,
    hidden: usize,
    intermediate: usize,
    n_layer: usize,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    rms_eps: f64,
    rope_theta: f64,
    context_length: usize,
}

/// How a tensor's rows must be reordered after dequantisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowOrder {
    AsIs,
    /// Undo llama.cpp's q/k permutation for this many heads.
    UnpermuteHeads(usize),
}

/// One tensor the llama architecture needs.
#[derive(Debug, Clone)]
struct PlannedTensor {
    gguf_name: String,
    hf_name: String,
    shape: Vec<usize>,
    order: RowOrder,
}

/// Read a llama GGUF file, dequantising every tensor to f32 on `device`.
pub fn read_gguf(path: &Path, device: &Device) -> Result<GgufModel> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let content = parse_content(path, &mut file, file_len)?;
    check_architecture(path, &content.metadata)?;
    let hp = LlamaHParams::from_content(path, &content)?;
    let tied = !content.tensor_infos.contains_key("output.weight");
    let plan = tensor_plan(&hp, tied);
    check_plan(path, &content, &plan, file_len)?;
    warn_unused_tensors(&content, &plan);

    let mut tensors = BTreeMap::new();
    let mut tensor_types = BTreeMap::new();
    for p in &plan {
        let tensor = read_tensor(path, &mut file, &content, p, device)?;
        let dtype = content.tensor_infos[&p.gguf_name].ggml_dtype;
        tensor_types.insert(p.hf_name.clone(), type_name(dtype).to_string());
        tensors.insert(p.hf_name.clone(), tensor);
    }

    let (tokenizer, tokenizer_issue) = match gguf_tokenizer(&content.metadata) {
        Ok(t) => (t, None),
        Err(e) => {
            tracing::warn!("{}: embedded tokenizer not usable: {e}", path.display());
            (None, Some(e.to_string()))
        }
    };
    let special = match &tokenizer {
        Some(t) => t.special,
        None => crate::tokenizer::special_tokens_from_gguf(&content.metadata).unwrap_or_default(),
    };
    let chat_template = match content.metadata.get("tokenizer.chat_template") {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    Ok(GgufModel {
        config: hp.to_config_json(tied, &special),
        tensors,
        tensor_types,
        tokenizer,
        tokenizer_issue,
        chat_template,
    })
}

/// Run candle's header parser, turning its errors (and any panic) into `Error::Format`.
fn parse_content(path: &Path, file: &mut File, file_len: u64) -> Result<Content> {
    let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Content::read(file)));
    match parsed {
        Ok(Ok(content)) => Ok(content),
        Ok(Err(e)) => Err(header_error(path, file, file_len, e)),
        Err(_) => Err(Error::format(
            path,
            "corrupt gguf header: the parser panicked (bad alignment or dimensions?)",
        )),
    }
}

/// Explain why candle could not parse the header, as precisely as we can.
fn header_error(path: &Path, file: &mut File, file_len: u64, e: candle_core::Error) -> Error {
    let mut magic = [0u8; 4];
    let has_magic = file.seek(SeekFrom::Start(0)).is_ok() && file.read_exact(&mut magic).is_ok();
    if !has_magic || (&magic != b"GGUF" && &magic != b"FUGG") {
        return Error::format(
            path,
            format!("not a gguf file (file has {file_len} bytes, magic {magic:02x?})"),
        );
    }
    if let Some((name, id)) = scan::first_unknown_tensor_type(file, file_len) {
        return Error::format(
            path,
            format!(
                "tensor `{name}` has gguf type {}, which cannot be dequantised",
                ggml_type_id_name(id)
            ),
        );
    }
    let eof =
        matches!(&e, candle_core::Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof);
    if eof || e.to_string().contains("remaining") {
        return Error::format(
            path,
            format!("gguf header is truncated (file has {file_len} bytes): {e}"),
        );
    }
    Error::format(path, format!("corrupt gguf header: {e}"))
}

fn check_architecture(path: &Path, md: &HashMap<String, Value>) -> Result<()> {
    match md.get("general.architecture") {
        Some(Value::String(a)) if a == "llama" => Ok(()),
        Some(Value::String(a)) => Err(Error::format(
            path,
            format!("unsupported gguf architecture `{a}`: only `llama` is supported"),
        )),
        Some(v) => Err(Error::format(
            path,
            format!("metadata `general.architecture` is not a string: {v:?}"),
        )),
        None => Err(Error::format(
            path,
            "metadata `general.architecture` is missing",
        )),
    }
}

/// Any non-negative integer metadata value, widened to u64.
pub(crate) fn value_as_u64(v: &Value) -> Option<u64> {
    match *v {
        Value::U8(x) => Some(x.into()),
        Value::U16(x) => Some(x.into()),
        Value::U32(x) => Some(x.into()),
        Value::U64(x) => Some(x),
        Value::I8(x) => u64::try_from(x).ok(),
        Value::I16(x) => u64::try_from(x).ok(),
        Value::I32(x) => u64::try_from(x).ok(),
        Value::I64(x) => u64::try_from(x).ok(),
        _ => None,
    }
}

/// A float metadata value as f64; f32 values keep their shortest decimal form (1e-5, not 9.99e-6).
pub(crate) fn value_as_f64(v: &Value) -> Option<f64> {
    match *v {
        Value::F32(x) => x.to_string().parse().ok(),
        Value::F64(x) => Some(x),
        _ => value_as_u64(v).map(|x| x as f64),
    }
}

/// Typed access to metadata, with errors naming the file and key.
struct Meta<'a> {
    path: &'a Path,
    md: &'a HashMap<String, Value>,
}

impl Meta<'_> {
    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        let Some(v) = self.md.get(key) else {
            return Ok(None);
        };
        let n = value_as_u64(v).and_then(|n| usize::try_from(n).ok());
        n.map(Some).ok_or_else(|| {
            Error::format(
                self.path,
                format!("metadata `{key}` is not a non-negative integer: {v:?}"),
            )
        })
    }

    /// A required positive integer.
    fn positive(&self, key: &str) -> Result<usize> {
        match self.opt_usize(key)? {
            Some(0) => Err(Error::format(self.path, format!("metadata `{key}` is 0"))),
            Some(n) => Ok(n),
            None => Err(Error::format(
                self.path,
                format!("metadata `{key}` is missing"),
            )),
        }
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        let Some(v) = self.md.get(key) else {
            return Ok(None);
        };
        match value_as_f64(v) {
            Some(x) if x.is_finite() && x > 0.0 => Ok(Some(x)),
            _ => Err(Error::format(
                self.path,
                format!("metadata `{key}` is not a positive number: {v:?}"),
            )),
        }
    }
}

impl LlamaHParams {
    fn from_content(path: &Path, content: &Content) -> Result<Self> {
        let m = Meta {
            path,
            md: &content.metadata,
        };
        if let Some(n) = m.opt_usize("llama.expert_count")?.filter(|&n| n > 0) {
            return Err(Error::format(
                path,
                format!(
                    "mixture-of-experts llama gguf (llama.expert_count = {n}) is not supported"
                ),
            ));
        }
        let hidden = m.positive("llama.embedding_length")?;
        let n_head = m.positive("llama.attention.head_count")?;
        let n_kv_head = m
            .opt_usize("llama.attention.head_count_kv")?
            .unwrap_or(n_head);
        let head_dim = match m.opt_usize("llama.attention.key_length")? {
            Some(d) => d,
            None if hidden.is_multiple_of(n_head) => hidden / n_head,
            None => {
                return Err(Error::format(
                    path,
                    format!("embedding_length {hidden} is not a multiple of head_count {n_head}"),
                ))
            }
        };
        let hp = LlamaHParams {
            vocab_size: vocab_size(&m, content)?,
            hidden,
            intermediate: m.positive("llama.feed_forward_length")?,
            n_layer: m.positive("llama.block_count")?,
            n_head,
            n_kv_head,
            head_dim,
            rms_eps: m
                .opt_f64("llama.attention.layer_norm_rms_epsilon")?
                .ok_or_else(|| {
                    Error::format(
                        path,
                        "metadata `llama.attention.layer_norm_rms_epsilon` is missing",
                    )
                })?,
            rope_theta: m.opt_f64("llama.rope.freq_base")?.unwrap_or(10000.0),
            context_length: m.positive("llama.context_length")?,
        };
        hp.validate(&m)?;
        Ok(hp)
    }

    fn validate(&self, m: &Meta) -> Result<()> {
        let bad = |msg: String| Err(Error::format(m.path, msg));
        if self.n_kv_head == 0 || !self.n_head.is_multiple_of(self.n_kv_head) {
            return bad(format!(
                "head_count {} is not a multiple of head_count_kv {}",
                self.n_head, self.n_kv_head
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head dimension {} must be even and positive",
                self.head_dim
            ));
        }
        if let Some(v) = m.opt_usize("llama.attention.value_length")? {
            if v != self.head_dim {
                return bad(format!(
                    "value_length {v} differs from key_length {}",
                    self.head_dim
                ));
            }
        }
        if let Some(r) = m.opt_usize("llama.rope.dimension_count")? {
            if r != self.head_dim {
                return bad(format!(
                    "partial rotary embeddings (rope.dimension_count {r} < head dim {}) are not supported",
                    self.head_dim
                ));
            }
        }
        if let Some(Value::String(t)) = m.md.get("llama.rope.scaling.type") {
            if t != "none" {
                tracing::warn!("{}: ignoring rope scaling `{t}`", m.path.display());
            }
        }
        Ok(())
    }

    fn to_config_json(&self, tied: bool, special: &SpecialTokenIds) -> serde_json::Value {
        let mut config = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.n_layer,
            "num_attention_heads": self.n_head,
            "num_key_value_heads": self.n_kv_head,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": null,
            "max_position_embeddings": self.context_length,
            "tie_word_embeddings": tied,
            "bos_token_id": special.bos,
            "eos_token_id": special.eos,
            "attention_bias": false,
            "mlp_bias": false,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        });
        if let (Some(pad), Some(obj)) = (special.pad, config.as_object_mut()) {
            obj.insert("pad_token_id".into(), pad.into());
        }
        config
    }
}

/// `llama.vocab_size`, else the embedding's row count, else the token list length.
fn vocab_size(m: &Meta, content: &Content) -> Result<usize> {
    if let Some(n) = m.opt_usize("llama.vocab_size")? {
        return Ok(n);
    }
    if let Some(info) = content.tensor_infos.get("token_embd.weight") {
        if let Some(&rows) = info.shape.dims().first() {
            return Ok(rows);
        }
    }
    match m.md.get("tokenizer.ggml.tokens") {
        Some(Value::Array(tokens)) if !tokens.is_empty() => Ok(tokens.len()),
        _ => Err(Error::format(
            m.path,
            "cannot tell the vocabulary size: no `llama.vocab_size`, `token_embd.weight` or token list",
        )),
    }
}

/// Every tensor a llama model needs, with its GGUF name, HF name and `[out, in]` shape.
fn tensor_plan(hp: &LlamaHParams, tied: bool) -> Vec<PlannedTensor> {
    let (h, f) = (hp.hidden, hp.intermediate);
    let q_out = hp.n_head * hp.head_dim;
    let kv_out = hp.n_kv_head * hp.head_dim;
    let t = |g: String, hf: String, shape: Vec<usize>, order| PlannedTensor {
        gguf_name: g,
        hf_name: hf,
        shape,
        order,
    };
    let mut plan = vec![t(
        "token_embd.weight".into(),
        "model.embed_tokens.weight".into(),
        vec![hp.vocab_size, h],
        RowOrder::AsIs,
    )];
    for l in 0..hp.n_layer {
        let b = format!("blk.{l}");
        let m = format!("model.layers.{l}");
        let layer = [
            ("attn_norm", "input_layernorm", vec![h], RowOrder::AsIs),
            (
                "attn_q",
                "self_attn.q_proj",
                vec![q_out, h],
                RowOrder::UnpermuteHeads(hp.n_head),
            ),
            (
                "attn_k",
                "self_attn.k_proj",
                vec![kv_out, h],
                RowOrder::UnpermuteHeads(hp.n_kv_head),
            ),
            (
                "attn_v",
                "self_attn.v_proj",
                vec![kv_out, h],
                RowOrder::AsIs,
            ),
            (
                "attn_output",
                "self_attn.o_proj",
                vec![h, q_out],
                RowOrder::AsIs,
            ),
            (
                "ffn_norm",
                "post_attention_layernorm",
                vec![h],
                RowOrder::AsIs,
            ),
            ("ffn_gate", "mlp.gate_proj", vec![f, h], RowOrder::AsIs),
            ("ffn_up", "mlp.up_proj", vec![f, h], RowOrder::AsIs),
            ("ffn_down", "mlp.down_proj", vec![h, f], RowOrder::AsIs),
        ];
        for (g, hf, shape, order) in layer {
            plan.push(t(
                format!("{b}.{g}.weight"),
                format!("{m}.{hf}.weight"),
                shape,
                order,
            ));
        }
    }
    plan.push(t(
        "output_norm.weight".into(),
        "model.norm.weight".into(),
        vec![h],
        RowOrder::AsIs,
    ));
    if !tied {
        plan.push(t(
            "output.weight".into(),
            "lm_head.weight".into(),
            vec![hp.vocab_size, h],
            RowOrder::AsIs,
        ));
    }
    plan
}

/// Check presence, shape, type and byte range of every planned tensor before reading any data.
fn check_plan(path: &Path, content: &Content, plan: &[PlannedTensor], file_len: u64) -> Result<()> {
    for p in plan {
        let info = content
            .tensor_infos
            .get(&p.gguf_name)
            .ok_or_else(|| Error::MissingTensor {
                path: path.to_path_buf(),
                name: p.gguf_name.clone(),
            })?;
        if info.shape.dims() != p.shape.as_slice() {
            return Err(Error::Shape {
                name: format!("{} ({})", p.gguf_name, p.hf_name),
                expected: p.shape.clone(),
                got: info.shape.dims().to_vec(),
            });
        }
        check_dtype(path, &p.gguf_name, info.ggml_dtype)?;
        check_byte_range(
            path,
            &p.gguf_name,
            info,
            &p.shape,
            content.tensor_data_offset,
            file_len,
        )?;
    }
    Ok(())
}

/// Candle parses Q8_1 and Q8_K headers but cannot load their data.
fn check_dtype(path: &Path, name: &str, dtype: GgmlDType) -> Result<()> {
    if matches!(dtype, GgmlDType::Q8_1 | GgmlDType::Q8K) {
        return Err(Error::format(
            path,
            format!(
                "tensor `{name}` has gguf type {}, which cannot be dequantised",
                type_name(dtype)
            ),
        ));
    }
    Ok(())
}

/// The tensor's bytes must lie inside the file (catches truncated files up front).
fn check_byte_range(
    path: &Path,
    name: &str,
    info: &TensorInfo,
    shape: &[usize],
    data_offset: u64,
    file_len: u64,
) -> Result<()> {
    let elems = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let block = info.ggml_dtype.block_size();
    let Some(elems) = elems.filter(|e| e % block == 0) else {
        return Err(Error::format(
            path,
            format!(
                "tensor `{name}` with shape {shape:?} does not fit whole {} blocks of {block}",
                type_name(info.ggml_dtype)
            ),
        ));
    };
    let bytes = (elems / block) as u64 * info.ggml_dtype.type_size() as u64;
    let start = data_offset.checked_add(info.offset);
    let end = start.and_then(|s| s.checked_add(bytes));
    match end {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(Error::format(
            path,
            format!(
                "file is truncated: tensor `{name}` needs {bytes} bytes at offset {}, file has {file_len} bytes",
                data_offset.saturating_add(info.offset)
            ),
        )),
    }
}

fn warn_unused_tensors(content: &Content, plan: &[PlannedTensor]) {
    for name in content.tensor_infos.keys() {
        if !plan.iter().any(|p| &p.gguf_name == name) {
            tracing::warn!("ignoring gguf tensor `{name}` (not part of the llama architecture)");
        }
    }
}

/// Load one planned tensor, dequantise it to f32 and restore HF row order.
fn read_tensor(
    path: &Path,
    file: &mut File,
    content: &Content,
    p: &PlannedTensor,
    device: &Device,
) -> Result<Tensor> {
    let wrap = |e: candle_core::Error| {
        Error::format(path, format!("cannot load tensor `{}`: {e}", p.gguf_name))
    };
    let q = content.tensor(file, &p.gguf_name, device).map_err(wrap)?;
    let t = q.dequantize(device).map_err(wrap)?;
    match p.order {
        RowOrder::AsIs => Ok(t),
        RowOrder::UnpermuteHeads(n_head) => unpermute_rows(&t, n_head).map_err(wrap),
    }
}

/// Invert llama.cpp's per-head q/k row permutation: GGUF row `h*d + 2*j + t`
/// holds HF row `h*d + t*d/2 + j`.
pub(crate) fn unpermute_rows(t: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let (out, inp) = t.dims2()?;
    let head_dim = out / n_head;
    t.reshape((n_head, head_dim / 2, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))
}

/// llama.cpp's spelling of a ggml type.
pub fn type_name(dtype: GgmlDType) -> &'static str {
    match dtype {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4_1 => "Q4_1",
        GgmlDType::Q5_0 => "Q5_0",
        GgmlDType::Q5_1 => "Q5_1",
        GgmlDType::Q8_0 => "Q8_0",
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q3K => "Q3_K",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8K => "Q8_K",
    }
}

/// Name of a raw ggml type id (ggml.h's `enum ggml_type`), for error messages.
fn ggml_type_id_name(id: u32) -> String {
    const NAMES: [&str; 40] = [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_2",
        "Q4_3",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q8_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "Q8_K",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ2_S",
        "IQ4_XS",
        "I8",
        "I16",
        "I32",
        "I64",
        "F64",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4",
        "Q4_0_4_8",
        "Q4_0_8_8",
        "TQ1_0",
        "TQ2_0",
        "IQ4_NL_4_4",
        "IQ4_NL_4_8",
        "IQ4_NL_8_8",
        "MXFP4",
    ];
    match NAMES.get(id as usize) {
        Some(n) => format!("{n} (id {id})"),
        None => format!("id {id}"),
    }
}

/// A minimal, bounds-checked walk over a GGUF header, used only to explain a
/// header candle rejected because of a tensor type it does not know.
mod scan {
    use std::io::{Read, Seek, SeekFrom};

    const KNOWN_TYPE_IDS: [u32; 15] = [0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 30];

    struct Walker<'a, R> {
        r: &'a mut R,
        file_len: u64,
        /// 4 bytes for GGUF v1 lengths, 8 for v2/v3.
        len_size: u8,
    }

    impl<R: Read + Seek> Walker<'_, R> {
        fn u32(&mut self) -> Option<u32> {
            let mut b = [0u8; 4];
            self.r.read_exact(&mut b).ok()?;
            Some(u32::from_le_bytes(b))
        }
        fn u64(&mut self) -> Option<u64> {
            let mut b = [0u8; 8];
            self.r.read_exact(&mut b).ok()?;
            Some(u64::from_le_bytes(b))
        }
        fn len(&mut self) -> Option<u64> {
            if self.len_size == 4 {
                self.u32().map(u64::from)
            } else {
                self.u64()
            }
        }
        fn skip(&mut self, n: u64) -> Option<()> {
            let pos = self.r.stream_position().ok()?;
            let to = pos.checked_add(n).filter(|&to| to <= self.file_len)?;
            self.r.seek(SeekFrom::Start(to)).ok().map(|_| ())
        }
        fn string(&mut self) -> Option<String> {
            let n = self.len()?;
            let pos = self.r.stream_position().ok()?;
            if pos.checked_add(n)? > self.file_len || n > 1 << 20 {
                return None;
            }
            let mut b = vec![0u8; n as usize];
            self.r.read_exact(&mut b).ok()?;
            Some(String::from_utf8_lossy(&b).into_owned())
        }
        fn skip_value(&mut self, ty: u32, depth: u32) -> Option<()> {
            let fixed = match ty {
                0 | 1 | 7 => 1,
                2 | 3 => 2,
                4..=6 => 4,
                10..=12 => 8,
                8 => {
                    let n = self.len()?;
                    return self.skip(n);
                }
                9 if depth < 8 => {
                    let elem_ty = self.u32()?;
                    let n = self.len()?;
                    for _ in 0..n {
                        self.skip_value(elem_ty, depth + 1)?;
                    }
                    return Some(());
                }
                _ => return None,
            };
            self.skip(fixed)
        }
    }

    /// The first tensor whose type id candle does not know, if the header can be walked.
    pub(super) fn first_unknown_tensor_type<R: Read + Seek>(
        r: &mut R,
        file_len: u64,
    ) -> Option<(String, u32)> {
        r.seek(SeekFrom::Start(4)).ok()?;
        let mut w = Walker {
            r,
            file_len,
            len_size: 8,
        };
        w.len_size = if w.u32()? == 1 { 4 } else { 8 };
        let n_tensors = w.len()?;
        let n_kv = w.len()?;
        for _ in 0..n_kv {
            w.string()?;
            let ty = w.u32()?;
            w.skip_value(ty, 0)?;
        }
        for _ in 0..n_tensors {
            let name = w.string()?;
            let n_dims = w.u32()?;
            w.skip(u64::from(n_dims.min(16)) * u64::from(w.len_size))?;
            let ty = w.u32()?;
            w.u64()?;
            if !KNOWN_TYPE_IDS.contains(&ty) {
                return Some((name, ty));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests;
