//! `noduled models`: which models `analyze` would use, and where they come from — role, input,
//! validation metrics, the train/val series of their split and their data set — read from the
//! `noduled.*` ONNX metadata that `training/export.py` and `training/convert_book_weights.py`
//! write. Each file is loaded as for an analysis, so a model that does not fit its slot (wrong
//! `noduled.role` or input shape) is refused here with the same message.

use anyhow::Context;
use noduled::config::Config;
use noduled::engine::{self, format_shape, ModelInfo, ModelRole};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use super::model_flags::DIAMETER;

#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
Without flags, lists the models `noduled analyze` uses by default: models/segmentation.onnx, \
models/nodule.onnx and models/malignancy.onnx (the diameter baseline when that file is absent), \
or those `[pipeline]` in --config FILE names. The flags inspect other files instead.

With --json the list is a JSON array of objects with role, file, sha256, input, metrics, \
train_series, val_series and source (the noduled.* metadata; null where a file has none).")]
pub struct Args {
    /// Print JSON (a list of objects) instead of the table.
    #[arg(long)]
    json: bool,
    /// Segmentation model to inspect [default: the configured one].
    #[arg(long, value_name = "P")]
    seg_model: Option<PathBuf>,
    /// Nodule classifier to inspect [default: the configured one].
    #[arg(long, value_name = "P")]
    nodule_model: Option<PathBuf>,
    /// Malignancy model to inspect, or `diameter` [default: the configured one].
    #[arg(long, value_name = "P|diameter")]
    malignancy_model: Option<String>,
}

/// One model in use, as `--json` prints it.
#[derive(Debug, Serialize)]
struct Entry {
    role: ModelRole,
    /// File name, or `diameter` for the diameter baseline.
    name: String,
    /// Path it was loaded from (absent for the baseline).
    file: Option<PathBuf>,
    sha256: Option<String>,
    /// The ONNX input, e.g. `ct_slices [batch, 7, height, width]`.
    input: Option<String>,
    /// `noduled.input`: shape, HU clamp, ...
    declared_input: Option<Value>,
    /// `noduled.metrics`: validation metrics.
    metrics: Option<Value>,
    /// `noduled.train_series`: SeriesInstanceUIDs the model was trained on.
    train_series: Option<Value>,
    /// `noduled.val_series`: SeriesInstanceUIDs it was validated on.
    val_series: Option<Value>,
    /// `noduled.source`: data set, synthetic or not, code revision, manifest digest.
    source: Option<Value>,
    /// `noduled.pretrained`: the weights it started from (their series are not listed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pretrained: Option<Value>,
    /// Other metadata properties, verbatim.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    other_metadata: BTreeMap<String, String>,
}

