//! A cheap lung mask: which voxels of a chest CT are lung, so later stages can ask "is this
//! candidate in or touching the lung?" (false-positive reduction, masses), skip slices and tiles
//! with no lung (speed), and notice a series without a lung field (caveats).
//!
//! No model is involved; the mask is classical image processing, about 0.2 s for 512×512×133 on one
//! core (most of it in parallel per slice):
//!
//! 1. **air** = HU < [`LungMaskOptions::air_threshold_hu`] (−400 HU: lung parenchyma is −900…−500,
//!    soft tissue and vessels above −100);
//! 2. **outside air** is dropped: per axial slice, the air 4-connected to the slice's border (the
//!    air around the patient, under the table). Done slice by slice because the lungs do reach the
//!    first and last slices of a chest CT, so a 3D fill from the volume's faces would eat them;
//! 3. the remaining air, **inside the body**, is split into 3D 6-connected components; the largest
//!    is kept, and every other whose volume is at least [`LungMaskOptions::min_component_fraction`]
//!    of the largest and at least [`LungMaskOptions::min_component_ml`] (the two lungs, when the
//!    trachea does not join them). Bowel and stomach gas, air in the table and noise specks are
//!    smaller and go. The trachea and main bronchi are part of the mask when they join a lung;
//! 4. **holes are filled** per axial slice: every non-lung region not 4-connected to the slice's
//!    border (vessels, nodules, airway walls surrounded by lung in that slice) becomes lung. A
//!    nodule or vessel that touches the chest wall or the mediastinum is not enclosed, so it is
//!    not filled: it *touches* the mask, which is what [`LungMask::touches`] and
//!    [`LungMask::distance_mm`] are for.
//!
//! Limits: a body cut by the field of view (lung reaching the image edge) loses that part of the
//! lung in step 2; a lung collapsed to under 10 % of the other one's volume is dropped; a
//! pneumothorax or emphysematous bulla counts as lung; the mask is only as good as the −400 HU
//! threshold, so dense consolidation is not lung (it still touches it).

use crate::volume::Volume;
use ndarray::{Array3, ArrayView3};
use rayon::prelude::*;

/// How the mask is made; [`Default`] is what [`LungMask::compute`] uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LungMaskOptions {
    /// Voxels below this are air (HU).
    pub air_threshold_hu: f32,
    /// An inside-body air component is lung if its volume is at least this fraction of the largest.
    pub min_component_fraction: f64,
    /// ... and at least this many millilitres (drops specks when the largest is tiny).
    pub min_component_ml: f64,
}

impl Default for LungMaskOptions {
    fn default() -> Self {
        LungMaskOptions {
            air_threshold_hu: -400.0,
            min_component_fraction: 0.1,
            min_component_ml: 1.0,
        }
    }
}

/// Inclusive row and column bounds of the lung in one axial slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceBounds {
    pub row_min: usize,
    pub row_max: usize,
    pub col_min: usize,
    pub col_max: usize,
}

impl SliceBounds {
    /// The bounds grown by `margin` voxels on every side, clipped to `rows × cols`.
    pub fn grown(&self, margin: usize, rows: usize, cols: usize) -> SliceBounds {
        SliceBounds {
            row_min: self.row_min.saturating_sub(margin),
            row_max: (self.row_max + margin).min(rows.saturating_sub(1)),
            col_min: self.col_min.saturating_sub(margin),
            col_max: (self.col_max + margin).min(cols.saturating_sub(1)),
        }
    }

    /// Whether (row, col) lies inside the bounds.
    pub fn contains(&self, row: usize, col: usize) -> bool {
        (self.row_min..=self.row_max).contains(&row) && (self.col_min..=self.col_max).contains(&col)
    }
}

/// Which voxels are lung (see the module docs for how it is made and its limits).
#[derive(Debug, Clone, PartialEq)]
pub struct LungMask {
    mask: Array3<bool>,
    /// (column, row, slice) spacing in mm, as [`crate::Geometry::spacing_xyz`].
    spacing_xyz: [f64; 3],
    bounds: Vec<Option<SliceBounds>>,
    voxels: usize,
}

impl LungMask {
    /// The lung mask of `volume` with the default options.
    pub fn compute(volume: &Volume) -> LungMask {
        LungMask::compute_with(
            volume.hu.view(),
            volume.geometry.spacing_xyz,
            &LungMaskOptions::default(),
        )
    }

