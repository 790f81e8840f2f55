//! Cutting text into fixed-length token windows for training and held-out loss.
//!
//! Text is tokenised with `add_special_tokens = false` (no BOS/EOS is added).
//! [`windows_of_ids`] returns the windows `ids[i * stride .. i * stride + len]`
//! for every `i` whose window fits entirely; a ragged tail shorter than `len` is
//! dropped, so every window has exactly `len` ids.
//! `stride == len` gives non-overlapping windows (held-out loss), `stride < len`
//! overlapping ones.
//!
//! [`token_stream`] concatenates documents as `doc_0 + DOC_SEPARATOR + doc_1 +
//! DOC_SEPARATOR + ...`, tokenising one document (with its separator) at a time
//! and stopping once `max_tokens` ids are collected, so a large corpus is only
//! tokenised as far as needed.

use tokenizers::Tokenizer;

use crate::error::{Error, Result};

/// Text appended after every document in [`token_stream`].
pub const DOC_SEPARATOR: &str = "\n\n";

/// The ids of `text`, without special tokens.
fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let encoding = tokenizer
        .encode(text, false)
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    Ok(encoding.get_ids().to_vec())
}

/// Full windows of `len` ids starting every `stride` ids; see the module docs.
pub fn windows_of_ids(ids: &[u32], len: usize, stride: usize) -> Result<Vec<Vec<u32>>> {
    if len == 0 {
        return Err(Error::param("windows.len", "must be at least 1, got 0"));
    }
    if stride == 0 {
        return Err(Error::param("windows.stride", "must be at least 1, got 0"));
    }
    let mut res = Vec::new();
    let mut start = 0;
    while start + len <= ids.len() {
        res.push(ids[start..start + len].to_vec());
        start += stride;
    }
    Ok(res)
}

/// Tokenises `text` and cuts it into full windows; see the module docs.
pub fn windows(
    tokenizer: &Tokenizer,
    text: &str,
    len: usize,
    stride: usize,
) -> Result<Vec<Vec<u32>>> {
    windows_of_ids(&encode(tokenizer, text)?, len, stride)
}

/// The first `max_tokens` ids of the documents joined by [`DOC_SEPARATOR`]
/// (fewer when the documents run out).
pub fn token_stream(
    tokenizer: &Tokenizer,
    documents: &[String],
    max_tokens: usize,
) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for doc in documents {
        if ids.len() >= max_tokens {
            break;
        }
        ids.extend(encode(tokenizer, &format!("{doc}{DOC_SEPARATOR}"))?);
    }
    ids.truncate(max_tokens);
    Ok(ids)
}

/// `n` items spread evenly over `items`: indices `floor(i * m / n)` for
/// `i in 0..n`, `m = items.len()`; all of them, in order, when `n >= m`.
pub fn evenly_spaced<T: Clone>(items: &[T], n: usize) -> Vec<T> {
    let m = items.len();
    if n >= m {
        return items.to_vec();
    }
    (0..n).map(|i| items[i * m / n].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpora::test_tokenizer::char_tokenizer;

    #[test]
    fn full_windows_only() {
        let ids: Vec<u32> = (0..10).collect();
        let w = windows_of_ids(&ids, 4, 4).unwrap();
        assert_eq!(w, [vec![0, 1, 2, 3], vec![4, 5, 6, 7]]);
        let w = windows_of_ids(&ids, 4, 3).unwrap();
        assert_eq!(w, [vec![0, 1, 2, 3], vec![3, 4, 5, 6], vec![6, 7, 8, 9]]);
        assert!(windows_of_ids(&ids, 11, 1).unwrap().is_empty());
        assert_eq!(windows_of_ids(&ids, 10, 100).unwrap().len(), 1);
    }

    #[test]
    fn evenly_spaced_covers_the_whole_list() {
        let items: Vec<u32> = (0..10).collect();
        assert_eq!(evenly_spaced(&items, 3), [0, 3, 6]);
        assert_eq!(evenly_spaced(&items, 5), [0, 2, 4, 6, 8]);
        assert_eq!(evenly_spaced(&items, 10), items);
        assert_eq!(evenly_spaced(&items, 50), items);
        assert!(evenly_spaced(&items, 0).is_empty());
    }

    #[test]
    fn zero_len_or_stride_is_an_error() {
        let err = windows_of_ids(&[1, 2], 0, 1).unwrap_err().to_string();
        assert_eq!(err, "`windows.len`: must be at least 1, got 0");
        assert!(windows_of_ids(&[1, 2], 1, 0).is_err());
    }

    #[test]
    fn text_windows_through_a_tokenizer() {
        let tok = char_tokenizer();
        let w = windows(&tok, "abcdefg", 3, 3).unwrap();
        let decoded: Vec<String> = w
            .iter()
            .map(|ids| tok.decode(ids, false).unwrap().replace(' ', ""))
            .collect();
        assert_eq!(decoded, ["abc", "def"]);
    }

    #[test]
    fn token_stream_joins_documents_and_stops_early() {
        let tok = char_tokenizer();
        let docs = vec!["ab".to_string(), "cd".to_string(), "ef".to_string()];
        let all = token_stream(&tok, &docs, 1000).unwrap();
        assert_eq!(all.len(), 12);
        let joined = windows(&tok, "ab\n\ncd\n\nef\n\n", 12, 12).unwrap();
        assert_eq!(all, joined[0]);
        assert_eq!(token_stream(&tok, &docs, 5).unwrap(), all[..5]);
    }
}
