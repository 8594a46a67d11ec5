//! Pipeline and `noduled analyze` beyond parity: model identity and role checks, grouping on
//! volumes with known nodules, thin volumes end to end, and bad input at the command line (one
//! clear error line, non-zero exit, no panic). Tests needing `../shared` (the book's models) skip
//! with a message when it is absent.

mod common;

use ndarray::Array3;
use noduled::engine::{self, EngineError, ModelRole};
use noduled::pipeline::{group, Models, Pipeline, PipelineOptions};
use noduled::{Geometry, SeriesInfo, Volume};
use std::path::{Path, PathBuf};
use std::process::Command;

fn book_models() -> Option<PathBuf> {
    let shared = common::shared()?;
    let book = shared.join("models/book");
    if book.join("seg_unet.onnx").is_file() && book.join("nodule_cls.onnx").is_file() {
        Some(book)
    } else {
        eprintln!(
            "skipping: the book models are absent from {}",
            book.display()
        );
        None
    }
}

/// A chest-like volume: lung air (-850 HU) with solid spheres (+40 HU) of the given centres (IRC)
/// and radii (mm), and the spheres' own mask.
fn spheres(
    shape: [usize; 3],
    spacing_xyz: [f64; 3],
    nodules: &[([f64; 3], f64)],
) -> (Volume, Array3<bool>) {
    let mut mask = Array3::from_elem(shape, false);
    let mut hu = Array3::from_elem(shape, -850.0f32);
    for ((i, r, c), v) in mask.indexed_iter_mut() {
        for (center, radius) in nodules {
            let d = [
                (i as f64 - center[0]) * spacing_xyz[2],
                (r as f64 - center[1]) * spacing_xyz[1],
                (c as f64 - center[2]) * spacing_xyz[0],
            ];
            if (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt() <= *radius {
                *v = true;
                hu[[i, r, c]] = 40.0;
            }
        }
    }
    let volume = Volume {
        hu,
        geometry: Geometry::axial([-100.0, -120.0, -300.0], spacing_xyz),
        series: SeriesInfo {
            series_uid: "1.2.3.4".into(),
            ..SeriesInfo::default()
        },
    };
    (volume, mask)
}

#[test]
fn grouping_finds_known_nodules_from_their_mask() {
    let spacing = [0.7, 0.7, 1.25];
    let nodules = [
        ([20.0, 30.0, 40.0], 5.0),
        ([30.0, 80.0, 90.0], 3.0),
        ([10.0, 100.0, 20.0], 8.0),
    ];
    let (volume, mask) = spheres([40, 128, 128], spacing, &nodules);
    let groups = group::group_mask(volume.hu.view(), mask.view());
    assert_eq!(groups.len(), nodules.len(), "{groups:?}");
    // scipy order: raster order of each component's first voxel, here by first slice.
    let order = [2, 0, 1];
    for (g, &k) in groups.iter().zip(&order) {
        let (center, radius) = nodules[k];
        for axis in 0..3 {
            assert!(
                (g.center_irc[axis] - center[axis]).abs() < 0.05,
                "{g:?} vs {center:?}"
            );
        }
        let d =
            group::equivalent_diameter_mm(g.segmented_voxels, volume.geometry.voxel_volume_mm3());
        assert!(
            (d - 2.0 * radius).abs() < 0.15 * 2.0 * radius,
            "diameter {d:.2} mm for a {:.1} mm sphere",
            2.0 * radius
        );
    }
}

#[test]
fn book_models_identify_themselves() {
    let Some(book) = book_models() else { return };
    let engine = engine::default_engine();
    let seg = engine::load_for_role(
        engine.as_ref(),
        &book.join("seg_unet.onnx"),
        ModelRole::Segmentation,
    )
    .expect("segmentation model loads");
    let info = seg.info();
    assert_eq!(info.name, "seg_unet.onnx");
    assert_eq!(
        info.sha256,
        "af7da4b9f21305123f4a84f1b6697358844788e2a57a0957c6564b4deb325275"
    );
    assert_eq!(info.declared_role(), Some("segmentation"));
    assert_eq!(info.input_name, "ct_slices");
    assert_eq!(
        engine::format_shape(&info.input_shape),
        "[batch, 7, height, width]"
    );
    assert!(info.output_names.iter().any(|n| n == "nodule_probability"));
    let cls = engine::load_for_role(
        engine.as_ref(),
        &book.join("nodule_cls.onnx"),
        ModelRole::Nodule,
    )
    .expect("nodule model loads");
    assert_eq!(
        cls.info().sha256,
        "18f42c0bc91c9e6d10305abe95802a3465a7e771ddd8349a39ff128e2d4a6623"
    );
    assert_eq!(cls.info().output_names, ["logits", "probabilities"]);
    assert!(cls.info().metadata.contains_key("noduled.source"));
}

#[test]
fn models_in_the_wrong_role_are_refused_at_load() {
    let Some(book) = book_models() else { return };
    let engine = engine::default_engine();
    let err = Models::load(
        engine.as_ref(),
        &book.join("nodule_cls.onnx"),
        &book.join("nodule_cls.onnx"),
        None,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::WrongRole {
                role: ModelRole::Segmentation,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("[N, 7, H, W]"), "{err}");
    let err = Models::load(
        engine.as_ref(),
        &book.join("seg_unet.onnx"),
        &book.join("seg_unet.onnx"),
        None,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::WrongRole {
                role: ModelRole::Nodule,
                ..
            }
        ),
        "{err}"
    );
    // The nodule classifier declares noduled.role = nodule: not a malignancy model.
    let err = Models::load(
        engine.as_ref(),
        &book.join("seg_unet.onnx"),
        &book.join("nodule_cls.onnx"),
        Some(&book.join("nodule_cls.onnx")),
    )
    .unwrap_err();
    assert!(err.to_string().contains("noduled.role"), "{err}");
}

#[test]
fn thin_small_volume_runs_end_to_end() {
    // 12 slices (< 32) of 42 × 70 pixels (42 < 48; neither 42 nor 70 is a multiple of 4): crops are
    // padded with air on two axes, the U-Net input is padded to 44 × 72.
    let Some(book) = book_models() else { return };
    let (volume, _) = spheres([12, 42, 70], [0.7, 0.7, 2.5], &[([6.0, 21.0, 35.0], 6.0)]);
    let engine = engine::default_engine();
    let models = Models::load(
        engine.as_ref(),
        &book.join("seg_unet.onnx"),
        &book.join("nodule_cls.onnx"),
        None,
    )
    .expect("models");
    let pipeline = Pipeline::new(
        models,
        PipelineOptions {
            exact: true,
            threads: 2,
            ..PipelineOptions::default()
        },
        engine.name(),
    )
    .expect("pool");
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let analysis = pipeline
        .analyze(&volume, &|_, _, _| {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .expect("a thin volume is analysed, not refused");
    assert_eq!(analysis.shape, [12, 42, 70]);
    assert!(analysis.exact);
    assert!(calls.into_inner() >= 12, "progress reported per slice");
    for c in &analysis.candidates {
        assert!((0.0..=1.0).contains(&c.p_nodule));
        assert_eq!(c.p_malignant.is_some(), c.p_nodule > 0.5);
    }
    assert_eq!(analysis.models.len(), 3);
    assert_eq!(analysis.models[2].name, "diameter");
    let json = serde_json::to_value(&analysis).expect("serialises");
    for key in [
        "series_uid",
        "shape",
        "spacing_xyz",
        "origin_xyz",
        "direction",
        "warnings",
        "candidates",
        "findings",
        "malignant_present",
        "models",
        "seconds",
    ] {
        assert!(json.get(key).is_some(), "JSON lacks {key}");
    }
    assert_eq!(json["direction"].as_array().map(Vec::len), Some(9));
}

// ---- the command line ----

fn noduled(args: &[&str], cwd: Option<&Path>) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_noduled"));
    cmd.args(["--log-format", "json"])
        .args(args)
        .env("RUST_LOG", "error");
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = cmd.output().expect("noduled runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Non-zero exit, exactly one `noduled: error:` line on stderr containing every `needle`, no panic.
fn assert_clear_error(result: &(i32, String, String), needles: &[&str]) {
    let (code, _, stderr) = result;
    assert_ne!(*code, 0, "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected: {stderr}");
    assert!(lines[0].starts_with("noduled: error: "), "{stderr}");
    for needle in needles {
        assert!(lines[0].contains(needle), "{needle:?} not in {stderr}");
    }
}

#[test]
fn cli_without_default_models_says_which_flags_are_needed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let result = noduled(&["analyze", "no-such-series"], Some(dir.path()));
    assert_clear_error(&result, &["--seg-model", "models/segmentation.onnx"]);
}

#[test]
fn cli_missing_model_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.onnx");
    let result = noduled(
        &[
            "analyze",
            dir.path().to_str().unwrap(),
            "--seg-model",
            missing.to_str().unwrap(),
            "--nodule-model",
            missing.to_str().unwrap(),
        ],
        None,
    );
    assert_clear_error(&result, &["missing.onnx"]);
}

#[test]
fn cli_file_that_is_not_onnx() {
    let dir = tempfile::tempdir().expect("tempdir");
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"definitely not a protobuf \xff\xfe").unwrap();
    let result = noduled(
        &[
            "analyze",
            dir.path().to_str().unwrap(),
            "--seg-model",
            junk.to_str().unwrap(),
            "--nodule-model",
            junk.to_str().unwrap(),
        ],
        None,
    );
    assert_clear_error(&result, &["junk.onnx"]);
}

#[test]
fn cli_wrong_shape_model() {
    let Some(book) = book_models() else { return };
    let cls = book.join("nodule_cls.onnx");
    let dir = tempfile::tempdir().expect("tempdir");
    let result = noduled(
        &[
            "analyze",
            dir.path().to_str().unwrap(),
            "--seg-model",
            cls.to_str().unwrap(),
            "--nodule-model",
            cls.to_str().unwrap(),
        ],
        None,
    );
    assert_clear_error(
        &result,
        &["nodule_cls.onnx", "segmentation", "[N, 7, H, W]"],
    );
}

#[test]
fn cli_unreadable_series() {
    let Some(book) = book_models() else { return };
    let seg = book.join("seg_unet.onnx");
    let cls = book.join("nodule_cls.onnx");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("IM0001.dcm"), b"not DICOM at all").unwrap();
    let models = [
        "--seg-model",
        seg.to_str().unwrap(),
        "--nodule-model",
        cls.to_str().unwrap(),
    ];
    let mut args = vec!["analyze", dir.path().to_str().unwrap()];
    args.extend(models);
    assert_clear_error(&noduled(&args, None), &["cannot load"]);
    let missing = dir.path().join("no-such-folder");
    let mut args = vec!["analyze", missing.to_str().unwrap()];
    args.extend(models);
    assert_clear_error(&noduled(&args, None), &["no-such-folder"]);
}

