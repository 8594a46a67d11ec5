//! Deterministic synthetic chest CTs ("phantoms") with known nodules, for tests, benchmarks and
//! demos where real scans cannot be shipped: `noduled phantom` writes them as DICOM series plus a
//! LUNA16-style `annotations.csv`.
//!
//! A phantom is built from closed-form anatomy (body wall, ribs, spine, mediastinum, lungs,
//! diaphragm), grown vessel and airway trees (the realistic false positives), and nodules whose
//! sizes and malignancy follow LUNA16 statistics. Rendering blurs and adds
//! scanner noise. Everything — geometry, anatomy, nodules, noise, UIDs, names and dates — derives
//! from [`PhantomSpec::seed`], so the same spec always gives the same bytes.
//!
//! Coordinates are DICOM LPS millimetres (patient head-first supine); the volume's index 0 is the
//! most inferior slice and the slice normal is +z. Stored pixels are signed 16-bit with
//! RescaleIntercept −1024 and RescaleSlope 1, so `stored − 1024` is exactly [`Volume::hu`].

mod anatomy;
mod identity;
mod nodules;
mod raster;
mod trees;
mod writer;

pub use identity::PhantomIdentity;
pub use writer::{
    annotation_rows, instance_number, slice_file_name, slice_object, write_dataset, write_series,
    DatasetSummary, SeriesSummary, ANNOTATIONS_HEADER, RESCALE_INTERCEPT, TRANSFER_SYNTAX,
};

use crate::uid;
use crate::volume::{Geometry, SeriesInfo, SourceInstance, Volume};
use ndarray::Array3;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;

/// SOP Class UID of CT Image Storage.
pub const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";

/// What to generate. Fields left `None` are drawn from the seed.
#[derive(Debug, Clone, PartialEq)]
pub struct PhantomSpec {
    pub seed: u64,
    /// Number of axial slices (default 120).
    pub slices: usize,
    /// Matrix size (default 512×512). Smaller matrices keep realistic pixel spacing and shrink the
    /// patient to fit, so a 64×64 phantom is a small but complete chest.
    pub rows: usize,
    pub columns: usize,
    /// Nodules to place (default 4); fewer are placed only when the lungs are too small for them.
    pub nodules: usize,
    /// In-plane pixel spacing (mm); `None` draws FOV/512 with a 310–410 mm FOV (0.61–0.80 mm).
    /// Rounded to a multiple of 1/512 mm so every position is an exact, short decimal string.
    pub pixel_spacing_mm: Option<f64>,
    /// Slice step = slice thickness (mm); `None` draws one of 1.25, 1.5, 2.0 and 2.5 mm. Rounded
    /// to a multiple of 1/64 mm.
    pub slice_step_mm: Option<f64>,
    /// Standard deviation of the scanner noise (HU); `None` draws 10–20 HU.
    pub noise_sd_hu: Option<f64>,
    /// Number in the patient name, `PHANTOM^0001` for 1 (default 1).
    pub case_number: u32,
    /// Masses to place, by diameter (mm, 30–80): irregular, lobulated soft-tissue lesions against
    /// the chest wall or the mediastinum (default none). See [`NoduleKind::Mass`].
    pub masses_mm: Vec<f64>,
}

impl Default for PhantomSpec {
    fn default() -> Self {
        PhantomSpec {
            seed: 0,
            slices: 120,
            rows: 512,
            columns: 512,
            nodules: 4,
            pixel_spacing_mm: None,
            slice_step_mm: None,
            noise_sd_hu: None,
            case_number: 1,
            masses_mm: Vec::new(),
        }
    }
}

impl PhantomSpec {
    pub const MIN_MATRIX: usize = 16;
    pub const MAX_MATRIX: usize = 2048;
    pub const MAX_SLICES: usize = 2000;
    pub const MAX_NODULES: usize = 64;
    pub const PIXEL_SPACING_RANGE_MM: (f64, f64) = (0.1, 5.0);
    pub const SLICE_STEP_RANGE_MM: (f64, f64) = (0.25, 10.0);
    pub const MAX_NOISE_SD_HU: f64 = 200.0;
    /// Diameters a mass may have (mm): above the 30 mm that makes a lesion a mass (Fleischner
    /// glossary), up to what a phantom's lung can hold.
    pub const MASS_RANGE_MM: (f64, f64) = (30.0, 80.0);
    pub const MAX_MASSES: usize = 4;

