mod bad_input;
mod bench_merge;
mod bench_tta;
mod deploy;
mod eval;
mod eval_loss;
mod generate;
mod inspect;
mod logits;
mod plan;
mod upcycle;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn fluxmoe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fluxmoe"))
        .args(args)
        .output()
        .expect("running fluxmoe")
}

/// Run the binary with extra environment variables.
pub fn fluxmoe_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fluxmoe"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running fluxmoe")
}

pub fn fixture(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures")
        .join(arch)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Printable ASCII and `\n` as single-character tokens (ids 1..=96), `<unk>` = 0:
/// fits the fixture's 128-token vocabulary.
pub fn write_char_tokenizer(path: &Path) {
    let mut vocab = serde_json::Map::new();
    vocab.insert("<unk>".into(), 0.into());
    vocab.insert("\n".into(), 1.into());
    for (idx, byte) in (0x20u8..0x7f).enumerate() {
        vocab.insert((byte as char).to_string(), (idx + 2).into());
    }
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {
            "type": "Split", "pattern": { "Regex": "(?s)." },
            "behavior": "Isolated", "invert": false
        },
        "post_processor": null, "decoder": null,
        "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "<unk>" }
    });
    std::fs::write(path, json.to_string()).unwrap();
}
