//! The report's plots as SVG strings (plotters' SVG backend writes `<text>` elements, so
//! no font is needed to make them): TTA curves per task, activation heatmaps, expert
//! role grids and the phase breakdown. Every function is pure: same results, same bytes.

use std::collections::{BTreeMap, BTreeSet};

use plotters::prelude::*;
use plotters::style::colors::colormaps::{ColorMap, ViridisRGB};

use super::tables::{self, method_key, method_keys, runs_by_seed, PhaseRow, PHASES};
use crate::error::{Error, Result};
use crate::results::{RunResult, SuiteResults};

/// One plot: `stem` names its files (`<stem>.svg`, `<stem>.png`), sanitized and unique
/// within the report.
#[derive(Clone, Debug, PartialEq)]
pub struct Plot {
    pub stem: String,
    pub title: String,
    pub caption: String,
    pub svg: String,
}

/// Most heatmap cells drawn; more rounds than fit are averaged into bins.
const MAX_HEATMAP_CELLS: usize = 20_000;

const METHOD_COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

const PHASE_COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(44, 160, 44),
    RGBColor(23, 190, 207),
    RGBColor(214, 39, 40),
];

/// A method key's colour: its position among the suite's method keys, so every plot
/// uses the same colour for the same method.
fn method_color(keys: &[String], key: &str) -> RGBColor {
    let i = keys.iter().position(|k| k == key).unwrap_or(0);
    METHOD_COLORS[i % METHOD_COLORS.len()]
}

/// `?` for plotters' results, naming the plot in the error.
macro_rules! tri {
    ($e:expr, $what:expr) => {
        $e.map_err(|e| Error::Report(format!("plot {}: {e}", $what)))?
    };
}

/// A file-name-safe stem: ASCII letters, digits, `-` and `_`; every other run of
/// characters becomes one `_`; at most 100 characters; never empty.
pub fn sanitize(s: &str) -> String {
    let mut out = String::new();
    let mut last_sub = false;
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            out.push(c);
            last_sub = false;
        } else if !last_sub {
            out.push('_');
            last_sub = true;
        }
    }
    let out: String = out.trim_matches('_').chars().take(100).collect();
    if out.is_empty() {
        "x".to_string()
    } else {
        out
    }
}

/// Hands out unique stems: a repeat gets `-2`, `-3`, ….
#[derive(Default)]
pub struct Stems(BTreeSet<String>);

impl Stems {
    pub fn take(&mut self, parts: &[&str]) -> String {
        let base = parts
            .iter()
            .map(|p| sanitize(p))
            .collect::<Vec<_>>()
            .join("_");
        let mut stem = base.clone();
        let mut n = 2;
        while self.0.contains(&stem) {
            stem = format!("{base}-{n}");
            n += 1;
        }
        self.0.insert(stem.clone());
        stem
    }
}

/// A method's curve on a task, averaged over seeds point by point: at each round that
/// every seed evaluated, the mean virtual time and the mean metric.
pub fn mean_curve(runs: &[&RunResult]) -> Vec<(f64, f64)> {
    let by_round: Vec<BTreeMap<u32, (f64, f64)>> = runs
        .iter()
        .map(|r| {
            r.curve
                .iter()
                .map(|c| (c.round, (c.virtual_s, c.metric)))
                .collect()
        })
        .collect();
    let Some(first) = by_round.first() else {
        return Vec::new();
    };
    let n = by_round.len() as f64;
    first
        .keys()
        .filter_map(|round| {
            let pts: Vec<&(f64, f64)> = by_round.iter().filter_map(|m| m.get(round)).collect();
            (pts.len() == by_round.len()).then(|| {
                let t: f64 = pts.iter().map(|p| p.0).sum();
                let m: f64 = pts.iter().map(|p| p.1).sum();
                (t / n, m / n)
            })
        })
        .collect()
}

