//! `wordnet`: the synset glosses of WordNet 3.0 (Debian package `wordnet-base`),
//! parsed by [`crate::tasks::wordnet::read_synsets`] (format described there).
//!
//! One document per synset with a gloss, in data-file order (noun, verb, adj,
//! adv): `<words joined by ", "> (<part of speech>): <gloss>`, e.g.
//! `abaxial, dorsal (adjective): facing away from the axis of an organ or
//! organism; "the abaxial surface of a leaf"`.
//! Each document is labelled with its part of speech (`noun`, `verb`,
//! `adjective`, `adverb`), so `wordnet:noun` is a [`super::Domain`].

use std::path::Path;

use super::{Corpus, LoadedCorpus};
use crate::error::Result;
use crate::jsonl::LoadOptions;
use crate::tasks::wordnet::{read_synsets, Synset};

pub const NAME: &str = "wordnet";

/// The document text of one synset.
pub fn gloss_document(synset: &Synset) -> String {
    format!(
        "{} ({}): {}",
        synset.words.join(", "),
        synset.part_of_speech(),
        synset.gloss
    )
}

/// Loads the glosses of the WordNet data files in `dir`; see the module docs.
pub fn load(dir: &Path, opts: LoadOptions) -> Result<LoadedCorpus> {
    let (synsets, n_skipped) = read_synsets(dir, opts)?;
    let documents = synsets
        .iter()
        .filter(|s| !s.gloss.is_empty())
        .map(|s| (gloss_document(s), s.part_of_speech().to_string()))
        .collect();
    Ok(LoadedCorpus {
        corpus: Corpus::labelled(NAME, documents)?,
        n_skipped,
    })
}
