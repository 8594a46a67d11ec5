//! TID 1500 Structured Reports ([`noduled::dicom::sr`]): SRs for a phantom with several findings,
//! for a phantom with none, and for the real LIDC-IDRI-0003 CT (through the real pipeline), each
//! checked with dicom3tools' `dciodvfy` (no `Error` line) and DCMTK's `dsrdump` / `dsr2html`, read
//! back with dicom-object to recover every finding and the yes/no answer.

mod common;

use dicom_dictionary_std::tags;
use noduled::dicom::sr::{self, SrError, SrFinding, SrOptions};
use noduled::engine::ModelRole;
use noduled::phantom::{self, Phantom, PhantomSpec};
use noduled::pipeline::{Analysis, Finding, ModelIdentity, StageSeconds};
use noduled::{Geometry, SeriesInfo};
use std::path::{Path, PathBuf};
use std::process::Command;

fn options() -> SrOptions {
    SrOptions {
        clock: Some(("20240131".into(), "123456".into())),
        ..SrOptions::for_device(SrOptions::device_uid_for_host("test-host"))
    }
}

fn models() -> Vec<ModelIdentity> {
    vec![
        ModelIdentity {
            name: "seg_unet.onnx".into(),
            sha256: Some("af7da4b9f21305123f4a84f1b6697358844788e2a57a0957c6564b4deb325275".into()),
            role: ModelRole::Segmentation,
        },
        ModelIdentity {
            name: "nodule_cls.onnx".into(),
            sha256: Some("18f42c0bc91c9e6d10305abe95802a3465a7e771ddd8349a39ff128e2d4a6623".into()),
            role: ModelRole::Nodule,
        },
        ModelIdentity {
            name: "diameter".into(),
            sha256: None,
            role: ModelRole::Malignancy,
        },
    ]
}

/// An analysis built by hand: one finding per ground-truth nodule, malignant ones with
/// p_malignant 0.8 (and a little per nodule, so every value differs).
fn analysis_from_phantom(phantom: &Phantom) -> Analysis {
    let geometry = &phantom.volume.geometry;
    let findings: Vec<Finding> = phantom
        .nodules
        .iter()
        .enumerate()
        .map(|(k, n)| Finding {
            candidate: k,
            center_irc: n.center_irc,
            center_xyz: n.center_xyz,
            voxels: (std::f64::consts::PI / 6.0 * n.diameter_mm.powi(3)
                / geometry.voxel_volume_mm3())
            .round() as usize,
            diameter_mm: n.diameter_mm,
            p_nodule: 0.9 - 0.01 * k as f64,
            p_malignant: if n.malignant { 0.8 } else { 0.2 } + 0.012345 * k as f64,
            measurements: None,
            lung_rads: None,
            merged_candidates: vec![],
            region: vec![],
        })
        .collect();
    let malignant_count = findings.iter().filter(|f| f.is_malignant()).count();
    Analysis {
        series_uid: phantom.volume.series.series_uid.clone(),
        shape: phantom.volume.shape(),
        spacing_xyz: geometry.spacing_xyz,
        origin_xyz: geometry.origin_xyz,
        direction: geometry.direction_flat(),
        warnings: vec![],
        candidates: vec![],
        findings,
        suppressed: vec![],
        lung_rads: None,
        lung_volume_ml: None,
        malignant_present: malignant_count > 0,
        malignant_count,
        models: models(),
        engine: "tract 0.23.9".into(),
        threads: 2,
        exact: false,
        seconds: StageSeconds::default(),
    }
}

fn small_phantom(seed: u64, nodules: usize) -> Phantom {
    phantom::generate(&PhantomSpec {
        seed,
        slices: 60,
        rows: 128,
        columns: 128,
        nodules,
        ..PhantomSpec::default()
    })
}