/// `lo..hi` padded by 5 % (or ±0.5 when flat), for an axis.
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite()) {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

/// `curve_<task>`: metric vs virtual time, one line per method (mean over seeds), the
/// target dashed.
pub fn curve_svg(results: &SuiteResults, task: &str) -> Result<Option<String>> {
    let keys = method_keys(results);
    let mut series = Vec::new();
    let mut metric = String::new();
    let mut target = None;
    let mut seeds = BTreeSet::new();
    for key in &keys {
        let runs: Vec<&RunResult> = runs_by_seed(results, task, key).into_values().collect();
        if runs.is_empty() {
            continue;
        }
        if metric.is_empty() {
            metric = runs[0].metric.clone();
        }
        target = target.or_else(|| runs.iter().find_map(|r| r.target));
        seeds.extend(runs.iter().map(|r| r.seed));
        let pts = mean_curve(&runs);
        if !pts.is_empty() {
            series.push((key.clone(), pts));
        }
    }
    if series.is_empty() {
        return Ok(None);
    }
    let xs = series.iter().flat_map(|(_, p)| p.iter().map(|p| p.0));
    let x_hi = xs.fold(0.0f64, f64::max);
    let x_hi = if x_hi > 0.0 { x_hi * 1.02 } else { 1.0 };
    let mut ys: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.1))
        .collect();
    ys.extend(target);
    let (y_lo, y_hi) = padded(
        ys.iter().copied().fold(f64::INFINITY, f64::min),
        ys.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    let what = format!("curve {task}");
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 540)).into_drawing_area();
        tri!(root.fill(&WHITE), &what);
        let caption = format!(
            "{task}: {metric} vs virtual time (mean over {} seed{})",
            seeds.len(),
            if seeds.len() == 1 { "" } else { "s" }
        );
        let mut chart = tri!(
            ChartBuilder::on(&root)
                .caption(caption, ("sans-serif", 18))
                .margin(14)
                .x_label_area_size(44)
                .y_label_area_size(64)
                .build_cartesian_2d(0.0..x_hi, y_lo..y_hi),
            &what
        );
        tri!(
            chart
                .configure_mesh()
                .x_desc("virtual time (s)")
                .y_desc(metric.as_str())
                .light_line_style(TRANSPARENT)
                .label_style(("sans-serif", 12))
                .axis_desc_style(("sans-serif", 13))
                .draw(),
            &what
        );
        for (key, pts) in &series {
            let color = method_color(&keys, key);
            tri!(
                chart.draw_series(
                    LineSeries::new(pts.iter().copied(), color.stroke_width(2)).point_size(3)
                ),
                &what
            )
            .label(key.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2))
            });
        }
        if let Some(t) = target {
            tri!(
                chart.draw_series(DashedLineSeries::new(
                    vec![(0.0, t), (x_hi, t)],
                    8,
                    6,
                    BLACK.stroke_width(1),
                )),
                &what
            )
            .label(format!("target {t}"))
            .legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 8, y), (x + 14, y), (x + 22, y)], BLACK)
            });
        }
        tri!(
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .draw(),
            &what
        );
        tri!(root.present(), &what);
    }
    Ok(Some(svg))
}

/// Draws a colour key (swatch and label per entry) across a strip.
fn draw_key<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    entries: &[(String, RGBColor)],
    what: &str,
) -> Result<()> {
    let mut x = 70;
    for (label, color) in entries {
        tri!(
            area.draw(&Rectangle::new([(x, 12), (x + 16, 28)], color.filled())),
            what
        );
        tri!(
            area.draw(&Rectangle::new(
                [(x, 12), (x + 16, 28)],
                BLACK.stroke_width(1)
            )),
            what
        );
        tri!(
            area.draw(&Text::new(
                label.clone(),
                (x + 22, 14),
                ("sans-serif", 14).into_font()
            )),
            what
        );
        x += 34 + 8 * label.chars().count() as i32;
    }
    Ok(())
}

fn expert_label(layer: usize, expert: usize) -> String {
    format!("L{layer} E{expert}")
}

