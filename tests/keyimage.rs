//! Key images and the measured SR on a phantom: a PNG per finding with the nodule outlined, the
//! same picture as DICOM Secondary Capture in the CT's study (dciodvfy: no `Error` line; dcmdump
//! reads it), and the TID 1500 SR with the measurements and Lung-RADS categories, also dciodvfy
//! clean and read back. The CLI `noduled report` renders that SR.

use dicom_dictionary_std::tags;
use noduled::dicom::keyimage::{self, KeyImageOptions, SECONDARY_CAPTURE_IMAGE_STORAGE};
use noduled::dicom::sr::{self, SrOptions};
use noduled::engine::ModelRole;
use noduled::phantom::{self, Phantom, PhantomSpec};
use noduled::pipeline::{lungrads, reduce, Analysis, Finding, ModelIdentity, StageSeconds};
use noduled::render;
use std::path::Path;
use std::process::Command;

fn small_phantom() -> Phantom {
    phantom::generate(&PhantomSpec {
        seed: 11,
        slices: 60,
        rows: 128,
        columns: 128,
        nodules: 3,
        ..PhantomSpec::default()
    })
}

/// Findings at the phantom's nodules, measured on regions grown from their centre voxels.
fn measured_analysis(p: &Phantom) -> Analysis {
    let geometry = &p.volume.geometry;
    let findings: Vec<Finding> = p
        .nodules
        .iter()
        .enumerate()
        .filter_map(|(k, n)| {
            let f = Finding {
                candidate: k,
                center_irc: n.center_irc,
                center_xyz: n.center_xyz,
                voxels: 10,
                diameter_mm: n.diameter_mm,
                p_nodule: 0.9,
                p_malignant: if n.malignant { 0.8 } else { 0.2 },
                measurements: None,
                lung_rads: None,
                merged_candidates: vec![],
                region: vec![],
            };
            let seed = [std::array::from_fn(|a| n.center_irc[a].round() as usize)];
            let options = noduled::pipeline::measure::MeasureOptions {
                margin_mm: n.diameter_mm / 2.0 + 1.0,
                ..Default::default()
            };
            reduce::measure_finding(p.volume.hu.view(), geometry, &seed, f, &options)
                .map(reduce::MeasuredFinding::into_finding)
        })
        .collect();
    let malignant_count = findings.iter().filter(|f| f.is_malignant()).count();
    Analysis {
        series_uid: p.volume.series.series_uid.clone(),
        shape: p.volume.shape(),
        spacing_xyz: geometry.spacing_xyz,
        origin_xyz: geometry.origin_xyz,
        direction: geometry.direction_flat(),
        warnings: vec![],
        candidates: vec![],
        lung_rads: Some(lungrads::exam_category(
            findings.iter().filter_map(|f| f.lung_rads),
        )),
        findings,
        suppressed: vec![],
        lung_volume_ml: None,
        malignant_present: malignant_count > 0,
        malignant_count,
        models: vec![ModelIdentity {
            name: "diameter".into(),
            sha256: None,
            role: ModelRole::Malignancy,
        }],
        engine: "test".into(),
        threads: 1,
        exact: false,
        seconds: StageSeconds::default(),
    }
}

/// Output of a tool in /usr/bin, or `None` (with a printed reason) when it is not installed.
fn tool(name: &str, args: &[&Path]) -> Option<(bool, String)> {
    let path = Path::new("/usr/bin").join(name);
    if !path.is_file() {
        eprintln!("skipping the {name} check: {} is absent", path.display());
        return None;
    }
    let out = Command::new(&path).args(args).output().expect("tool runs");
    Some((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    ))
}

fn dciodvfy_clean(path: &Path, label: &str) {
    if let Some((_, text)) = tool("dciodvfy", &[path]) {
        let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("Error")).collect();
        assert!(errors.is_empty(), "{label}: dciodvfy errors:\n{text}");
        eprintln!("{label}: dciodvfy output:\n{text}");
    }
}

