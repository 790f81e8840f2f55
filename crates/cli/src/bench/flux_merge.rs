//! `fluxmoe bench flux-merge`: the paper's merging evidence (METHOD.md "Evidence") on
//! one model and task. Output error of each customisation variant against the unmerged
//! model, per MoE layer in isolation, end to end, and on the final logits; the library
//! side is `fluxmoe_flux::evidence`.
//!
//! Setup (ours, not the paper's): `--tokens` tokens of the task's training examples
//! (rendered prompt + response, a seeded order, the last example cut to the count) are
//! profiled on the full-precision model; the `--tuned` experts with the highest
//! activation share (default a quarter of all routed experts) are tuning, there are no
//! explorers, and every other expert may be merged into `--b-non` slots (default two per
//! MoE layer).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use fluxmoe_data::batch::{collate, encode, Encoded};
use fluxmoe_data::tasks::registry::{load_train_test, DataDirs};
use fluxmoe_data::{LoadOptions, PromptConventions, Template};
use fluxmoe_flux::customise::MergeOptions;
use fluxmoe_flux::evidence::{
    merge_evidence, paper_variants, top_share_roles, ErrorKind, MergeEvidence, MergeEvidenceOptions,
};
use fluxmoe_flux::profile::{profile, ProfileBatch};
use fluxmoe_model::{LoadedModel, MoeModel};
use rand::seq::SliceRandom;
use rand::SeedableRng;

pub struct FluxMergeArgs {
    pub task: String,
    pub tokens: usize,
    pub tuned: Option<usize>,
    pub b_non: Option<usize>,
    pub seed: u64,
    pub batch: usize,
    pub max_len: usize,
    pub json: bool,
    pub tokenizer: Option<PathBuf>,
    pub dirs: DataDirs,
}

/// The measured tokens: `batches` of at most `--batch` examples.
struct Sample {
    batches: Vec<ProfileBatch>,
    examples: usize,
    train_examples: usize,
}

