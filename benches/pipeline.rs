//! Per-stage timings of the whole pipeline on LIDC-IDRI-0001 with the book's models (plain `main`,
//! `harness = false`): `cargo bench --bench pipeline`. Threads: 2 (the target machine), or
//! `NODULED_BENCH_THREADS`. Also times the two models alone (one slice, one crop) on one thread, so
//! a regression can be told apart from a change in parallel scaling (`NODULED_BENCH_QUICK=1`: only
//! those). Skips with a message when `../shared` is absent.

use noduled::engine::{self, ModelRole};
use noduled::pipeline::{classify, segment, Models, Pipeline, PipelineOptions};
use std::path::Path;
use std::time::Instant;

fn main() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    let case = shared.join("data/lidc/LIDC-IDRI-0001");
    let book = shared.join("models/book");
    if !case.is_dir() || !book.is_dir() {
        eprintln!(
            "pipeline bench skipped: {} is absent (the LIDC CTs and book models live there)",
            shared.display()
        );
        return;
    }
    let threads: usize = std::env::var("NODULED_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);

    let engine = engine::default_engine();
    let t = Instant::now();
    let volume = match noduled::dicom::load_series(&case, None) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("pipeline bench: cannot load {}: {e}", case.display());
            return;
        }
    };
    let load_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let models = Models::load(
        engine.as_ref(),
        &book.join("seg_unet.onnx"),
        &book.join("nodule_cls.onnx"),
        None,
    )
    .expect("book models load");
    println!(
        "models parsed in {:.2} s ({})",
        t.elapsed().as_secs_f64(),
        engine.name()
    );

    // Single-model latencies on this thread (first call includes the plan's optimisation).
    let hu = volume.hu.view();
    let seg = engine::load_for_role(
        engine.as_ref(),
        &book.join("seg_unet.onnx"),
        ModelRole::Segmentation,
    )
    .expect("seg model");
    let input = segment::slice_input(hu, 60);
    let t = Instant::now();
    seg.run(input.view().into_dyn()).expect("seg runs");
    let first = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..3 {
        seg.run(input.view().into_dyn()).expect("seg runs");
    }
    println!(
        "segmentation, one slice, 1 thread: {:.3} s (first call with optimisation {first:.2} s)",
        t.elapsed().as_secs_f64() / 3.0
    );
    let center = [60.0, 256.0, 256.0];
    classify::classify_one(models.nodule.as_ref(), hu, center).expect("cls runs");
    let t = Instant::now();
    for _ in 0..20 {
        classify::classify_one(models.nodule.as_ref(), hu, center).expect("cls runs");
    }
    println!(
        "classification, one crop, 1 thread: {:.1} ms",
        t.elapsed().as_secs_f64() / 20.0 * 1000.0
    );

    if std::env::var_os("NODULED_BENCH_QUICK").is_some() {
        return; // single-model latencies only
    }
    let pipeline = Pipeline::new(
        models,
        PipelineOptions {
            exact: false,
            threads,
        },
        engine.name(),
    )
    .expect("pool");
    let mut analysis = pipeline
        .analyze(&volume, &|_, _, _| {})
        .expect("pipeline runs");
    analysis.add_load_seconds(load_s);
    let s = analysis.seconds;
    println!(
        "LIDC-IDRI-0001 {:?}, {threads} threads: {} candidates, {} findings",
        analysis.shape,
        analysis.candidates.len(),
        analysis.findings.len()
    );
    println!(
        "seconds: load {:.2}, segment {:.2}, group {:.2}, classify {:.2}, total {:.2}",
        s.load, s.segment, s.group, s.classify, s.total
    );
    if let Ok(text) = std::fs::read_to_string(shared.join("reference/LIDC-IDRI-0001.json")) {
        if let Ok(reference) = serde_json::from_str::<serde_json::Value>(&text) {
            println!(
                "reference (onnxruntime, 2 threads): {}",
                reference["seconds"]
            );
        }
    }
}
