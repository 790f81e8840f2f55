//! Role assignment at the coordinator: METHOD.md step 4 ("Assign roles"), [paper] §6.
//!
//! Each round the coordinator scores every expert of a participant with a utility
//! (Eq. 3), keeps those scores across rounds in a [`UtilityTable`], and splits the
//! participant's `B_tune` slots (see [`crate::budget`]) into tuning and exploration
//! experts with an ε-greedy rule whose ε grows over rounds (Eq. 4). Every expert not
//! given one of the two roles is non-tuning and gets merged (METHOD.md step 5).

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Default of `utility_decay`: an expert not observed for `k` rounds keeps `0.9^k` of
/// its last utility [ours].
pub const DEFAULT_UTILITY_DECAY: f64 = 0.9;

/// Slack below which `ε · B_tune` counts as an integer in [`assign_roles`], so float
/// noise in `ε_0 + Δε · t` (e.g. `ε_6 = 0.6000000000000001`, times 10) does not add a tuning expert.
const CEIL_SLACK: f64 = 1e-9;

/// Expert id within the model: (layer, expert), layer = decoder layer index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ExpertId {
    pub layer: usize,
    pub expert: usize,
}

/// Eq. 3: `u = |D| · sqrt( (1/|D|) · Σ_k ||g_k||² )`, the utility of one expert on one
/// participant, from the squared per-sample gradient norms `||g_k||²` (Oort's
/// statistical utility). `n_samples = |D^e|`, the local samples routed to `e`; when
/// fewer gradients than that were sampled, the mean of the given squares stands in for
/// `(1/|D|) Σ_k`, i.e. `u = n · sqrt(mean(sq))`. `0` when `n = 0` or no square is given.
/// The squares are expected to be non-negative; a negative mean gives NaN, which
/// [`UtilityTable::observe`] rejects.
pub fn utility(n_samples: usize, sq_grad_norms: &[f64]) -> f64 {
    if n_samples == 0 || sq_grad_norms.is_empty() {
        return 0.0;
    }
    let mean = sq_grad_norms.iter().sum::<f64>() / sq_grad_norms.len() as f64;
    n_samples as f64 * mean.sqrt()
}

/// Squared norm of the zeroth-order gradient estimate an exploration expert reports
/// (METHOD.md step 4): `ĝ = ((L(W + σz) − L(W)) / σ) · z`, `z ~ N(0, I)`, so
/// `||ĝ||² = ((L(W + σz) − L(W)) / σ)² · ||z||²`. It feeds [`utility`] like a real
/// `||g_k||²`. `sigma` (`zo_sigma`) must be non-zero; otherwise the result is not finite.
pub fn zo_sq_norm(loss_plus: f64, loss: f64, sigma: f64, z_sq_norm: f64) -> f64 {
    let d = (loss_plus - loss) / sigma;
    d * d * z_sq_norm
}

/// `ε_t` of Eq. 4: the share of the `B_tune` slots that exploit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpsilonSchedule {
    /// `ε_0`, default 0.3.
    pub eps0: f64,
    /// `Δε` per round, default 0.05.
    pub delta: f64,
    /// `ε_max`, default 0.9.
    pub eps_max: f64,
    /// Ablation: a constant ε (METHOD.md evidence: fixed 0.3 and 0.7), default `None`.
    pub fixed: Option<f64>,
}

impl Default for EpsilonSchedule {
    fn default() -> Self {
        EpsilonSchedule {
            eps0: 0.3,
            delta: 0.05,
            eps_max: 0.9,
            fixed: None,
        }
    }
}

impl EpsilonSchedule {
    /// `ε_t = min(ε_max, ε_0 + Δε · t)`, or the fixed ε; `t` counts rounds from 0.
    pub fn at(&self, t: usize) -> f64 {
        match self.fixed {
            Some(eps) => eps,
            None => self.eps_max.min(self.eps0 + self.delta * t as f64),
        }
    }

