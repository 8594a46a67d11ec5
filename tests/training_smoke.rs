//! CI smoke test of `training/` (issue 6): a tiny phantom set, one short epoch of every trainer,
//! ONNX export, and the exported files loaded by noduled (`noduled models --json`, then a whole
//! analysis). Also runs training/'s own pytest suite (the manifest-membership tests).
//!
//! Needs the training venv: `.ci/run` sets `NODULED_TRAINING_PYTHON` (built by
//! `.ci/setup-training.sh`); without it these tests skip with a printed reason. By hand:
//! `NODULED_TRAINING_PYTHON=$(bash .ci/setup-training.sh) cargo test --test training_smoke`.

use noduled::phantom::{generate, write_dataset, PhantomSpec};
use noduled::pipeline::{classify, Pipeline, PipelineOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

fn python() -> Option<PathBuf> {
    match std::env::var_os("NODULED_TRAINING_PYTHON") {
        Some(p) if Path::new(&p).is_file() => Some(PathBuf::from(p)),
        _ => {
            eprintln!(
                "skipping: NODULED_TRAINING_PYTHON is not set to the training venv's python \
                 (see .ci/setup-training.sh)"
            );
            None
        }
    }
}

fn training_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("training")
}

/// Runs `python training/<script> args...`, failing the test with its output when it fails.
fn py(python: &Path, script: &str, args: &[&str]) {
    let out = Command::new(python)
        .arg(training_dir().join(script))
        .args(args)
        .env("NODULED_TRAINING_THREADS", "2")
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{script} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn spec() -> PhantomSpec {
    PhantomSpec {
        slices: 24,
        rows: 96,
        columns: 96,
        nodules: 3,
        ..PhantomSpec::default()
    }
}

fn manifest_split(path: &Path, split: &str) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("manifest readable");
    let mut uids: Vec<String> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(','))
        .filter(|(_, s)| *s == split)
        .map(|(u, _)| u.to_string())
        .collect();
    uids.sort();
    uids
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect();
    out.sort();
    out
}

