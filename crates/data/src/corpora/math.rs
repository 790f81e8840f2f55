//! `math`: the questions and answers of `shared/data/mathematics/train.jsonl`
//! (read by [`crate::tasks::math::load_file`], format described there).
//!
//! One document per line: `<question>\n<answer>`, in file order (the file is
//! ordered by module, so the modulo held-out split spreads over all modules).
//! Each document is labelled with its module's area, the part of the module name
//! before `__` (`arithmetic`, `numbers`, `comparison`, `measurement`, `algebra`,
//! `polynomials`, `probability`), so `math:arithmetic+comparison` is a
//! [`super::Domain`].

use std::path::Path;

use super::{Corpus, LoadedCorpus};
use crate::error::Result;
use crate::jsonl::LoadOptions;

pub const NAME: &str = "math";
/// The JSONL file inside the corpus folder.
pub const FILE: &str = "train.jsonl";

/// Loads the mathematics JSONL file at `path`; see the module docs.
pub fn load(path: &Path, opts: LoadOptions) -> Result<LoadedCorpus> {
    let loaded = crate::tasks::math::load_file(path, opts)?;
    let documents = loaded
        .task
        .examples
        .iter()
        .map(|e| {
            let module = e.group.as_deref().unwrap_or_default();
            let area = module.split("__").next().unwrap_or_default();
            (format!("{}\n{}", e.prompt, e.target), area.to_string())
        })
        .collect();
    Ok(LoadedCorpus {
        corpus: Corpus::labelled(NAME, documents)?,
        n_skipped: loaded.n_skipped,
    })
}
