//! `fluxmoe inspect` reports layout, parameter counts and memory.

use super::{fixture, fluxmoe, stdout};

#[test]
fn inspect_reports_layout_counts_and_memory() {
    let o = fluxmoe(&["inspect", "--model", fixture("deepseek").to_str().unwrap()]);
    assert!(o.status.success());
    let s = stdout(&o);
    assert!(s.contains("architecture      deepseek"), "{s}");
    assert!(s.contains("layers            3 (2 MoE)"), "{s}");
    assert!(s.contains("0  dense MLP, width 96"), "{s}");
    assert!(s.contains("1-2  MoE 8 experts (width 32), top-3"), "{s}");
    // 8 experts x 3 matrices x 32 x 64 = 49152 per MoE layer; 2 layers.
    assert!(s.contains("98.3K in routed experts"), "{s}");
    assert!(s.contains("parameters        196.0K total"), "{s}");
    // Active: total - 98304 + 2 layers x 3 experts x 6144 (exact counts: model crate).
    assert!(s.contains("active per token  134.6K"), "{s}");
    assert!(s.contains("memory, full fine-tuning"), "{s}");
}

/// Every command that loads a model takes the built-in names a config's `model.path`
/// takes: `builtin:tiny-moe` is built into the cache on first use and inspected.
#[test]
fn inspect_takes_a_builtin_model_name() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().to_str().unwrap();
    let o = super::fluxmoe_env(
        &["inspect", "--model", "builtin:tiny-moe"],
        &[("FLUXMOE_CACHE", cache)],
    );
    assert!(o.status.success(), "{}", super::stderr(&o));
    let s = stdout(&o);
    assert!(s.contains("architecture      mixtral"), "{s}");
    assert!(tmp.path().join("tiny-moe").join("config.json").exists());
    let bad = super::fluxmoe_env(
        &["inspect", "--model", "builtin:tiny-mo"],
        &[("FLUXMOE_CACHE", cache)],
    );
    assert_eq!(bad.status.code(), Some(2));
    let err = super::stderr(&bad);
    assert!(
        err.contains("unknown built-in model `builtin:tiny-mo`"),
        "{err}"
    );
}
