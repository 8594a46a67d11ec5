//! The onnxruntime engine (`--features ort`) against tract and the reference pipeline.
//!
//! Run with `cargo test --features ort --test ort_parity` and `ORT_DYLIB_PATH` pointing at a
//! `libonnxruntime.so` (`source .ci/setup-perf.sh` installs the PyPI wheel's and sets it). The
//! tests skip with a printed reason when `../shared` or the library is absent.
//!
//! 1. Both models answer the same through either engine (U-Net probabilities within 1e-3 on a real
//!    slice, p_nodule within 1e-4 on real crops), and the model identity (SHA-256, metadata, declared
//!    input) is the same.
//! 2. The whole pipeline under `--exact` with the ort engine on LIDC-IDRI-0001 finds the reference's
//!    candidates (within 0.5 voxel, 99.5 %) and every reference finding.

#![cfg(feature = "ort")]

mod common;

use noduled::engine::{self, ort::OrtEngine, Engine, ModelRole};
use noduled::pipeline::{classify, segment, Models, Pipeline, PipelineOptions};
use serde::Deserialize;
use std::path::PathBuf;

fn setup() -> Option<(PathBuf, OrtEngine)> {
    let shared = common::shared()?;
    if !shared.join("models/book/seg_unet.onnx").is_file() {
        eprintln!(
            "skipping: the book models are absent from {}",
            shared.display()
        );
        return None;
    }
    let dylib = engine::ort::dylib_path();
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        eprintln!(
            "skipping: ORT_DYLIB_PATH is not set (source .ci/setup-perf.sh to install onnxruntime)"
        );
        return None;
    }
    if !dylib.is_file() {
        eprintln!(
            "skipping: ORT_DYLIB_PATH={} does not exist",
            dylib.display()
        );
        return None;
    }
    Some((shared, OrtEngine::new(2)))
}

#[test]
fn models_answer_the_same_through_both_engines() {
    let Some((shared, ort)) = setup() else {
        return;
    };
    let book = shared.join("models/book");
    let tract = engine::tract::TractEngine::new();
    let volume = noduled::dicom::load_series(&common::lidc_case(&shared, "LIDC-IDRI-0001"), None)
        .expect("series loads");
    let hu = volume.hu.view();

    let seg_path = book.join("seg_unet.onnx");
    let seg_o = engine::load_for_role(&ort, &seg_path, ModelRole::Segmentation).expect("ort");
    let seg_t = engine::load_for_role(&tract, &seg_path, ModelRole::Segmentation).expect("tract");
    assert_eq!(seg_o.info().sha256, seg_t.info().sha256);
    assert_eq!(seg_o.info().metadata, seg_t.info().metadata);
    assert_eq!(seg_o.info().input_name, seg_t.info().input_name);
    assert_eq!(seg_o.info().input_shape.len(), 4);
    assert!(ort.name().contains("onnxruntime"), "{}", ort.name());

    let input = segment::slice_input(hu, 80);
    let a = seg_o.run(input.view().into_dyn()).expect("ort runs");
    let b = seg_t.run(input.view().into_dyn()).expect("tract runs");
    let (a, b) = (
        a.get(segment::OUTPUT).expect("output"),
        b.get(segment::OUTPUT).expect("output"),
    );
    assert_eq!(a.shape(), b.shape());
    let max = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    eprintln!("U-Net slice 80: max |ort - tract| = {max:e}");
    assert!(max < 1e-3, "U-Net answers differ by {max}");
    assert!(
        a.iter().any(|&p| p > 0.5),
        "slice 80 should hold some segmentation"
    );

    let models_o = Models::load(&ort, &seg_path, &book.join("nodule_cls.onnx"), None).expect("ort");
    let models_t =
        Models::load(&tract, &seg_path, &book.join("nodule_cls.onnx"), None).expect("tract");
    let voxel_mm = volume.geometry.spacing_irc();
    for center in [
        [60.0, 256.0, 256.0],
        [90.5, 300.2, 180.7],
        [10.0, 20.0, 500.0],
    ] {
        let p_o =
            classify::classify_one(models_o.nodule.as_ref(), hu, voxel_mm, center).expect("ort");
        let p_t =
            classify::classify_one(models_t.nodule.as_ref(), hu, voxel_mm, center).expect("tract");
        assert!(
            (p_o - p_t).abs() < 1e-4,
            "{center:?}: ort {p_o} tract {p_t}"
        );
    }
}

#[derive(Debug, Deserialize)]
struct RefCandidate {
    center_irc: [f64; 3],
}

#[derive(Debug, Deserialize)]
struct Reference {
    candidates: Vec<RefCandidate>,
    findings: Vec<RefCandidate>,
}

#[test]
fn ort_pipeline_matches_the_reference_on_lidc_0001() {
    let Some((shared, _)) = setup() else {
        return;
    };
    let book = shared.join("models/book");
    let reference: Reference = serde_json::from_str(
        &std::fs::read_to_string(shared.join("reference/LIDC-IDRI-0001.json"))
            .expect("reference JSON readable"),
    )
    .expect("reference JSON parses");
    let pipeline = Pipeline::load_with_engine(
        "ort",
        &book.join("seg_unet.onnx"),
        &book.join("nodule_cls.onnx"),
        None,
        PipelineOptions {
            exact: true,
            threads: 2,
            ..PipelineOptions::default()
        },
    )
    .expect("pipeline loads");
    let volume = noduled::dicom::load_series(&common::lidc_case(&shared, "LIDC-IDRI-0001"), None)
        .expect("series loads");
    let ours = pipeline
        .analyze(&volume, &|_, _, _| {})
        .expect("pipeline runs");
    assert!(ours.engine.contains("onnxruntime"), "{}", ours.engine);
    let near = |irc: [f64; 3]| {
        ours.candidates.iter().any(|c| {
            c.center_irc
                .iter()
                .zip(&irc)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f64>()
                .sqrt()
                <= 0.5
        })
    };
    let matched = reference
        .candidates
        .iter()
        .filter(|c| near(c.center_irc))
        .count();
    eprintln!(
        "ort pipeline: {} candidates ({} reference, {matched} matched), {} findings ({} reference), \
         seconds {:?}",
        ours.candidates.len(),
        reference.candidates.len(),
        ours.findings.len(),
        reference.findings.len(),
        ours.seconds
    );
    assert!(
        matched as f64 >= 0.995 * reference.candidates.len() as f64,
        "only {matched} of {} reference candidates matched",
        reference.candidates.len()
    );
    for f in &reference.findings {
        assert!(near(f.center_irc), "reference finding {f:?} not found");
    }
}
