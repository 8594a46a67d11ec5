//! The nodule pipeline, one entry point for the CLI and the daemon: a [`Volume`] in, an [`Analysis`]
//! out. It is the book's chapter-14 pipeline (LUNA16, "Deep Learning with PyTorch"):
//!
//! 1. [`segment`]: a per-slice U-Net gives every voxel a nodule probability;
//! 2. [`group`]: threshold, erode, 6-connected components, weighted centres → candidates;
//! 3. [`classify`]: a 3D CNN on a 32×48×48 crop around each candidate → p_nodule;
//! 4. [`malignancy`]: for nodules (p_nodule > 0.5), p_malignant from a model or the diameter baseline.
//!
//! Beyond the book: [`mass`] reports regions over 30 mm that touch the lung as findings of kind
//! `mass`, whatever the classifier says of them, and [`caveats`] names every way a series or a model
//! leaves the validated range (each caveat refused or carried into every output, per configuration).
//!
//! Models are loaded once ([`Models::load`]) and shared by a worker pool of `threads` threads that
//! runs slices and crops in parallel. [`PipelineOptions::exact`] asks for the book's processing with
//! no shortcut: any speed-up that can change candidates must be off when it is set, and the
//! findings are the book's (every candidate with p_nodule > 0.5). Without it (the default) the
//! U-Net runs only on a tile around the lungs in each slice ([`segment::lung_regions`], within
//! [`segment::LUNG_REGION_MARGIN_MM`] of the lung; [`PipelineOptions::regions`]), candidates
//! beyond that reach are not classified, and [`reduce`] merges fragments, drops findings away from
//! the lung ([`lung`]) and under the Lung-RADS size floor: what the tiles leave out is what the
//! reduction drops, so the reported findings are those of whole slices (`tests/fast_vs_exact.rs`). Every finding is measured ([`measure`]) and
//! categorised ([`lungrads`]) either way.

pub mod caveats;
pub mod classify;
pub mod group;
pub mod lung;
pub mod lungrads;
pub mod malignancy;
pub mod mass;
pub mod measure;
pub mod reduce;
pub mod segment;

pub use caveats::{Caveat, CaveatKind, CaveatPolicies, CaveatPolicy};

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
    #[error("series refused ([caveats] {} = \"refuse\"): {caveat}", .caveat.name)]
    Refused { caveat: Caveat },
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

/// How to run. The default: not exact (lung-region tiles and false-positive reduction on), one
/// worker per core.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineOptions {
    /// The book's processing with no shortcut (see the module docs).
    pub exact: bool,
    /// Worker threads; 0 means one per available core.
    pub threads: usize,
    /// Where the U-Net runs when not `exact` (default: around the lungs).
    #[serde(default)]
    pub regions: segment::SegmentRegions,
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

/// What a finding is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FindingKind {
    /// A candidate the classifier calls a nodule (p_nodule > 0.5).
    #[default]
    Nodule,
    /// A region over 30 mm in or touching the lung (see [`mass`]); the classifier is not asked.
    Mass,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Nodule => "nodule",
            FindingKind::Mass => "mass",
        }
    }
}

/// A finding: a nodule (a candidate with p_nodule > 0.5) or a mass, and its malignancy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// `nodule` or `mass`.
    #[serde(default)]
    pub kind: FindingKind,
    /// Position of the candidate in [`Analysis::candidates`] (for a mass: its largest fragment).
    pub candidate: usize,
    pub center_irc: [f64; 3],
    pub center_xyz: [f64; 3],
    pub voxels: usize,
    pub diameter_mm: f64,
    /// The classifier's p_nodule (for a mass: of its largest fragment, not used to decide).
    pub p_nodule: f64,
    pub p_malignant: f64,
    /// Diameters, volume, HU and type from the region grown on the CT ([`measure`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurements: Option<measure::Measurements>,
    /// Lung-RADS v2022 baseline category from type and size ([`lungrads`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lung_rads: Option<lungrads::LungRads>,
    /// Other candidates merged into this finding as fragments of the same nodule ([`reduce`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_candidates: Vec<usize>,
    /// Voxels (index, row, column) of the measured region, sorted: for key images and overlays.
    /// Not serialised (it can be thousands of voxels).
    #[serde(skip)]
    pub region: Vec<[usize; 3]>,
    /// Masses only: bounding-box extent (mm) along x, y, z.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extent_mm: Option<[f64; 3]>,
}

