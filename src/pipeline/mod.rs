//! The nodule pipeline, one entry point for the CLI and the daemon: a [`Volume`] in, an [`Analysis`]
//! out. It is the book's chapter-14 pipeline (LUNA16, "Deep Learning with PyTorch"):
//!
//! 1. [`segment`]: a per-slice U-Net gives every voxel a nodule probability;
//! 2. [`group`]: threshold, erode, 6-connected components, weighted centres → candidates;
//! 3. [`classify`]: a 3D CNN on a 32×48×48 crop around each candidate → p_nodule;
//! 4. [`malignancy`]: for nodules (p_nodule > 0.5), p_malignant from a model or the diameter baseline.
//!
//! Models are loaded once ([`Models::load`]) and shared by a worker pool of `threads` threads that
//! runs slices and crops in parallel. [`PipelineOptions::exact`] asks for the book's processing with
//! no shortcut. Without it (the default) the U-Net runs only on a tile around the body in each
//! slice ([`segment::body_regions`], [`segment::segment_regions`]): the same answer inside the
//! body, nothing in the air around it; `tests/fast_vs_exact.rs` checks that the findings stay
//! those of the exact mode on the shared LIDC CTs. (Tiles around the lungs alone would halve the
//! U-Net's work but lose the exact mode's findings outside the lungs, e.g. 6 of LIDC-IDRI-0001's 7,
//! so they are not used.)

pub mod classify;
pub mod group;
pub mod malignancy;
pub mod segment;

pub use malignancy::Malignancy;

use crate::engine::{self, Engine, EngineError, Model, ModelRole};
use crate::volume::Volume;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// HU clamp of every model input: below is air, above is bone and metal.
pub const HU_MIN: f32 = -1000.0;
/// Upper end of the HU clamp.
pub const HU_MAX: f32 = 1000.0;
/// Context slices on each side of a segmented slice.
pub const CONTEXT_SLICES: usize = 3;
/// A candidate is a nodule above this p_nodule, and a nodule malignant above this p_malignant.
pub const DECISION_THRESHOLD: f64 = 0.5;

/// What can stop an analysis.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("model {model}: output {output} has shape {shape:?}, expected {expected}")]
    OutputShape {
        model: String,
        output: String,
        shape: Vec<usize>,
        expected: String,
    },
    #[error("the volume is empty (shape {0:?})")]
    EmptyVolume([usize; 3]),
    #[error("cannot start {threads} worker threads: {message}")]
    ThreadPool { threads: usize, message: String },
}

/// The stages, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Units: slices.
    Segment,
    /// Units: one (grouping is a single step).
    Group,
    /// Units: candidates.
    Classify,
    /// Units: nodules.
    Malignancy,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Segment => "segment",
            Stage::Group => "group",
            Stage::Classify => "classify",
            Stage::Malignancy => "malignancy",
        }
    }
}

/// How to run. The default: not exact (body-region shortcut on), one worker per core.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineOptions {
    /// The book's processing with no shortcut (see the module docs).
    pub exact: bool,
    /// Worker threads; 0 means one per available core.
    pub threads: usize,
}

/// The models of one pipeline.
#[derive(Debug, Clone)]
pub struct Models {
    pub segmentation: Arc<dyn Model>,
    pub nodule: Arc<dyn Model>,
    pub malignancy: Malignancy,
}

/// A model's identity as reports show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// File name, or `diameter` for the diameter baseline.
    pub name: String,
    /// SHA-256 of the file (absent for the diameter baseline).
    pub sha256: Option<String>,
    pub role: ModelRole,
}

impl Models {
    /// Loads and checks the three models (`malignancy: None` is the diameter baseline). Each file
    /// must fit its role ([`engine::load_for_role`]).
    pub fn load(
        engine: &dyn Engine,
        segmentation: &Path,
        nodule: &Path,
        malignancy: Option<&Path>,
    ) -> Result<Models, EngineError> {
        let segmentation = engine::load_for_role(engine, segmentation, ModelRole::Segmentation)?;
        let nodule = engine::load_for_role(engine, nodule, ModelRole::Nodule)?;
        let malignancy = match malignancy {
            Some(path) => {
                Malignancy::Model(engine::load_for_role(engine, path, ModelRole::Malignancy)?)
            }
            None => Malignancy::Diameter,
        };
        Ok(Models {
            segmentation,
            nodule,
            malignancy,
        })
    }

    /// Identities of the models, segmentation first.
    pub fn identities(&self) -> Vec<ModelIdentity> {
        let of = |m: &Arc<dyn Model>, role| ModelIdentity {
            name: m.info().name.clone(),
            sha256: Some(m.info().sha256.clone()),
            role,
        };
        let mut ids = vec![
            of(&self.segmentation, ModelRole::Segmentation),
            of(&self.nodule, ModelRole::Nodule),
        ];
        ids.push(match &self.malignancy {
            Malignancy::Model(m) => of(m, ModelRole::Malignancy),
            Malignancy::Diameter => ModelIdentity {
                name: "diameter".to_string(),
                sha256: None,
                role: ModelRole::Malignancy,
            },
        });
        ids
    }
}

