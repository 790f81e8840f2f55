//! Partitioning properties over many seeds and sizes: disjoint, covering,
//! seeded, plus each scheme's own guarantees and failure modes.

use fluxmoe_data::{partition, DirichletConfig, Error, GroupHistogram, PartitionScheme};

/// `n` examples over `n_groups` labels with skewed sizes (label g gets weight g+1).
fn labels(n: usize, n_groups: usize) -> Vec<String> {
    let total_weight: usize = (1..=n_groups).sum();
    (0..n)
        .map(|i| {
            let mut r = (i * 7919) % total_weight;
            let mut g = 0;
            while r > g {
                r -= g + 1;
                g += 1;
            }
            format!("g{g:02}")
        })
        .collect()
}

fn as_refs(labels: &[String]) -> Vec<Option<&str>> {
    labels.iter().map(|s| Some(s.as_str())).collect()
}

fn assert_disjoint(parts: &[Vec<usize>], n: usize, must_cover: bool) {
    let mut seen = vec![false; n];
    for part in parts {
        for &idx in part {
            assert!(idx < n, "index {idx} out of range");
            assert!(!seen[idx], "index {idx} in two partitions");
            seen[idx] = true;
        }
    }
    if must_cover {
        assert!(seen.iter().all(|&s| s), "not every example is assigned");
    }
}

fn dirichlet(alpha: f64, min_partition_size: usize, seed: u64) -> PartitionScheme {
    PartitionScheme::Dirichlet(DirichletConfig {
        alpha,
        min_partition_size,
        self_balancing: true,
        seed,
    })
}

#[test]
fn iid_is_balanced_disjoint_covering_and_seeded() {
    for n in [1usize, 7, 100, 1001] {
        for k in [1usize, 2, 3, 10] {
            if k > n {
                continue;
            }
            for seed in 0..5 {
                let groups = vec![None; n];
                let parts = partition(&PartitionScheme::Iid { seed }, &groups, k).unwrap();
                assert_eq!(parts.len(), k);
                assert_disjoint(&parts, n, true);
                let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
                assert!(
                    sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
                    "{sizes:?}"
                );
                assert_eq!(
                    parts,
                    partition(&PartitionScheme::Iid { seed }, &groups, k).unwrap()
                );
            }
        }
    }
    let groups = vec![None; 100];
    assert_ne!(
        partition(&PartitionScheme::Iid { seed: 0 }, &groups, 4).unwrap(),
        partition(&PartitionScheme::Iid { seed: 1 }, &groups, 4).unwrap()
    );
}

#[test]
fn dirichlet_is_disjoint_covering_seeded_and_respects_min_size() {
    for (n, n_groups, k) in [(200usize, 4usize, 5usize), (1000, 10, 8), (300, 3, 3)] {
        let owned = labels(n, n_groups);
        let groups = as_refs(&owned);
        for seed in 0..6 {
            for alpha in [0.3, 1.0, 100.0] {
                let scheme = dirichlet(alpha, 5, seed);
                let parts = partition(&scheme, &groups, k).unwrap();
                assert_eq!(parts.len(), k);
                assert_disjoint(&parts, n, true);
                assert!(parts.iter().all(|p| p.len() >= 5));
                assert_eq!(parts, partition(&scheme, &groups, k).unwrap());
            }
        }
    }
}

#[test]
fn dirichlet_alpha_controls_skew() {
    // With a huge alpha every participant gets close to 1/K of every label;
    // with a tiny alpha most participants hold few labels.
    let owned = labels(2000, 5);
    let groups = as_refs(&owned);
    let n_labels_held = |parts: &[Vec<usize>]| -> f64 {
        let h = GroupHistogram::new(parts, &groups).unwrap();
        let held: usize = h
            .counts
            .iter()
            .map(|row| row.iter().filter(|&&c| c > 0).count())
            .sum();
        held as f64 / parts.len() as f64
    };
    let flat = partition(&dirichlet(1e4, 0, 3), &groups, 4).unwrap();
    let skewed = partition(&dirichlet(0.05, 0, 3), &groups, 4).unwrap();
    assert_eq!(n_labels_held(&flat), 5.0);
    assert!(n_labels_held(&skewed) < 4.0, "{}", n_labels_held(&skewed));
    let sizes: Vec<usize> = flat.iter().map(Vec::len).collect();
    assert!(sizes.iter().all(|&s| (440..=560).contains(&s)), "{sizes:?}");
}

