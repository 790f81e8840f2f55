//! `fluxmoe upcycle`: a dense Llama model (folder or GGUF) → an MoE folder (Mixtral
//! format; LLaMA-MoE format for `--method split`).
//!
//! `--method sparse` copies the dense FFN into every expert
//! (`fluxmoe_model::upcycle::sparse`); `--method split` partitions its neurons
//! (`fluxmoe_model::upcycle::split`). `--method btx` (Branch-Train-MiX,
//! `fluxmoe_model::upcycle::btx`) trains one expert per domain: this module loads the
//! corpus of each of `--domains` (fetching it on first use), keeps the domain's
//! training split (the documents `eval-loss` does not hold out; for a slice such as
//! `math:arithmetic`, those of the slice, `fluxmoe_data::corpora::domain`), shuffles
//! those documents with the seed, tokenises them in that order joined by blank lines
//! until enough tokens are collected, and cuts them into non-overlapping windows of
//! `--seq` ids; the model crate does the rest.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use fluxmoe_data::corpora::{self, token_stream, windows_of_ids, Domain, HELD_OUT_EVERY};
use fluxmoe_data::LoadOptions;
use fluxmoe_model::source::save_tokenizer_files;
use fluxmoe_model::upcycle::{
    btx_upcycle, sparse_upcycle, split_upcycle, BtxSpec, DomainData, RouterInit, SparseUpcycle,
    SplitRouter, SplitUpcycle,
};
use fluxmoe_model::{checkpoint, Checkpoint, LoadedModel};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::assets;

pub fn run_sparse(dense: &LoadedModel, spec: &SparseUpcycle, out: &Path) -> Result<()> {
    let moe = sparse_upcycle(&dense.checkpoint, spec)?;
    save(dense, &moe, out)?;
    eprintln!(
        "wrote {} ({} experts, top-{}, sparse upcycling)",
        out.display(),
        spec.n_experts,
        spec.top_k
    );
    Ok(())
}

/// Calibration text for a centroid router (`--method split --router centroid`).
pub struct CalibrationArgs {
    pub corpora: Vec<Domain>,
    /// Windows per corpus.
    pub windows: usize,
    pub seq: usize,
    pub batch: usize,
    pub logit_rms: f64,
    pub corpora_dir: Option<PathBuf>,
}

