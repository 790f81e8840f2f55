//! The report's tables as pure functions of [`SuiteResults`]: FLUX's time-to-accuracy
//! speedup over each baseline, final metrics against fedavg-full, and the phase
//! breakdown of the round time. Each builder returns typed rows (what the tests check);
//! [`Table`] renders them as markdown or HTML from the same cells.

use std::collections::BTreeMap;

use crate::results::{RunResult, SuiteResults};

/// The method whose speedup the report measures.
pub const FLUX: &str = "flux";
/// The method the final metrics are compared against.
pub const REFERENCE: &str = "fedavg-full";
/// Phase names, in the order of every per-phase array here.
pub const PHASES: [&str; 6] = [
    "compute",
    "profile",
    "pcie",
    "upload",
    "download",
    "aggregate",
];

/// A run's method label: the method, plus `:variant` for an ablation variant.
pub fn method_key(run: &RunResult) -> String {
    if run.variant.is_empty() {
        run.method.clone()
    } else {
        format!("{}:{}", run.method, run.variant)
    }
}

/// Tasks in order of first appearance among the runs.
pub fn tasks(results: &SuiteResults) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in &results.runs {
        if !out.contains(&r.task) {
            out.push(r.task.clone());
        }
    }
    out
}

/// Method keys in order of first appearance among the runs.
pub fn method_keys(results: &SuiteResults) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in &results.runs {
        let k = method_key(r);
        if !out.contains(&k) {
            out.push(k);
        }
    }
    out
}

/// The runs of one method key on one task, by seed (the first run wins on a duplicate;
/// `write_report` rejects duplicates before building anything).
pub fn runs_by_seed<'a>(
    results: &'a SuiteResults,
    task: &str,
    key: &str,
) -> BTreeMap<u64, &'a RunResult> {
    let mut out = BTreeMap::new();
    for r in &results.runs {
        if r.task == task && method_key(r) == key {
            out.entry(r.seed).or_insert(r);
        }
    }
    out
}

/// Median of the values (mean of the two middle ones for an even count); `None` when
/// empty.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Mean of the values; `None` when empty.
pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// How FLUX and one baseline compare on one seed, by virtual time to the target.
#[derive(Clone, Debug, PartialEq)]
pub enum TtaOutcome {
    /// Both reached the target: baseline TTA / FLUX TTA.
    Speedup(f64),
    /// FLUX reached it, the baseline did not within its whole run of `baseline_ran_s`
    /// virtual seconds, so the speedup is at least `at_least`.
    FluxOnly { baseline_ran_s: f64, at_least: f64 },
    /// The baseline reached it, FLUX did not within `flux_ran_s` virtual seconds.
    BaselineOnly { flux_ran_s: f64 },
    /// Neither reached the target.
    Neither,
    /// The task has no target, so there is no TTA.
    NoTarget,
}

fn ratio(baseline: f64, flux: f64) -> f64 {
    if flux > 0.0 {
        baseline / flux
    } else if baseline > 0.0 {
        f64::INFINITY
    } else {
        1.0
    }
}

