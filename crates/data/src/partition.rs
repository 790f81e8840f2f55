//! Splitting one task's examples among federated participants, with the
//! semantics of Flower Datasets' partitioners (`flwr_datasets.partitioner`).
//!
//! Input: the group label of every example (`Task::groups`) and the number of
//! participants `K`; output: `K` lists of example indices, pairwise disjoint.
//! Distinct labels are taken in sorted order; every scheme shuffles each
//! participant's list at the end with the same seeded `StdRng`.
//!
//! - [`PartitionScheme::Iid`] (`IidPartitioner` over a shuffled dataset): shuffle
//!   all indices, cut them into `K` contiguous shards whose sizes differ by at
//!   most one (the first `n % K` shards get one more). Ignores labels.
//! - [`PartitionScheme::Dirichlet`] (`DirichletPartitioner`, Hsu et al. 2019 /
//!   Yurochkin et al. 2019): for each label `k`, draw `p ~ Dir(alpha * 1_K)`;
//!   with `self_balancing`, set `p_j = 0` for participants already holding more
//!   than `n / K` examples and renormalise; cut label `k`'s indices (dataset
//!   order) at `floor(cumsum(p) * n_k)`.
//!   If some participant ends with fewer than `min_partition_size` examples the
//!   whole draw is repeated, at most [`DIRICHLET_MAX_SAMPLINGS`] times in all
//!   (Flower gives up after its 11th failed draw too), then it is an error.
//!   Gamma variates use Marsaglia–Tsang in log space, so tiny `alpha` never
//!   underflows to an all-zero draw.
//! - [`PartitionScheme::Pathological`] (`PathologicalPartitioner`,
//!   `class_assignment_mode="first-deterministic"`, Li et al. 2021): participant
//!   `j` gets label `j % L` plus random distinct labels up to
//!   `groups_per_participant`; each label's indices are split into as many
//!   near-equal contiguous chunks as participants hold it.
//!   Labels no participant drew are left out (logged), so this scheme covers
//!   the data only when every label is drawn (always when `K >= L`).
//! - [`PartitionScheme::Natural`] (`NaturalIdPartitioner`): one participant per
//!   distinct label; `K` must equal the number of labels.
//!
//! Errors: `K = 0`, `K > n`, `alpha <= 0` (or not finite), labels missing where
//! a scheme needs them, impossible pathological settings, and exhausted
//! Dirichlet resampling.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};

/// How many Dirichlet draws are tried before giving up.
pub const DIRICHLET_MAX_SAMPLINGS: usize = 11;

/// Dirichlet partitioning settings (Flower's defaults: `min_partition_size = 10`,
/// `self_balancing = true`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DirichletConfig {
    /// Concentration: small values give few labels per participant.
    pub alpha: f64,
    /// Every participant must end with at least this many examples.
    pub min_partition_size: usize,
    /// Stop giving examples to participants above the average size.
    pub self_balancing: bool,
    pub seed: u64,
}

/// A partitioning scheme; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PartitionScheme {
    Iid {
        seed: u64,
    },
    Dirichlet(DirichletConfig),
    Pathological {
        groups_per_participant: usize,
        seed: u64,
    },
    Natural,
}

/// Example indices per participant.
pub type Partitions = Vec<Vec<usize>>;

/// Splits examples with labels `groups` among `n_participants`.
pub fn partition(
    scheme: &PartitionScheme,
    groups: &[Option<&str>],
    n_participants: usize,
) -> Result<Partitions> {
    let n = groups.len();
    if n_participants == 0 {
        return Err(Error::param("n_participants", "must be at least 1, got 0"));
    }
    if n_participants > n {
        return Err(Error::param(
            "n_participants",
            format!("{n_participants} participants for only {n} examples"),
        ));
    }
    match *scheme {
        PartitionScheme::Iid { seed } => Ok(iid(n, n_participants, seed)),
        PartitionScheme::Dirichlet(cfg) => dirichlet(&cfg, &labelled(groups)?, n_participants),
        PartitionScheme::Pathological {
            groups_per_participant,
            seed,
        } => pathological(
            &labelled(groups)?,
            n_participants,
            groups_per_participant,
            seed,
        ),
        PartitionScheme::Natural => natural(&labelled(groups)?, n_participants),
    }
}

