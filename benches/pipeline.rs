//! The pipeline benchmark (plain `main`, `harness = false`): `cargo bench --bench pipeline`, or with
//! the onnxruntime engine beside tract: `cargo bench --features ort --bench pipeline` with
//! `ORT_DYLIB_PATH` set (`source .ci/setup-perf.sh`).
//!
//! 1. Single-model latencies on one thread (one U-Net slice, one classifier crop) per engine, so a
//!    kernel regression can be told apart from a change in parallel scaling.
//! 2. The whole pipeline per (case, engine, mode), each in its own child process so its peak RSS
//!    (`VmHWM`) is its own: LIDC-IDRI-0001 (from `../shared`) and a 512×512×300 phantom; engines tract
//!    and (with the feature) ort; modes `default` (lung-region tiles), `body` (body-region tiles)
//!    and `exact`. Printed: seconds
//!    per stage, candidates, findings, the GFLOP/s the stages achieve counted as *exact* work (U-Net
//!    12.8 GFLOP per 512×512 slice, classifier 0.62 GFLOP per crop, so a shortcut shows as a higher
//!    effective rate), and the total against the cores' fp32 peak (`NODULED_BENCH_PEAK_GFLOPS`,
//!    default 222 = 2 AVX-512 cores, the machine).
//!
//! Environment: `NODULED_BENCH_THREADS` (default 2), `NODULED_BENCH_QUICK=1` (latencies only),
//! `NODULED_BENCH_CASES` (`lidc,phantom`), `NODULED_BENCH_ENGINES` (`tract,ort`),
//! `NODULED_BENCH_MODES` (`default,body,exact`), `NODULED_BENCH_REPEAT` (runs per row; the minimum is
//! shown: the machine is shared). Skips LIDC with a message when `../shared` is absent.
//! `NODULED_BENCH_REFERENCE_PYTHON` (a Python with numpy, scipy, pydicom, onnxruntime) also runs
//! `../shared/tools/reference_pipeline.py` on LIDC-IDRI-0001 in the same run, the yardstick.

use noduled::engine::{self, Engine, ModelRole};
use noduled::pipeline::segment::SegmentRegions;
use noduled::pipeline::{classify, segment, Models, Pipeline, PipelineOptions};
use noduled::volume::Volume;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// U-Net work per pixel: 12.8 GFLOP per 512×512 slice.
const SEG_FLOP_PER_PIXEL: f64 = 12.8e9 / (512.0 * 512.0);
/// Classifier work per crop.
const CLS_FLOP_PER_CROP: f64 = 0.62e9;
const CHILD: &str = "NODULED_BENCH_CHILD";

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn threads() -> usize {
    std::env::var("NODULED_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

/// Peak resident set of this process (kB), from /proc/self/status.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn engines() -> Vec<String> {
    let available = engine::available_engines();
    env_list("NODULED_BENCH_ENGINES", "tract,ort")
        .into_iter()
        .filter(|e| {
            let ok = available.contains(&e.as_str())
                && (e == "tract" || std::env::var_os("ORT_DYLIB_PATH").is_some());
            if !ok {
                eprintln!(
                    "engine {e}: skipped (this build has {}; ort needs ORT_DYLIB_PATH)",
                    available.join(", ")
                );
            }
            ok
        })
        .collect()
}

fn load_case(case: &str) -> Result<(Volume, f64), String> {
    let t = Instant::now();
    let volume = match case {
        "lidc" => {
            let dir = shared().join("data/lidc/LIDC-IDRI-0001");
            noduled::dicom::load_series(&dir, None)
                .map_err(|e| format!("{}: {e}", dir.display()))?
        }
        "phantom" => {
            noduled::phantom::generate(&noduled::phantom::PhantomSpec {
                seed: 7,
                slices: 300,
                ..Default::default()
            })
            .volume
        }
        other => return Err(format!("unknown case {other}")),
    };
    Ok((volume, t.elapsed().as_secs_f64()))
}

/// The child: one pipeline run, one `RESULT` line.
fn child(spec: &str) {
    let parts: Vec<&str> = spec.split(',').collect();
    let [case, engine_name, mode] = parts[..] else {
        eprintln!("bad {CHILD} value {spec:?}");
        std::process::exit(2);
    };
    let (volume, load_s) = match load_case(case) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("cannot load {case}: {e}");
            std::process::exit(2);
        }
    };
    let rss_volume = peak_rss_kb().unwrap_or(0);
    let book = shared().join("models/book");
    let regions = match mode {
        "exact" => SegmentRegions::Whole,
        "body" => SegmentRegions::Body,
        _ => SegmentRegions::Lung,
    };
    let pipeline = Pipeline::load_with_engine(
        engine_name,
        &book.join("seg_unet.onnx"),
        &book.join("nodule_cls.onnx"),
        None,
        PipelineOptions {
            exact: mode == "exact",
            threads: threads(),
            regions,
        },
    )
    .expect("pipeline loads");
    // The U-Net tiles this mode runs: share of the padded slices' pixels, distinct shapes.
    let (tile_fraction, tile_shapes) = match pipeline.segment_regions(&volume) {
        None => (1.0, 1),
        Some(regions) => {
            let [n, h, w] = volume.shape();
            let mut shapes = std::collections::BTreeSet::new();
            let mut pixels = 0usize;
            for region in regions.iter().flatten() {
                let (_, rh) = segment::tile_span(&region.rows, h);
                let (_, cw) = segment::tile_span(&region.cols, w);
                shapes.insert((rh, cw));
                pixels += rh * cw;
            }
            let whole = n * segment::padded_extent(h) * segment::padded_extent(w);
            (pixels as f64 / whole as f64, shapes.len())
        }
    };
    let mut analysis = pipeline
        .analyze(&volume, &|_, _, _| {})
        .expect("pipeline runs");
    analysis.add_load_seconds(load_s);
    let s = analysis.seconds;
    let [n, h, w] = analysis.shape;
    let seg_gflop = n as f64 * h as f64 * w as f64 * SEG_FLOP_PER_PIXEL / 1e9;
    let cls_gflop = analysis.candidates.len() as f64 * CLS_FLOP_PER_CROP / 1e9;
    println!(
        "RESULT {}",
        serde_json::json!({
            "case": case, "engine": engine_name, "mode": mode, "shape": analysis.shape,
            "candidates": analysis.candidates.len(), "findings": analysis.findings.len(),
            "load": s.load, "segment": s.segment, "group": s.group, "classify": s.classify,
            "total": s.total, "seg_gflop": seg_gflop, "cls_gflop": cls_gflop,
            "peak_rss_mb": peak_rss_kb().unwrap_or(0) as f64 / 1024.0,
            "volume_rss_mb": rss_volume as f64 / 1024.0,
            "engine_name": analysis.engine,
            "tile_fraction": tile_fraction, "tile_shapes": tile_shapes,
        })
    );
}

