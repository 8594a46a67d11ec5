//! Benchmark: reading a 512×512×300 CT series from disk into a HU volume.
//!
//! Target (issue 2): under 3 s and under 2× the volume's f32 size in extra memory on the 2-core
//! machine. Run with `cargo bench --bench load_series`. The series is a phantom written to a temp dir.
//! Memory is the peak resident set during the load minus the resident set before it (Linux: the
//! peak is reset through /proc/self/clear_refs).

use noduled::phantom::{generate, write_series, PhantomSpec};
use std::time::Instant;

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    let slices = 300;
    let dir = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    {
        let phantom = generate(&PhantomSpec {
            seed: 7,
            slices,
            ..PhantomSpec::default()
        });
        write_series(&phantom, dir.path()).expect("phantom written");
    }
    println!(
        "phantom 512×512×{slices} generated and written in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    // Warm the page cache once, as a series just received by the daemon would be.
    let _ = noduled::dicom::load_series(dir.path(), None).expect("loads");

    let mut seconds = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let volume = noduled::dicom::load_series(dir.path(), None).expect("loads");
        seconds.push(start.elapsed().as_secs_f64());
        assert_eq!(volume.shape(), [slices, 512, 512]);
    }
    seconds.sort_by(f64::total_cmp);
    let f32_mib = (slices * 512 * 512 * 4) as f64 / (1024.0 * 1024.0);

    let before = status_kib("VmRSS:").unwrap_or(0);
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let volume = noduled::dicom::load_series(dir.path(), None).expect("loads");
    let peak = status_kib("VmHWM:").unwrap_or(0);
    drop(volume);
    let extra_mib = peak.saturating_sub(before) as f64 / 1024.0;

    println!(
        "load_series 512×512×{slices}: min {:.3} s, median {:.3} s, max {:.3} s (5 runs, warm cache)",
        seconds[0], seconds[2], seconds[4]
    );
    if reset {
        println!(
            "peak extra memory during load: {extra_mib:.0} MiB = {:.2}× the f32 volume ({f32_mib:.0} MiB)",
            extra_mib / f32_mib
        );
    } else {
        println!("peak memory: cannot reset the high-water mark here (no /proc/self/clear_refs)");
    }
}