    /// Checks every field against the supported ranges; the error names the first bad one.
    pub fn validate(&self) -> Result<(), PhantomError> {
        let bad = |message: String| Err(PhantomError::InvalidSpec(message));
        for (name, value) in [("rows", self.rows), ("columns", self.columns)] {
            if !(Self::MIN_MATRIX..=Self::MAX_MATRIX).contains(&value) {
                return bad(format!(
                    "{name} must be between {} and {}, got {value}",
                    Self::MIN_MATRIX,
                    Self::MAX_MATRIX
                ));
            }
        }
        if !(1..=Self::MAX_SLICES).contains(&self.slices) {
            return bad(format!(
                "slices must be between 1 and {}, got {}",
                Self::MAX_SLICES,
                self.slices
            ));
        }
        if self.nodules > Self::MAX_NODULES {
            return bad(format!(
                "nodules must be at most {}, got {}",
                Self::MAX_NODULES,
                self.nodules
            ));
        }
        if self.masses_mm.len() > Self::MAX_MASSES {
            return bad(format!(
                "masses must be at most {}, got {}",
                Self::MAX_MASSES,
                self.masses_mm.len()
            ));
        }
        let (lo, hi) = Self::MASS_RANGE_MM;
        if let Some(d) = self.masses_mm.iter().find(|d| !(**d >= lo && **d <= hi)) {
            return bad(format!(
                "mass diameters must be between {lo} and {hi} mm, got {d}"
            ));
        }
        let ranges = [
            (
                "pixel spacing (mm)",
                self.pixel_spacing_mm,
                Self::PIXEL_SPACING_RANGE_MM,
            ),
            (
                "slice step (mm)",
                self.slice_step_mm,
                Self::SLICE_STEP_RANGE_MM,
            ),
            (
                "noise sd (HU)",
                self.noise_sd_hu,
                (0.0, Self::MAX_NOISE_SD_HU),
            ),
        ];
        for (name, value, (lo, hi)) in ranges {
            if let Some(v) = value {
                if !(v >= lo && v <= hi) {
                    return bad(format!("{name} must be between {lo} and {hi}, got {v}"));
                }
            }
        }
        Ok(())
    }

    /// The nearest spec that [`PhantomSpec::validate`] accepts (NaN becomes "draw from seed").
    pub fn clamped(&self) -> PhantomSpec {
        let clamp_opt = |v: Option<f64>, (lo, hi): (f64, f64)| {
            v.filter(|v| !v.is_nan()).map(|v| v.clamp(lo, hi))
        };
        PhantomSpec {
            seed: self.seed,
            slices: self.slices.clamp(1, Self::MAX_SLICES),
            rows: self.rows.clamp(Self::MIN_MATRIX, Self::MAX_MATRIX),
            columns: self.columns.clamp(Self::MIN_MATRIX, Self::MAX_MATRIX),
            nodules: self.nodules.min(Self::MAX_NODULES),
            pixel_spacing_mm: clamp_opt(self.pixel_spacing_mm, Self::PIXEL_SPACING_RANGE_MM),
            slice_step_mm: clamp_opt(self.slice_step_mm, Self::SLICE_STEP_RANGE_MM),
            noise_sd_hu: clamp_opt(self.noise_sd_hu, (0.0, Self::MAX_NOISE_SD_HU)),
            case_number: self.case_number,
            masses_mm: self
                .masses_mm
                .iter()
                .filter(|d| !d.is_nan())
                .map(|d| d.clamp(Self::MASS_RANGE_MM.0, Self::MASS_RANGE_MM.1))
                .take(Self::MAX_MASSES)
                .collect(),
        }
    }
}

