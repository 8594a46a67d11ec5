//! Every input rule of series assembly, on series crafted from a small phantom: refusals give a typed
//! reason (and a one-line CLI error with a non-zero exit), warnings are attached to the volume, and a
//! well-formed series loads back exactly — sorted whatever the file names, with the rescale applied.

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};
use noduled::dicom::{load_series, Refusal, SeriesError};
use noduled::phantom::{generate, Phantom, PhantomSpec};
use std::path::Path;
use std::process::Command;

type Object = FileDicomObject<InMemDicomObject>;

fn slice(phantom: &Phantom, index: usize) -> Object {
    noduled::phantom::slice_object(phantom, index).expect("slice object")
}

fn small_phantom(slices: usize) -> Phantom {
    generate(&PhantomSpec {
        seed: 11,
        slices,
        rows: 64,
        columns: 64,
        nodules: 1,
        ..PhantomSpec::default()
    })
}

/// Writes the phantom's slices, letting `edit` change each (return false to leave a slice out).
fn write_edited(phantom: &Phantom, dir: &Path, mut edit: impl FnMut(usize, &mut Object) -> bool) {
    for index in 0..phantom.volume.shape()[0] {
        let mut object = slice(phantom, index);
        if edit(index, &mut object) {
            object
                .write_to_file(dir.join(format!("slice{index:04}.dcm")))
                .expect("slice written");
        }
    }
}

fn put_str(object: &mut Object, tag: dicom_core::Tag, vr: VR, value: &str) {
    object.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
}

fn refusal_of(dir: &Path) -> Refusal {
    match load_series(dir, None) {
        Err(SeriesError::Refused { refusal, .. }) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Runs `noduled info DIR` and checks the refusal surfaces as one error line and a failing exit.
fn assert_cli_refuses(dir: &Path, reason_part: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_noduled"))
        .arg("info")
        .arg(dir)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "info accepted a refused series");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<_> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(lines.len(), 1, "one error line expected: {stderr}");
    assert!(
        lines[0].contains(reason_part),
        "{:?} does not mention {reason_part:?}",
        lines[0]
    );
}

#[test]
fn well_formed_series_loads_back_exactly_whatever_the_file_order() {
    let phantom = small_phantom(12);
    let dir = tempfile::tempdir().unwrap();
    let n = phantom.volume.shape()[0];
    for index in 0..n {
        // Names in an order unrelated to position.
        let name = format!("x{:03}.dcm", (index * 7 + 3) % n);
        slice(&phantom, index)
            .write_to_file(dir.path().join(name))
            .unwrap();
    }
    let volume = load_series(dir.path(), None).expect("loads");
    assert_eq!(volume.shape(), phantom.volume.shape());
    assert!(
        volume.hu == phantom.volume.hu,
        "HU differ from the generated phantom"
    );
    for k in 0..3 {
        assert!(
            (volume.geometry.origin_xyz[k] - phantom.volume.geometry.origin_xyz[k]).abs() < 1e-3
        );
        assert!(
            (volume.geometry.spacing_xyz[k] - phantom.volume.geometry.spacing_xyz[k]).abs() < 1e-4
        );
    }
}

#[test]
fn rescale_intercept_and_slope_are_applied() {
    let phantom = small_phantom(8);
    let (plain, shifted) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_edited(&phantom, plain.path(), |_, _| true);
    write_edited(&phantom, shifted.path(), |_, object| {
        // Same stored pixels, slope 2 and intercept moved: HU' = 2·stored + b'.
        let intercept = object
            .element(tags::RESCALE_INTERCEPT)
            .unwrap()
            .to_float64()
            .unwrap();
        put_str(object, tags::RESCALE_SLOPE, VR::DS, "2");
        put_str(
            object,
            tags::RESCALE_INTERCEPT,
            VR::DS,
            &format!("{}", intercept - 500.0),
        );
        true
    });
    let a = load_series(plain.path(), None).unwrap();
    let b = load_series(shifted.path(), None).unwrap();
    let intercept = slice(&phantom, 0)
        .element(tags::RESCALE_INTERCEPT)
        .unwrap()
        .to_float64()
        .unwrap() as f32;
    let slope = slice(&phantom, 0)
        .element(tags::RESCALE_SLOPE)
        .unwrap()
        .to_float64()
        .unwrap() as f32;
    for (hu, hu2) in a.hu.iter().zip(b.hu.iter()).step_by(101) {
        let stored = (hu - intercept) / slope;
        assert!(
            (hu2 - (2.0 * stored + intercept - 500.0)).abs() < 1e-3,
            "{hu} → {hu2}"
        );
    }
}

#[test]
fn not_ct_is_refused() {
    let phantom = small_phantom(8);
    // An MR series: no CT series at all in the folder.
    let dir = tempfile::tempdir().unwrap();
    write_edited(&phantom, dir.path(), |_, object| {
        put_str(
            object,
            tags::SOP_CLASS_UID,
            VR::UI,
            "1.2.840.10008.5.1.4.1.1.4",
        );
        put_str(object, tags::MODALITY, VR::CS, "MR");
        true
    });
    let err = load_series(dir.path(), None).unwrap_err();
    assert!(matches!(err, SeriesError::NoCtSeries { .. }), "{err}");
    assert!(err.to_string().contains("MR"), "{err}");
    assert_cli_refuses(dir.path(), "no CT image series");
    // CT Image Storage whose Modality says otherwise.
    let dir = tempfile::tempdir().unwrap();
    write_edited(&phantom, dir.path(), |_, object| {
        put_str(object, tags::MODALITY, VR::CS, "PT");
        true
    });
    assert!(matches!(refusal_of(dir.path()), Refusal::NotCt { .. }));
    assert_cli_refuses(dir.path(), "not a CT series");
}

#[test]
fn missing_pixel_data_is_refused() {
    let phantom = small_phantom(8);
    let dir = tempfile::tempdir().unwrap();
    write_edited(&phantom, dir.path(), |index, object| {
        if index == 4 {
            object.remove_element(tags::PIXEL_DATA);
        }
        true
    });
    assert!(matches!(
        refusal_of(dir.path()),
        Refusal::NoPixelData { .. }
    ));
    assert_cli_refuses(dir.path(), "no pixel data");
}

#[test]
fn truncated_pixel_data_is_refused() {
    let phantom = small_phantom(8);
    let dir = tempfile::tempdir().unwrap();
    write_edited(&phantom, dir.path(), |index, object| {
        if index == 2 {
            let bytes = object
                .element(tags::PIXEL_DATA)
                .unwrap()
                .to_bytes()
                .unwrap()
                .to_vec();
            object.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OW,
                PrimitiveValue::from(bytes[..bytes.len() / 2].to_vec()),
            ));
        }
        true
    });
    assert!(matches!(
        refusal_of(dir.path()),
        Refusal::UndecodablePixels { .. }
    ));
    assert_cli_refuses(dir.path(), "pixel data");
}

