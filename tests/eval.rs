//! `noduled eval` end to end: the must-show on the shared LIDC cases with the book models,
//! and the leak guard refusing by model metadata and by split (on a small phantom, and on LIDC
//! before any analysis runs). Tests needing `../shared` skip with a printed reason when it is absent.

mod common;

use common::noduled;
use std::path::{Path, PathBuf};

fn book_models(shared: &Path) -> (PathBuf, PathBuf) {
    let book = shared.join("models/book");
    (book.join("seg_unet.onnx"), book.join("nodule_cls.onnx"))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// A copy of `model` whose `noduled.train_series` lists `uids`: a `metadata_props` entry
/// (ModelProto field 14) appended to the protobuf. Repeated fields concatenate, and a later entry
/// of the same key wins when noduled reads the metadata.
fn with_train_series(model: &Path, uids: &[&str], out: &Path) {
    fn varint(mut n: usize, buf: &mut Vec<u8>) {
        while n >= 0x80 {
            buf.push((n as u8) | 0x80);
            n >>= 7;
        }
        buf.push(n as u8);
    }
    fn field(tag: u8, bytes: &[u8], buf: &mut Vec<u8>) {
        buf.push(tag);
        varint(bytes.len(), buf);
        buf.extend_from_slice(bytes);
    }
    let value = serde_json::to_string(uids).expect("JSON");
    let mut entry = Vec::new();
    field(0x0a, b"noduled.train_series", &mut entry); // key = 1
    field(0x12, value.as_bytes(), &mut entry); // value = 2
    let mut bytes = std::fs::read(model).expect("model readable");
    field(0x72, &entry, &mut bytes); // metadata_props = 14
    std::fs::write(out, bytes).expect("model written");
}

#[test]
fn book_models_declare_their_role_and_unknown_training_series() {
    let Some(shared) = common::shared() else {
        return;
    };
    let (seg, cls) = book_models(&shared);
    let engine = noduled::engine::default_engine();
    for (path, role) in [
        (seg, noduled::engine::ModelRole::Segmentation),
        (cls, noduled::engine::ModelRole::Nodule),
    ] {
        let model = engine.load(&path).expect("book model loads");
        let p = model.info().provenance().expect("provenance parses");
        assert_eq!(p.role, Some(role));
        assert_eq!(
            p.train_series.contains("1.2.3"),
            None,
            "the book's lists are unknown"
        );
        assert!(!p.val_series.is_known());
        let source = p.source.expect("noduled.source");
        assert_eq!(source["dataset"], "LUNA16");
        assert!(p.split_note.is_some_and(|n| n.contains("LUNA16")));
    }
}

#[test]
fn lidc_with_book_models_finds_all_four_nodules_and_reports_froc() {
    // The must-show. The book models were trained on LUNA16, which contains these two CTs:
    // a smoke test of the measurement, not a clean validation (the report notes that the leak
    // guard cannot check the book models).
    let Some(shared) = common::shared() else {
        return;
    };
    let (seg, cls) = book_models(&shared);
    let lidc = shared.join("data/lidc");
    let annotations = lidc.join("annotations.csv");
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("eval.json");
    let plots = dir.path().join("plots");
    let cache = dir.path().join("cache");
    let args = [
        "eval",
        s(&lidc),
        "--annotations",
        s(&annotations),
        "--seg-model",
        s(&seg),
        "--nodule-model",
        s(&cls),
        "--malignancy-model",
        "diameter",
        "--json",
        s(&json),
        "--plots",
        s(&plots),
        "--cache",
        s(&cache),
    ];
    let (code, stdout, stderr) = noduled(&args);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    println!("{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written"))
            .expect("JSON parses");

    assert_eq!(report["scans"], 2);
    assert_eq!(report["nodules"], 4);
    assert_eq!(report["leaky"], false);
    let confusion: Vec<Vec<u64>> =
        serde_json::from_value(report["confusion"].clone()).expect("3×4 integers");
    assert_eq!(confusion.len(), 3);
    assert!(confusion.iter().all(|row| row.len() == 4));
    assert_eq!(confusion[0][0], 0, "a non-nodule cannot be a complete miss");
    // All four LUNA16 nodules (all malignant) detected: none missed or filtered out.
    assert_eq!(confusion[1].iter().sum::<u64>(), 0, "{confusion:?}");
    assert_eq!(confusion[2][0] + confusion[2][1], 0, "{confusion:?}");
    assert_eq!(confusion[2][2] + confusion[2][3], 4, "{confusion:?}");

    let froc = &report["froc"];
    let rates: Vec<f64> = serde_json::from_value(froc["fp_rates"].clone()).expect("fp_rates");
    assert_eq!(rates, [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]);
    let sens: Vec<f64> = serde_json::from_value(froc["sensitivity"].clone()).expect("sens");
    assert_eq!(sens.len(), 7);
    assert!(sens.windows(2).all(|w| w[0] <= w[1]), "{sens:?}");
    let cpm = froc["cpm"].as_f64().expect("cpm");
    assert!((cpm - sens.iter().sum::<f64>() / 7.0).abs() < 1e-9);
    assert!(cpm > 0.0 && cpm <= 1.0, "{cpm}");

    // False positives per scan = findings that match no nodule, per scan; agrees with the matrix
    // and the per-series figures.
    let fp = report["fp_per_scan"].as_f64().expect("fp_per_scan");
    assert!((fp - (confusion[0][2] + confusion[0][3]) as f64 / 2.0).abs() < 1e-9);
    let series = report["series"].as_array().expect("series");
    assert_eq!(series.len(), 2);
    let per_series: u64 = series
        .iter()
        .map(|s| s["false_positives"].as_u64().expect("false_positives"))
        .sum();
    assert!((fp - per_series as f64 / 2.0).abs() < 1e-9);

    let auc = report["auc_nodule"]
        .as_f64()
        .expect("nodule AUC over candidates");
    assert!((0.0..=1.0).contains(&auc));
    // All four nodules are malignant: no malignancy ROC, and the report says why.
    assert!(report["auc_malignancy"].is_null());
    assert!(report["auc_diameter_baseline"].is_null());
    let notes = report["notes"].to_string();
    assert!(notes.contains("one class"), "{notes}");
    assert!(notes.contains("cannot check"), "{notes}");
    let models = report["models"].as_array().expect("models");
    assert_eq!(models.len(), 3);
    assert_eq!(models[0]["sha256"].as_str().map(str::len), Some(64));
    assert_eq!(models[2]["name"], "diameter");

    // Printed: the matrix, FP/scan and FROC/CPM, and the plots.
    for needle in [
        "Confusion matrix",
        "predicted malignant",
        "False positives per scan",
        "CPM",
        "froc.png",
        "roc.svg",
    ] {
        assert!(stdout.contains(needle), "{needle} missing from:\n{stdout}");
    }
    for name in ["froc.svg", "froc.png", "roc.svg", "roc.png"] {
        let bytes = std::fs::read(plots.join(name)).expect("plot written");
        assert!(bytes.len() > 1000, "{name} is {} bytes", bytes.len());
        if name.ends_with(".png") {
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{name}");
        }
    }
    let svg = std::fs::read_to_string(plots.join("froc.svg")).expect("svg");
    assert!(svg.contains("CPM = ") && svg.contains("False positives per scan"));
    let svg = std::fs::read_to_string(plots.join("roc.svg")).expect("svg");
    assert!(svg.contains("AUC"));

    // Re-run: the segmentation comes from the cache and every figure is the same.
    let (code, stdout2, stderr) = noduled(&args);
    assert_eq!(code, 0, "stderr: {stderr}");
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON")).expect("parses");
    for s in again["series"].as_array().expect("series") {
        assert_eq!(s["segmentation_cached"], true);
    }
    for key in ["confusion", "froc", "fp_per_scan", "auc_nodule"] {
        assert_eq!(again[key], report[key], "{key}");
    }
    assert!(stdout2.contains("(segmentation cached)"));
}

