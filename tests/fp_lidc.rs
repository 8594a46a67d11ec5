//! False positives per scan on the real LIDC cases in `../shared` with the book's models, before
//! and after the reduction of [`noduled::pipeline::reduce`], and every LUNA16 nodule still found.
//!
//! One run per case gives both figures: "before" is every classifier nodule (the reported
//! findings plus the suppressed ones, i.e. the book's findings), "after" the reported findings. A
//! finding is a hit when its centre lies within 0.7 × the nodule's diameter of an annotated
//! nodule's centre (the reference pipeline's criterion); every other finding is a false positive.
//! The measured figures are printed and written to `fp_lidc.json` in cargo's test temp folder
//! (`CARGO_TARGET_TMPDIR`).

mod common;

use noduled::pipeline::{Analysis, Pipeline, PipelineOptions};
use std::sync::OnceLock;

fn pipeline(shared: &std::path::Path) -> &'static Pipeline {
    static PIPELINE: OnceLock<Pipeline> = OnceLock::new();
    PIPELINE.get_or_init(|| {
        let book = shared.join("models/book");
        Pipeline::load(
            &book.join("seg_unet.onnx"),
            &book.join("nodule_cls.onnx"),
            None,
            PipelineOptions::default(),
        )
        .expect("book models load")
    })
}

fn distance(a: [f64; 3], b: [f64; 3]) -> f64 {
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// (hits per annotation, false positives) of the points `found`.
fn score(found: &[[f64; 3]], nodules: &[common::Annotation]) -> (Vec<bool>, usize) {
    let hit = |p: &[f64; 3]| {
        nodules
            .iter()
            .any(|n| distance(*p, n.xyz) <= 0.7 * n.diameter_mm)
    };
    let detected = nodules
        .iter()
        .map(|n| {
            found
                .iter()
                .any(|p| distance(*p, n.xyz) <= 0.7 * n.diameter_mm)
        })
        .collect();
    (detected, found.iter().filter(|p| !hit(p)).count())
}

#[test]
fn reduction_cuts_false_positives_and_keeps_every_luna16_nodule() {
    let Some(shared) = common::shared() else {
        return;
    };
    if !shared.join("models/book/seg_unet.onnx").is_file() {
        eprintln!("skipping: the book models are absent");
        return;
    }
    let annotations = common::read_annotations(&shared.join("data/lidc/annotations.csv"));
    let mut report = Vec::new();
    let (mut fp_before, mut fp_after, mut found, mut total) = (0, 0, 0, 0);
    for case in ["LIDC-IDRI-0001", "LIDC-IDRI-0003"] {
        let volume = noduled::dicom::load_series(&common::lidc_case(&shared, case), None)
            .expect("series loads");
        let analysis: Analysis = pipeline(&shared)
            .analyze(&volume, &|_, _, _| {})
            .expect("analysis runs");
        let nodules: Vec<common::Annotation> = annotations
            .iter()
            .filter(|a| a.series_uid == analysis.series_uid)
            .cloned()
            .collect();
        let after: Vec<[f64; 3]> = analysis.findings.iter().map(|f| f.center_xyz).collect();
        let mut before = after.clone();
        before.extend(analysis.suppressed.iter().map(|s| s.center_xyz));
        let (hit_before, fp_b) = score(&before, &nodules);
        let (hit_after, fp_a) = score(&after, &nodules);
        println!(
            "{case}: findings before {} (FP {fp_b}, nodules {}/{}), after {} (FP {fp_a}, nodules {}/{})",
            before.len(),
            hit_before.iter().filter(|&&h| h).count(),
            nodules.len(),
            after.len(),
            hit_after.iter().filter(|&&h| h).count(),
            nodules.len()
        );
        for f in &analysis.findings {
            let m = f.measurements.as_ref();
            println!(
                "  kept {:?} p={:.3} mean {:?} mm type {:?} LR {:?} merged {:?}",
                f.center_xyz.map(|v| (v * 10.0).round() / 10.0),
                f.p_nodule,
                m.map(|m| m.mean_diameter_mm),
                m.map(|m| m.nodule_type),
                f.lung_rads,
                f.merged_candidates
            );
        }
        for s in &analysis.suppressed {
            println!(
                "  suppressed {:?} p={:.3} {:?} mean {:?}",
                s.center_xyz.map(|v| (v * 10.0).round() / 10.0),
                s.p_nodule,
                s.reason,
                s.mean_diameter_mm
            );
        }
        assert_eq!(
            hit_before,
            vec![true; nodules.len()],
            "{case}: the book finds them all"
        );
        assert_eq!(
            hit_after,
            vec![true; nodules.len()],
            "{case}: every LUNA16 nodule survives the reduction"
        );
        fp_before += fp_b;
        fp_after += fp_a;
        found += hit_after.iter().filter(|&&h| h).count();
        total += nodules.len();
        report.push(serde_json::json!({
            "case": case,
            "series_uid": analysis.series_uid,
            "nodules": nodules.len(),
            "found_before": hit_before.iter().filter(|&&h| h).count(),
            "found_after": hit_after.iter().filter(|&&h| h).count(),
            "findings_before": before.len(),
            "findings_after": after.len(),
            "fp_before": fp_b,
            "fp_after": fp_a,
            "lung_rads": analysis.lung_rads,
            "lung_volume_ml": analysis.lung_volume_ml,
        }));
    }
    let scans = report.len() as f64;
    let summary = serde_json::json!({
        "criterion": "hit = centre within 0.7 x diameter of a LUNA16 nodule",
        "cases": report,
        "fp_per_scan_before": fp_before as f64 / scans,
        "fp_per_scan_after": fp_after as f64 / scans,
        "nodules_found_after": found,
        "nodules": total,
    });
    let text = serde_json::to_string_pretty(&summary).expect("json");
    println!("{text}");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fp_lidc.json");
    let _ = std::fs::write(out, &text);
    assert!(
        fp_after * 3 <= fp_before,
        "the reduction must cut false positives to a third: {fp_before} -> {fp_after}"
    );
}
