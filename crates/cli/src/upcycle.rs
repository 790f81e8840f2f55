//! `fluxmoe upcycle`: a dense Llama model (folder or GGUF) → a Mixtral-format MoE folder.

use std::path::Path;

use anyhow::{Context, Result};
use fluxmoe_model::source::save_tokenizer_files;
use fluxmoe_model::upcycle::{sparse_upcycle, SparseUpcycle};
use fluxmoe_model::{checkpoint, LoadedModel};

pub fn run(dense: &LoadedModel, spec: &SparseUpcycle, out: &Path) -> Result<()> {
    let moe = sparse_upcycle(&dense.checkpoint, spec)?;
    checkpoint::save_dir(out, &moe.config_json, &moe.params, &moe.layout)
        .with_context(|| format!("writing {}", out.display()))?;
    if let Some(tok) = &dense.tokenizer {
        save_tokenizer_files(out, tok, &dense.eos_ids, dense.chat_template.as_deref())?;
    }
    eprintln!(
        "wrote {} ({} experts, top-{}, sparse upcycling)",
        out.display(),
        spec.n_experts,
        spec.top_k
    );
    Ok(())
}
