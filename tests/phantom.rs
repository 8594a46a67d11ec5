//! The phantom generator's promises: same seed → same bytes; nodules are dense, inside a lung and
//! annotated where they are; lungs look like lungs and contain vessels; the files are DICOM that
//! dcmdump and dciodvfy accept and that decode back to the generated HU; the CLI works and fails
//! cleanly on bad arguments.

use noduled::phantom::{
    generate, slice_file_name, slice_object, write_dataset, write_series, NoduleAttachment,
    Phantom, PhantomError, PhantomSpec, ANNOTATIONS_HEADER,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn small(seed: u64, rows: usize, slices: usize, nodules: usize) -> PhantomSpec {
    PhantomSpec {
        seed,
        rows,
        columns: rows,
        slices,
        nodules,
        ..PhantomSpec::default()
    }
}

/// Every file under `dir`, keyed by its path relative to `dir`.
fn all_files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.insert(path.strip_prefix(root).unwrap().to_path_buf(), bytes);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn hu_at(phantom: &Phantom, irc: [i64; 3]) -> Option<f32> {
    let [n, rows, cols] = phantom.volume.shape();
    if irc.iter().any(|&v| v < 0)
        || irc[0] as usize >= n
        || irc[1] as usize >= rows
        || irc[2] as usize >= cols
    {
        return None;
    }
    Some(phantom.volume.hu[[irc[0] as usize, irc[1] as usize, irc[2] as usize]])
}

#[test]
fn same_seed_writes_identical_bytes_and_another_seed_differs() {
    let spec = small(0, 96, 12, 3);
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    write_dataset(a.path(), 11, 2, &spec).unwrap();
    write_dataset(b.path(), 11, 2, &spec).unwrap();
    write_dataset(c.path(), 12, 2, &spec).unwrap();
    let (fa, fb, fc) = (
        all_files(a.path()),
        all_files(b.path()),
        all_files(c.path()),
    );
    // 2 series × 12 slices + annotations.csv
    assert_eq!(fa.len(), 25);
    assert_eq!(fa.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>());
    for (path, bytes) in &fa {
        assert!(
            fb[path] == *bytes,
            "{} differs between two runs with one seed",
            path.display()
        );
    }
    assert_ne!(
        fa.keys().collect::<Vec<_>>(),
        fc.keys().collect::<Vec<_>>(),
        "another seed, other UIDs"
    );
    assert_ne!(
        fa[Path::new("annotations.csv")],
        fc[Path::new("annotations.csv")],
        "another seed, other nodules"
    );
    // In memory too: voxels, nodules and UIDs.
    let (p, q) = (
        generate(&small(5, 64, 10, 2)),
        generate(&small(5, 64, 10, 2)),
    );
    assert_eq!(p.volume.hu, q.volume.hu);
    assert_eq!(p.nodules, q.nodules);
    assert_eq!(p.volume.series, q.volume.series);
    assert_ne!(generate(&small(6, 64, 10, 2)).volume.hu, p.volume.hu);
}

/// Checks every nodule of `phantom`: dense centre, inside a lung, surrounded by lung, and the
/// annotation maps back to the centre voxel.
fn check_nodules(phantom: &Phantom) {
    let g = &phantom.volume.geometry;
    for n in &phantom.nodules {
        let irc = g.xyz_to_irc(n.center_xyz);
        for (a, b) in irc.iter().zip(n.center_irc) {
            assert!((a - b).abs() < 1e-6, "{n:?}");
        }
        let voxel = irc.map(|v| v.round() as i64);
        let hu = hu_at(phantom, voxel).expect("nodule centre inside the volume");
        assert!(hu > -400.0, "nodule centre HU {hu} not dense: {n:?}");
        assert!(
            phantom.in_lung(n.center_xyz),
            "nodule centre outside the lungs: {n:?}"
        );
        // The shell R+1 .. R+2.5 mm around the centre is mostly lung (pleural ones about half).
        let r = n.diameter_mm / 2.0;
        let (inner, outer) = (r + 1.0, r + 2.5);
        let sp = g.spacing_xyz;
        let reach = [outer / sp[2], outer / sp[1], outer / sp[0]].map(|v| v.ceil() as i64);
        let (mut shell, mut lung, mut dark) = (0usize, 0usize, 0usize);
        for di in -reach[0]..=reach[0] {
            for dr in -reach[1]..=reach[1] {
                for dc in -reach[2]..=reach[2] {
                    let v = [voxel[0] + di, voxel[1] + dr, voxel[2] + dc];
                    let xyz = g.irc_to_xyz(v.map(|x| x as f64));
                    let d = (0..3)
                        .map(|k| (xyz[k] - n.center_xyz[k]).powi(2))
                        .sum::<f64>()
                        .sqrt();
                    if d < inner || d > outer {
                        continue;
                    }
                    let Some(hu) = hu_at(phantom, v) else {
                        continue;
                    };
                    shell += 1;
                    lung += usize::from(phantom.in_lung(xyz));
                    dark += usize::from(hu < -500.0);
                }
            }
        }
        let (lung_frac, dark_frac) = (lung as f64 / shell as f64, dark as f64 / shell as f64);
        let (min_lung, min_dark) = match n.attachment {
            NoduleAttachment::Pleural | NoduleAttachment::Mediastinal => (0.25, 0.15),
            NoduleAttachment::Vascular => (0.75, 0.3),
            NoduleAttachment::Free => (0.75, 0.5),
        };
        assert!(
            lung_frac >= min_lung && dark_frac >= min_dark,
            "nodule not surrounded by lung: lung {lung_frac:.2} dark {dark_frac:.2} {n:?}"
        );
    }
}

#[test]
fn nodules_are_dense_inside_the_lungs_and_annotated_where_they_are() {
    let mut count = 0;
    let mut malignant = 0;
    let mut attachments = std::collections::HashSet::new();
    for seed in 0..8 {
        let phantom = generate(&small(seed, 192, 48, 5));
        assert!(!phantom.nodules.is_empty());
        check_nodules(&phantom);
        count += phantom.nodules.len();
        malignant += phantom.nodules.iter().filter(|n| n.malignant).count();
        attachments.extend(phantom.nodules.iter().map(|n| n.attachment));
        for n in &phantom.nodules {
            assert!((3.25..=32.3).contains(&n.diameter_mm), "{n:?}");
        }
    }
    assert!(count >= 30, "only {count} nodules placed");
    assert!(malignant > 0 && malignant < count);
    assert_eq!(
        attachments.len(),
        3,
        "free, pleural and vascular nodules all occur"
    );

    // One full-size series, through the written annotations.csv.
    let dir = tempfile::tempdir().unwrap();
    let spec = PhantomSpec {
        slices: 60,
        nodules: 6,
        ..PhantomSpec::default()
    };
    let summary = write_dataset(dir.path(), 21, 1, &spec).unwrap();
    let written = &summary.series[0];
    let phantom = generate(&PhantomSpec {
        seed: written.seed,
        ..spec
    });
    assert_eq!(phantom.nodules.len(), 6);
    check_nodules(&phantom);
    let csv = std::fs::read_to_string(&summary.annotations_csv).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some(ANNOTATIONS_HEADER));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 6);
    for (row, n) in rows.iter().zip(&phantom.nodules) {
        assert_eq!(row[0], phantom.volume.series.series_uid);
        let xyz = [1, 2, 3].map(|k| row[k].parse::<f64>().unwrap());
        assert_eq!(xyz, n.center_xyz, "annotation coordinates are exact");
        let irc = phantom.volume.geometry.xyz_to_irc(xyz);
        assert_eq!(irc.map(|v| v.round()), n.center_irc.map(|v| v.round()));
        assert_eq!(row[4].parse::<f64>().unwrap(), n.diameter_mm);
        assert_eq!(row[5], if n.malignant { "True" } else { "False" });
    }
}

