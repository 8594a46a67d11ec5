//! Helpers shared by the integration tests: where `../shared` is, and skipping when it is absent.

#![allow(dead_code)]

use std::path::PathBuf;

/// `../shared` beside the checkout, if present (tests that need it skip with a printed reason).
pub fn shared() -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if path.join("data/lidc").is_dir() {
        Some(path)
    } else {
        eprintln!(
            "skipping: {} is absent (the real LIDC CTs live there)",
            path.display()
        );
        None
    }
}

/// One LUNA16 annotation row.
#[derive(Debug, Clone)]
pub struct Annotation {
    pub series_uid: String,
    pub xyz: [f64; 3],
    pub diameter_mm: f64,
    pub malignant: bool,
}

/// Reads a LUNA16-style `annotations.csv` (`seriesuid,coordX,coordY,coordZ,diameter_mm[,mal_bool]`).
pub fn read_annotations(path: &std::path::Path) -> Vec<Annotation> {
    let text = std::fs::read_to_string(path).expect("annotations readable");
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            Annotation {
                series_uid: f[0].to_string(),
                xyz: [
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                    f[3].parse().unwrap(),
                ],
                diameter_mm: f[4].parse().unwrap(),
                malignant: f
                    .get(5)
                    .is_some_and(|v| v.trim() == "1" || v.trim().eq_ignore_ascii_case("true")),
            }
        })
        .collect()
}

/// The LIDC case folder holding `series_uid`.
pub fn lidc_case(shared: &std::path::Path, case: &str) -> PathBuf {
    shared.join("data/lidc").join(case)
}
pub mod daemon;

/// Runs the noduled binary with `RUST_LOG=warn`; returns (exit code, stdout, stderr).
pub fn noduled(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_noduled"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("noduled runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
