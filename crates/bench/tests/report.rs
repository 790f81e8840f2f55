//! `write_report` end to end on a synthetic suite: 2 tasks × fedavg-full, flux, fmd ×
//! 2 seeds with curves, roles and activations. Every file is checked for what a reader
//! gets: CSV and JSON that read back, SVGs that parse and draw, PNGs that decode and
//! are not blank, and one self-contained HTML page (rendered by headless Chromium where
//! the machine has it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fluxmoe_bench::report::{self, Rasterizer};
use fluxmoe_bench::results::{
    ActivationRecord, CurvePoint, PhaseBreakdown, RoleRecord, RunResult, SuiteResults,
};
use fluxmoe_bench::write_report;

const TASK_A: &str = "arc-easy";
/// Slash, colon, comma, quotes and angle brackets: file names, CSV quoting and HTML
/// escaping all have to cope.
const TASK_B: &str = "jsonl-em:/data/q,a \"v2\" <x>.jsonl";

/// Seconds per round and metric gain per round of each method.
fn pace(method: &str) -> (f64, f64) {
    match method {
        "fedavg-full" => (30.0, 0.05),
        "flux" => (10.0, 0.045),
        _ => (14.0, 0.03),
    }
}

fn synthetic_run(method: &str, task: &str, seed: u64) -> RunResult {
    let rounds = 10u32;
    let (secs, gain) = pace(method);
    let target = 0.5;
    let start = 0.2 + 0.01 * seed as f64;
    let seed_gain = gain * (1.0 - 0.1 * seed as f64);
    let curve: Vec<CurvePoint> = (0..=rounds)
        .map(|r| CurvePoint {
            round: r,
            virtual_s: secs * r as f64 * (1.0 + 0.05 * seed as f64),
            measured_s: r as f64 * 0.5,
            metric: start + seed_gain * r as f64,
        })
        .collect();
    let hit = curve.iter().find(|c| c.round > 0 && c.metric >= target);
    let experts_per_layer = 4;
    let layers = [2usize, 3];
    let mut roles = Vec::new();
    let mut activation = Vec::new();
    if method != "fedavg-full" {
        for r in 1..=rounds {
            for p in [3u32, 5] {
                // Participant 3 sits out every third round.
                if p == 3 && r % 3 == 0 {
                    continue;
                }
                let e = (r as usize + p as usize) % experts_per_layer;
                roles.push(RoleRecord {
                    round: r,
                    participant: p,
                    tuning: vec![(2, e), (3, (e + 1) % experts_per_layer)],
                    exploration: if method == "flux" {
                        vec![(2, (e + 1) % experts_per_layer)]
                    } else {
                        vec![]
                    },
                    dropped: vec![(3, (e + 2) % experts_per_layer)],
                    b_non: 2,
                });
            }
        }
    }
    if method == "flux" {
        for r in 1..=rounds {
            activation.push(ActivationRecord {
                round: r,
                layers: layers
                    .iter()
                    .map(|&l| {
                        let raw: Vec<f64> = (0..experts_per_layer)
                            .map(|e| 1.0 + ((e + r as usize + l) % experts_per_layer) as f64)
                            .collect();
                        let sum: f64 = raw.iter().sum();
                        (l, raw.iter().map(|x| x / sum).collect())
                    })
                    .collect(),
            });
        }
    }
    let last = curve.last().unwrap().clone();
    RunResult {
        method: method.to_string(),
        variant: String::new(),
        task: task.to_string(),
        seed,
        metric: "accuracy".to_string(),
        target: Some(target),
        tta_virtual_s: hit.map(|c| c.virtual_s),
        tta_measured_s: hit.map(|c| c.measured_s),
        rounds_to_target: hit.map(|c| c.round),
        rounds,
        initial_metric: start,
        final_metric: last.metric,
        best_metric: last.metric,
        virtual_s: last.virtual_s,
        measured_s: last.measured_s,
        bytes_moved: 1_000_000 + seed,
        peak_rss_bytes: (method == "flux").then_some(512 << 20),
        participant_heap_peak_bytes: (method == "flux").then_some(300 << 20),
        overhead_share: (method == "flux").then_some(0.04),
        curve,
        phases: PhaseBreakdown {
            compute: secs * 0.6 * rounds as f64,
            profile: if method == "flux" {
                0.4 * rounds as f64
            } else {
                0.0
            },
            pcie: if method == "fmd" {
                1.0 * rounds as f64
            } else {
                0.0
            },
            upload: secs * 0.2 * rounds as f64,
            download: secs * 0.15 * rounds as f64,
            aggregate: 0.1 * rounds as f64,
        },
        roles,
        activation,
    }
}

