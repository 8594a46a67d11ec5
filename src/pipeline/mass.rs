//! Masses: lesions larger than anything the nodule classifier was trained on, reported as findings
//! of kind `mass` whatever the classifier says about them.
//!
//! The book's classifier saw LUNA16 nodules of 3–30 mm. On lung-cancer CTs the segmentation does
//! flag a 5 or 9 cm tumour as one large component, but the classifier, asked about a 32×48×48 crop
//! of something much bigger than the crop, scores it near 0: a silent "no". Radiology calls a
//! lesion over 3 cm a **mass** (Fleischner Society glossary, Hansell et al., Radiology 246, 2008:
//! "any pulmonary, pleural, or mediastinal lesion … greater than 3 cm in diameter"). Size alone is
//! not a rule: the segmentation also fires on anatomy (in LIDC-IDRI-0001 its four largest
//! components are 30–37 mm; on phantoms it outlines the heart), so [`masses`] works in steps:
//!
//! 1. **In the lung**: the thresholded segmentation (probability > 0.5, before the book's erosion)
//!    is kept only inside the [`lung_envelope`]: per slice, the convex hull of each lung. A mass
//!    against the chest wall or the mediastinum indents its lung's outline, so it lies inside that
//!    lung's hull; the chest wall, spine, great vessels and most of the mediastinum lie outside.
//! 2. **Opening** ([`open_mask`], a box of ±[`OPEN_RADIUS_MM`]): thin structures (vessels, pleural
//!    strips) and the bridges joining a mass to them disappear, compact regions keep their shape.
//! 3. **Regions**: 6-connected components of at least [`MIN_FRAGMENT_MM`], measured
//!    ([`regions_of_mask`]): equivalent diameter `(6V/π)^(1/3)`, extents, median HU, the share of
//!    boundary faces with aerated lung ([`AERATED_HU`]) within the opening's reach outward.
//! 4. **Rules**, all required ([`Region::is_mass`]):
//!    * size (Fleischner): equivalent diameter > [`MASS_DIAMETER_MM`] = 30 mm, or longest extent
//!      > 30 mm with an equivalent diameter of at least [`MIN_ELONGATED_DIAMETER_MM`];
//!    * density: median HU within [`SOLID_HU`] (−100 to 200 HU: solid in Lung-RADS terms, neither
//!      ground glass nor bone or contrast-filled vessels);
//!    * touching the lung: at least [`MIN_LUNG_CONTACT`] (0.45) of its boundary faces have aerated
//!      lung within reach (a mass against the wall is mostly surrounded by lung; the heart's part
//!      inside the left lung's hull is mostly surrounded by heart);
//!    * focal: equivalent diameter at least [`MIN_COMPACTNESS`] × its longest extent (a ball is 1,
//!      the phantoms' lobulated masses 0.65–0.7; pleura, diaphragm, hilar vessel trees and the aortic
//!      arch in LIDC 0.2–0.45), and not running from the first to the last slice (the heart and
//!      mediastinum do; a focal lesion in a chest CT does not).
//! 5. **Pieces** of one mass (the opening can cut a lobulated mass in two) within [`MERGE_GAP_MM`]
//!    of each other are merged and measured again as one mass.
//!
//! Each mass is a finding: centre = HU-weighted centre of its voxels (weights `clamp(HU) + 1001`, as
//! for candidates), diameter = equivalent diameter of its (opened, in-envelope) region, which runs
//! smaller than the lesion (about 0.6–0.8 of a phantom mass's nominal diameter). Malignancy follows
//! **Lung-RADS v2022**: a solid lesion ≥ 15 mm is category 4B, and a feature raising suspicion (the
//! size of a mass) makes it 4X ("very suspicious", probability of malignancy over 15 %). noduled
//! reports p_malignant from the diameter baseline used for nodules
//! ([`super::malignancy::p_malignant_from_diameter`] of the larger of diameter and extent, above
//! 0.999 from 21 mm) and every mass counts as malignant for the answer. The classifier is not asked:
//! candidates whose centre lies inside a mass are its fragments and are not reported as nodules.
//!
//! Measured (book models): phantom masses of 40 and 70 mm against the chest wall are each one mass
//! 2–7 mm from their centre; the LIDC cases gain none. Known limit: on phantoms the U-Net also
//! outlines the heart, and a mass pressed against the heart fuses with it into a region running
//! through the whole scan, which the focal rule rejects.

use super::group::label;
use super::{HU_MAX, HU_MIN};
use crate::volume::Geometry;
use ndarray::ArrayView3;

