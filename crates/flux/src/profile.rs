//! Quantized local profiling (METHOD.md step 2): run a quantized copy of a global model
//! over local data and count, per MoE layer and expert, the routed token-slots (→ the
//! activation share f_e), the samples with at least one token routed to e (|D^e|) and
//! the summed attention score of those tokens (→ ā_e).
//!
//! The quantized copy is *fake-quantized*: every 2-D weight matrix except the token
//! embedding is quantized block-wise (round-to-nearest, GGUF kinds) and dequantized
//! back to f32, so the forward pass sees exactly the quantized values. The virtual clock
//! charges the work at the device's quantized-forward throughput; the measured time is
//! that of an f32 forward.

use std::collections::BTreeMap;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Tensor};
use fluxmoe_model::MoeModel;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Weights seen by the profiler.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// 4-bit blocks: Q4_0, one f16 absmax scale per 32 weights (4.5 bits a weight;
    /// the blockwise absmax kind of bitsandbytes' 4-bit types). Until 2026-11-30
    /// Q4_K (rows a multiple of 256), whose quantizer took 80% of FMQ's training time.
    #[default]
    Int4,
    /// 8-bit blocks: Q8_0.
    Int8,
    /// The f32 model itself (the reference).
    Full,
}

impl Precision {
    /// The config spelling (`int4`, `int8`, `full`).
    pub fn name(self) -> &'static str {
        match self {
            Precision::Int4 => "int4",
            Precision::Int8 => "int8",
            Precision::Full => "full",
        }
    }

    /// Parse [`Precision::name`]'s spelling.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "int4" => Ok(Precision::Int4),
            "int8" => Ok(Precision::Int8),
            "full" => Ok(Precision::Full),
            other => Err(Error::config(
                "profile_precision",
                format!("unknown precision `{other}` (expected int4, int8 or full)"),
            )),
        }
    }

    /// Bits per weight of the stored copy (for memory accounting).
    pub fn bits(self) -> f64 {
        match self {
            Precision::Int4 => 4.5,
            Precision::Int8 => 8.5,
            Precision::Full => 32.0,
        }
    }

    fn kind(self, cols: usize) -> Option<GgmlDType> {
        match self {
            Precision::Full => None,
            Precision::Int8 if cols.is_multiple_of(32) => Some(GgmlDType::Q8_0),
            Precision::Int4 if cols.is_multiple_of(32) => Some(GgmlDType::Q4_0),
            _ => None,
        }
    }
}

/// `t` after a quantize → dequantize round trip at `precision` (unchanged if it is not
/// a 2-D f32 matrix whose rows fit the block size).
pub fn fake_quantize(t: &Tensor, precision: Precision) -> Result<Tensor> {
    let kind = match t.dims() {
        [_, cols] if t.dtype() == DType::F32 => precision.kind(*cols),
        _ => None,
    };
    Ok(match kind {
        Some(kind) => QTensor::quantize(t, kind)?.dequantize(t.device())?,
        None => t.clone(),
    })
}

/// `tensors` with every 2-D f32 weight except the token embedding replaced by its
/// quantize → dequantize round trip at `precision` (matrices whose rows do not fit the
/// block size stay f32).
pub fn quantized_copy(
    tensors: &BTreeMap<String, Tensor>,
    precision: Precision,
) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for (name, t) in tensors {
        let q = if name.contains("embed_tokens") {
            t.clone()
        } else {
            fake_quantize(t, precision)?
        };
        out.insert(name.clone(), q);
    }
    Ok(out)
}

/// Counts of one MoE layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerProfile {
    pub layer: usize,
    /// Token-slots routed to each expert (a token counts once per selection).
    pub slots: Vec<u64>,
    /// Samples with at least one token routed to each expert (|D^e|).
    pub samples: Vec<u64>,
    /// Sum over routed token-slots of the token's attention score.
    pub attention: Vec<f64>,
}

/// A participant's profile of one model on its data.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub layers: Vec<LayerProfile>,
    /// Real (non-padding) tokens profiled.
    pub tokens: u64,
    pub samples: u64,
}

