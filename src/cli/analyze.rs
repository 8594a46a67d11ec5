//! `noduled analyze`: run the whole pipeline on one CT series folder and answer "are malignant
//! nodules present?", as a findings table (and optionally JSON).

use anyhow::Context;
use noduled::config::Config;
use noduled::dicom;
use noduled::dicom::keyimage::{self, KeyImageOptions};
use noduled::dicom::sr::{self, SrOptions};
use noduled::engine;
use noduled::pipeline::reduce::{ReduceOptions, SuppressReason};
use noduled::pipeline::{Analysis, Stage};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
Models: defaults are models/segmentation.onnx, models/nodule.onnx and models/malignancy.onnx \
(relative to the working directory; `[pipeline]` in --config FILE changes them). No default models ship yet, so --seg-model and --nodule-model \
are required until they do, e.g. with the book's models:
  --seg-model ../shared/models/book/seg_unet.onnx --nodule-model ../shared/models/book/nodule_cls.onnx

Malignancy: `--malignancy-model diameter` (the default when models/malignancy.onnx is absent) is the \
book's diameter baseline: p_malignant = 1 / (1 + exp(-(d - 10.55 mm) / 1.5 mm)), where d is the \
equivalent diameter (mm) of the nodule's segmented volume V (mm³): d = (6·V/π)^(1/3), V being \
the eroded component dilated once within the thresholded segmentation. It is 0.5 at the book's \
10.55 mm operating point (TPR 0.56, FPR 0.01 on LUNA16), 0.03 at its 5.42 mm point (TPR 0.96, \
FPR 0.43), 0.84 at 13 mm.

Output: a findings table on stdout (nodules: candidates with p_nodule > 0.5) and the answer line \
`Malignant nodules present: yes (N)` or `Malignant nodules present: no` (N = findings with \
p_malignant > 0.5). With --json - the JSON report replaces the table on stdout.")]
pub struct Args {
    /// Folder holding the series' DICOM files (searched recursively).
    series_dir: PathBuf,
    /// SeriesInstanceUID to pick when the folder holds several CT series.
    #[arg(long = "series", value_name = "UID")]
    series_uid: Option<String>,
    #[command(flatten)]
    models: super::model_flags::ModelFlags,
    /// Also write the analysis as JSON to FILE (`-` for stdout, instead of the table).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Also write the findings as a DICOM Comprehensive 3D SR (TID 1500) to FILE.
    #[arg(long, value_name = "FILE")]
    sr: Option<PathBuf>,
    /// Write a key image per finding into DIR: `nodule-N.png` (axial slice, nodule outlined and
    /// labelled) and `nodule-N.dcm` (the same as DICOM Secondary Capture in the CT's study).
    #[arg(long, value_name = "DIR")]
    images: Option<PathBuf>,
}