#[test]
fn lungs_are_near_minus_850_and_hold_vessels() {
    let phantom = generate(&small(3, 512, 30, 3));
    let g = &phantom.volume.geometry;
    let [n, rows, cols] = phantom.volume.shape();
    let near_nodule = |xyz: [f64; 3]| {
        phantom.nodules.iter().any(|nd| {
            let d2: f64 = (0..3).map(|k| (xyz[k] - nd.center_xyz[k]).powi(2)).sum();
            d2.sqrt() < nd.diameter_mm + 4.0
        })
    };
    let mut lung = Vec::new();
    let mut bright = Vec::new();
    for i in (0..n).step_by(3) {
        for r in 0..rows {
            for c in 0..cols {
                let xyz = g.irc_to_xyz([i as f64, r as f64, c as f64]);
                if !phantom.in_lung(xyz) || near_nodule(xyz) {
                    continue;
                }
                let hu = phantom.volume.hu[[i, r, c]];
                lung.push(hu);
                if hu > -200.0 {
                    bright.push(xyz);
                }
            }
        }
    }
    assert!(lung.len() > 10_000, "too little lung: {}", lung.len());
    lung.sort_by(f32::total_cmp);

    let median = lung[lung.len() / 2];
    assert!((-880.0..=-800.0).contains(&median), "lung median {median}");
    let near = lung
        .iter()
        .filter(|&&hu| (-950.0..=-750.0).contains(&hu))
        .count();
    assert!(
        near as f64 > 0.75 * lung.len() as f64,
        "only {near} of {} lung voxels near -850",
        lung.len()
    );
    // Vessels: soft-tissue voxels inside the lungs, away from nodules, most of them inside a vessel.
    assert!(bright.len() > 300, "only {} vessel voxels", bright.len());
    let sample: Vec<_> = bright.iter().step_by(bright.len() / 200 + 1).collect();
    let on_vessel = sample
        .iter()
        .filter(|&&&xyz| phantom.vessel_distance_mm(xyz) < 1.0)
        .count();
    assert!(
        on_vessel as f64 > 0.7 * sample.len() as f64,
        "{on_vessel} of {} bright lung voxels lie on vessels",
        sample.len()
    );
}

