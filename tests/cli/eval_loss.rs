//! `fluxmoe eval-loss` on the fixture model, the sample corpora of
//! `crates/data/tests/data/corpora` and a one-character-per-token tokenizer.

use std::path::{Path, PathBuf};

use super::{fixture, fluxmoe, stderr, stdout, write_char_tokenizer};

fn sample_corpora() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/data/tests/data/corpora")
}

fn eval_loss(tokenizer: &Path, extra: &[&str]) -> std::process::Output {
    eval_loss_of("llama", tokenizer, extra)
}

/// `fluxmoe eval-loss` of fixture `arch` on the sample corpora, windows of 16 ids.
fn eval_loss_of(arch: &str, tokenizer: &Path, extra: &[&str]) -> std::process::Output {
    let model = fixture(arch);
    let corpora = sample_corpora();
    let mut args = vec![
        "eval-loss",
        "--model",
        model.to_str().unwrap(),
        "--tokenizer",
        tokenizer.to_str().unwrap(),
        "--corpora-dir",
        corpora.to_str().unwrap(),
        "--held-out-every",
        "2",
        "--seq",
        "16",
        "--batch",
        "3",
    ];
    args.extend_from_slice(extra);
    fluxmoe(&args)
}

#[test]
fn table_has_a_row_per_corpus_and_a_weighted_overall_row() {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tokenizer.json");
    write_char_tokenizer(&tok);
    let o = eval_loss(&tok, &["--corpora", "all", "--tokens", "64"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["corpus", "windows", "tokens", "loss", "ppl"]);
    let names: Vec<&str> = rows[1..].iter().map(|r| r[0]).collect();
    assert_eq!(
        names,
        ["sotu", "moby", "kjv", "fortunes", "wordnet", "math", "overall"]
    );
    let (mut n_sum, mut nll_sum) = (0usize, 0f64);
    for row in &rows[1..7] {
        let (windows, tokens): (usize, usize) = (row[1].parse().unwrap(), row[2].parse().unwrap());
        let (loss, ppl): (f64, f64) = (row[3].parse().unwrap(), row[4].parse().unwrap());
        assert!((1..=4).contains(&windows), "{row:?}");
        assert_eq!(tokens, windows * 15);
        // A random 128-token model is close to uniform: loss near ln(128) = 4.85.
        assert!((3.5..6.5).contains(&loss), "{row:?}");
        assert!((ppl - loss.exp()).abs() / ppl < 0.01, "{row:?}");
        n_sum += tokens;
        nll_sum += loss * tokens as f64;
    }
    let overall = &rows[7];
    assert_eq!(overall[2].parse::<usize>().unwrap(), n_sum);
    let overall_loss: f64 = overall[3].parse().unwrap();
    assert!((overall_loss - nll_sum / n_sum as f64).abs() < 1e-3);
}

#[test]
fn same_run_gives_the_same_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tokenizer.json");
    write_char_tokenizer(&tok);
    let a = eval_loss(&tok, &["--corpora", "kjv,moby", "--tokens", "48"]);
    let b = eval_loss(&tok, &["--corpora", "kjv,moby", "--tokens", "48"]);
    assert!(a.status.success(), "{}", stderr(&a));
    assert_eq!(stdout(&a), stdout(&b));
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tokenizer.json");
    write_char_tokenizer(&tok);
    let o = eval_loss(&tok, &["--corpora", "sotu,bible"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown corpus `bible`"),
        "{}",
        stderr(&o)
    );
    let o = eval_loss(&tok, &["--tokens", "8"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--tokens (8) must be at least --seq (16)"));
    // The fixture has no tokenizer of its own.
    let model = fixture("llama");
    let o = fluxmoe(&["eval-loss", "--model", model.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("pass --tokenizer"), "{}", stderr(&o));
}

#[test]
fn routing_table_gives_each_corpus_a_first_choice_share_per_expert() {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tokenizer.json");
    write_char_tokenizer(&tok);
    let o = eval_loss_of(
        "mixtral",
        &tok,
        &[
            "--tokens",
            "32",
            "--corpora",
            "kjv,wordnet:noun",
            "--routing",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[2].starts_with("wordnet:noun "), "{out}");
    let at = lines
        .iter()
        .position(|l| l.starts_with("share of (token, MoE layer) pairs"))
        .unwrap_or_else(|| panic!("{out}"));
    // The fixture records no domains, so the experts are numbered.
    assert_eq!(lines[at + 1].trim(), "e0 = expert 0");
    let header: Vec<&str> = lines[at + 5].split_whitespace().collect();
    assert_eq!(header, ["corpus", "e0", "e1", "e2", "e3"]);
    for (row, name) in lines[at + 6..].iter().zip(["kjv", "wordnet:noun"]) {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[0], name);
        let shares: Vec<f64> = cells[1..].iter().map(|c| c.parse().unwrap()).collect();
        assert_eq!(shares.len(), 4);
        assert!((shares.iter().sum::<f64>() - 1.0).abs() < 0.003, "{row}");
    }
    assert_eq!(lines.len(), at + 8, "{out}");
    // A dense model has nothing to route.
    let o = eval_loss(&tok, &["--corpora", "kjv", "--tokens", "32", "--routing"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("no MoE layers"), "{}", stdout(&o));
}

#[test]
fn a_slice_that_names_no_label_of_its_corpus_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tokenizer.json");
    write_char_tokenizer(&tok);
    // The bad slice follows a good corpus, and is refused before anything is scored.
    let o = eval_loss(
        &tok,
        &["--corpora", "kjv,wordnet:pronoun", "--tokens", "32"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(stdout(&o), "", "{}", stderr(&o));
    assert!(
        stderr(&o)
            .contains("no document is labelled `pronoun`; its labels are adjective, noun, verb"),
        "{}",
        stderr(&o)
    );
}
