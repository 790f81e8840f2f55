use std::collections::BTreeSet;

use super::*;

const MERGES: [(&str, &str); 5] = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("1", "2"), ("Ã", "¯")];

/// A tiny byte-level vocabulary: 3 control tokens, the 256 byte symbols, 5 merges.
pub(crate) fn synthetic_metadata(pre: Option<&str>, add_bos: bool) -> HashMap<String, Value> {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let alphabet: BTreeSet<char> = ByteLevel::alphabet().into_iter().collect();
    tokens.extend(alphabet.iter().map(|c| c.to_string()));
    tokens.extend(MERGES.iter().map(|(a, b)| format!("{a}{b}")));
    let types = (0..tokens.len()).map(|i| Value::I32(if i < 3 { 3 } else { 1 }));
    let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    let merges = MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect();
    let mut md = HashMap::new();
    md.insert(
        "tokenizer.ggml.model".to_string(),
        Value::String("gpt2".into()),
    );
    md.insert("tokenizer.ggml.tokens".to_string(), strings(tokens));
    md.insert("tokenizer.ggml.merges".to_string(), strings(merges));
    md.insert(
        "tokenizer.ggml.token_type".to_string(),
        Value::Array(types.collect()),
    );
    md.insert("tokenizer.ggml.bos_token_id".to_string(), Value::U32(0));
    md.insert("tokenizer.ggml.eos_token_id".to_string(), Value::U32(2));
    md.insert("tokenizer.ggml.padding_token_id".to_string(), Value::U32(0));
    md.insert(
        "tokenizer.ggml.add_bos_token".to_string(),
        Value::Bool(add_bos),
    );
    if let Some(pre) = pre {
        md.insert("tokenizer.ggml.pre".to_string(), Value::String(pre.into()));
    }
    md
}

fn build(pre: Option<&str>) -> Tokenizer {
    tokenizer_from_gguf(&synthetic_metadata(pre, false)).unwrap()
}

fn ids(tok: &Tokenizer, s: &str) -> Vec<u32> {
    tok.encode(s, false).unwrap().get_ids().to_vec()
}

fn id(tok: &Tokenizer, token: &str) -> u32 {
    tok.token_to_id(token).unwrap()
}

#[test]
fn round_trips_ascii_and_non_ascii() {
    for pre in [None, Some("gpt2"), Some("smollm")] {
        let tok = build(pre);
        for s in [
            "the cat sat",
            "Hello, world! 123 4.5",
            "naïve café — 日本語 🦀",
            "  two  spaces\n\ttab\r\n",
        ] {
            let enc = ids(&tok, s);
            assert_eq!(tok.decode(&enc, false).unwrap(), s, "pre {pre:?}");
        }
    }
}

#[test]
fn merges_are_applied() {
    let tok = build(None);
    assert_eq!(ids(&tok, " the"), vec![id(&tok, "Ġthe")]);
    assert_eq!(ids(&tok, "the"), vec![id(&tok, "t"), id(&tok, "he")]);
    assert!(ids(&tok, "naïve").contains(&id(&tok, "Ã¯")));
}

#[test]
fn control_tokens_are_single_special_ids() {
    let tok = build(Some("smollm"));
    let enc = ids(&tok, "<|im_start|>user the<|im_end|>");
    assert_eq!(enc[0], 1);
    assert_eq!(*enc.last().unwrap(), 2);
    assert_eq!(tok.decode(&enc, true).unwrap(), "user the");
    assert_eq!(
        tok.decode(&enc, false).unwrap(),
        "<|im_start|>user the<|im_end|>"
    );
}

#[test]
fn smollm_splits_digits_and_gpt2_does_not() {
    let gpt2 = build(Some("gpt2"));
    assert_eq!(ids(&gpt2, "12"), vec![id(&gpt2, "12")]);
    let smol = build(Some("smollm"));
    assert_eq!(ids(&smol, "12"), vec![id(&smol, "1"), id(&smol, "2")]);
    assert_eq!(smol.decode(&ids(&smol, "x 1234"), false).unwrap(), "x 1234");
}

#[test]
fn add_bos_prepends_bos_with_special_tokens() {
    let tok = tokenizer_from_gguf(&synthetic_metadata(None, true)).unwrap();
    let with = tok.encode("the", true).unwrap().get_ids().to_vec();
    assert_eq!(with, vec![0, id(&tok, "t"), id(&tok, "he")]);
    assert_eq!(ids(&tok, "the"), vec![id(&tok, "t"), id(&tok, "he")]);
    let plain = build(None);
    assert_eq!(
        plain.encode("the", true).unwrap().get_ids(),
        ids(&plain, "the")
    );
}

#[test]
fn special_ids_are_read() {
    let special = special_tokens_from_gguf(&synthetic_metadata(None, true)).unwrap();
    assert_eq!(
        special,
        SpecialTokenIds {
            bos: Some(0),
            eos: Some(2),
            pad: Some(0),
            add_bos: true
        }
    );
    assert!(gguf_tokenizer(&HashMap::new()).unwrap().is_none());
    let both = gguf_tokenizer(&synthetic_metadata(None, false))
        .unwrap()
        .unwrap();
    assert_eq!(both.special.eos, Some(2));
}

fn err_of(md: &HashMap<String, Value>) -> String {
    match tokenizer_from_gguf(md) {
        Ok(_) => panic!("expected an error"),
        Err(e) => {
            assert!(matches!(e, Error::Tokenizer(_)), "{e:?}");
            e.to_string()
        }
    }
}

#[test]
fn unsupported_model_and_pre_are_named() {
    let mut md = synthetic_metadata(None, false);
    md.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
    let msg = err_of(&md);
    assert!(
        msg.contains("`llama`") && msg.contains("unsupported"),
        "{msg}"
    );

    let md = synthetic_metadata(Some("qwen2"), false);
    assert!(err_of(&md).contains("qwen2"));
}

#[test]
fn bad_metadata_is_rejected() {
    let mut md = synthetic_metadata(None, false);
    md.insert(
        "tokenizer.ggml.merges".into(),
        Value::Array(vec![Value::String("nospace".into())]),
    );
    assert!(err_of(&md).contains("nospace"));

    let mut md = synthetic_metadata(None, false);
    md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(100_000));
    assert!(err_of(&md).contains("100000"));

    let mut md = synthetic_metadata(None, false);
    md.remove("tokenizer.ggml.tokens");
    assert!(err_of(&md).contains("tokenizer.ggml.tokens"));

    let mut md = synthetic_metadata(None, false);
    md.insert(
        "tokenizer.ggml.token_type".into(),
        Value::Array(vec![Value::I32(1)]),
    );
    assert!(err_of(&md).contains("token types"));
}

#[test]
fn tokenizer_json_round_trip_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    let tok = build(Some("smollm"));
    tok.save(&path, false).unwrap();
    let loaded = load_tokenizer_json(&path).unwrap();
    let s = "<|im_start|>naïve 12 the";
    assert_eq!(ids(&loaded, s), ids(&tok, s));

    let missing = dir.path().join("nope.json");
    let msg = load_tokenizer_json(&missing).unwrap_err().to_string();
    assert!(msg.contains("nope.json"), "{msg}");

    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, b"{not json").unwrap();
    let msg = load_tokenizer_json(&garbage).unwrap_err().to_string();
    assert!(msg.contains("garbage.json"), "{msg}");
}
