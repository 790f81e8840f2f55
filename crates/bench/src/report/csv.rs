//! `results.csv`: one row per run, RFC 4180 quoting (a field holding a comma, quote,
//! CR or LF, or with leading or trailing spaces, is quoted with inner quotes doubled).
//! Missing values are empty fields; numbers use Rust's shortest round-trip form.

use crate::results::{RunResult, SuiteResults};

pub const COLUMNS: [&str; 19] = [
    "method",
    "variant",
    "task",
    "seed",
    "metric",
    "target",
    "tta_virtual_s",
    "tta_measured_s",
    "rounds_to_target",
    "rounds",
    "final",
    "best",
    "initial",
    "bytes_moved",
    "peak_rss_bytes",
    "participant_heap_peak_bytes",
    "overhead_share",
    "virtual_s",
    "measured_s",
];

/// One CSV field, quoted where needed.
pub fn field(s: &str) -> String {
    let needs = s.contains([',', '"', '\n', '\r'])
        || s.starts_with(' ')
        || s.ends_with(' ')
        || s.starts_with('\t')
        || s.ends_with('\t');
    if needs {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// The cells of one run, in [`COLUMNS`] order (unquoted).
pub fn row(r: &RunResult) -> Vec<String> {
    vec![
        r.method.clone(),
        r.variant.clone(),
        r.task.clone(),
        r.seed.to_string(),
        r.metric.clone(),
        opt(r.target),
        opt(r.tta_virtual_s),
        opt(r.tta_measured_s),
        opt(r.rounds_to_target),
        r.rounds.to_string(),
        r.final_metric.to_string(),
        r.best_metric.to_string(),
        r.initial_metric.to_string(),
        r.bytes_moved.to_string(),
        opt(r.peak_rss_bytes),
        opt(r.participant_heap_peak_bytes),
        opt(r.overhead_share),
        r.virtual_s.to_string(),
        r.measured_s.to_string(),
    ]
}

fn line(cells: &[String]) -> String {
    let cells: Vec<String> = cells.iter().map(|c| field(c)).collect();
    format!("{}\r\n", cells.join(","))
}

/// The whole file: header, then the runs in suite order. Lines end in CRLF (RFC 4180).
pub fn results_csv(results: &SuiteResults) -> String {
    let header: Vec<String> = COLUMNS.iter().map(|c| c.to_string()).collect();
    let mut s = line(&header);
    for r in &results.runs {
        s.push_str(&line(&row(r)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_only_where_needed() {
        assert_eq!(field("plain"), "plain");
        assert_eq!(field(""), "");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("two\nlines"), "\"two\nlines\"");
        assert_eq!(field(" padded"), "\" padded\"");
        assert_eq!(field("jsonl-em:/p/x.jsonl"), "jsonl-em:/p/x.jsonl");
    }
}
