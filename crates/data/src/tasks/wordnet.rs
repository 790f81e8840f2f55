//! `wordnet-define` and `wordnet-supersense`: tasks built from the WordNet 3.0
//! database files (Debian package `wordnet-base`, `/usr/share/wordnet`).
//!
//! Data-file format (`wndb(5WN)`): lines starting with two spaces are the licence
//! header; every other line is one synset,
//! `synset_offset lex_filenum ss_type w_cnt word lex_id [word lex_id...] p_cnt
//! [ptr...] [frames...] | gloss`, where `synset_offset` is 8 decimal digits,
//! `lex_filenum` 2 decimal digits, `ss_type` one of `n v a s r`, `w_cnt` 2 hex
//! digits and `lex_id` 1 hex digit.
//! Words use `_` for spaces (turned back into spaces here); adjectives may carry
//! a syntactic marker `(a)`, `(p)` or `(ip)`, which is dropped.
//! The gloss is a definition, optionally followed by `; "example"` quotes.
//!
//! `lex_filenum` indexes the 45 lexicographer files (`lexnames(5WN)`), the
//! supersenses `adj.all`, `adj.pert`, `adv.all`, `noun.Tops` ... `adj.ppl`.
//! Debian does not ship the `lexnames` file, so the table is built in; a
//! `lexnames` file in the folder (`NN\tname\tcategory` lines) overrides it.
//!
//! - `wordnet-define` (generation, ROUGE-L): one example per synset;
//!   prompt = `"<first word> (<noun|verb|adjective|adverb>)"`, target = the gloss
//!   up to the first `; "` (trimmed); synsets whose definition is empty are left
//!   out.
//! - `wordnet-supersense` (multiple choice): prompt = the whole gloss (trimmed),
//!   choices = all 45 supersense labels for every synset (so `answer` is the
//!   `lex_filenum` itself and the label set is shared), target = the label.
//!
//! Both use group = the supersense label and id = `<ss_type><offset>`
//! (e.g. `n00001740`).
//! The four files together hold 117,659 synsets.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::jsonl::{LoadOptions, Loaded};
use crate::task::{Example, GenerationMetric, Task, TaskKind};

pub const DEFINE_NAME: &str = "wordnet-define";
pub const SUPERSENSE_NAME: &str = "wordnet-supersense";
/// Where `wordnet-base` installs the database.
pub const DEFAULT_DIR: &str = "/usr/share/wordnet";
/// The data files read, in this order.
pub const DATA_FILES: [&str; 4] = ["data.noun", "data.verb", "data.adj", "data.adv"];

/// The 45 lexicographer file names of WordNet 3.0, indexed by `lex_filenum`.
pub const LEXNAMES: [&str; 45] = [
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
];

/// One parsed synset line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synset {
    pub offset: u32,
    pub lex_filenum: usize,
    /// `n`, `v`, `a`, `s` (adjective satellite) or `r` (adverb).
    pub ss_type: char,
    /// Words with `_` replaced by spaces and adjective markers dropped.
    pub words: Vec<String>,
    /// Everything after `|`, trimmed.
    pub gloss: String,
}

impl Synset {
    /// The gloss up to the first `; "` example quote, trimmed.
    pub fn definition(&self) -> &str {
        match self.gloss.find("; \"") {
            Some(end) => self.gloss[..end].trim(),
            None => self.gloss.trim(),
        }
    }

    pub fn part_of_speech(&self) -> &'static str {
        match self.ss_type {
            'n' => "noun",
            'v' => "verb",
            'a' | 's' => "adjective",
            _ => "adverb",
        }
    }

    pub fn id(&self) -> String {
        format!("{}{:08}", self.ss_type, self.offset)
    }
}