#[test]
fn key_images_png_and_secondary_capture_are_valid() {
    let p = small_phantom();
    let analysis = measured_analysis(&p);
    assert!(!analysis.findings.is_empty());
    let dir = tempfile::tempdir().expect("temp dir");
    let series_uid = noduled::uid::generate();
    for (k, f) in analysis.findings.iter().enumerate() {
        let number = k + 1;
        let (slice, image) =
            render::finding_key_image(p.volume.hu.view(), p.volume.geometry.spacing_xyz, f, number)
                .expect("rendered");
        assert_eq!(slice, f.center_irc[0].round() as usize);
        let outlined = (0..image.height)
            .flat_map(|r| (0..image.width).map(move |c| (r, c)))
            .filter(|&(r, c)| image.pixel(r, c) == Some(render::OUTLINE))
            .count();
        assert!(outlined > 0, "finding {number} has an outline");
        // PNG: decodes back to the same pixels.
        let png_path = dir.path().join(format!("nodule-{number}.png"));
        render::write_png(&image, &png_path).expect("png written");
        let decoder = png::Decoder::new(std::io::BufReader::new(
            std::fs::File::open(&png_path).expect("png opens"),
        ));
        let mut reader = decoder.read_info().expect("png header");
        let mut buf = vec![0; reader.output_buffer_size().expect("size")];
        let info = reader.next_frame(&mut buf).expect("png frame");
        assert_eq!(
            (info.width as usize, info.height as usize),
            (image.width, image.height)
        );
        assert_eq!(&buf[..info.buffer_size()], &image.rgb[..]);

        // Secondary Capture in the CT's study.
        let description = render::describe_finding(f, number);
        let object = keyimage::build_key_image(
            &image,
            &p.volume.series,
            slice,
            &description,
            &KeyImageOptions {
                clock: Some(("20240131".into(), "123456".into())),
                ..KeyImageOptions::new(series_uid.clone(), number as u32)
            },
        )
        .expect("SC built");
        let dcm_path = dir.path().join(format!("nodule-{number}.dcm"));
        sr::save(&object, &dcm_path).expect("SC written");
        let back = dicom_object::open_file(&dcm_path).expect("SC reads back");
        let text = |tag| {
            back.element(tag)
                .expect("present")
                .to_str()
                .expect("text")
                .trim_end_matches(['\0', ' '])
                .to_string()
        };
        assert_eq!(text(tags::SOP_CLASS_UID), SECONDARY_CAPTURE_IMAGE_STORAGE);
        assert_eq!(text(tags::STUDY_INSTANCE_UID), p.volume.series.study_uid);
        assert_eq!(text(tags::SERIES_INSTANCE_UID), series_uid);
        assert_eq!(text(tags::PATIENT_ID), p.identity.patient_id);
        let pixels = back
            .element(tags::PIXEL_DATA)
            .expect("pixels")
            .to_bytes()
            .expect("bytes");
        assert_eq!(&pixels[..image.rgb.len()], &image.rgb[..]);
        dciodvfy_clean(&dcm_path, &format!("key image {number}"));
        if let Some((ok, text)) = tool("dcmdump", &[&dcm_path]) {
            assert!(
                ok && text.contains("SecondaryCaptureImageStorage"),
                "{text}"
            );
        }
    }
}

#[test]
fn measured_sr_is_valid_and_reads_back_the_measurements() {
    let p = small_phantom();
    let analysis = measured_analysis(&p);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("report.dcm");
    sr::write_sr(
        &path,
        &analysis,
        &p.volume.series,
        &p.volume.geometry,
        &SrOptions {
            clock: Some(("20240131".into(), "123456".into())),
            ..SrOptions::for_device(SrOptions::device_uid_for_host("test-host"))
        },
    )
    .expect("SR written");
    dciodvfy_clean(&path, "measured SR");
    let object = dicom_object::open_file(&path).expect("SR reads back");
    let read = sr::read_findings(&object).expect("findings read back");
    assert_eq!(read.len(), analysis.findings.len());
    for (r, f) in read.iter().zip(&analysis.findings) {
        let m = f.measurements.as_ref().expect("measured");
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-3);
        assert!(close(r.long_axis_mm, m.long_axis_mm), "{r:?}");
        assert!(close(r.short_axis_mm, m.short_axis_mm), "{r:?}");
        assert!(close(r.mean_diameter_mm, m.mean_diameter_mm), "{r:?}");
        assert!(close(r.mean_hu, m.mean_hu), "{r:?}");
        assert!(close(r.max_hu, m.max_hu), "{r:?}");
        assert!((r.volume_mm3 - m.volume_mm3).abs() < 1e-3 * m.volume_mm3.max(1.0));
        assert_eq!(r.nodule_type.as_deref(), Some(m.nodule_type.as_str()));
        assert_eq!(r.lung_rads.as_deref(), f.lung_rads.map(|c| c.as_str()));
    }
    assert_eq!(
        sr::read_lung_rads(&object).as_deref(),
        analysis.lung_rads.map(|c| c.as_str())
    );

    // `noduled report` renders it as text and HTML.
    let html = dir.path().join("report.html");
    let out = Command::new(env!("CARGO_BIN_EXE_noduled"))
        .arg("report")
        .arg(&path)
        .arg("--html")
        .arg(&html)
        .output()
        .expect("noduled runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Lung-RADS"), "{stdout}");
    assert!(stdout.contains("nodule 1"), "{stdout}");
    let page = std::fs::read_to_string(&html).expect("html written");
    assert!(
        page.contains("<table") && page.contains("Lung-RADS"),
        "{page}"
    );
    assert!(
        !page.contains(&p.identity.patient_name) || p.identity.patient_name.is_empty(),
        "no patient name in the HTML by default"
    );
}