/// Over this (mm) a lesion is a mass (Fleischner glossary).
pub const MASS_DIAMETER_MM: f64 = 30.0;
/// An elongated region (extent > 30 mm) must still be this thick (equivalent diameter, mm).
pub const MIN_ELONGATED_DIAMETER_MM: f64 = 20.0;
/// Components under this equivalent diameter (mm) are never fragments of a mass.
pub const MIN_FRAGMENT_MM: f64 = 8.0;
/// Fragments whose bounding boxes come within this distance (mm) are one region.
pub const MERGE_GAP_MM: f64 = 5.0;
/// Median HU range of a solid (soft-tissue) mass.
pub const SOLID_HU: (f32, f32) = (-100.0, 200.0);
/// HU band of aerated lung around a mass.
pub const AERATED_HU: (f32, f32) = (-950.0, -400.0);
/// Least fraction of a mass's boundary faces that have aerated lung within reach outward (the
/// opening's half-width plus one voxel). Phantom masses against the chest wall measure 0.5–0.6;
/// the part of the phantom heart inside the left lung's hull (the cardiac notch) 0.33–0.37.
pub const MIN_LUNG_CONTACT: f64 = 0.45;
/// Least equivalent diameter / longest extent of a mass (a ball is 1, a lobulated mass about 0.7;
/// sheets of pleura and diaphragm, vessel trees and the aortic arch in LIDC are 0.2–0.45).
pub const MIN_COMPACTNESS: f64 = 0.55;
/// Radius (mm) of the box opening that breaks thin bridges (vessels, pleura) between a mass and
/// anatomy before measuring ([`open_mask`]).
pub const OPEN_RADIUS_MM: f64 = 4.0;
/// The Lung-RADS v2022 category of every mass.
pub const LUNG_RADS: &str = "4X";

/// A region of the segmentation and its measurements; a mass when [`Region::is_mass`].
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    /// HU-weighted centre, fractional (index, row, column).
    pub center_irc: [f64; 3],
    /// Voxels of the region (pre-erosion mask).
    pub voxels: usize,
    /// Equivalent diameter (mm) of its volume.
    pub diameter_mm: f64,
    /// Bounding-box extent (mm) along x, y, z.
    pub extent_mm: [f64; 3],
    /// Median HU of its voxels.
    pub median_hu: f32,
    /// Fraction of its boundary faces bordering aerated lung.
    pub lung_contact: f64,
    /// How many connected components (fragments) were merged into it.
    pub fragments: usize,
    /// Inclusive voxel bounding box, (index, row, column).
    pub bbox: [[usize; 3]; 2],
    /// Flat (standard-layout) indices of its voxels, sorted.
    flat: Vec<usize>,
    shape: [usize; 3],
}

impl Region {
    /// The longest extent (mm).
    pub fn max_extent_mm(&self) -> f64 {
        self.extent_mm.iter().copied().fold(0.0, f64::max)
    }

    /// Size rule (see the module docs).
    pub fn mass_sized(&self) -> bool {
        self.diameter_mm > MASS_DIAMETER_MM
            || (self.max_extent_mm() > MASS_DIAMETER_MM
                && self.diameter_mm >= MIN_ELONGATED_DIAMETER_MM)
    }

    /// Density rule: soft tissue.
    pub fn solid(&self) -> bool {
        (SOLID_HU.0..=SOLID_HU.1).contains(&self.median_hu)
    }

    /// Lung rule: enough of its boundary borders aerated lung.
    pub fn touches_lung(&self) -> bool {
        self.lung_contact >= MIN_LUNG_CONTACT
    }

    /// Equivalent diameter over the longest extent: about 1 for a ball, small for sheets and tubes.
    pub fn compactness(&self) -> f64 {
        let extent = self.max_extent_mm();
        if extent > 0.0 {
            self.diameter_mm / extent
        } else {
            0.0
        }
    }

    /// Whether it runs from the first to the last slice of a volume of several slices (anatomy
    /// such as the heart and mediastinum does; a focal lesion in a chest CT does not).
    pub fn spans_scan(&self) -> bool {
        self.shape[0] > 1 && self.bbox[0][0] == 0 && self.bbox[1][0] + 1 == self.shape[0]
    }

    /// Shape rule: compact (see [`MIN_COMPACTNESS`]) and not running through the whole scan.
    pub fn focal(&self) -> bool {
        self.compactness() >= MIN_COMPACTNESS && !self.spans_scan()
    }

    /// All rules: a mass.
    pub fn is_mass(&self) -> bool {
        self.mass_sized() && self.solid() && self.touches_lung() && self.focal()
    }

    /// Fraction of the region's voxels set in `mask` (same shape as the volume).
    pub fn fraction_in(&self, mask: ArrayView3<'_, bool>) -> f64 {
        let mask = mask.as_standard_layout();
        let Some(mask) = mask.as_slice() else {
            return 0.0;
        };
        if self.flat.is_empty() || mask.len() != self.shape.iter().product::<usize>() {
            return 0.0;
        }
        let inside = self.flat.iter().filter(|&&p| mask[p]).count();
        inside as f64 / self.flat.len() as f64
    }

