//! `fluxmoe bench tta --suite smoke`: the whole benchmark pipeline on the tiny built-in
//! model, every method on two real tasks; `--resume` reuses finished runs.

use super::{fluxmoe_env, stderr};

#[test]
fn smoke_suite_runs_every_method_and_resumes_without_rerunning() {
    if !std::path::Path::new(fluxmoe_data::tasks::wordnet::DEFAULT_DIR).exists() {
        eprintln!("skipped: WordNet is not installed (apt-get install wordnet-base)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("smoke");
    let args = [
        "bench",
        "tta",
        "--suite",
        "smoke",
        "--out",
        out.to_str().unwrap(),
    ];
    let o = fluxmoe_env(&args, &[("FLUXMOE_CACHE", cache.to_str().unwrap())]);
    assert!(o.status.success(), "{}", stderr(&o));
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let runs = results["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 10, "5 methods x 2 tasks");
    for method in ["fedavg-full", "flux", "fmd", "fmq", "fmes"] {
        let r: Vec<_> = runs.iter().filter(|r| r["method"] == method).collect();
        assert_eq!(r.len(), 2, "{method}");
        for run in r {
            assert_eq!(
                run["curve"].as_array().unwrap().len(),
                4,
                "initial + 3 rounds"
            );
            assert!(run["virtual_s"].as_f64().unwrap() > 0.0);
        }
    }
    // FLUX records roles and activations; its profiling shows in the phase breakdown.
    let flux = runs.iter().find(|r| r["method"] == "flux").unwrap();
    assert!(!flux["roles"].as_array().unwrap().is_empty());
    assert!(!flux["activation"].as_array().unwrap().is_empty());
    let fmd = runs.iter().find(|r| r["method"] == "fmd").unwrap();
    assert!(
        fmd["phases"]["pcie"].as_f64().unwrap() > 0.0,
        "offloading moves bytes"
    );
    // ... and is derived from fedavg-full's run (same training): the same curve, each
    // point later by the PCIe time.
    let prov: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("runs/math/fmd/seed0/run.json")).unwrap(),
    )
    .unwrap();
    assert!(
        prov["derived_from"]
            .as_str()
            .is_some_and(|p| p.ends_with("runs/math/fedavg-full/seed0")),
        "{prov}"
    );
    let full = runs
        .iter()
        .find(|r| r["method"] == "fedavg-full" && r["task"] == fmd["task"])
        .unwrap();
    let points = |r: &serde_json::Value| r["curve"].as_array().unwrap().clone();
    for (a, b) in points(full).iter().zip(points(fmd).iter()).skip(1) {
        assert_eq!(a["metric"], b["metric"]);
        assert!(b["virtual_s"].as_f64() > a["virtual_s"].as_f64(), "{a} {b}");
    }

    // Finished runs keep their metrics but not their checkpoint and final model.
    let run_dir = out.join("runs/math/flux/seed0");
    assert!(run_dir.join("metrics.jsonl").exists());
    assert!(run_dir.join("summary.json").exists());
    assert!(!run_dir.join("checkpoint").exists());
    assert!(!run_dir.join("final").exists());

    // The report: tables, CSV, plots as SVG and PNG, one self-contained page.
    for f in [
        "results.csv",
        "tables.md",
        "report.html",
        "phases.svg",
        "phases.png",
    ] {
        let len = std::fs::metadata(out.join(f)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 100, "{f}: {len} bytes");
    }
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 11, "header + 10 runs");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains("<svg") && !html.contains("src=\"http"),
        "inline, offline"
    );
    let pngs: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    assert!(pngs.len() >= 5, "curves, phases, heatmaps, roles: {pngs:?}");

    // Resume: nothing is rerun, so no run's metrics file is rewritten.
    let metrics = out.join("runs/math/flux/seed0/metrics.jsonl");
    // The binary counts heap bytes: each participant's own training peak is recorded
    // (participants train one at a time here).
    for line in std::fs::read_to_string(&metrics).unwrap().lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        for t in record["times"].as_array().unwrap() {
            let peak = t["heap_peak_bytes"].as_u64().unwrap_or(0);
            assert!(peak > 0 && peak < 1 << 30, "{t}");
        }
    }
    let before = std::fs::metadata(&metrics).unwrap().modified().unwrap();
    let mut resumed = args.to_vec();
    resumed.push("--resume");
    let o = fluxmoe_env(&resumed, &[("FLUXMOE_CACHE", cache.to_str().unwrap())]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::metadata(&metrics).unwrap().modified().unwrap(),
        before
    );
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(again["runs"], results["runs"]);
}

#[test]
fn an_unknown_suite_is_an_error_naming_it() {
    let o = super::fluxmoe(&["bench", "tta", "--suite", "nope", "--out", "/tmp/x-nope"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("suite `nope`"), "{}", stderr(&o));
}
