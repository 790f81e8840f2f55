//! A one-character-per-token tokenizer for tests: printable ASCII, `\n` and `<unk>`
//! (97 ids, so it fits a 128-token fixture vocabulary).

use tokenizers::Tokenizer;

/// The tokenizer JSON: a `WordLevel` model over single characters.
pub fn char_tokenizer_json() -> String {
    let mut vocab = serde_json::Map::new();
    vocab.insert("<unk>".into(), 0.into());
    vocab.insert("\n".into(), 1.into());
    for (idx, byte) in (0x20u8..0x7f).enumerate() {
        vocab.insert((byte as char).to_string(), (idx + 2).into());
    }
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {
            "type": "Split",
            "pattern": { "Regex": "(?s)." },
            "behavior": "Isolated",
            "invert": false
        },
        "post_processor": null,
        "decoder": null,
        "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "<unk>" }
    })
    .to_string()
}

pub fn char_tokenizer() -> Tokenizer {
    char_tokenizer_json().parse().expect("char tokenizer json")
}
