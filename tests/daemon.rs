//! `noduled serve` against real DCMTK peers on loopback: echo, store, find, get, move, a restart
//! after SIGKILL, queued jobs across a shutdown, access control, and the systemd unit.
//! Needs DCMTK and the book models from `../shared` (skips with a reason otherwise).

mod common;

use common::daemon::{describe, free_port, have, phantom_series, Daemon};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ready() -> Option<PathBuf> {
    let shared = common::shared()?;
    for tool in [
        "echoscu", "storescu", "findscu", "getscu", "movescu", "storescp", "dciodvfy", "curl",
    ] {
        if !have(tool) {
            return None;
        }
    }
    Some(shared)
}

fn storescu(daemon: &Daemon, aet: &str, dir: &Path) -> std::process::Output {
    daemon.dcmtk_with(
        "storescu",
        &["-aet", aet, "-aec", "NODULED", "+sd", "+r"],
        &[dir.to_str().unwrap()],
    )
}

/// The SR series of a study, by C-FIND at SERIES level (findscu writes each response to a file).
fn find_sr_series(daemon: &Daemon, study: &str, out: &Path) -> Vec<String> {
    std::fs::create_dir_all(out).unwrap();
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).unwrap();
    let result = daemon.dcmtk(
        "findscu",
        &[
            "-S",
            "-aet",
            "PACS",
            "-aec",
            "NODULED",
            "-k",
            "QueryRetrieveLevel=SERIES",
            "-k",
            &format!("StudyInstanceUID={study}"),
            "-k",
            "Modality=SR",
            "-k",
            "SeriesInstanceUID",
            "-k",
            "NumberOfSeriesRelatedInstances",
            "-X",
            "-od",
            out.to_str().unwrap(),
        ],
    );
    assert!(
        result.status.success(),
        "findscu failed: {}",
        describe(&result)
    );
    let mut uids = Vec::new();
    for entry in std::fs::read_dir(out).unwrap().flatten() {
        let obj = dicom_object::open_file(entry.path()).expect("findscu response readable");
        let uid = obj
            .element(dicom_dictionary_std::tags::SERIES_INSTANCE_UID)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches('\0')
            .to_string();
        uids.push(uid);
    }
    uids
}

fn dciodvfy_errors(path: &Path) -> Vec<String> {
    let out = Command::new("dciodvfy").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .chain(String::from_utf8_lossy(&out.stdout).lines())
        .filter(|l| l.starts_with("Error"))
        .map(str::to_string)
        .collect()
}

fn dicom_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                files.extend(dicom_files(&path));
            } else {
                files.push(path);
            }
        }
    }
    files
}

