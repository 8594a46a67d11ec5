//! The default engine: [tract](https://github.com/sonos/tract), pure Rust, no native libraries.
//!
//! An ONNX file is parsed once at load. For every concrete input shape it is then run with, the
//! model is specialised to that shape, optimised (`into_optimized`) and turned into a runnable plan
//! exactly once; plans are cached and shared by all worker threads (a plan is `Send + Sync`, each
//! `run` spawns its own state). tract runs each call on the calling thread, so parallelism comes from
//! the caller's thread pool: the pipeline runs many slices or crops at once. (tract-linalg's
//! `multithread-mm` feature can instead split one call's matrix products over a pool; on the
//! book's U-Net with 2 cores that was slower than two slices at once: 33.5 s against 30 s for
//! LIDC-IDRI-0001's 133 slices in release, 61 s against 50 s in the dev profile.)

use super::{Dim, Engine, EngineError, Model, ModelInfo, Outputs};
use ndarray::{ArrayD, ArrayViewD, IxDyn};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

/// tract's knob that turns its direct (im2col-free) 2D convolution off. That kernel computes 4
/// output channels at a time with 8-wide AVX2 vectors; on the book's U-Net (16–64 channels, 3×3)
/// im2col and tract's AVX-512 matrix kernels are faster: 1.015 s against 1.286 s a 512×512 slice
/// on one thread (minimum of 3 interleaved runs each on the shared 2-core machine, load ≈ 13:
/// `NODULED_BENCH_QUICK=1 cargo bench --bench pipeline` with and without the variable). It is
/// set while a plan is optimised unless the variable is given in the environment (then that
/// value holds). 3D convolutions (the classifiers) do not use the direct kernel either way.
const DIRECT_SPATIAL_KNOB: &str = "TRACT_DISABLE_DIRECT_SPATIAL";

/// The tract engine.
#[derive(Debug, Default, Clone, Copy)]
pub struct TractEngine;

impl TractEngine {
    pub fn new() -> Self {
        TractEngine
    }
}

impl Engine for TractEngine {
    fn name(&self) -> String {
        "tract 0.23.9".to_string()
    }

    fn load(&self, path: &Path) -> Result<Arc<dyn Model>, EngineError> {
        Ok(Arc::new(TractModel::load(path)?))
    }
}

type Plan = Arc<TypedRunnableModel>;

/// An ONNX model parsed by tract, with one optimised plan per input shape it has been run with.
pub struct TractModel {
    info: ModelInfo,
    parsed: InferenceModel,
    plans: Mutex<HashMap<Vec<usize>, Plan>>,
}

impl std::fmt::Debug for TractModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractModel")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// tract reports errors as `anyhow` chains: keep the whole chain, on one line.
fn chain(err: &tract_onnx::prelude::TractError) -> String {
    format!("{err:#}")
}

impl TractModel {
    /// Reads, hashes and parses an ONNX file; fails on anything but one float32 input.
    pub fn load(path: &Path) -> Result<TractModel, EngineError> {
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
        let onnx = tract_onnx::onnx();
        let proto = onnx
            .proto_model_for_read(&mut bytes.as_slice())
            .map_err(|e| parse_err(chain(&e)))?;
        let metadata: BTreeMap<String, String> = proto
            .metadata_props
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect();
        let parsed = onnx
            .model_for_proto_model(&proto)
            .map_err(|e| parse_err(chain(&e)))?;
        let inputs = parsed.input_outlets().map_err(|e| parse_err(chain(&e)))?;
        if inputs.len() != 1 {
            return Err(parse_err(format!(
                "it has {} inputs; noduled models take exactly one",
                inputs.len()
            )));
        }
        let input_name = parsed.node(inputs[0].node).name.clone();
        let fact = parsed.input_fact(0).map_err(|e| parse_err(chain(&e)))?;
        if let Some(dt) = fact.datum_type.concretize() {
            if dt != DatumType::F32 {
                return Err(parse_err(format!(
                    "its input {input_name} is {dt:?}; noduled feeds float32"
                )));
            }
        }
        let input_shape: Vec<Dim> = fact
            .shape
            .dims()
            .map(|d| match d.concretize() {
                Some(dim) => match dim.as_i64() {
                    Some(n) if n >= 0 => Dim::Fixed(n as usize),
                    _ => Dim::Free(dim.to_string()),
                },
                None => Dim::Free("?".to_string()),
            })
            .collect();
        let output_names = parsed
            .output_outlets()
            .map_err(|e| parse_err(chain(&e)))?
            .iter()
            .map(|o| {
                parsed
                    .outlet_label(*o)
                    .map(str::to_string)
                    .unwrap_or_else(|| parsed.node(o.node).name.clone())
            })
            .collect();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Ok(TractModel {
            info: ModelInfo {
                path: path.to_path_buf(),
                name,
                sha256,
                metadata,
                input_name,
                input_shape,
                output_names,
            },
            parsed,
            plans: Mutex::new(HashMap::new()),
        })
    }

