//! A [`Domain`]: a whole corpus (`math`) or the part of a labelled corpus whose
//! documents carry some labels (`math:arithmetic+comparison`, `wordnet:noun`).
//!
//! Sliced domains let one corpus give several Branch-Train-MiX experts, and let
//! `eval-loss` report a slice on its own. They are divisions of convenience, not
//! separate sources: `wordnet:noun` and `wordnet:verb` are both dictionary glosses.
//!
//! A domain's held-out split is the corpus's held-out split restricted to the
//! slice ([`Domain::split`]): the corpus is split first, by document index, and
//! the slice is taken from each side afterwards. So a document that the whole
//! corpus holds out is held out by every slice that contains it, and an expert
//! trained on a slice never sees a document that `eval-loss` scores for the whole
//! corpus.

use std::fmt;

use super::{Corpus, CorpusKind, CorpusSplit};
use crate::error::{Error, Result};

/// A corpus, or the documents of a labelled corpus with one of `labels`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Domain {
    pub kind: CorpusKind,
    /// The labels kept, in the order given; empty for the whole corpus.
    pub labels: Vec<String>,
}

impl Domain {
    /// The whole corpus.
    pub fn whole(kind: CorpusKind) -> Self {
        Domain {
            kind,
            labels: Vec::new(),
        }
    }

    /// Parses `NAME` or `NAME:LABEL[+LABEL...]`, e.g. `math:arithmetic+comparison`.
    /// The labels are checked against the corpus when it is split.
    pub fn parse(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        let (name, slice) = match spec.split_once(':') {
            Some((name, slice)) => (name.trim(), Some(slice)),
            None => (spec, None),
        };
        let kind = CorpusKind::from_name(name).ok_or_else(|| {
            let known: Vec<&str> = CorpusKind::ALL.iter().map(|k| k.name()).collect();
            Error::param(
                "domain",
                format!(
                    "unknown corpus `{name}` in `{spec}`, expected one of {}",
                    known.join(",")
                ),
            )
        })?;
        let mut labels: Vec<String> = Vec::new();
        if let Some(slice) = slice {
            for label in slice.split('+').map(str::trim) {
                if label.is_empty() {
                    return Err(Error::param(
                        "domain",
                        format!("`{spec}` has an empty label; write NAME:LABEL[+LABEL...]"),
                    ));
                }
                if labels.iter().any(|l| l == label) {
                    return Err(Error::param(
                        "domain",
                        format!("`{spec}` lists the label `{label}` twice"),
                    ));
                }
                labels.push(label.to_string());
            }
        }
        Ok(Domain { kind, labels })
    }

    /// Parses `all` (every whole corpus) or a comma-separated list of domains,
    /// duplicates removed, order kept.
    pub fn parse_list(spec: &str) -> Result<Vec<Self>> {
        if spec.trim() == "all" {
            return Ok(CorpusKind::ALL.into_iter().map(Domain::whole).collect());
        }
        let mut domains: Vec<Domain> = Vec::new();
        for part in spec.split(',') {
            let domain = Domain::parse(part)?;
            if !domains.contains(&domain) {
                domains.push(domain);
            }
        }
        Ok(domains)
    }

    pub fn is_whole(&self) -> bool {
        self.labels.is_empty()
    }

    /// Whether some document can belong to both domains: the same corpus, and
    /// either is whole or they share a label.
    pub fn overlaps(&self, other: &Domain) -> bool {
        self.kind == other.kind
            && (self.is_whole()
                || other.is_whole()
                || self.labels.iter().any(|l| other.labels.contains(l)))
    }

    /// The training and held-out documents of this domain in `corpus` (which must
    /// be this domain's corpus, loaded whole): `corpus.split(every)`, then each
    /// side restricted to the labels. Both sides are named like the domain.
    pub fn split(&self, corpus: &Corpus, every: usize) -> Result<CorpusSplit> {
        let split = corpus.split(every)?;
        if self.is_whole() {
            return Ok(split);
        }
        // Checked on the whole corpus: one side may lack a label the other has.
        corpus.check_labels(&self.labels)?;
        let name = self.to_string();
        Ok(CorpusSplit {
            train: split.train.filter_labels(&name, &self.labels)?,
            held_out: split.held_out.filter_labels(&name, &self.labels)?,
        })
    }
}