    /// Whether voxel `irc` (fractional, rounded to the nearest voxel) belongs to the region.
    pub fn contains(&self, irc: [f64; 3]) -> bool {
        let mut idx = [0usize; 3];
        for axis in 0..3 {
            let v = irc[axis].round();
            if !(v >= 0.0 && v < self.shape[axis] as f64) {
                return false;
            }
            idx[axis] = v as usize;
        }
        let p = (idx[0] * self.shape[1] + idx[1]) * self.shape[2] + idx[2];
        self.flat.binary_search(&p).is_ok()
    }
}

/// Per-component bookkeeping during the first pass.
#[derive(Debug, Clone, Copy)]
struct Component {
    count: usize,
    lo: [usize; 3],
    hi: [usize; 3],
}

fn find(parent: &mut [usize], mut k: usize) -> usize {
    while parent[k] != k {
        parent[k] = parent[parent[k]];
        k = parent[k];
    }
    k
}

/// The large regions of the segmentation (`probability > 0.5`), measured, fragments merged; those
/// with [`Region::is_mass`] are masses. Regions are ordered by their first voxel.
pub fn regions(
    hu: ArrayView3<'_, f32>,
    probability: ArrayView3<'_, f32>,
    geometry: &Geometry,
) -> Vec<Region> {
    if probability.shape() != hu.shape() {
        return Vec::new();
    }
    let mask = super::group::threshold(probability);
    regions_of_mask(hu, mask.view(), geometry, MERGE_GAP_MM)
}

