//! Measurements radiologists use, per finding: longest axial diameter and its perpendicular, mean
//! diameter, volume, mean/max HU and the nodule type, from the finding's voxels on the CT.
//!
//! The segmentation's voxels are a *seed*, not the answer: the book's U-Net is trained on LUNA16's
//! rough masks and its 0.5 threshold under- or over-shoots the edge. [`refine`] therefore grows the
//! seed on the CT itself: every voxel at or above the edge threshold (halfway between the seed's
//! median HU and aerated lung, [`LUNG_HU`]: the half-maximum edge of a blurred object, about
//! −400 HU for a solid nodule; never below [`MeasureOptions::grow_threshold_hu`], −650 HU, so
//! ground glass still counts) that is 6-connected to the seed and lies within
//! [`MeasureOptions::margin_mm`] (3 mm) of a seed voxel. The margin bounds leaks into an attached
//! vessel to 3 mm; given a lung mask ([`refine_within`], what the pipeline does), growth beyond
//! the seed stays inside the (hole-filled) lung, so a juxtapleural nodule does not leak into the
//! chest wall. When the seed holds no voxel that dense (a segmentation blip on aerated lung) the
//! region is the seed itself.
//!
//! Then, on the region ([`measure`]):
//! - **long axis**: the largest in-plane distance between two region pixels of one axial slice,
//!   over all slices, in mm, plus one pixel (centre-to-centre distances undercount an edge-to-edge
//!   diameter by one pixel); **short axis**: the region's width perpendicular to that axis in the
//!   same slice, plus one pixel. These are the Lung-RADS v2022 / Fleischner axial measurements;
//! - **mean diameter** = (long + short) / 2, rounded to 0.1 mm as Lung-RADS v2022 asks;
//! - **volume** = voxels × voxel volume (mm³);
//! - **mean / max HU** over the region;
//! - **type** from the HU distribution ([`NoduleType::classify`]): calcified when ≥ 10 % of the
//!   voxels are ≥ 200 HU; otherwise by the *solid* voxels (≥ −300 HU): the solid component's mean
//!   diameter (measured like the whole) against the whole's. Solid when it is ≥ 0.8 of the whole,
//!   part-solid when the solid part is ≥ 0.25 of it (and at least one voxel in every axis), ground
//!   glass below. The ratios leave room for the blurred rim a solid nodule always shows on CT.

use super::lung::LungMask;
use ndarray::ArrayView3;
use serde::{Deserialize, Serialize};

/// Typical HU of aerated lung, the background a nodule's edge is measured against.
pub const LUNG_HU: f32 = -850.0;
/// HU at or above which a voxel counts as solid tissue inside a nodule.
pub const SOLID_HU: f32 = -300.0;
/// HU at or above which a voxel counts as calcium.
pub const CALCIUM_HU: f32 = 200.0;
/// Share of calcium voxels that makes a nodule calcified.
pub const CALCIFIED_FRACTION: f64 = 0.1;
/// Solid-part / whole mean diameter at or above which a nodule is solid.
pub const SOLID_RATIO: f64 = 0.8;
/// Solid-part / whole mean diameter at or above which a non-solid nodule is part-solid.
pub const PART_SOLID_RATIO: f64 = 0.25;

/// How a finding's region is grown on the CT.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeasureOptions {
    /// Voxels at or above this HU can join the region.
    pub grow_threshold_hu: f32,
    /// How far (mm) the region may grow beyond the seed.
    pub margin_mm: f64,
}

impl Default for MeasureOptions {
    fn default() -> Self {
        MeasureOptions {
            grow_threshold_hu: -650.0,
            margin_mm: 3.0,
        }
    }
}

/// Nodule type by attenuation (Lung-RADS / Fleischner vocabulary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoduleType {
    Solid,
    PartSolid,
    GroundGlass,
    Calcified,
}

impl NoduleType {
    pub fn as_str(self) -> &'static str {
        match self {
            NoduleType::Solid => "solid",
            NoduleType::PartSolid => "part-solid",
            NoduleType::GroundGlass => "ground-glass",
            NoduleType::Calcified => "calcified",
        }
    }

    /// The type from the calcium share and the solid part's and whole's mean diameters (see the
    /// module docs).
    pub fn classify(calcium_fraction: f64, solid_mean_mm: f64, mean_mm: f64) -> NoduleType {
        if calcium_fraction >= CALCIFIED_FRACTION {
            return NoduleType::Calcified;
        }
        let ratio = if mean_mm > 0.0 {
            solid_mean_mm / mean_mm
        } else {
            0.0
        };
        if ratio >= SOLID_RATIO {
            NoduleType::Solid
        } else if ratio >= PART_SOLID_RATIO {
            NoduleType::PartSolid
        } else {
            NoduleType::GroundGlass
        }
    }
}