#[test]
fn dirichlet_errors() {
    let owned = labels(50, 3);
    let groups = as_refs(&owned);
    for alpha in [0.0, -1.0, f64::NAN] {
        let err = partition(&dirichlet(alpha, 0, 0), &groups, 2).unwrap_err();
        assert!(err.to_string().starts_with("`dirichlet.alpha`"), "{err}");
    }
    // 50 examples cannot give 5 participants 11 each.
    let err = partition(&dirichlet(1.0, 11, 0), &groups, 5).unwrap_err();
    assert!(
        err.to_string().contains("not reached after 11 draws"),
        "{err}"
    );
    let mut missing = groups.clone();
    missing[7] = None;
    let err = partition(&dirichlet(1.0, 0, 0), &missing, 2).unwrap_err();
    assert!(
        err.to_string().contains("example 7 has no group label"),
        "{err}"
    );
}

#[test]
fn common_errors() {
    let groups = vec![Some("a"); 3];
    let err = partition(&PartitionScheme::Iid { seed: 0 }, &groups, 0).unwrap_err();
    assert!(matches!(err, Error::Param { .. }));
    let err = partition(&PartitionScheme::Iid { seed: 0 }, &groups, 4).unwrap_err();
    assert_eq!(
        err.to_string(),
        "`n_participants`: 4 participants for only 3 examples"
    );
}

#[test]
fn pathological_gives_exact_group_counts() {
    for seed in 0..10 {
        for (n_groups, k, per) in [(4usize, 4usize, 2usize), (10, 12, 3), (5, 8, 1), (6, 3, 2)] {
            let owned = labels(600, n_groups);
            let groups = as_refs(&owned);
            let scheme = PartitionScheme::Pathological {
                groups_per_participant: per,
                seed,
            };
            let parts = partition(&scheme, &groups, k).unwrap();
            // Coverage holds whenever every label is drawn, guaranteed for k >= n_groups.
            assert_disjoint(&parts, 600, k >= n_groups);
            let h = GroupHistogram::new(&parts, &groups).unwrap();
            for (j, part) in parts.iter().enumerate() {
                let mut held: Vec<&str> = part.iter().map(|&i| owned[i].as_str()).collect();
                held.sort();
                held.dedup();
                assert_eq!(held.len(), per, "participant {j}");
                // First-deterministic: participant j holds sorted label j % L.
                assert!(held.contains(&format!("g{:02}", j % n_groups).as_str()));
                assert_eq!(h.total(j), part.len());
            }
            assert_eq!(parts, partition(&scheme, &groups, k).unwrap());
        }
    }
}

#[test]
fn pathological_errors() {
    let owned = labels(40, 4);
    let groups = as_refs(&owned);
    for per in [0usize, 5] {
        let scheme = PartitionScheme::Pathological {
            groups_per_participant: per,
            seed: 0,
        };
        let err = partition(&scheme, &groups, 2).unwrap_err();
        assert!(err.to_string().contains("must be in 1..=4"), "{err}");
    }
    // Label a has 1 example but 2 participants draw it (2 participants, all labels each).
    let tiny = [Some("a"), Some("b"), Some("b"), Some("b")];
    let scheme = PartitionScheme::Pathological {
        groups_per_participant: 2,
        seed: 0,
    };
    let err = partition(&scheme, &tiny, 2).unwrap_err();
    assert!(
        err.to_string()
            .contains("group `a` is drawn by 2 participants"),
        "{err}"
    );
}

#[test]
fn natural_is_one_participant_per_group() {
    let groups = [Some("y"), Some("x"), Some("y"), Some("z"), Some("x")];
    let parts = partition(&PartitionScheme::Natural, &groups, 3).unwrap();
    assert_eq!(parts, vec![vec![1, 4], vec![0, 2], vec![3]]);
    let err = partition(&PartitionScheme::Natural, &groups, 2).unwrap_err();
    assert!(
        err.to_string().contains("3 groups, 2 participants"),
        "{err}"
    );
    let err = partition(&PartitionScheme::Natural, &[Some("x"), None], 1).unwrap_err();
    assert!(
        err.to_string().contains("example 1 has no group label"),
        "{err}"
    );
}

#[test]
fn scheme_config_round_trips_through_json() {
    let scheme = dirichlet(0.5, 10, 42);
    let text = serde_json::to_string(&scheme).unwrap();
    assert_eq!(
        text,
        r#"{"kind":"dirichlet","alpha":0.5,"min_partition_size":10,"self_balancing":true,"seed":42}"#
    );
    let back: PartitionScheme = serde_json::from_str(&text).unwrap();
    assert_eq!(back, scheme);
}
