//! `noduled phantom`: writes deterministic synthetic chest CTs (DICOM series with known nodules and
//! a LUNA16-style `annotations.csv`) for tests, benchmarks and demos.

use noduled::phantom::{write_dataset, NoduleKind, PhantomSpec};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output folder: one `<SeriesInstanceUID>/` folder a series, plus `annotations.csv`.
    #[arg(long)]
    out: PathBuf,
    /// Seed: the same seed and options always write the same bytes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Number of series (patients) to write.
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Nodules per series.
    #[arg(long, default_value_t = 4)]
    nodules: usize,
    /// Slices per series.
    #[arg(long, default_value_t = 120)]
    slices: usize,
    /// Image rows.
    #[arg(long, default_value_t = 512)]
    rows: usize,
    /// Image columns.
    #[arg(long, default_value_t = 512)]
    columns: usize,
    /// Slice step = slice thickness (mm) [default: drawn from 1.25, 1.5, 2.0, 2.5].
    #[arg(long, value_name = "MM")]
    slice_mm: Option<f64>,
    /// In-plane pixel spacing (mm) [default: drawn, 0.61-0.80].
    #[arg(long, value_name = "MM")]
    pixel_mm: Option<f64>,
    /// A mass of this diameter (mm, 30-80; repeat for several): an irregular, lobulated lesion
    /// against the chest wall or mediastinum, annotated with kind `mass`.
    #[arg(long = "mass", value_name = "MM")]
    masses: Vec<f64>,
}

/// Most series one invocation writes (each 512×512×120 series is about 60 MiB).
const MAX_COUNT: usize = 10_000;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !(1..=MAX_COUNT).contains(&args.count) {
        anyhow::bail!(
            "--count must be between 1 and {MAX_COUNT}, got {}",
            args.count
        );
    }
    let spec = PhantomSpec {
        seed: args.seed,
        slices: args.slices,
        rows: args.rows,
        columns: args.columns,
        nodules: args.nodules,
        slice_step_mm: args.slice_mm,
        pixel_spacing_mm: args.pixel_mm,
        masses_mm: args.masses,
        ..PhantomSpec::default()
    };
    spec.validate()?;
    // The error names the path that failed and, through its source, why.
    let summary = write_dataset(&args.out, args.seed, args.count, &spec)?;
    for series in &summary.series {
        let masses = series
            .nodules
            .iter()
            .filter(|n| n.kind == NoduleKind::Mass)
            .count();
        println!(
            "{}  {} slices  {} nodules  {masses} masses  {}",
            series.series_uid,
            series.files.len(),
            series.nodules.len() - masses,
            series.dir.display()
        );
    }
    println!("annotations: {}", summary.annotations_csv.display());
    Ok(ExitCode::SUCCESS)
}