// ---- phantoms with known nodules ----

fn small_phantom(seed: u64) -> noduled::phantom::Phantom {
    noduled::phantom::generate(&noduled::phantom::PhantomSpec {
        seed,
        slices: 40,
        rows: 256,
        columns: 256,
        nodules: 4,
        ..noduled::phantom::PhantomSpec::default()
    })
}

/// The phantom's own nodules as a mask: voxels denser than -700 HU within each nodule's sphere.
fn nodule_mask(phantom: &noduled::phantom::Phantom) -> Array3<bool> {
    let volume = &phantom.volume;
    let g = &volume.geometry;
    Array3::from_shape_fn(volume.hu.dim(), |(i, r, c)| {
        let xyz = g.irc_to_xyz([i as f64, r as f64, c as f64]);
        volume.hu[[i, r, c]] > -700.0
            && phantom.nodules.iter().any(|n| {
                let d2: f64 = (0..3).map(|k| (xyz[k] - n.center_xyz[k]).powi(2)).sum();
                d2.sqrt() <= n.diameter_mm / 2.0
            })
    })
}

fn xyz_distance(a: [f64; 3], b: [f64; 3]) -> f64 {
    (0..3).map(|k| (a[k] - b[k]).powi(2)).sum::<f64>().sqrt()
}

