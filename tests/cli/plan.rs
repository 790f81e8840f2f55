//! `fluxmoe plan` prints each participant's memory budget and names budgets that
//! cannot hold one tuning expert.

use super::{fixture, fluxmoe, stderr, stdout};

fn config(
    dir: &std::path::Path,
    memory_fraction: f64,
    profiles: &str,
    options: &str,
) -> std::path::PathBuf {
    let path = dir.join("plan.toml");
    let text = format!(
        r#"
output = "{out}"
[model]
path = "{model}"
[task]
name = "math"
max_len = 16
[partition]
participants = 3
[rounds]
rounds = 1
per_round = 1
batch_size = 2
[method]
name = "flux"
[method.options]
overhead_mib = 0.0
{options}
[fleet]
profiles = [{profiles}]
memory_fraction = {memory_fraction}
"#,
        out = dir.join("out").display(),
        model = fixture("mixtral").display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

const RTX3060: f64 = 12.0 * 1024.0 * 1024.0 * 1024.0;

/// The memory fraction that leaves the RTX 3060 `spare` bytes beyond the fixture's
/// fixed part (frozen weights and activations; the config sets no overhead), read from
/// the plan of a whole 3060.
fn fraction_with_spare(dir: &std::path::Path, spare: f64) -> f64 {
    let cfg = config(dir, 1.0, r#""rtx3060""#, "");
    let o = fluxmoe(&["plan", "--config", cfg.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let fixed = v["rows"][0]["budget"]["Ok"]["fixed_bytes"]
        .as_u64()
        .unwrap();
    (fixed as f64 + spare) / RTX3060
}

#[test]
fn plan_prints_budgets_and_names_a_budget_that_does_not_fit() {
    let tmp = tempfile::tempdir().unwrap();
    // 0.5 MB beyond the fixed part on the 12 GiB card: the fixture's experts are 48 KiB
    // each (tuning one costs 192 KiB).
    let cfg = config(
        tmp.path(),
        fraction_with_spare(tmp.path(), 0.5e6),
        r#""rtx3060", "rtx3080""#,
        "",
    );
    let o = fluxmoe(&["plan", "--config", cfg.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["total_experts"], 8);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["device"], "rtx3060");
    assert_eq!(rows[1]["device"], "rtx3080");
    let b = &rows[0]["budget"]["Ok"];
    let (tune, non) = (b["b_tune"].as_u64().unwrap(), b["b_non"].as_u64().unwrap());
    assert!((1..8).contains(&tune) && non >= 2, "{b}");
    // Memory adds up: fixed + tuning + merged + free.
    let sum: u64 = ["fixed_bytes", "tuning_bytes", "merged_bytes", "free_bytes"]
        .iter()
        .map(|k| b[k].as_u64().unwrap())
        .sum();
    assert_eq!(sum, b["memory_bytes"].as_u64().unwrap());
    // A tiny share of memory cannot hold one tuning expert: the table says so.
    let cfg = config(tmp.path(), 1.0e-5, r#""rtx3060""#, "");
    let o = fluxmoe(&["plan", "--config", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(s.contains("does not fit") && s.contains("short by"), "{s}");
}

#[test]
fn the_median_upload_cap_brings_the_big_card_down_to_the_fleet_median() {
    let tmp = tempfile::tempdir().unwrap();
    let profiles = r#""rtx3060", "rtx3080", "rtx4090""#;
    let fraction = fraction_with_spare(tmp.path(), 1.4e6);
    let b_tune = |options: &str| -> Vec<u64> {
        let cfg = config(tmp.path(), fraction, profiles, options);
        let o = fluxmoe(&["plan", "--config", cfg.to_str().unwrap(), "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["budget"]["Ok"]["b_tune"].as_u64().unwrap())
            .collect()
    };
    let free = b_tune("");
    // Twice the 3060's memory tunes more; the 3080 less. All three upload at the same
    // rate, so the median upload time is the 3060's and the 4090 is cut to its B_tune.
    assert!(free[1] < free[0] && free[0] < free[2], "{free:?}");
    let capped = b_tune(r#"tune_cap = "median-upload""#);
    assert_eq!(capped, [free[0], free[1], free[0]]);
}
