//! `fortunes`: the fortune-cookie files of the Debian packages `fortunes` and
//! `fortunes-min` (`/usr/share/games/fortunes`).
//!
//! Format (`strfile(1)`): a text file whose entries are separated by lines
//! holding only `%`.
//! Every file of the folder whose name has no extension is read, in sorted name
//! order (so the `.dat` indexes, `.u8` links and a `SOURCE.txt` note are left
//! out); bytes that are not UTF-8 are replaced (the files are meant to be UTF-8
//! but a few older entries are not).
//! One document per entry, trailing whitespace trimmed.

use std::path::{Path, PathBuf};

use super::{Corpus, LoadedCorpus};
use crate::error::{Error, Result};

pub const NAME: &str = "fortunes";

/// The entries of one fortune file, in order, without blank ones.
pub fn parse_fortunes(text: &str) -> Vec<String> {
    let mut res = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.trim_end() == "%" {
            push_entry(&mut res, &mut current);
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    push_entry(&mut res, &mut current);
    res
}

fn push_entry(entries: &mut Vec<String>, current: &mut String) {
    let entry = current.trim_end();
    if !entry.trim().is_empty() {
        entries.push(entry.to_string());
    }
    current.clear();
}

/// The sorted files of `dir` without an extension.
fn fortune_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        if path.extension().is_none() && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Loads every fortune file in `dir`; see the module docs.
pub fn load(dir: &Path) -> Result<LoadedCorpus> {
    let files = fortune_files(dir)?;
    if files.is_empty() {
        return Err(Error::Format {
            path: dir.to_path_buf(),
            msg: "no fortune files (files without an extension)".into(),
        });
    }
    let mut documents = Vec::new();
    for path in files {
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        documents.extend(parse_fortunes(&String::from_utf8_lossy(&bytes)));
    }
    Ok(LoadedCorpus {
        corpus: Corpus::new(NAME, documents)?,
        n_skipped: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_split_on_percent_lines() {
        let text = "A bird in hand.\n%\nTwo lines\n\tand an attribution\n%\n%\n  \n%\nLast, no trailing percent\n";
        assert_eq!(
            parse_fortunes(text),
            [
                "A bird in hand.",
                "Two lines\n\tand an attribution",
                "Last, no trailing percent"
            ]
        );
        assert!(parse_fortunes("%\n%\n").is_empty());
        // A percent sign inside a line is text, not a separator.
        assert_eq!(parse_fortunes("100% sure\n"), ["100% sure"]);
    }
}
