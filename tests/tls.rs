//! DICOM TLS on `noduled serve` (issue 8): a throwaway CA, server and client certificates made
//! with the `openssl` CLI, then DCMTK `echoscu +tls` / `storescu +tls` against the daemon.
//!
//! Mutual TLS (`client_ca` set): a client with a certificate from our CA echoes and stores; a
//! client without a certificate (`+tla`), or with one from another CA, is refused; a plain
//! (non-TLS) client and a silent connection are refused and counted, and the daemon still
//! answers TLS afterwards. Without `client_ca`, an anonymous TLS client is accepted. Without
//! `[server.tls]` the same services answer plain clients (echo, store, C-GET) and refuse TLS ones.
//! Bad certificate files stop `check-config` and `serve` with one line.
//! Uses the small models shipped in `models/` (no `../shared` needed; nothing is analysed: the
//! completion time is long). Needs DCMTK, openssl and curl (skips with a reason otherwise).

mod common;

use common::daemon::{describe, have, phantom_series, Daemon};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn ready() -> bool {
    [
        "echoscu", "storescu", "findscu", "getscu", "openssl", "curl",
    ]
    .iter()
    .all(|tool| have(tool))
}

/// `noduled serve` with the shipped models, its state under `dir/daemon`, `extra` in `[server]`.
fn start_daemon(dir: &Path, extra: &str) -> Daemon {
    let (seg, nodule) = models();
    std::fs::create_dir_all(dir.join("daemon")).unwrap();
    Daemon::start_with_models(&dir.join("daemon"), &seg, &nodule, extra)
}

fn models() -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    (dir.join("segmentation.onnx"), dir.join("nodule.onnx"))
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", describe(&out));
}

