//! The transfer syntaxes scanners send: a phantom series re-encoded by DCMTK (implicit VR little
//! endian, JPEG lossless, RLE lossless) must load to exactly the same HU volume as the original.

use noduled::dicom::load_series;
use noduled::phantom::{generate, write_series, PhantomSpec};
use std::path::Path;
use std::process::Command;

fn have(tool: &str) -> bool {
    let found = Command::new(tool).arg("--version").output().is_ok();
    if !found {
        eprintln!("skipping: {tool} (DCMTK) is not installed");
    }
    found
}

/// Converts every file of `from` into `to` with a DCMTK tool and its options.
fn convert(from: &Path, to: &Path, tool: &str, options: &[&str]) {
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let output = Command::new(tool)
            .args(options)
            .arg(&path)
            .arg(to.join(path.file_name().unwrap()))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{tool} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

fn transfer_syntax_of(dir: &Path) -> String {
    let file = std::fs::read_dir(dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    dicom_object::open_file(file)
        .unwrap()
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string()
}

#[test]
fn compressed_and_implicit_series_load_identically() {
    let phantom = generate(&PhantomSpec {
        seed: 5,
        slices: 8,
        rows: 96,
        columns: 96,
        nodules: 1,
        ..PhantomSpec::default()
    });
    let original = tempfile::tempdir().unwrap();
    write_series(&phantom, original.path()).unwrap();
    let reference = load_series(original.path(), None).unwrap();
    for (tool, options, syntax) in [
        ("dcmconv", &["+ti"][..], "1.2.840.10008.1.2"),
        ("dcmcjpeg", &["+e1"][..], "1.2.840.10008.1.2.4.70"),
        ("dcmcrle", &[][..], "1.2.840.10008.1.2.5"),
    ] {
        if !have(tool) {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        convert(original.path(), dir.path(), tool, options);
        assert_eq!(
            transfer_syntax_of(dir.path()),
            syntax,
            "{tool} wrote another syntax"
        );
        let volume = load_series(dir.path(), None).unwrap_or_else(|e| panic!("{syntax}: {e}"));
        assert_eq!(volume.geometry, reference.geometry, "{syntax}");
        assert!(
            volume.hu == reference.hu,
            "{syntax}: voxels differ from the original"
        );
    }
}