#[test]
fn written_slices_decode_to_the_generated_volume() {
    let phantom = generate(&small(8, 64, 6, 1));
    let dir = tempfile::tempdir().unwrap();
    let files = write_series(&phantom, dir.path()).unwrap();
    assert_eq!(files.len(), 6);
    let g = &phantom.volume.geometry;
    for (index, path) in files.iter().enumerate() {
        assert_eq!(
            path.file_name().unwrap().to_str().unwrap(),
            slice_file_name(&phantom, index)
        );
        let obj = dicom_object::open_file(path).unwrap();
        let text = |tag| {
            obj.element(tag)
                .unwrap()
                .to_str()
                .unwrap()
                .trim()
                .to_string()
        };
        let floats = |tag| obj.element(tag).unwrap().to_multi_float64().unwrap();
        use dicom_dictionary_std::tags;
        assert_eq!(text(tags::SOP_CLASS_UID), "1.2.840.10008.5.1.4.1.1.2");
        assert_eq!(text(tags::MODALITY), "CT");
        assert_eq!(
            text(tags::SERIES_INSTANCE_UID),
            phantom.volume.series.series_uid
        );
        assert_eq!(
            text(tags::SOP_INSTANCE_UID),
            phantom.volume.series.instances[index].sop_instance_uid
        );
        assert_eq!(
            obj.meta().transfer_syntax().trim_end_matches('\0'),
            "1.2.840.10008.1.2.1"
        );
        assert_eq!(
            floats(tags::IMAGE_POSITION_PATIENT),
            g.irc_to_xyz([index as f64, 0.0, 0.0]).to_vec()
        );
        assert_eq!(
            floats(tags::IMAGE_ORIENTATION_PATIENT),
            vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        );
        assert_eq!(
            floats(tags::PIXEL_SPACING),
            vec![g.spacing_xyz[1], g.spacing_xyz[0]]
        );
        let slope = floats(tags::RESCALE_SLOPE)[0];
        let intercept = floats(tags::RESCALE_INTERCEPT)[0];
        let bytes = obj.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
        let plane = phantom.volume.hu.index_axis(ndarray::Axis(0), index);
        assert_eq!(bytes.len(), plane.len() * 2);
        for (chunk, &hu) in bytes.chunks_exact(2).zip(plane.iter()) {
            let stored = i16::from_le_bytes([chunk[0], chunk[1]]);
            assert_eq!(f64::from(stored) * slope + intercept, f64::from(hu));
        }
    }
    assert!(matches!(
        slice_object(&phantom, 6),
        Err(PhantomError::SliceIndex {
            index: 6,
            slices: 6
        })
    ));
}