/// The outcome of FLUX's run against a baseline's run (same task and seed).
pub fn tta_outcome(flux: &RunResult, baseline: &RunResult) -> TtaOutcome {
    if flux.target.is_none() || baseline.target.is_none() {
        return TtaOutcome::NoTarget;
    }
    match (flux.tta_virtual_s, baseline.tta_virtual_s) {
        (Some(f), Some(b)) => TtaOutcome::Speedup(ratio(b, f)),
        (Some(f), None) => TtaOutcome::FluxOnly {
            baseline_ran_s: baseline.virtual_s,
            at_least: ratio(baseline.virtual_s, f),
        },
        (None, Some(_)) => TtaOutcome::BaselineOnly {
            flux_ran_s: flux.virtual_s,
        },
        (None, None) => TtaOutcome::Neither,
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct SeedOutcome {
    pub seed: u64,
    pub outcome: TtaOutcome,
}

/// FLUX (or one of its variants) against one baseline on one task, over the seeds
/// both ran.
#[derive(Clone, Debug, PartialEq)]
pub struct SpeedupRow {
    pub task: String,
    /// `flux`, or `flux:VARIANT`.
    pub flux: String,
    pub baseline: String,
    pub seeds: Vec<SeedOutcome>,
    /// Seeds that only one of the two methods ran.
    pub unpaired: Vec<u64>,
}

impl SpeedupRow {
    /// The speedups of the seeds where both reached the target.
    pub fn speedups(&self) -> Vec<f64> {
        self.seeds
            .iter()
            .filter_map(|s| match s.outcome {
                TtaOutcome::Speedup(x) => Some(x),
                _ => None,
            })
            .collect()
    }

    pub fn median(&self) -> Option<f64> {
        median(&self.speedups())
    }

    /// `(min, max)` of the speedups.
    pub fn range(&self) -> Option<(f64, f64)> {
        let s = self.speedups();
        let min = s.iter().copied().min_by(f64::total_cmp)?;
        let max = s.iter().copied().max_by(f64::total_cmp)?;
        Some((min, max))
    }
}

/// Table (a): per task, plain FLUX against every other method key (baselines and FLUX
/// variants), then each FLUX variant against every method that is not FLUX, in order of
/// appearance; plus the tasks no FLUX key ran.
#[derive(Clone, Debug, PartialEq)]
pub struct SpeedupTable {
    pub rows: Vec<SpeedupRow>,
    pub tasks_without_flux: Vec<String>,
}

pub fn speedup_table(results: &SuiteResults) -> SpeedupTable {
    let keys = method_keys(results);
    let mut rows = Vec::new();
    let mut tasks_without_flux = Vec::new();
    let is_flux = |k: &str| k == FLUX || k.starts_with(&format!("{FLUX}:"));
    for task in tasks(results) {
        let mut any_flux = false;
        for flux_key in keys.iter().filter(|k| is_flux(k)) {
            let flux = runs_by_seed(results, &task, flux_key);
            if flux.is_empty() {
                continue;
            }
            any_flux = true;
            let against = keys
                .iter()
                .filter(|k| *k != flux_key && (flux_key == FLUX || !is_flux(k)));
            for key in against {
                let base = runs_by_seed(results, &task, key);
                if base.is_empty() {
                    continue;
                }
                let mut seeds = Vec::new();
                let mut unpaired = Vec::new();
                let all: std::collections::BTreeSet<u64> =
                    flux.keys().chain(base.keys()).copied().collect();
                for seed in all {
                    match (flux.get(&seed), base.get(&seed)) {
                        (Some(f), Some(b)) => seeds.push(SeedOutcome {
                            seed,
                            outcome: tta_outcome(f, b),
                        }),
                        _ => unpaired.push(seed),
                    }
                }
                rows.push(SpeedupRow {
                    task: task.clone(),
                    flux: flux_key.clone(),
                    baseline: key.clone(),
                    seeds,
                    unpaired,
                });
            }
        }
        if !any_flux {
            tasks_without_flux.push(task);
        }
    }
    SpeedupTable {
        rows,
        tasks_without_flux,
    }
}

fn fmt_ratio(x: f64) -> String {
    if x.is_infinite() {
        "∞".to_string()
    } else {
        format!("{x:.2}")
    }
}

/// `1.50×`, or `∞×` for a FLUX TTA of zero.
pub fn fmt_speedup(x: f64) -> String {
    format!("{}×", fmt_ratio(x))
}

fn fmt_s(x: f64) -> String {
    format!("{x:.1} s")
}

/// The sentence for one seed's outcome.
pub fn describe_outcome(baseline: &str, o: &SeedOutcome) -> String {
    let seed = o.seed;
    match &o.outcome {
        TtaOutcome::Speedup(x) => format!("seed {seed}: both reached ({})", fmt_speedup(*x)),
        TtaOutcome::FluxOnly {
            baseline_ran_s,
            at_least,
        } => format!(
            "seed {seed}: FLUX reached, {baseline} did not (> {}; speedup ≥ {})",
            fmt_s(*baseline_ran_s),
            fmt_speedup(*at_least)
        ),
        TtaOutcome::BaselineOnly { flux_ran_s } => format!(
            "seed {seed}: {baseline} reached, FLUX did not (> {})",
            fmt_s(*flux_ran_s)
        ),
        TtaOutcome::Neither => format!("seed {seed}: neither reached"),
        TtaOutcome::NoTarget => format!("seed {seed}: no target"),
    }
}

impl SpeedupTable {
    pub fn to_table(&self) -> Table {
        let rows = self
            .rows
            .iter()
            .map(|r| {
                let speedup = match (r.median(), r.range()) {
                    (Some(m), Some((lo, hi))) if r.speedups().len() > 1 => {
                        format!("{} [{}–{}]", fmt_speedup(m), fmt_ratio(lo), fmt_ratio(hi))
                    }
                    (Some(m), _) => fmt_speedup(m),
                    _ => "—".to_string(),
                };
                let n_both = r.speedups().len();
                let mut outcome: Vec<String> = Vec::new();
                if n_both == r.seeds.len() && n_both > 0 {
                    outcome.push(format!("both reached on all {n_both} seeds"));
                } else {
                    for s in &r.seeds {
                        outcome.push(describe_outcome(&r.baseline, s));
                    }
                }
                for s in &r.unpaired {
                    outcome.push(format!("seed {s}: run by only one of the two"));
                }
                vec![
                    r.task.clone(),
                    r.flux.clone(),
                    r.baseline.clone(),
                    r.seeds.len().to_string(),
                    speedup,
                    outcome.join("; "),
                ]
            })
            .collect();
        let mut notes = vec![
            "Speedup = baseline's virtual time to the target / FLUX's, per seed; median over \
             the seeds where both reached it, [min–max] over those seeds."
                .to_string(),
        ];
        for t in &self.tasks_without_flux {
            notes.push(format!("{t}: no FLUX run, so no speedup."));
        }
        Table {
            title: "Time to accuracy: FLUX speedup over each baseline".to_string(),
            notes,
            header: [
                "Task",
                "FLUX",
                "Baseline",
                "Seeds",
                "Speedup median [min–max]",
                "Outcome",
            ]
            .map(String::from)
            .to_vec(),
            rows,
        }
    }
}

/// Table (b): one method on one task, means over seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct FinalRow {
    pub task: String,
    pub metric: String,
    pub method: String,
    pub seeds: usize,
    pub final_mean: f64,
    pub best_mean: f64,
    /// `(final_mean − fedavg-full's final_mean) × 100`, in points; `None` for
    /// fedavg-full itself and where it did not run the task.
    pub delta_points: Option<f64>,
}

pub fn final_rows(results: &SuiteResults) -> Vec<FinalRow> {
    let keys = method_keys(results);
    let mut out = Vec::new();
    for task in tasks(results) {
        let reference = runs_by_seed(results, &task, REFERENCE);
        let ref_mean = mean(
            &reference
                .values()
                .map(|r| r.final_metric)
                .collect::<Vec<_>>(),
        );
        for key in &keys {
            let runs = runs_by_seed(results, &task, key);
            let Some(first) = runs.values().next() else {
                continue;
            };
            let finals: Vec<f64> = runs.values().map(|r| r.final_metric).collect();
            let bests: Vec<f64> = runs.values().map(|r| r.best_metric).collect();
            let final_mean = mean(&finals).unwrap_or(f64::NAN);
            out.push(FinalRow {
                task: task.clone(),
                metric: first.metric.clone(),
                method: key.clone(),
                seeds: runs.len(),
                final_mean,
                best_mean: mean(&bests).unwrap_or(f64::NAN),
                delta_points: match ref_mean {
                    Some(m) if key != REFERENCE => Some((final_mean - m) * 100.0),
                    _ => None,
                },
            });
        }
    }
    out
}

pub fn final_table(rows: &[FinalRow]) -> Table {
    let has_ref = |task: &str| rows.iter().any(|r| r.task == task && r.method == REFERENCE);
    Table {
        title: format!("Final metric per method (mean over seeds) and difference to {REFERENCE}"),
        notes: vec![format!(
            "Δ = (method's mean final metric − {REFERENCE}'s) × 100, in points."
        )],
        header: [
            "Task",
            "Metric",
            "Method",
            "Seeds",
            "Final",
            "Best",
            "Δ vs fedavg-full (pts)",
        ]
        .map(String::from)
        .to_vec(),
        rows: rows
            .iter()
            .map(|r| {
                let delta = match r.delta_points {
                    Some(d) => format!("{d:+.2}"),
                    None if r.method == REFERENCE => "reference".to_string(),
                    None if !has_ref(&r.task) => format!("n/a (no {REFERENCE} run)"),
                    None => "—".to_string(),
                };
                vec![
                    r.task.clone(),
                    r.metric.clone(),
                    r.method.clone(),
                    r.seeds.to_string(),
                    format!("{:.4}", r.final_mean),
                    format!("{:.4}", r.best_mean),
                    delta,
                ]
            })
            .collect(),
    }
}

/// Table (c) and the phases plot: one method key over all its tasks and seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseRow {
    pub method: String,
    /// Runs whose phases sum to more than zero (the others are left out).
    pub runs: usize,
    /// Mean over those runs of each phase's share of the run's summed round time.
    pub shares: [f64; 6],
    /// Mean over those runs of each phase's seconds per round.
    pub per_round_s: [f64; 6],
}