    /// ε values in `[0, 1]`, `Δε ≥ 0` finite, `ε_0 ≤ ε_max`; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let unit = |field: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(Error::config(field, format!("must be in [0, 1], got {v}")))
            }
        };
        unit("eps0", self.eps0)?;
        unit("eps_max", self.eps_max)?;
        if let Some(eps) = self.fixed {
            unit("fixed", eps)?;
        }
        if !(self.delta.is_finite() && self.delta >= 0.0) {
            let msg = format!("must be finite and >= 0, got {}", self.delta);
            return Err(Error::config("delta", msg));
        }
        if self.eps0 > self.eps_max {
            let msg = format!("{} exceeds eps_max {}", self.eps0, self.eps_max);
            return Err(Error::config("eps0", msg));
        }
        Ok(())
    }
}

/// `utility_decay` must lie in `(0, 1]` (1 = keep stale utilities as they are).
pub fn validate_decay(decay: f64) -> Result<()> {
    if decay > 0.0 && decay <= 1.0 {
        Ok(())
    } else {
        Err(Error::config(
            "utility_decay",
            format!("must be in (0, 1], got {decay}"),
        ))
    }
}

/// The last utility observed for an expert and the round it was observed in.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct UtilityEntry {
    pub utility: f64,
    pub round: usize,
}

/// One row of a [`UtilityTable`] as serialised (JSON map keys must be strings, so the
/// table is a list of flat records).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct UtilityRecord {
    layer: usize,
    expert: usize,
    utility: f64,
    round: usize,
}

/// One participant's utilities, kept by the coordinator across rounds (goes into
/// checkpoints). Serialises as `{"entries": [{"layer", "expert", "utility", "round"}, ...]}`
/// sorted by expert; loading rejects duplicates and negative or non-finite utilities.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(into = "UtilityTableRepr", try_from = "UtilityTableRepr")]
pub struct UtilityTable {
    entries: BTreeMap<ExpertId, UtilityEntry>,
}

#[derive(Serialize, Deserialize)]
struct UtilityTableRepr {
    entries: Vec<UtilityRecord>,
}

impl From<UtilityTable> for UtilityTableRepr {
    fn from(t: UtilityTable) -> Self {
        let entries = t.entries.iter().map(|(e, u)| UtilityRecord {
            layer: e.layer,
            expert: e.expert,
            utility: u.utility,
            round: u.round,
        });
        UtilityTableRepr {
            entries: entries.collect(),
        }
    }
}

impl TryFrom<UtilityTableRepr> for UtilityTable {
    type Error = Error;
    fn try_from(r: UtilityTableRepr) -> Result<Self> {
        let mut t = UtilityTable::default();
        for rec in r.entries {
            let e = ExpertId {
                layer: rec.layer,
                expert: rec.expert,
            };
            check_utility(e, rec.utility)?;
            let entry = UtilityEntry {
                utility: rec.utility,
                round: rec.round,
            };
            if t.entries.insert(e, entry).is_some() {
                return Err(Error::Input(format!("utility table: {e:?} listed twice")));
            }
        }
        Ok(t)
    }
}

fn check_utility(e: ExpertId, u: f64) -> Result<()> {
    if u.is_finite() && u >= 0.0 {
        Ok(())
    } else {
        Err(Error::Input(format!(
            "utility of {e:?} must be finite and >= 0, got {u}"
        )))
    }
}

impl UtilityTable {
    /// Round-1 rule of METHOD.md step 4: `u_e = f_e / max_e' f_e'` over all given experts,
    /// so the most-routed expert scores 1. Dividing by the maximum rather than the sum
    /// keeps the scale independent of the number of experts; either way it is only
    /// roughly comparable to the Eq. 3 utilities of later rounds. All zeros when every
    /// `f` is 0. Negative or non-finite `f`, or an expert listed twice, is `Error::Input`.
    pub fn init_from_frequencies(freqs: &[(ExpertId, f64)], round: usize) -> Result<Self> {
        let max = freqs.iter().map(|&(_, f)| f).fold(0.0, f64::max);
        let mut t = UtilityTable::default();
        for &(e, f) in freqs {
            check_utility(e, f)?;
            let utility = if max > 0.0 { f / max } else { 0.0 };
            if t.entries
                .insert(e, UtilityEntry { utility, round })
                .is_some()
            {
                return Err(Error::Input(format!("frequencies: {e:?} listed twice")));
            }
        }
        Ok(t)
    }

