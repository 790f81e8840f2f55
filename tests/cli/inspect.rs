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
