//! Multiple-choice prediction from per-choice log-likelihoods.
//!
//! For each choice the caller gives `loglik = sum_t log p(choice token t | prompt,
//! earlier choice tokens)` plus the choice's length in tokens and in characters.
//! The prediction is the argmax of a score, the first index winning ties:
//! - [`LengthNorm::Sum`]: `loglik` (lm-eval-harness `acc`);
//! - [`LengthNorm::PerToken`]: `loglik / n_tokens`;
//! - [`LengthNorm::PerChar`]: `loglik / n_chars`, where `n_chars` is the number of
//!   Unicode characters of the choice text as scored (lm-eval-harness `acc_norm`,
//!   which divides by the continuation's length).
//!
//! A NaN log-likelihood or a zero length under a normalisation is an error, as
//! is an answer index out of range.

use crate::error::{Error, Result};

/// How per-choice log-likelihoods are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LengthNorm {
    Sum,
    PerToken,
    PerChar,
}

/// The model's score of one choice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChoiceScore {
    pub loglik: f32,
    pub n_tokens: usize,
    pub n_chars: usize,
}

impl ChoiceScore {
    fn normalized(&self, norm: LengthNorm) -> Result<f64> {
        if self.loglik.is_nan() {
            return Err(Error::param("loglik", "is NaN"));
        }
        let denom = match norm {
            LengthNorm::Sum => return Ok(self.loglik as f64),
            LengthNorm::PerToken => self.n_tokens,
            LengthNorm::PerChar => self.n_chars,
        };
        if denom == 0 {
            return Err(Error::param(
                "n_tokens/n_chars",
                format!("is 0, cannot normalise with {norm:?}"),
            ));
        }
        Ok(self.loglik as f64 / denom as f64)
    }
}

/// Index of the best choice (first on ties); errors on no choices.
pub fn pick_choice(scores: &[ChoiceScore], norm: LengthNorm) -> Result<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (idx, score) in scores.iter().enumerate() {
        let value = score.normalized(norm)?;
        if best.is_none_or(|(_, b)| value > b) {
            best = Some((idx, value));
        }
    }
    best.map(|(idx, _)| idx)
        .ok_or_else(|| Error::param("scores", "no choices to pick from"))
}

/// Fraction of examples whose picked choice equals `answers[i]`.
pub fn choice_accuracy(
    scores: &[Vec<ChoiceScore>],
    answers: &[usize],
    norm: LengthNorm,
) -> Result<f64> {
    if scores.len() != answers.len() {
        return Err(Error::param(
            "answers",
            format!("{} answers for {} examples", answers.len(), scores.len()),
        ));
    }
    if scores.is_empty() {
        return Err(Error::param("scores", "no examples"));
    }
    let mut n_correct = 0usize;
    for (idx, (choice_scores, &answer)) in scores.iter().zip(answers).enumerate() {
        if answer >= choice_scores.len() {
            return Err(Error::param(
                "answers",
                format!(
                    "example {idx}: answer {answer} out of range for {} choices",
                    choice_scores.len()
                ),
            ));
        }
        if pick_choice(choice_scores, norm)? == answer {
            n_correct += 1;
        }
    }
    Ok(n_correct as f64 / scores.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(loglik: f32, n_tokens: usize, n_chars: usize) -> ChoiceScore {
        ChoiceScore {
            loglik,
            n_tokens,
            n_chars,
        }
    }

    #[test]
    fn normalisation_changes_the_pick() {
        // Choice 0: -4 over 1 token / 4 chars; choice 1: -6 over 3 tokens / 12 chars.
        let scores = [s(-4.0, 1, 4), s(-6.0, 3, 12)];
        assert_eq!(pick_choice(&scores, LengthNorm::Sum).unwrap(), 0);
        // -4 vs -2 per token.
        assert_eq!(pick_choice(&scores, LengthNorm::PerToken).unwrap(), 1);
        // -1 vs -0.5 per char.
        assert_eq!(pick_choice(&scores, LengthNorm::PerChar).unwrap(), 1);
    }

    #[test]
    fn ties_pick_the_first() {
        let scores = [s(-1.0, 1, 1), s(-1.0, 1, 1)];
        assert_eq!(pick_choice(&scores, LengthNorm::Sum).unwrap(), 0);
    }

    #[test]
    fn accuracy_and_errors() {
        let scores = vec![
            vec![s(-1.0, 1, 1), s(-2.0, 1, 1)],
            vec![s(-3.0, 1, 1), s(-2.0, 1, 1)],
            vec![s(-1.0, 1, 1), s(-0.5, 1, 1), s(-9.0, 1, 1)],
        ];
        let acc = choice_accuracy(&scores, &[0, 0, 1], LengthNorm::Sum).unwrap();
        assert!((acc - 2.0 / 3.0).abs() < 1e-12);
        assert!(choice_accuracy(&scores, &[0, 0], LengthNorm::Sum).is_err());
        assert!(choice_accuracy(&scores, &[0, 2, 0], LengthNorm::Sum).is_err());
        assert!(pick_choice(&[], LengthNorm::Sum).is_err());
        assert!(pick_choice(&[s(f32::NAN, 1, 1)], LengthNorm::Sum).is_err());
        assert!(pick_choice(&[s(-1.0, 0, 1)], LengthNorm::PerToken).is_err());
    }
}
