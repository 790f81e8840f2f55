//! ROUGE-L as Google's Python `rouge-score` package computes it by default
//! (`RougeScorer(["rougeL"])`, no stemming).
//!
//! Tokens: lowercase, replace every run of characters outside `[a-z0-9]` with a
//! space, split on whitespace (so non-ASCII letters are separators too).
//! With `lcs` the length of the longest common subsequence of the token lists,
//! `P = lcs / len(pred)`, `R = lcs / len(ref)`, `F = 2PR / (P + R)`;
//! all three are 0 when either list is empty (and F is 0 when P + R = 0).
//! The LCS is the O(len(pred) * len(ref)) dynamic programme with one row kept.

/// Precision, recall and F1 of one prediction against one reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RougeScore {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// The `rouge-score` default tokenisation.
pub fn rouge_tokens(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let cleaned: String = lower
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                ' '
            }
        })
        .collect();
    cleaned.split_whitespace().map(str::to_string).collect()
}

fn lcs_len(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// ROUGE-L of `prediction` against `reference`.
pub fn rouge_l(prediction: &str, reference: &str) -> RougeScore {
    let pred = rouge_tokens(prediction);
    let reference = rouge_tokens(reference);
    if pred.is_empty() || reference.is_empty() {
        return RougeScore {
            precision: 0.0,
            recall: 0.0,
            f1: 0.0,
        };
    }
    let lcs = lcs_len(&pred, &reference) as f64;
    let precision = lcs / pred.len() as f64;
    let recall = lcs / reference.len() as f64;
    let f1 = if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    };
    RougeScore {
        precision,
        recall,
        f1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn tokenisation_matches_rouge_score() {
        assert_eq!(
            rouge_tokens("The CAT's hat -- 3.5% café!"),
            ["the", "cat", "s", "hat", "3", "5", "caf"]
        );
        assert!(rouge_tokens(" ,;!? ").is_empty());
    }

    #[test]
    fn hand_computed_lcs() {
        // pred: the cat sat on the mat (6), ref: the cat is on the mat (6);
        // LCS = the cat on the mat = 5 -> P = R = F = 5/6.
        let s = rouge_l("The cat sat on the mat.", "the cat is on the mat");
        assert!(close(s.precision, 5.0 / 6.0) && close(s.recall, 5.0 / 6.0));
        assert!(close(s.f1, 5.0 / 6.0));
        // pred: a b c d (4), ref: b d e (3); LCS = b d = 2;
        // P = 1/2, R = 2/3, F = 2 * (1/2) * (2/3) / (7/6) = 4/7.
        let s = rouge_l("a b c d", "b d e");
        assert!(close(s.precision, 0.5) && close(s.recall, 2.0 / 3.0));
        assert!(close(s.f1, 4.0 / 7.0));
        // Order matters: reversed sequence keeps only 1 token in common.
        assert!(close(rouge_l("x y z", "z y x").f1, 1.0 / 3.0));
    }

    #[test]
    fn empty_and_disjoint_give_zero() {
        assert_eq!(rouge_l("", "the cat").f1, 0.0);
        assert_eq!(rouge_l("the cat", "!!!").f1, 0.0);
        assert_eq!(rouge_l("a b", "c d").f1, 0.0);
        assert_eq!(rouge_l("Same text", "same TEXT").f1, 1.0);
    }
}
