//! Resolving the model flags shared by `analyze`, `eval`, `serve` and `demo` (`--seg-model`, `--nodule-model`,
//! `--malignancy-model`) against the configured defaults, in one place so both commands pick the
//! same files.

use anyhow::Context as _;
use noduled::config::{Config, PipelineConfig};
use noduled::pipeline::{Pipeline, PipelineOptions};
use std::path::{Path, PathBuf};

/// The `--malignancy-model` value selecting the diameter baseline.
pub const DIAMETER: &str = "diameter";

/// The three model choices: `malignancy: None` is the diameter baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPaths {
    pub segmentation: PathBuf,
    pub nodule: PathBuf,
    pub malignancy: Option<PathBuf>,
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
        "no {} (the default models are missing from models/): pass {flag}, e.g. {flag} {example}",
        default.display()
    )
}

/// Resolves the flags' values (each `None` when not given) against `config`.
pub fn resolve(
    seg_model: Option<&Path>,
    nodule_model: Option<&Path>,
    malignancy_model: Option<&str>,
    config: &Config,
) -> anyhow::Result<ModelPaths> {
    let segmentation = model_path(
        seg_model,
        config.model_path(&config.pipeline.segmentation_model),
        "--seg-model",
        "../shared/models/book/seg_unet.onnx",
    )?;
    let nodule = model_path(
        nodule_model,
        config.model_path(&config.pipeline.nodule_model),
        "--nodule-model",
        "../shared/models/book/nodule_cls.onnx",
    )?;
    let malignancy = match malignancy_model {
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
    Ok(ModelPaths {
        segmentation,
        nodule,
        malignancy,
    })
}

/// The model and compute flags `analyze`, `serve` and `demo` share.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ModelFlags {
    /// Segmentation U-Net (ONNX, input N×7×H×W) [default: models/segmentation.onnx].
    #[arg(long, value_name = "P")]
    pub seg_model: Option<PathBuf>,
    /// Nodule classifier (ONNX, input N×1×32×48×48) [default: models/nodule.onnx].
    #[arg(long, value_name = "P")]
    pub nodule_model: Option<PathBuf>,
    /// Malignancy classifier (ONNX, input N×1×32×48×48), or `diameter` for the book's diameter
    /// baseline [default: models/malignancy.onnx if present, else diameter].
    #[arg(long, value_name = "P|diameter")]
    pub malignancy_model: Option<String>,
    /// Worker threads for inference [default: all cores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// The book's processing with no shortcut: any speed-up that could change candidates is off,
    /// and every classifier nodule is a finding (no fragment merging, lung mask or size floor).
    #[arg(long)]
    pub exact: bool,
    /// Inference engine: tract, or ort / ort-cuda in builds with those features [default: the
    /// configuration's pipeline.engine, tract].
    #[arg(long, value_name = "NAME")]
    pub engine: Option<String>,
}

impl ModelFlags {
    /// Resolves the flags against the configuration's defaults and loads the pipeline.
    pub fn load_pipeline(&self, config: &Config) -> anyhow::Result<Pipeline> {
        let models = resolve(
            self.seg_model.as_deref(),
            self.nodule_model.as_deref(),
            self.malignancy_model.as_deref(),
            config,
        )?;
        let options = PipelineOptions {
            exact: self.exact,
            threads: self.threads.map_or(config.pipeline.threads, usize::from),
            regions: config.pipeline.segment_regions,
        };
        let engine = self.engine.as_deref().unwrap_or(&config.pipeline.engine);
        Pipeline::load_with_engine(
            engine,
            &models.segmentation,
            &models.nodule,
            models.malignancy.as_deref(),
            options,
        )
        .map(|pipeline| pipeline.with_caveat_policies(config.caveats))
        .context("cannot load the models")
    }
}