/// Every `(layer, expert)` a run names in its roles or activations, sorted.
fn experts_of(run: &RunResult) -> Vec<(usize, usize)> {
    let mut set = BTreeSet::new();
    for a in &run.activation {
        for (layer, shares) in &a.layers {
            set.extend((0..shares.len()).map(|e| (*layer, e)));
        }
    }
    for r in &run.roles {
        set.extend(
            r.tuning
                .iter()
                .chain(&r.exploration)
                .chain(&r.dropped)
                .copied(),
        );
    }
    set.into_iter().collect()
}

/// Rows (experts, top to bottom) on integer y centres, so the labels sit on the rows.
fn row_y(rows: usize, i: usize) -> f64 {
    (rows - 1 - i) as f64
}

/// `activation_<task>_<method>`: mean activation share per expert (rows) over rounds
/// (columns; consecutive rounds averaged into bins when there are too many cells).
pub fn activation_svg(run: &RunResult) -> Result<Option<String>> {
    let mut records: Vec<_> = run.activation.iter().collect();
    records.sort_by_key(|a| a.round);
    records.dedup_by_key(|a| a.round);
    let experts: Vec<(usize, usize)> = {
        let mut set = BTreeSet::new();
        for a in &records {
            for (layer, shares) in &a.layers {
                set.extend((0..shares.len()).map(|e| (*layer, e)));
            }
        }
        set.into_iter().collect()
    };
    if records.is_empty() || experts.is_empty() {
        return Ok(None);
    }
    let rows = experts.len();
    let max_cols = (MAX_HEATMAP_CELLS / rows).clamp(1, 120);
    let bin = records.len().div_ceil(max_cols);
    // (first round, last round, mean share per expert row; None = not recorded)
    let mut cells: Vec<(u32, u32, Vec<Option<f64>>)> = Vec::new();
    for chunk in records.chunks(bin) {
        let mut vals = Vec::with_capacity(rows);
        for &(layer, expert) in &experts {
            let v: Vec<f64> = chunk
                .iter()
                .filter_map(|a| {
                    a.layers
                        .iter()
                        .find(|(l, _)| *l == layer)
                        .and_then(|(_, s)| s.get(expert).copied())
                })
                .collect();
            vals.push(tables::mean(&v));
        }
        cells.push((chunk[0].round, chunk[chunk.len() - 1].round, vals));
    }
    let vmax = cells
        .iter()
        .flat_map(|c| c.2.iter().flatten())
        .copied()
        .fold(0.0f64, f64::max);
    let vmax = if vmax > 0.0 { vmax } else { 1.0 };
    let color = |v: f64| ViridisRGB.get_color_normalized(v as f32, 0.0, vmax as f32);
    let x_lo = records[0].round as f64 - 0.5;
    let x_hi = records[records.len() - 1].round as f64 + 0.5;
    let height = (120 + 14 * rows as u32).clamp(320, 2400);
    let what = format!("activation {} {}", run.task, method_key(run));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, height)).into_drawing_area();
        tri!(root.fill(&WHITE), &what);
        let (main, bar) = root.split_horizontally(860);
        let caption = format!(
            "{}: expert activation share, {} seed {}{}",
            run.task,
            method_key(run),
            run.seed,
            if bin > 1 {
                format!(" ({bin} rounds per column)")
            } else {
                String::new()
            }
        );
        let mut chart = tri!(
            ChartBuilder::on(&main)
                .caption(caption, ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(70)
                .build_cartesian_2d(x_lo..x_hi, -0.5..rows as f64 - 0.5),
            &what
        );
        let label_rows = experts.clone();
        tri!(
            chart
                .configure_mesh()
                .disable_mesh()
                .label_style(("sans-serif", 12))
                .axis_desc_style(("sans-serif", 13))
                .x_desc("round")
                .x_labels(12)
                .x_label_formatter(&|x| int_label(*x))
                .y_labels(rows.min(40))
                .y_label_formatter(&|y| {
                    let r = y.round();
                    if (y - r).abs() > 1e-6 || r < 0.0 || r as usize >= rows {
                        return String::new();
                    }
                    let (l, e) = label_rows[rows - 1 - r as usize];
                    expert_label(l, e)
                })
                .draw(),
            &what
        );
        tri!(
            chart.draw_series(cells.iter().flat_map(|(r0, r1, vals)| {
                vals.iter().enumerate().map(move |(i, v)| {
                    let y = row_y(rows, i);
                    let style = match v {
                        Some(v) => color(*v).filled(),
                        None => RGBColor(235, 235, 235).filled(),
                    };
                    Rectangle::new(
                        [(*r0 as f64 - 0.5, y - 0.5), (*r1 as f64 + 0.5, y + 0.5)],
                        style,
                    )
                })
            })),
            &what
        );
        let mut key = tri!(
            ChartBuilder::on(&bar)
                .margin_top(40)
                .margin_bottom(50)
                .margin_right(40)
                .y_label_area_size(0)
                .right_y_label_area_size(44)
                .build_cartesian_2d(0.0..1.0, 0.0..vmax),
            &what
        );
        tri!(
            key.configure_mesh()
                .disable_mesh()
                .disable_x_axis()
                .y_labels(5)
                .y_label_formatter(&|v| format!("{v:.2}"))
                .label_style(("sans-serif", 12))
                .draw(),
            &what
        );
        let steps = 64;
        tri!(
            key.draw_series((0..steps).map(|i| {
                let lo = vmax * i as f64 / steps as f64;
                let hi = vmax * (i + 1) as f64 / steps as f64;
                Rectangle::new([(0.0, lo), (1.0, hi)], color((lo + hi) / 2.0).filled())
            })),
            &what
        );
        tri!(root.present(), &what);
    }
    Ok(Some(svg))
}

