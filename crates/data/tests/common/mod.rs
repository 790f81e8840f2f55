//! Helpers shared by the integration tests.

use std::str::FromStr;

use tokenizers::Tokenizer;

pub const WORDS: [&str; 12] = [
    "[PAD]",
    "[UNK]",
    "<|im_start|>",
    "<|im_end|>",
    "user",
    "assistant",
    "what",
    "is",
    "two",
    "plus",
    "four",
    "</s>",
];

/// Word-level model over `WORDS` (id = position), split on whitespace, with the
/// two ChatML markers as special added tokens.
pub fn tiny_tokenizer() -> Tokenizer {
    let vocab: serde_json::Map<String, serde_json::Value> = WORDS
        .iter()
        .enumerate()
        .map(|(id, w)| (w.to_string(), serde_json::Value::from(id)))
        .collect();
    let added: Vec<serde_json::Value> = [2, 3]
        .iter()
        .map(|&id| {
            serde_json::json!({"id": id, "content": WORDS[id], "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    Tokenizer::from_str(&json.to_string()).unwrap()
}
