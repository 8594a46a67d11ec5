//! The onnxruntime engine (`--features ort`, selected with `--engine ort` or `engine = "ort"`).
//!
//! onnxruntime is a C++ library: it is not linked in but loaded at run time (the `ort` crate's
//! `load-dynamic`), from `ORT_DYLIB_PATH` or else `libonnxruntime.so` on the library path, so a build
//! with the feature still starts on a machine without it and says clearly what is missing. The
//! `onnxruntime` PyPI wheel carries a usable `libonnxruntime.so` (`.ci/setup-perf.sh` installs it).
//!
//! With `--features cuda` the engine can register onnxruntime's CUDA execution provider (a CUDA
//! build of the library, e.g. the `onnxruntime-gpu` wheel, and the CUDA/cuDNN libraries are then
//! needed at run time); nodes CUDA cannot run fall back to the CPU provider.
//!
//! An onnxruntime session runs one call at a time here (`Session::run` needs `&mut`), and spreads
//! each call over its own `threads` intra-op threads: the pipeline's workers queue on the session,
//! which is how the onnxruntime reference pipeline runs too.

use super::{Dim, Engine, EngineError, Model, ModelInfo, Outputs};
use ndarray::{ArrayD, ArrayViewD, IxDyn};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{TensorRef, ValueType};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// Where onnxruntime is loaded from when `ORT_DYLIB_PATH` is not set.
pub const DEFAULT_DYLIB: &str = "libonnxruntime.so";

/// The process's onnxruntime environment (one per process), or why it could not be made.
static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// The library file the engine loads: `ORT_DYLIB_PATH`, else [`DEFAULT_DYLIB`].
pub fn dylib_path() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DYLIB))
}

