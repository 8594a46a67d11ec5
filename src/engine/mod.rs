//! Inference engines: load an ONNX file once, run batches of float32 tensors from many threads.
//!
//! The pipeline only sees the [`Engine`] and [`Model`] traits, so another runtime (onnxruntime behind
//! a cargo feature, a GPU engine) can be added beside [`tract::TractEngine`] without touching it.
//! A loaded model carries its identity ([`ModelInfo`]: file name, SHA-256, ONNX `metadata_props`,
//! declared input shape), which every report repeats so a finding can be traced to the exact weights.
//! [`load_for_role`] checks that a model's declared input fits the job it is loaded for
//! ([`ModelRole`]), so passing the classifier as the segmentation model fails at load, not mid-run.

#[cfg(feature = "ort")]
pub mod ort;
pub mod provenance;
pub mod tract;

use ndarray::{ArrayD, ArrayViewD};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Everything that can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// (The I/O error is in the message, not chained as a source, so it is printed once.)
    #[error("cannot read model file {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("model file {path} is not a usable ONNX model: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("model {name} cannot be used as the {role} model: {reason}")]
    WrongRole {
        name: String,
        role: ModelRole,
        reason: String,
    },
    #[error("model {name}: input shape {got:?} does not match the model's input {declared}")]
    InputShape {
        name: String,
        got: Vec<usize>,
        declared: String,
    },
    #[error("model {name} has no output named {output:?} (outputs: {available})")]
    MissingOutput {
        name: String,
        output: String,
        available: String,
    },
    #[error("running model {name} failed: {message}")]
    Run { name: String, message: String },
    #[error("unknown inference engine {name:?}: this build has {}", available_engines().join(", "))]
    UnknownEngine { name: String },
}

/// One dimension of a model's declared input: a fixed size or a named free one (`batch`, `height`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(usize),
    Free(String),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Free(name) => f.write_str(name),
        }
    }
}

