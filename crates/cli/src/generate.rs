//! `fluxmoe generate`: text in, text out, streamed as tokens are produced.

use std::io::Write;

use anyhow::{Context, Result};
use fluxmoe_model::chat::{ChatMessage, ChatTemplate};
use fluxmoe_model::generate::{generate, GenerateConfig};
use fluxmoe_model::model::CachedLm;
use fluxmoe_model::sampling::SamplingConfig;
use fluxmoe_model::{LoadedModel, MoeModel};

pub struct GenerateArgs {
    pub prompt: String,
    pub chat: bool,
    pub system: Option<String>,
    pub max_new_tokens: usize,
    pub sampling: SamplingConfig,
}

/// Generate and stream to stdout; returns the generated text.
pub fn run(lm: &LoadedModel, args: &GenerateArgs) -> Result<String> {
    let tokenizer = lm
        .tokenizer
        .as_ref()
        .context("this model has no tokenizer (a folder needs tokenizer.json)")?;
    let template = if args.chat {
        ChatTemplate::detect(lm.chat_template.as_deref())
    } else {
        ChatTemplate::Plain
    };
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::system(system));
    }
    messages.push(ChatMessage::user(&args.prompt));
    let text = if args.chat {
        template.render(&messages, true)
    } else {
        args.prompt.clone()
    };
    let enc = tokenizer
        .encode(text.as_str(), true)
        .map_err(|e| anyhow::anyhow!("tokenizing the prompt: {e}"))?;
    let mut stop_ids = lm.eos_ids.clone();
    for s in template.stop_strings() {
        if let Some(id) = tokenizer.token_to_id(s) {
            stop_ids.push(id);
        }
    }
    let model = MoeModel::new(&lm.checkpoint.config, &lm.checkpoint.params)?;
    let cfg = GenerateConfig {
        max_new_tokens: args.max_new_tokens,
        stop_ids,
        sampling: args.sampling,
    };
    let mut out_ids = Vec::new();
    let mut printed = 0;
    let mut stdout = std::io::stdout();
    let ids = generate(&mut CachedLm::new(&model), enc.get_ids(), &cfg, &mut |id| {
        out_ids.push(id);
        if let Ok(s) = tokenizer.decode(&out_ids, true) {
            if s.len() > printed && s.is_char_boundary(printed) {
                let _ = write!(stdout, "{}", &s[printed..]);
                let _ = stdout.flush();
                printed = s.len();
            }
        }
    })?;
    println!();
    tokenizer
        .decode(&ids, true)
        .map_err(|e| anyhow::anyhow!("decoding: {e}"))
}
