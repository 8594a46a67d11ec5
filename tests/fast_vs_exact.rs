//! The default pipeline's shortcuts (body-region tiles for the U-Net, see `pipeline::segment`)
//! against the book's exact processing, on the shared LIDC CTs with the book's models.
//!
//! 1. Tiling is exact where it claims to be: the U-Net run on a tile around a region answers what
//!    the whole slice answers inside that region (to float rounding).
//! 2. The default pipeline keeps the findings: every finding of `--exact` (the shared reference's
//!    findings, which `tests/parity.rs` shows `--exact` reproduces) has a default-mode classifier
//!    nodule (a candidate with p_nodule > 0.5) within 1.5 voxels, and the default mode has at most
//!    10 % more. (The default mode's false-positive reduction, which then merges fragments and
//!    drops findings away from the lung, is a separate, documented step: `tests/fp_lidc.rs`.)
//!
//! Skips with a printed reason when `../shared` is absent.

mod common;

use ndarray::s;
use noduled::engine::{self, ModelRole};
use noduled::pipeline::segment::{self, Region};
use noduled::pipeline::{Pipeline, PipelineOptions};
use serde::Deserialize;
use std::path::Path;
use std::sync::OnceLock;

fn book(shared: &Path) -> Option<std::path::PathBuf> {
    let book = shared.join("models/book");
    if book.join("seg_unet.onnx").is_file() {
        Some(book)
    } else {
        eprintln!(
            "skipping: the book models are absent from {}",
            book.display()
        );
        None
    }
}

#[test]
fn a_tile_answers_what_the_whole_slice_answers_inside_its_region() {
    let Some(shared) = common::shared() else {
        return;
    };
    let Some(book) = book(&shared) else { return };
    let engine = engine::default_engine();
    let model = engine::load_for_role(
        engine.as_ref(),
        &book.join("seg_unet.onnx"),
        ModelRole::Segmentation,
    )
    .expect("U-Net loads");
    let volume = noduled::dicom::load_series(&common::lidc_case(&shared, "LIDC-IDRI-0001"), None)
        .expect("series loads");
    let hu = volume.hu.view();
    let index = 80;
    // An off-centre region whose tile edges lie inside the slice on all four sides.
    let region = Region {
        rows: 150..301,
        cols: 97..260,
    };
    let mut regions = vec![None; hu.shape()[0]];
    regions[index] = Some(region.clone());
    let tiled =
        segment::segment_regions(model.as_ref(), hu, &regions, &|_, _, _| {}).expect("tiles run");
    let whole = model
        .run(segment::slice_input(hu, index).view().into_dyn())
        .expect("slice runs");
    let whole = whole.get(segment::OUTPUT).expect("probability output");
    let whole = whole.slice(s![0, 0, region.rows.clone(), region.cols.clone()]);
    let inside = tiled.slice(s![index, region.rows.clone(), region.cols.clone()]);
    let max = inside
        .iter()
        .zip(whole.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("tile vs whole slice inside the region: max |Δp| = {max:e}");
    assert!(max < 1e-4, "tile differs from the whole slice by {max}");
    assert!(
        whole.iter().any(|&p| p > 1e-3),
        "the region should hold some signal for the comparison to mean anything"
    );
    // Outside the region, and on every other slice, nothing was run: 0.
    assert_eq!(tiled.slice(s![index, ..150, ..]).sum(), 0.0);
    assert_eq!(tiled.slice(s![index + 1, .., ..]).sum(), 0.0);
}

#[derive(Debug, Deserialize)]
struct RefFinding {
    center_irc: [f64; 3],
}

#[derive(Debug, Deserialize)]
struct Reference {
    candidates: Vec<RefFinding>,
    findings: Vec<RefFinding>,
}

fn pipeline(book: &Path) -> &'static Pipeline {
    static PIPELINE: OnceLock<Pipeline> = OnceLock::new();
    PIPELINE.get_or_init(|| {
        Pipeline::load(
            &book.join("seg_unet.onnx"),
            &book.join("nodule_cls.onnx"),
            None,
            PipelineOptions::default(),
        )
        .expect("book models load")
    })
}

fn same_findings(case: &str) {
    let Some(shared) = common::shared() else {
        return;
    };
    let Some(book) = book(&shared) else { return };
    let reference: Reference = serde_json::from_str(
        &std::fs::read_to_string(shared.join(format!("reference/{case}.json")))
            .expect("reference JSON readable"),
    )
    .expect("reference JSON parses");
    let volume =
        noduled::dicom::load_series(&common::lidc_case(&shared, case), None).expect("series loads");
    let pipeline = pipeline(&book);
    assert!(!pipeline.options().exact);
    let fast = pipeline
        .analyze(&volume, &|_, _, _| {})
        .expect("pipeline runs");
    let distance = |a: [f64; 3], b: [f64; 3]| {
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f64>()
            .sqrt()
    };
    let nodules: Vec<[f64; 3]> = fast
        .candidates
        .iter()
        .filter(|c| c.p_nodule > 0.5)
        .map(|c| c.center_irc)
        .collect();
    let missed: Vec<[f64; 3]> = reference
        .findings
        .iter()
        .map(|f| f.center_irc)
        .filter(|&irc| !nodules.iter().any(|&n| distance(n, irc) <= 1.5))
        .collect();
    eprintln!(
        "{case}: default mode {} candidates / {} classifier nodules; exact (reference) {} / {}; seconds {:?}",
        fast.candidates.len(),
        nodules.len(),
        reference.candidates.len(),
        reference.findings.len(),
        fast.seconds
    );
    assert!(
        missed.is_empty(),
        "{case}: exact findings missed by the default mode: {missed:?}"
    );
    let allowed = reference.findings.len() + reference.findings.len() / 10;
    assert!(
        nodules.len() <= allowed,
        "{case}: {} classifier nodules in default mode, exact has {}",
        nodules.len(),
        reference.findings.len()
    );
}

#[test]
fn default_mode_keeps_the_findings_of_lidc_idri_0001() {
    same_findings("LIDC-IDRI-0001");
}

#[test]
fn default_mode_keeps_the_findings_of_lidc_idri_0003() {
    same_findings("LIDC-IDRI-0003");
}
