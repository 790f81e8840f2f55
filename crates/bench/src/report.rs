//! The outputs of a suite (issue #6): `results.csv` and `results.json` (one row per
//! run / the whole [`SuiteResults`]), `tables.md`, SVG and PNG plots, and one
//! self-contained `report.html`. Everything but the PNGs' text rendering (which uses the
//! machine's fonts) is a pure function of the results.

pub mod csv;
pub mod html;
pub mod plots;
pub mod raster;
pub mod tables;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::error::{io, Error, Result};
use crate::results::SuiteResults;

pub use plots::{sanitize, Plot};
pub use raster::Rasterizer;
pub use tables::{method_key, Table};

pub const RESULTS_CSV: &str = "results.csv";
pub const RESULTS_JSON: &str = "results.json";
pub const TABLES_MD: &str = "tables.md";
pub const REPORT_HTML: &str = "report.html";

/// What [`write_report`] wrote, all inside `out_dir`.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportFiles {
    pub results_csv: PathBuf,
    pub results_json: PathBuf,
    pub tables_md: PathBuf,
    pub report_html: PathBuf,
    /// `(svg, png)` of each plot, in report order.
    pub plots: Vec<(PathBuf, PathBuf)>,
}

impl ReportFiles {
    /// Every file, in write order.
    pub fn all(&self) -> Vec<&Path> {
        let mut v: Vec<&Path> = vec![&self.results_csv, &self.results_json, &self.tables_md];
        for (svg, png) in &self.plots {
            v.push(svg);
            v.push(png);
        }
        v.push(&self.report_html);
        v
    }
}

/// Reject what would make a wrong or unreadable report: no runs, the same method key,
/// task and seed twice, non-finite numbers (JSON cannot hold them).
pub fn validate(results: &SuiteResults) -> Result<()> {
    if results.runs.is_empty() {
        return Err(Error::Report(format!(
            "suite {:?} has no runs: nothing to report",
            results.suite
        )));
    }
    let mut seen = BTreeSet::new();
    for r in &results.runs {
        let key = method_key(r);
        let name = format!("run {key} / {} / seed {}", r.task, r.seed);
        if !seen.insert((key.clone(), r.task.clone(), r.seed)) {
            return Err(Error::Report(format!("{name} appears twice")));
        }
        let mut numbers = vec![
            ("initial_metric", r.initial_metric),
            ("final_metric", r.final_metric),
            ("best_metric", r.best_metric),
            ("virtual_s", r.virtual_s),
            ("measured_s", r.measured_s),
            ("phases", r.phases.total()),
        ];
        numbers.extend(r.target.map(|v| ("target", v)));
        numbers.extend(r.tta_virtual_s.map(|v| ("tta_virtual_s", v)));
        numbers.extend(r.tta_measured_s.map(|v| ("tta_measured_s", v)));
        numbers.extend(r.overhead_share.map(|v| ("overhead_share", v)));
        for c in &r.curve {
            numbers.push(("curve", c.virtual_s));
            numbers.push(("curve", c.metric));
        }
        for a in &r.activation {
            for (_, shares) in &a.layers {
                numbers.extend(shares.iter().map(|v| ("activation", *v)));
            }
        }
        if let Some((field, v)) = numbers.iter().find(|(_, v)| !v.is_finite()) {
            return Err(Error::Report(format!("{name}: {field} is {v}")));
        }
    }
    Ok(())
}

fn write(path: PathBuf, bytes: &[u8]) -> Result<PathBuf> {
    std::fs::write(&path, bytes).map_err(|e| io(&path, e))?;
    Ok(path)
}

/// Write every output of the report into `out_dir` (created if missing), with the
/// system's fonts for the PNGs' text.
pub fn write_report(results: &SuiteResults, out_dir: &Path) -> Result<ReportFiles> {
    write_report_with(results, out_dir, &Rasterizer::new())
}

/// [`write_report`] with a given rasteriser (e.g. one without fonts).
pub fn write_report_with(
    results: &SuiteResults,
    out_dir: &Path,
    raster: &Rasterizer,
) -> Result<ReportFiles> {
    validate(results)?;
    std::fs::create_dir_all(out_dir).map_err(|e| io(out_dir, e))?;
    let json = serde_json::to_string_pretty(results)
        .map_err(|e| Error::Report(format!("results.json: {e}")))?;
    let tables = tables::all_tables(results);
    let plots = plots::all_plots(results)?;
    let results_csv = write(
        out_dir.join(RESULTS_CSV),
        csv::results_csv(results).as_bytes(),
    )?;
    let results_json = write(out_dir.join(RESULTS_JSON), (json + "\n").as_bytes())?;
    let tables_md = write(
        out_dir.join(TABLES_MD),
        tables::tables_markdown(results).as_bytes(),
    )?;
    let mut files = Vec::new();
    for p in &plots {
        let svg = write(out_dir.join(format!("{}.svg", p.stem)), p.svg.as_bytes())?;
        let png_bytes = raster
            .png(&p.svg)
            .map_err(|e| Error::Report(format!("{}.png: {e}", p.stem)))?;
        let png = write(out_dir.join(format!("{}.png", p.stem)), &png_bytes)?;
        files.push((svg, png));
    }
    let report_html = write(
        out_dir.join(REPORT_HTML),
        html::report_html(results, &tables, &plots).as_bytes(),
    )?;
    Ok(ReportFiles {
        results_csv,
        results_json,
        tables_md,
        report_html,
        plots: files,
    })
}
