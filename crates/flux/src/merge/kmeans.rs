//! Grouped cosine k-means, FLUX §5: the non-tuning experts of every layer are clustered
//! into that layer's merged slots, all layers at once.
//!
//! Points are normalised to unit length (a zero vector stays zero). Each iteration builds
//! one fused similarity matrix `S` `[N, C]` over all `C = Σ_g k_g` centroids,
//! `S_ic = ⟨x_i, μ_c⟩ / |μ_c|`, with `S_ic = −∞` where centroid `c` belongs to another
//! group than point `i`, so a point can only join a centroid of its own layer; each point
//! takes the argmax (cosine distance `1 − S_ic`). Centroids are the means of their members.

use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::{Error, Result};

/// Cosine k-means of `points` (`[N][dim]`) where point `i` belongs to group `group[i]` and
/// group `g` gets `k[g]` centroids; returns per point its cluster index local to its group.
///
/// - Initialisation: k-means++ per group (first centre uniform, then each next one drawn with
///   probability ∝ `(1 − cos)²` to the nearest chosen centre), from a `StdRng` seeded with
///   `seed ^ (g · 0x9E3779B97F4A7C15)`, so one group's result does not depend on the others.
/// - At most `max_iters` assignment passes (at least one), stopping early once no assignment
///   changes. After each pass an empty cluster takes the point of its group farthest from its
///   own centroid among clusters with more than one member (lowest index on ties).
/// - A group with `k[g] ≥ n_g` points puts point `j` of the group (in input order) in cluster `j`.
///
/// Every index `0..min(k[g], n_g)` is used. Errors with [`Error::Input`] when lengths differ,
/// a group index is out of range of `k`, a group with points has `k[g] = 0`, or a coordinate
/// is not finite.
pub fn cosine_kmeans(
    points: &[Vec<f64>],
    group: &[usize],
    k: &[usize],
    seed: u64,
    max_iters: usize,
) -> Result<Vec<usize>> {
    let n = points.len();
    if group.len() != n {
        return Err(Error::Input(format!(
            "k-means: {n} points but {} group labels",
            group.len()
        )));
    }
    let dim = points.first().map_or(0, Vec::len);
    let mut members = vec![Vec::new(); k.len()];
    for (i, (p, &g)) in points.iter().zip(group).enumerate() {
        if p.len() != dim || p.iter().any(|v| !v.is_finite()) {
            return Err(Error::Input(format!(
                "k-means: point {i} has {} finite coordinates of {}, expected {dim} finite",
                p.iter().filter(|v| v.is_finite()).count(),
                p.len()
            )));
        }
        let Some(m) = members.get_mut(g) else {
            return Err(Error::Input(format!(
                "k-means: point {i} is in group {g} but only {} groups have a k",
                k.len()
            )));
        };
        m.push(i);
    }
    let unit: Vec<Vec<f64>> = points.iter().map(|p| normalised(p)).collect();
    let mut res = vec![0; n];
    // Groups that need clustering, and their centroids laid out one group after another.
    let mut centroid_group = Vec::new();
    let mut offset = vec![0; k.len()];
    let mut centroids = Vec::new();
    for (g, m) in members.iter().enumerate() {
        if m.is_empty() {
            continue;
        }
        if k[g] == 0 {
            return Err(Error::Input(format!(
                "k-means: group {g} has {} points but 0 clusters",
                m.len()
            )));
        }
        if k[g] >= m.len() {
            for (local, &i) in m.iter().enumerate() {
                res[i] = local;
            }
            continue;
        }
        offset[g] = centroids.len();
        let mut rng = StdRng::seed_from_u64(seed ^ (g as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for i in kmeans_pp(&unit, m, k[g], &mut rng) {
            centroids.push(unit[i].clone());
            centroid_group.push(g);
        }
    }
    let active: Vec<usize> = (0..n)
        .filter(|&i| k[group[i]] < members[group[i]].len())
        .collect();
    let mut assign = vec![usize::MAX; n];
    for _iter in 0..max_iters.max(1) {
        let sim = masked_similarity(&unit, group, &centroids, &centroid_group);
        let mut next = assign.clone();
        for &i in &active {
            next[i] = argmax(&sim[i]);
        }
        fill_empty(&mut next, &sim, &active, &centroid_group);
        let changed = next != assign;
        assign = next;
        for (c, centroid) in centroids.iter_mut().enumerate() {
            centroid.iter_mut().for_each(|v| *v = 0.0);
            for &i in active.iter().filter(|&&i| assign[i] == c) {
                centroid.iter_mut().zip(&unit[i]).for_each(|(a, b)| *a += b);
            }
        }
        if !changed {
            break;
        }
    }
    for &i in &active {
        res[i] = assign[i] - offset[group[i]];
    }
    Ok(res)
}

/// The fused `[N, C]` cosine-similarity matrix of unit (or zero) points against centroids,
/// `−∞` wherever the centroid's group differs from the point's. A zero centroid or point has
/// similarity 0 (distance 1) to everything of its group.
pub fn masked_similarity(
    unit: &[Vec<f64>],
    group: &[usize],
    centroids: &[Vec<f64>],
    centroid_group: &[usize],
) -> Vec<Vec<f64>> {
    let centroids: Vec<Vec<f64>> = centroids.iter().map(|c| normalised(c)).collect();
    unit.iter()
        .zip(group)
        .map(|(x, &g)| {
            centroids
                .iter()
                .zip(centroid_group)
                .map(|(c, &cg)| {
                    if cg == g {
                        dot(x, c)
                    } else {
                        f64::NEG_INFINITY
                    }
                })
                .collect()
        })
        .collect()
}

/// k-means++ seeds for the points `m` of one group: `count` distinct point indices.
fn kmeans_pp(unit: &[Vec<f64>], m: &[usize], count: usize, rng: &mut StdRng) -> Vec<usize> {
    let mut chosen = vec![m[rng.gen_range(0..m.len())]];
    let mut nearest: Vec<f64> = m.iter().map(|_| f64::INFINITY).collect();
    while chosen.len() < count {
        let last = &unit[chosen[chosen.len() - 1]];
        for (d, &i) in nearest.iter_mut().zip(m) {
            *d = d.min((1.0 - dot(&unit[i], last)).max(0.0));
        }
        let weight: Vec<f64> = nearest
            .iter()
            .zip(m)
            .map(|(d, i)| if chosen.contains(i) { 0.0 } else { d * d })
            .collect();
        let total: f64 = weight.iter().sum();
        let pick = if total > 0.0 {
            let mut target = rng.gen::<f64>() * total;
            let pos = weight.iter().position(|&w| {
                target -= w;
                w > 0.0 && target < 0.0
            });
            // Rounding can leave `target` a hair above 0: take the last candidate then.
            pos.unwrap_or_else(|| weight.iter().rposition(|&w| w > 0.0).unwrap_or(0))
        } else {
            // Every remaining point duplicates a centre: draw one of them uniformly.
            let free: Vec<usize> = (0..m.len()).filter(|&j| !chosen.contains(&m[j])).collect();
            free[rng.gen_range(0..free.len())]
        };
        chosen.push(m[pick]);
    }
    chosen
}

/// Gives every empty centroid the point (of its group, in a cluster of two or more) farthest
/// from its own centroid, so that every centroid has at least one member.
fn fill_empty(assign: &mut [usize], sim: &[Vec<f64>], active: &[usize], centroid_group: &[usize]) {
    let mut size = vec![0usize; centroid_group.len()];
    for &i in active {
        size[assign[i]] += 1;
    }
    for c in 0..centroid_group.len() {
        if size[c] > 0 {
            continue;
        }
        let far = active
            .iter()
            .copied()
            .filter(|&i| sim[i][c] > f64::NEG_INFINITY && size[assign[i]] > 1)
            .min_by(|&a, &b| sim[a][assign[a]].total_cmp(&sim[b][assign[b]]));
        if let Some(i) = far {
            size[assign[i]] -= 1;
            assign[i] = c;
            size[c] = 1;
        }
    }
}

/// Index of the largest entry, the first one on ties.
fn argmax(row: &[f64]) -> usize {
    (0..row.len()).fold(0, |best, c| if row[c] > row[best] { c } else { best })
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn normalised(p: &[f64]) -> Vec<f64> {
    let norm = dot(p, p).sqrt();
    if norm > 0.0 {
        p.iter().map(|v| v / norm).collect()
    } else {
        p.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two direction bundles with very different lengths: around x and around y.
    fn two_bundles() -> Vec<Vec<f64>> {
        vec![
            vec![10.0, 0.5, 0.1],
            vec![0.2, 1.0, 0.0],
            vec![1.0, 0.1, -0.1],
            vec![0.3, 30.0, 1.0],
            vec![100.0, -2.0, 3.0],
            vec![-0.1, 0.7, 0.05],
        ]
    }

    fn clusters_are_valid(res: &[usize], group: &[usize], k: &[usize]) {
        for (g, &k_g) in k.iter().enumerate() {
            let local: Vec<usize> = (0..res.len())
                .filter(|&i| group[i] == g)
                .map(|i| res[i])
                .collect();
            for c in 0..k_g.min(local.len()) {
                assert!(local.contains(&c), "group {g} cluster {c} unused: {res:?}");
            }
            assert!(local.iter().all(|&c| c < k_g), "{res:?}");
        }
    }

    #[test]
    fn separates_two_directions_whatever_the_seed() {
        let points = two_bundles();
        for seed in 0..20 {
            let res = cosine_kmeans(&points, &[0; 6], &[2], seed, 50).unwrap();
            let x = res[0];
            assert_eq!(res, [x, 1 - x, x, 1 - x, x, 1 - x], "seed {seed}");
        }
    }

    #[test]
    fn groups_are_clustered_apart() {
        // Group 0 holds only x-like points, group 1 both directions; the fused matrix masks
        // group 0's centroid out of group 1's rows and vice versa.
        let mut points = two_bundles();
        points.extend([
            vec![5.0, 0.0, 0.0],
            vec![7.0, 0.1, 0.0],
            vec![3.0, -0.1, 0.2],
        ]);
        let group = [1, 1, 1, 1, 1, 1, 0, 0, 0];
        let res = cosine_kmeans(&points, &group, &[1, 2], 7, 50).unwrap();
        assert_eq!(&res[6..], &[0, 0, 0]);
        let x = res[0];
        assert_eq!(&res[..6], &[x, 1 - x, x, 1 - x, x, 1 - x]);
        let sim = masked_similarity(
            &points,
            &group,
            &[vec![1.0, 0.0, 0.0], vec![0.0, 2.0, 0.0]],
            &[0, 1],
        );
        for (i, row) in sim.iter().enumerate() {
            let own = if group[i] == 0 { 0 } else { 1 };
            assert_eq!(row[1 - own], f64::NEG_INFINITY);
            assert!(row[own].is_finite());
        }
        assert_eq!(sim[6][0], 5.0);
    }

    #[test]
    fn deterministic_for_a_seed() {
        let points: Vec<Vec<f64>> = (0..40)
            .map(|i| {
                let t = i as f64 * 0.7;
                vec![t.sin(), t.cos(), (2.0 * t).sin(), 0.1 * t]
            })
            .collect();
        let group: Vec<usize> = (0..40).map(|i| i % 3).collect();
        let k = [3, 4, 2];
        let a = cosine_kmeans(&points, &group, &k, 42, 100).unwrap();
        assert_eq!(a, cosine_kmeans(&points, &group, &k, 42, 100).unwrap());
        clusters_are_valid(&a, &group, &k);
        for seed in 0..10 {
            let res = cosine_kmeans(&points, &group, &k, seed, 1).unwrap();
            clusters_are_valid(&res, &group, &k);
        }
    }

    #[test]
    fn k_at_least_n_and_zero_vectors() {
        let points = vec![
            vec![1.0, 0.0],
            vec![0.0, 0.0],
            vec![1.0, 0.0],
            vec![2.0, 0.0],
        ];
        let res = cosine_kmeans(&points, &[0, 0, 1, 1], &[5, 2], 3, 10).unwrap();
        assert_eq!(res, vec![0, 1, 0, 1]);
        // Duplicates and a zero vector still fill every cluster.
        let points = vec![
            vec![0.0, 0.0],
            vec![1.0, 0.0],
            vec![2.0, 0.0],
            vec![0.0, 0.0],
        ];
        for seed in 0..10 {
            let res = cosine_kmeans(&points, &[0; 4], &[3], seed, 10).unwrap();
            clusters_are_valid(&res, &[0; 4], &[3]);
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let p = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        assert!(matches!(
            cosine_kmeans(&p, &[0], &[1], 0, 5),
            Err(Error::Input(_))
        ));
        assert!(matches!(
            cosine_kmeans(&p, &[0, 1], &[1], 0, 5),
            Err(Error::Input(_))
        ));
        assert!(matches!(
            cosine_kmeans(&p, &[0, 0], &[0], 0, 5),
            Err(Error::Input(_))
        ));
        let nan = vec![vec![1.0, f64::NAN], vec![0.0, 1.0]];
        assert!(matches!(
            cosine_kmeans(&nan, &[0, 0], &[1], 0, 5),
            Err(Error::Input(_))
        ));
    }
}
