//! `fluxmoe eval` on the fixture model with a one-character-per-token tokenizer and
//! small JSONL tasks: the printed metric, its interval, and bad input.

use std::path::{Path, PathBuf};

use super::{fixture, fluxmoe, stderr, stdout, write_char_tokenizer};

/// The Mixtral fixture with a tokenizer.json beside it.
fn model_dir(root: &Path) -> PathBuf {
    let dir = root.join("model");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("mixtral").join(f), dir.join(f)).unwrap();
    }
    write_char_tokenizer(&dir.join("tokenizer.json"));
    dir
}

/// 20 examples; with `choices`, three options and the answer's index.
fn task_file(root: &Path, choices: bool) -> PathBuf {
    let path = root.join(if choices { "mc.jsonl" } else { "gen.jsonl" });
    let lines: Vec<String> = (0..20)
        .map(|i| {
            let mut v = serde_json::json!({ "prompt": format!("{i}+1="), "response": format!("{}", i + 1) });
            if choices {
                v["choices"] = serde_json::json!(["a", "bb", "ccc"]);
                v["answer"] = serde_json::json!(i % 3);
            }
            v.to_string()
        })
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

/// `metric mean [lower, upper] (n=N)` from the last line.
fn metric_line(out: &str) -> (String, f64, f64, f64, usize) {
    let last = out.lines().last().unwrap();
    let parts: Vec<&str> = last.split_whitespace().collect();
    let num = |s: &str| {
        s.trim_matches(|c| "[],()n=".contains(c))
            .parse::<f64>()
            .unwrap()
    };
    (
        parts[0].to_string(),
        num(parts[1]),
        num(parts[2]),
        num(parts[3]),
        num(parts[4]) as usize,
    )
}

/// `fluxmoe eval --model MODEL --task TASK` followed by `extra`.
fn eval(model: &Path, task: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["eval", "--model", model.to_str().unwrap(), "--task", task];
    args.extend_from_slice(extra);
    fluxmoe(&args)
}

#[test]
fn prints_the_metric_with_a_95_percent_interval() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_dir(dir.path());
    let gen = task_file(dir.path(), false);
    let task = format!("jsonl-em:{}", gen.display());
    let extra = ["--limit", "3", "--max-new-tokens", "2"];
    let o = eval(&model, &task, &extra);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("format   plain"), "{out}");
    assert!(out.contains("3 scored"), "{out}");
    let (metric, mean, lower, upper, n) = metric_line(&out);
    assert_eq!((metric.as_str(), n), ("exact_match", 3), "{out}");
    assert!(
        lower <= mean && mean <= upper && (0.0..=1.0).contains(&mean),
        "{out}"
    );
    // Same seed, same answer, whatever the number of examples scored at once.
    assert_eq!(stdout(&eval(&model, &task, &extra)), out);
    for workers in ["1", "3"] {
        let mut more = extra.to_vec();
        more.extend(["--workers", workers]);
        assert_eq!(
            stdout(&eval(&model, &task, &more)),
            out,
            "{workers} workers"
        );
    }

    // Multiple choice: accuracy by log-likelihood over the options.
    let mc = task_file(dir.path(), true);
    let o = eval(
        &model,
        &format!("jsonl:{}", mc.display()),
        &["--limit", "4"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (metric, mean, lower, upper, n) = metric_line(&stdout(&o));
    assert_eq!((metric.as_str(), n), ("accuracy", 4));
    assert!(lower <= mean && mean <= upper);
    // Accuracy over 4 answers is a multiple of 1/4.
    assert!(((mean * 4.0) - (mean * 4.0).round()).abs() < 1e-9, "{mean}");
}

#[test]
fn bad_limits_and_tasks_are_errors_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_dir(dir.path());
    let gen = task_file(dir.path(), false);
    let o = eval(
        &model,
        &format!("jsonl-em:{}", gen.display()),
        &["--limit", "0"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("limit"), "{}", stderr(&o));
    let o = eval(
        &model,
        &format!("jsonl-em:{}", gen.display()),
        &["--workers", "0"],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--workers"), "{}", stderr(&o));
    let missing = format!("jsonl-em:{}", dir.path().join("nope.jsonl").display());
    let o = eval(&model, &missing, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("nope.jsonl"), "{}", stderr(&o));
}
