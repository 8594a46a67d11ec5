//! Series assembly: CT instances of one series → a validated, sorted [`Volume`] in Hounsfield units.
//!
//! The input rules are the ones commercial lung CAD applies: a series the models cannot be trusted on is
//! refused with a reason instead of being analysed and answered "no nodules". Geometry follows the book:
//! origin = first slice's ImagePositionPatient, spacing = (column spacing, row spacing, median slice
//! step), direction columns = (row cosine, column cosine, slice normal).

use super::instance::CtInstance;
use crate::volume::{Geometry, SeriesInfo, SourceInstance, Volume};
use ndarray::Array3;
use rayon::prelude::*;
use std::fmt;

/// Thresholds of the input rules (see `config/noduled.toml`, section `[series]`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeriesRules {
    /// Fewer slices than this cannot feed the U-Net's 7-slice context: refused.
    pub min_slices: usize,
    /// A step larger than this multiple of the median step is a missing slice: refused.
    pub max_gap_factor: f64,
    /// Slices thicker than this (mm) are outside what the models were trained on: warned.
    pub warn_thickness_mm: f64,
    /// Slice normals further than this from the patient's z axis (degrees) are not axial: refused.
    pub max_axial_angle_deg: f64,
    /// Steps differing from the median by more than this fraction are uneven: warned.
    pub uneven_step_fraction: f64,
    /// Series with more slices than this are refused before their pixels fill memory.
    pub max_slices: usize,
}

impl Default for SeriesRules {
    fn default() -> Self {
        SeriesRules {
            min_slices: 7,
            max_gap_factor: 1.5,
            warn_thickness_mm: 2.5,
            max_axial_angle_deg: 30.0,
            uneven_step_fraction: 0.05,
            max_slices: 2000,
        }
    }
}

/// Why a series is not analysed. Each reason renders as one line; [`Refusal::code`] is stable for
/// logs, metrics and the daemon's records.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    NotCt {
        modality: String,
    },
    NoPixelData {
        sop_instance_uid: String,
    },
    UndecodablePixels {
        reason: String,
    },
    Localizer,
    MissingGeometry {
        attribute: &'static str,
    },
    NonAxial {
        angle_deg: f64,
    },
    MixedOrientation,
    MixedMatrix {
        first: (usize, usize),
        other: (usize, usize),
    },
    MixedPixelSpacing,
    DuplicatePosition {
        position_mm: f64,
    },
    Gap {
        gap_mm: f64,
        median_step_mm: f64,
    },
    TooFewSlices {
        slices: usize,
        min: usize,
    },
    TooManySlices {
        slices: usize,
        max: usize,
    },
}

impl Refusal {
    /// A short machine-readable name of the rule.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NotCt { .. } => "not_ct",
            Refusal::NoPixelData { .. } => "no_pixel_data",
            Refusal::UndecodablePixels { .. } => "undecodable_pixels",
            Refusal::Localizer => "localizer",
            Refusal::MissingGeometry { .. } => "missing_geometry",
            Refusal::NonAxial { .. } => "non_axial",
            Refusal::MixedOrientation => "mixed_orientation",
            Refusal::MixedMatrix { .. } => "mixed_matrix",
            Refusal::MixedPixelSpacing => "mixed_pixel_spacing",
            Refusal::DuplicatePosition { .. } => "duplicate_position",
            Refusal::Gap { .. } => "gap",
            Refusal::TooFewSlices { .. } => "too_few_slices",
            Refusal::TooManySlices { .. } => "too_many_slices",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotCt { modality } => write!(f, "not a CT series (modality {modality:?})"),
            Refusal::NoPixelData { sop_instance_uid } => {
                write!(f, "instance {sop_instance_uid} has no pixel data")
            }
            Refusal::UndecodablePixels { reason } => write!(f, "pixel data cannot be decoded: {reason}"),
            Refusal::Localizer => write!(f, "localizer (scout) images, not axial slices"),
            Refusal::MissingGeometry { attribute } => write!(f, "missing or invalid {attribute}"),
            Refusal::NonAxial { angle_deg } => {
                write!(f, "not an axial series (slice normal {angle_deg:.1}° from the patient's z axis)")
            }
            Refusal::MixedOrientation => write!(f, "slices with different orientations"),
            Refusal::MixedMatrix { first, other } => write!(
                f,
                "slices with different matrix sizes ({}×{} and {}×{})",
                first.0, first.1, other.0, other.1
            ),
            Refusal::MixedPixelSpacing => write!(f, "slices with different pixel spacings"),
            Refusal::DuplicatePosition { position_mm } => {
                write!(f, "two slices at the same position ({position_mm:.2} mm along the normal)")
            }
            Refusal::Gap { gap_mm, median_step_mm } => write!(
                f,
                "missing slices: a gap of {gap_mm:.2} mm where the median step is {median_step_mm:.2} mm"
            ),
            Refusal::TooFewSlices { slices, min } => {
                write!(f, "{slices} slices; at least {min} are needed")
            }
            Refusal::TooManySlices { slices, max } => {
                write!(f, "{slices} slices; at most {max} are accepted")
            }
        }
    }
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// Median as numpy computes it (mean of the two middle values for an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// Sorted slices with their geometry, before pixels are converted.
struct Layout {
    geometry: Geometry,
    warnings: Vec<String>,
}