    /// The optimised plan for `shape`, built on first use. The lock is held while building, so
    /// threads asking for the same new shape wait for one optimisation instead of repeating it.
    fn plan(&self, shape: &[usize]) -> Result<Plan, EngineError> {
        self.info.check_input_shape(shape)?;
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(plan) = plans.get(shape) {
            return Ok(plan.clone());
        }
        let run_err = |e: TractError| EngineError::Run {
            name: self.info.name.clone(),
            message: chain(&e),
        };
        let started = std::time::Instant::now();
        let typed = self
            .parsed
            .clone()
            .with_input_fact(0, f32::fact(shape).into())
            .and_then(|m| m.into_typed())
            .map_err(run_err)?;
        let optimize = move || typed.into_optimized();
        let optimized = if std::env::var_os(DIRECT_SPATIAL_KNOB).is_some() {
            optimize() // the operator's choice wins
        } else {
            tract_onnx::tract_core::knobs::KnobScope::new([(DIRECT_SPATIAL_KNOB, "true")])
                .map_err(run_err)?
                .enter(optimize)
        };
        let plan = optimized.and_then(|m| m.into_runnable()).map_err(run_err)?;
        tracing::debug!(
            model = %self.info.name,
            ?shape,
            seconds = started.elapsed().as_secs_f64(),
            "optimised plan"
        );
        plans.insert(shape.to_vec(), plan.clone());
        Ok(plan)
    }
}

impl Model for TractModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn prepare(&self, shape: &[usize]) -> Result<(), EngineError> {
        self.plan(shape).map(|_| ())
    }

    fn run(&self, input: ArrayViewD<'_, f32>) -> Result<Outputs, EngineError> {
        let plan = self.plan(input.shape())?;
        let run_err = |e: TractError| EngineError::Run {
            name: self.info.name.clone(),
            message: chain(&e),
        };
        let contiguous = input.as_standard_layout();
        let data = contiguous.as_slice().ok_or_else(|| EngineError::Run {
            name: self.info.name.clone(),
            message: "input is not contiguous".to_string(),
        })?;
        let tensor = Tensor::from_shape(input.shape(), data).map_err(run_err)?;
        let results = plan.run(tvec!(tensor.into_tvalue())).map_err(run_err)?;
        let mut outputs = Vec::with_capacity(results.len());
        for (ix, value) in results.into_iter().enumerate() {
            let name = self
                .info
                .output_names
                .get(ix)
                .cloned()
                .unwrap_or_else(|| format!("output{ix}"));
            let cast = value.cast_to::<f32>().map_err(run_err)?;
            let view = cast.try_as_plain_ram().map_err(run_err)?;
            let values = view.as_slice::<f32>().map_err(run_err)?.to_vec();
            let array = ArrayD::from_shape_vec(IxDyn(cast.shape()), values).map_err(|e| {
                EngineError::Run {
                    name: self.info.name.clone(),
                    message: format!("output {name}: {e}"),
                }
            })?;
            outputs.push((name, array));
        }
        Ok(Outputs(outputs))
    }
}
