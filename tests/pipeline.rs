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