/// One candidate: a connected component of the eroded segmentation, classified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// Weighted centre of mass, fractional (index, row, column).
    pub center_irc: [f64; 3],
    /// The same centre in patient millimetres (DICOM LPS).
    pub center_xyz: [f64; 3],
    /// Voxels of the component after erosion (the book's count).
    pub voxels: usize,
    /// Equivalent diameter (mm) of its segmented volume (see [`group`]).
    pub diameter_mm: f64,
    /// Nodule classifier's probability.
    pub p_nodule: f64,
    /// Malignancy probability, for nodules only (p_nodule > 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_malignant: Option<f64>,
}

/// A nodule: a candidate with p_nodule > 0.5, and its malignancy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Position of the candidate in [`Analysis::candidates`].
    pub candidate: usize,
    pub center_irc: [f64; 3],
    pub center_xyz: [f64; 3],
    pub voxels: usize,
    pub diameter_mm: f64,
    pub p_nodule: f64,
    pub p_malignant: f64,
}

impl Finding {
    /// Whether this nodule counts as malignant (p_malignant > 0.5).
    pub fn is_malignant(&self) -> bool {
        self.p_malignant > DECISION_THRESHOLD
    }
}

/// Wall-clock seconds per stage. `load` is the caller's (the pipeline starts from a loaded volume):
/// see [`Analysis::add_load_seconds`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StageSeconds {
    pub load: f64,
    pub segment: f64,
    pub group: f64,
    /// Nodule classification and malignancy together.
    pub classify: f64,
    pub total: f64,
}

/// Everything one analysis found, with what it ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    pub series_uid: String,
    /// `[index, row, column]` sizes.
    pub shape: [usize; 3],
    pub spacing_xyz: [f64; 3],
    pub origin_xyz: [f64; 3],
    /// Row-major 3×3, columns = row cosine, column cosine, slice normal.
    pub direction: [f64; 9],
    /// The series' warnings (thick slices, tilt, ...), repeated in every output.
    pub warnings: Vec<String>,
    /// All candidates in grouping order.
    pub candidates: Vec<Candidate>,
    /// The nodules (p_nodule > 0.5), in candidate order.
    pub findings: Vec<Finding>,
    /// Whether any finding has p_malignant > 0.5.
    pub malignant_present: bool,
    /// How many findings have p_malignant > 0.5.
    pub malignant_count: usize,
    pub models: Vec<ModelIdentity>,
    /// Inference engine, e.g. `tract 0.23.9`.
    pub engine: String,
    pub threads: usize,
    pub exact: bool,
    pub seconds: StageSeconds,
}

impl Analysis {
    /// Records the time the caller spent loading the volume (added to the total).
    pub fn add_load_seconds(&mut self, seconds: f64) {
        self.seconds.load += seconds;
        self.seconds.total += seconds;
    }
}

/// The pipeline: models, options and the worker pool. Build once, analyse many volumes; `analyze`
/// takes `&self` and may be called from several threads (they share the pool).
pub struct Pipeline {
    models: Models,
    options: PipelineOptions,
    engine: String,
    pool: rayon::ThreadPool,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("models", &self.models)
            .field("options", &self.options)
            .field("threads", &self.pool.current_num_threads())
            .finish()
    }
}

/// Progress callback: (stage, units done, units total). Called from worker threads.
pub type ProgressFn<'a> = &'a (dyn Fn(Stage, usize, usize) + Sync);

impl Pipeline {
    /// Loads the model files with the default engine and starts the worker pool: what the CLI,
    /// the daemon and the tests need (`malignancy: None` is the diameter baseline).
    pub fn load(
        segmentation: &Path,
        nodule: &Path,
        malignancy: Option<&Path>,
        options: PipelineOptions,
    ) -> Result<Pipeline, PipelineError> {
        let engine = engine::default_engine();
        let models = Models::load(engine.as_ref(), segmentation, nodule, malignancy)?;
        Pipeline::new(models, options, engine.name())
    }

    /// [`Pipeline::load`] with the engine called `engine` (see [`engine::engine_named`]; engines
    /// that parallelise each call themselves get `options.threads` threads).
    pub fn load_with_engine(
        engine: &str,
        segmentation: &Path,
        nodule: &Path,
        malignancy: Option<&Path>,
        options: PipelineOptions,
    ) -> Result<Pipeline, PipelineError> {
        let engine = engine::engine_named(engine, options.threads)?;
        let models = Models::load(engine.as_ref(), segmentation, nodule, malignancy)?;
        Pipeline::new(models, options, engine.name())
    }

