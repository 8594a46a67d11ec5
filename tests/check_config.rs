//! `noduled check-config`: the documented example passes; a bad file fails listing every problem.

use std::process::Command;

fn check(path: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_noduled"))
        .arg("check-config")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn example_config_is_valid() {
    let (ok, stdout, stderr) =
        check(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/noduled.toml"));
    assert!(ok, "{stderr}");
    assert!(stdout.ends_with(": ok\n"), "{stdout}");
}

#[test]
fn bad_config_lists_every_problem_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[series]\nmin_slices = 2\nfoo = 1\n[log]\nformat = 'x'\n[pipeline]\nthreads = 'all'\n",
    )
    .unwrap();
    let (ok, _, stderr) = check(&path);
    assert!(!ok);
    for needle in [
        "series.foo",
        "log.format",
        "series.min_slices",
        "pipeline.threads",
        "4 problem(s)",
    ] {
        assert!(stderr.contains(needle), "{needle} missing from {stderr}");
    }
    assert!(!stderr.contains("panicked"));
    let (ok, _, stderr) = check(&dir.path().join("absent.toml"));
    assert!(!ok && stderr.lines().count() == 1, "{stderr}");
}

#[test]
fn config_file_rules_apply_to_info_and_bad_config_stops_early() {
    use noduled::phantom::{generate, write_series, PhantomSpec};
    let dir = tempfile::tempdir().unwrap();
    let series = dir.path().join("series");
    let phantom = generate(&PhantomSpec {
        seed: 2,
        slices: 10,
        rows: 64,
        columns: 64,
        nodules: 1,
        ..PhantomSpec::default()
    });
    write_series(&phantom, &series).unwrap();
    let config = dir.path().join("strict.toml");
    std::fs::write(&config, "[series]\nmin_slices = 12\n").unwrap();
    let run = |extra: &[&std::ffi::OsStr]| {
        Command::new(env!("CARGO_BIN_EXE_noduled"))
            .args(extra)
            .arg("info")
            .arg(&series)
            .output()
            .unwrap()
    };
    assert!(
        run(&[]).status.success(),
        "10 slices pass the default rules"
    );
    let strict = run(&["--config".as_ref(), config.as_os_str()]);
    assert!(!strict.status.success());
    assert!(String::from_utf8_lossy(&strict.stderr).contains("at least 12"));
    std::fs::write(&config, "[series]\nmin_slices = 'x'\n").unwrap();
    let bad = run(&["--config".as_ref(), config.as_os_str()]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success()
            && stderr.lines().count() == 1
            && stderr.contains("series.min_slices"),
        "{stderr}"
    );
}