    /// The lung mask of an HU volume `[index, row, column]` with `spacing_xyz` = (column, row,
    /// slice) spacing in mm. An empty volume gives an empty mask.
    pub fn compute_with(
        hu: ArrayView3<'_, f32>,
        spacing_xyz: [f64; 3],
        options: &LungMaskOptions,
    ) -> LungMask {
        let shape = [hu.shape()[0], hu.shape()[1], hu.shape()[2]];
        let [n, h, w] = shape;
        let plane = h * w;
        let hu = hu.as_standard_layout();
        let hu = hu.as_slice().unwrap_or(&[]);
        let mut mask = vec![false; n * plane];
        if plane == 0 || hu.len() != mask.len() {
            return LungMask::from_parts(Array3::from_elem(shape, false), spacing_xyz);
        }

        // 1–2: inside-body air, slice by slice.
        let threshold = options.air_threshold_hu;
        mask.par_chunks_mut(plane)
            .zip(hu.par_chunks(plane))
            .for_each_init(Vec::new, |stack, (dst, src)| {
                for (m, &v) in dst.iter_mut().zip(src) {
                    *m = v < threshold;
                }
                // Border-connected air is outside: clear it.
                flood_from_border(dst, h, w, true, stack, |m| *m = false);
            });

        // 3: 3D components of inside air; keep the lungs.
        let (labels, sizes) = label6(&mask, shape);
        let voxel_ml = spacing_xyz.iter().product::<f64>() / 1000.0;
        let largest = sizes.iter().copied().max().unwrap_or(0);
        let keep: Vec<bool> = sizes
            .iter()
            .map(|&s| {
                s > 0
                    && (s == largest
                        || (s as f64 >= options.min_component_fraction * largest as f64
                            && s as f64 * voxel_ml >= options.min_component_ml))
            })
            .collect();
        mask.par_iter_mut()
            .zip(labels.par_iter())
            .for_each(|(m, &l)| {
                *m = l != 0 && keep[l as usize - 1];
            });
        drop(labels);

        // 4: fill per-slice holes (non-lung regions not connected to the slice border).
        mask.par_chunks_mut(plane)
            .for_each_init(Vec::new, |stack, dst| {
                if !dst.iter().any(|&m| m) {
                    return;
                }
                // Mark border-connected background in a scratch plane, then fill the rest.
                let mut outside: Vec<bool> = dst.iter().map(|&m| !m).collect();
                flood_from_border(&mut outside, h, w, true, stack, |o| *o = false);
                // `outside` is now true exactly on enclosed background: the holes.
                for (m, o) in dst.iter_mut().zip(&outside) {
                    *m |= *o;
                }
            });

        let array =
            Array3::from_shape_vec(shape, mask).unwrap_or_else(|_| Array3::from_elem(shape, false));
        LungMask::from_parts(array, spacing_xyz)
    }

    /// A mask from a ready-made boolean volume (tests, other segmenters): computes the per-slice
    /// bounds and the voxel count.
    pub fn from_parts(mask: Array3<bool>, spacing_xyz: [f64; 3]) -> LungMask {
        let mask = if mask.is_standard_layout() {
            mask
        } else {
            mask.as_standard_layout().to_owned()
        };
        let (h, w) = (mask.shape()[1], mask.shape()[2]);
        let plane = h * w;
        let bounds: Vec<Option<SliceBounds>> = match mask.as_slice() {
            Some(flat) if plane > 0 => flat
                .par_chunks(plane)
                .map(|slice| slice_bounds(slice, w))
                .collect(),
            _ => vec![None; mask.shape()[0]],
        };
        let voxels = mask.iter().filter(|&&m| m).count();
        LungMask {
            mask,
            spacing_xyz,
            bounds,
            voxels,
        }
    }

    /// `[index, row, column]` sizes.
    pub fn shape(&self) -> [usize; 3] {
        let s = self.mask.shape();
        [s[0], s[1], s[2]]
    }

