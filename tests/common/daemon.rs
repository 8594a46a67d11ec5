//! A real `noduled serve` process for integration tests, and the DCMTK peers that talk to it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on loopback (bound then released: good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Whether a DCMTK tool is installed (tests skip with a reason when not).
pub fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        eprintln!("skipping: {tool} is not installed (.ci/run installs it)");
    }
    found
}

/// The book models from `../shared`, or None (then the test skips).
pub fn book_models(shared: &Path) -> (PathBuf, PathBuf) {
    let dir = shared.join("models/book");
    (dir.join("seg_unet.onnx"), dir.join("nodule_cls.onnx"))
}

/// A running daemon: killed when dropped.
pub struct Daemon {
    pub child: Option<Child>,
    pub port: u16,
    pub http_port: u16,
    pub state: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// Writes a configuration (`extra` is appended inside `[server]`) and starts the daemon.
    pub fn start(dir: &Path, shared: &Path, extra: &str) -> Daemon {
        let (seg, nodule) = book_models(shared);
        Daemon::start_with_models(dir, &seg, &nodule, extra)
    }

    /// As [`Daemon::start`], with the given models (e.g. the small ones shipped in `models/`).
    pub fn start_with_models(dir: &Path, seg: &Path, nodule: &Path, extra: &str) -> Daemon {
        let port = free_port();
        let http_port = free_port();
        let state = dir.join("state");
        let config = dir.join("noduled.toml");
        let completion = if extra.contains("completion_seconds") {
            String::new()
        } else {
            "completion_seconds = 1.5\n".to_string()
        };
        let text = format!(
            "[pipeline]\nsegmentation_model = {seg:?}\nnodule_model = {nodule:?}\nmalignancy_model = \"diameter\"\nthreads = 2\n\
             [server]\nport = {port}\nstate_dir = {state:?}\n{completion}http = \"127.0.0.1:{http_port}\"\n\
             min_free_disk_mb = 0\n{extra}\n"
        );
        std::fs::write(&config, text).unwrap();
        let mut daemon = Daemon {
            child: None,
            port,
            http_port,
            state,
            config,
            log: dir.join("noduled.log"),
        };
        daemon.spawn();
        daemon
    }

    /// (Re)starts the process with the same configuration and waits until it answers.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_noduled"))
            .args(["--log-format", "json", "--config"])
            .arg(&self.config)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("noduled starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("noduled exited with {status}: {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "noduled did not start: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        child.wait().expect("noduled exits")
    }

    /// GET on the HTTP endpoint (with curl).
    pub fn http_get(&self, path: &str) -> String {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "10"])
            .arg(format!("http://127.0.0.1:{}{path}", self.http_port))
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `/status` as JSON.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.http_get("/status")).unwrap_or(serde_json::Value::Null)
    }

    /// The record of one series in `/status`.
    pub fn series(&self, uid: &str) -> Option<serde_json::Value> {
        self.status()["series"]
            .as_array()?
            .iter()
            .find(|s| s["series_uid"] == uid)
            .cloned()
    }

    /// Waits until the series is analysed (or refused); returns its record.
    pub fn wait_analysed(&self, uid: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.series(uid) {
                if s["state"] == "analysed" || s["state"] == "refused" {
                    return s;
                }
            }
            assert!(
                Instant::now() < deadline,
                "series {uid} not analysed in time; status: {}\nlog:\n{}",
                self.status(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Runs a DCMTK tool against this daemon: `options`, then peer and port, then `files`.
    pub fn dcmtk_with(&self, tool: &str, options: &[&str], files: &[&str]) -> Output {
        Command::new(tool)
            .args(options)
            .arg("127.0.0.1")
            .arg(self.port.to_string())
            .args(files)
            .output()
            .expect("DCMTK tool runs")
    }

    /// Runs a DCMTK tool against this daemon's port (appended last).
    /// C-GET of one series with DCMTK `getscu` (calling AE PACS), instances written into `out`.
    pub fn get_series(&self, study: &str, series: &str, out: &Path) -> Output {
        std::fs::create_dir_all(out).unwrap();
        self.dcmtk(
            "getscu",
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
                &format!("SeriesInstanceUID={series}"),
                "-od",
                out.to_str().unwrap(),
            ],
        )
    }

    pub fn dcmtk(&self, tool: &str, options: &[&str]) -> Output {
        self.dcmtk_with(tool, options, &[])
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A small phantom series on disk: (series UID, study UID, files).
pub fn phantom_series(
    dir: &Path,
    seed: u64,
    slices: usize,
    size: usize,
) -> (String, String, Vec<PathBuf>) {
    let spec = noduled::phantom::PhantomSpec {
        seed,
        slices,
        rows: size,
        columns: size,
        nodules: 2,
        ..noduled::phantom::PhantomSpec::default()
    };
    let summary = noduled::phantom::write_dataset(dir, seed, 1, &spec).expect("phantom written");
    // Only the DICOM files are sent: storescu would refuse the CSV.
    let _ = std::fs::remove_file(&summary.annotations_csv);
    let series = &summary.series[0];
    let study = dicom_object::open_file(&series.files[0])
        .unwrap()
        .element(dicom_dictionary_std::tags::STUDY_INSTANCE_UID)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches('\0')
        .to_string();
    (series.series_uid.clone(), study, series.files.clone())
}

/// Text of a DCMTK run, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
