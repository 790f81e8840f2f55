//! `fluxmoe eval-loss`: mean next-token cross-entropy on the held-out split of
//! each domain corpus.
//!
//! For each corpus: the held-out documents (every `held_out_every`-th one, see
//! `fluxmoe_data::corpora`) are tokenised in order, joined by blank lines, and
//! cut into non-overlapping windows of `seq` ids; `floor(tokens / seq)` of those
//! windows, spread evenly over the whole held-out split
//! (`fluxmoe_data::corpora::evenly_spaced`), are scored (all of them when there
//! are fewer).
//! Every window is scored on its own (no context carried over), so it predicts
//! its last `seq - 1` ids; the table's `tokens` column counts those predicted
//! ids, `loss` is their mean negative log-likelihood in nats and `ppl = exp(loss)`.
//! The `overall` row weights every corpus by its predicted tokens.
//! With `--routing`, a second table gives, per corpus, the share of (token, MoE
//! layer) pairs of the same windows whose first-ranked expert is each expert (every
//! position of a window, so `seq` tokens per window), headed by the domain names
//! that a Branch-Train-MiX checkpoint records.
//! A slice such as `math:arithmetic` (`fluxmoe_data::corpora::Domain`) is scored
//! the same way on the corpus's held-out documents that carry its labels.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use fluxmoe_data::corpora::{self, evenly_spaced, token_stream, windows_of_ids, Domain};
use fluxmoe_data::LoadOptions;
use fluxmoe_model::{LoadedModel, MoeModel};

use crate::assets;

pub struct EvalLossArgs {
    /// `all` or a comma-separated list of corpus names.
    pub corpora: String,
    /// Held-out tokens per corpus (an upper bound; rounded down to whole windows).
    pub tokens: usize,
    pub seq: usize,
    pub batch: usize,
    pub held_out_every: usize,
    /// A `tokenizer.json` to use instead of the model's own.
    pub tokenizer: Option<PathBuf>,
    /// The corpora root (default `<cache>/corpora`); missing corpora are fetched into it.
    pub corpora_dir: Option<PathBuf>,
    /// Also report each corpus's first-choice share per expert.
    pub routing: bool,
}

/// The held-out loss of one corpus.
#[derive(Debug, Clone, PartialEq)]
pub struct CorpusLoss {
    pub name: String,
    pub n_windows: usize,
    /// Predicted tokens: `n_windows * (seq - 1)`.
    pub n_tokens: usize,
    /// Summed negative log-likelihood over the predicted tokens, in nats.
    pub nll_sum: f64,
    /// Per routed expert, the (token, MoE layer) pairs that ranked it first, over
    /// every position of the windows; empty unless asked for, or for a dense model.
    pub first_choices: Vec<usize>,
}

impl CorpusLoss {
    pub fn mean(&self) -> f64 {
        self.nll_sum / self.n_tokens as f64
    }
}

pub fn run(lm: &LoadedModel, args: &EvalLossArgs) -> Result<()> {
    if args.seq < 2 {
        bail!("--seq must be at least 2, got {}", args.seq);
    }
    if args.tokens < args.seq {
        bail!(
            "--tokens ({}) must be at least --seq ({})",
            args.tokens,
            args.seq
        );
    }
    if args.batch == 0 {
        bail!("--batch must be at least 1, got 0");
    }
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
    let root = match &args.corpora_dir {
        Some(dir) => dir.clone(),
        None => assets::corpora::default_root()?,
    };
    let domains = Domain::parse_list(&args.corpora)?;
    let model = MoeModel::new(&lm.checkpoint.config, &lm.checkpoint.params)?;
    let n_windows = args.tokens / args.seq;
    let width = domains
        .iter()
        .map(|d| d.to_string().len())
        .max()
        .unwrap_or(0)
        .max("overall".len())
        .max(10);
    // Every corpus is loaded, split and cut into windows before any is scored, so a
    // bad slice label or a too-short corpus is reported before minutes of scoring.
    let mut prepared = Vec::with_capacity(domains.len());
    for domain in domains {
        let dir = assets::corpora::ensure(domain.kind, &root)?;
        let loaded = corpora::load_dir(domain.kind, &dir, LoadOptions::STRICT)?;
        let split = domain.split(&loaded.corpus, args.held_out_every)?;
        let name = domain.to_string();
        tracing::info!(
            "{name}: {} documents ({} characters), {} held out ({} characters)",
            split.train.documents.len() + split.held_out.documents.len(),
            split.train.n_chars() + split.held_out.n_chars(),
            split.held_out.documents.len(),
            split.held_out.n_chars()
        );
        let ids = token_stream(tokenizer, &split.held_out.documents, usize::MAX)?;
        let windows = evenly_spaced(&windows_of_ids(&ids, args.seq, args.seq)?, n_windows);
        if windows.is_empty() {
            bail!(
                "`{name}`: its held-out split has {} tokens, fewer than one window of {}",
                ids.len(),
                args.seq
            );
        }
        prepared.push((name, windows));
    }
    println!(
        "{:<width$} {:>8} {:>8} {:>8} {:>10}",
        "corpus", "windows", "tokens", "loss", "ppl"
    );
    let mut rows = Vec::with_capacity(prepared.len());
    for (name, windows) in &prepared {
        let started = Instant::now();
        let row = windows_loss(&model, name, windows, args.batch, args.routing)
            .with_context(|| format!("scoring `{name}`"))?;
        print_row(&row, width);
        tracing::info!(
            "{}: {} tokens in {:.1}s",
            row.name,
            row.n_tokens,
            started.elapsed().as_secs_f64()
        );
        rows.push(row);
    }
    let overall = CorpusLoss {
        name: "overall".into(),
        n_windows: rows.iter().map(|r| r.n_windows).sum(),
        n_tokens: rows.iter().map(|r| r.n_tokens).sum(),
        nll_sum: rows.iter().map(|r| r.nll_sum).sum(),
        first_choices: Vec::new(),
    };
    print_row(&overall, width);
    if args.routing {
        print_routing(lm, &rows, width);
    }
    Ok(())
}

