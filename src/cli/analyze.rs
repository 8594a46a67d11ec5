//! `noduled analyze`: run the whole pipeline on one CT series folder and answer "are malignant
//! nodules present?", as a findings table (and optionally JSON).

use anyhow::Context;
use noduled::config::{Config, PipelineConfig};
use noduled::dicom;
use noduled::dicom::sr::{self, SrOptions};
use noduled::engine;
use noduled::pipeline::{Analysis, Pipeline, PipelineOptions, Stage};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// The `--malignancy-model` value selecting the diameter baseline.
const DIAMETER: &str = "diameter";

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
    /// Segmentation U-Net (ONNX, input N×7×H×W) [default: models/segmentation.onnx].
    #[arg(long, value_name = "P")]
    seg_model: Option<PathBuf>,
    /// Nodule classifier (ONNX, input N×1×32×48×48) [default: models/nodule.onnx].
    #[arg(long, value_name = "P")]
    nodule_model: Option<PathBuf>,
    /// Malignancy classifier (ONNX, input N×1×32×48×48), or `diameter` for the book's diameter
    /// baseline [default: models/malignancy.onnx if present, else diameter].
    #[arg(long, value_name = "P|diameter")]
    malignancy_model: Option<String>,
    /// Also write the analysis as JSON to FILE (`-` for stdout, instead of the table).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Also write the findings as a DICOM Comprehensive 3D SR (TID 1500) to FILE.
    #[arg(long, value_name = "FILE")]
    sr: Option<PathBuf>,
    /// Worker threads for inference [default: all cores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// The book's processing with no shortcut: any speed-up that could change candidates is off.
    #[arg(long)]
    exact: bool,
    /// Inference engine: tract, or ort / ort-cuda in builds with those features [default: the
    /// configuration's pipeline.engine, tract].
    #[arg(long, value_name = "NAME")]
    engine: Option<String>,
}

/// The model at `flag`, or the configured default if it exists, or an error telling to pass the flag.
fn model_path(
    given: Option<&Path>,
    default: PathBuf,
    flag: &str,
    example: &str,
) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    if default.is_file() {
        return Ok(default);
    }
    anyhow::bail!(
        "no {} (no default models ship yet): {flag} is required until they do, e.g. {flag} {example}",
        default.display()
    )
}

pub fn run(args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    let seg = model_path(
        args.seg_model.as_deref(),
        config.model_path(&config.pipeline.segmentation_model),
        "--seg-model",
        "../shared/models/book/seg_unet.onnx",
    )?;
    let nodule = model_path(
        args.nodule_model.as_deref(),
        config.model_path(&config.pipeline.nodule_model),
        "--nodule-model",
        "../shared/models/book/nodule_cls.onnx",
    )?;
    let malignancy = match args.malignancy_model.as_deref() {
        Some(DIAMETER) => None,
        Some(path) => Some(PathBuf::from(path)),
        None => match config.pipeline.malignancy_model.as_str() {
            DIAMETER => None,
            // The default file name falls back to the baseline while no model ships; a file the
            // operator configured must exist (Models::load says so when it does not).
            file => Some(config.model_path(Path::new(file)))
                .filter(|p| p.is_file() || file != PipelineConfig::default().malignancy_model),
        },
    };

    let options = PipelineOptions {
        exact: args.exact,
        threads: args.threads.map_or(config.pipeline.threads, usize::from),
    };
    let engine = args.engine.as_deref().unwrap_or(&config.pipeline.engine);
    let pipeline =
        Pipeline::load_with_engine(engine, &seg, &nodule, malignancy.as_deref(), options)
            .context("cannot load the models")?;

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
    if !a.findings.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "{:>3} {:>9} {:>9} {:>9} {:>8} {:>8} {:>11}",
            "#", "x mm", "y mm", "z mm", "diam mm", "p_nodule", "p_malignant"
        )?;
        for (k, f) in a.findings.iter().enumerate() {
            let [x, y, z] = f.center_xyz;
            writeln!(
                out,
                "{:>3} {x:>9.1} {y:>9.1} {z:>9.1} {:>8.1} {:>8.3} {:>11.3}",
                k + 1,
                f.diameter_mm,
                f.p_nodule,
                f.p_malignant
            )?;
        }
        writeln!(out)?;
    }
    let s = &a.seconds;
    writeln!(
        out,
        "seconds    load {:.1}, segment {:.1}, group {:.1}, classify {:.1}, total {:.1} ({} threads)",
        s.load, s.segment, s.group, s.classify, s.total, a.threads
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
