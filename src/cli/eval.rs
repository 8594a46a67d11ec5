//! `noduled eval`: run the pipeline over an annotated dataset and report the book's confusion
//! matrix, FROC/CPM, false positives per scan and ROC/AUCs (with the diameter baseline), refusing
//! data the models were trained on (see `noduled::eval`).

use anyhow::Context;
use noduled::config::Config;
use noduled::eval::cache::SegmentationCache;
use noduled::eval::{self, matching, EvalOptions, Progress, Report};
use noduled::pipeline::{Pipeline, PipelineOptions, ProgressFn, Stage};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
Dataset: DATASET_DIR holds CT series folders (searched recursively); --annotations is a LUNA16-style \
CSV `seriesuid,coordX,coordY,coordZ,diameter_mm[,mal_bool]` in patient mm (what `noduled phantom` \
writes; ../shared/data/lidc is laid out this way). With --split (a manifest `series_uid,split`, \
split = train | val | test) only the dataset's val and test series are evaluated.

Matching: a candidate matches a nodule within 0.7 × its diameter (the book's rule). FROC/CPM as \
LUNA16 (sensitivity at 1/8 .. 8 false positives per scan over all candidates' p_nodule); \
false positives per scan = nodules (p_nodule > 0.5) matching no annotation. AUCs: nodule classifier \
over candidates; malignancy model and diameter baseline (annotated diameter) over the annotated \
nodules a candidate matched; an AUC needs both classes and is left out (with a note) otherwise.

Leak guard: if an evaluated series is in a model's noduled.train_series metadata, or marked train \
in --split, eval refuses with exit status 3 (no figures). --allow-leak runs anyway and stamps every \
output LEAKY. Models whose training series are unknown (the book's), or that started from such \
weights (noduled.pretrained), are reported as unverified.

Cache: the segmentation of each series is cached (keyed by the volume, the segmentation model's \
SHA-256 and --exact), so re-running with another nodule or malignancy model skips the U-Net.

Example:
  noduled eval ../shared/data/lidc --annotations ../shared/data/lidc/annotations.csv \\
    --seg-model ../shared/models/book/seg_unet.onnx --nodule-model ../shared/models/book/nodule_cls.onnx \\
    --malignancy-model diameter --json eval.json --plots plots/")]
pub struct Args {
    /// Folder of CT series folders.
    dataset_dir: PathBuf,
    /// Annotations CSV [default: DATASET_DIR/annotations.csv].
    #[arg(long, value_name = "CSV")]
    annotations: Option<PathBuf>,
    /// Split manifest (`series_uid,split`): evaluate only its val and test series.
    #[arg(long, value_name = "CSV")]
    split: Option<PathBuf>,
    /// Segmentation U-Net (ONNX) [default: models/segmentation.onnx].
    #[arg(long, value_name = "P")]
    seg_model: Option<PathBuf>,
    /// Nodule classifier (ONNX) [default: models/nodule.onnx].
    #[arg(long, value_name = "P")]
    nodule_model: Option<PathBuf>,
    /// Malignancy classifier (ONNX), or `diameter` for the book's diameter baseline
    /// [default: models/malignancy.onnx if present, else diameter].
    #[arg(long, value_name = "P|diameter")]
    malignancy_model: Option<String>,
    /// Write the report as JSON to FILE (`-` for stdout, instead of the table).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write FROC and ROC plots (SVG and PNG) into DIR.
    #[arg(long, value_name = "DIR")]
    plots: Option<PathBuf>,
    /// Worker threads for inference [default: all cores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// Evaluate even on series the models were trained on; every output is stamped LEAKY.
    #[arg(long)]
    allow_leak: bool,
    /// Segmentation cache folder [default: $XDG_CACHE_HOME/noduled/segmentation, else
    /// ~/.cache/noduled/segmentation].
    #[arg(long, value_name = "DIR", conflicts_with = "no_cache")]
    cache: Option<PathBuf>,
    /// Do not read or write the segmentation cache.
    #[arg(long)]
    no_cache: bool,
    /// The book's processing with no shortcut (as `analyze --exact`).
    #[arg(long)]
    exact: bool,
}

/// Exit status of a refused (leaky) evaluation.
const EXIT_LEAK: u8 = 3;

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("noduled").join("segmentation"))
}

/// A progress bar over series, with the current stage and its progress in the message.
struct Bar {
    bar: Option<indicatif::ProgressBar>,
    stage: Box<dyn Fn(Stage, usize, usize) + Sync + Send>,
}