/// Checks every rule on the headers and sorts `instances` along the slice normal.
fn validate_and_sort(instances: &mut [CtInstance], rules: &SeriesRules) -> Result<Layout, Refusal> {
    let first = instances[0].header.clone();
    if let Some(bad) = instances
        .iter()
        .find(|i| !i.header.modality.eq_ignore_ascii_case("CT"))
    {
        return Err(Refusal::NotCt {
            modality: bad.header.modality.clone(),
        });
    }
    if instances.iter().any(|i| i.header.is_localizer()) {
        return Err(Refusal::Localizer);
    }
    if instances.len() > rules.max_slices {
        return Err(Refusal::TooManySlices {
            slices: instances.len(),
            max: rules.max_slices,
        });
    }
    let matrix = (first.rows, first.columns);
    if matrix.0 == 0 || matrix.1 == 0 {
        return Err(Refusal::MissingGeometry {
            attribute: "Rows/Columns",
        });
    }
    if let Some(other) = instances
        .iter()
        .map(|i| (i.header.rows, i.header.columns))
        .find(|m| *m != matrix)
    {
        return Err(Refusal::MixedMatrix {
            first: matrix,
            other,
        });
    }
    let orientation = first.orientation.ok_or(Refusal::MissingGeometry {
        attribute: "ImageOrientationPatient",
    })?;
    for instance in instances.iter() {
        let other = instance
            .header
            .orientation
            .ok_or(Refusal::MissingGeometry {
                attribute: "ImageOrientationPatient",
            })?;
        if orientation
            .iter()
            .zip(other)
            .any(|(a, b)| (a - b).abs() > 1e-4)
        {
            return Err(Refusal::MixedOrientation);
        }
    }
    let spacing = first.pixel_spacing.ok_or(Refusal::MissingGeometry {
        attribute: "PixelSpacing",
    })?;
    if spacing.iter().any(|s| *s <= 0.0) {
        return Err(Refusal::MissingGeometry {
            attribute: "PixelSpacing",
        });
    }
    if instances.iter().any(|i| {
        i.header
            .pixel_spacing
            .is_none_or(|s| (s[0] - spacing[0]).abs() > 1e-4 || (s[1] - spacing[1]).abs() > 1e-4)
    }) {
        return Err(Refusal::MixedPixelSpacing);
    }
    let row_cosine = [orientation[0], orientation[1], orientation[2]];
    let column_cosine = [orientation[3], orientation[4], orientation[5]];
    let normal = cross(row_cosine, column_cosine);
    let normal_length = dot(normal, normal).sqrt();
    if normal_length < 0.5 {
        return Err(Refusal::MissingGeometry {
            attribute: "ImageOrientationPatient (cosines not orthogonal)",
        });
    }
    let angle_deg = (normal[2].abs() / normal_length)
        .clamp(0.0, 1.0)
        .acos()
        .to_degrees();
    if angle_deg > rules.max_axial_angle_deg {
        return Err(Refusal::NonAxial { angle_deg });
    }

    if instances.iter().any(|i| i.header.position.is_none()) {
        return Err(Refusal::MissingGeometry {
            attribute: "ImagePositionPatient",
        });
    }
    let along_normal = |i: &CtInstance| dot(normal, i.header.position.unwrap_or_default());
    instances.sort_by(|a, b| along_normal(a).total_cmp(&along_normal(b)));
    let positions: Vec<f64> = instances.iter().map(along_normal).collect();
    let steps: Vec<f64> = positions.windows(2).map(|w| w[1] - w[0]).collect();
    if let Some(at) = steps.iter().position(|s| *s < 0.01) {
        return Err(Refusal::DuplicatePosition {
            position_mm: positions[at],
        });
    }
    if instances.len() < rules.min_slices {
        return Err(Refusal::TooFewSlices {
            slices: instances.len(),
            min: rules.min_slices,
        });
    }
    let median_step = median(&steps);
    if let Some(gap) = steps
        .iter()
        .copied()
        .find(|s| *s > rules.max_gap_factor * median_step)
    {
        return Err(Refusal::Gap {
            gap_mm: gap,
            median_step_mm: median_step,
        });
    }

    let mut warnings = Vec::new();
    let thickness = first
        .slice_thickness
        .unwrap_or(median_step)
        .max(median_step);
    if thickness > rules.warn_thickness_mm {
        warnings.push(format!(
            "slices of {thickness:.2} mm are thicker than the {:.1} mm the models were trained on",
            rules.warn_thickness_mm
        ));
    }
    // Tilt shows as a non-axial normal, a GantryDetectorTilt value, or positions that drift sideways
    // (a sheared stack: the step between slices is not along the normal).
    let first_position = instances[0].header.position.unwrap_or_default();
    let last_position = instances[instances.len() - 1]
        .header
        .position
        .unwrap_or_default();
    let travel = [
        last_position[0] - first_position[0],
        last_position[1] - first_position[1],
        last_position[2] - first_position[2],
    ];
    let along = dot(travel, normal) / normal_length;
    let sideways = (dot(travel, travel) - along * along).max(0.0).sqrt();
    let shear_deg = sideways.atan2(along.abs()).to_degrees();
    let declared_tilt = first.gantry_tilt.unwrap_or(0.0).abs();
    let tilt = angle_deg.max(shear_deg).max(declared_tilt);
    if tilt > 0.5 {
        warnings.push(format!("gantry tilt of {tilt:.1}°"));
    }
    let (min_step, max_step) = steps
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), s| (lo.min(*s), hi.max(*s)));
    if (max_step - median_step).max(median_step - min_step)
        > rules.uneven_step_fraction * median_step
    {
        warnings.push(format!(
            "uneven slice steps ({min_step:.2} to {max_step:.2} mm)"
        ));
    }

    let geometry = Geometry {
        origin_xyz: instances[0].header.position.unwrap_or_default(),
        spacing_xyz: [spacing[1], spacing[0], median_step],
        direction: [
            [row_cosine[0], column_cosine[0], normal[0]],
            [row_cosine[1], column_cosine[1], normal[1]],
            [row_cosine[2], column_cosine[2], normal[2]],
        ],
    };
    Ok(Layout { geometry, warnings })
}

