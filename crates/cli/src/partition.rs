//! `fluxmoe data partition`: split a task's training examples among participants and
//! show per-participant sizes and group (label) histograms.

use anyhow::{Context, Result};
use fluxmoe_data::tasks::registry::{load_train_test, DataDirs};
use fluxmoe_data::{partition, GroupHistogram, LoadOptions, PartitionScheme};

pub fn run(
    task: &str,
    dirs: &DataDirs,
    participants: usize,
    scheme: &PartitionScheme,
    show: bool,
) -> Result<()> {
    let data = load_train_test(task, dirs, LoadOptions::STRICT, 0)
        .with_context(|| format!("loading task `{task}`"))?;
    let groups = data.train.groups();
    let parts = partition(scheme, &groups, participants)?;
    let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
    println!(
        "task {task}: {} training examples into {participants} participants ({scheme:?})",
        data.train.examples.len()
    );
    println!(
        "sizes: min {} / median {} / max {}",
        sizes.iter().min().unwrap_or(&0),
        {
            let mut s = sizes.clone();
            s.sort_unstable();
            s[s.len() / 2]
        },
        sizes.iter().max().unwrap_or(&0)
    );
    if show {
        print!("{}", GroupHistogram::new(&parts, &groups)?);
    }
    Ok(())
}
