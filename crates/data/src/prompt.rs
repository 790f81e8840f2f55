//! Turning an [`Example`] into the text a model reads and the text it must write.
//!
//! A [`Template`] holds a short task instruction and whether multiple-choice
//! options are listed.
//! The user message is `instruction + "\n\n" + prompt` (just `prompt` when the
//! instruction is empty); with [`ChoiceDisplay::Lettered`] the options follow as
//! `"\nA. first\nB. second..."` and the target becomes the answer's letter.
//! With [`ChoiceDisplay::Hidden`] the target is `Example::target`.
//!
//! [`PromptFormat`] wraps the user message:
//! - `Plain`: prompt = `message + "\n"`, target = `target`;
//! - `ChatMl`: prompt = `"<|im_start|>user\n" + message + "<|im_end|>\n<|im_start|>assistant\n"`,
//!   target = `target + "<|im_end|>"` (Qwen/SmolLM-style chat models).

use crate::error::{Error, Result};
use crate::task::Example;

/// How multiple-choice options appear in the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChoiceDisplay {
    /// Not listed; the target is the option's text.
    Hidden,
    /// Listed as `A.`, `B.`, ...; the target is the letter (at most 26 options).
    Lettered,
}

/// A task's instruction line and choice display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub instruction: String,
    pub choices: ChoiceDisplay,
}

/// The chat wrapping of a rendered example.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptFormat {
    Plain,
    ChatMl,
}

/// Text to condition on and text to learn (or compare with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub prompt: String,
    pub target: String,
}

impl Template {
    pub fn new(instruction: impl Into<String>, choices: ChoiceDisplay) -> Self {
        Template {
            instruction: instruction.into(),
            choices,
        }
    }

    /// The built-in template of a task name (see [`crate::tasks`]); other names get
    /// no instruction and hidden choices.
    pub fn for_task(name: &str) -> Self {
        use crate::tasks::{gsm8k, math, mmlu, piqa, wordnet};
        use ChoiceDisplay::{Hidden, Lettered};
        match name {
            math::NAME => Template::new("Answer with the final answer only.", Hidden),
            gsm8k::NAME => Template::new("Answer with the final number only.", Hidden),
            wordnet::DEFINE_NAME => Template::new("Give a one-line dictionary definition of this word.", Hidden),
            wordnet::SUPERSENSE_NAME => Template::new(
                "Name the WordNet supersense (such as noun.animal or verb.motion) of the word sense defined below.",
                Hidden,
            ),
            mmlu::NAME => Template::new("Answer with the letter of the correct option.", Lettered),
            piqa::NAME => Template::new(
                "Which solution reaches the goal? Answer with the letter of the better option.",
                Lettered,
            ),
            _ => Template::new("", Hidden),
        }
    }

    /// The user message and target of `ex`, before chat wrapping.
    pub fn message(&self, ex: &Example) -> Result<Rendered> {
        let mut message = if self.instruction.is_empty() {
            ex.prompt.clone()
        } else {
            format!("{}\n\n{}", self.instruction, ex.prompt)
        };
        let target = match (self.choices, &ex.choices, ex.answer) {
            (ChoiceDisplay::Lettered, Some(choices), Some(answer)) => {
                if choices.len() > 26 || answer >= choices.len() {
                    return Err(Error::param(
                        "template.choices",
                        format!(
                            "example `{}`: lettered choices need at most 26 options and an in-range answer, got {} options and answer {answer}",
                            ex.id,
                            choices.len()
                        ),
                    ));
                }
                message.push('\n');
                for (letter, choice) in (b'A'..).zip(choices.iter()) {
                    message.push_str(&format!("\n{}. {choice}", letter as char));
                }
                ((b'A' + answer as u8) as char).to_string()
            }
            _ => ex.target.clone(),
        };
        Ok(Rendered {
            prompt: message,
            target,
        })
    }

    /// The prompt and target of `ex` wrapped in `format`.
    pub fn render(&self, ex: &Example, format: PromptFormat) -> Result<Rendered> {
        let Rendered { prompt, target } = self.message(ex)?;
        Ok(match format {
            PromptFormat::Plain => Rendered {
                prompt: format!("{prompt}\n"),
                target,
            },
            PromptFormat::ChatMl => Rendered {
                prompt: format!("<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"),
                target: format!("{target}<|im_end|>"),
            },
        })
    }
}

/// How a model expects prompts: its [`PromptFormat`], the token that pads batches, the
/// token appended after plain targets, and the tokens that stop generation. One rule
/// for every caller (runs, `eval`, benchmarks), derived from the model's chat template
/// and end-of-sequence ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptConventions {
    pub format: PromptFormat,
    pub pad_id: u32,
    /// Appended after the target for plain prompts (ChatML targets end with
    /// `<|im_end|>` already).
    pub eos_id: Option<u32>,
    pub stop_ids: Vec<u32>,
}