fn int_label(x: f64) -> String {
    let r = x.round();
    if (x - r).abs() < 1e-6 {
        format!("{r:.0}")
    } else {
        String::new()
    }
}

/// An expert's role for one participant in one round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Tuning,
    Exploration,
    Merged,
    Dropped,
    NotSampled,
}

pub const ROLES: [(Role, &str, RGBColor); 5] = [
    (Role::Tuning, "tuning", RGBColor(31, 119, 180)),
    (Role::Exploration, "exploration", RGBColor(255, 127, 14)),
    (Role::Merged, "merged", RGBColor(160, 215, 150)),
    (Role::Dropped, "dropped", RGBColor(214, 39, 40)),
    (Role::NotSampled, "not sampled", RGBColor(238, 238, 238)),
];

fn role_color(role: Role) -> RGBColor {
    ROLES
        .iter()
        .find(|r| r.0 == role)
        .map(|r| r.2)
        .unwrap_or(BLACK)
}

/// The role grid of one participant: experts × rounds from the run's first to its last
/// round with roles; rounds without a record of this participant are `NotSampled`.
#[derive(Clone, Debug, PartialEq)]
pub struct RoleGrid {
    /// `(layer, expert)` per row, sorted.
    pub experts: Vec<(usize, usize)>,
    pub rounds: Vec<u32>,
    /// `cells[row][column]`.
    pub cells: Vec<Vec<Role>>,
}

pub fn role_grid(run: &RunResult, participant: u32) -> RoleGrid {
    let experts = experts_of(run);
    let (Some(lo), Some(hi)) = (
        run.roles.iter().map(|r| r.round).min(),
        run.roles.iter().map(|r| r.round).max(),
    ) else {
        return RoleGrid {
            experts,
            rounds: Vec::new(),
            cells: Vec::new(),
        };
    };
    let rounds: Vec<u32> = (lo..=hi).collect();
    // Reversed so that on a repeated round the first record wins.
    let mine: BTreeMap<u32, _> = run
        .roles
        .iter()
        .filter(|r| r.participant == participant)
        .map(|r| (r.round, r))
        .rev()
        .collect();
    let cells = experts
        .iter()
        .map(|e| {
            rounds
                .iter()
                .map(|round| match mine.get(round) {
                    None => Role::NotSampled,
                    Some(r) if r.tuning.contains(e) => Role::Tuning,
                    Some(r) if r.exploration.contains(e) => Role::Exploration,
                    Some(r) if r.dropped.contains(e) => Role::Dropped,
                    Some(_) => Role::Merged,
                })
                .collect()
        })
        .collect();
    RoleGrid {
        experts,
        rounds,
        cells,
    }
}