    /// Record utility `u` of `e` observed in `round`, replacing the older one.
    /// `Error::Input` for a negative or non-finite `u`, or a `round` older than the one
    /// already recorded for `e` (the table keeps the latest observation).
    pub fn observe(&mut self, e: ExpertId, u: f64, round: usize) -> Result<()> {
        check_utility(e, u)?;
        if let Some(old) = self.entries.get(&e) {
            if round < old.round {
                return Err(Error::Input(format!(
                    "utility of {e:?} for round {round} is older than the recorded round {}",
                    old.round
                )));
            }
        }
        self.entries.insert(e, UtilityEntry { utility: u, round });
        Ok(())
    }

    /// Utility as of `round`: the last observation `u` from round `r` decayed to
    /// `u · decay^(round − r)` (no decay when `round ≤ r`); `None` if `e` was never observed.
    /// `decay` is `utility_decay`, default [`DEFAULT_UTILITY_DECAY`].
    pub fn get(&self, e: ExpertId, round: usize, decay: f64) -> Option<f64> {
        self.entries.get(&e).map(|x| {
            let age = round.saturating_sub(x.round);
            if age == 0 {
                x.utility
            } else {
                x.utility * decay.powf(age as f64)
            }
        })
    }

    /// The raw last observation of `e`.
    pub fn entry(&self, e: ExpertId) -> Option<UtilityEntry> {
        self.entries.get(&e).copied()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// How the `B_tune` experts are picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Selection {
    /// Eq. 4: highest utility exploits, the rest explore at random.
    #[default]
    EpsilonGreedy,
    /// Ablation: all `B_tune` experts uniformly at random, split by ε the same way.
    Random,
}

/// One participant's roles for a round. Both lists are sorted ascending and disjoint;
/// every other expert is non-tuning (merged).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Roles {
    pub tuning: Vec<ExpertId>,
    pub exploration: Vec<ExpertId>,
}

impl Roles {
    /// The experts of `all` with neither role, ascending.
    pub fn non_tuning(&self, all: &[ExpertId]) -> Vec<ExpertId> {
        let mut rest: Vec<ExpertId> = all
            .iter()
            .filter(|e| self.tuning.binary_search(e).is_err())
            .filter(|e| self.exploration.binary_search(e).is_err())
            .copied()
            .collect();
        rest.sort_unstable();
        rest.dedup();
        rest
    }
}

