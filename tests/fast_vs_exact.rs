//! The default pipeline's shortcuts (U-Net tiles, see `pipeline::segment`) against the book's
//! exact processing, on the shared LIDC CTs with the book's models.
//!
//! 1. Tiling is exact where it claims to be: the U-Net run on a tile around a region answers what
//!    the whole slice answers inside that region (to float rounding).
//! 2. Body-region tiles keep the book's findings: every finding of `--exact` (the shared
//!    reference's, which `tests/parity.rs` shows `--exact` reproduces) has a body-tile classifier
//!    nodule (p_nodule > 0.5) within 1.5 voxels, and there are at most 10 % more.
//! 3. Lung-region tiles (the default) keep the *reported* findings: the default pipeline reports
//!    what the same pipeline reports with the U-Net on every pixel (findings within 1.5 voxels, at
//!    most 10 % more). The classifier nodules it no longer finds are those away from the lung,
//!    which the findings' false-positive reduction drops either way (`tests/fp_lidc.rs`).
//!
//! Skips with a printed reason when `../shared` is absent.

mod common;

use ndarray::s;
use noduled::engine::{self, ModelRole};
use noduled::pipeline::segment::{self, Region, SegmentRegions};
use noduled::pipeline::{Pipeline, PipelineOptions};
use serde::Deserialize;
use std::path::Path;

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

fn pipeline(book: &Path, regions: SegmentRegions) -> Pipeline {
    Pipeline::load(
        &book.join("seg_unet.onnx"),
        &book.join("nodule_cls.onnx"),
        None,
        PipelineOptions {
            regions,
            ..PipelineOptions::default()
        },
    )
    .expect("book models load")
}

fn distance(a: [f64; 3], b: [f64; 3]) -> f64 {
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

/// Every point of `wanted` has one of `got` within 1.5 voxels, and `got` has at most 10 % more.
fn assert_kept(what: &str, wanted: &[[f64; 3]], got: &[[f64; 3]]) {
    let missed: Vec<&[f64; 3]> = wanted
        .iter()
        .filter(|&&w| !got.iter().any(|&g| distance(g, w) <= 1.5))
        .collect();
    assert!(missed.is_empty(), "{what}: missed {missed:?}");
    let allowed = wanted.len() + wanted.len() / 10;
    assert!(
        got.len() <= allowed,
        "{what}: {} against {} wanted",
        got.len(),
        wanted.len()
    );
}

fn load(case: &str) -> Option<(std::path::PathBuf, Reference, noduled::volume::Volume)> {
    let shared = common::shared()?;
    let book = book(&shared)?;
    let reference: Reference = serde_json::from_str(
        &std::fs::read_to_string(shared.join(format!("reference/{case}.json")))
            .expect("reference JSON readable"),
    )
    .expect("reference JSON parses");
    let volume =
        noduled::dicom::load_series(&common::lidc_case(&shared, case), None).expect("series loads");
    Some((book, reference, volume))
}

fn body_tiles_keep_the_book_findings(case: &str) {
    let Some((book, reference, volume)) = load(case) else {
        return;
    };
    let fast = pipeline(&book, SegmentRegions::Body)
        .analyze(&volume, &|_, _, _| {})
        .expect("pipeline runs");
    let nodules: Vec<[f64; 3]> = fast
        .candidates
        .iter()
        .filter(|c| c.p_nodule > 0.5)
        .map(|c| c.center_irc)
        .collect();
    let exact: Vec<[f64; 3]> = reference.findings.iter().map(|f| f.center_irc).collect();
    eprintln!(
        "{case}: body tiles {} candidates / {} classifier nodules; exact (reference) {} / {}; seconds {:?}",
        fast.candidates.len(),
        nodules.len(),
        reference.candidates.len(),
        reference.findings.len(),
        fast.seconds
    );
    assert_kept(&format!("{case}, body tiles"), &exact, &nodules);
}

fn lung_tiles_keep_the_reported_findings(case: &str) {
    let Some((book, _, volume)) = load(case) else {
        return;
    };
    let default = pipeline(&book, SegmentRegions::default());
    assert_eq!(default.options().regions, SegmentRegions::Lung);
    let fast = default
        .analyze(&volume, &|_, _, _| {})
        .expect("pipeline runs");
    let whole = pipeline(&book, SegmentRegions::Whole)
        .analyze(&volume, &|_, _, _| {})
        .expect("pipeline runs");
    let centres = |a: &noduled::pipeline::Analysis| -> Vec<[f64; 3]> {
        a.findings.iter().map(|f| f.center_irc).collect()
    };
    eprintln!(
        "{case}: lung tiles {} candidates, {} findings ({:?}); whole slices {} candidates, {} findings ({:?})",
        fast.candidates.len(),
        fast.findings.len(),
        fast.seconds,
        whole.candidates.len(),
        whole.findings.len(),
        whole.seconds
    );
    assert!(
        !whole.findings.is_empty(),
        "{case}: the comparison needs findings"
    );
    assert_kept(
        &format!("{case}, lung tiles"),
        &centres(&whole),
        &centres(&fast),
    );
}

#[test]
fn body_tiles_keep_the_book_findings_of_lidc_idri_0001() {
    body_tiles_keep_the_book_findings("LIDC-IDRI-0001");
}

#[test]
fn body_tiles_keep_the_book_findings_of_lidc_idri_0003() {
    body_tiles_keep_the_book_findings("LIDC-IDRI-0003");
}

#[test]
fn lung_tiles_keep_the_reported_findings_of_lidc_idri_0001() {
    lung_tiles_keep_the_reported_findings("LIDC-IDRI-0001");
}

#[test]
fn lung_tiles_keep_the_reported_findings_of_lidc_idri_0003() {
    lung_tiles_keep_the_reported_findings("LIDC-IDRI-0003");
}