#[test]
fn leak_guard_refuses_lidc_series_listed_in_model_metadata() {
    // Refused before any analysis runs, so this is fast.
    let Some(shared) = common::shared() else {
        return;
    };
    let (seg, cls) = book_models(&shared);
    let lidc = shared.join("data/lidc");
    let uid = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192";
    let dir = tempfile::tempdir().expect("tempdir");
    let leaky = dir.path().join("leaky_nodule.onnx");
    with_train_series(&cls, &["1.2.3", uid], &leaky);
    let json = dir.path().join("eval.json");
    let (code, stdout, stderr) = noduled(&[
        "eval",
        s(&lidc),
        "--seg-model",
        s(&seg),
        "--nodule-model",
        s(&leaky),
        "--malignancy-model",
        "diameter",
        "--json",
        s(&json),
        "--no-cache",
    ]);
    assert_eq!(code, 3, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stderr.contains("leak"), "{stderr}");
    assert!(stderr.contains("leaky_nodule.onnx"), "{stderr}");
    assert!(stderr.contains(uid), "{stderr}");
    assert!(!json.exists(), "no report for a refused evaluation");
}

/// A small phantom dataset (one 40×128×128 series) and its series UID.
fn phantom_dataset(dir: &Path) -> (PathBuf, String) {
    let out = dir.join("phantoms");
    let spec = noduled::phantom::PhantomSpec {
        slices: 40,
        rows: 128,
        columns: 128,
        nodules: 3,
        ..noduled::phantom::PhantomSpec::default()
    };
    let summary = noduled::phantom::write_dataset(&out, 7, 1, &spec).expect("phantom written");
    (out, summary.series[0].series_uid.clone())
}

