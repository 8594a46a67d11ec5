//! Series loading on the two real LIDC CTs in `../shared`: shape, geometry, rescale, sorting, and the
//! LUNA16 nodules landing on dense tissue through our geometry.

mod common;

use noduled::dicom::load_series;

fn hu_at(volume: &noduled::Volume, xyz: [f64; 3]) -> f32 {
    let irc = volume.geometry.xyz_to_irc(xyz);
    let [i, r, c] = irc.map(|v| v.round() as usize);
    volume.hu[[i, r, c]]
}

#[test]
fn lidc_0001_loads_with_book_geometry_and_nodule_on_tissue() {
    let Some(shared) = common::shared() else {
        return;
    };
    let volume =
        load_series(&common::lidc_case(&shared, "LIDC-IDRI-0001"), None).expect("0001 loads");
    assert_eq!(volume.shape(), [133, 512, 512]);
    assert_eq!(volume.geometry.spacing_xyz, [0.703125, 0.703125, 2.5]);
    assert_eq!(volume.geometry.origin_xyz, [-166.0, -171.699997, -340.0]);
    assert!(
        volume.series.warnings.is_empty(),
        "{:?}",
        volume.series.warnings
    );
    assert_rescale_applied(&volume, &common::lidc_case(&shared, "LIDC-IDRI-0001"));
    let nodules: Vec<_> = common::read_annotations(&shared.join("data/lidc/annotations.csv"))
        .into_iter()
        .filter(|a| a.series_uid == volume.series.series_uid)
        .collect();
    assert_eq!(nodules.len(), 1);
    for nodule in nodules {
        let hu = hu_at(&volume, nodule.xyz);
        assert!(hu > -400.0, "nodule centre {:?} at HU {hu}", nodule.xyz);
    }
}

#[test]
fn lidc_0003_loads_and_its_three_nodules_are_on_tissue() {
    let Some(shared) = common::shared() else {
        return;
    };
    let volume =
        load_series(&common::lidc_case(&shared, "LIDC-IDRI-0003"), None).expect("0003 loads");
    assert_eq!(volume.shape(), [140, 512, 512]);
    assert_eq!(volume.geometry.spacing_xyz[0], 0.820312);
    let nodules: Vec<_> = common::read_annotations(&shared.join("data/lidc/annotations.csv"))
        .into_iter()
        .filter(|a| a.series_uid == volume.series.series_uid)
        .collect();
    assert_eq!(nodules.len(), 3);
    for nodule in nodules {
        let hu = hu_at(&volume, nodule.xyz);
        assert!(hu > -400.0, "nodule centre {:?} at HU {hu}", nodule.xyz);
    }
}

#[test]
fn geometry_matches_the_reference_pipeline() {
    let Some(shared) = common::shared() else {
        return;
    };
    for case in ["LIDC-IDRI-0001", "LIDC-IDRI-0003"] {
        let reference: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(shared.join(format!("reference/{case}.json"))).unwrap(),
        )
        .unwrap();
        let volume = load_series(&common::lidc_case(&shared, case), None).unwrap();
        assert_eq!(
            volume.series.series_uid,
            reference["series_uid"].as_str().unwrap()
        );
        let shape: Vec<usize> = serde_json::from_value(reference["shape"].clone()).unwrap();
        assert_eq!(volume.shape().to_vec(), shape);
        for (key, ours) in [
            ("origin_xyz", volume.geometry.origin_xyz),
            ("spacing_xyz", volume.geometry.spacing_xyz),
        ] {
            let theirs: Vec<f64> = serde_json::from_value(reference[key].clone()).unwrap();
            for (a, b) in ours.iter().zip(&theirs) {
                assert!((a - b).abs() < 1e-6, "{case} {key}: {ours:?} vs {theirs:?}");
            }
        }
        let theirs: Vec<f64> = serde_json::from_value(reference["direction"].clone()).unwrap();
        for (a, b) in volume.geometry.direction_flat().iter().zip(&theirs) {
            assert!((a - b).abs() < 1e-9);
        }
    }
}

#[test]
fn sorting_does_not_depend_on_file_names() {
    let Some(shared) = common::shared() else {
        return;
    };
    let source = common::lidc_case(&shared, "LIDC-IDRI-0001");
    let reference = load_series(&source, None).unwrap();
    // Copy the slices under shuffled names (a fixed permutation) into nested folders.
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<_> = walk(&source)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    files.sort();
    let n = files.len();
    for (k, file) in files.iter().enumerate() {
        let shuffled = (k * 37 + 11) % n;
        let sub = dir.path().join(format!("part{}", shuffled % 3));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::copy(file, sub.join(format!("IMG{shuffled:05}"))).unwrap();
    }
    let shuffled = load_series(dir.path(), None).unwrap();
    assert_eq!(shuffled.geometry, reference.geometry);
    assert!(shuffled.hu == reference.hu, "voxels differ after shuffling");
    assert_eq!(shuffled.series.instances, reference.series.instances);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Every file's stored pixels × slope + intercept equal the volume's voxels at that file's position.
fn assert_rescale_applied(volume: &noduled::Volume, dir: &std::path::Path) {
    use dicom_dictionary_std::tags;
    let files: Vec<_> = walk(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    for file in files.iter().step_by(17) {
        let obj = dicom_object::open_file(file).unwrap();
        let number = |tag| obj.element(tag).unwrap().to_multi_float64().unwrap();
        let (slope, intercept) = (
            number(tags::RESCALE_SLOPE)[0],
            number(tags::RESCALE_INTERCEPT)[0],
        );
        let position = number(tags::IMAGE_POSITION_PATIENT);
        let index = volume
            .geometry
            .xyz_to_irc([position[0], position[1], position[2]])[0]
            .round() as usize;
        let bytes = obj.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
        let signed = obj
            .element(tags::PIXEL_REPRESENTATION)
            .unwrap()
            .to_int::<u16>()
            .unwrap()
            == 1;
        for (k, pair) in bytes.chunks_exact(2).enumerate().step_by(997) {
            let raw = if signed {
                f64::from(i16::from_le_bytes([pair[0], pair[1]]))
            } else {
                f64::from(u16::from_le_bytes([pair[0], pair[1]]))
            };
            let expected = (raw * slope + intercept) as f32;
            let got = volume.hu[[index, k / 512, k % 512]];
            assert_eq!(got, expected, "{} pixel {k}", file.display());
        }
    }
}