impl std::fmt::Display for NoduleType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A line segment in one axial slice, (row, column) end points in voxel units.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AxialSegment {
    pub slice: usize,
    pub from_rc: [f64; 2],
    pub to_rc: [f64; 2],
}

/// The measurements of one finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurements {
    /// Longest axial diameter (mm).
    pub long_axis_mm: f64,
    /// Longest diameter perpendicular to it in the same slice (mm).
    pub short_axis_mm: f64,
    /// (long + short) / 2, to 0.1 mm.
    pub mean_diameter_mm: f64,
    pub volume_mm3: f64,
    pub mean_hu: f64,
    pub max_hu: f64,
    #[serde(rename = "type")]
    pub nodule_type: NoduleType,
    /// Mean diameter (mm) of the solid part (≥ −300 HU); 0 without one.
    pub solid_mean_diameter_mm: f64,
    /// Share of voxels ≥ 200 HU.
    pub calcium_fraction: f64,
    /// Voxels of the measured region.
    pub voxels: usize,
    /// The axial slice with the longest diameter, and the diameter's end points there.
    pub long_axis: AxialSegment,
}

/// The finding's region: the seed grown on the CT (see the module docs). `seed` voxels outside the
/// volume are ignored; the result is sorted and free of duplicates.
pub fn refine(
    hu: ArrayView3<'_, f32>,
    spacing_xyz: [f64; 3],
    seed: &[[usize; 3]],
    options: &MeasureOptions,
) -> Vec<[usize; 3]> {
    refine_within(hu, spacing_xyz, seed, options, None)
}

