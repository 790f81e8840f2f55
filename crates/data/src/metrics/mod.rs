//! Scoring: ROUGE-L F1 and normalised exact match for generations,
//! log-likelihood accuracy for multiple choice, and a mean with a 95% interval
//! to report any per-example score.

mod choice;
mod exact_match;
mod mean_ci;
mod rouge;

pub use choice::{choice_accuracy, pick_choice, ChoiceScore, LengthNorm};
pub use exact_match::{exact_match, normalize_answer};
pub use mean_ci::{bootstrap_ci, mean_ci, MeanCi};
pub use rouge::{rouge_l, rouge_tokens, RougeScore};
