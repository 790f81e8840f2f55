//! Chat prompt rendering.
//!
//! [`ChatTemplate::ChatMl`] renders every message as
//!
//! ```text
//! <|im_start|>{role}\n{content}<|im_end|>\n
//! ```
//!
//! preceded, when the first message is not a `system` message and the
//! template has a default system prompt, by a `system` turn holding that
//! default; with `add_generation_prompt` it ends with
//! `<|im_start|>assistant\n` so the model writes the assistant's reply, which
//! it ends with `<|im_end|>`. This is exactly what SmolLM2-Instruct's Jinja
//! template produces (default system prompt [`SMOLLM2_DEFAULT_SYSTEM`]).
//!
//! [`ChatTemplate::Plain`] is for base models: the message contents joined by
//! `\n`, with no roles or markers, so a single message renders as itself.
//!
//! We do not run Jinja: [`ChatTemplate::detect`] recognises ChatML templates
//! by their `<|im_start|>` marker and lifts a literal default system prompt
//! out of them.

use serde::{Deserialize, Serialize};

/// SmolLM2-Instruct's default system prompt.
pub const SMOLLM2_DEFAULT_SYSTEM: &str =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

const IM_START: &str = "<|im_start|>";
const IM_END: &str = "<|im_end|>";

/// One turn of a conversation. `role` is usually `system`, `user` or
/// `assistant`; it is rendered verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// How to turn a conversation into prompt text; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplate {
    /// ChatML. `default_system` is inserted as a first `system` turn when
    /// the conversation does not start with one.
    ChatMl { default_system: Option<String> },
    /// Message contents joined by `\n`, no markers.
    Plain,
}

impl ChatTemplate {
    /// SmolLM2-Instruct's template: ChatML with [`SMOLLM2_DEFAULT_SYSTEM`].
    pub fn smollm2() -> Self {
        ChatTemplate::ChatMl {
            default_system: Some(SMOLLM2_DEFAULT_SYSTEM.to_string()),
        }
    }

    /// Picks the template from a model's Jinja chat template (the
    /// `chat_template` of `tokenizer_config.json` or `chat_template.jinja`):
    /// ChatML if it contains `<|im_start|>`, else (or without a template)
    /// [`ChatTemplate::Plain`]. For ChatML, the default system prompt is the
    /// first literal `<|im_start|>system\n…<|im_end|>` span free of Jinja
    /// syntax and quotes; if there is none, `default_system` is `None`.
    pub fn detect(chat_template_jinja: Option<&str>) -> ChatTemplate {
        match chat_template_jinja {
            Some(src) if src.contains(IM_START) => ChatTemplate::ChatMl {
                default_system: literal_default_system(src),
            },
            _ => ChatTemplate::Plain,
        }
    }

    /// Renders `messages`; with `add_generation_prompt` (ChatML only) the text
    /// ends with the opening of an assistant turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> String {
        match self {
            ChatTemplate::Plain => messages
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            ChatTemplate::ChatMl { default_system } => {
                let mut out = String::new();
                let turn = |out: &mut String, role: &str, content: &str| {
                    out.push_str(IM_START);
                    out.push_str(role);
                    out.push('\n');
                    out.push_str(content);
                    out.push_str(IM_END);
                    out.push('\n');
                };
                if let (Some(first), Some(sys)) = (messages.first(), default_system) {
                    if first.role != "system" {
                        turn(&mut out, "system", sys);
                    }
                }
                for m in messages {
                    turn(&mut out, &m.role, &m.content);
                }
                if add_generation_prompt {
                    out.push_str(IM_START);
                    out.push_str("assistant\n");
                }
                out
            }
        }
    }

    /// Strings that end the assistant's turn: `["<|im_end|>"]` for ChatML,
    /// none for plain text.
    pub fn stop_strings(&self) -> &'static [&'static str] {
        match self {
            ChatTemplate::ChatMl { .. } => &[IM_END],
            ChatTemplate::Plain => &[],
        }
    }
}

fn literal_default_system(src: &str) -> Option<String> {
    let opener = "<|im_start|>system";
    let mut rest = src;
    while let Some(at) = rest.find(opener) {
        rest = &rest[at + opener.len()..];
        let body = if let Some(b) = rest.strip_prefix('\n') {
            b
        } else if let Some(b) = rest.strip_prefix("\\n") {
            b
        } else {
            continue;
        };
        let end = body.find(IM_END)?;
        let text = &body[..end];
        let jinja_free = !text.is_empty()
            && !text.contains(['\'', '"', '{', '}', '+', '%'])
            && !text.contains(IM_START);
        if jinja_free {
            return Some(text.replace("\\n", "\n"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-Instruct's `chat_template`, as decoded from its JSON string.
    const SMOLLM2_JINJA: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_inserts_default_system() {
        let t = ChatTemplate::smollm2();
        let got = t.render(&[ChatMessage::user("What is 2+2?")], true);
        assert_eq!(
            got,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn chatml_keeps_given_system_and_multi_turn() {
        let t = ChatTemplate::smollm2();
        let msgs = [
            ChatMessage::system("Be brief."),
            ChatMessage::user("Hi"),
            ChatMessage::assistant("Hello!"),
            ChatMessage::user("Bye"),
        ];
        assert_eq!(
            t.render(&msgs, false),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
        );
        let bare = ChatTemplate::ChatMl {
            default_system: None,
        };
        assert_eq!(
            bare.render(&[ChatMessage::user("Hi")], true),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        // Like the Jinja loop: no messages, no default system turn.
        assert_eq!(t.render(&[], true), "<|im_start|>assistant\n");
    }

    #[test]
    fn plain_is_the_prompt_as_is() {
        let t = ChatTemplate::Plain;
        assert_eq!(
            t.render(&[ChatMessage::user("Once upon a time")], true),
            "Once upon a time"
        );
        assert_eq!(
            t.render(&[ChatMessage::system("a"), ChatMessage::user("b")], false),
            "a\nb"
        );
        assert!(t.stop_strings().is_empty());
    }

    #[test]
    fn detect_smollm2_and_others() {
        assert_eq!(
            ChatTemplate::detect(Some(SMOLLM2_JINJA)),
            ChatTemplate::smollm2()
        );
        assert_eq!(
            ChatTemplate::detect(Some(SMOLLM2_JINJA)).stop_strings(),
            &["<|im_end|>"]
        );
        // Escaped newlines in the Jinja source are accepted too.
        let escaped = SMOLLM2_JINJA.replace('\n', "\\n");
        assert_eq!(
            ChatTemplate::detect(Some(&escaped)),
            ChatTemplate::smollm2()
        );
        // A system turn built from the messages is not a default prompt; the
        // literal one in the else branch is.
        let qwen_like = "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}{%- else %}{{- '<|im_start|>system\nYou are Qwen, a helpful assistant.<|im_end|>\n' }}{%- endif %}";
        assert_eq!(
            ChatTemplate::detect(Some(qwen_like)),
            ChatTemplate::ChatMl {
                default_system: Some("You are Qwen, a helpful assistant.".into())
            }
        );
        let no_default = "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}";
        assert_eq!(
            ChatTemplate::detect(Some(no_default)),
            ChatTemplate::ChatMl {
                default_system: None
            }
        );
        let llama =
            "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}";
        assert_eq!(ChatTemplate::detect(Some(llama)), ChatTemplate::Plain);
        assert_eq!(ChatTemplate::detect(None), ChatTemplate::Plain);
    }
}
