//! Grouping: turns the segmentation's probability map into candidate nodules (the book's
//! `groupSegmentationOutput`, chapter 14), with the same rules as `scipy.ndimage`:
//!
//! 1. mask = probability > 0.5;
//! 2. one binary erosion with the 6-neighbour cross; voxels outside the volume count as background
//!    (scipy's `border_value=0`), so nothing on the volume's faces survives;
//! 3. 3D connected components with 6-connectivity, numbered like `scipy.ndimage.label`: in raster
//!    order (index, then row, then column) of each component's first voxel;
//! 4. each component's centre of mass, weighted by `clamp(HU, -1000, 1000) + 1001` (float32 weights,
//!    float64 sums), and its voxel count after erosion.
//!
//! On top of the book, each candidate gets its **segmented volume** `V`: the eroded component
//! dilated once by the same cross and intersected with the pre-erosion mask — the component's own
//! eroded voxels plus the mask voxels touching them (a mask voxel touching two components counts for
//! both). Mask fragments erased entirely by the erosion belong to no candidate. From `V` comes the
//! equivalent diameter, the diameter of a sphere of the same volume:
//! `d = (6 · V · voxel_volume / π)^(1/3)` (see [`equivalent_diameter_mm`]).
//!
//! The loops are plain index arithmetic on flat slices: the volume has tens of millions of voxels.

use super::{HU_MAX, HU_MIN};
use ndarray::{Array3, ArrayView3};

/// The probability above which a voxel is part of the mask.
pub const THRESHOLD: f32 = 0.5;

/// One connected component of the eroded mask.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Weighted centre of mass, fractional (index, row, column).
    pub center_irc: [f64; 3],
    /// Voxels of the component (after erosion).
    pub voxels: usize,
    /// Voxels of its segmented volume `V` (dilated back within the pre-erosion mask).
    pub segmented_voxels: usize,
}

/// Diameter (mm) of the sphere with the volume of `voxels` voxels of `voxel_volume_mm3` each.
pub fn equivalent_diameter_mm(voxels: usize, voxel_volume_mm3: f64) -> f64 {
    (6.0 * voxels as f64 * voxel_volume_mm3 / std::f64::consts::PI).cbrt()
}

/// `probability > THRESHOLD`.
pub fn threshold(probability: ArrayView3<'_, f32>) -> Array3<bool> {
    probability.mapv(|p| p > THRESHOLD)
}

/// Flat strides of a standard-layout `[n, h, w]` volume.
fn strides(shape: &[usize]) -> (usize, usize) {
    (shape[1] * shape[2], shape[2])
}

/// One binary erosion by the 6-neighbour cross, outside = background (`scipy.ndimage.binary_erosion`
/// with its default structure, one iteration, `border_value=0`).
pub fn erode(mask: ArrayView3<'_, bool>) -> Array3<bool> {
    let shape = mask.shape().to_vec();
    let (n, h, w) = (shape[0], shape[1], shape[2]);
    let mut out = Array3::from_elem((n, h, w), false);
    if n < 3 || h < 3 || w < 3 {
        return out; // every voxel touches a face
    }
    let src = mask.as_standard_layout();
    let src = src.as_slice().unwrap_or(&[]);
    let dst = out.as_slice_mut().unwrap_or(&mut []);
    let (si, sr) = strides(&shape);
    for i in 1..n - 1 {
        for r in 1..h - 1 {
            let base = i * si + r * sr;
            for c in 1..w - 1 {
                let p = base + c;
                dst[p] = src[p]
                    && src[p - 1]
                    && src[p + 1]
                    && src[p - sr]
                    && src[p + sr]
                    && src[p - si]
                    && src[p + si];
            }
        }
    }
    out
}