/// `spec.router` is replaced by a centroid router over `calibration` when it is given.
pub fn run_split(
    dense: &LoadedModel,
    spec: &SplitUpcycle,
    calibration: Option<&CalibrationArgs>,
    out: &Path,
) -> Result<()> {
    let started = Instant::now();
    let mut spec = spec.clone();
    if let Some(c) = calibration {
        if c.windows == 0 {
            bail!("--probe-windows must be at least 1, got 0");
        }
        spec.router = SplitRouter::Centroid {
            calibration: domain_windows(
                dense,
                &c.corpora,
                c.corpora_dir.as_deref(),
                c.windows,
                c.seq,
                spec.seed,
            )?,
            batch_size: c.batch,
            logit_rms: c.logit_rms,
        };
    }
    let moe = split_upcycle(&dense.checkpoint, &spec)?;
    save(dense, &moe, out)?;
    eprintln!(
        "wrote {} ({} experts, top-{}, {} neuron split, {} router, LLaMA-MoE format) in {:.0} s",
        out.display(),
        spec.n_experts,
        spec.top_k,
        spec.partition.name(),
        spec.router.name(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The `--method btx` options.
pub struct BtxArgs {
    /// One domain per expert, in expert order.
    pub domains: Vec<Domain>,
    pub n_experts: usize,
    pub top_k: usize,
    pub steps: usize,
    pub router_steps: usize,
    pub seq: usize,
    pub batch: usize,
    pub lr: f64,
    pub router_lr: f64,
    pub probe_windows: usize,
    pub router_logit_rms: f64,
    pub router_init: RouterInit,
    pub seed: u64,
    /// The corpora root (default `<cache>/corpora`); missing corpora are fetched into it.
    pub corpora_dir: Option<PathBuf>,
}

/// Parses `--domains`: comma-separated domains (`NAME` or `NAME:LABEL[+LABEL...]`,
/// [`Domain::parse`]) that share no documents; with `n_experts`, one per expert.
pub fn parse_domains(spec: &str, n_experts: Option<usize>) -> Result<Vec<Domain>> {
    let mut domains: Vec<Domain> = Vec::new();
    for part in spec.split(',') {
        let domain = Domain::parse(part).map_err(|e| anyhow::anyhow!("--domains: {e}"))?;
        if let Some(other) = domains.iter().find(|d| d.overlaps(&domain)) {
            if *other == domain {
                bail!("--domains: `{domain}` is listed twice; every expert needs its own domain");
            }
            bail!("--domains: `{other}` and `{domain}` share documents; every expert needs its own domain");
        }
        domains.push(domain);
    }
    if let Some(n_experts) = n_experts.filter(|&n| domains.len() != n) {
        bail!(
            "--domains lists {} domains ({spec}) but --experts is {n_experts}: btx trains one expert per domain",
            domains.len()
        );
    }
    Ok(domains)
}

pub fn run_btx(dense: &LoadedModel, args: &BtxArgs, out: &Path) -> Result<()> {
    if args.batch == 0 {
        bail!("--batch must be at least 1, got 0");
    }
    let started = Instant::now();
    // Enough windows that no window repeats within the expert or the router phase.
    let n_windows = (args.steps * args.batch)
        .max((args.router_steps * args.batch).div_ceil(args.n_experts))
        .max(args.probe_windows)
        .max(1);
    let domains = domain_windows(
        dense,
        &args.domains,
        args.corpora_dir.as_deref(),
        n_windows,
        args.seq,
        args.seed,
    )?;
    for (idx, d) in domains.iter().enumerate() {
        tracing::info!(
            "btx: expert {idx} trains on `{}`: {} windows of {} tokens",
            d.name,
            d.windows.len(),
            args.seq
        );
    }
    let spec = BtxSpec {
        n_experts: args.n_experts,
        top_k: args.top_k,
        expert_steps: args.steps,
        router_steps: args.router_steps,
        batch_size: args.batch,
        expert_lr: args.lr,
        router_lr: args.router_lr,
        max_grad_norm: 1.0,
        probe_windows: args.probe_windows,
        router_logit_rms: args.router_logit_rms,
        router_init: args.router_init,
        seed: args.seed,
    };
    let res = btx_upcycle(&dense.checkpoint, &domains, &spec)?;
    save(dense, &res.checkpoint, out)?;
    println!(
        "per domain, on its {} probe windows (training split): loss, and share of (token, layer) pairs routed first to its expert",
        args.probe_windows
    );
    let width = res
        .report
        .domains
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(0)
        .max(10);
    println!(
        "{:<width$} {:>11} {:>11} {:>12} {:>12}",
        "domain", "dense loss", "expert loss", "own (init)", "own (final)"
    );
    for r in &res.report.domains {
        println!(
            "{:<width$} {:>11.4} {:>11.4} {:>12.3} {:>12.3}",
            r.name, r.dense_loss, r.expert_loss, r.own_expert_share_init, r.own_expert_share_final
        );
    }
    if let Some((first, last)) = res.report.router_loss {
        println!("router training loss {first:.4} -> {last:.4}");
    }
    eprintln!(
        "wrote {} ({} experts, top-{}, Branch-Train-MiX) in {:.0} s",
        out.display(),
        args.n_experts,
        args.top_k,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `n_windows` windows of `seq` ids from the training split of each domain (its
/// corpus fetched into `corpora_dir`, default `<cache>/corpora`, when missing): its
/// documents shuffled with `seed` (another stream per domain), joined and cut in order.
fn domain_windows(
    dense: &LoadedModel,
    sources: &[Domain],
    corpora_dir: Option<&Path>,
    n_windows: usize,
    seq: usize,
    seed: u64,
) -> Result<Vec<DomainData>> {
    if seq < 2 {
        bail!("--seq must be at least 2, got {seq}");
    }
    let tokenizer = dense
        .tokenizer
        .as_ref()
        .context("the corpora need tokenising, but the model has no tokenizer")?;
    let root = match corpora_dir {
        Some(dir) => dir.to_path_buf(),
        None => assets::corpora::default_root()?,
    };
    let mut domains = Vec::with_capacity(sources.len());
    for (idx, domain) in sources.iter().enumerate() {
        let dir = assets::corpora::ensure(domain.kind, &root)?;
        let loaded = corpora::load_dir(domain.kind, &dir, LoadOptions::STRICT)?;
        let mut docs = domain
            .split(&loaded.corpus, HELD_OUT_EVERY)?
            .train
            .documents;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ ((idx as u64) << 32));
        docs.shuffle(&mut rng);
        let ids = token_stream(tokenizer, &docs, n_windows * seq)?;
        let windows = windows_of_ids(&ids, seq, seq)?;
        if windows.is_empty() {
            bail!(
                "domain `{domain}`: its training split has {} tokens, fewer than one window of {seq}",
                ids.len(),
            );
        }
        if windows.len() < n_windows {
            tracing::warn!(
                "domain `{domain}`: {} training windows, fewer than the {n_windows} asked for; some repeat",
                windows.len()
            );
        }
        domains.push(DomainData {
            name: domain.to_string(),
            windows,
        });
    }
    Ok(domains)
}

/// Writes the checkpoint and the dense model's tokenizer files.
fn save(dense: &LoadedModel, moe: &Checkpoint, out: &Path) -> Result<()> {
    checkpoint::save_dir(out, &moe.config_json, &moe.params, &moe.layout)
        .with_context(|| format!("writing {}", out.display()))?;
    if let Some(tok) = &dense.tokenizer {
        save_tokenizer_files(out, tok, &dense.eos_ids, dense.chat_template.as_deref())?;
    }
    Ok(())
}
