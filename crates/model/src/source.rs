//! Opening a model from a path: an HF checkpoint folder (config.json, safetensors,
//! optional tokenizer.json / tokenizer_config.json) or a llama GGUF file (weights
//! dequantised to f32, tokenizer and chat template from its metadata).

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::checkpoint::{self, Checkpoint, StorageLayout};
use crate::config::ModelConfig;
use crate::params::ParamStore;
use crate::{gguf, tokenizer, Error, Result};

/// A model with what is needed to turn text into ids and back.
pub struct LoadedModel {
    pub checkpoint: Checkpoint,
    pub tokenizer: Option<Tokenizer>,
    /// Token ids that end generation (end-of-sequence).
    pub eos_ids: Vec<u32>,
    /// The Jinja chat template shipped with the model, if any.
    pub chat_template: Option<String>,
    /// Where the weights came from; GGUF files record their tensor types for `inspect`.
    pub source: Source,
}

pub enum Source {
    Folder(PathBuf),
    Gguf {
        path: PathBuf,
        tensor_types: std::collections::BTreeMap<String, String>,
    },
}

/// Open `path`: a `.gguf` file or a checkpoint folder.
pub fn load_model(path: &Path, device: &Device) -> Result<LoadedModel> {
    if path.is_file() {
        return load_gguf(path, device);
    }
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
        ));
    }
    let checkpoint = checkpoint::load_dir(path, device)?;
    let tok_path = path.join("tokenizer.json");
    let tokenizer = if tok_path.exists() {
        Some(tokenizer::load_tokenizer_json(&tok_path)?)
    } else {
        None
    };
    let tok_config: Option<Value> = std::fs::read_to_string(path.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let chat_template = tok_config
        .as_ref()
        .and_then(|c| c.get("chat_template"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut eos_ids = checkpoint.config.eos_token_ids.clone();
    let eos_token = tok_config
        .as_ref()
        .and_then(|c| c.get("eos_token"))
        .and_then(Value::as_str);
    if let (Some(tok), Some(name)) = (&tokenizer, eos_token) {
        if let Some(id) = tok.token_to_id(name) {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
    }
    Ok(LoadedModel {
        checkpoint,
        tokenizer,
        eos_ids,
        chat_template,
        source: Source::Folder(path.to_path_buf()),
    })
}

fn load_gguf(path: &Path, device: &Device) -> Result<LoadedModel> {
    let g = gguf::read_gguf(path, device)?;
    let config =
        ModelConfig::from_json(&g.config).map_err(|e| Error::format(path, e.to_string()))?;
    let params = ParamStore::from_tensors(g.tensors)?;
    let mut eos_ids = config.eos_token_ids.clone();
    let tokenizer = match g.tokenizer {
        Some(t) => {
            if let Some(eos) = t.special.eos {
                if !eos_ids.contains(&eos) {
                    eos_ids.push(eos);
                }
            }
            Some(t.tokenizer)
        }
        None => None,
    };
    Ok(LoadedModel {
        checkpoint: Checkpoint {
            config_json: g.config,
            config,
            params,
            layout: StorageLayout::default(),
        },
        tokenizer,
        eos_ids,
        chat_template: g.chat_template,
        source: Source::Gguf {
            path: path.to_path_buf(),
            tensor_types: g.tensor_types,
        },
    })
}

/// Write `tokenizer.json` and a `tokenizer_config.json` (chat template, EOS token) into
/// a checkpoint folder, so that [`load_model`] on that folder finds them again.
pub fn save_tokenizer_files(
    dir: &Path,
    tokenizer: &Tokenizer,
    eos_ids: &[u32],
    chat_template: Option<&str>,
) -> Result<()> {
    let tok_path = dir.join("tokenizer.json");
    tokenizer
        .save(&tok_path, false)
        .map_err(|e| Error::format(&tok_path, format!("cannot write tokenizer: {e}")))?;
    let mut config = serde_json::Map::new();
    if let Some(eos) = eos_ids.first().and_then(|&id| tokenizer.id_to_token(id)) {
        config.insert("eos_token".into(), Value::String(eos));
    }
    if let Some(t) = chat_template {
        config.insert("chat_template".into(), Value::String(t.to_string()));
    }
    let path = dir.join("tokenizer_config.json");
    let text = serde_json::to_string_pretty(&Value::Object(config))
        .map_err(|e| Error::format(&path, e.to_string()))?;
    checkpoint::write_atomic(&path, text.as_bytes())
}