/// The (up to 6) face neighbours of flat position `p` = (i, r, c) inside an `[n, h, w]` volume.
#[inline]
fn neighbours(p: usize, irc: [usize; 3], shape: [usize; 3], out: &mut [usize; 6]) -> usize {
    let [i, r, c] = irc;
    let [n, h, w] = shape;
    let (si, sr) = (h * w, w);
    let mut k = 0;
    if i > 0 {
        out[k] = p - si;
        k += 1;
    }
    if i + 1 < n {
        out[k] = p + si;
        k += 1;
    }
    if r > 0 {
        out[k] = p - sr;
        k += 1;
    }
    if r + 1 < h {
        out[k] = p + sr;
        k += 1;
    }
    if c > 0 {
        out[k] = p - 1;
        k += 1;
    }
    if c + 1 < w {
        out[k] = p + 1;
        k += 1;
    }
    k
}

#[inline]
fn unflatten(p: usize, shape: [usize; 3]) -> [usize; 3] {
    let plane = shape[1] * shape[2];
    [p / plane, (p % plane) / shape[2], p % shape[2]]
}

/// 6-connected components of `mask`: a label volume (0 = background, components numbered 1.. in
/// raster order of their first voxel, as `scipy.ndimage.label`) and the number of components.
pub fn label(mask: ArrayView3<'_, bool>) -> (Array3<u32>, usize) {
    let shape = [mask.shape()[0], mask.shape()[1], mask.shape()[2]];
    let mut labels = Array3::<u32>::zeros(shape);
    let src = mask.as_standard_layout();
    let src = src.as_slice().unwrap_or(&[]);
    let dst = labels.as_slice_mut().unwrap_or(&mut []);
    let mut count = 0u32;
    let mut stack = Vec::new();
    let mut nb = [0usize; 6];
    for start in 0..src.len() {
        if !src[start] || dst[start] != 0 {
            continue;
        }
        count += 1;
        dst[start] = count;
        stack.push(start);
        while let Some(p) = stack.pop() {
            let k = neighbours(p, unflatten(p, shape), shape, &mut nb);
            for &q in &nb[..k] {
                if src[q] && dst[q] == 0 {
                    dst[q] = count;
                    stack.push(q);
                }
            }
        }
    }
    (labels, count as usize)
}

/// The book's grouping of a probability map into candidates, in `scipy.ndimage.label` order.
pub fn group(hu: ArrayView3<'_, f32>, probability: ArrayView3<'_, f32>) -> Vec<Group> {
    let mask = threshold(probability);
    group_mask(hu, mask.view())
}