/// Sorted distinct labels with their example indices (in dataset order).
struct Labelled {
    n: usize,
    by_label: BTreeMap<String, Vec<usize>>,
}

fn labelled(groups: &[Option<&str>]) -> Result<Labelled> {
    let mut by_label: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (idx, group) in groups.iter().enumerate() {
        let Some(group) = group else {
            return Err(Error::param(
                "groups",
                format!("example {idx} has no group label, which this partitioning needs"),
            ));
        };
        by_label.entry(group.to_string()).or_default().push(idx);
    }
    Ok(Labelled {
        n: groups.len(),
        by_label,
    })
}

fn iid(n: usize, n_participants: usize, seed: u64) -> Partitions {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    split_even(&order, n_participants)
}

/// Contiguous chunks whose sizes differ by at most one, larger ones first
/// (numpy's `array_split`).
fn split_even(items: &[usize], n_chunks: usize) -> Partitions {
    let (base, extra) = (items.len() / n_chunks, items.len() % n_chunks);
    let mut start = 0;
    (0..n_chunks)
        .map(|chunk| {
            let len = base + usize::from(chunk < extra);
            let part = items[start..start + len].to_vec();
            start += len;
            part
        })
        .collect()
}

fn dirichlet(cfg: &DirichletConfig, data: &Labelled, n_participants: usize) -> Result<Partitions> {
    if !(cfg.alpha > 0.0 && cfg.alpha.is_finite()) {
        return Err(Error::param(
            "dirichlet.alpha",
            format!("must be > 0 and finite, got {}", cfg.alpha),
        ));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let avg = data.n as f64 / n_participants as f64;
    let mut smallest = 0;
    for _ in 0..DIRICHLET_MAX_SAMPLINGS {
        let mut parts: Partitions = vec![Vec::new(); n_participants];
        for indices in data.by_label.values() {
            let mut props = sample_dirichlet(cfg.alpha, n_participants, &mut rng);
            if cfg.self_balancing {
                for (p, part) in props.iter_mut().zip(&parts) {
                    if part.len() as f64 > avg {
                        *p = 0.0;
                    }
                }
                let total: f64 = props.iter().sum();
                if total > 0.0 {
                    props.iter_mut().for_each(|p| *p /= total);
                } else {
                    // Every eligible share underflowed: spread evenly over them.
                    let eligible: Vec<bool> = parts.iter().map(|p| p.len() as f64 <= avg).collect();
                    let n_eligible = eligible.iter().filter(|&&e| e).count().max(1);
                    for (p, e) in props.iter_mut().zip(eligible) {
                        *p = if e { 1.0 / n_eligible as f64 } else { 0.0 };
                    }
                }
            }
            let mut cumsum = 0.0;
            let mut start = 0;
            for (j, p) in props.iter().enumerate() {
                cumsum += p;
                let end = if j + 1 == n_participants {
                    indices.len()
                } else {
                    ((cumsum * indices.len() as f64) as usize).clamp(start, indices.len())
                };
                parts[j].extend_from_slice(&indices[start..end]);
                start = end;
            }
        }
        smallest = parts.iter().map(Vec::len).min().unwrap_or(0);
        if smallest >= cfg.min_partition_size {
            for part in &mut parts {
                part.shuffle(&mut rng);
            }
            return Ok(parts);
        }
        tracing::debug!(
            "dirichlet draw left a participant with {smallest} < {} examples, redrawing",
            cfg.min_partition_size
        );
    }
    Err(Error::param(
        "dirichlet.min_partition_size",
        format!(
            "{} not reached after {DIRICHLET_MAX_SAMPLINGS} draws with alpha {} (last smallest partition: {smallest}); raise alpha or lower min_partition_size",
            cfg.min_partition_size, cfg.alpha
        ),
    ))
}

/// One draw of `Dir(alpha * 1_k)`, computed from log-Gamma variates.
fn sample_dirichlet(alpha: f64, k: usize, rng: &mut impl Rng) -> Vec<f64> {
    let logs: Vec<f64> = (0..k).map(|_| ln_gamma_variate(alpha, rng)).collect();
    let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = logs.iter().map(|l| (l - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    weights.into_iter().map(|w| w / total).collect()
}

/// `ln X` for `X ~ Gamma(shape, 1)`: Marsaglia–Tsang for `shape >= 1`, and
/// `Gamma(a) = Gamma(a + 1) * U^(1/a)` below 1.
fn ln_gamma_variate(shape: f64, rng: &mut impl Rng) -> f64 {
    if shape < 1.0 {
        let u = open_unit(rng);
        return ln_gamma_variate(shape + 1.0, rng) + u.ln() / shape;
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = standard_normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = open_unit(rng);
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d.ln() + v.ln();
        }
    }
}

/// Uniform in (0, 1].
fn open_unit(rng: &mut impl Rng) -> f64 {
    1.0 - rng.gen::<f64>()
}

/// Box–Muller.
fn standard_normal(rng: &mut impl Rng) -> f64 {
    let (u1, u2) = (open_unit(rng), rng.gen::<f64>());
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn pathological(
    data: &Labelled,
    n_participants: usize,
    groups_per_participant: usize,
    seed: u64,
) -> Result<Partitions> {
    let labels: Vec<&String> = data.by_label.keys().collect();
    let n_labels = labels.len();
    if groups_per_participant == 0 || groups_per_participant > n_labels {
        return Err(Error::param(
            "pathological.groups_per_participant",
            format!(
                "must be in 1..={n_labels} (the number of groups), got {groups_per_participant}"
            ),
        ));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Label indices (into `labels`) held by each participant.
    let mut held: Vec<Vec<usize>> = Vec::with_capacity(n_participants);
    for j in 0..n_participants {
        let mut mine = vec![j % n_labels];
        while mine.len() < groups_per_participant {
            let label = rng.gen_range(0..n_labels);
            if !mine.contains(&label) {
                mine.push(label);
            }
        }
        held.push(mine);
    }
    let mut parts: Partitions = vec![Vec::new(); n_participants];
    let mut unused = Vec::new();
    for (label_idx, label) in labels.iter().enumerate() {
        let holders: Vec<usize> = (0..n_participants)
            .filter(|&j| held[j].contains(&label_idx))
            .collect();
        let indices = &data.by_label[*label];
        if holders.is_empty() {
            unused.push(label.as_str());
            continue;
        }
        if holders.len() > indices.len() {
            return Err(Error::param(
                "pathological.groups_per_participant",
                format!(
                    "group `{label}` is drawn by {} participants but has only {} examples; lower groups_per_participant or n_participants",
                    holders.len(),
                    indices.len()
                ),
            ));
        }
        let chunks = split_even(indices, holders.len());
        for (holder, chunk) in holders.into_iter().zip(chunks) {
            parts[holder].extend(chunk);
        }
    }
    if !unused.is_empty() {
        tracing::warn!(
            "pathological partitioning leaves out groups no participant drew: {unused:?}"
        );
    }
    for part in &mut parts {
        part.shuffle(&mut rng);
    }
    Ok(parts)
}

fn natural(data: &Labelled, n_participants: usize) -> Result<Partitions> {
    if data.by_label.len() != n_participants {
        return Err(Error::param(
            "n_participants",
            format!(
                "natural partitioning gives one participant per group: {} groups, {n_participants} participants",
                data.by_label.len()
            ),
        ));
    }
    Ok(data.by_label.values().cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_even_matches_array_split() {
        let items: Vec<usize> = (0..7).collect();
        assert_eq!(
            split_even(&items, 3),
            vec![vec![0, 1, 2], vec![3, 4], vec![5, 6]]
        );
    }

    #[test]
    fn dirichlet_draw_sums_to_one_even_for_tiny_alpha() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        for alpha in [1e-3, 0.1, 1.0, 5.0] {
            let p = sample_dirichlet(alpha, 6, &mut rng);
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9);
            assert!(p.iter().all(|x| x.is_finite() && *x >= 0.0));
        }
    }

    #[test]
    fn gamma_variates_have_the_right_mean() {
        // E[Gamma(a, 1)] = a.
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for shape in [0.5, 2.0, 7.5] {
            let n = 20_000;
            let mean = (0..n)
                .map(|_| ln_gamma_variate(shape, &mut rng).exp())
                .sum::<f64>()
                / n as f64;
            assert!(
                (mean - shape).abs() < 0.05 * shape.max(1.0),
                "shape {shape}: mean {mean}"
            );
        }
    }
}