    /// The mask itself, `[index, row, column]`.
    pub fn mask(&self) -> ArrayView3<'_, bool> {
        self.mask.view()
    }

    /// Whether voxel (index, row, column) is lung; `false` outside the volume.
    pub fn contains(&self, irc: [usize; 3]) -> bool {
        self.mask.get(irc).copied().unwrap_or(false)
    }

    /// Whether the voxel nearest to fractional (index, row, column) is lung.
    pub fn contains_point(&self, irc: [f64; 3]) -> bool {
        match nearest_voxel(irc, self.shape()) {
            Some(v) => self.contains(v),
            None => false,
        }
    }

    /// Distance (mm) from fractional (index, row, column) to the centre of the nearest lung voxel,
    /// searching up to `max_mm`: `Some(0.0)` inside the lung, `None` when no lung voxel lies within
    /// `max_mm`. The search is a box around the point, so it costs (2·max_mm)³ / voxel volume.
    pub fn distance_mm(&self, irc: [f64; 3], max_mm: f64) -> Option<f64> {
        if self.contains_point(irc) {
            return Some(0.0);
        }
        let [sx, sy, sz] = self.spacing_xyz;
        let spacing_irc = [sz, sy, sx];
        let shape = self.shape();
        let mut lo = [0usize; 3];
        let mut hi = [0usize; 3];
        for a in 0..3 {
            if spacing_irc[a].is_nan()
                || spacing_irc[a] <= 0.0
                || !irc[a].is_finite()
                || shape[a] == 0
            {
                return None;
            }
            let reach = max_mm / spacing_irc[a];
            let l = (irc[a] - reach).ceil().max(0.0);
            let u = (irc[a] + reach).floor().min(shape[a] as f64 - 1.0);
            if u < l {
                return None;
            }
            lo[a] = l as usize;
            hi[a] = u as usize;
        }
        let mut best = f64::INFINITY;
        for i in lo[0]..=hi[0] {
            if self.bounds[i].is_none() {
                continue;
            }
            let di = (i as f64 - irc[0]) * spacing_irc[0];
            for r in lo[1]..=hi[1] {
                let dr = (r as f64 - irc[1]) * spacing_irc[1];
                let partial = di * di + dr * dr;
                if partial >= best {
                    continue;
                }
                for c in lo[2]..=hi[2] {
                    if self.mask[[i, r, c]] {
                        let dc = (c as f64 - irc[2]) * spacing_irc[2];
                        best = best.min(partial + dc * dc);
                    }
                }
            }
        }
        let d = best.sqrt();
        (d <= max_mm).then_some(d)
    }

    /// Whether any of `voxels` (index, row, column) lies in the lung or within `margin_mm` of it.
    /// `margin_mm = 0` asks for overlap; one voxel spacing asks for face contact or overlap.
    pub fn touches<I>(&self, voxels: I, margin_mm: f64) -> bool
    where
        I: IntoIterator<Item = [usize; 3]>,
    {
        let mut near = Vec::new();
        for v in voxels {
            if self.contains(v) {
                return true;
            }
            if margin_mm > 0.0 {
                near.push(v);
            }
        }
        near.into_iter().any(|v| {
            self.distance_mm([v[0] as f64, v[1] as f64, v[2] as f64], margin_mm)
                .is_some()
        })
    }

    /// Whether axial slice `index` holds any lung (`false` past the last slice).
    pub fn slice_has_lung(&self, index: usize) -> bool {
        self.slice_bounds(index).is_some()
    }

    /// The lung's row/column bounds in axial slice `index`, `None` without lung.
    pub fn slice_bounds(&self, index: usize) -> Option<SliceBounds> {
        self.bounds.get(index).copied().flatten()
    }

    /// First and last slice with lung (inclusive), `None` when the mask is empty.
    pub fn slice_range(&self) -> Option<(usize, usize)> {
        let first = self.bounds.iter().position(Option::is_some)?;
        let last = self.bounds.iter().rposition(Option::is_some)?;
        Some((first, last))
    }

    /// Number of lung voxels.
    pub fn voxels(&self) -> usize {
        self.voxels
    }

    /// Lung volume in millilitres.
    pub fn volume_ml(&self) -> f64 {
        self.voxels as f64 * self.spacing_xyz.iter().product::<f64>() / 1000.0
    }

    /// Fraction of the volume's voxels that are lung (0 for an empty volume).
    pub fn lung_fraction(&self) -> f64 {
        let total = self.mask.len();
        if total == 0 {
            0.0
        } else {
            self.voxels as f64 / total as f64
        }
    }
}

/// The voxel nearest to a fractional (index, row, column), if it lies in the volume.
fn nearest_voxel(irc: [f64; 3], shape: [usize; 3]) -> Option<[usize; 3]> {
    let mut out = [0usize; 3];
    for a in 0..3 {
        let v = irc[a].round();
        if !(v >= 0.0 && v < shape[a] as f64) {
            return None;
        }
        out[a] = v as usize;
    }
    Some(out)
}

