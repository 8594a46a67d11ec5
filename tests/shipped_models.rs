//! The models shipped in `models/` against issue 6's bar, on a phantom set none of them saw:
//! `noduled phantom --seed 424242 --count 4` through `noduled eval` with the default model files.
//! Nodule-classifier AUC ≥ 0.95, FROC CPM ≥ 0.80, and the malignancy model's AUC at least the
//! annotated-diameter baseline's on the same nodules. Retrained models that fall below fail here,
//! not in a reader's hands. Needs nothing from `../shared`.

mod common;

use common::noduled;
use std::path::Path;

#[test]
fn shipped_models_meet_the_bar_on_fresh_phantoms() {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let malignancy = models.join("malignancy.onnx");
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("fresh424242");
    let (code, _, stderr) = noduled(&[
        "phantom",
        "--out",
        data.to_str().unwrap(),
        "--seed",
        "424242",
        "--count",
        "4",
        "--slices",
        "64",
        "--rows",
        "256",
        "--columns",
        "256",
    ]);
    assert_eq!(code, 0, "phantom: {stderr}");
    let (code, stdout, stderr) = noduled(&[
        "eval",
        data.to_str().unwrap(),
        "--seg-model",
        models.join("segmentation.onnx").to_str().unwrap(),
        "--nodule-model",
        models.join("nodule.onnx").to_str().unwrap(),
        "--malignancy-model",
        malignancy.to_str().unwrap(),
        "--threads",
        "2",
        "--no-cache",
        "--json",
        "-",
    ]);
    assert_eq!(code, 0, "eval: {stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("eval JSON");
    let number = |key: &str| {
        report[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} in {report:#}"))
    };
    let auc_nodule = number("auc_nodule");
    let cpm = report["froc"]["cpm"].as_f64().expect("CPM");
    let auc_malignancy = number("auc_malignancy");
    let baseline = number("auc_diameter_baseline");
    println!(
        "seed 424242: nodule AUC {auc_nodule:.3}, CPM {cpm:.3}, malignancy {auc_malignancy:.3} \
         against the diameter baseline's {baseline:.3}"
    );
    assert_eq!(report["leaky"], false, "{report:#}");
    assert_eq!(report["scans"], 4);
    assert!(auc_nodule >= 0.95, "nodule AUC {auc_nodule}");
    assert!(cpm >= 0.80, "CPM {cpm}");
    assert!(
        auc_malignancy >= baseline,
        "malignancy AUC {auc_malignancy} below the diameter baseline's {baseline}"
    );
}