pub fn run(args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    let pipeline = args.models.load_pipeline(config)?;

    let started = Instant::now();
    let volume =
        dicom::load_series_with(&args.series_dir, args.series_uid.as_deref(), &config.series)
            .with_context(|| format!("cannot load {}", args.series_dir.display()))?;
    let load_s = started.elapsed().as_secs_f64();
    tracing::info!(
        series = %volume.series.series_uid,
        shape = ?volume.shape(),
        seconds = load_s,
        threads = pipeline.options().threads,
        "series loaded"
    );

    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {elapsed}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    });
    let progress = |stage: Stage, done: usize, total: usize| {
        if let Some(bar) = &bar {
            bar.set_message(stage.as_str());
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
    };
    let result = pipeline.analyze(&volume, &progress);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let mut analysis =
        result.with_context(|| format!("cannot analyse {}", args.series_dir.display()))?;
    analysis.add_load_seconds(load_s);
    tracing::info!(
        candidates = analysis.candidates.len(),
        findings = analysis.findings.len(),
        seconds = ?analysis.seconds,
        "analysis done"
    );

    if let Some(path) = &args.sr {
        let sop_instance_uid = sr::write_sr(
            path,
            &analysis,
            &volume.series,
            &volume.geometry,
            &SrOptions::default(),
        )
        .with_context(|| format!("cannot write the SR {}", path.display()))?;
        tracing::info!(path = %path.display(), sop_instance_uid, "structured report written");
    }

    if let Some(dir) = &args.images {
        let written = write_key_images(dir, &analysis, &volume)?;
        tracing::info!(dir = %dir.display(), images = written, "key images written");
    }

    let json_to_stdout = args.json.as_deref() == Some(Path::new("-"));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&analysis)? + "\n";
        if json_to_stdout {
            std::io::stdout().write_all(text.as_bytes())?;
        } else {
            std::fs::write(path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    if !json_to_stdout {
        print_table(&analysis)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `nodule-N.png` and `nodule-N.dcm` for every finding into `dir` (created if needed);
/// returns how many findings got images.
fn write_key_images(
    dir: &Path,
    analysis: &Analysis,
    volume: &noduled::Volume,
) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let series_uid = noduled::uid::generate();
    let mut written = 0;
    for (k, finding) in analysis.findings.iter().enumerate() {
        let number = k + 1;
        let Some((slice, image)) = noduled::render::finding_key_image(
            volume.hu.view(),
            volume.geometry.spacing_xyz,
            finding,
            number,
        ) else {
            continue;
        };
        noduled::render::write_png(&image, &dir.join(format!("nodule-{number}.png")))?;
        let description = noduled::render::describe_finding(finding, number);
        let options = KeyImageOptions::new(series_uid.clone(), number as u32);
        let object =
            keyimage::build_key_image(&image, &volume.series, slice, &description, &options)
                .with_context(|| format!("cannot build the key image of nodule {number}"))?;
        sr::save(&object, &dir.join(format!("nodule-{number}.dcm")))?;
        written += 1;
    }
    Ok(written)
}

/// The findings table and the answer line.
fn print_table(a: &Analysis) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let [n, h, w] = a.shape;
    writeln!(out, "series     {}", a.series_uid)?;
    writeln!(out, "shape      {n} × {h} × {w} (index, row, column)")?;
    for warning in &a.warnings {
        writeln!(out, "warning    {warning}")?;
    }
    let malignancy = a
        .models
        .iter()
        .find(|m| m.role == engine::ModelRole::Malignancy)
        .map_or("?", |m| m.name.as_str());
    writeln!(
        out,
        "candidates {}, nodules {} (p_nodule > 0.5), malignancy by {malignancy}",
        a.candidates.len(),
        a.findings.len()
    )?;
    if !a.suppressed.is_empty() {
        let count = |r: SuppressReason| a.suppressed.iter().filter(|s| s.reason == r).count();
        writeln!(
            out,
            "suppressed {} (merged fragments {}, outside the lung {}, under {} mm {})",
            a.suppressed.len(),
            count(SuppressReason::Merged),
            count(SuppressReason::OutsideLung),
            ReduceOptions::default().min_mean_diameter_mm,
            count(SuppressReason::BelowSizeFloor)
        )?;
    }
    if !a.findings.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "{:>3} {:>9} {:>9} {:>9} {:>8} {:>6} {:>6} {:>6} {:>9} {:>5} {:>5} {:>12} {:>4} {:>8} {:>11}",
            "#", "x mm", "y mm", "z mm", "diam mm", "long", "short", "mean", "vol mm3", "HU", "max",
            "type", "LR", "p_nodule", "p_malignant"
        )?;
        for (k, f) in a.findings.iter().enumerate() {
            let [x, y, z] = f.center_xyz;
            write!(
                out,
                "{:>3} {x:>9.1} {y:>9.1} {z:>9.1} {:>8.1}",
                k + 1,
                f.diameter_mm
            )?;
            match &f.measurements {
                Some(m) => write!(
                    out,
                    " {:>6.1} {:>6.1} {:>6.1} {:>9.0} {:>5.0} {:>5.0} {:>12}",
                    m.long_axis_mm,
                    m.short_axis_mm,
                    m.mean_diameter_mm,
                    m.volume_mm3,
                    m.mean_hu,
                    m.max_hu,
                    m.nodule_type.as_str()
                )?,
                None => write!(
                    out,
                    " {:>6} {:>6} {:>6} {:>9} {:>5} {:>5} {:>12}",
                    "-", "-", "-", "-", "-", "-", "-"
                )?,
            }
            writeln!(
                out,
                " {:>4} {:>8.3} {:>11.3}",
                f.lung_rads.map_or("-", |c| c.as_str()),
                f.p_nodule,
                f.p_malignant
            )?;
        }
        writeln!(out)?;
    }
    if let Some(category) = a.lung_rads {
        writeln!(
            out,
            "Lung-RADS v2022 (baseline, by noduled): {category} ({})",
            category.management()
        )?;
    }
    let s = &a.seconds;
    writeln!(
        out,
        "seconds    load {:.1}, segment {:.1}, group {:.1}, classify {:.1}, measure {:.1}, total {:.1} ({} threads)",
        s.load, s.segment, s.group, s.classify, s.measure, s.total, a.threads
    )?;
    if a.malignant_present {
        writeln!(
            out,
            "Malignant nodules present: yes ({})",
            a.malignant_count
        )
    } else {
        writeln!(out, "Malignant nodules present: no")
    }
}