/// A CA (`<ca>.crt`, `<ca>.key`) in `dir`.
fn make_ca(dir: &Path, ca: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=noduled test {ca}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A leaf certificate `<name>.crt` / `<name>.key` signed by `ca`; `usage` is serverAuth or
/// clientAuth.
fn make_leaf(dir: &Path, ca: &str, name: &str, usage: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    let ext = format!("{name}.ext");
    std::fs::write(
        dir.join(&ext),
        format!(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage={usage}\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
        ),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
}

/// Certificates for one test: our CA with a server and a client certificate, and a stranger CA
/// with its own client certificate.
fn certificates(dir: &Path) -> PathBuf {
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    make_ca(&pki, "ca");
    make_leaf(&pki, "ca", "server", "serverAuth");
    make_leaf(&pki, "ca", "client", "clientAuth");
    make_ca(&pki, "stranger-ca");
    make_leaf(&pki, "stranger-ca", "stranger", "clientAuth");
    pki
}

fn tls_section(pki: &Path, client_ca: bool) -> String {
    let ca = if client_ca {
        format!("{:?}", pki.join("ca.crt"))
    } else {
        "\"\"".into()
    };
    format!(
        "artim_seconds = 2.0\ncompletion_seconds = 3600.0\n[server.tls]\ncertificate = {:?}\n\
         private_key = {:?}\nclient_ca = {ca}\n",
        pki.join("server.crt"),
        pki.join("server.key")
    )
}

fn path(p: PathBuf) -> String {
    p.to_str().unwrap().to_string()
}

/// DCMTK TLS options with a client certificate `name` from `pki`, trusting our CA.
fn tls_client(pki: &Path, name: &str) -> Vec<String> {
    vec![
        "+tls".into(),
        path(pki.join(format!("{name}.key"))),
        path(pki.join(format!("{name}.crt"))),
        "-pw".into(),
        "+cf".into(),
        path(pki.join("ca.crt")),
        "-aet".into(),
        "SCANNER".into(),
        "-aec".into(),
        "NODULED".into(),
    ]
}

/// DCMTK anonymous TLS (no client certificate), trusting our CA.
fn anonymous_client(pki: &Path) -> Vec<String> {
    vec![
        "+tla".into(),
        "+cf".into(),
        path(pki.join("ca.crt")),
        "-aet".into(),
        "SCANNER".into(),
        "-aec".into(),
        "NODULED".into(),
    ]
}

fn echo(daemon: &Daemon, options: &[String]) -> std::process::Output {
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    daemon.dcmtk("echoscu", &options)
}

fn metric(daemon: &Daemon, name: &str) -> f64 {
    daemon
        .http_get("/metrics")
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

const REJECTED: &str = "noduled_associations_total{result=\"rejected\"}";

/// Waits until the rejected-association counter exceeds `before` (the daemon logs and counts a
/// failed handshake after the client has already given up).
fn wait_rejected_above(daemon: &Daemon, before: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = metric(daemon, REJECTED);
        if now > before {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "rejection not counted (still {now}); log:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn mutual_tls_echo_store_and_refusals() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = certificates(dir.path());
    let daemon = start_daemon(dir.path(), &tls_section(&pki, true));
    let client = tls_client(&pki, "client");

    // 1. C-ECHO over TLS with our client certificate.
    let out = echo(&daemon, &client);
    assert!(out.status.success(), "TLS echo: {}", describe(&out));

    // 2. C-STORE of a small phantom series over TLS: every instance stored.
    let (series, _, files) = phantom_series(&dir.path().join("phantom"), 7, 8, 64);
    let mut options: Vec<&str> = client.iter().map(String::as_str).collect();
    options.extend(["+sd", "+r"]);
    let phantom_dir = path(dir.path().join("phantom"));
    let out = daemon.dcmtk_with("storescu", &options, &[&phantom_dir]);
    assert!(out.status.success(), "TLS store: {}", describe(&out));
    let stored = daemon
        .series(&series)
        .and_then(|s| s["instance_count"].as_u64())
        .unwrap_or(0);
    assert_eq!(stored, files.len() as u64, "{}", daemon.status());

    // C-FIND over TLS finds the series (responses with data sets travel over the TLS stream).
    let found = dir.path().join("found");
    std::fs::create_dir_all(&found).unwrap();
    let mut options: Vec<&str> = client.iter().map(String::as_str).collect();
    let key = format!("SeriesInstanceUID={series}");
    let found_arg = path(found.clone());
    options.extend([
        "-S",
        "-k",
        "QueryRetrieveLevel=SERIES",
        "-k",
        &key,
        "-X",
        "-od",
        &found_arg,
    ]);
    let out = daemon.dcmtk("findscu", &options);
    assert!(out.status.success(), "TLS find: {}", describe(&out));
    let responses = std::fs::read_dir(&found).map(|d| d.count()).unwrap_or(0);
    assert_eq!(responses, 1, "C-FIND over TLS: {}", describe(&out));

    // 3. A plain (non-TLS) client is refused and counted; TLS still works after it.
    let before = metric(&daemon, REJECTED);
    let out = daemon.dcmtk(
        "echoscu",
        &["-to", "5", "-aet", "SCANNER", "-aec", "NODULED"],
    );
    assert!(
        !out.status.success(),
        "plain echo accepted on the TLS port: {}",
        describe(&out)
    );
    let before = wait_rejected_above(&daemon, before);
    // A connection that never starts the handshake is dropped after artim_seconds (2 s).
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = silent.read(&mut buf);
    assert!(
        matches!(read, Ok(0) | Err(_)) && started.elapsed() < Duration::from_secs(15),
        "silent connection not dropped: {read:?} after {:?}",
        started.elapsed()
    );
    let before = wait_rejected_above(&daemon, before);
    let out = echo(&daemon, &client);
    assert!(
        out.status.success(),
        "TLS echo after the refusals: {}",
        describe(&out)
    );

    // 4. client_ca set: no client certificate, or one from another CA, is refused.
    let out = echo(&daemon, &anonymous_client(&pki));
    assert!(
        !out.status.success(),
        "client without a certificate accepted: {}",
        describe(&out)
    );
    let before = wait_rejected_above(&daemon, before);
    let out = echo(&daemon, &tls_client(&pki, "stranger"));
    assert!(
        !out.status.success(),
        "client certificate from another CA accepted: {}",
        describe(&out)
    );
    wait_rejected_above(&daemon, before);
    let log = daemon.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("association not established") && l.contains("TLS")),
        "no log line for a failed handshake:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    let out = echo(&daemon, &client);
    assert!(
        out.status.success(),
        "TLS echo at the end: {}",
        describe(&out)
    );
}

#[test]
fn without_client_ca_anonymous_tls_clients_are_accepted() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = certificates(dir.path());
    let daemon = start_daemon(dir.path(), &tls_section(&pki, false));
    let out = echo(&daemon, &anonymous_client(&pki));
    assert!(
        out.status.success(),
        "anonymous TLS echo: {}",
        describe(&out)
    );
    let out = echo(&daemon, &tls_client(&pki, "client"));
    assert!(
        out.status.success(),
        "TLS echo with a certificate: {}",
        describe(&out)
    );
}

#[test]
fn without_tls_the_same_services_answer_plain_clients_and_refuse_tls_ones() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = certificates(dir.path());
    let daemon = start_daemon(dir.path(), "completion_seconds = 3600.0");
    let plain = ["-aet", "SCANNER", "-aec", "NODULED"];
    let out = daemon.dcmtk("echoscu", &plain);
    assert!(out.status.success(), "plain echo: {}", describe(&out));
    let (series, study, files) = phantom_series(&dir.path().join("phantom"), 8, 8, 64);
    let phantom_dir = path(dir.path().join("phantom"));
    let out = daemon.dcmtk_with(
        "storescu",
        &["-aet", "SCANNER", "-aec", "NODULED", "+sd", "+r"],
        &[&phantom_dir],
    );
    assert!(out.status.success(), "plain store: {}", describe(&out));
    // C-GET: sub-operations and their responses on the same (generic) session.
    let got = dir.path().join("got");
    let out = daemon.get_series(&study, &series, &got);
    let count = std::fs::read_dir(&got).map(|d| d.count()).unwrap_or(0);
    assert_eq!(count, files.len(), "plain C-GET: {}", describe(&out));
    let before = metric(&daemon, REJECTED);
    let out = echo(&daemon, &tls_client(&pki, "client"));
    assert!(
        !out.status.success(),
        "TLS echo accepted on a plain port: {}",
        describe(&out)
    );
    wait_rejected_above(&daemon, before);
    let out = daemon.dcmtk("echoscu", &plain);
    assert!(out.status.success(), "plain echo after: {}", describe(&out));
}

/// Runs `noduled ARGS`; (success, stderr).
fn noduled(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_noduled"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_certificate_files_stop_check_config_and_serve_with_one_line() {
    if !have("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = certificates(dir.path());
    let config = dir.path().join("noduled.toml");
    let (seg, nodule) = models();
    let base = format!(
        "[pipeline]\nsegmentation_model = {seg:?}\nnodule_model = {nodule:?}\n\
         malignancy_model = \"diameter\"\n[server]\nport = 0\nhttp = \"\"\nstate_dir = {:?}\n\
         min_free_disk_mb = 0\n[server.tls]\n",
        dir.path().join("state")
    );
    let cases = [
        (
            format!(
                "certificate = {:?}\nprivate_key = {:?}\n",
                pki.join("absent.crt"),
                pki.join("server.key")
            ),
            "server.tls.certificate",
        ),
        (
            format!(
                "certificate = {:?}\nprivate_key = {:?}\n",
                pki.join("server.crt"),
                pki.join("server.csr")
            ),
            "no PEM private key",
        ),
        (
            format!(
                "certificate = {:?}\nprivate_key = {:?}\n",
                pki.join("server.crt"),
                pki.join("client.key")
            ),
            "does not belong to the certificate",
        ),
        (
            format!(
                "certificate = {:?}\nprivate_key = {:?}\nclient_ca = {:?}\n",
                pki.join("server.crt"),
                pki.join("server.key"),
                pki.join("server.key")
            ),
            "server.tls.client_ca",
        ),
        (
            format!("certificate = {:?}\n", pki.join("server.crt")),
            "server.tls.private_key must be set",
        ),
    ];
    for (tls, needle) in cases {
        std::fs::write(&config, format!("{base}{tls}")).unwrap();
        let (ok, stderr) = noduled(&["check-config".as_ref(), config.as_os_str()]);
        assert!(!ok, "check-config accepted {tls}");
        assert!(
            stderr.lines().any(|l| l.contains(needle)),
            "check-config: {needle} not in {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        let (ok, stderr) = noduled(&["--config".as_ref(), config.as_os_str(), "serve".as_ref()]);
        assert!(!ok, "serve started with {tls}");
        assert!(stderr.contains(needle), "serve: {needle} not in {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "serve: {stderr}");
        assert!(stderr.starts_with("noduled: error: "), "{stderr}");
    }
}
