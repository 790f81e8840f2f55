//! `fluxmoe bench flux-merge` on the fixture Mixtral (2 MoE layers of 4 experts), a
//! small JSONL task and a one-character-per-token tokenizer.

use std::path::Path;

use super::{fixture, fluxmoe, stderr, stdout, write_char_tokenizer};

/// 20 prompt/response lines (a few hundred characters = tokens).
fn write_task(path: &Path) {
    let lines: Vec<String> = (0..20)
        .map(|i| {
            serde_json::json!({
                "prompt": format!("What is {i} plus {}?", i * 3),
                "response": format!("It is {}.", i * 4),
            })
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

fn bench(dir: &Path, model: &str, extra: &[&str]) -> std::process::Output {
    let tok = dir.join("tokenizer.json");
    write_char_tokenizer(&tok);
    let task_file = dir.join("sums.jsonl");
    write_task(&task_file);
    let model = fixture(model);
    let task = format!("jsonl:{}", task_file.display());
    let mut args = vec![
        "bench",
        "flux-merge",
        "--model",
        model.to_str().unwrap(),
        "--task",
        &task,
        "--tokenizer",
        tok.to_str().unwrap(),
        "--tokens",
        "200",
        "--batch",
        "4",
    ];
    args.extend_from_slice(extra);
    fluxmoe(&args)
}

#[test]
fn table_has_the_four_variants_with_positive_errors() {
    let dir = tempfile::tempdir().unwrap();
    let o = bench(dir.path(), "mixtral", &["--b-non", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("200 tokens"), "{out}");
    assert!(
        out.contains("2 tuning (highest activation share), 6 non-tuning, B_non 3"),
        "{out}"
    );
    let rows: Vec<Vec<&str>> = out
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| variant"))
        .map(|l| l.trim_matches('|').split(" | ").map(str::trim).collect())
        .collect();
    let names: Vec<&str> = rows.iter().map(|r| r[0]).collect();
    assert_eq!(
        names,
        [
            "layer-aware/f·ā (FLUX)",
            "uniform/f·ā",
            "one-per-layer/f·ā",
            "layer-aware/f"
        ]
    );
    assert_eq!(rows[2][1], "1 each, sum 2");
    assert_eq!(rows[0][6], "-");
    for row in &rows {
        for col in 3..6 {
            let e: f64 = row[col].parse().unwrap();
            assert!(e > 0.0 && e.is_finite(), "{row:?}");
        }
    }
    for row in &rows[1..] {
        assert!(row[6].ends_with('%'), "{row:?}");
    }
}

#[test]
fn json_with_room_for_every_expert_is_lossless_except_one_per_layer() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--b-non", "6", "--tuned", "2", "--json", "--seed", "4"];
    let o = bench(dir.path(), "mixtral", &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let ev = &v["evidence"];
    assert_eq!(ev["tokens"], 200);
    assert_eq!(ev["non_tuning"], 6);
    let variants = ev["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 4);
    for i in [0, 1, 3] {
        for key in ["isolated", "end_to_end", "logits"] {
            assert_eq!(variants[i][key], 0.0, "{}", variants[i]);
        }
    }
    assert!(variants[2]["isolated"].as_f64().unwrap() > 0.0);
    assert_eq!(v["flux_change_vs"][2]["isolated"], -1.0);
    assert!(v["flux_change_vs"][1]["isolated"].is_null());
    // Same seed, same numbers.
    let again = bench(dir.path(), "mixtral", &args);
    assert_eq!(stdout(&again), stdout(&o));
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let fails = |o: std::process::Output, needle: &str| {
        assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
        assert!(stderr(&o).contains(needle), "{}", stderr(&o));
    };
    fails(
        bench(dir.path(), "mixtral", &["--tuned", "9"]),
        "cannot tune 9 experts",
    );
    fails(
        bench(dir.path(), "mixtral", &["--b-non", "0"]),
        "--b-non must be at least 1",
    );
    fails(bench(dir.path(), "llama", &[]), "no MoE layer");
    let missing = dir.path().join("nope");
    fails(
        fluxmoe(&[
            "bench",
            "flux-merge",
            "--model",
            missing.to_str().unwrap(),
            "--task",
            "math",
        ]),
        "loading model",
    );
    let model = fixture("mixtral");
    fails(
        fluxmoe(&[
            "bench",
            "flux-merge",
            "--model",
            model.to_str().unwrap(),
            "--task",
            "no-such-task",
        ]),
        "pass --tokenizer",
    );
    let tok = dir.path().join("tokenizer.json");
    fails(
        fluxmoe(&[
            "bench",
            "flux-merge",
            "--model",
            model.to_str().unwrap(),
            "--task",
            "no-such-task",
            "--tokenizer",
            tok.to_str().unwrap(),
        ]),
        "unknown task `no-such-task`",
    );
}