/// [`refine`], growing beyond the seed only into voxels of `lung` (the filled lung mask holds
/// intrapulmonary nodules and vessels but not the chest wall or mediastinum): a juxtapleural
/// nodule keeps its segmented extent instead of leaking into the chest wall.
pub fn refine_within(
    hu: ArrayView3<'_, f32>,
    spacing_xyz: [f64; 3],
    seed: &[[usize; 3]],
    options: &MeasureOptions,
    lung: Option<&LungMask>,
) -> Vec<[usize; 3]> {
    let shape = [hu.shape()[0], hu.shape()[1], hu.shape()[2]];
    let seed: Vec<[usize; 3]> = seed
        .iter()
        .copied()
        .filter(|v| (0..3).all(|a| v[a] < shape[a]))
        .collect();
    if seed.is_empty() {
        return Vec::new();
    }
    let spacing = [spacing_xyz[2], spacing_xyz[1], spacing_xyz[0]];
    let reach: [usize; 3] = std::array::from_fn(|a| {
        if spacing[a] > 0.0 && options.margin_mm > 0.0 {
            (options.margin_mm / spacing[a]).floor() as usize
        } else {
            0
        }
    });
    // Local box: the seed's bounds grown by the reach.
    let mut lo = seed[0];
    let mut hi = seed[0];
    for v in &seed {
        for a in 0..3 {
            lo[a] = lo[a].min(v[a]);
            hi[a] = hi[a].max(v[a]);
        }
    }
    for a in 0..3 {
        lo[a] = lo[a].saturating_sub(reach[a]);
        hi[a] = (hi[a] + reach[a]).min(shape[a] - 1);
    }
    let dims = [hi[0] - lo[0] + 1, hi[1] - lo[1] + 1, hi[2] - lo[2] + 1];
    let at = |v: [usize; 3]| ((v[0] - lo[0]) * dims[1] + (v[1] - lo[1])) * dims[2] + (v[2] - lo[2]);
    let total = dims[0] * dims[1] * dims[2];

    // Allowed zone: within margin_mm of a seed voxel (ellipsoid offsets from each seed voxel).
    let mut is_seed = vec![false; total];
    for &v in &seed {
        is_seed[at(v)] = true;
    }
    let mut offsets = Vec::new();
    let r = reach.map(|x| x as isize);
    for di in -r[0]..=r[0] {
        for dr in -r[1]..=r[1] {
            for dc in -r[2]..=r[2] {
                let d2 = (di as f64 * spacing[0]).powi(2)
                    + (dr as f64 * spacing[1]).powi(2)
                    + (dc as f64 * spacing[2]).powi(2);
                if d2 <= options.margin_mm * options.margin_mm {
                    offsets.push([di, dr, dc]);
                }
            }
        }
    }
    let mut zone = is_seed.clone();
    for &v in &seed {
        // Interior seed voxels add nothing their neighbours do not.
        let interior = (0..3).all(|a| v[a] > lo[a] && v[a] < hi[a])
            && [[1, 0, 0], [0, 1, 0], [0, 0, 1]].iter().all(|d| {
                let plus = [v[0] + d[0], v[1] + d[1], v[2] + d[2]];
                let minus = [v[0] - d[0], v[1] - d[1], v[2] - d[2]];
                is_seed[at(plus)] && is_seed[at(minus)]
            });
        if interior {
            continue;
        }
        for o in &offsets {
            let q: [isize; 3] = std::array::from_fn(|a| v[a] as isize + o[a]);
            if (0..3).all(|a| q[a] >= lo[a] as isize && q[a] <= hi[a] as isize) {
                zone[at(q.map(|x| x as usize))] = true;
            }
        }
    }

    // The edge of a nodule on CT is where its HU is halfway to the lung's: grow above the
    // midpoint between the seed's dense core (median) and aerated lung, never below the floor.
    let mut core: Vec<f32> = seed
        .iter()
        .map(|&v| hu[v])
        .filter(|&v| v >= options.grow_threshold_hu)
        .collect();
    let threshold = if core.is_empty() {
        options.grow_threshold_hu
    } else {
        let mid = core.len() / 2;
        let (_, median, _) = core.select_nth_unstable_by(mid, f32::total_cmp);
        ((*median + LUNG_HU) / 2.0).max(options.grow_threshold_hu)
    };
    let dense = |v: [usize; 3]| hu[v] >= threshold;
    let mut inside = vec![false; total];
    let mut stack: Vec<[usize; 3]> = Vec::new();
    for &v in &seed {
        if dense(v) && !inside[at(v)] {
            inside[at(v)] = true;
            stack.push(v);
        }
    }
    if stack.is_empty() {
        let mut s = seed;
        s.sort_unstable();
        s.dedup();
        return s;
    }
    let mut region = Vec::new();
    while let Some(v) = stack.pop() {
        region.push(v);
        for a in 0..3 {
            for up in [false, true] {
                let mut q = v;
                if up {
                    if v[a] >= hi[a] {
                        continue;
                    }
                    q[a] += 1;
                } else {
                    if v[a] <= lo[a] {
                        continue;
                    }
                    q[a] -= 1;
                }
                let k = at(q);
                if !inside[k]
                    && zone[k]
                    && dense(q)
                    && (is_seed[k] || lung.is_none_or(|l| l.contains(q)))
                {
                    inside[k] = true;
                    stack.push(q);
                }
            }
        }
    }
    region.sort_unstable();
    region
}

/// The measurements of `region` (voxels, any order, no duplicates) on `hu`; `None` when empty.
pub fn measure(
    hu: ArrayView3<'_, f32>,
    spacing_xyz: [f64; 3],
    region: &[[usize; 3]],
) -> Option<Measurements> {
    let shape = hu.shape();
    let region: Vec<[usize; 3]> = region
        .iter()
        .copied()
        .filter(|v| v[0] < shape[0] && v[1] < shape[1] && v[2] < shape[2])
        .collect();
    if region.is_empty() {
        return None;
    }
    let values: Vec<f32> = region.iter().map(|&v| hu[v]).collect();
    let n = values.len() as f64;
    let mean_hu = values.iter().map(|&v| v as f64).sum::<f64>() / n;
    let max_hu = values.iter().copied().fold(f32::MIN, f32::max) as f64;
    let calcium_fraction = values.iter().filter(|&&v| v >= CALCIUM_HU).count() as f64 / n;
    let (long_axis_mm, short_axis_mm, long_axis) = axial_axes(&region, spacing_xyz)?;
    let mean_diameter_mm = round1((long_axis_mm + short_axis_mm) / 2.0);
    let solid: Vec<[usize; 3]> = region
        .iter()
        .zip(&values)
        .filter(|(_, v)| **v >= SOLID_HU)
        .map(|(&p, _)| p)
        .collect();
    let solid_mean_diameter_mm =
        axial_axes(&solid, spacing_xyz).map_or(0.0, |(l, s, _)| round1((l + s) / 2.0));
    let voxel_volume: f64 = spacing_xyz.iter().product();
    Some(Measurements {
        long_axis_mm,
        short_axis_mm,
        mean_diameter_mm,
        volume_mm3: n * voxel_volume,
        mean_hu,
        max_hu,
        nodule_type: NoduleType::classify(
            calcium_fraction,
            solid_mean_diameter_mm,
            mean_diameter_mm,
        ),
        solid_mean_diameter_mm,
        calcium_fraction,
        voxels: region.len(),
        long_axis,
    })
}