impl Bar {
    fn new() -> Bar {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "series {pos}/{len} [{bar:30}] {elapsed} {msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        let stage_bar = bar.clone();
        Bar {
            bar,
            stage: Box::new(move |stage: Stage, done: usize, total: usize| {
                if let Some(bar) = &stage_bar {
                    bar.set_message(format!("{} {done}/{total}", stage.as_str()));
                }
            }),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Progress for Bar {
    fn series(&self, index: usize, total: usize, series_uid: &str, cached: bool) {
        tracing::info!(
            series = series_uid,
            index = index + 1,
            total,
            segmentation_cached = cached,
            "evaluating"
        );
        if let Some(bar) = &self.bar {
            bar.set_length(total as u64);
            bar.set_position(index as u64);
        }
    }

    fn stage(&self) -> ProgressFn<'_> {
        &*self.stage
    }
}

pub fn run(args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    let models = super::model_flags::resolve(
        args.seg_model.as_deref(),
        args.nodule_model.as_deref(),
        args.malignancy_model.as_deref(),
        config,
    )?;
    let annotations_path = args
        .annotations
        .clone()
        .unwrap_or_else(|| args.dataset_dir.join("annotations.csv"));
    let annotations = eval::read_annotations(&annotations_path)?;
    let split = match &args.split {
        Some(path) => Some((path.clone(), eval::read_split(path)?)),
        None => None,
    };
    let cache = if args.no_cache {
        None
    } else {
        args.cache
            .clone()
            .or_else(default_cache_dir)
            .map(SegmentationCache::new)
    };
    let options = PipelineOptions {
        exact: args.exact,
        threads: args.threads.map_or(config.pipeline.threads, usize::from),
        regions: config.pipeline.segment_regions,
    };
    let pipeline = Pipeline::load(
        &models.segmentation,
        &models.nodule,
        models.malignancy.as_deref(),
        options,
    )
    .context("cannot load the models")?;
    let eval_options = EvalOptions {
        split,
        allow_leak: args.allow_leak,
        cache,
        rules: config.series.clone(),
    };

    let bar = Bar::new();
    let result = eval::evaluate(
        &pipeline,
        &args.dataset_dir,
        &annotations,
        &eval_options,
        &bar,
    );
    bar.finish();
    let report = match result {
        Ok(report) => report,
        Err(eval::EvalError::Leak(message)) => {
            eprintln!("noduled: error: {message}");
            return Ok(ExitCode::from(EXIT_LEAK));
        }
        Err(err) => {
            return Err(err)
                .with_context(|| format!("cannot evaluate {}", args.dataset_dir.display()))
        }
    };
    if let Some(stamp) = report.leak_stamp() {
        tracing::warn!("{stamp}");
    }

    let mut plots = Vec::new();
    if let Some(dir) = &args.plots {
        plots = eval::plots::write_plots(&report, dir)?;
    }
    let json_to_stdout = args.json.as_deref() == Some(Path::new("-"));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)? + "\n";
        if json_to_stdout {
            std::io::stdout().write_all(text.as_bytes())?;
        } else {
            std::fs::write(path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    if !json_to_stdout {
        print_report(&report, &plots)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn opt(v: Option<f64>) -> String {
    v.map_or("n/a".to_string(), |v| format!("{v:.3}"))
}

/// The human-readable report.
fn print_report(r: &Report, plots: &[PathBuf]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if let Some(stamp) = r.leak_stamp() {
        writeln!(out, "{stamp}")?;
        writeln!(out)?;
    }
    writeln!(out, "scans {}, annotated nodules {}", r.scans, r.nodules)?;
    for s in &r.series {
        let found = s
            .nodules
            .iter()
            .filter(|n| n.outcome != matching::COLUMNS[0] && n.outcome != matching::COLUMNS[1])
            .count();
        writeln!(
            out,
            "  {}  candidates {:>4}  nodules {:>3}  false positives {:>3}  annotated found {}/{}{}",
            s.series_uid,
            s.candidates,
            s.findings,
            s.false_positives,
            found,
            s.nodules.len(),
            if s.segmentation_cached {
                "  (segmentation cached)"
            } else {
                ""
            }
        )?;
    }
    writeln!(out)?;
    writeln!(out, "Confusion matrix (rows: truth; columns: outcome)")?;
    write!(out, "{:>12}", "")?;
    for c in matching::COLUMNS {
        write!(out, " {c:>19}")?;
    }
    writeln!(out)?;
    for (label, row) in matching::ROWS.iter().zip(&r.confusion) {
        write!(out, "{label:>12}")?;
        for v in row {
            write!(out, " {v:>19}")?;
        }
        writeln!(out)?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "False positives per scan (p_nodule > 0.5): {:.2}",
        r.fp_per_scan
    )?;
    match &r.froc {
        Some(f) => {
            let parts: Vec<String> = f
                .fp_rates
                .iter()
                .zip(&f.sensitivity)
                .map(|(rate, s)| format!("{rate}: {s:.3}"))
                .collect();
            writeln!(out, "FROC sensitivity at FP/scan  {}", parts.join("  "))?;
            writeln!(out, "CPM {:.3}", f.cpm)?;
        }
        None => writeln!(out, "FROC n/a")?,
    }
    writeln!(
        out,
        "AUC nodule classifier {}, malignancy {}, diameter baseline {}",
        opt(r.auc_nodule),
        opt(r.auc_malignancy),
        opt(r.auc_diameter_baseline)
    )?;
    for m in &r.models {
        writeln!(
            out,
            "model {:<12} {} {}",
            m.role.as_str(),
            m.name,
            m.sha256.as_deref().unwrap_or("")
        )?;
    }
    for note in &r.notes {
        writeln!(out, "note: {note}")?;
    }
    for p in plots {
        writeln!(out, "plot: {}", p.display())?;
    }
    if let Some(stamp) = r.leak_stamp() {
        writeln!(out)?;
        writeln!(out, "{stamp}")?;
    }
    Ok(())
}
