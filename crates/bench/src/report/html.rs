//! `report.html`: one self-contained page (inline CSS, inline SVG, no scripts, nothing
//! fetched) with the suite's identity, the tables, every plot and the suite file.

use super::plots::Plot;
use super::tables::{html_escape, Table};
use crate::results::SuiteResults;

const STYLE: &str = "body{font-family:sans-serif;margin:2em auto;max-width:1100px;\
padding:0 1em;color:#222}table{border-collapse:collapse;margin:0.5em 0 1.5em}\
th,td{border:1px solid #bbb;padding:0.25em 0.6em;text-align:left;vertical-align:top}\
th{background:#eee}td{font-variant-numeric:tabular-nums}p.note{color:#555;\
font-size:0.9em}figure{margin:1.5em 0}figure svg{max-width:100%;height:auto}\
figcaption{color:#555;font-size:0.9em}pre{background:#f6f6f6;padding:1em;\
overflow:auto}dl{display:grid;grid-template-columns:max-content auto;gap:0.2em 1em}\
dt{font-weight:bold}dd{margin:0}";

/// The SVG without an XML prolog, ready to inline.
fn inline_svg(svg: &str) -> &str {
    let s = svg.trim_start();
    if s.starts_with("<?xml") {
        if let Some(end) = s.find("?>") {
            return s[end + 2..].trim_start();
        }
    }
    s
}

pub fn report_html(results: &SuiteResults, tables: &[Table], plots: &[Plot]) -> String {
    let title = format!("fluxmoe TTA report: {}", results.suite);
    let mut s = String::new();
    s.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    s.push_str(&format!("<title>{}</title>\n", html_escape(&title)));
    s.push_str(&format!("<style>{STYLE}</style>\n</head>\n<body>\n"));
    s.push_str(&format!("<h1>{}</h1>\n<dl>\n", html_escape(&title)));
    let mut fact = |k: &str, v: &str| {
        s.push_str(&format!(
            "<dt>{}</dt><dd>{}</dd>\n",
            html_escape(k),
            html_escape(v)
        ))
    };
    fact("Suite", &results.suite);
    fact("Description", &results.description);
    fact("Commit", results.commit.as_deref().unwrap_or("unknown"));
    fact("Runs", &results.runs.len().to_string());
    s.push_str("</dl>\n<h2>Tables</h2>\n");
    for t in tables {
        s.push_str(&t.to_html());
    }
    s.push_str("<h2>Plots</h2>\n");
    for p in plots {
        s.push_str(&format!(
            "<figure id=\"{}\">\n<h3>{}</h3>\n{}\n<figcaption>{} ({}.svg, {}.png)</figcaption>\n</figure>\n",
            html_escape(&p.stem),
            html_escape(&p.title),
            inline_svg(&p.svg),
            html_escape(&p.caption),
            html_escape(&p.stem),
            html_escape(&p.stem),
        ));
    }
    s.push_str("<h2>Suite file</h2>\n<pre>");
    s.push_str(&html_escape(&results.suite_file));
    s.push_str("</pre>\n</body>\n</html>\n");
    s
}