/// What a nodule looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoduleKind {
    /// Benign: small, round, smooth, soft-tissue density.
    Solid,
    /// Benign: smooth with a calcified core (250–700 HU).
    Calcified,
    /// Malignant: a core with several bulging lobes.
    Lobulated,
    /// Malignant: a lobulated core with thin spicules radiating into the lung.
    Spiculated,
    /// Malignant: a solid core inside a ground-glass rim (about −500 HU).
    PartSolid,
    /// A mass (> 30 mm, a lung cancer as the book's models never saw one): an irregular,
    /// lobulated soft-tissue lesion touching the chest wall or the mediastinum. Always malignant.
    Mass,
}

impl NoduleKind {
    /// `mass` for [`NoduleKind::Mass`], `nodule` otherwise: the `kind` column of `annotations.csv`.
    pub fn finding_kind(self) -> &'static str {
        if self == NoduleKind::Mass {
            "mass"
        } else {
            "nodule"
        }
    }
}

/// What a nodule touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoduleAttachment {
    /// Surrounded by lung.
    Free,
    /// Juxtapleural: bulges into the chest wall or mediastinum.
    Pleural,
    /// Juxtavascular: touches a vessel.
    Vascular,
    /// Against the mediastinum (masses only; a juxtapleural mass touches the chest wall).
    Mediastinal,
}

/// The ground truth for one nodule.
#[derive(Debug, Clone, PartialEq)]
pub struct PhantomNodule {
    /// Centre in patient mm (LPS): the `coordX,coordY,coordZ` of `annotations.csv`.
    pub center_xyz: [f64; 3],
    /// The same centre as fractional (index, row, column).
    pub center_irc: [f64; 3],
    pub diameter_mm: f64,
    pub malignant: bool,
    pub kind: NoduleKind,
    pub attachment: NoduleAttachment,
}

/// A generated phantom: the volume as the DICOM loader will see it, plus the ground truth.
#[derive(Debug, Clone)]
pub struct Phantom {
    /// HU (whole numbers, −1024..=3071), geometry, and UIDs (`series.instances` in index order).
    pub volume: Volume,
    pub nodules: Vec<PhantomNodule>,
    pub identity: PhantomIdentity,
    /// The spec actually used (after [`PhantomSpec::clamped`]).
    pub spec: PhantomSpec,
    /// Scanner noise actually added (HU, standard deviation).
    pub noise_sd_hu: f64,
    /// The analytic model behind the voxels, for ground-truth queries.
    model: Arc<Model>,
}

/// The closed-form scene a phantom was rendered from.
struct Model {
    anatomy: anatomy::Anatomy,
    vessels: Vec<trees::Segment>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("vessels", &self.vessels.len())
            .finish_non_exhaustive()
    }
}

impl Phantom {
    /// Whether the patient point `xyz` (mm) is lung parenchyma in the analytic model (vessels,
    /// airways and nodules inside the lung count as lung).
    pub fn in_lung(&self, xyz: [f64; 3]) -> bool {
        self.model.anatomy.in_lung(xyz[0], xyz[1], xyz[2])
    }

    /// Distance (mm) from `xyz` to the surface of the nearest pulmonary vessel; negative inside
    /// one. Infinite when the phantom has no vessels.
    pub fn vessel_distance_mm(&self, xyz: [f64; 3]) -> f64 {
        self.model
            .vessels
            .iter()
            .map(|seg| {
                let (d, r) = seg.distance(xyz);
                d - r
            })
            .fold(f64::INFINITY, f64::min)
    }
}

/// Everything that can go wrong writing phantoms.
#[derive(Debug, thiserror::Error)]
pub enum PhantomError {
    #[error("invalid phantom spec: {0}")]
    InvalidSpec(String),
    /// The I/O error is the `source()`, so a cause chain (`{:#}`) names it once.
    #[error("cannot write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write DICOM file {path}: {message}")]
    Dicom { path: PathBuf, message: String },
    #[error("cannot build the DICOM object of slice {index}: {message}")]
    Build { index: usize, message: String },
    #[error("slice index {index} is out of range: the phantom has {slices} slices")]
    SliceIndex { index: usize, slices: usize },
}

/// Where the voxels are: matrix, spacing and the position of voxel (0, 0, 0).
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub rows: usize,
    pub columns: usize,
    pub slices: usize,
    /// In-plane spacing (mm), rows and columns alike.
    pub spacing: f64,
    /// Slice step = thickness (mm).
    pub step: f64,
    pub origin: [f64; 3],
    /// Height of the carina (mm), the anatomy's reference level.
    pub z_ref: f64,
}