/// Bounds of the `true` pixels of one `h × w` plane (row-major, width `w`).
fn slice_bounds(plane: &[bool], w: usize) -> Option<SliceBounds> {
    let mut b: Option<SliceBounds> = None;
    for (r, row) in plane.chunks(w).enumerate() {
        let Some(first) = row.iter().position(|&m| m) else {
            continue;
        };
        let last = row.iter().rposition(|&m| m).unwrap_or(first);
        b = Some(match b {
            None => SliceBounds {
                row_min: r,
                row_max: r,
                col_min: first,
                col_max: last,
            },
            Some(s) => SliceBounds {
                row_min: s.row_min,
                row_max: r,
                col_min: s.col_min.min(first),
                col_max: s.col_max.max(last),
            },
        });
    }
    b
}

/// Flood fill of the pixels equal to `value` that are 4-connected to the border of an `h × w`
/// plane; `visit` changes each reached pixel so that it no longer equals `value`.
fn flood_from_border(
    plane: &mut [bool],
    h: usize,
    w: usize,
    value: bool,
    stack: &mut Vec<usize>,
    visit: impl Fn(&mut bool),
) {
    stack.clear();
    let seed = |p: usize, plane: &mut [bool], stack: &mut Vec<usize>| {
        if plane[p] == value {
            visit(&mut plane[p]);
            stack.push(p);
        }
    };
    for c in 0..w {
        seed(c, plane, stack);
        seed((h - 1) * w + c, plane, stack);
    }
    for r in 0..h {
        seed(r * w, plane, stack);
        seed(r * w + w - 1, plane, stack);
    }
    while let Some(p) = stack.pop() {
        let (r, c) = (p / w, p % w);
        let mut push = |q: usize| {
            if plane[q] == value {
                visit(&mut plane[q]);
                stack.push(q);
            }
        };
        if r > 0 {
            push(p - w);
        }
        if r + 1 < h {
            push(p + w);
        }
        if c > 0 {
            push(p - 1);
        }
        if c + 1 < w {
            push(p + 1);
        }
    }
}