/// [`group`] on an already thresholded mask (the pre-erosion segmentation).
pub fn group_mask(hu: ArrayView3<'_, f32>, mask: ArrayView3<'_, bool>) -> Vec<Group> {
    let eroded = erode(mask);
    let (labels, count) = label(eroded.view());
    let shape = [labels.shape()[0], labels.shape()[1], labels.shape()[2]];
    let labels = labels.as_slice().unwrap_or(&[]);
    let hu = hu.as_standard_layout();
    let hu = hu.as_slice().unwrap_or(&[]);
    let pre = mask.as_standard_layout();
    let pre = pre.as_slice().unwrap_or(&[]);

    let mut weight = vec![0f64; count];
    let mut moment = vec![[0f64; 3]; count];
    let mut voxels = vec![0usize; count];
    for (p, &l) in labels.iter().enumerate() {
        if l == 0 {
            continue;
        }
        let k = l as usize - 1;
        let wgt = (hu[p].clamp(HU_MIN, HU_MAX) + 1001.0) as f64;
        let [i, r, c] = unflatten(p, shape);
        weight[k] += wgt;
        moment[k][0] += wgt * i as f64;
        moment[k][1] += wgt * r as f64;
        moment[k][2] += wgt * c as f64;
        voxels[k] += 1;
    }

    // Segmented volume: eroded voxels plus the pre-erosion mask voxels touching each component.
    let mut segmented = voxels.clone();
    let mut nb = [0usize; 6];
    let mut seen = [0u32; 6];
    for p in 0..pre.len() {
        if !pre[p] || labels[p] != 0 {
            continue;
        }
        let k = neighbours(p, unflatten(p, shape), shape, &mut nb);
        let mut distinct = 0;
        for &q in &nb[..k] {
            let l = labels[q];
            if l != 0 && !seen[..distinct].contains(&l) {
                seen[distinct] = l;
                distinct += 1;
                segmented[l as usize - 1] += 1;
            }
        }
    }

    (0..count)
        .map(|k| Group {
            center_irc: [
                moment[k][0] / weight[k],
                moment[k][1] / weight[k],
                moment[k][2] / weight[k],
            ],
            voxels: voxels[k],
            segmented_voxels: segmented[k],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// scipy-style erosion written the obvious way, for comparison.
    fn naive_erode(mask: &Array3<bool>) -> Array3<bool> {
        let s = mask.shape();
        let get = |i: isize, r: isize, c: isize| {
            i >= 0
                && r >= 0
                && c >= 0
                && (i as usize) < s[0]
                && (r as usize) < s[1]
                && (c as usize) < s[2]
                && mask[[i as usize, r as usize, c as usize]]
        };
        Array3::from_shape_fn((s[0], s[1], s[2]), |(i, r, c)| {
            let (i, r, c) = (i as isize, r as isize, c as isize);
            get(i, r, c)
                && get(i - 1, r, c)
                && get(i + 1, r, c)
                && get(i, r - 1, c)
                && get(i, r + 1, c)
                && get(i, r, c - 1)
                && get(i, r, c + 1)
        })
    }

    /// Labelling by repeated min-propagation, then renumbering by first raster voxel.
    fn naive_label(mask: &Array3<bool>) -> Vec<u32> {
        let s = mask.shape().to_vec();
        let flat: Vec<bool> = mask.iter().copied().collect();
        let mut lab: Vec<usize> = (0..flat.len())
            .map(|p| if flat[p] { p + 1 } else { 0 })
            .collect();
        loop {
            let mut changed = false;
            for p in 0..flat.len() {
                if !flat[p] {
                    continue;
                }
                let (i, r, c) = (p / (s[1] * s[2]), (p / s[2]) % s[1], p % s[2]);
                let mut nbrs = vec![];
                if i > 0 {
                    nbrs.push(p - s[1] * s[2]);
                }
                if i + 1 < s[0] {
                    nbrs.push(p + s[1] * s[2]);
                }
                if r > 0 {
                    nbrs.push(p - s[2]);
                }
                if r + 1 < s[1] {
                    nbrs.push(p + s[2]);
                }
                if c > 0 {
                    nbrs.push(p - 1);
                }
                if c + 1 < s[2] {
                    nbrs.push(p + 1);
                }
                for q in nbrs {
                    if flat[q] && lab[q] < lab[p] {
                        lab[p] = lab[q];
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        // Each component's label is now its first voxel + 1; renumber in that order.
        let mut roots: Vec<usize> = lab.iter().copied().filter(|&l| l != 0).collect();
        roots.sort_unstable();
        roots.dedup();
        lab.iter()
            .map(|&l| {
                if l == 0 {
                    0
                } else {
                    roots.binary_search(&l).map(|k| k as u32 + 1).unwrap_or(0)
                }
            })
            .collect()
    }

    fn cube(mask: &mut Array3<bool>, lo: [usize; 3], hi: [usize; 3]) {
        for i in lo[0]..hi[0] {
            for r in lo[1]..hi[1] {
                for c in lo[2]..hi[2] {
                    mask[[i, r, c]] = true;
                }
            }
        }
    }

    #[test]
    fn erosion_of_a_cube_peels_one_layer() {
        let mut mask = Array3::from_elem((7, 7, 7), false);
        cube(&mut mask, [1, 1, 1], [6, 6, 6]);
        let eroded = erode(mask.view());
        assert_eq!(eroded.iter().filter(|&&v| v).count(), 27);
        assert!(eroded[[3, 3, 3]] && eroded[[2, 2, 2]] && eroded[[4, 4, 4]]);
        assert!(!eroded[[1, 3, 3]] && !eroded[[5, 3, 3]]);
    }

    #[test]
    fn erosion_treats_outside_as_background() {
        let mask = Array3::from_elem((4, 5, 6), true);
        let eroded = erode(mask.view());
        // Only the interior 2×3×4 survives: every face voxel touches the outside.
        assert_eq!(eroded.iter().filter(|&&v| v).count(), 2 * 3 * 4);
        assert!(!eroded[[0, 2, 2]] && !eroded[[1, 0, 2]] && !eroded[[1, 2, 5]]);
        assert!(eroded[[1, 1, 1]] && eroded[[2, 3, 4]]);
        let thin = Array3::from_elem((2, 9, 9), true);
        assert!(erode(thin.view()).iter().all(|&v| !v));
    }

    #[test]
    fn labels_follow_raster_order_of_first_voxels() {
        let mut mask = Array3::from_elem((3, 6, 6), false);
        // Component A starts at (0, 4, 0); B starts at (0, 1, 5) earlier in raster order.
        mask[[0, 4, 0]] = true;
        mask[[1, 4, 0]] = true;
        mask[[0, 1, 5]] = true;
        // C: diagonal neighbours only are separate components (6-connectivity).
        mask[[2, 0, 0]] = true;
        mask[[2, 1, 1]] = true;
        let (labels, count) = label(mask.view());
        assert_eq!(count, 4);
        assert_eq!(labels[[0, 1, 5]], 1);
        assert_eq!(labels[[0, 4, 0]], 2);
        assert_eq!(labels[[1, 4, 0]], 2);
        assert_eq!(labels[[2, 0, 0]], 3);
        assert_eq!(labels[[2, 1, 1]], 4);
    }

    #[test]
    fn u_shape_is_one_component_numbered_by_its_first_voxel() {
        // A U whose two arms start before a separate blob but join at the bottom row.
        let mut mask = Array3::from_elem((1, 5, 7), false);
        for r in 0..5 {
            mask[[0, r, 0]] = true;
            mask[[0, r, 6]] = true;
        }
        for c in 0..7 {
            mask[[0, 4, c]] = true;
        }
        mask[[0, 1, 3]] = true;
        let (labels, count) = label(mask.view());
        assert_eq!(count, 2);
        assert_eq!(labels[[0, 0, 6]], 1);
        assert_eq!(labels[[0, 1, 3]], 2);
    }

    #[test]
    fn weighted_centres_use_clamped_hu_plus_1001() {
        // A 3×3×3 eroded core (5×5×5 mask) with one heavy voxel.
        let mut mask = Array3::from_elem((7, 7, 7), false);
        cube(&mut mask, [1, 1, 1], [6, 6, 6]);
        let mut hu = Array3::from_elem((7, 7, 7), -2000.0f32); // clamps to -1000 → weight 1
        hu[[4, 4, 4]] = 5000.0; // clamps to 1000 → weight 2001
        let groups = group_mask(hu.view(), mask.view());
        assert_eq!(groups.len(), 1);
        let g = &groups[0];
        assert_eq!(g.voxels, 27);
        // Σw = 26 + 2001; Σw·i = (27·3 − 4) + 2001·4 (the light voxels are the core minus the corner).
        let expect = (27.0 * 3.0 - 4.0 + 2001.0 * 4.0) / (26.0 + 2001.0);
        for axis in 0..3 {
            assert!((g.center_irc[axis] - expect).abs() < 1e-12, "{g:?}");
        }
        // The eroded core dilated by the cross, within the mask: 27 + 6 faces × 9 = 81 voxels.
        assert_eq!(g.segmented_voxels, 27 + 6 * 9);
    }

    #[test]
    fn unweighted_pair_centre_is_exactly_half() {
        let mut mask = Array3::from_elem((5, 5, 6), false);
        cube(&mut mask, [1, 1, 1], [4, 4, 5]); // erodes to (2, 2, 2..=3)
        let hu = Array3::from_elem((5, 5, 6), 0.0f32);
        let groups = group_mask(hu.view(), mask.view());
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].center_irc, [2.0, 2.0, 2.5]);
        assert_eq!(groups[0].voxels, 2);
    }

    #[test]
    fn segmented_voxels_count_shared_rim_for_both() {
        let mut mask = Array3::from_elem((5, 5, 7), false);
        cube(&mut mask, [1, 1, 1], [4, 4, 6]);
        let hu = Array3::from_elem((5, 5, 7), 0.0f32);
        let groups = group_mask(hu.view(), mask.view());
        // The 3×3×5 block erodes to a 1×1×3 bar: one component.
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].voxels, 3);
        // Bar (3) + neighbours within the mask: 4 sides × 3 + 2 ends = 17.
        assert_eq!(groups[0].segmented_voxels, 17);

        let mut two = Array3::from_elem((5, 5, 9), false);
        cube(&mut two, [1, 1, 1], [4, 4, 4]);
        cube(&mut two, [1, 1, 5], [4, 4, 8]);
        // A bridge voxel: it erodes away itself but lets (2,2,3) and (2,2,5) survive, so it touches
        // both cores {(2,2,2),(2,2,3)} and {(2,2,5),(2,2,6)} and counts for both.
        two[[2, 2, 4]] = true;
        let groups = group_mask(Array3::from_elem((5, 5, 9), 0.0f32).view(), two.view());
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].center_irc, [2.0, 2.0, 2.5]);
        assert_eq!(groups[1].center_irc, [2.0, 2.0, 5.5]);
        assert_eq!((groups[0].voxels, groups[1].voxels), (2, 2));
        assert_eq!(groups[0].segmented_voxels, 2 + 10);
        assert_eq!(groups[1].segmented_voxels, 2 + 10);
    }

    #[test]
    fn equivalent_diameter_of_a_sphere() {
        let r: f64 = 5.0;
        let volume = 4.0 / 3.0 * std::f64::consts::PI * r.powi(3);
        assert!((equivalent_diameter_mm(1000, volume / 1000.0) - 10.0).abs() < 1e-9);
    }

    #[test]
    fn empty_and_tiny_volumes() {
        let empty = Array3::from_elem((0, 4, 4), false);
        assert_eq!(label(empty.view()).1, 0);
        let hu = Array3::from_elem((0, 4, 4), 0.0f32);
        assert!(group_mask(hu.view(), empty.view()).is_empty());
        let one = Array3::from_elem((1, 1, 1), true);
        assert!(!erode(one.view())[[0, 0, 0]]);
    }

    proptest! {
        #[test]
        fn erosion_and_labelling_match_naive(
            dims in (1usize..7, 1usize..7, 1usize..7),
            seed in proptest::collection::vec(any::<bool>(), 343),
            density in 0.3f64..0.95,
        ) {
            let (n, h, w) = dims;
            // Bias toward filled voxels so erosion leaves something: mix two draws.
            let mask = Array3::from_shape_fn((n, h, w), |(i, r, c)| {
                let p = (i * 49 + r * 7 + c) % 343;
                seed[p] || (((p * 2654435761) % 1000) as f64) < density * 1000.0
            });
            let eroded = erode(mask.view());
            prop_assert_eq!(&eroded, &naive_erode(&mask));
            let (labels, count) = label(mask.view());
            let naive = naive_label(&mask);
            prop_assert_eq!(labels.iter().copied().collect::<Vec<_>>(), naive.clone());
            prop_assert_eq!(count as u32, naive.iter().copied().max().unwrap_or(0));
        }
    }
}