/// Validates a series' instances, sorts them along the slice normal and converts them to HU.
pub fn assemble(mut instances: Vec<CtInstance>, rules: &SeriesRules) -> Result<Volume, Refusal> {
    if instances.is_empty() {
        return Err(Refusal::TooFewSlices {
            slices: 0,
            min: rules.min_slices,
        });
    }
    let layout = validate_and_sort(&mut instances, rules)?;
    let (rows, columns) = (instances[0].header.rows, instances[0].header.columns);
    let mut hu = Array3::<f32>::zeros((instances.len(), rows, columns));
    if let Some(voxels) = hu.as_slice_mut() {
        voxels
            .par_chunks_mut(rows * columns)
            .zip(instances.par_iter())
            .for_each(|(out, instance)| instance.write_hu(out));
    }
    let first = &instances[0].header;
    let series = SeriesInfo {
        series_uid: first.series_uid.clone(),
        study_uid: first.study_uid.clone(),
        frame_of_reference_uid: first.frame_of_reference_uid.clone(),
        patient_study: first.patient_study.clone(),
        modality: first.modality.clone(),
        series_number: first.series_number.clone(),
        series_description: first.series_description.clone(),
        slice_thickness_mm: first.slice_thickness,
        instances: instances
            .iter()
            .map(|i| SourceInstance {
                sop_class_uid: i.header.sop_class_uid.clone(),
                sop_instance_uid: i.header.sop_instance_uid.clone(),
            })
            .collect(),
        warnings: layout.warnings,
        contrast_agent: first.contrast_agent.clone(),
        ctdi_vol_mgy: first.ctdi_vol_mgy,
    };
    Ok(Volume {
        hu,
        geometry: layout.geometry,
        series,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_like_numpy() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