/// 6-connected components of a flat `[n, h, w]` mask: labels (0 = background, 1..) and each
/// component's voxel count (`sizes[label - 1]`).
fn label6(mask: &[bool], shape: [usize; 3]) -> (Vec<u32>, Vec<usize>) {
    let [n, h, w] = shape;
    let plane = h * w;
    let mut labels = vec![0u32; mask.len()];
    let mut sizes = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || labels[start] != 0 {
            continue;
        }
        let label = sizes.len() as u32 + 1;
        labels[start] = label;
        stack.push(start);
        let mut size = 0usize;
        while let Some(p) = stack.pop() {
            size += 1;
            let i = p / plane;
            let r = (p % plane) / w;
            let c = p % w;
            let mut push = |q: usize| {
                if mask[q] && labels[q] == 0 {
                    labels[q] = label;
                    stack.push(q);
                }
            };
            if i > 0 {
                push(p - plane);
            }
            if i + 1 < n {
                push(p + plane);
            }
            if r > 0 {
                push(p - w);
            }
            if r + 1 < h {
                push(p + w);
            }
            if c > 0 {
                push(p - 1);
            }
            if c + 1 < w {
                push(p + 1);
            }
        }
        sizes.push(size);
    }
    (labels, sizes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phantom::{generate, PhantomSpec};

    /// A 20×40×40 body of soft tissue in air with two air "lungs" (one holding a dense nodule)
    /// and a small gas bubble.
    fn toy() -> Array3<f32> {
        let mut hu = Array3::from_elem((20, 40, 40), -1000.0f32);
        for i in 0..20 {
            for r in 4..36 {
                for c in 4..36 {
                    hu[[i, r, c]] = 40.0;
                }
            }
            for r in 8..30 {
                for c in 7..18 {
                    hu[[i, r, c]] = -850.0;
                }
                for c in 22..33 {
                    hu[[i, r, c]] = -850.0;
                }
            }
        }
        // Nodule inside the left lung, vessel-like plug.
        for i in 8..11 {
            for r in 15..18 {
                for c in 10..13 {
                    hu[[i, r, c]] = 30.0;
                }
            }
        }
        // Gas bubble of 2×2×2 voxels in the soft tissue below the lungs.
        for i in 5..7 {
            for r in 32..34 {
                for c in 15..17 {
                    hu[[i, r, c]] = -900.0;
                }
            }
        }
        hu
    }

    #[test]
    fn toy_lungs_kept_outside_air_and_gas_dropped_holes_filled() {
        let m = LungMask::compute_with(toy().view(), [1.0, 1.0, 1.0], &LungMaskOptions::default());
        assert_eq!(m.voxels(), 2 * 20 * 22 * 11);
        assert!(m.contains([9, 16, 11]), "nodule inside the lung is filled");
        assert!(!m.contains([0, 0, 0]), "outside air");
        assert!(!m.contains([5, 32, 15]), "gas bubble");
        assert!(!m.contains([9, 20, 20]), "mediastinum");
        assert!(!m.contains([99, 0, 0]), "outside the volume");
        let b = m.slice_bounds(3).expect("lung in slice 3");
        assert_eq!((b.row_min, b.row_max, b.col_min, b.col_max), (8, 29, 7, 32));
        assert!(m.slice_has_lung(19) && !m.slice_has_lung(20));
        assert_eq!(m.slice_range(), Some((0, 19)));
        let frac = m.lung_fraction();
        assert!((frac - m.voxels() as f64 / (20.0 * 1600.0)).abs() < 1e-12);
        assert!((m.volume_ml() - m.voxels() as f64 / 1000.0).abs() < 1e-9);
    }

    #[test]
    fn distance_and_touch() {
        let m = LungMask::compute_with(toy().view(), [0.5, 0.5, 2.0], &LungMaskOptions::default());
        // Column 20 lies 3 columns (1.5 mm) right of the left lung's last column 17.
        let d = m.distance_mm([9.0, 20.0, 20.0], 5.0).expect("within 5 mm");
        assert!((d - 1.0).abs() < 1e-9, "nearest is column 22 or 17: {d}");
        assert_eq!(m.distance_mm([9.0, 16.0, 10.0], 5.0), Some(0.0));
        assert_eq!(m.distance_mm([9.0, 20.0, 20.0], 0.5), None);
        assert!(m.touches([[9, 20, 18]], 0.5), "face neighbour of the lung");
        assert!(!m.touches([[9, 20, 20]], 0.5));
        assert!(m.touches([[9, 20, 20], [9, 20, 17]], 0.0), "overlap");
    }

    #[test]
    fn empty_and_airless_volumes() {
        let empty = Array3::<f32>::zeros((0, 4, 4));
        let m = LungMask::compute_with(empty.view(), [1.0; 3], &LungMaskOptions::default());
        assert_eq!(m.voxels(), 0);
        assert_eq!(m.lung_fraction(), 0.0);
        assert_eq!(m.slice_range(), None);
        let solid = Array3::from_elem((4, 8, 8), 50.0f32);
        let m = LungMask::compute_with(solid.view(), [1.0; 3], &LungMaskOptions::default());
        assert_eq!(m.voxels(), 0);
        assert_eq!(m.distance_mm([1.0, 1.0, 1.0], 100.0), None);
        assert!(!m.touches([[1, 1, 1]], 10.0));
    }

    #[test]
    fn phantom_mask_agrees_with_the_analytic_lungs() {
        let phantom = generate(&PhantomSpec {
            seed: 7,
            slices: 40,
            rows: 96,
            columns: 96,
            nodules: 3,
            ..PhantomSpec::default()
        });
        let m = LungMask::compute(&phantom.volume);
        let g = &phantom.volume.geometry;
        let [n, h, w] = m.shape();
        let (mut both, mut truth, mut mine) = (0usize, 0usize, 0usize);
        for i in 0..n {
            for r in 0..h {
                for c in 0..w {
                    let t = phantom.in_lung(g.irc_to_xyz([i as f64, r as f64, c as f64]));
                    let p = m.contains([i, r, c]);
                    truth += t as usize;
                    mine += p as usize;
                    both += (t && p) as usize;
                }
            }
        }
        assert!(truth > 0, "the phantom has lungs");
        let dice = 2.0 * both as f64 / (truth + mine) as f64;
        assert!(dice > 0.9, "dice {dice:.3} (truth {truth}, mask {mine})");
        for nodule in &phantom.nodules {
            let d = m
                .distance_mm(nodule.center_irc, nodule.diameter_mm / 2.0 + 2.0)
                .unwrap_or(f64::INFINITY);
            assert!(
                d.is_finite(),
                "nodule at {:?} touches the lung",
                nodule.center_irc
            );
        }
    }
}