/// Formats a declared shape as `[batch, 7, height, width]`.
pub fn format_shape(dims: &[Dim]) -> String {
    let parts: Vec<String> = dims.iter().map(Dim::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// The identity and interface of a loaded model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Where it was loaded from.
    pub path: PathBuf,
    /// The file name (`seg_unet.onnx`).
    pub name: String,
    /// Lower-case hex SHA-256 of the file's bytes.
    pub sha256: String,
    /// The ONNX `metadata_props` (the book files carry `noduled.role`, `noduled.input`, ...).
    pub metadata: BTreeMap<String, String>,
    /// Name of the (single) input.
    pub input_name: String,
    /// Declared input shape.
    pub input_shape: Vec<Dim>,
    /// Names of the outputs, in the model's order.
    pub output_names: Vec<String>,
}

impl ModelInfo {
    /// Whether `shape` fits the declared input (fixed dimensions equal, free ones anything, none
    /// zero): every engine checks it before running, so a bad shape is an error, not a crash.
    pub fn check_input_shape(&self, shape: &[usize]) -> Result<(), EngineError> {
        let declared = &self.input_shape;
        let fits = shape.len() == declared.len()
            && shape.iter().zip(declared).all(|(n, d)| match d {
                Dim::Fixed(f) => f == n,
                Dim::Free(_) => true,
            });
        if fits && shape.iter().all(|&n| n > 0) {
            Ok(())
        } else {
            Err(EngineError::InputShape {
                name: self.name.clone(),
                got: shape.to_vec(),
                declared: format_shape(declared),
            })
        }
    }

    /// The `noduled.role` metadata property, if the file declares one.
    pub fn declared_role(&self) -> Option<&str> {
        self.metadata.get("noduled.role").map(String::as_str)
    }

    /// The crop spacing a crop model declares in `noduled.input` as `"crop_mm": [index, row,
    /// column]` (mm per crop voxel): its crops are then resampled to that spacing instead of cut from
    /// the CT's own voxels. `None` when it declares none (the book's models). A declaration that is
    /// not three positive, finite numbers is an error (the reason), so such a file is refused at
    /// load rather than fed crops it was not trained on.
    pub fn crop_mm(&self) -> Result<Option<[f64; 3]>, String> {
        let Some(text) = self.metadata.get(provenance::KEY_INPUT) else {
            return Ok(None);
        };
        let Ok(serde_json::Value::Object(input)) = serde_json::from_str(text) else {
            return Ok(None); // free-text input descriptions declare no grid
        };
        let Some(value) = input.get("crop_mm") else {
            return Ok(None);
        };
        let bad =
            || format!("its noduled.input crop_mm {value} is not three positive numbers (mm)");
        let serde_json::Value::Array(items) = value else {
            return Err(bad());
        };
        let numbers: Vec<f64> = items.iter().filter_map(serde_json::Value::as_f64).collect();
        match numbers[..] {
            [z, y, x] if items.len() == 3 && numbers.iter().all(|v| v.is_finite() && *v > 0.0) => {
                Ok(Some([z, y, x]))
            }
            _ => Err(bad()),
        }
    }
}

/// The named outputs of one run, in the model's order.
#[derive(Debug, Clone, Default)]
pub struct Outputs(pub Vec<(String, ArrayD<f32>)>);

impl Outputs {
    /// The output called `name`.
    pub fn get(&self, name: &str) -> Option<&ArrayD<f32>> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, a)| a)
    }

    /// The output called `name`, or an error naming the model and the outputs it has.
    pub fn require(&self, model: &str, name: &str) -> Result<&ArrayD<f32>, EngineError> {
        self.get(name).ok_or_else(|| EngineError::MissingOutput {
            name: model.to_string(),
            output: name.to_string(),
            available: self
                .0
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// The last output (the reference pipeline reads `out[-1]`).
    pub fn last(&self) -> Option<&ArrayD<f32>> {
        self.0.last().map(|(_, a)| a)
    }
}

/// A model ready to run. Implementations are shared by worker threads (`Send + Sync`); each `run`
/// call keeps its own scratch state, so concurrent calls do not contend.
pub trait Model: Send + Sync + fmt::Debug {
    /// Identity and interface.
    fn info(&self) -> &ModelInfo;

    /// Runs one batch. `input` must have the declared rank, and the declared size on every fixed
    /// dimension; the engine prepares (and caches) an optimised plan for each new concrete shape.
    fn run(&self, input: ArrayViewD<'_, f32>) -> Result<Outputs, EngineError>;

    /// Prepares the plan for `shape` now, so the first `run` does not pay for optimisation.
    fn prepare(&self, shape: &[usize]) -> Result<(), EngineError>;
}

/// A runtime able to load ONNX files.
pub trait Engine: Send + Sync {
    /// Name and version, e.g. `tract 0.23.9`.
    fn name(&self) -> String;

    /// Loads (parses, checks) an ONNX file.
    fn load(&self, path: &Path) -> Result<Arc<dyn Model>, EngineError>;
}

/// The engine noduled uses unless told otherwise (tract: pure Rust, no native libraries).
pub fn default_engine() -> Box<dyn Engine> {
    Box::new(tract::TractEngine::new())
}

/// The engine names this build accepts (`--engine`, `pipeline.engine`): `tract` always, `ort` with
/// `--features ort`, `ort-cuda` with `--features cuda`.
pub fn available_engines() -> Vec<&'static str> {
    let mut names = vec!["tract"];
    if cfg!(feature = "ort") {
        names.push("ort");
    }
    if cfg!(feature = "cuda") {
        names.push("ort-cuda");
    }
    names
}

/// The engine called `name` (see [`available_engines`]); `threads` is the intra-op thread count of
/// engines that parallelise each call themselves (onnxruntime; 0: one per core), ignored by tract.
pub fn engine_named(name: &str, threads: usize) -> Result<Box<dyn Engine>, EngineError> {
    let _ = threads;
    match name {
        "tract" => Ok(Box::new(tract::TractEngine::new())),
        #[cfg(feature = "ort")]
        "ort" => Ok(Box::new(ort::OrtEngine::new(threads))),
        #[cfg(feature = "cuda")]
        "ort-cuda" => Ok(Box::new(ort::OrtEngine::cuda(threads, 0))),
        _ => Err(EngineError::UnknownEngine {
            name: name.to_string(),
        }),
    }
}

/// What a model is loaded for; each role has an input shape it must accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelRole {
    /// Per-slice U-Net: input `N×7×H×W` (a slice and 3 context slices each side).
    Segmentation,
    /// Nodule / non-nodule classifier: input `N×1×32×48×48` crops.
    Nodule,
    /// Benign / malignant classifier: input `N×1×32×48×48` crops.
    Malignancy,
}

impl ModelRole {
    /// The `noduled.role` metadata value of this role.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelRole::Segmentation => "segmentation",
            ModelRole::Nodule => "nodule",
            ModelRole::Malignancy => "malignancy",
        }
    }

    /// The input this role needs, as text for error messages.
    pub fn expected_input(self) -> &'static str {
        match self {
            ModelRole::Segmentation => "[N, 7, H, W]",
            ModelRole::Nodule | ModelRole::Malignancy => "[N, 1, 32, 48, 48]",
        }
    }

    /// Checks a declared input shape: free dimensions are accepted where the role needs a size
    /// (they are fixed when the model runs), fixed ones must match.
    pub fn accepts(self, dims: &[Dim]) -> bool {
        let fits = |dim: &Dim, want: Option<usize>| match (dim, want) {
            (Dim::Free(_), _) | (Dim::Fixed(_), None) => true,
            (Dim::Fixed(n), Some(w)) => *n == w,
        };
        let want: &[Option<usize>] = match self {
            ModelRole::Segmentation => &[None, Some(7), None, None],
            ModelRole::Nodule | ModelRole::Malignancy => {
                &[None, Some(1), Some(32), Some(48), Some(48)]
            }
        };
        dims.len() == want.len() && dims.iter().zip(want).all(|(d, w)| fits(d, *w))
    }
}

impl fmt::Display for ModelRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Loads `path` with `engine` and checks that it can serve as the `role` model: its declared input
/// shape must fit the role, and a declared `noduled.role` (if any) must name this role.
pub fn load_for_role(
    engine: &dyn Engine,
    path: &Path,
    role: ModelRole,
) -> Result<Arc<dyn Model>, EngineError> {
    let model = engine.load(path)?;
    check_role(model.info(), role)?;
    Ok(model)
}