impl Frame {
    fn new(spec: &PhantomSpec, rng: &mut ChaCha8Rng) -> Frame {
        let fov_512: u32 = rng.random_range(310..=410);
        let spacing = match spec.pixel_spacing_mm {
            Some(v) => ((v * 512.0).round() / 512.0).max(1.0 / 512.0),
            None => f64::from(fov_512) / 512.0,
        };
        let steps = [1.25, 1.5, 2.0, 2.5];
        let drawn_step = steps[rng.random_range(0..steps.len())];
        let step = match spec.slice_step_mm {
            Some(v) => ((v * 64.0).round() / 64.0).max(1.0 / 64.0),
            None => drawn_step,
        };
        // Recon centre a little off the isocentre, on a 0.5 mm grid.
        let off_x = f64::from(rng.random_range(-20i32..=20)) * 0.5;
        let off_y = f64::from(rng.random_range(-20i32..=20)) * 0.5;
        let x0 = -(spec.columns as f64 * spacing) / 2.0 + spacing / 2.0 + off_x;
        let y0 = -(spec.rows as f64 * spacing) / 2.0 + spacing / 2.0 + off_y;
        // Carina height and the scan centred a little below it (mid-lung), on a 0.25 mm grid.
        let z_ref: f64 = -rng.random_range(80.0..200.0);
        let scale = 0.42 * spec.columns.min(spec.rows) as f64 * spacing / 160.0;
        let centre = z_ref - 40.0 * scale + rng.random_range(-10.0..10.0) * scale;
        let z0 = ((centre - (spec.slices as f64 - 1.0) * step / 2.0) * 4.0).round() / 4.0;
        Frame {
            rows: spec.rows,
            columns: spec.columns,
            slices: spec.slices,
            spacing,
            step,
            origin: [x0, y0, z0],
            z_ref,
        }
    }

    pub(crate) fn x(&self, column: usize) -> f64 {
        self.origin[0] + column as f64 * self.spacing
    }

    pub(crate) fn y(&self, row: usize) -> f64 {
        self.origin[1] + row as f64 * self.spacing
    }

    pub(crate) fn z(&self, index: usize) -> f64 {
        self.origin[2] + index as f64 * self.step
    }

    /// Whether (x, y) lies at least `margin` mm inside the image.
    pub(crate) fn contains_xy(&self, p: [f64; 3], margin: f64) -> bool {
        let x_hi = self.x(self.columns - 1);
        let y_hi = self.y(self.rows - 1);
        p[0] - margin >= self.origin[0]
            && p[0] + margin <= x_hi
            && p[1] - margin >= self.origin[1]
            && p[1] + margin <= y_hi
    }
}

/// An independent random stream for one part of the phantom (so adding nodules does not move
/// the ribs): ChaCha8 keyed by SHA-256 of (seed, name).
fn stream(seed: u64, name: &str) -> ChaCha8Rng {
    let mut hasher = Sha256::new();
    hasher.update(b"noduled-phantom-v1");
    hasher.update(seed.to_le_bytes());
    hasher.update(name.as_bytes());
    ChaCha8Rng::from_seed(hasher.finalize().into())
}

