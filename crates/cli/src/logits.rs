//! `fluxmoe logits`: logits and selected experts for given token ids, as safetensors.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use fluxmoe_model::{Checkpoint, MoeModel};

/// Parse `"1,2,3;4,5,6"` into equal-length rows.
pub fn parse_ids(text: &str) -> Result<Vec<Vec<u32>>> {
    let rows: Vec<Vec<u32>> = text
        .split(';')
        .map(|row| {
            row.split(',')
                .map(|x| {
                    x.trim()
                        .parse::<u32>()
                        .with_context(|| format!("--ids: `{}` is not a token id", x.trim()))
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<_>>()?;
    let t = rows[0].len();
    if t == 0 {
        bail!("--ids: empty row");
    }
    if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != t) {
        bail!(
            "--ids: row {i} has {} ids, row 0 has {t}; rows must have equal length",
            r.len()
        );
    }
    Ok(rows)
}

pub fn run(ck: &Checkpoint, ids: &str, out: &Path) -> Result<()> {
    let rows = parse_ids(ids)?;
    let (b, t) = (rows.len(), rows[0].len());
    let flat: Vec<u32> = rows.into_iter().flatten().collect();
    let ids = Tensor::from_vec(flat, (b, t), &Device::Cpu)?;
    let model = MoeModel::new(&ck.config, &ck.params)?;
    let res = model.forward(&ids, None, true)?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    tensors.insert("logits".into(), res.logits);
    for trace in res.traces {
        tensors.insert(
            format!("topk_idx.{}", trace.layer),
            trace.routing.topk_idx.to_dtype(DType::I64)?,
        );
    }
    candle_core::safetensors::save(&tensors, out)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}