impl fmt::Display for Domain {
    /// `NAME` or `NAME:LABEL+LABEL`, which [`Domain::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.name())?;
        if !self.is_whole() {
            write!(f, ":{}", self.labels.join("+"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labelled(n: usize) -> Corpus {
        let docs = (0..n)
            .map(|i| (format!("doc {i}"), ["a", "b", "c"][i % 3].to_string()))
            .collect();
        Corpus::labelled("math", docs).unwrap()
    }

    #[test]
    fn domains_parse_and_print_back() {
        let d = Domain::parse(" math:arithmetic + comparison ").unwrap();
        assert_eq!(d.kind, CorpusKind::Math);
        assert_eq!(d.labels, ["arithmetic", "comparison"]);
        assert_eq!(d.to_string(), "math:arithmetic+comparison");
        assert_eq!(Domain::parse(&d.to_string()).unwrap(), d);
        assert_eq!(
            Domain::parse("sotu").unwrap(),
            Domain::whole(CorpusKind::Sotu)
        );
        assert_eq!(Domain::parse_list("all").unwrap().len(), 6);
        assert_eq!(
            Domain::parse_list("wordnet:noun,sotu,wordnet:noun").unwrap(),
            [
                Domain::parse("wordnet:noun").unwrap(),
                Domain::whole(CorpusKind::Sotu)
            ]
        );
    }

    #[test]
    fn malformed_domains_are_refused_by_name() {
        let err = |s: &str| Domain::parse(s).unwrap_err().to_string();
        assert!(
            err("bible:nt").contains("unknown corpus `bible`"),
            "{}",
            err("bible:nt")
        );
        assert!(err("math:").contains("empty label"), "{}", err("math:"));
        assert!(err("math:a++b").contains("empty label"));
        assert!(err("math:a+a").contains("`a` twice"));
    }

    #[test]
    fn overlap_is_same_corpus_and_shared_documents() {
        let p = |s: &str| Domain::parse(s).unwrap();
        assert!(p("math").overlaps(&p("math:a")));
        assert!(p("math:a+b").overlaps(&p("math:b")));
        assert!(!p("math:a").overlaps(&p("math:b+c")));
        assert!(!p("math").overlaps(&p("sotu")));
    }

    #[test]
    fn a_slice_holds_out_exactly_the_corpus_held_out_documents_it_contains() {
        let corpus = labelled(100);
        let whole = corpus.split(10).unwrap();
        let slice = Domain::parse("math:a+c")
            .unwrap()
            .split(&corpus, 10)
            .unwrap();
        assert_eq!(slice.held_out.name, "math:a+c");
        let in_slice = |d: &String| {
            let i: usize = d[4..].parse().unwrap();
            i % 3 != 1
        };
        let expect_held: Vec<String> = whole
            .held_out
            .documents
            .iter()
            .filter(|d| in_slice(d))
            .cloned()
            .collect();
        let expect_train: Vec<String> = whole
            .train
            .documents
            .iter()
            .filter(|d| in_slice(d))
            .cloned()
            .collect();
        assert_eq!(slice.held_out.documents, expect_held);
        assert_eq!(slice.train.documents, expect_train);
        // Splitting the slice on its own would hold out other documents.
        let naive = corpus
            .select("x", &["a".into(), "c".into()])
            .unwrap()
            .split(10)
            .unwrap();
        assert_ne!(naive.held_out.documents, slice.held_out.documents);
        // Labels travel with their documents.
        assert!(slice.train.labels.unwrap().iter().all(|l| l != "b"));
    }

    #[test]
    fn a_missing_label_is_named_with_every_label_of_the_corpus() {
        // Label `z` only on document 1, which every = 2 holds out: the training side
        // lacks it, and the error still lists the whole corpus's labels.
        let docs = ["a", "z", "a", "b"]
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("doc {i}"), l.to_string()))
            .collect();
        let corpus = Corpus::labelled("math", docs).unwrap();
        let err = Domain::parse("math:q")
            .unwrap()
            .split(&corpus, 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("its labels are a, b, z"), "{err}");
    }

    #[test]
    fn slicing_names_missing_labels_and_unlabelled_corpora() {
        let corpus = labelled(30);
        let err = Domain::parse("math:d")
            .unwrap()
            .split(&corpus, 10)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no document is labelled `d`; its labels are a, b, c"),
            "{err}"
        );
        let plain = Corpus::new("sotu", vec!["x".into(); 30]).unwrap();
        let err = Domain::parse("sotu:x")
            .unwrap()
            .split(&plain, 10)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no labels to select from"), "{err}");
        assert_eq!(
            Domain::whole(CorpusKind::Sotu).split(&plain, 10).unwrap(),
            plain.split(10).unwrap()
        );
    }
}