#[test]
fn tiny_training_run_exports_models_noduled_loads() {
    let Some(python) = python() else { return };
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("phantoms");
    write_dataset(&data, 7, 4, &spec()).expect("phantoms written");
    let manifest = tmp.path().join("manifest.csv");
    let run = tmp.path().join("run");
    let models = tmp.path().join("models");
    let (d, m, r) = (
        data.to_str().unwrap(),
        manifest.to_str().unwrap(),
        run.to_str().unwrap(),
    );
    let tiny = ["--epochs", "1", "--samples", "16", "--batch", "8"];
    py(&python, "split.py", &[d, "--out", m, "--val", "0.25"]);
    py(
        &python,
        "train_seg.py",
        &[&[d, "--manifest", m, "--out", r][..], &tiny[..]].concat(),
    );
    let seg_pt = run.join("segmentation.pt");
    py(
        &python,
        "make_candidates.py",
        &[
            d,
            "--manifest",
            m,
            "--seg",
            seg_pt.to_str().unwrap(),
            "--random",
            "10",
        ],
    );
    py(
        &python,
        "train_cls.py",
        &[&[d, "--manifest", m, "--out", r][..], &tiny[..]].concat(),
    );
    let nodule_pt = run.join("nodule.pt");
    py(
        &python,
        "finetune_malignancy.py",
        &[
            &[
                d,
                "--manifest",
                m,
                "--nodule",
                nodule_pt.to_str().unwrap(),
                "--out",
                r,
                "--crop-mm",
                "1.5",
                "0.75",
                "0.75",
                "--rotate",
                // the shipped recipe's frozen stem: blocks 3-4 and the head train on cached views
                "--train-blocks",
                "2",
                "--views",
                "2",
            ][..],
            &tiny[..],
        ]
        .concat(),
    );
    py(
        &python,
        "export.py",
        &[
            r,
            "--out",
            models.to_str().unwrap(),
            "--dataset",
            "smoke test phantoms",
            "--synthetic",
        ],
    );

    // noduled reads the provenance back.
    let (seg, nodule, malignancy) = (
        models.join("segmentation.onnx"),
        models.join("nodule.onnx"),
        models.join("malignancy.onnx"),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_noduled"))
        .args(["models", "--json", "--seg-model"])
        .arg(&seg)
        .arg("--nodule-model")
        .arg(&nodule)
        .arg("--malignancy-model")
        .arg(&malignancy)
        .output()
        .expect("noduled runs");
    assert!(
        out.status.success(),
        "noduled models failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let list = list.as_array().expect("a list");
    let roles: Vec<&str> = list.iter().map(|e| e["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["segmentation", "nodule", "malignancy"]);
    // The malignancy model was fine-tuned on millimetre crops and says so; the others on voxels.
    let crop_mm = |e: &serde_json::Value| e["declared_input"]["crop_mm"].clone();
    assert_eq!(crop_mm(&list[2]), serde_json::json!([1.5, 0.75, 0.75]));
    assert_eq!(crop_mm(&list[1]), serde_json::Value::Null);
    let train = manifest_split(&manifest, "train");
    let val = manifest_split(&manifest, "val");
    assert_eq!((train.len(), val.len()), (3, 1));
    for e in list {
        assert_eq!(strings(&e["train_series"]), train, "{}", e["role"]);
        assert_eq!(strings(&e["val_series"]), val, "{}", e["role"]);
        assert_eq!(e["source"]["synthetic"], serde_json::Value::Bool(true));
        for uid in strings(&e["metrics"]["metric_series"]) {
            assert!(
                !train.contains(&uid),
                "{}: train series {uid} in val metrics",
                e["role"]
            );
        }
    }

    // ...and runs them on a phantom none of them saw.
    let pipeline = Pipeline::load(
        &seg,
        &nodule,
        Some(malignancy.as_path()),
        PipelineOptions {
            threads: 2,
            ..PipelineOptions::default()
        },
    )
    .expect("exported models load as drop-in replacements");
    let fresh = generate(&PhantomSpec { seed: 99, ..spec() });
    let analysis = pipeline
        .analyze(&fresh.volume, &|_, _, _| {})
        .expect("analysis runs");
    assert_eq!(analysis.shape, [24, 96, 96]);
    let names: Vec<&str> = analysis.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        ["segmentation.onnx", "nodule.onnx", "malignancy.onnx"]
    );
    for c in &analysis.candidates {
        assert!((0.0..=1.0).contains(&c.p_nodule));
    }
}

#[test]
fn resampled_crops_are_the_ones_training_makes() {
    // A model trained with `finetune_malignancy.py --crop-mm` must see in noduled the crop it saw
    // in training: training/common.py's crop_resampled against pipeline::classify's, on one
    // phantom series read by each side's own DICOM loader.
    let Some(python) = python() else { return };
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("phantoms");
    write_dataset(&data, 11, 1, &spec()).expect("phantom written");
    let series = std::fs::read_dir(&data)
        .expect("data set listed")
        .map(|e| e.expect("entry").path())
        .find(|p| p.is_dir())
        .expect("one series folder");
    let uid = series.file_name().unwrap().to_str().unwrap().to_string();
    let volume = noduled::dicom::load_series(&series, None).expect("series loads");
    let grid = [1.5, 0.75, 0.75];
    // Inside, off-grid, and hanging over two borders.
    let centres = [[12.0, 48.0, 48.0], [9.37, 40.61, 55.18], [1.2, 90.5, 3.3]];
    let out = tmp.path().join("crops.f32");
    let script = format!(
        "import sys, numpy as np; sys.path.insert(0, {training:?}); import common, datasets\n\
         ct = common.CtCache(datasets.open_dataset({data:?})).get({uid:?})\n\
         crops = [common.crop_resampled(ct.hu, c, ct.spacing_xyz[::-1], {grid:?}) for c in {centres:?}]\n\
         np.stack(crops).astype('<f4').tofile({out:?})",
        training = training_dir().to_str().unwrap(),
        data = data.to_str().unwrap(),
        out = out.to_str().unwrap(),
    );
    let run = Command::new(&python)
        .args(["-c", &script])
        .output()
        .expect("python runs");
    assert!(
        run.status.success(),
        "python crop failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let bytes = std::fs::read(&out).expect("crops written");
    let theirs: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let per_crop = classify::CROP.iter().product::<usize>();
    assert_eq!(theirs.len(), centres.len() * per_crop);
    for (k, centre) in centres.iter().enumerate() {
        let ours = classify::crop_resampled(
            volume.hu.view(),
            *centre,
            volume.geometry.spacing_irc(),
            grid,
        );
        let worst = ours
            .iter()
            .zip(&theirs[k * per_crop..(k + 1) * per_crop])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 0.01, "{centre:?}: crops differ by up to {worst} HU");
        assert!(
            ours.iter().any(|&v| v > -900.0),
            "{centre:?}: crop holds tissue"
        );
    }
}

#[test]
fn training_pytest_suite_passes() {
    let Some(python) = python() else { return };
    let out = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .current_dir(training_dir())
        .output()
        .expect("pytest runs");
    let text = String::from_utf8_lossy(&out.stdout);
    // pytest's exit 5 means "no tests collected": not a failure of the code under test.
    if out.status.code() == Some(5) {
        eprintln!("skipping: pytest collected no tests in training/");
        return;
    }
    assert!(
        out.status.success(),
        "training/ pytest failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(" passed"), "pytest ran no test:\n{text}");
}

#[test]
fn models_refuses_a_model_in_the_wrong_slot() {
    // No venv needed: the book's exports (in ../shared) swapped between slots.
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models/book");
    if !shared.join("seg_unet.onnx").is_file() {
        eprintln!("skipping: {} is absent", shared.display());
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_noduled"))
        .args(["models", "--malignancy-model", "diameter", "--seg-model"])
        .arg(shared.join("nodule_cls.onnx"))
        .arg("--nodule-model")
        .arg(shared.join("nodule_cls.onnx"))
        .output()
        .expect("noduled runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("segmentation") && err.contains("[N, 7, H, W]"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
}