/// The components of `mask` of at least [`MIN_FRAGMENT_MM`], measured; those whose bounding
/// boxes come within `gap_mm` are merged (negative: never merged).
pub fn regions_of_mask(
    hu: ArrayView3<'_, f32>,
    mask: ArrayView3<'_, bool>,
    geometry: &Geometry,
    gap_mm: f64,
) -> Vec<Region> {
    let shape = [hu.shape()[0], hu.shape()[1], hu.shape()[2]];
    if shape.contains(&0) || mask.shape() != hu.shape() {
        return Vec::new();
    }
    let (labels, count) = label(mask);
    let labels = labels.as_standard_layout().into_owned();
    let labels = labels.as_slice().unwrap_or(&[]);
    let hu = hu.as_standard_layout();
    let hu = hu.as_slice().unwrap_or(&[]);
    if labels.len() != hu.len() {
        return Vec::new();
    }
    let (plane, width) = (shape[1] * shape[2], shape[2]);
    let unflatten = |p: usize| [p / plane, (p % plane) / width, p % width];

    let mut comps = vec![
        Component {
            count: 0,
            lo: [usize::MAX; 3],
            hi: [0; 3],
        };
        count
    ];
    for (p, &l) in labels.iter().enumerate() {
        if l == 0 {
            continue;
        }
        let c = &mut comps[l as usize - 1];
        let irc = unflatten(p);
        c.count += 1;
        for (axis, &v) in irc.iter().enumerate() {
            c.lo[axis] = c.lo[axis].min(v);
            c.hi[axis] = c.hi[axis].max(v);
        }
    }
    let voxel = geometry.voxel_volume_mm3();
    let [sx, sy, sz] = geometry.spacing_xyz.map(f64::abs);
    let axis_mm = [sz, sy, sx];
    let min_voxels = (std::f64::consts::PI / 6.0 * MIN_FRAGMENT_MM.powi(3) / voxel).ceil() as usize;
    let big: Vec<usize> = (0..count)
        .filter(|&k| comps[k].count >= min_voxels)
        .collect();

    // Merge fragments whose grown bounding boxes overlap (union-find over the few big ones).
    let mut parent: Vec<usize> = (0..big.len()).collect();
    let gap = |axis: usize, a: &Component, b: &Component| {
        let (lo, hi) = if a.hi[axis] < b.lo[axis] {
            (a.hi[axis], b.lo[axis])
        } else if b.hi[axis] < a.lo[axis] {
            (b.hi[axis], a.lo[axis])
        } else {
            return 0.0;
        };
        (hi - lo - 1) as f64 * axis_mm[axis]
    };
    for i in 0..big.len() {
        for j in i + 1..big.len() {
            let (a, b) = (&comps[big[i]], &comps[big[j]]);
            if (0..3).all(|axis| gap(axis, a, b) <= gap_mm) {
                let (ri, rj) = (find(&mut parent, i), find(&mut parent, j));
                parent[rj.max(ri)] = ri.min(rj);
            }
        }
    }
    // Label → region number (usize::MAX: not in a region).
    let mut region_of = vec![usize::MAX; count + 1];
    let mut roots: Vec<usize> = Vec::new();
    for (i, &k) in big.iter().enumerate() {
        let root = find(&mut parent, i);
        let r = match roots.iter().position(|&x| x == root) {
            Some(r) => r,
            None => {
                roots.push(root);
                roots.len() - 1
            }
        };
        region_of[k + 1] = r;
    }
    let n = roots.len();
    let mut flat: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut fragments = vec![0usize; n];
    for &k in &big {
        fragments[region_of[k + 1]] += 1;
    }
    for (p, &l) in labels.iter().enumerate() {
        let r = region_of[l as usize];
        if r != usize::MAX {
            flat[r].push(p);
        }
    }

    let in_region = |p: usize, r: usize| region_of[labels[p] as usize] == r;
    // How far out (voxels per axis) a boundary face looks for aerated lung: the opening's reach.
    let reach = axis_mm.map(|sp| {
        if sp > 0.0 {
            (OPEN_RADIUS_MM / sp).round() as usize + 1
        } else {
            1
        }
    });
    let mut out = Vec::with_capacity(n);
    for (r, voxels) in flat.into_iter().enumerate() {
        let mut weight = 0f64;
        let mut moment = [0f64; 3];
        let mut lo = [usize::MAX; 3];
        let mut hi = [0usize; 3];
        let mut values: Vec<f32> = Vec::with_capacity(voxels.len());
        let (mut faces, mut lung) = (0usize, 0usize);
        for &p in &voxels {
            let irc = unflatten(p);
            let w = (hu[p].clamp(HU_MIN, HU_MAX) + 1001.0) as f64;
            weight += w;
            for axis in 0..3 {
                moment[axis] += w * irc[axis] as f64;
                lo[axis] = lo[axis].min(irc[axis]);
                hi[axis] = hi[axis].max(irc[axis]);
            }
            values.push(hu[p]);
            let strides = [plane, width, 1];
            for axis in 0..3 {
                for up in [false, true] {
                    let q = if up {
                        (irc[axis] + 1 < shape[axis]).then(|| p + strides[axis])
                    } else {
                        (irc[axis] > 0).then(|| p - strides[axis])
                    };
                    let Some(q) = q else { continue };
                    if in_region(q, r) {
                        continue;
                    }
                    faces += 1;
                    // Aerated lung within reach outward (the opening may have left a rim of the
                    // lesion outside the region).
                    let steps = if up {
                        shape[axis] - 1 - irc[axis]
                    } else {
                        irc[axis]
                    };
                    let aerated = (1..=reach[axis].min(steps)).any(|k| {
                        let t = if up {
                            p + k * strides[axis]
                        } else {
                            p - k * strides[axis]
                        };
                        (AERATED_HU.0..=AERATED_HU.1).contains(&hu[t])
                    });
                    lung += usize::from(aerated);
                }
            }
        }
        let mid = values.len() / 2;
        let median_hu = if values.is_empty() {
            f32::NAN
        } else {
            *values.select_nth_unstable_by(mid, f32::total_cmp).1
        };
        let extent = |axis: usize| (hi[axis] - lo[axis] + 1) as f64 * axis_mm[axis];
        out.push(Region {
            center_irc: moment.map(|m| m / weight),
            voxels: voxels.len(),
            diameter_mm: super::group::equivalent_diameter_mm(voxels.len(), voxel),
            extent_mm: [extent(2), extent(1), extent(0)],
            median_hu,
            lung_contact: if faces == 0 {
                0.0
            } else {
                lung as f64 / faces as f64
            },
            fragments: fragments[r],
            bbox: [lo, hi],
            flat: voxels,
            shape,
        });
    }
    out
}

/// The masses of a volume given the segmentation's probability map: the thresholded segmentation
/// within the [`lung_envelope`], opened ([`open_mask`]) so that thin bridges to anatomy break,
/// measured ([`regions_of_mask`], no bounding-box merging), and kept where [`Region::is_mass`].
pub fn masses(
    hu: ArrayView3<'_, f32>,
    probability: ArrayView3<'_, f32>,
    geometry: &Geometry,
) -> Vec<Region> {
    if probability.shape() != hu.shape() || hu.is_empty() {
        return Vec::new();
    }
    masses_of_mask(hu, super::group::threshold(probability), geometry)
}