#[test]
fn grouping_finds_phantom_nodules_from_their_own_mask() {
    // 1 mm slices, so that even 4 mm nodules are several slices thick and survive the erosion.
    for seed in [1, 2, 3] {
        let phantom = noduled::phantom::generate(&noduled::phantom::PhantomSpec {
            seed,
            slices: 48,
            rows: 192,
            columns: 192,
            nodules: 4,
            slice_step_mm: Some(1.0),
            ..noduled::phantom::PhantomSpec::default()
        });
        assert!(!phantom.nodules.is_empty());
        let mask = nodule_mask(&phantom);
        let eroded = group::erode(mask.view());
        let volume = &phantom.volume;
        let g = &volume.geometry;
        let groups = group::group_mask(volume.hu.view(), mask.view());
        let voxel = g.voxel_volume_mm3();
        let mut checked = 0;
        for n in &phantom.nodules {
            let inside = |(i, r, c): (usize, usize, usize)| {
                xyz_distance(g.irc_to_xyz([i as f64, r as f64, c as f64]), n.center_xyz)
                    <= n.diameter_mm / 2.0
            };
            if !eroded.indexed_iter().any(|(irc, &v)| v && inside(irc)) {
                // The book's erosion removes masks two voxels thin: nothing to find.
                eprintln!(
                    "seed {seed}: {:.1} mm nodule erodes away entirely",
                    n.diameter_mm
                );
                continue;
            }
            checked += 1;
            let (distance, group) = groups
                .iter()
                .map(|grp| {
                    (
                        xyz_distance(g.irc_to_xyz(grp.center_irc), n.center_xyz),
                        grp,
                    )
                })
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .expect("a surviving mask gives a candidate");
            let diameter = group::equivalent_diameter_mm(group.segmented_voxels, voxel);
            eprintln!(
                "seed {seed}: {:?} {:?} {:.1} mm nodule: candidate {distance:.2} mm away, {diameter:.1} mm",
                n.kind, n.attachment, n.diameter_mm
            );
            assert!(
                distance < n.diameter_mm / 2.0,
                "seed {seed}: nearest candidate {distance:.2} mm from {n:?}"
            );
            // The mask is the dense part of the nodule's sphere: the candidate cannot be bigger.
            assert!(diameter <= n.diameter_mm * 1.05, "{diameter} mm for {n:?}");
        }
        assert!(
            2 * checked >= phantom.nodules.len(),
            "seed {seed}: only {checked} nodules survive erosion"
        );
    }
}