impl PromptConventions {
    /// ChatML when the chat template uses `<|im_start|>`, plain otherwise; pads with
    /// the first end-of-sequence id (0 without one); stops at every end-of-sequence id
    /// and at `<|im_end|>` when the tokenizer has it.
    pub fn new(
        chat_template: Option<&str>,
        eos_ids: &[u32],
        tokenizer: &tokenizers::Tokenizer,
    ) -> Self {
        let chat = chat_template.is_some_and(|t| t.contains("<|im_start|>"));
        let mut stop_ids = eos_ids.to_vec();
        stop_ids.extend(tokenizer.token_to_id("<|im_end|>"));
        PromptConventions {
            format: if chat {
                PromptFormat::ChatMl
            } else {
                PromptFormat::Plain
            },
            pad_id: eos_ids.first().copied().unwrap_or(0),
            eos_id: if chat { None } else { eos_ids.first().copied() },
            stop_ids,
        }
    }

    /// Batching with these conventions and `max_len` tokens at most.
    pub fn batch_config(&self, max_len: usize) -> crate::BatchConfig {
        crate::BatchConfig {
            max_len,
            pad_id: self.pad_id,
            eos_id: self.eos_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn chatml_math() {
        let ex = Example::generation("m", "What is 2 + 2?", "4", None);
        let r = Template::for_task("math")
            .render(&ex, PromptFormat::ChatMl)
            .unwrap();
        assert_eq!(
            r.prompt,
            "<|im_start|>user\nAnswer with the final answer only.\n\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(r.target, "4<|im_end|>");
    }

    #[test]
    fn plain_without_instruction() {
        let ex = Example::generation("d", "Say hi", "hi", None);
        let r = Template::for_task("dolly")
            .render(&ex, PromptFormat::Plain)
            .unwrap();
        assert_eq!(
            r,
            Rendered {
                prompt: "Say hi\n".into(),
                target: "hi".into()
            }
        );
    }

    #[test]
    fn lettered_choices() {
        let choices: Arc<[String]> = vec!["red".to_string(), "blue".to_string()].into();
        let ex = Example::multiple_choice("c", "Sky?", choices, 1, None).unwrap();
        let r = Template::new("Pick.", ChoiceDisplay::Lettered)
            .message(&ex)
            .unwrap();
        assert_eq!(r.prompt, "Pick.\n\nSky?\n\nA. red\nB. blue");
        assert_eq!(r.target, "B");
        let hidden = Template::new("Pick.", ChoiceDisplay::Hidden)
            .message(&ex)
            .unwrap();
        assert_eq!(hidden.target, "blue");
        let many: Arc<[String]> = (0..27).map(|i| i.to_string()).collect::<Vec<_>>().into();
        let ex = Example::multiple_choice("c", "?", many, 0, None).unwrap();
        assert!(Template::new("", ChoiceDisplay::Lettered)
            .message(&ex)
            .is_err());
    }

    fn word_tokenizer(words: &[&str]) -> tokenizers::Tokenizer {
        let vocab: serde_json::Map<String, serde_json::Value> = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.to_string(), i.into()))
            .collect();
        serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
            "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "<unk>" }
        })
        .to_string()
        .parse()
        .unwrap()
    }

    #[test]
    fn conventions_follow_the_chat_template_and_eos_ids() {
        let chat_tok = word_tokenizer(&["<unk>", "<|endoftext|>", "<|im_end|>"]);
        let chatml = "{% for m in messages %}<|im_start|>{{ m.role }}{% endfor %}";
        let c = PromptConventions::new(Some(chatml), &[1], &chat_tok);
        assert_eq!(c.format, PromptFormat::ChatMl);
        assert_eq!(
            (c.pad_id, c.eos_id),
            (1, None),
            "ChatML targets end with <|im_end|>"
        );
        assert_eq!(c.stop_ids, vec![1, 2]);
        let b = c.batch_config(64);
        assert_eq!((b.max_len, b.pad_id, b.eos_id), (64, 1, None));

        let plain_tok = word_tokenizer(&["<unk>", "</s>"]);
        let c = PromptConventions::new(Some("{{ bos_token }}[INST]"), &[1, 0], &plain_tok);
        assert_eq!(c.format, PromptFormat::Plain);
        assert_eq!((c.pad_id, c.eos_id), (1, Some(1)));
        assert_eq!(c.stop_ids, vec![1, 0], "no <|im_end|> in this vocabulary");
        let c = PromptConventions::new(None, &[], &plain_tok);
        assert_eq!(
            (c.format, c.pad_id, c.eos_id),
            (PromptFormat::Plain, 0, None)
        );
        assert!(c.stop_ids.is_empty());
    }
}