/// [`masses`] from the thresholded segmentation (`probability > 0.5`, before the book's erosion),
/// for callers that keep the mask rather than the probabilities.
pub fn masses_of_mask(
    hu: ArrayView3<'_, f32>,
    mut mask: ndarray::Array3<bool>,
    geometry: &Geometry,
) -> Vec<Region> {
    if mask.shape() != hu.shape() || hu.is_empty() {
        return Vec::new();
    }
    let envelope = lung_envelope(hu, geometry.spacing_xyz);
    ndarray::Zip::from(&mut mask)
        .and(&envelope)
        .for_each(|m, &e| *m = *m && e);
    drop(envelope);
    let opened = open_mask(mask.view(), geometry);
    drop(mask);
    let all = regions_of_mask(hu, opened.view(), geometry, -1.0);
    for r in &all {
        tracing::debug!(
            center_irc = ?r.center_irc,
            diameter_mm = r.diameter_mm,
            extent_mm = ?r.extent_mm,
            median_hu = r.median_hu,
            lung_contact = r.lung_contact,
            fragments = r.fragments,
            compactness = r.compactness(),
            spans_scan = r.spans_scan(),
            mass = r.is_mass(),
            "large segmentation region"
        );
    }
    let pieces: Vec<Region> = all.into_iter().filter(Region::is_mass).collect();
    if pieces.len() < 2 {
        return pieces;
    }
    // Pieces of one mass (the opening can cut a lobulated mass in two) within MERGE_GAP_MM of
    // each other are one mass, measured again as a whole.
    let mut union = ndarray::Array3::from_elem(hu.dim(), false);
    if let Some(flat) = union.as_slice_mut() {
        for piece in &pieces {
            for &p in &piece.flat {
                flat[p] = true;
            }
        }
    }
    regions_of_mask(hu, union.view(), geometry, MERGE_GAP_MM)
}

/// Morphological opening of `mask` by a box of half-widths [`OPEN_RADIUS_MM`] (rounded to voxels
/// per axis): the union of the boxes that fit inside the mask. Structures thinner than the box
/// (vessels, pleural strips, the bridges joining a mass to them) disappear; compact regions keep
/// their shape. Computed per connected component large enough to matter, in its bounding box.
pub fn open_mask(mask: ArrayView3<'_, bool>, geometry: &Geometry) -> ndarray::Array3<bool> {
    use ndarray::s;
    let dim = mask.dim();
    let mut out = ndarray::Array3::from_elem(dim, false);
    let [sx, sy, sz] = geometry.spacing_xyz.map(f64::abs);
    let half = [sz, sy, sx].map(|sp| {
        if sp > 0.0 {
            (OPEN_RADIUS_MM / sp).round() as usize
        } else {
            0
        }
    });
    let (labels, count) = label(mask);
    let mut lo = vec![[usize::MAX; 3]; count];
    let mut hi = vec![[0usize; 3]; count];
    let mut n = vec![0usize; count];
    for ((i, r, c), &l) in labels.indexed_iter() {
        if l == 0 {
            continue;
        }
        let k = l as usize - 1;
        n[k] += 1;
        for (axis, v) in [i, r, c].into_iter().enumerate() {
            lo[k][axis] = lo[k][axis].min(v);
            hi[k][axis] = hi[k][axis].max(v);
        }
    }
    let voxel = geometry.voxel_volume_mm3();
    let min_voxels = (std::f64::consts::PI / 6.0 * MIN_FRAGMENT_MM.powi(3) / voxel).ceil() as usize;
    for k in (0..count).filter(|&k| n[k] >= min_voxels) {
        let l = k as u32 + 1;
        let sub = labels.slice(s![
            lo[k][0]..=hi[k][0],
            lo[k][1]..=hi[k][1],
            lo[k][2]..=hi[k][2]
        ]);
        let own = sub.mapv(|v| v == l);
        let mut opened = own.clone();
        for (axis, &h) in half.iter().enumerate() {
            opened = box_filter(&opened, axis, h, false);
        }
        for (axis, &h) in half.iter().enumerate() {
            opened = box_filter(&opened, axis, h, true);
        }
        let mut target = out.slice_mut(s![
            lo[k][0]..=hi[k][0],
            lo[k][1]..=hi[k][1],
            lo[k][2]..=hi[k][2]
        ]);
        ndarray::Zip::from(&mut target)
            .and(&opened)
            .and(&own)
            .for_each(|t, &o, &m| *t = *t || (o && m));
    }
    out
}

/// One axis of a box erosion (`dilate` false: all of the window set; outside is background) or
/// dilation (`dilate` true: any of the window set), window `2 * half + 1`.
fn box_filter(
    input: &ndarray::Array3<bool>,
    axis: usize,
    half: usize,
    dilate: bool,
) -> ndarray::Array3<bool> {
    if half == 0 {
        return input.clone();
    }
    let mut out = input.clone();
    let len = input.len_of(ndarray::Axis(axis));
    for (lane_in, mut lane_out) in input
        .lanes(ndarray::Axis(axis))
        .into_iter()
        .zip(out.lanes_mut(ndarray::Axis(axis)))
    {
        // Prefix sums of set voxels make every window O(1).
        let mut prefix = vec![0usize; len + 1];
        for (j, &v) in lane_in.iter().enumerate() {
            prefix[j + 1] = prefix[j] + usize::from(v);
        }
        for j in 0..len {
            let a = j.saturating_sub(half);
            let b = (j + half).min(len - 1);
            let set = prefix[b + 1] - prefix[a];
            lane_out[j] = if dilate {
                set > 0
            } else {
                // Outside the volume counts as background: a window cut by the border fails.
                j >= half && j + half < len && set == 2 * half + 1
            };
        }
    }
    out
}