    /// A pipeline over `models` with a pool of `options.threads` workers (0: one per core).
    /// `engine` names the runtime in reports (see [`Engine::name`]).
    pub fn new(
        models: Models,
        options: PipelineOptions,
        engine: impl Into<String>,
    ) -> Result<Pipeline, PipelineError> {
        let threads = if options.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            options.threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("noduled-worker-{i}"))
            .build()
            .map_err(|e| PipelineError::ThreadPool {
                threads,
                message: e.to_string(),
            })?;
        Ok(Pipeline {
            models,
            options: PipelineOptions { threads, ..options },
            engine: engine.into(),
            pool,
        })
    }

    /// The options in force (`threads` resolved to the actual pool size).
    pub fn options(&self) -> PipelineOptions {
        self.options
    }

    pub fn models(&self) -> &Models {
        &self.models
    }

    /// Runs the whole pipeline on `volume`. `progress` hears about every slice and crop.
    pub fn analyze(
        &self,
        volume: &Volume,
        progress: ProgressFn<'_>,
    ) -> Result<Analysis, PipelineError> {
        let shape = volume.shape();
        if shape.contains(&0) {
            return Err(PipelineError::EmptyVolume(shape));
        }
        let started = Instant::now();
        let hu = volume.hu.view();
        let geometry = &volume.geometry;

        let t = Instant::now();
        let probability = self.pool.install(|| {
            if self.options.exact {
                segment::segment(self.models.segmentation.as_ref(), hu, progress)
            } else {
                // Body-region shortcut (see `segment`): the U-Net runs on a tile around the body.
                let regions = segment::body_regions(hu);
                segment::segment_regions(self.models.segmentation.as_ref(), hu, &regions, progress)
            }
        })?;
        let segment_s = t.elapsed().as_secs_f64();

        let t = Instant::now();
        progress(Stage::Group, 0, 1);
        let groups = group::group(hu, probability.view());
        drop(probability);
        progress(Stage::Group, 1, 1);
        let group_s = t.elapsed().as_secs_f64();

        let t = Instant::now();
        let centers: Vec<[f64; 3]> = groups.iter().map(|g| g.center_irc).collect();
        let p_nodule = self.pool.install(|| {
            classify::classify(
                self.models.nodule.as_ref(),
                hu,
                &centers,
                Stage::Classify,
                progress,
            )
        })?;
        let voxel_volume = geometry.voxel_volume_mm3();
        let mut candidates: Vec<Candidate> = groups
            .iter()
            .zip(&p_nodule)
            .map(|(g, &p)| Candidate {
                center_irc: g.center_irc,
                center_xyz: geometry.irc_to_xyz(g.center_irc),
                voxels: g.voxels,
                diameter_mm: group::equivalent_diameter_mm(g.segmented_voxels, voxel_volume),
                p_nodule: p,
                p_malignant: None,
            })
            .collect();
        let nodules: Vec<usize> = (0..candidates.len())
            .filter(|&k| candidates[k].p_nodule > DECISION_THRESHOLD)
            .collect();
        let p_malignant = self.pool.install(|| {
            use rayon::prelude::*;
            let done = std::sync::atomic::AtomicUsize::new(0);
            progress(Stage::Malignancy, 0, nodules.len());
            nodules
                .par_iter()
                .with_max_len(1)
                .map(|&k| {
                    let c = &candidates[k];
                    let p = self
                        .models
                        .malignancy
                        .assess(hu, c.center_irc, c.diameter_mm)?;
                    let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    progress(Stage::Malignancy, n, nodules.len());
                    Ok(p)
                })
                .collect::<Result<Vec<f64>, PipelineError>>()
        })?;
        for (&k, &p) in nodules.iter().zip(&p_malignant) {
            candidates[k].p_malignant = Some(p);
        }
        let classify_s = t.elapsed().as_secs_f64();

        let findings: Vec<Finding> = nodules
            .iter()
            .zip(&p_malignant)
            .map(|(&k, &p)| {
                let c = &candidates[k];
                Finding {
                    candidate: k,
                    center_irc: c.center_irc,
                    center_xyz: c.center_xyz,
                    voxels: c.voxels,
                    diameter_mm: c.diameter_mm,
                    p_nodule: c.p_nodule,
                    p_malignant: p,
                }
            })
            .collect();
        let malignant_count = findings.iter().filter(|f| f.is_malignant()).count();
        Ok(Analysis {
            series_uid: volume.series.series_uid.clone(),
            shape,
            spacing_xyz: geometry.spacing_xyz,
            origin_xyz: geometry.origin_xyz,
            direction: geometry.direction_flat(),
            warnings: volume.series.warnings.clone(),
            candidates,
            findings,
            malignant_present: malignant_count > 0,
            malignant_count,
            models: self.models.identities(),
            engine: self.engine.clone(),
            threads: self.options.threads,
            exact: self.options.exact,
            seconds: StageSeconds {
                load: 0.0,
                segment: segment_s,
                group: group_s,
                classify: classify_s,
                total: started.elapsed().as_secs_f64(),
            },
        })
    }
}