#[test]
fn leak_guard_refuses_a_series_the_split_marks_train_and_allow_leak_stamps_leaky() {
    let Some(shared) = common::shared() else {
        return;
    };
    let (seg, cls) = book_models(&shared);
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, uid) = phantom_dataset(dir.path());
    // The book's leak: the same CT in training and in validation.
    let split = dir.path().join("split.csv");
    std::fs::write(
        &split,
        format!("series_uid,split\n{uid},val\n{uid},train\n"),
    )
    .expect("split");
    let json = dir.path().join("eval.json");
    let plots = dir.path().join("plots");
    let mut args = vec![
        "eval",
        s(&data),
        "--split",
        s(&split),
        "--seg-model",
        s(&seg),
        "--nodule-model",
        s(&cls),
        "--malignancy-model",
        "diameter",
        "--json",
        s(&json),
        "--plots",
        s(&plots),
        "--no-cache",
    ];
    let (code, _, stderr) = noduled(&args);
    assert_eq!(code, 3, "stderr: {stderr}");
    assert!(stderr.contains("leak"), "{stderr}");
    assert!(
        stderr.contains(&uid) && stderr.contains("split.csv"),
        "{stderr}"
    );
    assert!(!json.exists());

    // --allow-leak runs and stamps every output.
    args.push("--allow-leak");
    let (code, stdout, stderr) = noduled(&args);
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(stdout.starts_with("LEAKY"), "{stdout}");
    assert!(stdout
        .trim_end()
        .lines()
        .last()
        .unwrap_or("")
        .starts_with("LEAKY"));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON")).expect("parses");
    assert_eq!(report["leaky"], true);
    assert!(report["stamp"]
        .as_str()
        .is_some_and(|s| s.starts_with("LEAKY") && s.contains(&uid)));
    assert_eq!(report["scans"], 1);
    let svg = std::fs::read_to_string(plots.join("froc.svg")).expect("FROC plot");
    assert!(svg.contains("LEAKY"));

    // A clean split evaluates the same series without complaint, and a split whose only series is
    // train evaluates nothing.
    std::fs::write(&split, format!("series_uid,split\n{uid},test\n")).expect("split");
    args.pop();
    let (code, stdout, stderr) = noduled(&args);
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(!stdout.contains("LEAKY"), "{stdout}");
    std::fs::write(&split, format!("series_uid,split\n{uid},train\n")).expect("split");
    let (code, _, stderr) = noduled(&args);
    assert_ne!(code, 0);
    assert!(stderr.contains("nothing to evaluate"), "{stderr}");
}

#[test]
fn leak_guard_refuses_a_phantom_series_listed_in_model_metadata() {
    let Some(shared) = common::shared() else {
        return;
    };
    let (seg, _) = book_models(&shared);
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, uid) = phantom_dataset(dir.path());
    let leaky_seg = dir.path().join("seg_trained_on_it.onnx");
    with_train_series(&seg, &[uid.as_str()], &leaky_seg);
    let (_, cls) = book_models(&shared);
    let (code, _, stderr) = noduled(&[
        "eval",
        s(&data),
        "--seg-model",
        s(&leaky_seg),
        "--nodule-model",
        s(&cls),
        "--no-cache",
    ]);
    assert_eq!(code, 3, "stderr: {stderr}");
    assert!(
        stderr.contains("leak") && stderr.contains("seg_trained_on_it.onnx"),
        "{stderr}"
    );
    assert!(stderr.contains(&uid), "{stderr}");
}
