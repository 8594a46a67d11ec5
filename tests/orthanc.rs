//! Orthanc as the PACS: a CT goes to noduled by C-STORE, Orthanc is told (over its REST API) to
//! C-MOVE the SR from noduled to itself, and the SR is then in Orthanc.
//! Needs Orthanc (Debian package `orthanc`), DCMTK, curl and `../shared` (skips otherwise).

mod common;

use common::daemon::{describe, free_port, have, phantom_series, Daemon};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "60"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn orthanc_pulls_the_report_by_c_move() {
    let Some(shared) = common::shared() else {
        return;
    };
    if !have("Orthanc") || !have("storescu") || !have("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let orthanc_http = free_port();
    let orthanc_dicom = free_port();
    let daemon = Daemon::start(
        dir.path(),
        &shared,
        &format!("destinations = [\"ORTHANC@127.0.0.1:{orthanc_dicom}\"]\nallowed_calling_aes = [\"SCANNER\", \"ORTHANC@127.0.0.1\"]"),
    );
    let storage = dir.path().join("orthanc-db");
    let config = dir.path().join("orthanc.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "Name": "noduled-test",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "HttpPort": orthanc_http,
            "DicomPort": orthanc_dicom,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "HttpServerEnabled": true,
            "DicomServerEnabled": true,
            "Plugins": [],
            "DicomModalities": { "noduled": ["NODULED", "127.0.0.1", daemon.port] }
        })
        .to_string(),
    )
    .unwrap();
    let mut orthanc = Command::new("Orthanc")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("Orthanc starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while curl(&[&format!("http://127.0.0.1:{orthanc_http}/system")]).is_empty() {
        assert!(Instant::now() < deadline, "Orthanc did not start");
        std::thread::sleep(Duration::from_millis(200));
    }

    let phantom = dir.path().join("phantom");
    let (series, study, _) = phantom_series(&phantom, 41, 24, 128);
    let sent = daemon.dcmtk_with(
        "storescu",
        &["-aet", "SCANNER", "-aec", "NODULED", "+sd", "+r"],
        &[phantom.to_str().unwrap()],
    );
    assert!(sent.status.success(), "{}", describe(&sent));
    let record = daemon.wait_analysed(&series, Duration::from_secs(300));
    assert_eq!(record["state"], "analysed", "{record}");
    let sr_series = daemon.status()["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["study_uid"] == study.as_str() && s["modality"] == "SR")
        .map(|s| s["series_uid"].as_str().unwrap().to_string())
        .expect("an SR series in the study");

    // Orthanc, as the PACS, asks noduled to C-MOVE the SR series to Orthanc.
    let body = serde_json::json!({
        "Level": "Series",
        "Resources": [{ "StudyInstanceUID": study, "SeriesInstanceUID": sr_series }],
        "TargetAet": "ORTHANC",
        "Synchronous": true
    })
    .to_string();
    let answer = curl(&[
        "-X",
        "POST",
        "-d",
        &body,
        &format!("http://127.0.0.1:{orthanc_http}/modalities/noduled/move"),
    ]);
    let found = curl(&[
        "-X", "POST",
        "-d", &serde_json::json!({"Level": "Instance", "Query": {"SeriesInstanceUID": sr_series}, "Expand": true}).to_string(),
        &format!("http://127.0.0.1:{orthanc_http}/tools/find"),
    ]);
    let _ = orthanc.kill();
    let _ = orthanc.wait();
    let instances: serde_json::Value = serde_json::from_str(&found).unwrap_or_default();
    let list = instances.as_array().cloned().unwrap_or_default();
    assert_eq!(
        list.len(),
        1,
        "the SR should be in Orthanc; move said {answer:?}; find said {found}; noduled log:\n{}",
        daemon.log_text()
    );
}
