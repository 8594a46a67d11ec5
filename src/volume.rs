//! The CT volume and its geometry: the one in-memory shape every stage after DICOM parsing works on.
//!
//! IRC is (index, row, column) into the voxel array; XYZ is patient millimetres in DICOM's LPS frame.
//! The mapping is the book's: `xyz = origin + D · (c·sx, r·sy, i·sz)`, where the columns of `D` are the
//! row cosine, the column cosine and the slice normal.

use ndarray::Array3;
use serde::Serialize;

/// Where the voxels of a volume sit in patient space.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Geometry {
    /// Patient position (mm) of voxel (0, 0, 0): the first slice's ImagePositionPatient.
    pub origin_xyz: [f64; 3],
    /// (column spacing, row spacing, slice step) in mm.
    pub spacing_xyz: [f64; 3],
    /// Row-major 3×3 matrix whose columns are the row cosine, column cosine and slice normal.
    pub direction: [[f64; 3]; 3],
}

impl Geometry {
    /// Axis-aligned geometry (identity direction), handy for tests and phantoms.
    pub fn axial(origin_xyz: [f64; 3], spacing_xyz: [f64; 3]) -> Self {
        Geometry {
            origin_xyz,
            spacing_xyz,
            direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        }
    }

    /// The direction matrix as nine row-major numbers (the JSON form).
    pub fn direction_flat(&self) -> [f64; 9] {
        let d = &self.direction;
        [
            d[0][0], d[0][1], d[0][2], d[1][0], d[1][1], d[1][2], d[2][0], d[2][1], d[2][2],
        ]
    }

    /// Voxel coordinates (index, row, column; fractional allowed) to patient millimetres.
    pub fn irc_to_xyz(&self, irc: [f64; 3]) -> [f64; 3] {
        let scaled = [
            irc[2] * self.spacing_xyz[0],
            irc[1] * self.spacing_xyz[1],
            irc[0] * self.spacing_xyz[2],
        ];
        let mut xyz = self.origin_xyz;
        for (row, out) in self.direction.iter().zip(xyz.iter_mut()) {
            *out += row[0] * scaled[0] + row[1] * scaled[1] + row[2] * scaled[2];
        }
        xyz
    }

    /// Patient millimetres to fractional voxel coordinates (index, row, column): the exact inverse of
    /// [`Geometry::irc_to_xyz`], valid for any non-singular direction matrix (not only orthonormal).
    pub fn xyz_to_irc(&self, xyz: [f64; 3]) -> [f64; 3] {
        let delta = [
            xyz[0] - self.origin_xyz[0],
            xyz[1] - self.origin_xyz[1],
            xyz[2] - self.origin_xyz[2],
        ];
        let cri = solve3(&self.direction, delta);
        [
            cri[2] / self.spacing_xyz[2],
            cri[1] / self.spacing_xyz[1],
            cri[0] / self.spacing_xyz[0],
        ]
    }

    /// Voxel spacing in mm along (index, row, column).
    pub fn spacing_irc(&self) -> [f64; 3] {
        [
            self.spacing_xyz[2],
            self.spacing_xyz[1],
            self.spacing_xyz[0],
        ]
    }

    /// Volume of one voxel in mm³.
    pub fn voxel_volume_mm3(&self) -> f64 {
        self.spacing_xyz.iter().product()
    }
}

/// Solves `m · x = b` by Cramer's rule (3×3, well-conditioned direction matrices).
fn solve3(m: &[[f64; 3]; 3], b: [f64; 3]) -> [f64; 3] {
    let det = |a: &[[f64; 3]; 3]| {
        a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
            - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
            + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0])
    };
    let d = det(m);
    let mut x = [0.0; 3];
    for (col, out) in x.iter_mut().enumerate() {
        let mut replaced = *m;
        for row in 0..3 {
            replaced[row][col] = b[row];
        }
        *out = det(&replaced) / d;
    }
    x
}

/// One source image of a volume, in slice order: what an SR's evidence and image references need.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceInstance {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
}