/// `roles_<task>_<method>`: the lowest participant id's expert roles over rounds.
pub fn roles_svg(run: &RunResult) -> Result<Option<String>> {
    let Some(participant) = run.roles.iter().map(|r| r.participant).min() else {
        return Ok(None);
    };
    let RoleGrid {
        experts,
        rounds,
        cells: grid,
    } = role_grid(run, participant);
    if experts.is_empty() || rounds.is_empty() {
        return Ok(None);
    }
    let rows = experts.len();
    let x_lo = rounds[0] as f64 - 0.5;
    let x_hi = rounds[rounds.len() - 1] as f64 + 0.5;
    let height = (160 + 14 * rows as u32).clamp(360, 2400);
    let what = format!("roles {} {}", run.task, method_key(run));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, height)).into_drawing_area();
        tri!(root.fill(&WHITE), &what);
        let (top, main) = root.split_vertically(40);
        let entries: Vec<(String, RGBColor)> =
            ROLES.iter().map(|r| (r.1.to_string(), r.2)).collect();
        draw_key(&top, &entries, &what)?;
        let caption = format!(
            "{}: expert roles of participant {participant}, {} seed {}",
            run.task,
            method_key(run),
            run.seed
        );
        let mut chart = tri!(
            ChartBuilder::on(&main)
                .caption(caption, ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(70)
                .build_cartesian_2d(x_lo..x_hi, -0.5..rows as f64 - 0.5),
            &what
        );
        let label_rows = experts.clone();
        tri!(
            chart
                .configure_mesh()
                .disable_mesh()
                .label_style(("sans-serif", 12))
                .axis_desc_style(("sans-serif", 13))
                .x_desc("round")
                .x_labels(12)
                .x_label_formatter(&|x| int_label(*x))
                .y_labels(rows.min(40))
                .y_label_formatter(&|y| {
                    let r = y.round();
                    if (y - r).abs() > 1e-6 || r < 0.0 || r as usize >= rows {
                        return String::new();
                    }
                    let (l, e) = label_rows[rows - 1 - r as usize];
                    expert_label(l, e)
                })
                .draw(),
            &what
        );
        // One rectangle per run of equal roles along a row.
        let mut rects = Vec::new();
        for (i, row) in grid.iter().enumerate() {
            let y = row_y(rows, i);
            let mut start = 0;
            for j in 1..=row.len() {
                if j == row.len() || row[j] != row[start] {
                    rects.push(Rectangle::new(
                        [
                            (rounds[start] as f64 - 0.5, y - 0.45),
                            (rounds[j - 1] as f64 + 0.5, y + 0.45),
                        ],
                        role_color(row[start]).filled(),
                    ));
                    start = j;
                }
            }
        }
        tri!(chart.draw_series(rects), &what);
        tri!(root.present(), &what);
    }
    Ok(Some(svg))
}