#[test]
fn phantom_end_to_end_through_the_cli() {
    // Written as DICOM, read back and analysed by `noduled analyze` with the book's models. The
    // book models were trained on real CTs: this asserts that the pipeline runs and that the
    // segmentation localises most synthetic nodules, not how well they are classified.
    let Some(book) = book_models() else { return };
    let phantom = small_phantom(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let series = dir.path().join("series");
    noduled::phantom::write_series(&phantom, &series).expect("phantom written");
    let json = dir.path().join("analysis.json");
    let sr_path = dir.path().join("report.dcm");
    let seg = book.join("seg_unet.onnx");
    let cls = book.join("nodule_cls.onnx");
    let (code, stdout, stderr) = noduled(
        &[
            "analyze",
            series.to_str().unwrap(),
            "--seg-model",
            seg.to_str().unwrap(),
            "--nodule-model",
            cls.to_str().unwrap(),
            "--threads",
            "2",
            "--json",
            json.to_str().unwrap(),
            "--sr",
            sr_path.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 0, "stderr: {stderr}");
    let answer = stdout.lines().last().unwrap_or_default();
    assert!(
        answer == "Malignant nodules present: no"
            || answer.starts_with("Malignant nodules present: yes ("),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written"))
            .expect("JSON parses");
    assert_eq!(
        report["series_uid"].as_str(),
        Some(phantom.volume.series.series_uid.as_str())
    );
    assert_eq!(report["shape"], serde_json::json!([40, 256, 256]));
    let candidates = report["candidates"].as_array().expect("candidates");
    let findings = report["findings"].as_array().expect("findings");
    assert!(!candidates.is_empty());
    let malignant = findings
        .iter()
        .filter(|f| f["p_malignant"].as_f64().unwrap_or(0.0) > 0.5)
        .count();
    assert_eq!(report["malignant_present"].as_bool(), Some(malignant > 0));
    if malignant > 0 {
        assert_eq!(
            answer,
            format!("Malignant nodules present: yes ({malignant})")
        );
    }
    for c in candidates {
        let p = c["p_nodule"].as_f64().expect("p_nodule");
        assert!((0.0..=1.0).contains(&p));
        assert_eq!(c.get("p_malignant").is_some(), p > 0.5, "{c}");
    }
    let centers: Vec<[f64; 3]> = candidates
        .iter()
        .map(|c| serde_json::from_value(c["center_xyz"].clone()).expect("center_xyz"))
        .collect();
    let mut localised = 0;
    for n in &phantom.nodules {
        let d = centers
            .iter()
            .map(|c| xyz_distance(*c, n.center_xyz))
            .fold(f64::INFINITY, f64::min);
        eprintln!(
            "{:?} {:.1} mm nodule: nearest candidate {d:.2} mm",
            n.kind, n.diameter_mm
        );
        if d < n.diameter_mm / 2.0 {
            localised += 1;
        }
    }
    assert!(
        2 * localised >= phantom.nodules.len(),
        "only {localised} of {} phantom nodules have a candidate inside them",
        phantom.nodules.len()
    );
    assert_eq!(report["seconds"].as_object().map(|s| s.len()), Some(6));

    // `--sr` wrote the same findings and answer as a DICOM SR of the source study.
    let sr = dicom_object::open_file(&sr_path).expect("SR written");
    let sr_findings = noduled::dicom::sr::read_findings(&sr).expect("SR findings");
    assert_eq!(sr_findings.len(), findings.len());
    for (ours, theirs) in sr_findings.iter().zip(findings) {
        let xyz: [f64; 3] = serde_json::from_value(theirs["center_xyz"].clone()).unwrap();
        assert!(xyz_distance(ours.center_xyz, xyz) < 1e-3);
    }
    assert_eq!(
        noduled::dicom::sr::read_answer(&sr),
        report["malignant_present"].as_bool()
    );
    let study = sr
        .element(dicom_dictionary_std::tags::STUDY_INSTANCE_UID)
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(
        study.trim_end_matches('\0'),
        phantom.volume.series.study_uid
    );
}