/// [`refine`] then [`measure`].
pub fn refine_and_measure(
    hu: ArrayView3<'_, f32>,
    spacing_xyz: [f64; 3],
    seed: &[[usize; 3]],
    options: &MeasureOptions,
) -> Option<(Vec<[usize; 3]>, Measurements)> {
    refine_and_measure_within(hu, spacing_xyz, seed, options, None)
}

/// [`refine_within`] then [`measure`].
pub fn refine_and_measure_within(
    hu: ArrayView3<'_, f32>,
    spacing_xyz: [f64; 3],
    seed: &[[usize; 3]],
    options: &MeasureOptions,
    lung: Option<&LungMask>,
) -> Option<(Vec<[usize; 3]>, Measurements)> {
    let region = refine_within(hu, spacing_xyz, seed, options, lung);
    let m = measure(hu, spacing_xyz, &region)?;
    Some((region, m))
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Longest axial diameter, its perpendicular width (both mm, one pixel added) and the long axis's
/// end points, over the slices of `region`.
fn axial_axes(region: &[[usize; 3]], spacing_xyz: [f64; 3]) -> Option<(f64, f64, AxialSegment)> {
    let (sx, sy) = (spacing_xyz[0], spacing_xyz[1]);
    let mut by_slice: std::collections::BTreeMap<usize, Vec<[usize; 2]>> = Default::default();
    for v in region {
        by_slice.entry(v[0]).or_default().push([v[1], v[2]]);
    }
    let mut best: Option<(f64, f64, AxialSegment)> = None;
    for (&slice, pixels) in &by_slice {
        let set: std::collections::HashSet<[usize; 2]> = pixels.iter().copied().collect();
        // Only the outline can hold the extreme pair.
        let outline: Vec<[usize; 2]> = pixels
            .iter()
            .copied()
            .filter(|&[r, c]| {
                r == 0
                    || c == 0
                    || !set.contains(&[r - 1, c])
                    || !set.contains(&[r + 1, c])
                    || !set.contains(&[r, c - 1])
                    || !set.contains(&[r, c + 1])
            })
            .collect();
        let mut long = (0.0f64, outline[0], outline[0]);
        for (k, a) in outline.iter().enumerate() {
            for b in &outline[k + 1..] {
                let dy = (a[0] as f64 - b[0] as f64) * sy;
                let dx = (a[1] as f64 - b[1] as f64) * sx;
                let d2 = dx * dx + dy * dy;
                if d2 > long.0 {
                    long = (d2, *a, *b);
                }
            }
        }
        let (d2, a, b) = long;
        let d = d2.sqrt();
        // Unit vector of the long axis in mm (x = column, y = row); a single pixel: along x.
        let (ux, uy) = if d > 0.0 {
            (
                (b[1] as f64 - a[1] as f64) * sx / d,
                (b[0] as f64 - a[0] as f64) * sy / d,
            )
        } else {
            (1.0, 0.0)
        };
        // One pixel along the axis: its spacing in that direction.
        let long_mm = d + ((ux * sx).powi(2) + (uy * sy).powi(2)).sqrt();
        let (vx, vy) = (-uy, ux);
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for p in &outline {
            let t = p[1] as f64 * sx * vx + p[0] as f64 * sy * vy;
            lo = lo.min(t);
            hi = hi.max(t);
        }
        let short_mm = (hi - lo) + ((vx * sx).powi(2) + (vy * sy).powi(2)).sqrt();
        if best.as_ref().is_none_or(|b| long_mm > b.0) {
            best = Some((
                long_mm,
                short_mm.min(long_mm),
                AxialSegment {
                    slice,
                    from_rc: [a[0] as f64, a[1] as f64],
                    to_rc: [b[0] as f64, b[1] as f64],
                },
            ));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    fn sphere(
        shape: [usize; 3],
        spacing_xyz: [f64; 3],
        center: [f64; 3],
        r: f64,
        hu: f32,
        vol: &mut Array3<f32>,
    ) {
        for i in 0..shape[0] {
            for row in 0..shape[1] {
                for c in 0..shape[2] {
                    let d2 = ((i as f64 - center[0]) * spacing_xyz[2]).powi(2)
                        + ((row as f64 - center[1]) * spacing_xyz[1]).powi(2)
                        + ((c as f64 - center[2]) * spacing_xyz[0]).powi(2);
                    if d2 <= r * r {
                        vol[[i, row, c]] = hu;
                    }
                }
            }
        }
    }

    #[test]
    fn a_sphere_grown_from_its_centre_measures_its_diameter() {
        let shape = [20, 40, 40];
        let spacing = [0.7, 0.7, 1.25];
        let mut hu = Array3::from_elem(shape, -850.0f32);
        sphere(shape, spacing, [10.0, 20.0, 20.0], 5.0, 40.0, &mut hu);
        // Seed: the centre only, margin large enough to reach the edge.
        let options = MeasureOptions {
            margin_mm: 6.0,
            ..MeasureOptions::default()
        };
        let (region, m) =
            refine_and_measure(hu.view(), spacing, &[[10, 20, 20]], &options).expect("measured");
        assert_eq!(region.len(), hu.iter().filter(|&&v| v > 0.0).count());
        assert!((m.long_axis_mm - 10.0).abs() <= 0.7, "{m:?}");
        assert!((m.short_axis_mm - 10.0).abs() <= 0.7, "{m:?}");
        let true_volume = 4.0 / 3.0 * std::f64::consts::PI * 125.0;
        assert!((m.volume_mm3 / true_volume - 1.0).abs() < 0.1, "{m:?}");
        assert_eq!(m.nodule_type, NoduleType::Solid);
        assert_eq!(m.max_hu, 40.0);
        assert_eq!(m.long_axis.slice, 10);
    }

    #[test]
    fn margin_bounds_the_growth() {
        let shape = [5, 60, 60];
        let spacing = [1.0, 1.0, 1.0];
        // A 1-pixel-wide dense line (a vessel) through the whole slice.
        let mut hu = Array3::from_elem(shape, -850.0f32);
        for c in 0..60 {
            hu[[2, 30, c]] = 30.0;
        }
        let region = refine(
            hu.view(),
            spacing,
            &[[2, 30, 30]],
            &MeasureOptions::default(),
        );
        assert_eq!(region.len(), 7, "3 mm each side of the seed: {region:?}");
        let m = measure(hu.view(), spacing, &region).expect("measured");
        assert!((m.long_axis_mm - 7.0).abs() < 1e-9);
        assert!((m.short_axis_mm - 1.0).abs() < 1e-9);
        assert_eq!(m.mean_diameter_mm, 4.0);
    }

    #[test]
    fn a_seed_on_air_is_its_own_region() {
        let hu = Array3::from_elem([3, 8, 8], -900.0f32);
        let region = refine(
            hu.view(),
            [1.0; 3],
            &[[1, 4, 4], [1, 4, 5]],
            &MeasureOptions::default(),
        );
        assert_eq!(region, vec![[1, 4, 4], [1, 4, 5]]);
        assert!(measure(hu.view(), [1.0; 3], &[]).is_none());
        assert!(refine(
            hu.view(),
            [1.0; 3],
            &[[9, 9, 9]],
            &MeasureOptions::default()
        )
        .is_empty());
    }

    #[test]
    fn types_from_hu() {
        assert_eq!(NoduleType::classify(0.2, 8.0, 8.0), NoduleType::Calcified);
        assert_eq!(NoduleType::classify(0.0, 7.0, 8.0), NoduleType::Solid);
        assert_eq!(NoduleType::classify(0.0, 4.0, 10.0), NoduleType::PartSolid);
        assert_eq!(
            NoduleType::classify(0.0, 1.0, 10.0),
            NoduleType::GroundGlass
        );
        assert_eq!(NoduleType::classify(0.0, 0.0, 0.0), NoduleType::GroundGlass);
    }
}