/// Inside-body air below this (HU) is lung for the envelope.
pub const ENVELOPE_AIR_HU: f32 = -400.0;
/// 2D air components smaller than this (mm²) in a slice are not a lung (trachea, bowel gas).
pub const MIN_LUNG_AREA_MM2: f64 = 400.0;

/// The lung envelope: per axial slice, the union of the convex hulls of each lung, where a lung is
/// a 4-connected region of air (< -400 HU) not connected to the slice's border (the air around the
/// patient) of at least 400 mm². A mass against the chest wall or the mediastinum indents its
/// lung's outline and lies inside that lung's hull; the heart, the mediastinum, the chest wall and
/// the spine lie outside both hulls (but for the part of the heart in the left lung's cardiac
/// notch).
pub fn lung_envelope(hu: ArrayView3<'_, f32>, spacing_xyz: [f64; 3]) -> ndarray::Array3<bool> {
    use rayon::prelude::*;
    let (n, h, w) = hu.dim();
    let mut out = ndarray::Array3::from_elem((n, h, w), false);
    let pixel_mm2 = (spacing_xyz[0] * spacing_xyz[1]).abs();
    let min_pixels = (MIN_LUNG_AREA_MM2 / pixel_mm2).ceil() as usize;
    let mut planes: Vec<ndarray::ArrayViewMut2<'_, bool>> = out.outer_iter_mut().collect();
    planes.par_iter_mut().enumerate().for_each(|(i, plane)| {
        let slice = hu.index_axis(ndarray::Axis(0), i);
        let air: Vec<bool> = slice.iter().map(|&v| v < ENVELOPE_AIR_HU).collect();
        // 0: not air, 1: outside air, 2..: lung components.
        let mut mark = vec![0u32; h * w];
        let mut stack = Vec::new();
        let fill = |start: usize, id: u32, mark: &mut Vec<u32>, stack: &mut Vec<usize>| {
            let mut pixels = Vec::new();
            mark[start] = id;
            stack.push(start);
            while let Some(p) = stack.pop() {
                pixels.push(p);
                let (r, c) = (p / w, p % w);
                let mut visit = |q: usize| {
                    if air[q] && mark[q] == 0 {
                        mark[q] = id;
                        stack.push(q);
                    }
                };
                if r > 0 {
                    visit(p - w);
                }
                if r + 1 < h {
                    visit(p + w);
                }
                if c > 0 {
                    visit(p - 1);
                }
                if c + 1 < w {
                    visit(p + 1);
                }
            }
            pixels
        };
        for r in 0..h {
            for c in 0..w {
                let border = r == 0 || c == 0 || r + 1 == h || c + 1 == w;
                let p = r * w + c;
                if border && air[p] && mark[p] == 0 {
                    fill(p, 1, &mut mark, &mut stack);
                }
            }
        }
        let mut next = 2;
        for p in 0..h * w {
            if !air[p] || mark[p] != 0 {
                continue;
            }
            let pixels = fill(p, next, &mut mark, &mut stack);
            next += 1;
            if pixels.len() < min_pixels {
                continue;
            }
            // Leftmost and rightmost pixel of each row are enough for the hull.
            let mut ends: std::collections::BTreeMap<usize, (usize, usize)> = Default::default();
            for &q in &pixels {
                let (r, c) = (q / w, q % w);
                let e = ends.entry(r).or_insert((c, c));
                e.0 = e.0.min(c);
                e.1 = e.1.max(c);
            }
            let mut points: Vec<(f64, f64)> = Vec::with_capacity(2 * ends.len());
            for (&r, &(c0, c1)) in &ends {
                points.push((c0 as f64, r as f64));
                points.push((c1 as f64, r as f64));
            }
            let hull = convex_hull(points);
            fill_convex(&hull, plane);
        }
    });
    out
}

/// Convex hull (Andrew's monotone chain), counter-clockwise, of (x, y) points.
fn convex_hull(mut points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    points.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    points.dedup();
    if points.len() < 3 {
        return points;
    }
    let cross = |o: (f64, f64), a: (f64, f64), b: (f64, f64)| {
        (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0)
    };
    let mut hull: Vec<(f64, f64)> = Vec::with_capacity(2 * points.len());
    // Lower hull left to right, then upper hull right to left, never popping into the lower one.
    for &p in &points {
        while hull.len() >= 2 && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0.0 {
            hull.pop();
        }
        hull.push(p);
    }
    let lower = hull.len() + 1;
    for &p in points.iter().rev().skip(1) {
        while hull.len() >= lower && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0.0 {
            hull.pop();
        }
        hull.push(p);
    }
    hull.pop();
    hull
}