#[test]
fn localizer_is_refused() {
    let phantom = small_phantom(8);
    let dir = tempfile::tempdir().unwrap();
    write_edited(&phantom, dir.path(), |_, object| {
        put_str(
            object,
            tags::IMAGE_TYPE,
            VR::CS,
            "ORIGINAL\\PRIMARY\\LOCALIZER",
        );
        true
    });
    assert_eq!(refusal_of(dir.path()), Refusal::Localizer);
    assert_cli_refuses(dir.path(), "localizer");
}

#[test]
fn non_axial_orientation_is_refused() {
    let phantom = small_phantom(8);
    let dir = tempfile::tempdir().unwrap();
    write_edited(&phantom, dir.path(), |index, object| {
        // Coronal: rows along x, columns along -z; slices step along y.
        put_str(
            object,
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            "1\\0\\0\\0\\0\\-1",
        );
        put_str(
            object,
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            &format!("-100\\{}\\100", index as f64 * 2.0),
        );
        true
    });
    assert!(matches!(refusal_of(dir.path()), Refusal::NonAxial { .. }));
    assert_cli_refuses(dir.path(), "not an axial series");
}

#[test]
fn mixed_orientations_are_refused() {
    let phantom = small_phantom(8);
    let dir = tempfile::tempdir().unwrap();
    write_edited(&phantom, dir.path(), |index, object| {
        if index == 3 {
            let (c, s) = (10f64.to_radians().cos(), 10f64.to_radians().sin());
            put_str(
                object,
                tags::IMAGE_ORIENTATION_PATIENT,
                VR::DS,
                &format!("{c:.6}\\{s:.6}\\0\\{:.6}\\{c:.6}\\0", -s),
            );
        }
        true
    });
    assert_eq!(refusal_of(dir.path()), Refusal::MixedOrientation);
    assert_cli_refuses(dir.path(), "different orientations");
}

#[test]
fn mixed_matrix_sizes_are_refused() {
    let phantom = small_phantom(8);
    let dir = tempfile::tempdir().unwrap();
    write_edited(&phantom, dir.path(), |index, object| {
        if index == 5 {
            // A 32-row slice with its pixel data cut to match: valid on its own, wrong in this series.
            let bytes = object
                .element(tags::PIXEL_DATA)
                .unwrap()
                .to_bytes()
                .unwrap()
                .to_vec();
            object.put(DataElement::new(
                tags::ROWS,
                VR::US,
                PrimitiveValue::from(32u16),
            ));
            object.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OW,
                PrimitiveValue::from(bytes[..32 * 64 * 2].to_vec()),
            ));
        }
        true
    });
    assert!(matches!(
        refusal_of(dir.path()),
        Refusal::MixedMatrix { .. }
    ));
    assert_cli_refuses(dir.path(), "different matrix sizes");
}

