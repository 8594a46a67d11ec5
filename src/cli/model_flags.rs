//! Resolving the model flags shared by `analyze` and `eval` (`--seg-model`, `--nodule-model`,
//! `--malignancy-model`) against the configured defaults, in one place so both commands pick the
//! same files.

use noduled::config::{Config, PipelineConfig};
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
        "no {} (no default models ship yet): {flag} is required until they do, e.g. {flag} {example}",
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
