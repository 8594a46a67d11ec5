//! Parity with the Python reference pipeline (`../shared/tools/reference_pipeline.py`, onnxruntime) on
//! the two real LIDC CTs with the book's models: the same candidates (within 0.5 voxel), the same
//! counts (within 0.5 %), the same p_nodule (within 0.01), every reference finding, and the LUNA16
//! nodules found. One test per case; both share one pipeline (models loaded once, one worker pool
//! the size of the machine) so running them in parallel does not oversubscribe the cores.

mod common;

use noduled::pipeline::{Analysis, Pipeline, PipelineOptions};
use serde::Deserialize;
use std::path::Path;
use std::sync::OnceLock;

#[derive(Debug, Deserialize)]
struct RefCandidate {
    center_irc: [f64; 3],
    p_nodule: f64,
}

#[derive(Debug, Deserialize)]
struct Reference {
    series_uid: String,
    candidates: Vec<RefCandidate>,
    findings: Vec<RefCandidate>,
    seconds: serde_json::Value,
}

fn pipeline(shared: &Path) -> &'static Pipeline {
    static PIPELINE: OnceLock<Pipeline> = OnceLock::new();
    PIPELINE.get_or_init(|| {
        let book = shared.join("models/book");
        Pipeline::load(
            &book.join("seg_unet.onnx"),
            &book.join("nodule_cls.onnx"),
            None,
            // The book's processing and findings: no shortcut, no fragment merging, lung mask or
            // size floor.
            PipelineOptions {
                exact: true,
                threads: 0,
                ..PipelineOptions::default()
            },
        )
        .expect("book models load")
    })
}

fn distance(a: [f64; 3], b: [f64; 3]) -> f64 {
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

/// Our candidate nearest to `irc` (index, distance in voxels).
fn nearest(ours: &Analysis, irc: [f64; 3]) -> Option<(usize, f64)> {
    ours.candidates
        .iter()
        .enumerate()
        .map(|(k, c)| (k, distance(c.center_irc, irc)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
}

fn parity(case: &str) {
    let Some(shared) = common::shared() else {
        return;
    };
    if !shared.join("models/book/seg_unet.onnx").is_file() {
        eprintln!(
            "skipping {case}: the book models are absent from {}",
            shared.display()
        );
        return;
    }
    let reference: Reference = serde_json::from_str(
        &std::fs::read_to_string(shared.join(format!("reference/{case}.json")))
            .expect("reference JSON readable"),
    )
    .expect("reference JSON parses");

    let started = std::time::Instant::now();
    let volume =
        noduled::dicom::load_series(&common::lidc_case(&shared, case), None).expect("series loads");
    let load_s = started.elapsed().as_secs_f64();
    assert_eq!(volume.series.series_uid, reference.series_uid);
    let pipeline = pipeline(&shared);
    let mut ours = pipeline
        .analyze(&volume, &|_, _, _| {})
        .expect("pipeline runs");
    ours.add_load_seconds(load_s);

    // Candidates: matched within 0.5 voxel, p_nodule within 0.01.
    let threshold = 0.5;
    let mut matched = 0usize;
    let mut max_dp = 0f64;
    let mut max_dist = 0f64;
    let mut unmatched = Vec::new();
    let mut far_p = Vec::new();
    for rc in &reference.candidates {
        match nearest(&ours, rc.center_irc) {
            Some((k, d)) if d <= threshold => {
                matched += 1;
                max_dist = max_dist.max(d);
                let dp = (ours.candidates[k].p_nodule - rc.p_nodule).abs();
                max_dp = max_dp.max(dp);
                if dp > 0.01 {
                    far_p.push((rc.center_irc, rc.p_nodule, ours.candidates[k].p_nodule));
                }
            }
            other => unmatched.push((rc.center_irc, other.map(|(_, d)| d))),
        }
    }
    let n_ref = reference.candidates.len();
    let n_ours = ours.candidates.len();
    let matched_pct = 100.0 * matched as f64 / n_ref.max(1) as f64;
    let findings_matched = reference
        .findings
        .iter()
        .filter(|f| nearest(&ours, f.center_irc).is_some_and(|(_, d)| d <= threshold))
        .count();

    // LUNA16 nodules: a finding of ours within 0.7 × diameter.
    let annotations: Vec<_> = common::read_annotations(&shared.join("data/lidc/annotations.csv"))
        .into_iter()
        .filter(|a| a.series_uid == volume.series.series_uid)
        .collect();
    let mut luna_found = 0;
    let mut luna_report = Vec::new();
    for a in &annotations {
        let best = ours
            .findings
            .iter()
            .map(|f| distance(f.center_xyz, a.xyz))
            .fold(f64::INFINITY, f64::min);
        if best < 0.7 * a.diameter_mm {
            luna_found += 1;
        }
        luna_report.push(format!(
            "{:.1} mm nodule: nearest finding {best:.2} mm",
            a.diameter_mm
        ));
    }

    let s = ours.seconds;
    eprintln!(
        "{case}: candidates ours {n_ours} / reference {n_ref}; findings ours {} / reference {} \
         ({findings_matched} of the reference's matched); matched {matched}/{n_ref} = {matched_pct:.2} % \
         (max distance {max_dist:.4} voxel); max |Δp_nodule| {max_dp:.5}; LUNA16 nodules found \
         {luna_found}/{} [{}]; seconds load {:.2}, segment {:.2}, group {:.2}, classify {:.2}, total {:.2} \
         ({} threads; reference {})",
        ours.findings.len(),
        reference.findings.len(),
        annotations.len(),
        luna_report.join("; "),
        s.load,
        s.segment,
        s.group,
        s.classify,
        s.total,
        ours.threads,
        reference.seconds,
    );
    if !unmatched.is_empty() {
        eprintln!(
            "{case}: unmatched reference candidates (centre, nearest distance): {unmatched:?}"
        );
    }

    assert!(
        (n_ours as f64 - n_ref as f64).abs() <= 0.005 * n_ref as f64,
        "{case}: {n_ours} candidates vs {n_ref}"
    );
    assert!(
        matched_pct >= 99.5,
        "{case}: only {matched_pct:.2} % matched"
    );
    assert_eq!(
        findings_matched,
        reference.findings.len(),
        "{case}: a reference finding is unmatched"
    );
    assert!(
        max_dp <= 0.01,
        "{case}: |Δp_nodule| up to {max_dp}: {far_p:?}"
    );
    assert_eq!(
        annotations.len(),
        if case.ends_with("0001") { 1 } else { 3 }
    );
    assert_eq!(
        luna_found,
        annotations.len(),
        "{case}: LUNA16 nodules missed: {luna_report:?}"
    );
}

#[test]
fn parity_lidc_idri_0001() {
    parity("LIDC-IDRI-0001");
}

#[test]
fn parity_lidc_idri_0003() {
    parity("LIDC-IDRI-0003");
}