fn phase_array(r: &RunResult) -> [f64; 6] {
    let p = &r.phases;
    [
        p.compute,
        p.profile,
        p.pcie,
        p.upload,
        p.download,
        p.aggregate,
    ]
}

pub fn phase_rows(results: &SuiteResults) -> Vec<PhaseRow> {
    method_keys(results)
        .into_iter()
        .map(|key| {
            let runs: Vec<&RunResult> = results
                .runs
                .iter()
                .filter(|r| method_key(r) == key && r.phases.total() > 0.0)
                .collect();
            let mut shares = [0.0; 6];
            let mut per_round_s = [0.0; 6];
            for r in &runs {
                let a = phase_array(r);
                let total = r.phases.total();
                let rounds = f64::from(r.rounds.max(1));
                for i in 0..6 {
                    shares[i] += a[i] / total / runs.len() as f64;
                    per_round_s[i] += a[i] / rounds / runs.len() as f64;
                }
            }
            PhaseRow {
                method: key,
                runs: runs.len(),
                shares,
                per_round_s,
            }
        })
        .collect()
}

pub fn phase_table(rows: &[PhaseRow]) -> Table {
    let mut header = vec![
        "Method".to_string(),
        "Runs".to_string(),
        "Round (s)".to_string(),
    ];
    header.extend(PHASES.iter().map(|p| format!("{p} %")));
    Table {
        title: "Round-time breakdown by phase (critical path)".to_string(),
        notes: vec![
            "Per run, each phase's share of the summed round time; mean over the method's \
             runs (all tasks and seeds). Round (s) = mean virtual seconds per round."
                .to_string(),
        ],
        header,
        rows: rows
            .iter()
            .map(|r| {
                let mut row = vec![r.method.clone(), r.runs.to_string()];
                if r.runs == 0 {
                    row.extend(std::iter::repeat_n("—".to_string(), 7));
                } else {
                    row.push(format!("{:.2}", r.per_round_s.iter().sum::<f64>()));
                    row.extend(r.shares.iter().map(|s| format!("{:.1}", s * 100.0)));
                }
                row
            })
            .collect(),
    }
}

