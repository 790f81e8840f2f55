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

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use fluxmoe_data::corpora::{self, evenly_spaced, token_stream, windows_of_ids, CorpusKind};
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
    let kinds = CorpusKind::parse_list(&args.corpora)?;
    let model = MoeModel::new(&lm.checkpoint.config, &lm.checkpoint.params)?;
    let n_windows = args.tokens / args.seq;
    println!(
        "{:<10} {:>8} {:>8} {:>8} {:>10}",
        "corpus", "windows", "tokens", "loss", "ppl"
    );
    let mut rows = Vec::new();
    for kind in kinds {
        let started = Instant::now();
        let dir = assets::corpora::ensure(kind, &root)?;
        let loaded = corpora::load_dir(kind, &dir, LoadOptions::STRICT)?;
        let split = loaded.corpus.split(args.held_out_every)?;
        tracing::info!(
            "{}: {} documents ({} characters), {} held out ({} characters)",
            kind.name(),
            loaded.corpus.documents.len(),
            loaded.corpus.n_chars(),
            split.held_out.documents.len(),
            split.held_out.n_chars()
        );
        let ids = token_stream(tokenizer, &split.held_out.documents, usize::MAX)?;
        let windows = evenly_spaced(&windows_of_ids(&ids, args.seq, args.seq)?, n_windows);
        if windows.is_empty() {
            bail!(
                "corpus `{}`: its held-out split has {} tokens, fewer than one window of {}",
                kind.name(),
                ids.len(),
                args.seq
            );
        }
        let row = windows_loss(&model, kind.name(), &windows, args.batch)
            .with_context(|| format!("scoring corpus `{}`", kind.name()))?;
        print_row(&row);
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
    };
    print_row(&overall);
    Ok(())
}

fn print_row(row: &CorpusLoss) {
    let loss = row.mean();
    println!(
        "{:<10} {:>8} {:>8} {:>8.4} {:>10.2}",
        row.name,
        row.n_windows,
        row.n_tokens,
        loss,
        loss.exp()
    );
}

/// Scores equal-length windows in batches with [`MoeModel::loss`].
pub fn windows_loss(
    model: &MoeModel,
    name: &str,
    windows: &[Vec<u32>],
    batch: usize,
) -> Result<CorpusLoss> {
    let seq = windows.first().map_or(0, Vec::len);
    let mut res = CorpusLoss {
        name: name.to_string(),
        n_windows: 0,
        n_tokens: 0,
        nll_sum: 0.0,
    };
    for chunk in windows.chunks(batch) {
        let flat: Vec<u32> = chunk.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(flat, (chunk.len(), seq), model.device())?;
        let loss = model.loss(&ids, None, None)?.to_scalar::<f32>()? as f64;
        let n = chunk.len() * (seq - 1);
        res.n_windows += chunk.len();
        res.n_tokens += n;
        res.nll_sum += loss * n as f64;
    }
    Ok(res)
}