/// Sets every pixel (column x, row y) of `plane` inside the convex polygon `hull` (or on it).
fn fill_convex(hull: &[(f64, f64)], plane: &mut ndarray::ArrayViewMut2<'_, bool>) {
    let (h, w) = plane.dim();
    if hull.is_empty() {
        return;
    }
    let y_lo = hull
        .iter()
        .map(|p| p.1)
        .fold(f64::INFINITY, f64::min)
        .max(0.0) as usize;
    let y_hi = (hull.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max) as usize).min(h - 1);
    for y in y_lo..=y_hi {
        let yf = y as f64;
        let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
        for k in 0..hull.len() {
            let a = hull[k];
            let b = hull[(k + 1) % hull.len()];
            if (a.1 - yf) * (b.1 - yf) > 0.0 {
                continue; // the edge does not reach this row
            }
            let xs = if a.1 == b.1 {
                [a.0, b.0]
            } else {
                let x = a.0 + (yf - a.1) / (b.1 - a.1) * (b.0 - a.0);
                [x, x]
            };
            for x in xs {
                x0 = x0.min(x);
                x1 = x1.max(x);
            }
        }
        if x0 > x1 {
            continue;
        }
        let c0 = x0.ceil().max(0.0) as usize;
        let c1 = (x1.floor().max(0.0) as usize).min(w - 1);
        for c in c0..=c1 {
            plane[[y, c]] = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    /// A chest-like box: a 4-voxel soft-tissue wall (40 HU) around lung (-850 HU), and balls of
    /// soft tissue (centre, radius in voxels) that the "segmentation" marks; 1 mm voxels.
    fn scene(shape: [usize; 3], balls: &[([f64; 3], f64)]) -> (Array3<f32>, Array3<f32>) {
        let [_, h, w] = shape;
        let mut hu = Array3::from_shape_fn(shape, |(_, r, c)| {
            if r < 4 || c < 4 || r + 4 >= h || c + 4 >= w {
                40.0f32
            } else {
                -850.0
            }
        });
        let mut prob = Array3::from_elem(shape, 0.0f32);
        for ((i, r, c), v) in hu.indexed_iter_mut() {
            for (centre, radius) in balls {
                let d = ((i as f64 - centre[0]).powi(2)
                    + (r as f64 - centre[1]).powi(2)
                    + (c as f64 - centre[2]).powi(2))
                .sqrt();
                if d <= *radius {
                    *v = 40.0;
                    prob[[i, r, c]] = 0.9;
                }
            }
        }
        (hu, prob)
    }

    fn mm1() -> Geometry {
        Geometry::axial([0.0; 3], [1.0, 1.0, 1.0])
    }

    #[test]
    fn a_solid_ball_in_lung_over_30_mm_is_a_mass() {
        let (hu, prob) = scene([48, 48, 48], &[([24.0, 24.0, 24.0], 17.0)]);
        let found = masses(hu.view(), prob.view(), &mm1());
        assert_eq!(found.len(), 1);
        let m = &found[0];
        assert!((m.diameter_mm - 34.0).abs() < 3.0, "{}", m.diameter_mm);
        assert!(m.center_irc.iter().all(|v| (v - 24.0).abs() < 0.5), "{m:?}");
        assert!(m.lung_contact > 0.9 && m.compactness() > 0.8);
        assert!(m.contains([24.0, 24.0, 24.0]) && !m.contains([2.0, 2.0, 2.0]));
    }

    #[test]
    fn small_balls_are_not_masses_and_pieces_merge() {
        let (hu, prob) = scene([48, 48, 48], &[([24.0, 24.0, 24.0], 10.0)]);
        assert!(masses(hu.view(), prob.view(), &mm1()).is_empty());
        // Two 34 mm balls 2 mm apart: one mass of two pieces.
        let (hu, prob) = scene(
            [48, 48, 92],
            &[([24.0, 24.0, 25.0], 17.0), ([24.0, 24.0, 62.0], 17.0)],
        );
        let found = masses(hu.view(), prob.view(), &mm1());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].fragments, 2);
        assert!(
            (found[0].center_irc[2] - 43.5).abs() < 1.0,
            "{:?}",
            found[0]
        );
    }

    #[test]
    fn thin_bridges_are_opened() {
        // A 34 mm ball joined to the wall by a 3 mm bar: the bar goes, the ball stays.
        let (mut hu, mut prob) = scene([48, 48, 64], &[([24.0, 24.0, 24.0], 17.0)]);
        for c in 40..60 {
            for r in 23..26 {
                for i in 23..26 {
                    hu[[i, r, c]] = 40.0;
                    prob[[i, r, c]] = 0.9;
                }
            }
        }
        let mask = prob.mapv(|p| p > 0.5);
        let opened = open_mask(mask.view(), &mm1());
        assert!(opened[[24, 24, 24]] && !opened[[24, 24, 50]]);
        assert_eq!(masses(hu.view(), prob.view(), &mm1()).len(), 1);
    }

    #[test]
    fn anatomy_shapes_and_densities_are_no_mass() {
        // The ball in soft tissue: no lung contact.
        let (mut hu, prob) = scene([48, 48, 48], &[([24.0, 24.0, 24.0], 17.0)]);
        hu.mapv_inplace(|v| if v < -800.0 { 45.0 } else { v });
        let mask = prob.mapv(|p| p > 0.5);
        let all = regions_of_mask(hu.view(), mask.view(), &mm1(), -1.0);
        assert_eq!(all.len(), 1);
        assert!(all[0].mass_sized() && all[0].solid() && !all[0].touches_lung());
        // Ground glass: not solid.
        let (mut hu, prob) = scene([48, 48, 48], &[([24.0, 24.0, 24.0], 17.0)]);
        hu.mapv_inplace(|v| if v > 0.0 { -600.0 } else { v });
        assert!(masses(hu.view(), prob.view(), &mm1()).is_empty());
        // A sheet 44 × 40 × 3 mm in lung: large but not compact.
        let mut mask = Array3::from_elem((48, 48, 48), false);
        let mut hu = Array3::from_elem((48, 48, 48), -850.0f32);
        for i in 2..46 {
            for r in 4..44 {
                for c in 23..26 {
                    mask[[i, r, c]] = true;
                    hu[[i, r, c]] = 40.0;
                }
            }
        }
        let all = regions_of_mask(hu.view(), mask.view(), &mm1(), -1.0);
        assert!(all[0].mass_sized() && all[0].compactness() < MIN_COMPACTNESS);
        assert!(!all[0].is_mass());
        // A column through every slice: not focal.
        let (hu, prob) = scene([30, 48, 48], &[([15.0, 24.0, 24.0], 17.0)]);
        let mask = prob.mapv(|p| p > 0.5);
        let all = regions_of_mask(hu.view(), mask.view(), &mm1(), -1.0);
        assert!(all[0].spans_scan() && !all[0].is_mass());
    }

    #[test]
    fn envelope_is_the_hull_of_each_lung() {
        // Two lungs, the right one with a notch where a "mass" indents it from the wall.
        let mut hu = Array3::from_elem((1, 40, 60), 40.0f32);
        for r in 5..35 {
            for c in 5..25 {
                hu[[0, r, c]] = -850.0;
            }
            for c in 35..55 {
                hu[[0, r, c]] = -850.0;
            }
        }
        for r in 15..25 {
            for c in 5..12 {
                hu[[0, r, c]] = 40.0; // the notch, open to the wall
            }
        }
        let env = lung_envelope(hu.view(), [1.0, 1.0, 1.0]);
        assert!(env[[0, 20, 8]], "the notch is inside the hull");
        assert!(
            !env[[0, 20, 30]],
            "the mediastinum between the lungs is not"
        );
        assert!(env[[0, 20, 45]] && !env[[0, 2, 10]] && !env[[0, 20, 57]]);
        // No air inside a body: no envelope.
        let solid = Array3::from_elem((2, 20, 20), 40.0f32);
        assert!(lung_envelope(solid.view(), [1.0, 1.0, 1.0])
            .iter()
            .all(|&v| !v));
    }

    #[test]
    fn hull_of_a_square_with_inner_points() {
        let pts = vec![
            (0.0, 0.0),
            (2.0, 0.0),
            (1.0, 1.0),
            (2.0, 2.0),
            (0.0, 2.0),
            (1.0, 0.0),
        ];
        let hull = convex_hull(pts);
        assert_eq!(hull.len(), 4, "{hull:?}");
        let mut plane = Array3::from_elem((1, 4, 4), false);
        let mut view = plane.index_axis_mut(ndarray::Axis(0), 0);
        fill_convex(&hull, &mut view);
        assert_eq!(plane.iter().filter(|&&v| v).count(), 9);
    }

    #[test]
    fn empty_and_mismatched_inputs_give_nothing() {
        let hu = Array3::from_elem((0, 4, 4), 0.0f32);
        assert!(masses(hu.view(), hu.view(), &mm1()).is_empty());
        let hu = Array3::from_elem((2, 4, 4), 0.0f32);
        let prob = Array3::from_elem((2, 4, 5), 1.0f32);
        assert!(masses(hu.view(), prob.view(), &mm1()).is_empty());
        assert!(regions(hu.view(), prob.view(), &mm1()).is_empty());
    }
}