/// `phases`: mean seconds per round by phase, stacked, one bar per method.
pub fn phases_svg(rows: &[PhaseRow]) -> Result<Option<String>> {
    let rows: Vec<&PhaseRow> = rows.iter().filter(|r| r.runs > 0).collect();
    if rows.is_empty() {
        return Ok(None);
    }
    let n = rows.len();
    let y_hi = rows
        .iter()
        .map(|r| r.per_round_s.iter().sum::<f64>())
        .fold(0.0f64, f64::max);
    let y_hi = if y_hi > 0.0 { y_hi * 1.08 } else { 1.0 };
    let what = "phases";
    let mut svg = String::new();
    {
        let width = (240 + 110 * n as u32).max(720);
        let root = SVGBackend::with_string(&mut svg, (width, 520)).into_drawing_area();
        tri!(root.fill(&WHITE), what);
        let (top, main) = root.split_vertically(40);
        let entries: Vec<(String, RGBColor)> = PHASES
            .iter()
            .zip(PHASE_COLORS)
            .map(|(p, c)| (p.to_string(), c))
            .collect();
        draw_key(&top, &entries, what)?;
        let mut chart = tri!(
            ChartBuilder::on(&main)
                .caption(
                    "Round time by phase (mean over tasks and seeds)",
                    ("sans-serif", 16),
                )
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(64)
                .build_cartesian_2d(-0.5..n as f64 - 0.5, 0.0..y_hi),
            what
        );
        let names: Vec<String> = rows.iter().map(|r| r.method.clone()).collect();
        tri!(
            chart
                .configure_mesh()
                .disable_x_mesh()
                .light_line_style(TRANSPARENT)
                .label_style(("sans-serif", 12))
                .axis_desc_style(("sans-serif", 13))
                .x_labels(n)
                .x_label_formatter(&|x| {
                    let r = x.round();
                    if (x - r).abs() > 1e-6 || r < 0.0 || r as usize >= n {
                        return String::new();
                    }
                    names[r as usize].clone()
                })
                .y_desc("virtual seconds per round")
                .draw(),
            what
        );
        let mut rects = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            let x = i as f64;
            let mut base = 0.0;
            for (p, secs) in r.per_round_s.iter().enumerate() {
                if *secs > 0.0 {
                    rects.push(Rectangle::new(
                        [(x - 0.3, base), (x + 0.3, base + secs)],
                        PHASE_COLORS[p].filled(),
                    ));
                }
                base += secs;
            }
        }
        tri!(chart.draw_series(rects), what);
        tri!(root.present(), what);
    }
    Ok(Some(svg))
}

