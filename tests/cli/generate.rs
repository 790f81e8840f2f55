//! Real-model generation with SmolLM2-135M-Instruct, when the asset is available
//! (`.ci/run` fetches it and sets FLUXMOE_SMOLLM2_GGUF).

use std::path::PathBuf;

use super::{fluxmoe, stderr, stdout};

/// The SmolLM2 GGUF: `$FLUXMOE_SMOLLM2_GGUF`, else the file in fluxmoe's cache folder.
fn smollm2() -> Option<String> {
    let cache = std::env::var_os("FLUXMOE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("fluxmoe")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/fluxmoe")));
    let candidates = std::env::var_os("FLUXMOE_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .into_iter()
        .chain(cache.map(|c| c.join("SmolLM2-135M-Instruct.Q4_1.gguf")));
    for path in candidates {
        if path.exists() {
            return Some(path.to_string_lossy().into_owned());
        }
    }
    eprintln!("skipping: SmolLM2 GGUF not cached (run `fluxmoe assets fetch`, or set FLUXMOE_SMOLLM2_GGUF)");
    None
}

#[test]
fn smollm2_continues_a_story_in_fluent_english() {
    let Some(model) = smollm2() else { return };
    let o = fluxmoe(&[
        "generate",
        "--model",
        &model,
        "--prompt",
        "Once upon a time, there was a little",
        "--max-new-tokens",
        "24",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    // Greedy decoding is deterministic; this is the continuation we observed.
    assert!(text.trim_start().starts_with("girl named"), "{text}");
    let words: Vec<&str> = text.split_whitespace().collect();
    assert!(words.len() >= 15, "{text}");
    let common = [
        "the", "to", "and", "she", "her", "a", "was", "in", "of", "with", "play", "loved",
    ];
    let hits = words
        .iter()
        .filter(|w| {
            common.contains(
                &w.trim_matches(|c: char| !c.is_alphabetic())
                    .to_lowercase()
                    .as_str(),
            )
        })
        .count();
    assert!(hits >= 4, "not fluent English? {text}");
}

#[test]
fn smollm2_answers_in_chat_mode() {
    let Some(model) = smollm2() else { return };
    let o = fluxmoe(&[
        "generate",
        "--model",
        &model,
        "--chat",
        "--prompt",
        "What is the capital of France?",
        "--max-new-tokens",
        "16",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("Paris"), "{}", stdout(&o));
}