/// The seed of phantom `index` of a dataset written with `seed` (see [`write_dataset`]).
pub fn dataset_seed(seed: u64, index: u64) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(b"noduled-phantom-dataset-v1");
    hasher.update(seed.to_le_bytes());
    hasher.update(index.to_le_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// Generates a phantom (pure computation, no I/O). Out-of-range spec fields are clamped (see
/// [`PhantomSpec::clamped`]); call [`PhantomSpec::validate`] first to reject them instead.
pub fn generate(spec: &PhantomSpec) -> Phantom {
    let spec = spec.clamped();
    let seed = spec.seed;
    let frame = Frame::new(&spec, &mut stream(seed, "geometry"));
    let anatomy = anatomy::Anatomy::new(&frame, &mut stream(seed, "anatomy"));
    let vessels = trees::vessels(&anatomy, frame.spacing, &mut stream(seed, "vessels"));
    let top = frame.z(frame.slices - 1);
    let airways = trees::airways(&anatomy, top, frame.spacing, &mut stream(seed, "airways"));
    // Masses first (they need the most room), from their own stream so that adding one does not
    // move the nodules of an existing phantom more than the room it takes.
    let mut placed = nodules::place_masses(
        &anatomy,
        &frame,
        &spec.masses_mm,
        &mut stream(seed, "masses"),
    );
    placed.extend(nodules::place_after(
        &anatomy,
        &frame,
        &vessels,
        spec.nodules,
        &placed,
        &mut stream(seed, "nodules"),
    ));
    let mut noise_rng = stream(seed, "noise");
    let noise_drawn = noise_rng.random_range(10.0..20.0);
    let noise_sd_hu = spec.noise_sd_hu.unwrap_or(noise_drawn);
    let data = raster::render(&raster::Scene {
        frame: &frame,
        anatomy: &anatomy,
        vessels: &vessels,
        airways: &airways,
        nodules: &placed,
        noise_sd: noise_sd_hu,
        noise_seed: noise_rng.random(),
    });
    let hu = Array3::from_shape_vec((frame.slices, frame.rows, frame.columns), data)
        .expect("render returns slices * rows * columns values");
    let geometry = Geometry::axial(frame.origin, [frame.spacing, frame.spacing, frame.step]);
    let nodules = placed
        .iter()
        .map(|n| PhantomNodule {
            center_xyz: n.center,
            center_irc: geometry.xyz_to_irc(n.center),
            diameter_mm: n.diameter_mm,
            malignant: n.malignant,
            kind: n.kind,
            attachment: n.attachment,
        })
        .collect();
    let identity = identity::draw(spec.case_number, frame.step, &mut stream(seed, "identity"));
    // UIDs hash the whole spec: another matrix or slice count is another series.
    let fingerprint = format!(
        "seed={};slices={};rows={};columns={};nodules={};spacing={:?};step={:?};noise={:?};case={}",
        spec.seed,
        spec.slices,
        spec.rows,
        spec.columns,
        spec.nodules,
        spec.pixel_spacing_mm,
        spec.slice_step_mm,
        spec.noise_sd_hu,
        spec.case_number
    );
    // Masses only enter the fingerprint when present: phantoms without keep their UIDs.
    let fingerprint = if spec.masses_mm.is_empty() {
        fingerprint
    } else {
        format!("{fingerprint};masses={:?}", spec.masses_mm)
    };
    let derived = |what: &str| uid::derived(&["noduled-phantom-v1", &fingerprint, what]);
    let instances = (0..frame.slices)
        .map(|i| SourceInstance {
            sop_class_uid: CT_IMAGE_STORAGE.to_string(),
            sop_instance_uid: derived(&format!("sop/{i}")),
        })
        .collect();
    let series = SeriesInfo {
        series_uid: derived("series"),
        study_uid: derived("study"),
        frame_of_reference_uid: Some(derived("frame-of-reference")),
        patient_study: crate::volume::PatientStudy {
            patient_name: identity.patient_name.clone(),
            patient_id: identity.patient_id.clone(),
            patient_birth_date: identity.patient_birth_date.clone(),
            patient_sex: identity.patient_sex.clone(),
            study_date: identity.study_date.clone(),
            study_time: identity.study_time.clone(),
            study_id: identity.study_id.clone(),
            accession_number: identity.accession_number.clone(),
            referring_physician_name: String::new(),
            study_description: identity.study_description.clone(),
            specific_character_set: "ISO_IR 100".into(),
        },
        modality: "CT".into(),
        series_number: Some(identity.series_number.to_string()),
        series_description: Some(identity.series_description.clone()),
        slice_thickness_mm: Some(frame.step),
        instances,
        warnings: Vec::new(),
        contrast_agent: None,
        ctdi_vol_mgy: None,
    };
    Phantom {
        volume: Volume {
            hu,
            geometry,
            series,
        },
        nodules,
        identity,
        spec,
        noise_sd_hu,
        model: Arc::new(Model { anatomy, vessels }),
    }
}