impl Finding {
    /// Whether this finding counts as malignant (p_malignant > 0.5; a mass always does).
    pub fn is_malignant(&self) -> bool {
        self.kind == FindingKind::Mass || self.p_malignant > DECISION_THRESHOLD
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
    /// Lung mask, measurements and false-positive reduction ([`reduce`]).
    #[serde(default)]
    pub measure: f64,
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
    /// Why this analysis is outside the validated range (see [`caveats`]), repeated in every
    /// output; empty when it is inside.
    #[serde(default)]
    pub caveats: Vec<Caveat>,
    /// All candidates in grouping order.
    pub candidates: Vec<Candidate>,
    /// The masses (see [`mass`]), then the nodules (p_nodule > 0.5) in candidate order.
    pub findings: Vec<Finding>,
    /// Classifier nodules not reported, each with its reason ([`reduce`]; empty when exact).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suppressed: Vec<reduce::Suppressed>,
    /// Lung-RADS v2022 baseline category of the exam: its worst finding's, 1 without findings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lung_rads: Option<lungrads::LungRads>,
    /// Lung volume (mL) of the lung mask ([`lung`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lung_volume_ml: Option<f64>,
    /// Whether any finding is malignant (p_malignant > 0.5, or a mass).
    pub malignant_present: bool,
    /// How many findings are malignant.
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
    caveat_policies: CaveatPolicies,
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
            caveat_policies: CaveatPolicies::default(),
        })
    }

    /// The same pipeline with `policies` deciding which caveats refuse a series (default: none).
    pub fn with_caveat_policies(mut self, policies: CaveatPolicies) -> Pipeline {
        self.caveat_policies = policies;
        self
    }

    /// The caveats of `volume` known before any model runs: the series' own (slices, spacing,
    /// contrast, dose), the lung field, and the models' provenance.
    pub fn caveats(&self, volume: &Volume) -> Vec<Caveat> {
        let mut out = caveats::of_series(volume);
        out.extend(caveats::of_lung_field(caveats::lung_fraction(
            volume.hu.view(),
        )));
        let mut infos = vec![self.models.segmentation.info(), self.models.nodule.info()];
        if let Malignancy::Model(m) = &self.models.malignancy {
            infos.push(m.info());
        }
        out.extend(caveats::of_models(infos));
        out
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
        let started = Instant::now();
        let segmented = self.segment_and_group(volume, progress)?;
        let mut analysis = self.analyze_segmented(volume, &segmented, progress)?;
        analysis.seconds.total = started.elapsed().as_secs_f64();
        Ok(analysis)
    }
}

// ---- The pipeline in two steps (`noduled eval` caches the first, the slow one) ----

/// The output of the segmentation step: the grouped components of the thresholded, eroded
/// segmentation, before any classifier runs. It depends only on the volume, the segmentation model
/// and the options, so it can be cached and reused with other classifiers.
#[derive(Debug, Clone, PartialEq)]
pub struct Segmented {
    pub groups: Vec<group::Group>,
    /// Flat indices (standard `[index, row, column]` layout) of the voxels over the segmentation
    /// threshold: sparse, so it is cheap to keep and to cache. Measurements read it.
    pub mask_voxels: Vec<u32>,
    /// Seconds the segmentation took (0 when it came from a cache).
    pub segment_s: f64,
    /// Seconds the grouping took (likewise).
    pub group_s: f64,
    /// The lung mask, when this step needed it (lung-region tiles); step 2 computes it otherwise.
    pub lung: Option<Arc<lung::LungMask>>,
}

impl Pipeline {
    /// The per-slice regions the U-Net runs on for `volume` ([`segment::SegmentRegions`]); `None`
    /// for every pixel (`exact`, or [`segment::SegmentRegions::Whole`]).
    pub fn segment_regions(&self, volume: &Volume) -> Option<Vec<Option<segment::Region>>> {
        let lung = self
            .lung_regions_on()
            .then(|| lung::LungMask::compute(volume));
        self.regions_for(volume, lung.as_ref())
    }

    /// Whether the lung-region shortcut is on (then candidates are cut to the lung's reach too).
    fn lung_regions_on(&self) -> bool {
        !self.options.exact && self.options.regions == segment::SegmentRegions::Lung
    }

    fn regions_for(
        &self,
        volume: &Volume,
        lung: Option<&lung::LungMask>,
    ) -> Option<Vec<Option<segment::Region>>> {
        let hu = volume.hu.view();
        match (self.options.exact, self.options.regions, lung) {
            (true, _, _) | (false, segment::SegmentRegions::Whole, _) => None,
            (false, segment::SegmentRegions::Lung, Some(lung)) => Some(segment::lung_regions(
                lung,
                &segment::body_regions(hu),
                volume.geometry.spacing_xyz,
                segment::LUNG_REGION_MARGIN_MM,
            )),
            (false, _, _) => Some(segment::body_regions(hu)),
        }
    }