/// An entry from a loaded model; its provenance comes from [`ModelInfo::provenance`], so a
/// malformed `noduled.*` property is refused here as `eval`'s leak guard would refuse it.
fn entry(role: ModelRole, info: &ModelInfo) -> anyhow::Result<Entry> {
    let provenance = info.provenance()?;
    let known = [
        "noduled.role",
        "noduled.input",
        "noduled.metrics",
        "noduled.train_series",
        "noduled.val_series",
        "noduled.source",
        "noduled.pretrained",
    ];
    let series = |list: &noduled::engine::provenance::SeriesList| serde_json::to_value(list).ok();
    Ok(Entry {
        role,
        name: info.name.clone(),
        file: Some(info.path.clone()),
        sha256: Some(info.sha256.clone()),
        input: Some(format!(
            "{} {}",
            info.input_name,
            format_shape(&info.input_shape)
        )),
        declared_input: provenance.input.clone(),
        metrics: provenance.metrics.clone(),
        train_series: series(&provenance.train_series),
        val_series: series(&provenance.val_series),
        source: provenance.source.clone(),
        pretrained: provenance.pretrained.clone(),
        other_metadata: info
            .metadata
            .iter()
            .filter(|(k, _)| !known.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    })
}

fn diameter_entry() -> Entry {
    Entry {
        role: ModelRole::Malignancy,
        name: DIAMETER.to_string(),
        file: None,
        sha256: None,
        input: None,
        declared_input: None,
        metrics: None,
        train_series: None,
        val_series: None,
        source: Some(Value::String(
            "the book's diameter baseline: p = 1 / (1 + exp(-(d - 10.55 mm) / 1.5 mm))".into(),
        )),
        pretrained: None,
        other_metadata: BTreeMap::new(),
    }
}

/// The models `analyze` would use with the same flags and configuration.
fn resolve(args: &Args, config: &Config) -> anyhow::Result<Vec<(ModelRole, Option<PathBuf>)>> {
    let paths = super::model_flags::resolve(
        args.seg_model.as_deref(),
        args.nodule_model.as_deref(),
        args.malignancy_model.as_deref(),
        config,
    )?;
    Ok(vec![
        (ModelRole::Segmentation, Some(paths.segmentation)),
        (ModelRole::Nodule, Some(paths.nodule)),
        (ModelRole::Malignancy, paths.malignancy),
    ])
}

pub fn run(args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    let engine = engine::default_engine();
    let mut entries = Vec::new();
    for (role, path) in resolve(&args, config)? {
        match path {
            None => entries.push(diameter_entry()),
            Some(path) => {
                let model = engine::load_for_role(engine.as_ref(), &path, role)
                    .with_context(|| format!("cannot load the {role} model"))?;
                entries.push(entry(role, model.info())?);
            }
        }
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&entries)?)?;
    } else {
        for e in &entries {
            print_entry(&mut out, e)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A JSON array's length, for the table.
fn count(v: &Option<Value>) -> String {
    match v {
        Some(Value::Array(a)) => a.len().to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "not recorded".to_string(),
    }
}

/// The scalar metrics (numbers and strings) as `key value` pairs.
fn scalars(v: &Option<Value>) -> String {
    let Some(Value::Object(map)) = v else {
        return "none recorded".to_string();
    };
    let parts: Vec<String> = map
        .iter()
        .filter_map(|(k, v)| match v {
            Value::Number(n) => Some(match n.as_f64() {
                Some(f) if n.is_f64() => format!("{k} {f:.3}"),
                _ => format!("{k} {n}"),
            }),
            Value::String(s) => Some(format!("{k} {s}")),
            _ => None,
        })
        .collect();
    if parts.is_empty() {
        "none recorded".to_string()
    } else {
        parts.join(", ")
    }
}

fn print_entry(out: &mut impl Write, e: &Entry) -> std::io::Result<()> {
    writeln!(out, "{}: {}", e.role, e.name)?;
    if let Some(file) = &e.file {
        writeln!(out, "  file          {}", file.display())?;
    }
    if let Some(sha) = &e.sha256 {
        writeln!(out, "  sha256        {sha}")?;
    }
    if let Some(input) = &e.input {
        writeln!(out, "  input         {input}")?;
    }
    if e.file.is_some() {
        writeln!(out, "  metrics       {}", scalars(&e.metrics))?;
        writeln!(out, "  train series  {}", count(&e.train_series))?;
        writeln!(out, "  val series    {}", count(&e.val_series))?;
    }
    match &e.source {
        Some(Value::Object(map)) => {
            let get = |k: &str| map.get(k).and_then(Value::as_str).unwrap_or("?");
            let synthetic = map.get("synthetic").and_then(Value::as_bool) == Some(true);
            writeln!(
                out,
                "  data          {}{}",
                get("dataset"),
                if synthetic {
                    " (synthetic: not for clinical use)"
                } else {
                    ""
                }
            )?;
            if let Some(m) = map.get("manifest_sha256").and_then(Value::as_str) {
                writeln!(out, "  manifest      sha256 {m}")?;
            }
            if let Some(code) = map.get("code").and_then(Value::as_str) {
                writeln!(out, "  code          {code}")?;
            }
        }
        Some(Value::String(s)) => writeln!(out, "  source        {s}")?,
        _ => writeln!(out, "  source        not recorded")?,
    }
    if let Some(pretrained) = &e.pretrained {
        let from = match pretrained {
            Value::Object(map) => map
                .get("from")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            other => other.to_string(),
        };
        writeln!(
            out,
            "  started from  {from} (its training series are not listed: the leak guard cannot vouch for them)"
        )?;
    }
    writeln!(out)
}