fn tool(name: &str) -> Option<PathBuf> {
    let path = PathBuf::from("/usr/bin").join(name);
    if path.exists() {
        return Some(path);
    }
    let found = Command::new("which").arg(name).output().ok()?;
    found
        .status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&found.stdout).trim()))
}

#[test]
fn dcmdump_and_dciodvfy_accept_a_slice() {
    let (Some(dcmdump), Some(dciodvfy)) = (tool("dcmdump"), tool("dciodvfy")) else {
        eprintln!("skipped: dcmdump or dciodvfy (dicom3tools/dcmtk) is not installed");
        return;
    };
    for spec in [
        small(4, 64, 4, 1),
        PhantomSpec {
            slices: 3,
            nodules: 1,
            ..PhantomSpec::default()
        },
    ] {
        let phantom = generate(&spec);
        let dir = tempfile::tempdir().unwrap();
        let files = write_series(&phantom, dir.path()).unwrap();
        for path in [&files[0], &files[files.len() - 1]] {
            let dump = Command::new(&dcmdump).arg(path).output().unwrap();
            assert!(
                dump.status.success(),
                "dcmdump failed: {}",
                String::from_utf8_lossy(&dump.stderr)
            );
            let verify = Command::new(&dciodvfy).arg(path).output().unwrap();
            let report = format!(
                "{}{}",
                String::from_utf8_lossy(&verify.stdout),
                String::from_utf8_lossy(&verify.stderr)
            );
            assert!(
                report.contains("CTImage"),
                "dciodvfy did not recognise a CT image:\n{report}"
            );
            let errors: Vec<&str> = report.lines().filter(|l| l.contains("Error")).collect();
            assert!(errors.is_empty(), "dciodvfy errors:\n{report}");
        }
    }
}

#[test]
fn cli_writes_a_series_and_annotations() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("phantoms");
    let status = Command::new(env!("CARGO_BIN_EXE_noduled"))
        .args(["phantom", "--out"])
        .arg(&out)
        .args(["--seed", "3", "--slices", "20", "--nodules", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        stdout.contains("20 slices") && stdout.contains("2 nodules"),
        "{stdout}"
    );
    assert!(stdout.contains("annotations.csv"), "{stdout}");
    let csv = std::fs::read_to_string(out.join("annotations.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], ANNOTATIONS_HEADER);
    assert_eq!(lines.len(), 3, "{csv}");
    let series: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(series.len(), 1);
    let uid = series[0].file_name().unwrap().to_str().unwrap();
    assert!(noduled::uid::is_valid(uid), "{uid}");
    assert!(lines[1].starts_with(&format!("{uid},")));
    let dcm = std::fs::read_dir(&series[0])
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "dcm")
        })
        .count();
    assert_eq!(dcm, 20);
}

#[test]
fn cli_rejects_bad_arguments_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"not a folder").unwrap();
    let cases: [(Vec<String>, &str); 3] = [
        (
            vec![
                "--out".into(),
                dir.path().join("x").display().to_string(),
                "--slices".into(),
                "0".into(),
            ],
            "slices",
        ),
        (
            vec![
                "--out".into(),
                blocker.join("sub").display().to_string(),
                "--slices".into(),
                "2".into(),
            ],
            "cannot",
        ),
        (
            vec![
                "--out".into(),
                dir.path().join("y").display().to_string(),
                "--count".into(),
                "0".into(),
            ],
            "count",
        ),
    ];
    for (args, expected) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_noduled"))
            .arg("phantom")
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(!stderr.contains("panicked"), "{stderr}");
        let error_lines: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(error_lines.len(), 1, "{stderr}");
        assert!(error_lines[0].contains(expected), "{stderr}");
    }
}