fn synthetic_suite() -> SuiteResults {
    let mut runs = Vec::new();
    for task in [TASK_A, TASK_B] {
        for method in ["fedavg-full", "flux", "fmd"] {
            for seed in [0, 1] {
                runs.push(synthetic_run(method, task, seed));
            }
        }
    }
    SuiteResults {
        suite: "tta-small".to_string(),
        description: "two tasks, three methods, two seeds".to_string(),
        commit: Some("abc1234-dirty".to_string()),
        suite_file: "name = \"tta-small\"\n# <not a tag> & co\nmethods = [\"flux\", \"fmd\"]\n"
            .to_string(),
        runs,
    }
}

/// Minimal RFC 4180 reader: quoted fields with doubled quotes, CRLF or LF lines.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(
        !quoted && field.is_empty() && row.is_empty(),
        "CSV ends mid-row"
    );
    rows
}

/// Decoded RGBA8 (or RGB8) pixels and size.
fn decode_png(path: &Path) -> (u32, u32, usize, Vec<u8>) {
    let file = std::fs::File::open(path).unwrap();
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, info.color_type.samples(), buf)
}

/// Pixels that differ from the top-left one (the background).
fn non_background_pixels(path: &Path) -> usize {
    let (_, _, samples, buf) = decode_png(path);
    let bg = &buf[..samples];
    buf.chunks(samples).filter(|p| *p != bg).count()
}

fn svg_size(svg: &str) -> (u32, u32) {
    let doc = roxmltree::Document::parse(svg).unwrap();
    let root = doc.root_element();
    let dim = |a: &str| root.attribute(a).unwrap().parse::<u32>().unwrap();
    (dim("width"), dim("height"))
}

fn expected_stems() -> Vec<String> {
    let b = "jsonl-em_data_q_a_v2_x_jsonl";
    vec![
        format!("curve_{TASK_A}"),
        format!("curve_{b}"),
        "phases".to_string(),
        format!("activation_{TASK_A}_flux"),
        format!("roles_{TASK_A}_flux"),
        format!("roles_{TASK_A}_fmd"),
        format!("activation_{b}_flux"),
        format!("roles_{b}_flux"),
        format!("roles_{b}_fmd"),
    ]
}