/// The routing table: one column per expert, named by the checkpoint's BTX domains
/// when it records them.
fn print_routing(lm: &LoadedModel, rows: &[CorpusLoss], width: usize) {
    let n_experts = rows
        .iter()
        .map(|r| r.first_choices.len())
        .max()
        .unwrap_or(0);
    if n_experts == 0 {
        println!("no MoE layers: no routing to report");
        return;
    }
    let recorded: Vec<String> = lm.checkpoint.config_json["fluxmoe_upcycle"]["domains"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let names: Vec<String> = if recorded.len() == n_experts {
        recorded
    } else {
        (0..n_experts).map(|e| format!("expert {e}")).collect()
    };
    println!("share of (token, MoE layer) pairs routed first to each expert:");
    for (e, name) in names.iter().enumerate() {
        println!("  e{e} = {name}");
    }
    let header: String = (0..n_experts)
        .map(|e| format!(" {:>6}", format!("e{e}")))
        .collect();
    println!("{:<width$}{header}", "corpus");
    for row in rows {
        let total = row.first_choices.iter().sum::<usize>().max(1) as f64;
        let cells: String = row
            .first_choices
            .iter()
            .map(|&c| format!(" {:>6.3}", c as f64 / total))
            .collect();
        println!("{:<width$}{cells}", row.name);
    }
}

fn print_row(row: &CorpusLoss, width: usize) {
    let loss = row.mean();
    println!(
        "{:<width$} {:>8} {:>8} {:>8.4} {:>10.2}",
        row.name,
        row.n_windows,
        row.n_tokens,
        loss,
        loss.exp()
    );
}

/// Scores equal-length windows in batches (the mean next-token loss of
/// [`MoeModel::loss`]); with `routing`, from the same forward, also counts each
/// expert's first choices ([`MoeModel::first_choice_counts`]).
pub fn windows_loss(
    model: &MoeModel,
    name: &str,
    windows: &[Vec<u32>],
    batch: usize,
    routing: bool,
) -> Result<CorpusLoss> {
    let seq = windows.first().map_or(0, Vec::len);
    let mut res = CorpusLoss {
        name: name.to_string(),
        n_windows: 0,
        n_tokens: 0,
        nll_sum: 0.0,
        first_choices: Vec::new(),
    };
    for chunk in windows.chunks(batch) {
        let flat: Vec<u32> = chunk.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(flat, (chunk.len(), seq), model.device())?;
        let hidden = if routing {
            let (hidden, routes) = model.forward_hidden_routed(&ids, None)?;
            let counts = model.first_choice_counts(&routes)?;
            res.first_choices.resize(counts.len(), 0);
            for (sum, c) in res.first_choices.iter_mut().zip(counts) {
                *sum += c;
            }
            hidden
        } else {
            model.forward_hidden(&ids, None, false)?.0
        };
        let (logp, _) = model.target_logprobs(&hidden, &ids, None)?;
        let n = chunk.len() * (seq - 1);
        res.n_windows += chunk.len();
        res.n_tokens += n;
        res.nll_sum -= logp.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    }
    Ok(res)
}