/// Parses one synset line; `Err` holds the reason (the caller adds file and line).
pub fn parse_synset_line(line: &str) -> std::result::Result<Synset, String> {
    let (head, gloss) = line
        .split_once('|')
        .ok_or_else(|| "synset line has no `|` before the gloss".to_string())?;
    let mut tokens = head.split_ascii_whitespace();
    let mut next = |what: &str| {
        tokens
            .next()
            .ok_or_else(|| format!("synset line ends before `{what}`"))
    };
    let offset_text = next("synset_offset")?;
    let offset: u32 = offset_text
        .parse()
        .map_err(|_| format!("synset_offset must be decimal, got `{offset_text}`"))?;
    let lex_text = next("lex_filenum")?;
    let lex_filenum: usize = lex_text
        .parse()
        .map_err(|_| format!("lex_filenum must be decimal, got `{lex_text}`"))?;
    let ss_text = next("ss_type")?;
    let ss_type = match ss_text {
        "n" | "v" | "a" | "s" | "r" => ss_text.chars().next().unwrap_or('n'),
        other => return Err(format!("ss_type must be one of n v a s r, got `{other}`")),
    };
    let w_cnt_text = next("w_cnt")?;
    let w_cnt = usize::from_str_radix(w_cnt_text, 16)
        .map_err(|_| format!("w_cnt must be hexadecimal, got `{w_cnt_text}`"))?;
    if w_cnt == 0 {
        return Err("w_cnt is 0".into());
    }
    let mut words = Vec::with_capacity(w_cnt);
    for _ in 0..w_cnt {
        let word = next("word")?;
        next("lex_id")?;
        let word = if matches!(ss_type, 'a' | 's') {
            strip_adjective_marker(word)
        } else {
            word
        };
        words.push(word.replace('_', " "));
    }
    Ok(Synset {
        offset,
        lex_filenum,
        ss_type,
        words,
        gloss: gloss.trim().to_string(),
    })
}

fn strip_adjective_marker(word: &str) -> &str {
    for marker in ["(a)", "(p)", "(ip)"] {
        if let Some(stripped) = word.strip_suffix(marker) {
            return stripped;
        }
    }
    word
}

/// The supersense labels: `<dir>/lexnames` when present, else [`LEXNAMES`].
pub fn lexnames(dir: &Path) -> Result<Vec<String>> {
    let path = dir.join("lexnames");
    if !path.exists() {
        return Ok(LEXNAMES.iter().map(|s| s.to_string()).collect());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let mut names = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut cols = line.split_ascii_whitespace();
        let (Some(num), Some(name)) = (cols.next(), cols.next()) else {
            return Err(Error::record(&path, idx + 1, "expected `NN name category`"));
        };
        if num.parse::<usize>().ok() != Some(names.len()) {
            return Err(Error::record(
                &path,
                idx + 1,
                format!("expected file number {}, got `{num}`", names.len()),
            ));
        }
        names.push(name.to_string());
    }
    Ok(names)
}

/// Reads every synset of the four data files; see [`LoadOptions`] for skipping.
pub fn read_synsets(dir: &Path, opts: LoadOptions) -> Result<(Vec<Synset>, usize)> {
    for file in DATA_FILES {
        if !dir.join(file).is_file() {
            return Err(Error::WordnetMissing {
                dir: dir.to_path_buf(),
                file: file.to_string(),
            });
        }
    }
    let mut synsets = Vec::new();
    let mut n_skipped = 0;
    for file in DATA_FILES {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        for (idx, line) in text.lines().enumerate() {
            if line.starts_with("  ") || line.trim().is_empty() {
                continue;
            }
            let parsed = parse_synset_line(line).map_err(|msg| Error::record(&path, idx + 1, msg));
            opts.keep(parsed, &mut synsets, &mut n_skipped)?;
        }
    }
    Ok((synsets, n_skipped))
}

/// `wordnet-define`; see the module docs.
pub fn load_define(dir: &Path, opts: LoadOptions) -> Result<Loaded> {
    let labels = lexnames(dir)?;
    let (synsets, mut n_skipped) = read_synsets(dir, opts)?;
    let mut examples = Vec::with_capacity(synsets.len());
    for synset in &synsets {
        let definition = synset.definition();
        if definition.is_empty() {
            continue;
        }
        let group = label_of(dir, &labels, synset, opts, &mut n_skipped)?;
        let Some(group) = group else { continue };
        examples.push(Example::generation(
            synset.id(),
            format!("{} ({})", synset.words[0], synset.part_of_speech()),
            definition,
            Some(group),
        ));
    }
    let task = Task::new(
        DEFINE_NAME,
        TaskKind::Generation {
            metric: GenerationMetric::RougeL,
        },
        examples,
    )?;
    Ok(Loaded { task, n_skipped })
}