fn environment() -> Result<&'static ort::environment::Environment, String> {
    ENVIRONMENT
        .get_or_init(|| {
            let path = dylib_path();
            let builder = ort::init_from(&path).map_err(|e| {
                format!(
                    "cannot load onnxruntime from {} ({e}); set ORT_DYLIB_PATH to libonnxruntime.so",
                    path.display()
                )
            })?;
            builder
                .with_name("noduled")
                .build()
                .map_err(|e| format!("cannot start onnxruntime: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Which onnxruntime execution provider runs the models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Provider {
    /// onnxruntime's CPU kernels.
    #[default]
    Cpu,
    /// The CUDA execution provider (`--features cuda`); CPU for nodes it cannot run.
    #[cfg(feature = "cuda")]
    Cuda {
        /// CUDA device ordinal.
        device: i32,
    },
}

/// The onnxruntime engine.
#[derive(Debug, Clone, Copy)]
pub struct OrtEngine {
    /// Intra-op threads of each session (0: onnxruntime's default, one per core).
    pub threads: usize,
    pub provider: Provider,
}

impl OrtEngine {
    /// A CPU engine whose sessions use `threads` intra-op threads (0: one per core).
    pub fn new(threads: usize) -> Self {
        OrtEngine {
            threads,
            provider: Provider::Cpu,
        }
    }

    /// The CUDA execution provider on `device`.
    #[cfg(feature = "cuda")]
    pub fn cuda(threads: usize, device: i32) -> Self {
        OrtEngine {
            threads,
            provider: Provider::Cuda { device },
        }
    }
}

impl Engine for OrtEngine {
    fn name(&self) -> String {
        let provider = match self.provider {
            Provider::Cpu => "CPU",
            #[cfg(feature = "cuda")]
            Provider::Cuda { .. } => "CUDA",
        };
        format!("onnxruntime ({provider}, {})", dylib_path().display())
    }

    fn load(&self, path: &Path) -> Result<Arc<dyn Model>, EngineError> {
        Ok(Arc::new(OrtModel::load(path, *self)?))
    }
}

/// A model loaded into one onnxruntime session.
pub struct OrtModel {
    info: ModelInfo,
    session: Mutex<Session>,
}

impl std::fmt::Debug for OrtModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtModel")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl OrtModel {
    /// Reads, hashes and loads an ONNX file into a session; fails on anything but one float32 input.
    pub fn load(path: &Path, engine: OrtEngine) -> Result<OrtModel, EngineError> {
        let bytes = std::fs::read(path).map_err(|error| EngineError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        let parse_err = |message: String| EngineError::Parse {
            path: path.to_path_buf(),
            message,
        };
        let sha256 = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        let env = environment().map_err(parse_err)?;
        let mut builder = Session::builder(env)
            .map_err(|e| parse_err(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| parse_err(e.to_string()))?;
        if engine.threads > 0 {
            builder = builder
                .with_intra_threads(engine.threads)
                .map_err(|e| parse_err(e.to_string()))?;
        }
        match engine.provider {
            Provider::Cpu => {}
            #[cfg(feature = "cuda")]
            Provider::Cuda { device } => {
                builder = builder
                    .with_execution_providers([ort::ep::CUDA::default()
                        .with_device_id(device)
                        .build()
                        .error_on_failure()])
                    .map_err(|e| parse_err(e.to_string()))?;
            }
        }
        let session = builder
            .commit_from_memory(&bytes)
            .map_err(|e| parse_err(e.to_string()))?;

        let metadata = session.metadata().map_err(|e| parse_err(e.to_string()))?;
        let mut props = BTreeMap::new();
        for key in metadata
            .custom_keys()
            .map_err(|e| parse_err(e.to_string()))?
        {
            if let Some(value) = metadata.custom(&key) {
                props.insert(key, value);
            }
        }
        drop(metadata);
        if session.inputs().len() != 1 {
            return Err(parse_err(format!(
                "it has {} inputs; noduled models take exactly one",
                session.inputs().len()
            )));
        }
        let input = &session.inputs()[0];
        let input_name = input.name().to_string();
        let input_shape = match input.dtype() {
            ValueType::Tensor {
                ty,
                shape,
                dimension_symbols,
            } => {
                if *ty != ort::value::TensorElementType::Float32 {
                    return Err(parse_err(format!(
                        "its input {input_name} is {ty:?}; noduled feeds float32"
                    )));
                }
                shape
                    .iter()
                    .enumerate()
                    .map(|(k, &n)| {
                        if n >= 0 {
                            Dim::Fixed(n as usize)
                        } else {
                            let name = dimension_symbols.get(k).cloned().unwrap_or_default();
                            Dim::Free(if name.is_empty() { "?".into() } else { name })
                        }
                    })
                    .collect()
            }
            other => {
                return Err(parse_err(format!(
                    "its input {input_name} is {other:?}, not a tensor"
                )))
            }
        };
        let output_names = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Ok(OrtModel {
            info: ModelInfo {
                path: path.to_path_buf(),
                name,
                sha256,
                metadata: props,
                input_name,
                input_shape,
                output_names,
            },
            session: Mutex::new(session),
        })
    }
}

impl Model for OrtModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn prepare(&self, shape: &[usize]) -> Result<(), EngineError> {
        // onnxruntime plans at session creation; nothing is shape-specific to prepare.
        self.info.check_input_shape(shape)
    }

    fn run(&self, input: ArrayViewD<'_, f32>) -> Result<Outputs, EngineError> {
        self.info.check_input_shape(input.shape())?;
        let run_err = |message: String| EngineError::Run {
            name: self.info.name.clone(),
            message,
        };
        let contiguous = input.as_standard_layout();
        let data = contiguous
            .as_slice()
            .ok_or_else(|| run_err("input is not contiguous".to_string()))?;
        let shape: Vec<i64> = input.shape().iter().map(|&n| n as i64).collect();
        let tensor =
            TensorRef::from_array_view((shape, data)).map_err(|e| run_err(e.to_string()))?;
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let results = session
            .run(ort::inputs![self.info.input_name.as_str() => tensor])
            .map_err(|e| run_err(e.to_string()))?;
        let mut outputs = Vec::with_capacity(self.info.output_names.len());
        for name in &self.info.output_names {
            let value = results
                .get(name.as_str())
                .ok_or_else(|| run_err(format!("output {name} missing from the run")))?;
            let (shape, values) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| run_err(format!("output {name}: {e}")))?;
            let dims: Vec<usize> = shape.iter().map(|&n| n.max(0) as usize).collect();
            let array = ArrayD::from_shape_vec(IxDyn(&dims), values.to_vec())
                .map_err(|e| run_err(format!("output {name}: {e}")))?;
            outputs.push((name.clone(), array));
        }
        Ok(Outputs(outputs))
    }
}