    /// Step 1 of [`Pipeline::analyze`]: segmentation and grouping.
    pub fn segment_and_group(
        &self,
        volume: &Volume,
        progress: ProgressFn<'_>,
    ) -> Result<Segmented, PipelineError> {
        let shape = volume.shape();
        if shape.contains(&0) {
            return Err(PipelineError::EmptyVolume(shape));
        }
        let caveats = self.caveats(volume);
        if let Some(refused) = self.caveat_policies.refused(&caveats) {
            return Err(PipelineError::Refused {
                caveat: refused.clone(),
            });
        }
        for caveat in &caveats {
            tracing::warn!(
                series = %volume.series.series_uid,
                caveat = caveat.name.name(),
                detail = %caveat.detail,
                "outside the validated range"
            );
        }
        let hu = volume.hu.view();

        let t = Instant::now();
        // Thresholded slice by slice: the probabilities themselves are never kept.
        let lung = self
            .lung_regions_on()
            .then(|| Arc::new(lung::LungMask::compute(volume)));
        let mask = self
            .pool
            .install(|| match self.regions_for(volume, lung.as_deref()) {
                None => segment::segment_mask(self.models.segmentation.as_ref(), hu, progress),
                Some(regions) => segment::segment_regions_mask(
                    self.models.segmentation.as_ref(),
                    hu,
                    &regions,
                    progress,
                ),
            })?;
        let segment_s = t.elapsed().as_secs_f64();

        let t = Instant::now();
        progress(Stage::Group, 0, 1);
        let groups = group::group_mask(hu, mask.view());
        let mask_voxels: Vec<u32> = mask
            .iter()
            .enumerate()
            .filter_map(|(k, &on)| on.then_some(k as u32))
            .collect();
        drop(mask);
        progress(Stage::Group, 1, 1);
        let group_s = t.elapsed().as_secs_f64();
        Ok(Segmented {
            groups,
            mask_voxels,
            segment_s,
            group_s,
            lung,
        })
    }