/// `wordnet-supersense`; see the module docs.
pub fn load_supersense(dir: &Path, opts: LoadOptions) -> Result<Loaded> {
    let labels = lexnames(dir)?;
    let choices: Arc<[String]> = labels.clone().into();
    let (synsets, mut n_skipped) = read_synsets(dir, opts)?;
    let mut examples = Vec::with_capacity(synsets.len());
    for synset in &synsets {
        if synset.gloss.is_empty() {
            continue;
        }
        let Some(group) = label_of(dir, &labels, synset, opts, &mut n_skipped)? else {
            continue;
        };
        examples.push(Example::multiple_choice(
            synset.id(),
            synset.gloss.clone(),
            choices.clone(),
            synset.lex_filenum,
            Some(group),
        )?);
    }
    let task = Task::new(SUPERSENSE_NAME, TaskKind::MultipleChoice, examples)?;
    Ok(Loaded { task, n_skipped })
}

/// The supersense label of a synset; an out-of-range `lex_filenum` is a record
/// error (skipped, giving `None`, under `skip_malformed`).
fn label_of(
    dir: &Path,
    labels: &[String],
    synset: &Synset,
    opts: LoadOptions,
    n_skipped: &mut usize,
) -> Result<Option<String>> {
    if let Some(label) = labels.get(synset.lex_filenum) {
        return Ok(Some(label.clone()));
    }
    let err = Error::Format {
        path: dir.to_path_buf(),
        msg: format!(
            "synset {} has lex_filenum {} but there are {} lexnames",
            synset.id(),
            synset.lex_filenum,
            labels.len()
        ),
    };
    if opts.skip_malformed {
        tracing::warn!("skipping synset: {err}");
        *n_skipped += 1;
        Ok(None)
    } else {
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_real_adjective_line() {
        let line = "00002312 00 a 02 abaxial 0 dorsal(p) 4 002 ;c 06037666 n 0000 ! 00002527 a 0101 | facing away from the axis of an organ or organism; \"the abaxial surface of a leaf\"  ";
        let s = parse_synset_line(line).unwrap();
        assert_eq!(s.offset, 2312);
        assert_eq!(s.lex_filenum, 0);
        assert_eq!(s.ss_type, 'a');
        assert_eq!(s.words, ["abaxial", "dorsal"]);
        assert_eq!(
            s.definition(),
            "facing away from the axis of an organ or organism"
        );
        assert_eq!(s.id(), "a00002312");
    }

    #[test]
    fn hex_word_count_and_underscores() {
        // w_cnt is hexadecimal: 0a = 10 words.
        let words: Vec<String> = (0..10).map(|i| format!("w_{i} 0")).collect();
        let line = format!("00000001 03 n 0a {} 000 | gloss", words.join(" "));
        let s = parse_synset_line(&line).unwrap();
        assert_eq!(s.words.len(), 10);
        assert_eq!(s.words[9], "w 9");
        assert_eq!(s.gloss, "gloss");
    }

    #[test]
    fn malformed_lines_give_reasons() {
        assert!(parse_synset_line("00000001 03 n 01 word 0 000 no gloss")
            .unwrap_err()
            .contains("`|`"));
        assert!(parse_synset_line("00000001 03 x 01 word 0 000 | g")
            .unwrap_err()
            .contains("ss_type"));
        assert!(parse_synset_line("00000001 03 n 02 word 0 000 | g")
            .unwrap_err()
            .contains("lex_id"));
    }

    #[test]
    fn lexnames_table_has_45_entries() {
        assert_eq!(LEXNAMES.len(), 45);
        assert_eq!(LEXNAMES[5], "noun.animal");
        assert_eq!(LEXNAMES[29], "verb.body");
        assert_eq!(LEXNAMES[44], "adj.ppl");
    }
}
