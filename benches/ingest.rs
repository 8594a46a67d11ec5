//! Ingest throughput: one CT series sent with DCMTK `storescu` over loopback to `noduled serve`
//! (durable: file and folder fsync before every Success) and to DCMTK `storescp` started with
//! `TCP_NODELAY=1` (no fsync), same files, same disk, one run (storescu itself with TCP_NODELAY=1
//! in both cases). Prints seconds, MB/s and the ratio: each round's, the best against the best,
//! and the median of the rounds' ratios (`NODULED_BENCH_ROUNDS`, default 5).
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

    let rounds: usize = std::env::var("NODULED_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let mut best_scp = f64::INFINITY;
    let mut best_noduled = f64::INFINITY;
    // Each round sends to both, one after the other, so its ratio is measured under the same
    // machine conditions; the median of the rounds' ratios is the robust figure on a shared VM.
    let mut ratios = Vec::new();
    for round in 0..rounds {
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
        let scp_s = send(scp_port, "SCP", &series_dir);
        best_scp = best_scp.min(scp_s);
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
        let noduled_s = send(port, "NODULED", &series_dir);
        best_noduled = best_noduled.min(noduled_s);
        ratios.push(scp_s / noduled_s);
        println!(
            "round {round}: storescp {scp_s:.2} s, noduled {noduled_s:.2} s, ratio {:.2}",
            scp_s / noduled_s
        );
        let _ = daemon.kill();
        let _ = daemon.wait();
    }
    println!(
        "storescp (TCP_NODELAY, no fsync): {best_scp:.2} s, {:.0} MB/s (best of {rounds})",
        mb / best_scp
    );
    println!(
        "noduled serve (fsync + index):    {best_noduled:.2} s, {:.0} MB/s (best of {rounds})",
        mb / best_noduled
    );
    ratios.sort_by(f64::total_cmp);
    println!(
        "noduled throughput = {:.2}x storescp's (best against best); median of the rounds' ratios {:.2}x",
        best_scp / best_noduled,
        ratios[ratios.len() / 2]
    );
}