#[test]
fn library_rejects_bad_specs_and_unwritable_folders() {
    let dir = tempfile::tempdir().unwrap();
    for spec in [
        PhantomSpec {
            slices: 0,
            ..PhantomSpec::default()
        },
        PhantomSpec {
            rows: 8,
            ..PhantomSpec::default()
        },
        PhantomSpec {
            pixel_spacing_mm: Some(f64::NAN),
            ..PhantomSpec::default()
        },
        PhantomSpec {
            nodules: 1000,
            ..PhantomSpec::default()
        },
    ] {
        assert!(
            matches!(spec.validate(), Err(PhantomError::InvalidSpec(_))),
            "{spec:?}"
        );
        assert!(matches!(
            write_dataset(dir.path(), 0, 1, &spec),
            Err(PhantomError::InvalidSpec(_))
        ));
    }
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let phantom = generate(&small(1, 32, 2, 0));
    assert!(matches!(
        write_series(&phantom, &blocker.join("series")),
        Err(PhantomError::Io { .. })
    ));
    // generate() clamps instead of failing.
    let clamped = generate(&PhantomSpec {
        slices: 0,
        rows: 1,
        columns: 1,
        nodules: 0,
        ..PhantomSpec::default()
    });
    assert_eq!(clamped.volume.shape(), [1, 16, 16]);
}

#[test]
fn small_matrices_keep_realistic_spacing_and_a_whole_chest() {
    let phantom = generate(&small(2, 64, 8, 2));
    let g = &phantom.volume.geometry;
    assert!(
        (0.6..=0.81).contains(&g.spacing_xyz[0]),
        "{:?}",
        g.spacing_xyz
    );
    assert!(
        [1.25, 1.5, 2.0, 2.5].contains(&g.spacing_xyz[2]),
        "{:?}",
        g.spacing_xyz
    );
    let hu = &phantom.volume.hu;
    let [n, rows, cols] = phantom.volume.shape();
    // Air in the corners, lung and soft tissue inside.
    assert!(hu[[n / 2, 0, 0]] < -900.0);
    assert!(hu.iter().any(|&v| v < -700.0 && v > -950.0));
    assert!(
        hu[[n / 2, rows / 2, cols / 2]] > -300.0,
        "mediastinum at the centre"
    );
    check_nodules(&phantom);
}

/// `cargo test --release --test phantom -- --ignored --nocapture timing`
#[test]
#[ignore = "timing report, run by hand"]
fn timing_512x512x300() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let phantom = generate(&PhantomSpec {
        seed: 9,
        slices: 300,
        ..PhantomSpec::default()
    });
    let generated = started.elapsed();
    write_series(&phantom, dir.path()).unwrap();
    println!(
        "512×512×300: generate {:.2} s, write {:.2} s, total {:.2} s",
        generated.as_secs_f64(),
        (started.elapsed() - generated).as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// Many seeds and sizes, down to matrices too small for every nodule: whatever is placed keeps
/// the promises.
#[test]
fn many_seeds_and_sizes_keep_the_nodule_promises() {
    let mut placed = 0;
    for seed in 0..60u64 {
        let rows = [32, 48, 64, 96, 128][seed as usize % 5];
        let slices = [4, 8, 12, 20][seed as usize % 4];
        let phantom = generate(&small(seed, rows, slices, 4));
        assert_eq!(phantom.volume.shape(), [slices, rows, rows]);
        check_nodules(&phantom);
        placed += phantom.nodules.len();
    }
    assert!(placed > 60, "only {placed} nodules in 60 small phantoms");
}
