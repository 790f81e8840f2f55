//! `fluxmoe bench train-step`: tokens/s of forward + backward + AdamW over the
//! trainable experts, and peak memory (RSS), median over several timed runs after
//! one warm-up step. `fluxmoe bench flux-merge` lives in [`flux_merge`].

pub mod flux_merge;

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use fluxmoe_model::config::Ffn;
use fluxmoe_model::keys::{dense_mlp_key, expert_key, Proj};
use fluxmoe_model::params::glob_match;
use fluxmoe_model::train::{train_step, AdamW, AdamWConfig, Batch};
use fluxmoe_model::{Checkpoint, MoeModel};
use rand::{Rng, SeedableRng};

pub struct TrainStepArgs {
    pub batch: usize,
    pub seq: usize,
    pub runs: usize,
    pub train: Option<String>,
}

pub fn train_step_bench(mut ck: Checkpoint, args: &TrainStepArgs) -> Result<()> {
    if args.batch == 0 || args.seq < 2 || args.runs == 0 {
        bail!("--batch and --runs must be > 0 and --seq >= 2");
    }
    let cfg = ck.config.clone();
    // Default: every routed expert (every dense MLP for a dense model).
    let mut default_names = Vec::new();
    for (l, ffn) in cfg.layers.iter().enumerate() {
        match ffn {
            Ffn::Moe(m) => {
                for e in 0..m.n_experts {
                    default_names.extend(Proj::ALL.map(|p| expert_key(cfg.arch, l, e, p)));
                }
            }
            Ffn::Dense { .. } if cfg.moe_layers().is_empty() => {
                default_names.extend(Proj::ALL.map(|p| dense_mlp_key(l, p)));
            }
            Ffn::Dense { .. } => {}
        }
    }
    let n = ck.params.set_trainable(|name| match &args.train {
        Some(pattern) => glob_match(pattern, name),
        None => default_names.iter().any(|d| d == name),
    })?;
    if n == 0 {
        bail!("no parameter matches the --train pattern");
    }
    let trainable_elems: usize = ck
        .params
        .trainable()
        .iter()
        .map(|(_, v)| v.elem_count())
        .sum();
    let model = MoeModel::new(&cfg, &ck.params)?;
    let mut opt = AdamW::new(ck.params.trainable(), AdamWConfig::default())?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let ids: Vec<u32> = (0..args.batch * args.seq)
        .map(|_| rng.gen_range(0..cfg.vocab_size as u32))
        .collect();
    let batch = Batch {
        input_ids: Tensor::from_vec(ids, (args.batch, args.seq), &Device::Cpu)?,
        attention_mask: None,
        loss_mask: None,
    };
    train_step(&model, &mut opt, &batch, Some(1.0))?; // warm-up
    let mut times = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        let start = Instant::now();
        train_step(&model, &mut opt, &batch, Some(1.0))?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let tokens = (args.batch * args.seq) as f64;
    println!(
        "trainable tensors     {n} ({:.2}M parameters)",
        trainable_elems as f64 / 1e6
    );
    println!("batch x seq           {} x {}", args.batch, args.seq);
    println!(
        "step time (median)    {:.1} ms over {} runs (min {:.1}, max {:.1})",
        median * 1e3,
        args.runs,
        times[0] * 1e3,
        times[times.len() - 1] * 1e3
    );
    println!("throughput            {:.0} tokens/s", tokens / median);
    match peak_rss_bytes() {
        Some(b) => println!(
            "peak RSS              {:.1} MiB",
            b as f64 / (1u64 << 20) as f64
        ),
        None => println!("peak RSS              unavailable on this platform"),
    }
    Ok(())
}

/// Peak resident set size of this process (`VmHWM` in `/proc/self/status`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