/// Output of a tool, or `None` (with a printed reason) when it is not installed.
fn tool(name: &str, args: &[&Path]) -> Option<(bool, String, String)> {
    let path = Path::new("/usr/bin").join(name);
    if !path.is_file() {
        eprintln!("skipping the {name} check: {} is absent", path.display());
        return None;
    }
    let out = Command::new(&path).args(args).output().expect("tool runs");
    Some((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// dciodvfy: no line starting with `Error`; returns the warnings (printed for the record).
fn dciodvfy(path: &Path, label: &str) -> Vec<String> {
    let Some((_, stdout, stderr)) = tool("dciodvfy", &[path]) else {
        return vec![];
    };
    let lines: Vec<&str> = stdout.lines().chain(stderr.lines()).collect();
    let errors: Vec<&&str> = lines.iter().filter(|l| l.starts_with("Error")).collect();
    assert!(
        errors.is_empty(),
        "{label}: dciodvfy errors:\n{}",
        lines.join("\n")
    );
    let warnings: Vec<String> = lines
        .iter()
        .filter(|l| l.starts_with("Warning"))
        .map(|l| l.to_string())
        .collect();
    eprintln!("{label}: dciodvfy warnings ({}):", warnings.len());
    for w in &warnings {
        eprintln!("  {w}");
    }
    warnings
}

/// dsrdump exits 0 and shows the report tree; dsr2html renders it.
fn dcmtk_checks(path: &Path, label: &str, expect_regions: bool) {
    if let Some((ok, stdout, stderr)) = tool("dsrdump", &[path]) {
        assert!(ok, "{label}: dsrdump failed:\n{stdout}\n{stderr}");
        assert!(
            stdout.contains("Imaging Measurement Report"),
            "{label}: {stdout}"
        );
        assert!(stdout.contains("Comprehensive 3D SR"), "{label}: {stdout}");
        assert!(
            stdout.contains("Qualitative Evaluations"),
            "{label}: {stdout}"
        );
        if expect_regions {
            assert!(
                stdout.contains("SCOORD:"),
                "{label}: no SCOORD in\n{stdout}"
            );
            assert!(
                stdout.contains("SCOORD3D:"),
                "{label}: no SCOORD3D in\n{stdout}"
            );
            assert!(stdout.contains("Measurement Group"), "{label}");
        }
        // No error or warning (relationship constraints, value types, VRs), except DCMTK's note
        // that its VR checker skips UTF-8 text.
        let complaints: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
            .filter(|l| !l.contains("VR checker does not support"))
            .collect();
        assert!(
            complaints.is_empty(),
            "{label}: dsrdump complained:\n{stderr}"
        );
    }
    let html = path.with_extension("html");
    if let Some((ok, stdout, stderr)) = tool("dsr2html", &[path, &html]) {
        assert!(ok, "{label}: dsr2html failed:\n{stdout}\n{stderr}");
        let text = std::fs::read_to_string(&html).expect("html written");
        assert!(text.contains("Imaging Measurement Report"), "{label}");
    }
}

fn text(obj: &dicom_object::InMemDicomObject, tag: dicom_core::Tag) -> String {
    obj.element(tag)
        .unwrap()
        .to_str()
        .unwrap()
        .trim()
        .to_string()
}

/// Every finding is recovered within rounding (f32 graphic data, 16-character decimal strings).
fn assert_round_trip(analysis: &Analysis, series: &SeriesInfo, read: &[SrFinding]) {
    assert_eq!(read.len(), analysis.findings.len());
    for (k, (f, r)) in analysis.findings.iter().zip(read).enumerate() {
        assert_eq!(r.tracking_identifier, format!("nodule {}", k + 1));
        assert!(noduled::uid::is_valid(&r.tracking_uid));
        for a in 0..3 {
            assert!(
                (f.center_xyz[a] - r.center_xyz[a]).abs() < 1e-3,
                "finding {k}: centre {:?} vs {:?}",
                f.center_xyz,
                r.center_xyz
            );
        }
        assert_eq!(
            Some(&r.frame_of_reference_uid),
            series.frame_of_reference_uid.as_ref()
        );
        let slice = f.center_irc[0].round() as usize;
        assert_eq!(
            r.image_sop_instance_uid,
            series.instances[slice].sop_instance_uid
        );
        assert!((r.image_center_colrow[0] - (f.center_irc[2] + 0.5)).abs() < 1e-3);
        assert!((r.image_center_colrow[1] - (f.center_irc[1] + 0.5)).abs() < 1e-3);
        assert!((r.diameter_mm - f.diameter_mm).abs() < 1e-6, "{k}");
        let volume = std::f64::consts::PI / 6.0 * f.diameter_mm.powi(3);
        assert!(
            (r.volume_mm3 - volume).abs() < 1e-6 * volume.max(1.0),
            "{k}"
        );
        assert!((r.p_nodule - f.p_nodule).abs() < 1e-8, "{k}");
        assert!((r.p_malignant - f.p_malignant).abs() < 1e-8, "{k}");
        assert_eq!(r.malignant, f.is_malignant());
    }
}

/// Writes the SR, runs the external checks and the round trip; returns the dciodvfy warnings.
fn check_report(
    dir: &Path,
    label: &str,
    analysis: &Analysis,
    series: &SeriesInfo,
    geometry: &Geometry,
) -> Vec<String> {
    // NODULED_SR_TEST_OUT=DIR keeps the reports (and their HTML) for inspection.
    let dir = std::env::var_os("NODULED_SR_TEST_OUT").map_or(dir.to_path_buf(), PathBuf::from);
    let path: PathBuf = dir.join(format!("{label}.dcm"));
    let sop = sr::write_sr(&path, analysis, series, geometry, &options()).expect("SR written");
    assert!(noduled::uid::is_valid(&sop));

    let warnings = dciodvfy(&path, label);
    dcmtk_checks(&path, label, !analysis.findings.is_empty());

    let obj = dicom_object::open_file(&path).expect("SR reads back");
    assert_eq!(text(&obj, tags::STUDY_INSTANCE_UID), series.study_uid);
    assert_ne!(text(&obj, tags::SERIES_INSTANCE_UID), series.series_uid);
    assert_eq!(text(&obj, tags::SOP_INSTANCE_UID), sop);
    assert_eq!(text(&obj, tags::MODALITY), "SR");
    assert_eq!(
        text(&obj, tags::SOP_CLASS_UID),
        sr::COMPREHENSIVE_3D_SR_STORAGE
    );
    assert_eq!(text(&obj, tags::COMPLETION_FLAG), "COMPLETE");
    assert_eq!(text(&obj, tags::VERIFICATION_FLAG), "UNVERIFIED");
    assert_eq!(
        obj.meta().implementation_class_uid(),
        noduled::uid::IMPLEMENTATION_CLASS_UID
    );
    assert_eq!(
        obj.meta().transfer_syntax().trim_end_matches('\0'),
        "1.2.840.10008.1.2.1"
    );
    // Every source instance is in the evidence.
    let evidence = obj
        .element(tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    let sops = evidence[0]
        .element(tags::REFERENCED_SERIES_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0]
        .element(tags::REFERENCED_SOP_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert_eq!(sops.len(), series.instances.len());

    let read = sr::read_findings(&obj).expect("findings read back");
    assert_round_trip(analysis, series, &read);
    assert_eq!(sr::read_answer(&obj), Some(analysis.malignant_present));
    warnings
}

#[test]
fn phantom_with_findings() {
    let phantom = small_phantom(11, 4);
    let analysis = analysis_from_phantom(&phantom);
    assert!(
        analysis.findings.len() >= 2,
        "{} nodules placed",
        analysis.findings.len()
    );
    let dir = tempfile::tempdir().unwrap();
    check_report(
        dir.path(),
        "phantom-findings",
        &analysis,
        &phantom.volume.series,
        &phantom.volume.geometry,
    );
}

#[test]
fn phantom_with_findings_none_malignant_answers_no() {
    let phantom = small_phantom(11, 4);
    let mut analysis = analysis_from_phantom(&phantom);
    for f in &mut analysis.findings {
        f.p_malignant = 0.1;
    }
    analysis.malignant_present = false;
    analysis.malignant_count = 0;
    let dir = tempfile::tempdir().unwrap();
    check_report(
        dir.path(),
        "phantom-benign",
        &analysis,
        &phantom.volume.series,
        &phantom.volume.geometry,
    );
}

#[test]
fn phantom_without_findings_says_no() {
    let phantom = small_phantom(12, 0);
    let analysis = analysis_from_phantom(&phantom);
    assert!(analysis.findings.is_empty());
    let dir = tempfile::tempdir().unwrap();
    check_report(
        dir.path(),
        "phantom-none",
        &analysis,
        &phantom.volume.series,
        &phantom.volume.geometry,
    );
    let obj = sr::build_sr(
        &analysis,
        &phantom.volume.series,
        &phantom.volume.geometry,
        &options(),
    )
    .unwrap();
    assert_eq!(sr::read_answer(&obj), Some(false));
    assert!(sr::read_findings(&obj).unwrap().is_empty());
}

#[test]
fn non_ascii_names_are_written_as_utf8() {
    let mut phantom = small_phantom(11, 4);
    let analysis = analysis_from_phantom(&phantom);
    let ps = &mut phantom.volume.series.patient_study;
    ps.patient_name = "Müller^Zoë=山田^太郎".into();
    ps.study_description = "Thorax – Lungenrundherd".into();
    let dir = tempfile::tempdir().unwrap();
    let series = phantom.volume.series.clone();
    check_report(
        dir.path(),
        "phantom-utf8",
        &analysis,
        &series,
        &phantom.volume.geometry,
    );
    let path = dir.path().join("utf8.dcm");
    sr::write_sr(
        &path,
        &analysis,
        &series,
        &phantom.volume.geometry,
        &options(),
    )
    .unwrap();
    let obj = dicom_object::open_file(&path).unwrap();
    assert_eq!(text(&obj, tags::SPECIFIC_CHARACTER_SET), "ISO_IR 192");
    assert_eq!(text(&obj, tags::PATIENT_NAME), "Müller^Zoë=山田^太郎");
    assert_eq!(
        text(&obj, tags::STUDY_DESCRIPTION),
        "Thorax – Lungenrundherd"
    );
    // ASCII-only reports stay in ISO_IR 100.
    let plain = small_phantom(11, 4);
    let obj = sr::build_sr(
        &analysis,
        &plain.volume.series,
        &plain.volume.geometry,
        &options(),
    )
    .unwrap();
    assert_eq!(text(&obj, tags::SPECIFIC_CHARACTER_SET), "ISO_IR 100");
}

#[test]
fn non_square_pixels_give_an_ellipse() {
    let phantom = small_phantom(11, 4);
    let analysis = analysis_from_phantom(&phantom);
    let mut geometry = phantom.volume.geometry.clone();
    geometry.spacing_xyz[1] *= 1.5;
    let obj = sr::build_sr(&analysis, &phantom.volume.series, &geometry, &options()).unwrap();
    let read = sr::read_findings(&obj).unwrap();
    assert_eq!(read.len(), analysis.findings.len());
    for (f, r) in analysis.findings.iter().zip(&read) {
        assert!((r.image_center_colrow[0] - (f.center_irc[2] + 0.5)).abs() < 1e-3);
        assert!((r.image_center_colrow[1] - (f.center_irc[1] + 0.5)).abs() < 1e-3);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ellipse.dcm");
    sr::save(&obj, &path).unwrap();
    dciodvfy(&path, "phantom-ellipse");
}

/// Two builds of the same inputs with the same clock differ only in their UIDs.
#[test]
fn deterministic_except_uids() {
    use dicom_object::InMemDicomObject;
    fn flatten(obj: &InMemDicomObject, prefix: &str, out: &mut Vec<String>) {
        for e in obj.iter() {
            let tag = e.header().tag;
            let path = format!("{prefix}/{tag}");
            if let Some(items) = e.items() {
                for (i, item) in items.iter().enumerate() {
                    flatten(item, &format!("{path}[{i}]"), out);
                }
            } else if [tags::SOP_INSTANCE_UID, tags::SERIES_INSTANCE_UID].contains(&tag)
                || (tag == tags::UID && is_tracking_uid(obj))
            {
                out.push(format!("{path}=<uid>"));
            } else {
                out.push(format!("{path}={}", e.to_str().unwrap_or_default()));
            }
        }
    }
    fn is_tracking_uid(item: &InMemDicomObject) -> bool {
        item.element(tags::CONCEPT_NAME_CODE_SEQUENCE)
            .ok()
            .and_then(|e| e.items().map(|i| i[0].clone()))
            .and_then(|c| {
                c.element(tags::CODE_VALUE)
                    .ok()
                    .map(|v| v.to_str().unwrap().into_owned())
            })
            .is_some_and(|v| v.trim() == "112040")
    }
    let phantom = small_phantom(11, 4);
    let analysis = analysis_from_phantom(&phantom);
    let build = || {
        sr::build_sr(
            &analysis,
            &phantom.volume.series,
            &phantom.volume.geometry,
            &options(),
        )
        .unwrap()
    };
    let (a, b) = (build(), build());
    assert_ne!(
        text(&a, tags::SOP_INSTANCE_UID),
        text(&b, tags::SOP_INSTANCE_UID)
    );
    assert_ne!(
        text(&a, tags::SERIES_INSTANCE_UID),
        text(&b, tags::SERIES_INSTANCE_UID)
    );
    let (mut fa, mut fb) = (vec![], vec![]);
    flatten(&a, "", &mut fa);
    flatten(&b, "", &mut fb);
    assert_eq!(fa, fb);
}

#[test]
fn bad_inputs_are_typed_errors() {
    let phantom = small_phantom(11, 4);
    let series = &phantom.volume.series;
    let geometry = &phantom.volume.geometry;
    let good = analysis_from_phantom(&phantom);

    let mut other = good.clone();
    other.series_uid = "1.2.3".into();
    assert!(matches!(
        sr::build_sr(&other, series, geometry, &options()),
        Err(SrError::SeriesMismatch { .. })
    ));

    let mut nan = good.clone();
    nan.findings[0].diameter_mm = f64::NAN;
    assert!(matches!(
        sr::build_sr(&nan, series, geometry, &options()),
        Err(SrError::BadValue { finding: 0, .. })
    ));

    let mut p = good.clone();
    p.findings[1].p_malignant = 1.5;
    assert!(matches!(
        sr::build_sr(&p, series, geometry, &options()),
        Err(SrError::BadValue { finding: 1, .. })
    ));

    let mut no_frame = series.clone();
    no_frame.frame_of_reference_uid = None;
    assert!(matches!(
        sr::build_sr(&good, &no_frame, geometry, &options()),
        Err(SrError::MissingFrameOfReference)
    ));

    let mut no_instances = series.clone();
    no_instances.instances.clear();
    assert!(matches!(
        sr::build_sr(&good, &no_instances, geometry, &options()),
        Err(SrError::NoSourceInstances)
    ));

    let mut bad_uid = series.clone();
    bad_uid.study_uid = "1.02.x".into();
    assert!(matches!(
        sr::build_sr(&good, &bad_uid, geometry, &options()),
        Err(SrError::InvalidUid { .. })
    ));

    let clock = SrOptions {
        clock: Some(("2024-01-31".into(), "12:00".into())),
        ..options()
    };
    assert!(matches!(
        sr::build_sr(&good, series, geometry, &clock),
        Err(SrError::BadClock { .. })
    ));

    // A finding beyond the last slice is drawn on the last slice, not a panic.
    let mut far = good.clone();
    far.findings[0].center_irc[0] = 1e9;
    assert!(sr::build_sr(&far, series, geometry, &options()).is_ok());

    // The reader refuses objects that are not our reports.
    let ct = phantom::slice_object(&phantom, 0).unwrap();
    assert!(matches!(sr::read_findings(&ct), Err(SrError::Malformed(_))));
    assert_eq!(sr::read_answer(&ct), None);

    // Writing into a missing folder is an error, not a panic.
    let missing = Path::new("/nonexistent-noduled-dir/report.dcm");
    assert!(matches!(
        sr::write_sr(missing, &good, series, geometry, &options()),
        Err(SrError::Write { .. })
    ));
}

/// The real CT LIDC-IDRI-0003 through the real pipeline (book models, diameter malignancy).
#[test]
fn lidc_idri_0003_report() {
    let Some(shared) = common::shared() else {
        return;
    };
    let book = shared.join("models/book");
    if !book.join("seg_unet.onnx").is_file() || !book.join("nodule_cls.onnx").is_file() {
        eprintln!(
            "skipping LIDC-IDRI-0003: the book models are absent from {}",
            book.display()
        );
        return;
    }
    let volume = noduled::dicom::load_series(&common::lidc_case(&shared, "LIDC-IDRI-0003"), None)
        .expect("series loads");
    let pipeline = noduled::pipeline::Pipeline::load(
        &book.join("seg_unet.onnx"),
        &book.join("nodule_cls.onnx"),
        None,
        noduled::pipeline::PipelineOptions::default(),
    )
    .expect("book models load");
    let analysis = pipeline
        .analyze(&volume, &|_, _, _| {})
        .expect("pipeline runs");
    eprintln!(
        "LIDC-IDRI-0003: {} candidates, {} findings, {} malignant",
        analysis.candidates.len(),
        analysis.findings.len(),
        analysis.malignant_count
    );
    assert!(!analysis.findings.is_empty());
    let dir = tempfile::tempdir().unwrap();
    check_report(
        dir.path(),
        "lidc-idri-0003",
        &analysis,
        &volume.series,
        &volume.geometry,
    );
}
