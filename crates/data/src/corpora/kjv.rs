//! `kjv`: the King James Bible from the Debian packages `bible-kjv` (the `bible`
//! program) and `bible-kjv-text` (its data).
//!
//! `bible-kjv-text` ships the text only as `/usr/lib/bible.data`, a compressed
//! binary of the Bible Retrieval System (magic `EC02`), so the fetch step runs the
//! package's own program once, `bible -f -p <lib dir> gen1:1-rev22:21`, and
//! stores its output as `kjv.txt`.
//! That format, read here: one verse a line, `<Book><chapter>:<verse> <text>`,
//! e.g. `Ge1:1 In the beginning ...` or `1Sm1:1 Now there was ...`; 31,102 verses.
//! One document per chapter (1,189 of them): the chapter's verse texts joined by
//! single spaces, in line order.

use std::path::Path;

use super::{read_text, Corpus, LoadedCorpus};
use crate::error::{Error, Result};
use crate::jsonl::LoadOptions;

pub const NAME: &str = "kjv";
/// The verse-per-line dump inside the corpus folder.
pub const FILE: &str = "kjv.txt";

/// Splits a verse line into its chapter key (`Ge1`) and text; `Err` holds the reason.
pub fn parse_verse_line(line: &str) -> std::result::Result<(&str, &str), String> {
    let (reference, text) = line
        .split_once(' ')
        .ok_or_else(|| "expected `<Book><chapter>:<verse> <text>`".to_string())?;
    let (chapter, verse) = reference
        .split_once(':')
        .ok_or_else(|| format!("reference `{reference}` has no `:`"))?;
    let chapter_digits = chapter.bytes().rev().take_while(u8::is_ascii_digit).count();
    if chapter_digits == 0 || chapter_digits == chapter.len() {
        return Err(format!("reference `{reference}` has no book and chapter"));
    }
    if verse.is_empty() || !verse.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("reference `{reference}` has no verse number"));
    }
    Ok((chapter, text.trim()))
}

/// Loads `kjv.txt`; see the module docs.
pub fn load(path: &Path, opts: LoadOptions) -> Result<LoadedCorpus> {
    let text = read_text(path)?;
    let mut documents: Vec<String> = Vec::new();
    let mut current: Option<&str> = None;
    let mut n_skipped = 0;
    for (idx, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (chapter, verse) = match parse_verse_line(line) {
            Ok(parsed) => parsed,
            Err(msg) => {
                opts.skip(Error::record(path, idx + 1, msg), &mut n_skipped)?;
                continue;
            }
        };
        match documents.last_mut() {
            Some(doc) if current == Some(chapter) => {
                doc.push(' ');
                doc.push_str(verse);
            }
            _ => {
                documents.push(verse.to_string());
                current = Some(chapter);
            }
        }
    }
    Ok(LoadedCorpus {
        corpus: Corpus::new(NAME, documents)?,
        n_skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verse_lines() {
        assert_eq!(
            parse_verse_line("Ge1:1 In the beginning God created"),
            Ok(("Ge1", "In the beginning God created"))
        );
        assert_eq!(parse_verse_line("1Sm12:3 Behold"), Ok(("1Sm12", "Behold")));
        assert!(parse_verse_line("Ge1:1").unwrap_err().contains("expected"));
        assert!(parse_verse_line("Ge1 text").unwrap_err().contains("no `:`"));
        assert!(parse_verse_line("Ge:1 text")
            .unwrap_err()
            .contains("chapter"));
        assert!(parse_verse_line("12:1 text")
            .unwrap_err()
            .contains("chapter"));
        assert!(parse_verse_line("Ge1:x text")
            .unwrap_err()
            .contains("verse"));
    }
}