/// Eq. 4, per participant. With `b = min(B_tune, |all|)` and
/// `n_exploit = ⌈ε · b⌉` clamped to `[1, b]` (a participant with a slot always tunes
/// at least one expert, so it has an update to upload):
///
/// - [`Selection::EpsilonGreedy`]: rank experts by utility as of `round`
///   ([`UtilityTable::get`], experts missing from the table count as 0), ties broken
///   by [`ExpertId`] ascending; the top `b` are the candidates, the top `n_exploit` of
///   them are tuning; the `b − n_exploit` explorers are drawn uniformly without
///   replacement from all experts not chosen as tuning (lower candidates included).
/// - [`Selection::Random`]: `b` experts uniformly without replacement; the first
///   `n_exploit` drawn are tuning, the rest explore.
///
/// `eps` is `ε_t` from [`EpsilonSchedule::at`] (clamped to `[0, 1]`; NaN counts as 0).
/// Duplicates in `all` are ignored. Deterministic given the state of `rng`.
#[allow(clippy::too_many_arguments)]
pub fn assign_roles(
    all: &[ExpertId],
    table: &UtilityTable,
    round: usize,
    decay: f64,
    b_tune: usize,
    eps: f64,
    selection: Selection,
    rng: &mut StdRng,
) -> Roles {
    let mut experts = all.to_vec();
    experts.sort_unstable();
    experts.dedup();
    let b = b_tune.min(experts.len());
    if b == 0 {
        return Roles {
            tuning: Vec::new(),
            exploration: Vec::new(),
        };
    }
    let eps = if eps.is_nan() {
        0.0
    } else {
        eps.clamp(0.0, 1.0)
    };
    let n_exploit = ((eps * b as f64 - CEIL_SLACK).ceil().max(0.0) as usize).clamp(1, b);

    let (mut tuning, mut exploration) = match selection {
        Selection::EpsilonGreedy => {
            let score = |e: &ExpertId| table.get(*e, round, decay).unwrap_or(0.0);
            // Stable sort of the ascending ids: equal utilities keep id order.
            let mut ranked = experts.clone();
            ranked.sort_by(|a, b| score(b).total_cmp(&score(a)));
            let rest = ranked.split_off(n_exploit);
            let picks = rand::seq::index::sample(rng, rest.len(), b - n_exploit);
            (ranked, picks.iter().map(|i| rest[i]).collect::<Vec<_>>())
        }
        Selection::Random => {
            let picks = rand::seq::index::sample(rng, experts.len(), b);
            let mut drawn: Vec<ExpertId> = picks.iter().map(|i| experts[i]).collect();
            let explore = drawn.split_off(n_exploit);
            (drawn, explore)
        }
    };
    tuning.sort_unstable();
    exploration.sort_unstable();
    Roles {
        tuning,
        exploration,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn id(layer: usize, expert: usize) -> ExpertId {
        ExpertId { layer, expert }
    }

    /// `layers × per` experts, ascending.
    fn grid(layers: usize, per: usize) -> Vec<ExpertId> {
        (0..layers)
            .flat_map(|l| (0..per).map(move |e| id(l, e)))
            .collect()
    }

    #[test]
    fn utility_and_zo_norm_by_hand() {
        assert_eq!(utility(4, &[1.0, 4.0]), 4.0 * 2.5f64.sqrt());
        // |D| = 2 with both gradients: 2 · sqrt((9 + 16) / 2) = sqrt(50).
        assert!((utility(2, &[9.0, 16.0]) - 50f64.sqrt()).abs() < 1e-12);
        assert_eq!(utility(0, &[1.0]), 0.0);
        assert_eq!(utility(3, &[]), 0.0);
        // ((2.5 - 2.0) / 0.25)² · 3 = 4 · 3.
        assert_eq!(zo_sq_norm(2.5, 2.0, 0.25, 3.0), 12.0);
        assert_eq!(zo_sq_norm(1.0, 1.0, 1e-3, 10.0), 0.0);
    }

    #[test]
    fn epsilon_grows_caps_and_fixes() {
        let s = EpsilonSchedule::default();
        assert_eq!(s.at(0), 0.3);
        assert!((s.at(4) - 0.5).abs() < 1e-12);
        assert_eq!(s.at(12), 0.9);
        assert_eq!(s.at(1000), 0.9);
        let fixed = EpsilonSchedule {
            fixed: Some(0.7),
            ..s
        };
        assert_eq!((fixed.at(0), fixed.at(50)), (0.7, 0.7));
        assert!(s.validate().is_ok() && fixed.validate().is_ok());
        let field = |s: EpsilonSchedule| match s.validate() {
            Err(Error::Config { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(EpsilonSchedule { eps0: 1.5, ..s }), "eps0");
        assert_eq!(
            field(EpsilonSchedule {
                eps_max: f64::NAN,
                ..s
            }),
            "eps_max"
        );
        assert_eq!(field(EpsilonSchedule { delta: -0.1, ..s }), "delta");
        assert_eq!(
            field(EpsilonSchedule {
                fixed: Some(-0.1),
                ..s
            }),
            "fixed"
        );
        assert_eq!(field(EpsilonSchedule { eps0: 0.95, ..s }), "eps0");
        assert!(validate_decay(0.9).is_ok() && validate_decay(1.0).is_ok());
        assert!(validate_decay(0.0).is_err() && validate_decay(f64::NAN).is_err());
    }

    #[test]
    fn table_decays_observes_and_round_trips() {
        let freqs = [(id(0, 0), 0.5), (id(0, 1), 0.25), (id(1, 0), 0.0)];
        let mut t = UtilityTable::init_from_frequencies(&freqs, 1).unwrap();
        assert_eq!(t.get(id(0, 0), 1, 0.9), Some(1.0));
        assert_eq!(t.get(id(0, 1), 1, 0.9), Some(0.5));
        assert!((t.get(id(0, 1), 3, 0.9).unwrap() - 0.5 * 0.81).abs() < 1e-12);
        assert_eq!(t.get(id(2, 0), 1, 0.9), None);
        t.observe(id(0, 1), 7.0, 3).unwrap();
        assert_eq!(t.get(id(0, 1), 3, 0.9), Some(7.0));
        assert_eq!(t.get(id(0, 1), 4, 0.5), Some(3.5));
        assert!(matches!(t.observe(id(0, 1), 1.0, 2), Err(Error::Input(_))));
        assert!(matches!(
            t.observe(id(0, 0), f64::NAN, 3),
            Err(Error::Input(_))
        ));
        assert!(t.observe(id(0, 0), -1.0, 3).is_err());
        let bad = [(id(0, 0), 0.5), (id(0, 0), 0.1)];
        assert!(UtilityTable::init_from_frequencies(&bad, 1).is_err());

        let json = serde_json::to_string(&t).unwrap();
        assert!(
            json.starts_with(r#"{"entries":[{"layer":0,"expert":0,"#),
            "{json}"
        );
        let back: UtilityTable = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.len(), 3);
        let dup = r#"{"entries":[{"layer":0,"expert":0,"utility":1.0,"round":1},
                                 {"layer":0,"expert":0,"utility":2.0,"round":2}]}"#;
        assert!(serde_json::from_str::<UtilityTable>(dup).is_err());
        let neg = r#"{"entries":[{"layer":0,"expert":0,"utility":-1.0,"round":1}]}"#;
        assert!(serde_json::from_str::<UtilityTable>(neg).is_err());
    }

    /// Utility of expert (l, e) = 10 l + e on a 4 × 8 grid: (3, 7) is best.
    fn ramp_table(all: &[ExpertId]) -> UtilityTable {
        let mut t = UtilityTable::default();
        for e in all {
            t.observe(*e, (10 * e.layer + e.expert) as f64, 2).unwrap();
        }
        t
    }

    fn check_disjoint(r: &Roles) {
        assert!(r.tuning.windows(2).all(|w| w[0] < w[1]));
        assert!(r.exploration.windows(2).all(|w| w[0] < w[1]));
        assert!(r.exploration.iter().all(|e| !r.tuning.contains(e)));
    }

    #[test]
    fn greedy_tunes_top_experts_and_explores_the_rest() {
        let all = grid(4, 8);
        let t = ramp_table(&all);
        let mut rng = StdRng::seed_from_u64(7);
        // ε = 0.3, b = 10: ⌈3⌉ = 3 tuning, 7 explorers.
        let r = assign_roles(
            &all,
            &t,
            2,
            0.9,
            10,
            0.3,
            Selection::EpsilonGreedy,
            &mut rng,
        );
        assert_eq!(r.tuning, vec![id(3, 5), id(3, 6), id(3, 7)]);
        assert_eq!(r.exploration.len(), 7);
        check_disjoint(&r);
        assert_eq!(r.non_tuning(&all).len(), 32 - 10);
        // ε_6 = 0.3 + 0.05·6 = 0.6000000000000001: 6.000000000000001 must not round up to 7.
        let eps = EpsilonSchedule::default().at(6);
        assert!(eps * 10.0 > 6.0);
        let r = assign_roles(
            &all,
            &t,
            2,
            0.9,
            10,
            eps,
            Selection::EpsilonGreedy,
            &mut rng,
        );
        assert_eq!((r.tuning.len(), r.exploration.len()), (6, 4));
        // ε = 0.25, b = 10: ⌈2.5⌉ = 3. ε = 0 still tunes one; ε = 1 tunes all.
        let counts = |eps: f64, b: usize, rng: &mut StdRng| {
            let r = assign_roles(&all, &t, 2, 0.9, b, eps, Selection::EpsilonGreedy, rng);
            (r.tuning.len(), r.exploration.len())
        };
        assert_eq!(counts(0.25, 10, &mut rng), (3, 7));
        assert_eq!(counts(0.0, 10, &mut rng), (1, 9));
        assert_eq!(counts(1.0, 10, &mut rng), (10, 0));
        assert_eq!(counts(0.5, 100, &mut rng), (16, 16));
        assert_eq!(counts(0.5, 0, &mut rng), (0, 0));
    }

    #[test]
    fn missing_experts_count_as_zero_and_ties_go_to_lower_ids() {
        let all = grid(2, 4);
        let mut t = UtilityTable::default();
        t.observe(id(1, 3), 5.0, 1).unwrap();
        t.observe(id(0, 2), 5.0, 1).unwrap();
        t.observe(id(0, 1), 2.0, 0).unwrap(); // decays to 1.8 by round 1
        let mut rng = StdRng::seed_from_u64(0);
        let r = assign_roles(&all, &t, 1, 0.9, 4, 1.0, Selection::EpsilonGreedy, &mut rng);
        assert_eq!(r.tuning, vec![id(0, 0), id(0, 1), id(0, 2), id(1, 3)]);
        let r = assign_roles(&all, &t, 1, 0.9, 2, 1.0, Selection::EpsilonGreedy, &mut rng);
        assert_eq!(r.tuning, vec![id(0, 2), id(1, 3)]);
    }

    #[test]
    fn explorers_are_seeded() {
        let all = grid(8, 8);
        let t = ramp_table(&all);
        let run = |seed: u64, selection: Selection| {
            let mut rng = StdRng::seed_from_u64(seed);
            assign_roles(&all, &t, 2, 0.9, 12, 0.5, selection, &mut rng)
        };
        let a = run(1, Selection::EpsilonGreedy);
        assert_eq!(a, run(1, Selection::EpsilonGreedy));
        let b = run(2, Selection::EpsilonGreedy);
        assert_eq!(a.tuning, b.tuning);
        assert_ne!(a.exploration, b.exploration);
        for r in [&a, &b] {
            check_disjoint(r);
            assert_eq!((r.tuning.len(), r.exploration.len()), (6, 6));
        }
    }

    #[test]
    fn random_selection_ignores_utilities() {
        let all = grid(8, 8);
        let t = ramp_table(&all);
        let run = |seed: u64| {
            let mut rng = StdRng::seed_from_u64(seed);
            assign_roles(&all, &t, 2, 0.9, 12, 0.5, Selection::Random, &mut rng)
        };
        let a = run(3);
        check_disjoint(&a);
        assert_eq!((a.tuning.len(), a.exploration.len()), (6, 6));
        assert_eq!(a, run(3));
        assert_ne!(a.tuning, run(4).tuning);
        let greedy_top: Vec<ExpertId> = (2..8).map(|e| id(7, e)).collect();
        assert_ne!(a.tuning, greedy_top);
        assert_eq!(
            serde_json::to_string(&Selection::EpsilonGreedy).unwrap(),
            "\"epsilon-greedy\""
        );
    }
}