/// Every plot of the report, in report order: the curve per task, the phase bars, then
/// per task and method (seed 0 — the lowest seed — of each) the activation heatmap and
/// the role grid where the run recorded them.
pub fn all_plots(results: &SuiteResults) -> Result<Vec<Plot>> {
    let mut stems = Stems::default();
    let mut out = Vec::new();
    let tasks = tables::tasks(results);
    for task in &tasks {
        if let Some(svg) = curve_svg(results, task)? {
            out.push(Plot {
                stem: stems.take(&["curve", task]),
                title: format!("Time to accuracy: {task}"),
                caption: "Metric against virtual time; each line is one method, averaged over \
                          seeds at the rounds every seed evaluated. Dashed: the target."
                    .to_string(),
                svg,
            });
        }
    }
    if let Some(svg) = phases_svg(&tables::phase_rows(results))? {
        out.push(Plot {
            stem: stems.take(&["phases"]),
            title: "Round-time breakdown".to_string(),
            caption: "Mean virtual seconds per round on the critical path, by phase, \
                      averaged over tasks and seeds."
                .to_string(),
            svg,
        });
    }
    let keys = method_keys(results);
    for task in &tasks {
        for key in &keys {
            let Some(run) = runs_by_seed(results, task, key).into_values().next() else {
                continue;
            };
            if let Some(svg) = activation_svg(run)? {
                out.push(Plot {
                    stem: stems.take(&["activation", task, key]),
                    title: format!("Expert activation: {task}, {key}"),
                    caption: format!(
                        "Seed {}: mean activation share of each expert (rows: layer, expert) \
                         per round (columns).",
                        run.seed
                    ),
                    svg,
                });
            }
            if let Some(svg) = roles_svg(run)? {
                out.push(Plot {
                    stem: stems.take(&["roles", task, key]),
                    title: format!("Expert roles: {task}, {key}"),
                    caption: format!(
                        "Seed {}: roles of the lowest participant id's experts per round; \
                         grey where that participant was not sampled.",
                        run.seed
                    ),
                    svg,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{CurvePoint, PhaseBreakdown, RoleRecord};

    fn run_with_curve(seed: u64, pts: &[(u32, f64, f64)]) -> RunResult {
        RunResult {
            method: "flux".to_string(),
            variant: String::new(),
            task: "t".to_string(),
            seed,
            metric: "accuracy".to_string(),
            target: None,
            tta_virtual_s: None,
            tta_measured_s: None,
            rounds_to_target: None,
            rounds: 3,
            initial_metric: 0.0,
            final_metric: 0.0,
            best_metric: 0.0,
            virtual_s: 0.0,
            measured_s: 0.0,
            bytes_moved: 0,
            peak_rss_bytes: None,
            participant_heap_peak_bytes: None,
            overhead_share: None,
            curve: pts
                .iter()
                .map(|&(round, virtual_s, metric)| CurvePoint {
                    round,
                    virtual_s,
                    measured_s: 0.0,
                    metric,
                })
                .collect(),
            phases: PhaseBreakdown::default(),
            roles: Vec::new(),
            activation: Vec::new(),
        }
    }

    #[test]
    fn sanitize_keeps_safe_characters_and_collapses_the_rest() {
        assert_eq!(sanitize("arc-easy"), "arc-easy");
        assert_eq!(sanitize("jsonl-em:/path/x.jsonl"), "jsonl-em_path_x_jsonl");
        assert_eq!(sanitize("../../etc/passwd"), "etc_passwd");
        assert_eq!(sanitize("flux:no explore"), "flux_no_explore");
        assert_eq!(sanitize("///"), "x");
        assert_eq!(sanitize("données"), "donn_es");
        assert_eq!(sanitize(&"a".repeat(300)).len(), 100);
    }

    #[test]
    fn stems_are_unique() {
        let mut s = Stems::default();
        assert_eq!(s.take(&["curve", "a/b"]), "curve_a_b");
        assert_eq!(s.take(&["curve", "a:b"]), "curve_a_b-2");
        assert_eq!(s.take(&["curve", "a b"]), "curve_a_b-3");
        assert_eq!(s.take(&["phases"]), "phases");
    }

    #[test]
    fn mean_curve_averages_the_rounds_every_seed_evaluated() {
        let a = run_with_curve(0, &[(0, 0.0, 0.2), (1, 10.0, 0.4), (2, 20.0, 0.6)]);
        // Seed 1 skipped round 1's evaluation.
        let b = run_with_curve(1, &[(0, 0.0, 0.4), (2, 30.0, 0.8)]);
        let m = mean_curve(&[&a, &b]);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0], (0.0, 0.30000000000000004));
        assert!((m[1].0 - 25.0).abs() < 1e-12 && (m[1].1 - 0.7).abs() < 1e-12);
        assert_eq!(mean_curve(&[&a]).len(), 3);
        assert!(mean_curve(&[]).is_empty());
    }

    #[test]
    fn role_grid_marks_unsampled_rounds_and_merged_experts() {
        let mut r = run_with_curve(0, &[]);
        let rec = |round, participant, tuning: Vec<(usize, usize)>, dropped| RoleRecord {
            round,
            participant,
            tuning,
            exploration: vec![],
            dropped,
            b_non: 0,
        };
        r.roles = vec![
            rec(1, 7, vec![(0, 0)], vec![(0, 2)]),
            rec(1, 4, vec![(0, 1)], vec![]),
            rec(3, 4, vec![(0, 0)], vec![(0, 1)]),
        ];
        let g = role_grid(&r, 4);
        assert_eq!(g.experts, vec![(0, 0), (0, 1), (0, 2)]);
        assert_eq!(g.rounds, vec![1, 2, 3]);
        let grid = g.cells;
        use Role::*;
        assert_eq!(grid[0], vec![Merged, NotSampled, Tuning]);
        assert_eq!(grid[1], vec![Tuning, NotSampled, Dropped]);
        assert_eq!(grid[2], vec![Merged, NotSampled, Merged]);
    }

    #[test]
    fn runs_without_data_make_no_plot() {
        let r = run_with_curve(0, &[(0, 0.0, 0.1)]);
        assert_eq!(activation_svg(&r).unwrap(), None);
        assert_eq!(roles_svg(&r).unwrap(), None);
        assert_eq!(phases_svg(&[]).unwrap(), None);
    }
}