#[test]
fn report_writes_every_file_and_each_reads_back() {
    let results = synthetic_suite();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let files = write_report(&results, &out).unwrap();

    for f in ["results.csv", "results.json", "tables.md", "report.html"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let stems: Vec<String> = files
        .plots
        .iter()
        .map(|(svg, _)| svg.file_stem().unwrap().to_str().unwrap().to_string())
        .collect();
    assert_eq!(stems, expected_stems());
    for f in files.all() {
        assert!(f.starts_with(&out) && f.is_file(), "{}", f.display());
    }

    // JSON: the whole SuiteResults, read back equal.
    let json = std::fs::read_to_string(&files.results_json).unwrap();
    let back: SuiteResults = serde_json::from_str(&json).unwrap();
    assert_eq!(back, results);

    // CSV: a header and one row per run; the awkward task name survives quoting.
    let csv = std::fs::read_to_string(&files.results_csv).unwrap();
    let rows = parse_csv(&csv);
    assert_eq!(rows.len(), 1 + results.runs.len());
    assert_eq!(rows[0], report::csv::COLUMNS.map(String::from).to_vec());
    let col = |name: &str| rows[0].iter().position(|c| c == name).unwrap();
    for (row, run) in rows[1..].iter().zip(&results.runs) {
        assert_eq!(row.len(), rows[0].len());
        assert_eq!(row[col("task")], run.task);
        assert_eq!(row[col("method")], run.method);
        assert_eq!(row[col("seed")], run.seed.to_string());
        let tta = &row[col("tta_virtual_s")];
        assert_eq!(
            tta.parse::<f64>().ok(),
            run.tta_virtual_s,
            "{} {} {}",
            run.method,
            run.task,
            run.seed
        );
        assert_eq!(row[col("final")].parse::<f64>().unwrap(), run.final_metric);
        assert_eq!(
            row[col("peak_rss_bytes")].is_empty(),
            run.peak_rss_bytes.is_none()
        );
        assert_eq!(
            row[col("participant_heap_peak_bytes")].parse::<u64>().ok(),
            run.participant_heap_peak_bytes
        );
    }

    // Tables: the three sections, FLUX against both baselines on both tasks.
    let md = std::fs::read_to_string(&files.tables_md).unwrap();
    assert!(md.starts_with("# tta-small: tables"));
    assert!(md.contains("## Time to accuracy: FLUX speedup over each baseline"));
    assert!(md.contains("## Final metric per method"));
    assert!(md.contains("## Round-time breakdown by phase"));
    assert!(md.contains("| arc-easy | flux | fmd | 2 |"), "{md}");
    assert!(md.contains("| arc-easy | flux | fedavg-full | 2 |"), "{md}");
}

#[test]
fn svgs_parse_and_draw_and_pngs_are_not_blank() {
    let results = synthetic_suite();
    let dir = tempfile::tempdir().unwrap();
    let files = write_report(&results, dir.path()).unwrap();
    for (svg_path, png_path) in &files.plots {
        let svg = std::fs::read_to_string(svg_path).unwrap();
        let doc = roxmltree::Document::parse(&svg)
            .unwrap_or_else(|e| panic!("{}: {e}", svg_path.display()));
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        let count = |tag: &str| {
            doc.descendants()
                .filter(|n| n.tag_name().name() == tag)
                .count()
        };
        assert!(
            count("polyline") + count("path") + count("rect") > 0,
            "{} draws nothing",
            svg_path.display()
        );
        assert!(count("text") > 0, "{} has no text", svg_path.display());
        let (w, h, _, _) = decode_png(png_path);
        assert_eq!((w, h), svg_size(&svg), "{}", png_path.display());
        assert!(
            non_background_pixels(png_path) > 1000,
            "{} is blank",
            png_path.display()
        );
    }
    // The curve plot has a line per method, a legend entry each, and the dashed target.
    let curve = std::fs::read_to_string(dir.path().join("curve_arc-easy.svg")).unwrap();
    for label in ["fedavg-full", "flux", "fmd", "target 0.5"] {
        assert!(
            curve.contains(&format!(">{label}<")) || curve.contains(&format!(">\n{label}\n<")),
            "legend lacks {label}"
        );
    }
    assert!(curve.matches("<polyline").count() >= 3 + 5);
    // The roles grid of FLUX shows all five role colours (participant 3 sits out).
    let roles = std::fs::read_to_string(dir.path().join("roles_arc-easy_flux.svg")).unwrap();
    for (_, name, c) in fluxmoe_bench::report::plots::ROLES {
        let fill = format!("fill=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2);
        assert!(
            roles.contains(&fill) || roles.contains(&fill.to_lowercase()),
            "roles grid lacks {name} ({fill})"
        );
    }
}

#[test]
fn pngs_draw_without_any_font() {
    let results = synthetic_suite();
    let dir = tempfile::tempdir().unwrap();
    let raster = Rasterizer::without_fonts();
    assert_eq!(raster.font_faces(), 0);
    let files = report::write_report_with(&results, dir.path(), &raster).unwrap();
    for (_, png) in &files.plots {
        assert!(
            non_background_pixels(png) > 1000,
            "{} is blank",
            png.display()
        );
    }
}

#[test]
fn report_is_deterministic() {
    let results = synthetic_suite();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let raster = Rasterizer::new();
    let fa = report::write_report_with(&results, a.path(), &raster).unwrap();
    let fb = report::write_report_with(&results, b.path(), &raster).unwrap();
    for (x, y) in fa.all().into_iter().zip(fb.all()) {
        assert_eq!(x.file_name(), y.file_name());
        assert!(
            std::fs::read(x).unwrap() == std::fs::read(y).unwrap(),
            "{} differs between two writes",
            x.display()
        );
    }
}

#[test]
fn html_is_one_self_contained_page() {
    let results = synthetic_suite();
    let dir = tempfile::tempdir().unwrap();
    let files = write_report(&results, dir.path()).unwrap();
    let html = std::fs::read_to_string(&files.report_html).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    let lower = html.to_lowercase();
    for bad in ["<script", "<link", "<iframe", "<img", "@import", "url("] {
        assert!(!lower.contains(bad), "report.html contains {bad}");
    }
    for attr in ["src=", "href="] {
        for q in ["\"", "'", ""] {
            for scheme in ["http://", "https://", "//"] {
                let pat = format!("{attr}{q}{scheme}");
                assert!(!lower.contains(&pat), "report.html fetches: {pat}");
            }
        }
    }
    assert_eq!(html.matches("<svg").count(), files.plots.len());
    assert!(!html.contains("<?xml"));
    assert!(html.contains("<h1>fluxmoe TTA report: tta-small</h1>"));
    assert!(html.contains("abc1234-dirty"));
    assert!(html.contains("two tasks, three methods, two seeds"));
    // Tables as HTML, escaped task names, the suite file escaped in <pre>.
    assert_eq!(html.matches("<table>").count(), 3);
    assert!(html.contains("<td>jsonl-em:/data/q,a &quot;v2&quot; &lt;x&gt;.jsonl</td>"));
    assert!(html.contains("<pre>name = &quot;tta-small&quot;\n# &lt;not a tag&gt; &amp; co\n"));
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut empty = synthetic_suite();
    empty.runs.clear();
    let e = write_report(&empty, dir.path()).unwrap_err().to_string();
    assert!(e.contains("no runs"), "{e}");

    let mut dup = synthetic_suite();
    dup.runs.push(dup.runs[0].clone());
    let e = write_report(&dup, dir.path()).unwrap_err().to_string();
    assert_eq!(e, "run fedavg-full / arc-easy / seed 0 appears twice");

    let mut nan = synthetic_suite();
    nan.runs[3].curve[2].metric = f64::NAN;
    let e = write_report(&nan, dir.path()).unwrap_err().to_string();
    assert_eq!(e, "run flux / arc-easy / seed 1: curve is NaN");

    // An output folder that is a file.
    let file = dir.path().join("taken");
    std::fs::write(&file, "x").unwrap();
    let e = write_report(&synthetic_suite(), &file)
        .unwrap_err()
        .to_string();
    assert!(e.contains("taken"), "{e}");
    // Nothing was written for the rejected suites.
    assert!(std::fs::read_dir(dir.path()).unwrap().count() == 1);
}

/// A `chromium` (or `chromium-browser`) on the PATH.
fn find_chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Headless Chromium screenshots `page`; returns its stderr (console messages included).
fn screenshot(chromium: &Path, page: &Path, png: &Path, profile: &Path) -> String {
    let mut child = Command::new(chromium)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1200,2000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).ok();
        s
    });
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let err = reader.join().unwrap();
            assert!(status.success(), "chromium failed ({status}):\n{err}");
            return err;
        }
        if start.elapsed() > Duration::from_secs(120) {
            child.kill().ok();
            child.wait().ok();
            panic!("chromium took over 120 s on {}", page.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Lines of Chromium's log that report the page's console or an uncaught error.
fn console_errors(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
        .collect()
}

#[test]
fn headless_chromium_renders_the_report() {
    let Some(chromium) = find_chromium() else {
        eprintln!(
            "skipped: no chromium on the PATH (Debian package `chromium`) to render report.html"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let files = write_report(&synthetic_suite(), &dir.path().join("out")).unwrap();

    // The console check must see a page's error, or its silence on the report means
    // nothing: a control page with a failing script first.
    let control = dir.path().join("control.html");
    std::fs::write(
        &control,
        "<!DOCTYPE html><html><body><p>control</p><script>undefinedFunction();</script></body></html>",
    )
    .unwrap();
    let err = screenshot(
        &chromium,
        &control,
        &dir.path().join("control.png"),
        &dir.path().join("profile-control"),
    );
    assert!(
        !console_errors(&err).is_empty(),
        "chromium's log does not show the control page's uncaught error:\n{err}"
    );

    let shot = dir.path().join("report.png");
    let err = screenshot(
        &chromium,
        &files.report_html,
        &shot,
        &dir.path().join("profile-report"),
    );
    let errors = console_errors(&err);
    assert!(
        errors.is_empty(),
        "report.html logs errors:\n{}",
        errors.join("\n")
    );
    let (w, h, _, _) = decode_png(&shot);
    assert_eq!((w, h), (1200, 2000));
    assert!(
        non_background_pixels(&shot) > 10_000,
        "the screenshot of report.html is blank"
    );
}