#[test]
fn duplicate_positions_are_refused() {
    let phantom = small_phantom(10);
    let dir = tempfile::tempdir().unwrap();
    let position = slice(&phantom, 4)
        .element(tags::IMAGE_POSITION_PATIENT)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    write_edited(&phantom, dir.path(), |index, object| {
        if index == 5 {
            put_str(object, tags::IMAGE_POSITION_PATIENT, VR::DS, &position);
        }
        true
    });
    assert!(matches!(
        refusal_of(dir.path()),
        Refusal::DuplicatePosition { .. }
    ));
    assert_cli_refuses(dir.path(), "same position");
}

#[test]
fn a_gap_is_refused() {
    let phantom = small_phantom(12);
    let dir = tempfile::tempdir().unwrap();
    write_edited(&phantom, dir.path(), |index, _| index != 6);
    match refusal_of(dir.path()) {
        Refusal::Gap {
            gap_mm,
            median_step_mm,
        } => assert!((gap_mm / median_step_mm - 2.0).abs() < 1e-3),
        other => panic!("expected a gap, got {other}"),
    }
    assert_cli_refuses(dir.path(), "gap");
}

#[test]
fn too_few_slices_are_refused() {
    for slices in [1, 6] {
        let phantom = small_phantom(slices);
        let dir = tempfile::tempdir().unwrap();
        write_edited(&phantom, dir.path(), |_, _| true);
        assert_eq!(
            refusal_of(dir.path()),
            Refusal::TooFewSlices { slices, min: 7 }
        );
        assert_cli_refuses(dir.path(), "at least 7");
    }
    let phantom = small_phantom(7);
    let dir = tempfile::tempdir().unwrap();
    write_edited(&phantom, dir.path(), |_, _| true);
    assert!(load_series(dir.path(), None).is_ok(), "7 slices are enough");
}

#[test]
fn thick_tilted_and_uneven_series_load_with_warnings() {
    let phantom = small_phantom(10);
    let step = phantom.volume.geometry.spacing_xyz[2];
    let origin = phantom.volume.geometry.origin_xyz;
    let dir = tempfile::tempdir().unwrap();
    write_edited(&phantom, dir.path(), |index, object| {
        put_str(object, tags::SLICE_THICKNESS, VR::DS, "5");
        put_str(object, tags::GANTRY_DETECTOR_TILT, VR::DS, "12");
        // Slice 5 moved by 20% of a step: uneven, but not a gap.
        let z = origin[2] + index as f64 * step + if index == 5 { 0.2 * step } else { 0.0 };
        put_str(
            object,
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            &format!("{:.4}\\{:.4}\\{z:.4}", origin[0], origin[1]),
        );
        true
    });
    let volume = load_series(dir.path(), None).expect("warned, not refused");
    let warnings = volume.series.warnings.join(" | ");
    assert!(warnings.contains("thicker than"), "{warnings}");
    assert!(warnings.contains("gantry tilt"), "{warnings}");
    assert!(warnings.contains("uneven slice steps"), "{warnings}");
    let output = Command::new(env!("CARGO_BIN_EXE_noduled"))
        .args(["info", "--json"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success());
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["warnings"].as_array().unwrap().len(), 3, "{json}");
}

#[test]
fn several_series_are_listed_and_one_can_be_picked() {
    let first = small_phantom(8);
    let second = generate(&PhantomSpec {
        seed: 12,
        slices: 9,
        rows: 64,
        columns: 64,
        nodules: 1,
        ..PhantomSpec::default()
    });
    let dir = tempfile::tempdir().unwrap();
    for (k, phantom) in [&first, &second].into_iter().enumerate() {
        let sub = dir.path().join(format!("s{k}"));
        std::fs::create_dir(&sub).unwrap();
        write_edited(phantom, &sub, |_, _| true);
    }
    let err = load_series(dir.path(), None).unwrap_err();
    assert!(matches!(err, SeriesError::Ambiguous { .. }));
    let message = err.to_string();
    assert!(
        message.contains(&first.volume.series.series_uid)
            && message.contains(&second.volume.series.series_uid)
    );
    let picked = load_series(dir.path(), Some(&second.volume.series.series_uid)).unwrap();
    assert_eq!(picked.shape()[0], 9);
    let output = Command::new(env!("CARGO_BIN_EXE_noduled"))
        .args(["info", "--series", &second.volume.series.series_uid])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_cli_refuses(dir.path(), "choose one with --series");
}
