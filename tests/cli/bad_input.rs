//! Bad input reaches a clear error naming the problem and exit code 2, never a panic.

use super::{fixture, fluxmoe, stderr};

fn assert_fails_with(args: &[&str], needle: &str) {
    let o = fluxmoe(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected `{needle}` in: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn truncated_checkpoint_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("olmoe").join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let bytes = std::fs::read(fixture("olmoe").join("model.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("model.safetensors"),
        &bytes[..bytes.len() / 3],
    )
    .unwrap();
    assert_fails_with(
        &["inspect", "--model", dir.path().to_str().unwrap()],
        "model.safetensors",
    );
}

#[test]
fn unsupported_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = std::fs::read_to_string(fixture("mixtral").join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        cfg.replace("\"mixtral\"", "\"jamba\""),
    )
    .unwrap();
    std::fs::copy(
        fixture("mixtral").join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    assert_fails_with(
        &["inspect", "--model", dir.path().to_str().unwrap()],
        "unsupported architecture `jamba`",
    );
}

#[test]
fn garbage_gguf_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    assert_fails_with(
        &["inspect", "--model", path.to_str().unwrap()],
        "model.gguf",
    );
}

#[test]
fn bad_ids_are_rejected() {
    let m = fixture("mixtral");
    let m = m.to_str().unwrap();
    assert_fails_with(
        &[
            "logits",
            "--model",
            m,
            "--ids",
            "1,2;3",
            "--out",
            "/dev/null",
        ],
        "equal length",
    );
    assert_fails_with(
        &["logits", "--model", m, "--ids", "1,x", "--out", "/dev/null"],
        "`x` is not a token id",
    );
    assert_fails_with(
        &[
            "logits",
            "--model",
            m,
            "--ids",
            "1,999",
            "--out",
            "/dev/null",
        ],
        "outside the vocabulary",
    );
    assert_fails_with(
        &["inspect", "--model", "/nonexistent/model"],
        "/nonexistent/model",
    );
    assert_fails_with(
        &["generate", "--model", m, "--prompt", "hi"],
        "no tokenizer",
    );
}

#[test]
fn run_config_with_an_unknown_key_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.toml");
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart.toml"),
    )
    .unwrap();
    std::fs::write(&path, text.replace("[rounds]", "[rounds]\nround = 3")).unwrap();
    assert_fails_with(&["run", path.to_str().unwrap()], "unknown field `round`");
    assert_fails_with(&["run", "/nonexistent/run.toml"], "/nonexistent/run.toml");
}

#[test]
fn unknown_builtin_model_lists_the_available_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().to_str().unwrap();
    let out = super::fluxmoe_env(
        &["assets", "build", "smollm9-moe"],
        &[("FLUXMOE_CACHE", cache)],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = super::stderr(&out);
    assert!(err.contains("builtin:smollm9-moe"), "{err}");
    for known in [
        "builtin:smollm2-moe",
        "builtin:smollm2-btx",
        "builtin:tiny-moe",
    ] {
        assert!(err.contains(known), "{known} missing from: {err}");
    }
}

#[test]
fn assets_build_makes_and_then_reuses_the_tiny_model() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().to_str().unwrap();
    let first = super::fluxmoe_env(
        &["assets", "build", "tiny-moe"],
        &[("FLUXMOE_CACHE", cache)],
    );
    assert!(first.status.success(), "{}", super::stderr(&first));
    let dir = super::stdout(&first).trim().to_string();
    let config = std::path::Path::new(&dir).join("config.json");
    assert!(config.exists(), "{dir}");
    let written = std::fs::metadata(&config).unwrap().modified().unwrap();
    let again = super::fluxmoe_env(
        &["assets", "build", "tiny-moe"],
        &[("FLUXMOE_CACHE", cache)],
    );
    assert!(again.status.success());
    assert_eq!(super::stdout(&again).trim(), dir);
    assert_eq!(
        std::fs::metadata(&config).unwrap().modified().unwrap(),
        written
    );
}
