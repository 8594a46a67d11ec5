//! Lung mask speed (plain `main`, `harness = false`): `cargo bench --bench lung`. Times
//! [`LungMask::compute`] on LIDC-IDRI-0001 (512×512×133) when `../shared` is present, else on a
//! 512×512×133 phantom; median of 5 runs, on the rayon pool's threads
//! (`RAYON_NUM_THREADS` to pin them). Target: under 1 s.

use noduled::phantom::{generate, PhantomSpec};
use noduled::pipeline::lung::LungMask;
use std::path::Path;
use std::time::Instant;

fn main() {
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/lidc/LIDC-IDRI-0001");
    let (what, volume) = match noduled::dicom::load_series(&case, None) {
        Ok(v) => ("LIDC-IDRI-0001", v),
        Err(_) => (
            "phantom",
            generate(&PhantomSpec {
                seed: 1,
                slices: 133,
                ..PhantomSpec::default()
            })
            .volume,
        ),
    };
    let mut seconds = Vec::new();
    let mut ml = 0.0;
    for _ in 0..5 {
        let t = Instant::now();
        let mask = LungMask::compute(&volume);
        seconds.push(t.elapsed().as_secs_f64());
        ml = mask.volume_ml();
    }
    seconds.sort_by(f64::total_cmp);
    println!(
        "lung mask of {what} {:?}: median {:.3} s (min {:.3}, max {:.3}) over 5 runs, {} threads; lung {ml:.0} mL",
        volume.shape(),
        seconds[2],
        seconds[0],
        seconds[4],
        rayon::current_num_threads()
    );
}