#[test]
fn store_find_get_move_with_dcmtk() {
    let Some(shared) = ready() else { return };
    let dir = tempfile::tempdir().unwrap();
    let scp_port = free_port();
    let daemon = Daemon::start(
        dir.path(),
        &shared,
        &format!("destinations = [\"STORESCP@127.0.0.1:{scp_port}\"]\nkey_images = true"),
    );

    let echo = daemon.dcmtk("echoscu", &["-aet", "SCANNER", "-aec", "NODULED"]);
    assert!(echo.status.success(), "C-ECHO: {}", describe(&echo));

    let (series, study, files) = phantom_series(&dir.path().join("phantom"), 11, 24, 128);
    let sent = storescu(&daemon, "SCANNER", &dir.path().join("phantom"));
    assert!(sent.status.success(), "storescu: {}", describe(&sent));
    let record = daemon.wait_analysed(&series, Duration::from_secs(300));
    assert_eq!(record["state"], "analysed", "{record}");
    assert_eq!(record["instance_count"], files.len() as u64);
    // One key image (Secondary Capture) per finding, stored like the SR and dciodvfy-clean.
    let findings = record["findings"].as_u64().unwrap_or(0);
    let key_series = noduled::uid::derived(&["key-images", &series]);
    let key_images = dicom_files(&daemon.state.join("spool").join(&key_series));
    assert_eq!(key_images.len() as u64, findings, "{record}");
    for image in &key_images {
        assert_eq!(dciodvfy_errors(image), Vec::<String>::new());
    }

    // C-FIND: the SR appears at SERIES level in the study.
    let sr_series = find_sr_series(&daemon, &study, &dir.path().join("find"));
    assert_eq!(
        sr_series.len(),
        1,
        "one SR series expected, got {sr_series:?}"
    );

    // C-GET: the SR comes back on the association, and dciodvfy finds no error in it.
    let got = dir.path().join("get");
    let get = daemon.get_series(&study, &sr_series[0], &got);
    assert!(get.status.success(), "getscu: {}", describe(&get));
    let retrieved = dicom_files(&got);
    assert_eq!(
        retrieved.len(),
        1,
        "getscu retrieved {retrieved:?}: {}",
        describe(&get)
    );
    assert_eq!(dciodvfy_errors(&retrieved[0]), Vec::<String>::new());
    let sr = dicom_object::open_file(&retrieved[0]).unwrap();
    assert!(
        noduled::dicom::sr::read_answer(&sr).is_some(),
        "the SR states its answer"
    );

    // C-MOVE to a storescp named in the destinations table.
    let moved = dir.path().join("moved");
    std::fs::create_dir_all(&moved).unwrap();
    let mut scp = Command::new("storescp")
        .args([
            "-aet",
            "STORESCP",
            "-od",
            moved.to_str().unwrap(),
            &scp_port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mv = daemon.dcmtk(
        "movescu",
        &[
            "-S",
            "-aet",
            "PACS",
            "-aec",
            "NODULED",
            "-aem",
            "STORESCP",
            "-k",
            "QueryRetrieveLevel=SERIES",
            "-k",
            &format!("StudyInstanceUID={study}"),
            "-k",
            &format!("SeriesInstanceUID={}", sr_series[0]),
        ],
    );
    let arrived = dicom_files(&moved);
    let _ = scp.kill();
    let _ = scp.wait();
    assert!(mv.status.success(), "movescu: {}", describe(&mv));
    assert_eq!(
        arrived.len(),
        1,
        "C-MOVE delivered {arrived:?}: {}",
        describe(&mv)
    );
    assert_eq!(dciodvfy_errors(&arrived[0]), Vec::<String>::new());

    // An unknown move destination is refused, the daemon keeps answering.
    let unknown = daemon.dcmtk(
        "movescu",
        &[
            "-S",
            "-aet",
            "PACS",
            "-aec",
            "NODULED",
            "-aem",
            "NOBODY",
            "-k",
            "QueryRetrieveLevel=SERIES",
            "-k",
            &format!("SeriesInstanceUID={}", sr_series[0]),
        ],
    );
    let text = describe(&unknown);
    assert!(
        text.contains("a801") || text.contains("A801") || text.contains("MoveDestinationUnknown"),
        "{text}"
    );
    let metrics = daemon.http_get("/metrics");
    assert!(
        metrics.contains("noduled_series{state=\"analysed\"} 1"),
        "{metrics}"
    );
    assert_eq!(daemon.http_get("/healthz").trim(), "ok");
}

#[test]
fn sigkill_mid_send_then_resend_stores_each_instance_once_and_reports_once() {
    let Some(shared) = ready() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path(), &shared, "completion_seconds = 3.0");
    let phantom = dir.path().join("phantom");
    let (series, study, files) = phantom_series(&phantom, 12, 60, 128);

    // Send, and kill -9 the daemon once part of the series is on disk.
    let mut sender = Command::new("storescu")
        .args([
            "-aet",
            "SCANNER",
            "-aec",
            "NODULED",
            "+sd",
            "+r",
            "127.0.0.1",
            &daemon.port.to_string(),
            phantom.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let spool = daemon.state.join("spool").join(&series);
    let deadline = Instant::now() + Duration::from_secs(60);
    while dicom_files(&spool).len() < 15 {
        assert!(
            Instant::now() < deadline,
            "instances never reached the spool"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.kill9();
    let _ = sender.wait();

    // Restart; the sender resends everything (it cannot know what was acknowledged last).
    daemon.spawn();
    let resent = storescu(&daemon, "SCANNER", &phantom);
    assert!(resent.status.success(), "resend: {}", describe(&resent));
    let record = daemon.wait_analysed(&series, Duration::from_secs(300));
    assert_eq!(record["state"], "analysed", "{record}");
    assert_eq!(
        record["instance_count"],
        files.len() as u64,
        "each instance stored once"
    );
    assert_eq!(
        dicom_files(&spool).len(),
        files.len(),
        "one file per instance in the spool"
    );

    // A second restart: still exactly one SR, nothing re-analysed.
    daemon.terminate();
    daemon.spawn();
    std::thread::sleep(Duration::from_secs(4));
    let sr_series = find_sr_series(&daemon, &study, &dir.path().join("find"));
    assert_eq!(sr_series.len(), 1, "{sr_series:?}");
    let sr = daemon.series(&sr_series[0]).unwrap();
    assert_eq!(sr["instance_count"], 1, "exactly one SR: {sr}");
    let jobs = daemon.status()["jobs"].clone();
    let job = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["series_uid"] == series)
        .unwrap()
        .clone();
    assert_eq!(job["attempts"], 1, "analysed once: {job}");
}

#[test]
fn jobs_queued_at_shutdown_run_after_restart() {
    let Some(shared) = ready() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(
        dir.path(),
        &shared,
        "workers = 1\nshutdown_grace_seconds = 1.0",
    );
    let (a, _, _) = phantom_series(&dir.path().join("a"), 21, 40, 256);
    let (b, _, _) = phantom_series(&dir.path().join("b"), 22, 40, 256);
    assert!(storescu(&daemon, "SCANNER", &dir.path().join("a"))
        .status
        .success());
    assert!(storescu(&daemon, "SCANNER", &dir.path().join("b"))
        .status
        .success());
    // Wait until both series are complete (queued or being analysed), then stop.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let states: Vec<String> = [&a, &b]
            .iter()
            .map(|uid| {
                daemon
                    .series(uid)
                    .map(|s| s["state"].as_str().unwrap_or("").to_string())
                    .unwrap_or_default()
            })
            .collect();
        if states.iter().all(|s| s != "receiving" && !s.is_empty()) {
            assert!(
                states.iter().any(|s| s == "queued"),
                "one job should still be queued: {states:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "series never completed: {states:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = daemon.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    daemon.spawn();
    for uid in [&a, &b] {
        let record = daemon.wait_analysed(uid, Duration::from_secs(300));
        assert_eq!(record["state"], "analysed", "{record}");
    }
}

#[test]
fn calling_ae_allow_list_and_refused_series_reason() {
    let Some(shared) = ready() else { return };
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        dir.path(),
        &shared,
        "allowed_calling_aes = [\"SCANNER@127.0.0.1\", \"PACS\"]",
    );
    let stranger = daemon.dcmtk("echoscu", &["-aet", "STRANGER", "-aec", "NODULED"]);
    assert!(
        !stranger.status.success(),
        "unknown AE must be rejected: {}",
        describe(&stranger)
    );
    let wrong_called = daemon.dcmtk("echoscu", &["-aet", "SCANNER", "-aec", "SOMEONE"]);
    assert!(
        !wrong_called.status.success(),
        "{}",
        describe(&wrong_called)
    );
    let scanner = daemon.dcmtk("echoscu", &["-aet", "SCANNER", "-aec", "NODULED"]);
    assert!(scanner.status.success(), "{}", describe(&scanner));

    // A 5-slice series is refused by the input rules, with its reason recorded and shown.
    let (series, _, _) = phantom_series(&dir.path().join("short"), 31, 5, 64);
    assert!(storescu(&daemon, "SCANNER", &dir.path().join("short"))
        .status
        .success());
    let record = daemon.wait_analysed(&series, Duration::from_secs(60));
    assert_eq!(record["state"], "refused", "{record}");
    let reason = record["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("slice"),
        "reason names the problem: {reason}"
    );
    let metrics = daemon.http_get("/metrics");
    assert!(
        metrics.contains("noduled_series{state=\"refused\"} 1"),
        "{metrics}"
    );
    let echo = daemon.dcmtk("echoscu", &["-aet", "PACS", "-aec", "NODULED"]);
    assert!(echo.status.success());
}

#[test]
fn systemd_unit_verifies() {
    if !have("systemd-analyze") {
        return;
    }
    // `verify` checks that ExecStart's binary exists: point it at the one cargo built.
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/noduled.service"),
    )
    .unwrap();
    assert!(
        unit.contains("Type=notify")
            && unit.contains("DynamicUser=yes")
            && unit.contains("CapabilityBoundingSet=\n")
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noduled.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/noduled", env!("CARGO_BIN_EXE_noduled")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text = describe(&out);
    assert!(out.status.success(), "systemd-analyze verify: {text}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("noduled.service:"),
        "warnings about the unit: {text}"
    );
}