/// A rendered table: the same cells become markdown or HTML.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    pub title: String,
    pub notes: Vec<String>,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

fn md_cell(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\n', '\r'], " ")
}

/// Escape text for HTML element content and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

impl Table {
    pub fn to_markdown(&self) -> String {
        let mut s = format!("## {}\n\n", md_cell(&self.title));
        for n in &self.notes {
            s.push_str(&md_cell(n));
            s.push_str("\n\n");
        }
        let line = |cells: &[String]| {
            let cells: Vec<String> = cells.iter().map(|c| md_cell(c)).collect();
            format!("| {} |\n", cells.join(" | "))
        };
        s.push_str(&line(&self.header));
        s.push_str(&format!("|{}\n", "---|".repeat(self.header.len())));
        if self.rows.is_empty() {
            let mut empty = vec!["(none)".to_string()];
            empty.resize(self.header.len(), String::new());
            s.push_str(&line(&empty));
        }
        for r in &self.rows {
            s.push_str(&line(r));
        }
        s
    }

    pub fn to_html(&self) -> String {
        let mut s = format!("<h3>{}</h3>\n", html_escape(&self.title));
        for n in &self.notes {
            s.push_str(&format!("<p class=\"note\">{}</p>\n", html_escape(n)));
        }
        s.push_str("<table>\n<thead><tr>");
        for h in &self.header {
            s.push_str(&format!("<th>{}</th>", html_escape(h)));
        }
        s.push_str("</tr></thead>\n<tbody>\n");
        if self.rows.is_empty() {
            s.push_str(&format!(
                "<tr><td colspan=\"{}\">(none)</td></tr>\n",
                self.header.len()
            ));
        }
        for r in &self.rows {
            s.push_str("<tr>");
            for c in r {
                s.push_str(&format!("<td>{}</td>", html_escape(c)));
            }
            s.push_str("</tr>\n");
        }
        s.push_str("</tbody>\n</table>\n");
        s
    }
}