    /// Step 2 of [`Pipeline::analyze`]: classification and malignancy of the `segmented` groups
    /// of `volume` (which must be the volume they were found in).
    pub fn analyze_segmented(
        &self,
        volume: &Volume,
        segmented: &Segmented,
        progress: ProgressFn<'_>,
    ) -> Result<Analysis, PipelineError> {
        let shape = volume.shape();
        if shape.contains(&0) {
            return Err(PipelineError::EmptyVolume(shape));
        }
        let hu = volume.hu.view();
        let geometry = &volume.geometry;
        let t = Instant::now();
        let lung = match &segmented.lung {
            Some(lung) => Arc::clone(lung),
            None => Arc::new(lung::LungMask::compute(volume)),
        };
        tracing::debug!(
            seconds = t.elapsed().as_secs_f64(),
            lung_ml = lung.volume_ml(),
            "lung mask"
        );
        // With lung-region tiles, candidates beyond the tiles' reach of the lung (the
        // mediastinum's middle, say) are not classified: no finding can come of them (one must
        // come within 2 mm of the lung, `reduce`), and the classifier is the second-costliest step.
        let reach =
            (self.lung_regions_on() && lung.voxels() > 0).then_some(segment::LUNG_REGION_MARGIN_MM);
        let groups: Vec<&group::Group> = segmented
            .groups
            .iter()
            .filter(|g| reach.is_none_or(|mm| lung.distance_mm(g.center_irc, mm).is_some()))
            .collect();
        let (segment_s, group_s) = (segmented.segment_s, segmented.group_s);
        let mut mask = ndarray::Array3::from_elem(shape, false);
        if let Some(flat) = mask.as_slice_mut() {
            for &k in &segmented.mask_voxels {
                if let Some(v) = flat.get_mut(k as usize) {
                    *v = true;
                }
            }
        }
        let caveats = self.caveats(volume);
        let masses = mass::masses_of_mask(hu, mask.clone(), geometry);

        let t = Instant::now();
        let centers: Vec<[f64; 3]> = groups.iter().map(|g| g.center_irc).collect();
        let p_nodule = self.pool.install(|| {
            classify::classify(
                self.models.nodule.as_ref(),
                hu,
                geometry.spacing_irc(),
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
        // Candidates inside a mass are its fragments: the mass is reported instead.
        let in_mass = |k: usize| masses.iter().any(|m| m.contains(candidates[k].center_irc));
        let nodules: Vec<usize> = (0..candidates.len())
            .filter(|&k| candidates[k].p_nodule > DECISION_THRESHOLD && !in_mass(k))
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
                    let p = self.models.malignancy.assess(
                        hu,
                        geometry.spacing_irc(),
                        c.center_irc,
                        c.diameter_mm,
                    )?;
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
                    kind: FindingKind::Nodule,
                    candidate: k,
                    center_irc: c.center_irc,
                    center_xyz: c.center_xyz,
                    voxels: c.voxels,
                    diameter_mm: c.diameter_mm,
                    p_nodule: c.p_nodule,
                    p_malignant: p,
                    measurements: None,
                    lung_rads: None,
                    merged_candidates: Vec::new(),
                    region: Vec::new(),
                    extent_mm: None,
                }
            })
            .collect();
        let (findings, suppressed) = if self.options.exact {
            let measured = reduce::measure_all(
                hu,
                geometry,
                mask.view(),
                &lung,
                findings,
                &Default::default(),
            );
            (
                measured
                    .into_iter()
                    .map(reduce::MeasuredFinding::into_finding)
                    .collect(),
                Vec::new(),
            )
        } else {
            let (kept, suppressed) = reduce::reduce(
                hu,
                geometry,
                mask.view(),
                &lung,
                findings,
                &reduce::ReduceOptions::default(),
            );
            let kept: Vec<Finding> = kept
                .into_iter()
                .map(reduce::MeasuredFinding::into_finding)
                .collect();
            (kept, suppressed)
        };
        // Masses first: the classifier was not asked about them, nor may fragment merging or the
        // size floor drop them. A nodule finding within a mass's reach is one of its fragments
        // (fragments of one mass are one finding).
        let mass_findings: Vec<Finding> = masses
            .iter()
            .filter_map(|m| mass_finding(m, &candidates, geometry))
            .collect();
        let mut suppressed = suppressed;
        let (fragments, nodule_findings): (Vec<Finding>, Vec<Finding>) =
            findings.into_iter().partition(|f| {
                masses.iter().any(|m| {
                    let reach = m.max_extent_mm() / 2.0;
                    m.contains(f.center_irc)
                        || distance_mm(geometry.irc_to_xyz(m.center_irc), f.center_xyz) <= reach
                })
            });
        suppressed.extend(fragments.iter().map(|f| reduce::Suppressed {
            candidate: f.candidate,
            center_xyz: f.center_xyz,
            p_nodule: f.p_nodule,
            reason: reduce::SuppressReason::PartOfMass,
            into: None,
            mean_diameter_mm: f.measurements.as_ref().map(|m| m.mean_diameter_mm),
        }));
        let mut findings: Vec<Finding> = mass_findings.into_iter().chain(nodule_findings).collect();
        for f in findings.iter_mut().filter(|f| f.kind == FindingKind::Mass) {
            f.lung_rads = Some(lungrads::LungRads::VerySuspicious4X);
        }
        let lung_volume_ml = Some(lung.volume_ml());
        let measure_s = t.elapsed().as_secs_f64();
        drop(mask);
        let lung_rads = Some(lungrads::exam_category(
            findings.iter().filter_map(|f| f.lung_rads),
        ));
        let malignant_count = findings.iter().filter(|f| f.is_malignant()).count();
        Ok(Analysis {
            series_uid: volume.series.series_uid.clone(),
            shape,
            spacing_xyz: geometry.spacing_xyz,
            origin_xyz: geometry.origin_xyz,
            direction: geometry.direction_flat(),
            warnings: volume.series.warnings.clone(),
            caveats,
            candidates,
            findings,
            suppressed,
            lung_rads,
            lung_volume_ml,
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
                measure: measure_s,
                total: segment_s + group_s + classify_s + measure_s,
            },
        })
    }
}

fn distance_mm(a: [f64; 3], b: [f64; 3]) -> f64 {
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

/// The finding of one mass: its own centre, size and the diameter baseline's p_malignant, linked to
/// its largest fragment among the candidates (the one with most voxels whose centre lies in it,
/// else the nearest candidate). `None` only when there is no candidate at all.
fn mass_finding(
    m: &mass::Region,
    candidates: &[Candidate],
    geometry: &crate::volume::Geometry,
) -> Option<Finding> {
    let distance = |c: &Candidate| {
        (0..3)
            .map(|a| (c.center_irc[a] - m.center_irc[a]).powi(2))
            .sum::<f64>()
    };
    let inside = (0..candidates.len())
        .filter(|&k| m.contains(candidates[k].center_irc))
        .max_by_key(|&k| candidates[k].voxels);
    let candidate = inside.or_else(|| {
        (0..candidates.len())
            .min_by(|&a, &b| distance(&candidates[a]).total_cmp(&distance(&candidates[b])))
    })?;
    Some(Finding {
        kind: FindingKind::Mass,
        candidate,
        center_irc: m.center_irc,
        center_xyz: geometry.irc_to_xyz(m.center_irc),
        voxels: m.voxels,
        diameter_mm: m.diameter_mm,
        p_nodule: candidates[candidate].p_nodule,
        p_malignant: malignancy::p_malignant_from_diameter(m.diameter_mm.max(m.max_extent_mm())),
        extent_mm: Some(m.extent_mm),
        measurements: None,
        lung_rads: None,
        merged_candidates: Vec::new(),
        region: Vec::new(),
    })
}
