//! `noduled info`: load a CT series folder and show what the pipeline would see.

use anyhow::Context;
use noduled::config::Config;
use noduled::dicom;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder holding the series' DICOM files (searched recursively).
    series_dir: PathBuf,
    /// SeriesInstanceUID to pick when the folder holds several CT series.
    #[arg(long = "series")]
    series_uid: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    let volume =
        dicom::load_series_with(&args.series_dir, args.series_uid.as_deref(), &config.series)
            .with_context(|| format!("cannot load {}", args.series_dir.display()))?;
    let [slices, rows, columns] = volume.shape();
    let (min, max) = volume
        .hu
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let g = &volume.geometry;
    if args.json {
        let report = json!({
            "series_uid": volume.series.series_uid,
            "study_uid": volume.series.study_uid,
            "frame_of_reference_uid": volume.series.frame_of_reference_uid,
            "shape": [slices, rows, columns],
            "spacing_xyz": g.spacing_xyz,
            "origin_xyz": g.origin_xyz,
            "direction": g.direction_flat(),
            "slice_thickness_mm": volume.series.slice_thickness_mm,
            "hu_range": [min, max],
            "warnings": volume.series.warnings,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("series     {}", volume.series.series_uid);
    println!("study      {}", volume.series.study_uid);
    println!("shape      {slices} × {rows} × {columns} (index, row, column)");
    println!(
        "spacing    {:.6} × {:.6} × {:.6} mm (x, y, z)",
        g.spacing_xyz[0], g.spacing_xyz[1], g.spacing_xyz[2]
    );
    println!(
        "origin     ({:.3}, {:.3}, {:.3}) mm",
        g.origin_xyz[0], g.origin_xyz[1], g.origin_xyz[2]
    );
    let d = g.direction_flat();
    println!(
        "direction  [{:.4} {:.4} {:.4} | {:.4} {:.4} {:.4} | {:.4} {:.4} {:.4}]",
        d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[8]
    );
    if let Some(thickness) = volume.series.slice_thickness_mm {
        println!("thickness  {thickness:.2} mm");
    }
    println!("HU range   {min:.0} to {max:.0}");
    if volume.series.warnings.is_empty() {
        println!("warnings   none");
    } else {
        for warning in &volume.series.warnings {
            println!("warning    {warning}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