/// The three tables in report order.
pub fn all_tables(results: &SuiteResults) -> Vec<Table> {
    vec![
        speedup_table(results).to_table(),
        final_table(&final_rows(results)),
        phase_table(&phase_rows(results)),
    ]
}

/// `tables.md`: a heading and the three tables.
pub fn tables_markdown(results: &SuiteResults) -> String {
    let mut s = format!("# {}: tables\n\n", md_cell(&results.suite));
    for t in all_tables(results) {
        s.push_str(&t.to_markdown());
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::PhaseBreakdown;

    fn run(method: &str, task: &str, seed: u64, tta: Option<f64>, virtual_s: f64) -> RunResult {
        RunResult {
            method: method.to_string(),
            variant: String::new(),
            task: task.to_string(),
            seed,
            metric: "accuracy".to_string(),
            target: Some(0.5),
            tta_virtual_s: tta,
            tta_measured_s: tta.map(|t| t / 10.0),
            rounds_to_target: tta.map(|_| 3),
            rounds: 10,
            initial_metric: 0.25,
            final_metric: 0.5,
            best_metric: 0.5,
            virtual_s,
            measured_s: virtual_s / 10.0,
            bytes_moved: 1000,
            peak_rss_bytes: None,
            participant_heap_peak_bytes: None,
            overhead_share: None,
            curve: Vec::new(),
            phases: PhaseBreakdown::default(),
            roles: Vec::new(),
            activation: Vec::new(),
        }
    }

    fn suite(runs: Vec<RunResult>) -> SuiteResults {
        SuiteResults {
            suite: "t".to_string(),
            description: String::new(),
            commit: None,
            suite_file: String::new(),
            runs,
        }
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn speedup_is_the_median_of_baseline_over_flux_per_seed() {
        // Seeds 0..3: fmd/flux = 200/100, 300/100, 250/50 → 2, 3, 5; median 3, range 2–5.
        let s = suite(vec![
            run("flux", "a", 0, Some(100.0), 500.0),
            run("flux", "a", 1, Some(100.0), 500.0),
            run("flux", "a", 2, Some(50.0), 500.0),
            run("fmd", "a", 0, Some(200.0), 500.0),
            run("fmd", "a", 1, Some(300.0), 500.0),
            run("fmd", "a", 2, Some(250.0), 500.0),
        ]);
        let t = speedup_table(&s);
        assert_eq!(t.rows.len(), 1);
        let row = &t.rows[0];
        assert_eq!((row.task.as_str(), row.baseline.as_str()), ("a", "fmd"));
        assert_eq!(row.speedups(), vec![2.0, 3.0, 5.0]);
        assert_eq!(row.median(), Some(3.0));
        assert_eq!(row.range(), Some((2.0, 5.0)));
        let cells = &t.to_table().rows[0];
        assert_eq!(cells[1], "flux");
        assert_eq!(cells[3], "3");
        assert_eq!(cells[4], "3.00× [2.00–5.00]");
        assert_eq!(cells[5], "both reached on all 3 seeds");
    }

    #[test]
    fn even_seed_count_averages_the_middle_speedups() {
        let s = suite(vec![
            run("flux", "a", 0, Some(10.0), 50.0),
            run("flux", "a", 1, Some(10.0), 50.0),
            run("fmq", "a", 0, Some(15.0), 50.0),
            run("fmq", "a", 1, Some(40.0), 50.0),
        ]);
        let row = &speedup_table(&s).rows[0];
        // 1.5 and 4.0 → 2.75.
        assert_eq!(row.median(), Some(2.75));
        assert_eq!(speedup_table(&s).to_table().rows[0][4], "2.75× [1.50–4.00]");
    }

    #[test]
    fn missing_tta_cases_are_spelled_out() {
        let s = suite(vec![
            run("flux", "a", 0, Some(100.0), 400.0),
            run("flux", "a", 1, Some(100.0), 400.0),
            run("flux", "a", 2, None, 400.0),
            run("flux", "a", 3, None, 400.0),
            run("fmd", "a", 0, Some(150.0), 900.0),
            run("fmd", "a", 1, None, 900.0),
            run("fmd", "a", 2, Some(300.0), 900.0),
            run("fmd", "a", 3, None, 900.0),
        ]);
        let t = speedup_table(&s);
        let row = &t.rows[0];
        assert_eq!(
            row.seeds
                .iter()
                .map(|s| s.outcome.clone())
                .collect::<Vec<_>>(),
            vec![
                TtaOutcome::Speedup(1.5),
                TtaOutcome::FluxOnly {
                    baseline_ran_s: 900.0,
                    at_least: 9.0
                },
                TtaOutcome::BaselineOnly { flux_ran_s: 400.0 },
                TtaOutcome::Neither,
            ]
        );
        // Only seed 0 gives a ratio, so no range is printed.
        let cells = &t.to_table().rows[0];
        assert_eq!(cells[4], "1.50×");
        assert_eq!(
            cells[5],
            "seed 0: both reached (1.50×); \
             seed 1: FLUX reached, fmd did not (> 900.0 s; speedup ≥ 9.00×); \
             seed 2: fmd reached, FLUX did not (> 400.0 s); \
             seed 3: neither reached"
        );
    }

    #[test]
    fn neither_reached_on_any_seed_has_no_speedup() {
        let s = suite(vec![
            run("flux", "a", 0, None, 400.0),
            run("fmes", "a", 0, None, 400.0),
        ]);
        let cells = &speedup_table(&s).to_table().rows[0];
        assert_eq!(cells[4], "—");
        assert_eq!(cells[5], "seed 0: neither reached");
    }

    #[test]
    fn no_target_unpaired_seeds_and_tasks_without_flux() {
        let mut no_target = run("flux", "b", 0, None, 10.0);
        no_target.target = None;
        let mut base_no_target = run("fmd", "b", 0, None, 10.0);
        base_no_target.target = None;
        let s = suite(vec![
            run("flux", "a", 0, Some(1.0), 10.0),
            run("fmd", "a", 0, Some(2.0), 10.0),
            run("fmd", "a", 1, Some(2.0), 10.0),
            no_target,
            base_no_target,
            run("fmd", "c", 0, Some(2.0), 10.0),
        ]);
        let t = speedup_table(&s);
        assert_eq!(t.tasks_without_flux, vec!["c".to_string()]);
        assert_eq!(t.rows[0].unpaired, vec![1]);
        assert_eq!(t.rows[1].seeds[0].outcome, TtaOutcome::NoTarget);
        let table = t.to_table();
        assert_eq!(
            table.rows[0][5],
            "both reached on all 1 seeds; seed 1: run by only one of the two"
        );
        assert_eq!(table.rows[1][5], "seed 0: no target");
        assert!(table
            .notes
            .iter()
            .any(|n| n == "c: no FLUX run, so no speedup."));
    }

    #[test]
    fn variants_are_separate_baselines_keyed_method_colon_variant() {
        let mut ablation = run("flux", "a", 0, Some(30.0), 100.0);
        ablation.variant = "no-explore".to_string();
        let s = suite(vec![run("flux", "a", 0, Some(10.0), 100.0), ablation]);
        let t = speedup_table(&s);
        assert_eq!(t.rows.len(), 1);
        assert_eq!(t.rows[0].baseline, "flux:no-explore");
        assert_eq!(t.rows[0].median(), Some(3.0));
    }

    #[test]
    fn each_flux_variant_gets_speedups_over_the_baselines_but_not_over_other_variants() {
        let variant = |name: &str, tta: f64| {
            let mut r = run("flux", "a", 0, Some(tta), 100.0);
            r.variant = name.to_string();
            r
        };
        let s = suite(vec![
            variant("capped", 20.0),
            variant("eps", 50.0),
            run("fmq", "a", 0, Some(60.0), 100.0),
            run("fmq", "b", 0, Some(60.0), 100.0),
        ]);
        let t = speedup_table(&s);
        let pairs: Vec<(&str, &str, Option<f64>)> = t
            .rows
            .iter()
            .map(|r| (r.flux.as_str(), r.baseline.as_str(), r.median()))
            .collect();
        // No plain FLUX here: each variant against FMQ only, never against the other.
        assert_eq!(
            pairs,
            [
                ("flux:capped", "fmq", Some(3.0)),
                ("flux:eps", "fmq", Some(1.2))
            ]
        );
        assert_eq!(t.tasks_without_flux, vec!["b".to_string()]);
        assert_eq!(t.to_table().rows[0][1], "flux:capped");
    }

    #[test]
    fn final_metric_means_and_points_against_fedavg_full() {
        let mut runs = Vec::new();
        for (method, seed, fin) in [
            ("fedavg-full", 0, 0.60),
            ("fedavg-full", 1, 0.70),
            ("flux", 0, 0.62),
            ("flux", 1, 0.64),
        ] {
            let mut r = run(method, "a", seed, None, 1.0);
            r.final_metric = fin;
            r.best_metric = fin + 0.01;
            runs.push(r);
        }
        let mut lone = run("fmd", "b", 0, None, 1.0);
        lone.final_metric = 0.4;
        runs.push(lone);
        let rows = final_rows(&suite(runs));
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].method, "fedavg-full");
        assert!((rows[0].final_mean - 0.65).abs() < 1e-12);
        assert_eq!(rows[0].delta_points, None);
        assert_eq!(rows[1].method, "flux");
        assert!((rows[1].final_mean - 0.63).abs() < 1e-12);
        assert!((rows[1].best_mean - 0.64).abs() < 1e-12);
        // (0.63 − 0.65) × 100 = −2 points.
        assert!((rows[1].delta_points.unwrap() + 2.0).abs() < 1e-9);
        assert_eq!(rows[2].delta_points, None);
        let t = final_table(&rows);
        assert_eq!(t.rows[0][6], "reference");
        assert_eq!(t.rows[1][4], "0.6300");
        assert_eq!(t.rows[1][6], "-2.00");
        assert_eq!(t.rows[2][6], "n/a (no fedavg-full run)");
    }

    #[test]
    fn phase_shares_are_means_of_per_run_shares() {
        let mut a = run("flux", "a", 0, None, 1.0);
        a.phases = PhaseBreakdown {
            compute: 6.0,
            upload: 2.0,
            download: 2.0,
            ..Default::default()
        };
        let mut b = run("flux", "b", 0, None, 1.0);
        b.phases = PhaseBreakdown {
            compute: 2.0,
            upload: 2.0,
            ..Default::default()
        };
        b.rounds = 4;
        let empty = run("fmd", "a", 0, None, 1.0);
        let rows = phase_rows(&suite(vec![a, b, empty]));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].runs, 2);
        // compute shares 0.6 and 0.5 → 0.55; upload 0.2, 0.5 → 0.35; download 0.2, 0 → 0.1.
        let want = [0.55, 0.0, 0.0, 0.35, 0.1, 0.0];
        for (got, want) in rows[0].shares.iter().zip(want) {
            assert!((got - want).abs() < 1e-12, "{:?}", rows[0].shares);
        }
        // Per round: compute 6/10 and 2/4 → 0.55; upload 0.2 and 0.5 → 0.35.
        assert!((rows[0].per_round_s[0] - 0.55).abs() < 1e-12);
        assert!((rows[0].per_round_s[3] - 0.35).abs() < 1e-12);
        assert_eq!(rows[1].runs, 0);
        let t = phase_table(&rows);
        assert_eq!(t.rows[0][2], "1.00");
        assert_eq!(t.rows[0][3], "55.0");
        assert_eq!(t.rows[1][2], "—");
    }

    #[test]
    fn markdown_and_html_escape_cells() {
        let t = Table {
            title: "T".to_string(),
            notes: vec![],
            header: vec!["a".to_string(), "b".to_string()],
            rows: vec![vec!["x|y".to_string(), "<b>&\"".to_string()]],
        };
        let md = t.to_markdown();
        assert!(md.contains("| x\\|y | <b>&\" |"), "{md}");
        assert!(md.contains("|---|---|"));
        let html = t.to_html();
        assert!(
            html.contains("<td>x|y</td><td>&lt;b&gt;&amp;&quot;</td>"),
            "{html}"
        );
    }
}
