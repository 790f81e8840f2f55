//! HF checkpoint folders: `config.json` plus `model.safetensors`, or shards listed in
//! `model.safetensors.index.json` (`{"metadata": {...}, "weight_map": {key: file}}`).
//!
//! Loading keeps the on-disk layout (which shard holds which key, each tensor's dtype,
//! the header metadata) in a [`StorageLayout`], so that saving writes the same files,
//! key names and dtypes: load → save → load is bit-exact for f32, f16 and bf16, since
//! every f16/bf16 value is exact in f32. Writes are atomic (write, then rename).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use crate::config::ModelConfig;
use crate::params::ParamStore;
use crate::{Error, Result};

pub const CONFIG_FILE: &str = "config.json";
pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Where each tensor lives on disk and in which dtype.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StorageLayout {
    /// Shard file names, in order; one entry for a single-file checkpoint.
    pub shards: Vec<String>,
    /// Whether the checkpoint had an index file.
    pub sharded: bool,
    /// Shard index of each tensor.
    pub shard_of: BTreeMap<String, usize>,
    /// On-disk dtype of each tensor.
    pub dtype_of: BTreeMap<String, DType>,
    /// Header metadata of the first shard (transformers writes `{"format": "pt"}`).
    pub metadata: Option<HashMap<String, String>>,
}

/// A loaded model: its config (raw and normalised), weights and on-disk layout.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub config_json: Value,
    pub config: ModelConfig,
    pub params: ParamStore,
    pub layout: StorageLayout,
}

/// Read `dir/config.json` and the safetensors weights beside it.
pub fn load_dir(dir: &Path, device: &Device) -> Result<Checkpoint> {
    let config_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let config_json: Value = serde_json::from_str(&text)
        .map_err(|e| Error::format(&config_path, format!("not valid JSON: {e}")))?;
    let config = ModelConfig::from_json(&config_json).map_err(|e| match e {
        Error::Config { field, msg } => Error::format(&config_path, format!("`{field}`: {msg}")),
        other => other,
    })?;
    let (tensors, layout) = load_weights(dir, device)?;
    let params = ParamStore::from_tensors(tensors)?;
    Ok(Checkpoint {
        config_json,
        config,
        params,
        layout,
    })
}

/// Read the weights of a checkpoint folder, single-file or sharded.
pub fn load_weights(dir: &Path, device: &Device) -> Result<(Vec<(String, Tensor)>, StorageLayout)> {
    let index_path = dir.join(INDEX_FILE);
    let single_path = dir.join(SINGLE_FILE);
    let mut layout = StorageLayout::default();
    let mut expected: Option<BTreeMap<String, String>> = None;
    if index_path.exists() {
        let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
        let index: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(&index_path, format!("not valid JSON: {e}")))?;
        let map = index
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| Error::format(&index_path, "no `weight_map` object"))?;
        let mut weight_map = BTreeMap::new();
        for (key, file) in map {
            let file = file.as_str().ok_or_else(|| {
                Error::format(&index_path, format!("`{key}` maps to a non-string"))
            })?;
            if file.contains('/') || file.contains('\\') || file.contains("..") {
                return Err(Error::format(
                    &index_path,
                    format!("shard name `{file}` must be a plain file name"),
                ));
            }
            if !layout.shards.iter().any(|s| s == file) {
                layout.shards.push(file.to_string());
            }
            weight_map.insert(key.clone(), file.to_string());
        }
        layout.shards.sort();
        layout.sharded = true;
        expected = Some(weight_map);
    } else if single_path.exists() {
        layout.shards.push(SINGLE_FILE.to_string());
    } else {
        return Err(Error::format(
            dir,
            format!("no {SINGLE_FILE} or {INDEX_FILE} in this folder"),
        ));
    }

    let mut tensors = Vec::new();
    for (shard_idx, shard) in layout.shards.iter().enumerate() {
        let path = dir.join(shard);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::format(&path, format!("not a valid safetensors file: {e}")))?;
        if shard_idx == 0 {
            let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
                .map_err(|e| Error::format(&path, format!("bad header: {e}")))?;
            layout.metadata = meta.metadata().clone();
        }
        for (name, view) in st.tensors() {
            if let Some(map) = &expected {
                if map.get(&name) != Some(shard) {
                    return Err(Error::format(
                        &path,
                        format!("tensor `{name}` is not listed for this shard in {INDEX_FILE}"),
                    ));
                }
            }
            let t = view
                .load(device)
                .map_err(|e| Error::format(&path, format!("tensor `{name}`: {e}")))?;
            layout.shard_of.insert(name.clone(), shard_idx);
            layout.dtype_of.insert(name.clone(), t.dtype());
            tensors.push((name, t));
        }
    }
    if let Some(map) = &expected {
        if let Some(missing) = map.keys().find(|k| !layout.shard_of.contains_key(*k)) {
            return Err(Error::MissingTensor {
                path: dir.join(&map[missing]),
                name: missing.clone(),
            });
        }
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((tensors, layout))
}

/// Write `config_json` and the tensors of `params` into `dir` with `layout`'s shards
/// and dtypes. Tensors the layout does not know go to the first shard in f32.
pub fn save_dir(
    dir: &Path,
    config_json: &Value,
    params: &ParamStore,
    layout: &StorageLayout,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let shards = if layout.shards.is_empty() {
        vec![SINGLE_FILE.to_string()]
    } else {
        layout.shards.clone()
    };
    let mut per_shard: Vec<Vec<(String, Tensor)>> = vec![Vec::new(); shards.len()];
    for (name, t) in params.tensors() {
        let shard = layout.shard_of.get(name).copied().unwrap_or(0);
        let dtype = layout.dtype_of.get(name).copied().unwrap_or(t.dtype());
        let t = if t.dtype() != dtype {
            t.to_dtype(dtype)?
        } else {
            t.clone()
        };
        per_shard[shard].push((name.to_string(), t));
    }
    let metadata = layout
        .metadata
        .clone()
        .or_else(|| Some(HashMap::from([("format".to_string(), "pt".to_string())])));
    for (file, tensors) in shards.iter().zip(per_shard) {
        let path = dir.join(file);
        let bytes = safetensors::serialize(tensors, metadata.clone())
            .map_err(|e| Error::format(&path, format!("cannot serialise: {e}")))?;
        write_atomic(&path, &bytes)?;
    }
    if layout.sharded {
        let weight_map: BTreeMap<&str, &str> = params
            .names()
            .map(|n| {
                let shard = layout.shard_of.get(n).copied().unwrap_or(0);
                (n, shards[shard].as_str())
            })
            .collect();
        let total_size: usize = params
            .tensors()
            .map(|(n, t)| {
                let dtype = layout.dtype_of.get(n).copied().unwrap_or(t.dtype());
                t.elem_count() * dtype.size_in_bytes()
            })
            .sum();
        let index = serde_json::json!({
            "metadata": {"total_size": total_size},
            "weight_map": weight_map,
        });
        write_json(&dir.join(INDEX_FILE), &index)?;
    }
    write_json(&dir.join(CONFIG_FILE), config_json)
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::format(path, format!("cannot serialise: {e}")))?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Write to `path.tmp`, then rename over `path`, so a crash never leaves a half file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = PathBuf::from(path);
    tmp.as_mut_os_string().push(".tmp");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