fn sample(lm: &LoadedModel, args: &FluxMergeArgs) -> Result<Sample> {
    let own = match &args.tokenizer {
        Some(path) => Some(
            fluxmoe_model::tokenizer::load_tokenizer_json(path)
                .with_context(|| format!("loading tokenizer {}", path.display()))?,
        ),
        None => None,
    };
    let tokenizer = own
        .as_ref()
        .or(lm.tokenizer.as_ref())
        .context("the model has no tokenizer: pass --tokenizer PATH/tokenizer.json")?;
    let data = load_train_test(&args.task, &args.dirs, LoadOptions::STRICT, args.seed)
        .with_context(|| format!("loading task `{}`", args.task))?;
    let conventions = PromptConventions::new(lm.chat_template.as_deref(), &lm.eos_ids, tokenizer);
    let (format, pad_id) = (conventions.format, conventions.pad_id);
    let cfg = conventions.batch_config(args.max_len);
    let template = Template::for_task(&data.train.name);
    let examples = &data.train.examples;
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(args.seed));
    let (mut items, mut tokens): (Vec<Encoded>, usize) = (Vec::new(), 0);
    for i in order {
        if tokens >= args.tokens {
            break;
        }
        let mut e = encode(tokenizer, &template.render(&examples[i], format)?, &cfg)?;
        let keep = e.ids.len().min(args.tokens - tokens);
        e.ids.truncate(keep);
        e.loss_mask.truncate(keep);
        if keep > 0 {
            tokens += keep;
            items.push(e);
        }
    }
    if items.is_empty() {
        bail!(
            "task `{}` has no training example with a token to measure",
            args.task
        );
    }
    let batches = items
        .chunks(args.batch)
        .map(|c| {
            let b = collate(c, pad_id, &Device::Cpu)?;
            Ok(ProfileBatch {
                input_ids: b.input_ids,
                attention_mask: b.attention_mask,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Sample {
        batches,
        examples: items.len(),
        train_examples: examples.len(),
    })
}

pub fn run(lm: &LoadedModel, model_path: &std::path::Path, args: &FluxMergeArgs) -> Result<()> {
    if args.tokens == 0 || args.batch == 0 || args.max_len == 0 {
        bail!("--tokens, --batch and --max-len must be at least 1");
    }
    if args.b_non == Some(0) {
        bail!("--b-non must be at least 1");
    }
    let cfg = lm.checkpoint.config.clone();
    let moe_layers = cfg.moe_layers().len();
    if moe_layers == 0 {
        bail!("the model has no MoE layer: nothing to merge");
    }
    let s = sample(lm, args)?;
    let tensors = lm
        .checkpoint
        .params
        .tensors()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    let model = MoeModel::new(&cfg, &lm.checkpoint.params)?;
    let prof = profile(&model, &s.batches)?;
    let experts: usize = prof.layers.iter().map(|l| l.slots.len()).sum();
    let k = args.tuned.unwrap_or(experts / 4);
    let roles = top_share_roles(&prof, k).context("--tuned")?;
    let opts = MergeEvidenceOptions {
        b_non: args.b_non.unwrap_or(2 * moe_layers),
        base: MergeOptions::default(),
        variants: paper_variants(),
        seed: args.seed,
    };
    let ev = merge_evidence(&model, &tensors, &s.batches, &prof, &roles, &opts)?;
    if args.json {
        let changes: Vec<serde_json::Value> = (0..ev.variants.len())
            .map(|i| {
                serde_json::json!({
                    "variant": ev.variants[i].variant.name,
                    "isolated": ev.change_vs_first(i, ErrorKind::Isolated),
                    "end_to_end": ev.change_vs_first(i, ErrorKind::EndToEnd),
                    "logits": ev.change_vs_first(i, ErrorKind::Logits),
                })
            })
            .collect();
        let out = serde_json::json!({
            "model": model_path.display().to_string(),
            "task": args.task,
            "train_examples": s.train_examples,
            "examples": s.examples,
            "batches": s.batches.len(),
            "evidence": ev,
            "flux_change_vs": changes,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", report(&ev, model_path, args, &s));
    }
    Ok(())
}

/// `1-3, sum 60`, or `2 each, sum 60`.
fn slots_summary(slots: &[usize]) -> String {
    let (min, max) = (
        slots.iter().min().copied().unwrap_or(0),
        slots.iter().max().copied().unwrap_or(0),
    );
    let sum: usize = slots.iter().sum();
    if min == max {
        format!("{min} each, sum {sum}")
    } else {
        format!("{min}-{max}, sum {sum}")
    }
}

fn change(c: Option<f64>) -> String {
    match c {
        Some(c) => format!("{:+.1}%", c * 100.0),
        None => "n/a".into(),
    }
}

fn report(
    ev: &MergeEvidence,
    model_path: &std::path::Path,
    args: &FluxMergeArgs,
    s: &Sample,
) -> String {
    let mut out = String::new();
    let mut line = |l: String| {
        out.push_str(&l);
        out.push('\n');
    };
    line(format!("model       {}", model_path.display()));
    line(format!(
        "task        {} ({} of {} training examples, {} tokens in {} batches)",
        args.task,
        s.examples,
        s.train_examples,
        ev.tokens,
        s.batches.len()
    ));
    line(format!(
        "experts     {} MoE layers, {} routed experts: {} tuning (highest activation \
         share), {} non-tuning, B_non {}, seed {}",
        ev.moe_layers, ev.experts, ev.tuning, ev.non_tuning, ev.b_non, ev.seed
    ));
    line(String::new());
    line(
        "| variant | slots per layer | merged | isolated | end-to-end | logits | \
         FLUX vs this (isolated) | FLUX vs this (end-to-end) |"
            .into(),
    );
    line("|---|---|---:|---:|---:|---:|---:|---:|".into());
    for (i, v) in ev.variants.iter().enumerate() {
        let (name, iso, e2e) = if i == 0 {
            (format!("{} (FLUX)", v.variant.name), "-".into(), "-".into())
        } else {
            (
                v.variant.name.clone(),
                change(ev.change_vs_first(i, ErrorKind::Isolated)),
                change(ev.change_vs_first(i, ErrorKind::EndToEnd)),
            )
        };
        line(format!(
            "| {name} | {} | {} | {:.3e} | {:.3e} | {:.3e} | {iso} | {e2e} |",
            slots_summary(&v.slots),
            v.merged,
            v.isolated,
            v.end_to_end,
            v.logits
        ));
    }
    line(String::new());
    line(
        "Errors are relative L2 over all real tokens vs the unmerged model (isolated and \
         end-to-end: mean over MoE layers). FLUX vs this = e_FLUX / e_this - 1."
            .into(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_summaries_and_changes_read_as_documented() {
        assert_eq!(slots_summary(&[1, 3, 2]), "1-3, sum 6");
        assert_eq!(slots_summary(&[2, 2]), "2 each, sum 4");
        assert_eq!(change(Some(-0.656)), "-65.6%");
        assert_eq!(change(Some(0.1)), "+10.0%");
        assert_eq!(change(None), "n/a");
    }
}
