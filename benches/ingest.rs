//! Ingest throughput: one CT series sent with DCMTK `storescu` over loopback to `noduled serve`
//! (durable: file fsync + index flush before every Success) and to DCMTK `storescp` started with
//! `TCP_NODELAY=1` (no fsync), same files, same disk, one run (storescu itself with TCP_NODELAY=1
//! in both cases). Prints seconds, MB/s and the ratio.
//!
//! `cargo bench --bench ingest` (needs DCMTK; the service needs models only to start: the book's
//! from `../shared`, and no analysis runs because completion is set far in the future).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "peer did not start on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn send(port: u16, called: &str, dir: &Path) -> f64 {
    let started = Instant::now();
    // The sender gets TCP_NODELAY too (DCMTK reads it from the environment), for both peers alike:
    // without it, each instance waits out a ~40 ms delayed-ACK stall and both sides measure that.
    let status = Command::new("storescu")
        .env("TCP_NODELAY", "1")
        .args([
            "-aet",
            "BENCH",
            "-aec",
            called,
            "+sd",
            "+r",
            "127.0.0.1",
            &port.to_string(),
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("storescu runs");
    assert!(status.success(), "storescu failed");
    started.elapsed().as_secs_f64()
}

fn main() {
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/models/book");
    if !shared.is_dir() || Command::new("storescp").arg("--version").output().is_err() {
        eprintln!("skipping: needs ../shared (book models) and DCMTK");
        return;
    }
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let spec = noduled::phantom::PhantomSpec {
        seed: 3,
        slices: 261,
        ..Default::default()
    };
    let summary = noduled::phantom::write_dataset(&work.path().join("ct"), 3, 1, &spec).unwrap();
    std::fs::remove_file(&summary.annotations_csv).unwrap();
    let series_dir = summary.series[0].dir.clone();
    let bytes: u64 = summary.series[0]
        .files
        .iter()
        .map(|f| f.metadata().unwrap().len())
        .sum();
    let mb = bytes as f64 / 1e6;
    println!(
        "series: {} files, {mb:.0} MB",
        summary.series[0].files.len()
    );

    let mut best_scp = f64::INFINITY;
    let mut best_noduled = f64::INFINITY;
    for round in 0..3 {
        // DCMTK storescp, TCP_NODELAY, no fsync.
        let scp_port = free_port();
        let out = work.path().join(format!("scp{round}"));
        std::fs::create_dir_all(&out).unwrap();
        let mut scp = Command::new("storescp")
            .env("TCP_NODELAY", "1")
            .args(["-aet", "SCP", "-od"])
            .arg(&out)
            .arg(scp_port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_port(scp_port);
        best_scp = best_scp.min(send(scp_port, "SCP", &series_dir));
        let _ = scp.kill();
        let _ = scp.wait();

        // noduled serve.
        let port = free_port();
        let config = work.path().join(format!("noduled{round}.toml"));
        std::fs::write(
            &config,
            format!(
                "[pipeline]\nsegmentation_model = {:?}\nnodule_model = {:?}\nmalignancy_model = \"diameter\"\n[server]\nport = {port}\nstate_dir = {:?}\ncompletion_seconds = 1000000.0\nhttp = \"\"\nmin_free_disk_mb = 0\n",
                shared.join("seg_unet.onnx"),
                shared.join("nodule_cls.onnx"),
                work.path().join(format!("state{round}"))
            ),
        )
        .unwrap();
        let mut daemon = Command::new(env!("CARGO_BIN_EXE_noduled"))
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_port(port);
        best_noduled = best_noduled.min(send(port, "NODULED", &series_dir));
        let _ = daemon.kill();
        let _ = daemon.wait();
    }
    println!(
        "storescp (TCP_NODELAY, no fsync): {best_scp:.2} s, {:.0} MB/s (best of 3)",
        mb / best_scp
    );
    println!(
        "noduled serve (fsync + index):    {best_noduled:.2} s, {:.0} MB/s (best of 3)",
        mb / best_noduled
    );
    println!(
        "noduled throughput = {:.2}x storescp's",
        best_scp / best_noduled
    );
}