/// The checks of [`load_for_role`] on an already loaded model's identity.
pub fn check_role(info: &ModelInfo, role: ModelRole) -> Result<(), EngineError> {
    if !role.accepts(&info.input_shape) {
        return Err(EngineError::WrongRole {
            name: info.name.clone(),
            role,
            reason: format!(
                "its input {} is {}, the {role} model needs {}",
                info.input_name,
                format_shape(&info.input_shape),
                role.expected_input()
            ),
        });
    }
    if role != ModelRole::Segmentation {
        info.crop_mm().map_err(|reason| EngineError::WrongRole {
            name: info.name.clone(),
            role,
            reason,
        })?;
    }
    if let Some(declared) = info.declared_role() {
        if declared != role.as_str() {
            return Err(EngineError::WrongRole {
                name: info.name.clone(),
                role,
                reason: format!("its metadata declares noduled.role = {declared:?}"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free(name: &str) -> Dim {
        Dim::Free(name.into())
    }

    #[test]
    fn segmentation_role_needs_seven_channels() {
        let ok = [free("batch"), Dim::Fixed(7), free("h"), free("w")];
        assert!(ModelRole::Segmentation.accepts(&ok));
        let fixed = [
            Dim::Fixed(1),
            Dim::Fixed(7),
            Dim::Fixed(512),
            Dim::Fixed(512),
        ];
        assert!(ModelRole::Segmentation.accepts(&fixed));
        let wrong = [free("batch"), Dim::Fixed(1), free("h"), free("w")];
        assert!(!ModelRole::Segmentation.accepts(&wrong));
        let crop = [
            free("batch"),
            Dim::Fixed(1),
            Dim::Fixed(32),
            Dim::Fixed(48),
            Dim::Fixed(48),
        ];
        assert!(!ModelRole::Segmentation.accepts(&crop));
        assert!(ModelRole::Nodule.accepts(&crop));
        assert!(ModelRole::Malignancy.accepts(&crop));
        assert!(!ModelRole::Nodule.accepts(&ok));
    }

    #[test]
    fn engines_by_name() {
        assert!(engine_named("tract", 2).is_ok());
        let err = engine_named("tensorflow", 2).err().expect("unknown engine");
        assert!(err.to_string().contains("tract"), "{err}");
        assert_eq!(engine_named("ort", 1).is_ok(), cfg!(feature = "ort"));
    }

    /// A crop model (`[batch, 1, 32, 48, 48]`) with no metadata.
    fn crop_model() -> ModelInfo {
        ModelInfo {
            path: PathBuf::from("m.onnx"),
            name: "m.onnx".into(),
            sha256: String::new(),
            metadata: BTreeMap::new(),
            input_name: "ct_crop".into(),
            input_shape: vec![
                free("batch"),
                Dim::Fixed(1),
                Dim::Fixed(32),
                Dim::Fixed(48),
                Dim::Fixed(48),
            ],
            output_names: vec![],
        }
    }

    #[test]
    fn declared_role_must_agree() {
        let mut info = crop_model();
        assert!(check_role(&info, ModelRole::Nodule).is_ok());
        info.metadata.insert("noduled.role".into(), "nodule".into());
        assert!(check_role(&info, ModelRole::Nodule).is_ok());
        let err = check_role(&info, ModelRole::Malignancy).unwrap_err();
        assert!(err.to_string().contains("noduled.role"), "{err}");
        let err = check_role(&info, ModelRole::Segmentation).unwrap_err();
        assert!(err.to_string().contains("[N, 7, H, W]"), "{err}");
    }

    #[test]
    fn crop_spacing_is_read_and_a_bad_one_refused() {
        let mut info = crop_model();
        assert_eq!(info.crop_mm(), Ok(None));
        let mut declare = |input: &str| {
            info.metadata
                .insert(provenance::KEY_INPUT.into(), input.into());
            (info.crop_mm(), check_role(&info, ModelRole::Malignancy))
        };
        let (grid, role) =
            declare(r#"{"shape": [1, 1, 32, 48, 48], "crop_mm": [1.5, 0.75, 0.75]}"#);
        assert_eq!(grid, Ok(Some([1.5, 0.75, 0.75])));
        assert!(role.is_ok());
        assert_eq!(declare(r#"{"hu_clamp": [-1000, 1000]}"#).0, Ok(None));
        assert_eq!(declare("32x48x48 crops").0, Ok(None));
        for bad in [
            r#"{"crop_mm": [1.5, 0.75]}"#,
            r#"{"crop_mm": [1.5, 0, 0.75]}"#,
            r#"{"crop_mm": [1.5, "a", 0.75]}"#,
            r#"{"crop_mm": 1.0}"#,
        ] {
            let (grid, role) = declare(bad);
            assert!(grid.is_err(), "{bad}");
            let err = role.unwrap_err().to_string();
            assert!(err.contains("crop_mm"), "{bad}: {err}");
        }
    }
}