impl Profile {
    /// f_e per layer: token-slot shares (each layer sums to 1; all zero if no tokens).
    pub fn frequencies(&self) -> Vec<Vec<f64>> {
        self.layers
            .iter()
            .map(|l| {
                let total: u64 = l.slots.iter().sum();
                l.slots
                    .iter()
                    .map(|&c| {
                        if total == 0 {
                            0.0
                        } else {
                            c as f64 / total as f64
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// ā_e per layer: mean attention score of the token-slots routed to e (0 if none).
    pub fn mean_attention(&self) -> Vec<Vec<f64>> {
        self.layers
            .iter()
            .map(|l| {
                l.attention
                    .iter()
                    .zip(&l.slots)
                    .map(|(&a, &c)| if c == 0 { 0.0 } else { a / c as f64 })
                    .collect()
            })
            .collect()
    }

    /// Profiling error vs a reference profile of the same model and data (METHOD.md
    /// Evidence): mean over layers of ½·Σ_e |f̂_e − f_e|, the total-variation distance
    /// of the activation shares, in [0, 1].
    pub fn error_vs(&self, reference: &Profile) -> Result<f64> {
        let (a, b) = (self.frequencies(), reference.frequencies());
        if a.len() != b.len() || a.iter().zip(&b).any(|(x, y)| x.len() != y.len()) {
            return Err(Error::Input(
                "profiles cover different layers or experts".into(),
            ));
        }
        if a.is_empty() {
            return Ok(0.0);
        }
        let sum: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| 0.5 * x.iter().zip(y).map(|(p, q)| (p - q).abs()).sum::<f64>())
            .sum();
        Ok(sum / a.len() as f64)
    }
}

/// Token ids `[B, T]` and attention mask `[B, T]` (1 = real token) of one batch.
#[derive(Clone, Debug)]
pub struct ProfileBatch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
}

/// Run `model` over `batches`, counting routing per MoE layer (see the module docs).
pub fn profile(model: &MoeModel, batches: &[ProfileBatch]) -> Result<Profile> {
    let mut layers: BTreeMap<usize, LayerProfile> = BTreeMap::new();
    let mut out = Profile::default();
    for batch in batches {
        let (_, traces) =
            model.forward_hidden(&batch.input_ids, Some(&batch.attention_mask), true)?;
        let mask: Vec<Vec<u32>> = batch.attention_mask.to_dtype(DType::U32)?.to_vec2()?;
        let t = mask.first().map_or(0, Vec::len);
        out.samples += mask.len() as u64;
        out.tokens += mask.iter().flatten().filter(|&&m| m != 0).count() as u64;
        for trace in traces {
            let idx: Vec<Vec<u32>> = trace.routing.topk_idx.to_vec2()?;
            let scores: Vec<Vec<f32>> = trace.attention_score.to_vec2()?;
            let n_experts = trace.routing.router_logits.dim(1)?;
            let entry = layers.entry(trace.layer).or_insert_with(|| LayerProfile {
                layer: trace.layer,
                slots: vec![0; n_experts],
                samples: vec![0; n_experts],
                attention: vec![0.0; n_experts],
            });
            for (b, row) in mask.iter().enumerate() {
                let mut seen = vec![false; n_experts];
                for (pos, &m) in row.iter().enumerate() {
                    if m == 0 {
                        continue;
                    }
                    let score = f64::from(scores[b][pos]);
                    for &e in &idx[b * t + pos] {
                        let e = e as usize;
                        entry.slots[e] += 1;
                        entry.attention[e] += score;
                        seen[e] = true;
                    }
                }
                for (e, s) in seen.into_iter().enumerate() {
                    entry.samples[e] += u64::from(s);
                }
            }
        }
    }
    out.layers = layers.into_values().collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn quantized_copy_changes_weights_slightly_and_keeps_the_rest() {
        let dev = Device::Cpu;
        let w: Vec<f32> = (0..64 * 256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let t = Tensor::from_vec(w, (64, 256), &dev).unwrap();
        let odd = Tensor::ones((4, 7), DType::F32, &dev).unwrap();
        let tensors = BTreeMap::from([
            ("w".to_string(), t.clone()),
            ("odd".to_string(), odd.clone()),
            ("model.embed_tokens.weight".to_string(), t.clone()),
        ]);
        let rel = |p: Precision| {
            let q = quantized_copy(&tensors, p).unwrap();
            assert_eq!(q["odd"].id(), odd.id());
            assert_eq!(q["model.embed_tokens.weight"].id(), t.id());
            let d = (&q["w"] - &t).unwrap().sqr().unwrap().sum_all().unwrap();
            let n = t.sqr().unwrap().sum_all().unwrap();
            (d.to_scalar::<f32>().unwrap() / n.to_scalar::<f32>().unwrap()).sqrt()
        };
        let (e4, e8, ef) = (
            rel(Precision::Int4),
            rel(Precision::Int8),
            rel(Precision::Full),
        );
        assert_eq!(ef, 0.0);
        assert!(e8 > 0.0 && e8 < 0.02, "int8 error {e8}");
        assert!(e4 > e8 && e4 < 0.15, "int4 error {e4}");
    }

    #[test]
    fn precision_names_round_trip_and_unknown_ones_are_errors() {
        for p in [Precision::Int4, Precision::Int8, Precision::Full] {
            assert_eq!(Precision::from_name(p.name()).unwrap(), p);
            let json = serde_json::to_value(p).unwrap();
            assert_eq!(json, serde_json::Value::String(p.name().into()));
        }
        let err = Precision::from_name("int3").unwrap_err().to_string();
        assert!(
            err.contains("int3") && err.contains("profile_precision"),
            "{err}"
        );
    }

    #[test]
    fn profile_error_is_total_variation_averaged_over_layers() {
        let layer = |layer, slots: Vec<u64>| LayerProfile {
            layer,
            samples: vec![1; slots.len()],
            attention: vec![0.0; slots.len()],
            slots,
        };
        let a = Profile {
            layers: vec![layer(0, vec![1, 1, 2]), layer(1, vec![4, 0, 0])],
            tokens: 4,
            samples: 1,
        };
        let b = Profile {
            layers: vec![layer(0, vec![1, 1, 2]), layer(1, vec![0, 2, 2])],
            tokens: 4,
            samples: 1,
        };
        assert_eq!(a.error_vs(&a).unwrap(), 0.0);
        // Layer 0 identical, layer 1: ½(1 + ½ + ½) = 1 → mean 0.5.
        assert_eq!(a.error_vs(&b).unwrap(), 0.5);
        assert_eq!(a.frequencies()[0], vec![0.25, 0.25, 0.5]);
        let c = Profile {
            layers: vec![layer(0, vec![1, 1])],
            ..Profile::default()
        };
        assert!(a.error_vs(&c).is_err());
    }
}