fn latencies(engine_name: &str, engine: &dyn Engine, volume: &Volume) {
    let book = shared().join("models/book");
    let hu = volume.hu.view();
    let models = Models::load(
        engine,
        &book.join("seg_unet.onnx"),
        &book.join("nodule_cls.onnx"),
        None,
    )
    .expect("book models load");
    let seg = engine::load_for_role(engine, &book.join("seg_unet.onnx"), ModelRole::Segmentation)
        .expect("seg model");
    let input = segment::slice_input(hu, 60.min(hu.shape()[0] - 1));
    let t = Instant::now();
    seg.run(input.view().into_dyn()).expect("seg runs");
    let first = t.elapsed().as_secs_f64();
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        seg.run(input.view().into_dyn()).expect("seg runs");
        best = best.min(t.elapsed().as_secs_f64());
    }
    let [_, _, h, w] = [input.shape()[0], 7, input.shape()[2], input.shape()[3]];
    println!(
        "{engine_name}: segmentation, one {h}×{w} slice: {best:.3} s = {:.1} GFLOP/s \
         (first call with optimisation {first:.2} s)",
        h as f64 * w as f64 * SEG_FLOP_PER_PIXEL / 1e9 / best
    );
    let center = [60.0, 256.0, 256.0];
    let voxel_mm = volume.geometry.spacing_irc();
    classify::classify_one(models.nodule.as_ref(), hu, voxel_mm, center).expect("cls runs");
    let mut best = f64::INFINITY;
    for _ in 0..20 {
        let t = Instant::now();
        classify::classify_one(models.nodule.as_ref(), hu, voxel_mm, center).expect("cls runs");
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{engine_name}: classification, one crop: {:.1} ms = {:.1} GFLOP/s",
        best * 1000.0,
        CLS_FLOP_PER_CROP / 1e9 / best
    );
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD) {
        child(&spec);
        return;
    }
    let book = shared().join("models/book");
    if !book.join("seg_unet.onnx").is_file() {
        eprintln!(
            "pipeline bench skipped: {} is absent (the book models live there)",
            book.display()
        );
        return;
    }
    let engines = engines();
    let threads = threads();

    // 1. Single-model latencies (tract on this thread; ort with 1 intra-op thread).
    match load_case(if shared().join("data/lidc").is_dir() {
        "lidc"
    } else {
        "phantom"
    }) {
        Ok((volume, _)) => {
            for name in &engines {
                match engine::engine_named(name, 1) {
                    Ok(e) => latencies(name, e.as_ref(), &volume),
                    Err(e) => eprintln!("{name}: {e}"),
                }
            }
        }
        Err(e) => eprintln!("latencies skipped: {e}"),
    }
    if std::env::var_os("NODULED_BENCH_QUICK").is_some() {
        return;
    }

    // 2. Whole pipeline per (case, engine, mode), each in a child process.
    let repeat: usize = std::env::var("NODULED_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let peak: f64 = std::env::var("NODULED_BENCH_PEAK_GFLOPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(222.0);
    let exe = std::env::current_exe().expect("own path");
    println!(
        "\nwhole pipeline, {threads} threads, minimum of {repeat} run(s); GFLOP/s count exact work; \
         'x limit' = total / (exact GFLOP / {peak} GFLOP/s peak)"
    );
    println!(
        "{:<8} {:<6} {:<8} {:>6} {:>7} {:>7} {:>6} {:>8} {:>7} {:>6} {:>6} {:>8} {:>8} {:>7} {:>8} tiles",
        "case",
        "engine",
        "mode",
        "cands",
        "finds",
        "load",
        "segm",
        "group",
        "class",
        "total",
        "seg/s",
        "cls/s",
        "x limit",
        "RSS MB",
        "vol MB",
    );
    for case in env_list("NODULED_BENCH_CASES", "lidc,phantom") {
        if case == "lidc" && !shared().join("data/lidc/LIDC-IDRI-0001").is_dir() {
            eprintln!("lidc skipped: ../shared/data/lidc is absent");
            continue;
        }
        for engine_name in &engines {
            for mode in env_list("NODULED_BENCH_MODES", "default,body,exact") {
                let mut best: Option<serde_json::Value> = None;
                for _ in 0..repeat {
                    let out = Command::new(&exe)
                        .env(CHILD, format!("{case},{engine_name},{mode}"))
                        .output()
                        .expect("child runs");
                    let text = String::from_utf8_lossy(&out.stdout);
                    let Some(line) = text.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
                        eprintln!(
                            "{case} {engine_name} {mode}: no result ({}): {}",
                            out.status,
                            String::from_utf8_lossy(&out.stderr)
                        );
                        continue;
                    };
                    let r: serde_json::Value = serde_json::from_str(line).expect("child JSON");
                    if best
                        .as_ref()
                        .is_none_or(|b| r["total"].as_f64() < b["total"].as_f64())
                    {
                        best = Some(r);
                    }
                }
                let Some(r) = best else { continue };
                let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
                let limit = (f("seg_gflop") + f("cls_gflop")) / peak;
                println!(
                    "{:<8} {:<6} {:<8} {:>6} {:>7} {:>7.2} {:>6.2} {:>8.2} {:>7.2} {:>6.2} {:>6.1} {:>8.1} {:>8.2} {:>7.0} {:>8.0} {:>5.0}% in {} shapes",
                    case,
                    engine_name,
                    mode,
                    r["candidates"],
                    r["findings"],
                    f("load"),
                    f("segment"),
                    f("group"),
                    f("classify"),
                    f("total"),
                    f("seg_gflop") / f("segment"),
                    f("cls_gflop") / f("classify"),
                    f("total") / limit,
                    f("peak_rss_mb"),
                    f("volume_rss_mb"),
                    100.0 * f("tile_fraction"),
                    r["tile_shapes"],
                );
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string(shared().join("reference/LIDC-IDRI-0001.json")) {
        if let Ok(reference) = serde_json::from_str::<serde_json::Value>(&text) {
            println!(
                "reference pipeline (Python + onnxruntime, 2 threads, when it was recorded): {}",
                reference["seconds"]
            );
        }
    }
    reference_in_this_run(threads);
}

/// The yardstick measured in this run: `../shared/tools/reference_pipeline.py` (the book's
/// pipeline in Python with onnxruntime, whole slices) on LIDC-IDRI-0001, when
/// `NODULED_BENCH_REFERENCE_PYTHON` names a Python with numpy, scipy, pydicom and onnxruntime.
fn reference_in_this_run(threads: usize) {
    let Some(python) = std::env::var_os("NODULED_BENCH_REFERENCE_PYTHON") else {
        println!("reference pipeline in this run: skipped (set NODULED_BENCH_REFERENCE_PYTHON)");
        return;
    };
    let case = shared().join("data/lidc/LIDC-IDRI-0001");
    let json = std::env::temp_dir().join(format!(
        "noduled-bench-reference-{}.json",
        std::process::id()
    ));
    let status = Command::new(python)
        .arg(shared().join("tools/reference_pipeline.py"))
        .arg(&case)
        .args(["--threads", &threads.to_string(), "--json"])
        .arg(&json)
        .stdout(std::process::Stdio::null())
        .status();
    let seconds = std::fs::read_to_string(&json)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .map(|v| v["seconds"].clone());
    let _ = std::fs::remove_file(&json);
    match (status, seconds) {
        (Ok(s), Some(seconds)) if s.success() => println!(
            "reference pipeline in this run (Python + onnxruntime, {threads} threads): {seconds}"
        ),
        (status, _) => println!("reference pipeline in this run: failed ({status:?})"),
    }
}