/// Patient and study attributes copied from the source images, for derived objects (the SR) that
/// must join the same patient and study. Values are the DICOM strings as received; absent = empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PatientStudy {
    pub patient_name: String,
    pub patient_id: String,
    pub patient_birth_date: String,
    pub patient_sex: String,
    pub study_date: String,
    pub study_time: String,
    pub study_id: String,
    pub accession_number: String,
    pub referring_physician_name: String,
    pub study_description: String,
    pub specific_character_set: String,
}

/// Identity and provenance of the series a volume came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SeriesInfo {
    pub series_uid: String,
    pub study_uid: String,
    pub frame_of_reference_uid: Option<String>,
    /// Patient and study modules of the first source image (patient data: never log above debug).
    #[serde(skip)]
    pub patient_study: PatientStudy,
    pub modality: String,
    pub series_number: Option<String>,
    pub series_description: Option<String>,
    /// Nominal reconstructed slice thickness (0018,0050), if present.
    pub slice_thickness_mm: Option<f64>,
    /// Source images in the volume's index order (index 0 first).
    pub instances: Vec<SourceInstance>,
    /// Accepted-but-noteworthy properties (thick slices, tilt, uneven steps): shown in every output.
    pub warnings: Vec<String>,
    /// ContrastBolusAgent (0018,0010) of the first image, if any (see `pipeline::caveats`).
    pub contrast_agent: Option<String>,
    /// CTDIvol (0018,9345) of the first image in mGy, if any (see `pipeline::caveats`).
    pub ctdi_vol_mgy: Option<f64>,
}

/// A CT volume in Hounsfield units, indexed `[index, row, column]`.
#[derive(Debug, Clone)]
pub struct Volume {
    pub hu: Array3<f32>,
    pub geometry: Geometry,
    pub series: SeriesInfo,
}

impl Volume {
    /// `[index, row, column]` sizes.
    pub fn shape(&self) -> [usize; 3] {
        let s = self.hu.shape();
        [s[0], s[1], s[2]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn oblique() -> Geometry {
        // Rotated about z by 20° and tilted about x by 10°: row and column cosines stay orthonormal.
        let (a, b) = (20f64.to_radians(), 10f64.to_radians());
        let row = [a.cos(), a.sin(), 0.0];
        let col = [-a.sin() * b.cos(), a.cos() * b.cos(), b.sin()];
        let normal = [
            row[1] * col[2] - row[2] * col[1],
            row[2] * col[0] - row[0] * col[2],
            row[0] * col[1] - row[1] * col[0],
        ];
        Geometry {
            origin_xyz: [-160.5, -171.7, -340.0],
            spacing_xyz: [0.703125, 0.8, 2.5],
            direction: [
                [row[0], col[0], normal[0]],
                [row[1], col[1], normal[1]],
                [row[2], col[2], normal[2]],
            ],
        }
    }

    #[test]
    fn axial_mapping_matches_the_book() {
        let g = Geometry::axial([-166.0, -171.7, -340.0], [0.703125, 0.703125, 2.5]);
        let xyz = g.irc_to_xyz([89.65, 367.0, 316.03]);
        assert!((xyz[0] - (-166.0 + 316.03 * 0.703125)).abs() < 1e-9);
        assert!((xyz[1] - (-171.7 + 367.0 * 0.703125)).abs() < 1e-9);
        assert!((xyz[2] - (-340.0 + 89.65 * 2.5)).abs() < 1e-9);
    }

    #[test]
    fn oblique_column_step_moves_along_row_cosine() {
        let g = oblique();
        let a = g.irc_to_xyz([3.0, 4.0, 5.0]);
        let b = g.irc_to_xyz([3.0, 4.0, 6.0]);
        for k in 0..3 {
            assert!((b[k] - a[k] - g.direction[k][0] * g.spacing_xyz[0]).abs() < 1e-12);
        }
    }

    proptest! {
        #[test]
        fn irc_xyz_round_trip_oblique(i in -10.0f64..400.0, r in -10.0f64..600.0, c in -10.0f64..600.0) {
            let g = oblique();
            let back = g.xyz_to_irc(g.irc_to_xyz([i, r, c]));
            prop_assert!((back[0] - i).abs() < 1e-9 && (back[1] - r).abs() < 1e-9 && (back[2] - c).abs() < 1e-9);
        }
    }
}
