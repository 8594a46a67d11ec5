//! Segmentation: the book's per-slice U-Net (chapter 13) run over every slice of a volume.
//!
//! Each slice goes in with 3 context slices on each side (the first and last slices repeated past
//! the volume's ends), HU clamped to [-1000, 1000], as one `1×7×H×W` float32 batch; the model answers a
//! per-pixel nodule probability (sigmoid already applied). Slices are independent, so the worker
//! pool runs several at once, each on one thread, sharing the model's optimised plan (measured
//! faster than splitting each slice's matrix products over the threads, see `engine::tract`).
//!
//! The U-Net halves H and W twice, so both must be divisible by 4. A volume whose rows or columns are
//! not is padded on the bottom/right with -1000 HU (air, the clamp floor) up to the next multiple of
//! 4 and the padding is cut off the answer again: the only way such a volume can be run at all.
//!
//! **Regions** (the default outside `--exact`, see [`segment_regions`]): the U-Net is fully
//! convolutional, so its answer at a pixel depends only on the pixels within its receptive field
//! (at most 26 pixels for the book's depth-3 U-Net). A slice can therefore be run on a *tile*: the
//! rows and columns where an answer is wanted (around the lungs, [`lung_regions`]; or the body,
//! [`body_regions`]) plus a [`TILE_MARGIN`] of context on each side, the tile's corner
//! on a multiple of 4 so the two 2×2 poolings see the same pixel groups as on the whole slice.
//! Inside the wanted region the tile's answer is the whole slice's (to float rounding; the
//! `fast_vs_exact` tests check it); outside it the probability is 0, and slices without a region are
//! not run at all. Tile sizes are rounded up to multiples of [`TILE_STEP`] so a volume needs only a
//! few shapes (tens), each optimised once by the engine (~25 ms each with tract).
//!
//! The pipeline keeps only the thresholded mask ([`segment_regions_mask`], [`segment_mask`]); the
//! probability versions serve tests and tools.

use super::group::THRESHOLD;
use super::lung::{LungMask, SliceBounds};
use super::{PipelineError, Stage, CONTEXT_SLICES, HU_MAX, HU_MIN};
use crate::engine::{EngineError, Model, Outputs};
use ndarray::{s, Array3, Array4, ArrayView2, ArrayView3, ArrayViewMut2, Axis, Ix4};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Name of the segmentation model's output read (falls back to the first output).
pub const OUTPUT: &str = "nodule_probability";

/// Context pixels kept around a region on each side of a tile (the U-Net's receptive field reaches
/// 26 pixels: 2·1 + 2·2 + 2·4 + 2·2 + 2·1 from its 3×3 convolutions, 1 + 2 + 2 + 1 from the 2×2
/// poolings and up-convolutions; a multiple of 4).
pub const TILE_MARGIN: usize = 32;

/// Tile heights and widths are multiples of this (fewer distinct shapes, fewer optimised plans).
pub const TILE_STEP: usize = 32;

/// The rows and columns of one slice where the segmentation is wanted (half-open ranges).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub rows: Range<usize>,
    pub cols: Range<usize>,
}

/// Voxels above this are tissue (HU): the body's outline against the air around it.
pub const BODY_THRESHOLD_HU: f32 = -500.0;

/// A tissue component belongs to the body region if its area is at least this fraction of the
/// slice's largest (drops the table's rails and specks of noise; keeps both halves of a body a
/// slice cuts in two, and arms).
pub const BODY_MIN_FRACTION: f64 = 0.1;

/// Per-slice regions for [`segment_regions`]: the bounding box of the body in each slice, i.e. of
/// the 4-connected tissue components (HU above [`BODY_THRESHOLD_HU`]) of at least
/// [`BODY_MIN_FRACTION`] of the slice's largest one. `None` for a slice with no tissue. Outside
/// the box there is only air (and the table), where the U-Net has nothing to find.
pub fn body_regions(hu: ArrayView3<'_, f32>) -> Vec<Option<Region>> {
    let [_, h, w] = [hu.shape()[0], hu.shape()[1], hu.shape()[2]];
    let planes: Vec<_> = hu.outer_iter().collect();
    planes
        .par_iter()
        .map_init(
            || (vec![0u32; h * w], Vec::new()),
            |(labels, stack), plane| {
                labels.iter_mut().for_each(|l| *l = 0);
                // (area, row range, column range) per component, label k at index k - 1.
                let mut parts: Vec<(usize, Range<usize>, Range<usize>)> = Vec::new();
                for (start, &v) in plane.iter().enumerate() {
                    if v <= BODY_THRESHOLD_HU || labels[start] != 0 {
                        continue;
                    }
                    let label = parts.len() as u32 + 1;
                    let (r, c) = (start / w, start % w);
                    let mut part = (0usize, r..r + 1, c..c + 1);
                    labels[start] = label;
                    stack.push(start);
                    while let Some(p) = stack.pop() {
                        let (r, c) = (p / w, p % w);
                        part.0 += 1;
                        part.1 = part.1.start.min(r)..part.1.end.max(r + 1);
                        part.2 = part.2.start.min(c)..part.2.end.max(c + 1);
                        let mut visit = |q: usize, rr: usize, cc: usize| {
                            if labels[q] == 0 && plane[[rr, cc]] > BODY_THRESHOLD_HU {
                                labels[q] = label;
                                stack.push(q);
                            }
                        };
                        if r > 0 {
                            visit(p - w, r - 1, c);
                        }
                        if r + 1 < h {
                            visit(p + w, r + 1, c);
                        }
                        if c > 0 {
                            visit(p - 1, r, c - 1);
                        }
                        if c + 1 < w {
                            visit(p + 1, r, c + 1);
                        }
                    }
                    parts.push(part);
                }
                let largest = parts.iter().map(|p| p.0).max()?;
                parts
                    .into_iter()
                    .filter(|p| p.0 as f64 >= BODY_MIN_FRACTION * largest as f64)
                    .map(|(_, rows, cols)| Region { rows, cols })
                    .reduce(|a, b| Region {
                        rows: a.rows.start.min(b.rows.start)..a.rows.end.max(b.rows.end),
                        cols: a.cols.start.min(b.cols.start)..a.cols.end.max(b.cols.end),
                    })
            },
        )
        .collect()
}

/// Where the U-Net runs outside `--exact` ([`super::PipelineOptions::regions`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SegmentRegions {
    /// Every pixel of every slice (what `--exact` does).
    Whole,
    /// A tile around the body ([`body_regions`]): the same candidates as `Whole`.
    Body,
    /// A tile around the lungs and [`LUNG_REGION_MARGIN_MM`] beyond ([`lung_regions`]), inside the
    /// body's: the default. Candidates far from the lung are not found, and those are exactly
    /// the ones the findings' false-positive reduction drops (`pipeline::reduce`: a finding must
    /// come within 2 mm of the lung), so the reported findings stay those of `Whole`
    /// (`tests/fast_vs_exact.rs`).
    #[default]
    Lung,
}

/// How far beyond the lung (mm, in-plane and along the slices) [`lung_regions`] reach: a nodule
/// that touches the lung lies wholly within this of it (LUNA16's largest nodule is 32 mm across,
/// and a juxtapleural one sits mostly inside the lung's outline), so its segmentation and its
/// candidate are those of the whole slice.
pub const LUNG_REGION_MARGIN_MM: f64 = 15.0;

/// Per-slice regions around the lung: for slice `i`, the bounding box of the lung in the slices
/// within `margin_mm` of it, grown by `margin_mm` in-plane and cut to the body's box
/// (`body[i]`). A volume whose lung mask is empty (no lung found: a phantom without lungs, a
/// failed mask) gets the body regions unchanged, so nothing is skipped on a guess.
pub fn lung_regions(
    lung: &LungMask,
    body: &[Option<Region>],
    spacing_xyz: [f64; 3],
    margin_mm: f64,
) -> Vec<Option<Region>> {
    if lung.voxels() == 0 {
        return body.to_vec();
    }
    let [n, h, w] = lung.shape();
    let steps = |spacing: f64| (margin_mm / spacing.max(1e-6)).ceil() as usize;
    let (reach, grow_rows, grow_cols) = (
        steps(spacing_xyz[2]),
        steps(spacing_xyz[1]),
        steps(spacing_xyz[0]),
    );
    (0..n)
        .map(|i| {
            let body = body.get(i)?.as_ref()?;
            let nearby = i.saturating_sub(reach)..(i + reach + 1).min(n);
            let bounds =
                nearby
                    .filter_map(|j| lung.slice_bounds(j))
                    .reduce(|a, b| SliceBounds {
                        row_min: a.row_min.min(b.row_min),
                        row_max: a.row_max.max(b.row_max),
                        col_min: a.col_min.min(b.col_min),
                        col_max: a.col_max.max(b.col_max),
                    })?;
            let rows =
                bounds.row_min.saturating_sub(grow_rows)..(bounds.row_max + 1 + grow_rows).min(h);
            let cols =
                bounds.col_min.saturating_sub(grow_cols)..(bounds.col_max + 1 + grow_cols).min(w);
            let rows = rows.start.max(body.rows.start)..rows.end.min(body.rows.end);
            let cols = cols.start.max(body.cols.start)..cols.end.min(body.cols.end);
            (!rows.is_empty() && !cols.is_empty()).then_some(Region { rows, cols })
        })
        .collect()
}

/// Rounds `n` up to a multiple of 4 (the U-Net's two 2× poolings).
pub fn padded_extent(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// The model input for slice `index`: `1×7×H'×W'` with H', W' padded to multiples of 4, clamped HU.
pub fn slice_input(hu: ArrayView3<'_, f32>, index: usize) -> Array4<f32> {
    let [n, h, w] = [hu.shape()[0], hu.shape()[1], hu.shape()[2]];
    let (hp, wp) = (padded_extent(h), padded_extent(w));
    let channels = 2 * CONTEXT_SLICES + 1;
    let mut input = Array4::from_elem((1, channels, hp, wp), HU_MIN);
    for k in 0..channels {
        let source = (index + k).saturating_sub(CONTEXT_SLICES).min(n - 1);
        let plane = hu.index_axis(Axis(0), source);
        let mut out = input.slice_mut(s![0, k, ..h, ..w]);
        out.zip_mut_with(&plane, |o, &v| *o = v.clamp(HU_MIN, HU_MAX));
    }
    input
}

/// The tile (start, length) along one axis of `extent` pixels for the wanted `range`: the range
/// widened by [`TILE_MARGIN`] each side, its start on a multiple of 4, its length a multiple of
/// [`TILE_STEP`] (or the whole padded extent when that is not larger), inside `0..padded_extent`.
pub fn tile_span(range: &Range<usize>, extent: usize) -> (usize, usize) {
    let padded = padded_extent(extent);
    let start = range.start.saturating_sub(TILE_MARGIN) / 4 * 4;
    let end = (range.end.min(extent) + TILE_MARGIN).min(padded);
    let length = (end.saturating_sub(start)).div_ceil(TILE_STEP) * TILE_STEP;
    if length >= padded {
        return (0, padded);
    }
    // Shift back inside the padded slice; padded and length are multiples of 4, so the start stays
    // on one.
    (start.min(padded - length), length)
}

/// The model input for the tile `rows × cols` (padded coordinates) of slice `index`: like
/// [`slice_input`] cut to the tile, so pixels past the slice's last row or column are -1000 HU.
pub fn tile_input(
    hu: ArrayView3<'_, f32>,
    index: usize,
    rows: Range<usize>,
    cols: Range<usize>,
) -> Array4<f32> {
    let [n, h, w] = [hu.shape()[0], hu.shape()[1], hu.shape()[2]];
    let channels = 2 * CONTEXT_SLICES + 1;
    let mut input = Array4::from_elem((1, channels, rows.len(), cols.len()), HU_MIN);
    let (r1, c1) = (rows.end.min(h), cols.end.min(w));
    if rows.start >= r1 || cols.start >= c1 {
        return input;
    }
    let (th, tw) = (r1 - rows.start, c1 - cols.start);
    for k in 0..channels {
        let source = (index + k).saturating_sub(CONTEXT_SLICES).min(n - 1);
        let plane = hu.slice(s![source, rows.start..r1, cols.start..c1]);
        let mut out = input.slice_mut(s![0, k, ..th, ..tw]);
        out.zip_mut_with(&plane, |o, &v| *o = v.clamp(HU_MIN, HU_MAX));
    }
    input
}

/// The U-Net probability inside each slice's region, 0 elsewhere (see the module docs): slice `i`
/// is run on a tile around `regions[i]`, or not at all when it is `None` (or empty). `regions`
/// must have one entry per slice. Slices run in parallel on the current rayon pool; `progress`
/// gets (slices done, slices to run).
pub fn segment_regions(
    model: &dyn Model,
    hu: ArrayView3<'_, f32>,
    regions: &[Option<Region>],
    progress: &(dyn Fn(Stage, usize, usize) + Sync),
) -> Result<Array3<f32>, PipelineError> {
    run_regions(model, hu, regions, progress, |p| p)
}

/// [`segment_regions`] thresholded as it goes (`p > `[`THRESHOLD`]): the pipeline's path. One
/// byte a voxel instead of four, so a 512×512×300 CT holds 79 MB of mask rather than 315 MB of
/// probabilities while the U-Net's working memory is at its peak.
pub fn segment_regions_mask(
    model: &dyn Model,
    hu: ArrayView3<'_, f32>,
    regions: &[Option<Region>],
    progress: &(dyn Fn(Stage, usize, usize) + Sync),
) -> Result<Array3<bool>, PipelineError> {
    run_regions(model, hu, regions, progress, |p| p > THRESHOLD)
}

/// The per-slice work of [`segment_regions`]: each tile's probability mapped by `keep` into the
/// answer volume (zero-valued elsewhere).
fn run_regions<T>(
    model: &dyn Model,
    hu: ArrayView3<'_, f32>,
    regions: &[Option<Region>],
    progress: &(dyn Fn(Stage, usize, usize) + Sync),
    keep: impl Fn(f32) -> T + Sync,
) -> Result<Array3<T>, PipelineError>
where
    T: Copy + Default + Send + Sync,
{
    let [n, h, w] = [hu.shape()[0], hu.shape()[1], hu.shape()[2]];
    let mut answer = Array3::<T>::default((n, h, w));
    let wanted = |r: &Option<Region>| -> Option<Region> {
        r.as_ref()
            .map(|r| Region {
                rows: r.rows.start.min(h)..r.rows.end.min(h),
                cols: r.cols.start.min(w)..r.cols.end.min(w),
            })
            .filter(|r| !r.rows.is_empty() && !r.cols.is_empty())
    };
    let mut jobs: Vec<(usize, Region, ArrayViewMut2<'_, T>)> = answer
        .outer_iter_mut()
        .enumerate()
        .filter_map(|(i, plane)| {
            let region = wanted(regions.get(i)?)?;
            Some((i, region, plane))
        })
        .collect();
    let total = jobs.len();
    let done = AtomicUsize::new(0);
    progress(Stage::Segment, 0, total);
    jobs.par_iter_mut().with_max_len(1).try_for_each(
        |(index, region, plane)| -> Result<(), PipelineError> {
            let (r0, rh) = tile_span(&region.rows, h);
            let (c0, cw) = tile_span(&region.cols, w);
            let input = tile_input(hu, *index, r0..r0 + rh, c0..c0 + cw);
            let outputs = model.run(input.view().into_dyn())?;
            let prob = output_plane(model, &outputs, [rh, cw])?;
            let (rows, cols) = (region.rows.clone(), region.cols.clone());
            plane
                .slice_mut(s![rows.clone(), cols.clone()])
                .zip_mut_with(
                    &prob.slice(s![
                        rows.start - r0..rows.end - r0,
                        cols.start - c0..cols.end - c0
                    ]),
                    |a, &p| *a = keep(p),
                );
            progress(
                Stage::Segment,
                done.fetch_add(1, Ordering::Relaxed) + 1,
                total,
            );
            Ok(())
        },
    )?;
    Ok(answer)
}

/// The U-Net probability of every voxel, `[index, row, column]` like `hu`. Slices run in parallel
/// on the current rayon pool (the caller installs the pipeline's pool); `progress` gets (slices
/// done, slices total).
pub fn segment(
    model: &dyn Model,
    hu: ArrayView3<'_, f32>,
    progress: &(dyn Fn(Stage, usize, usize) + Sync),
) -> Result<Array3<f32>, PipelineError> {
    run_regions(model, hu, &whole_slices(hu), progress, |p| p)
}

/// [`segment`] thresholded as it goes, like [`segment_regions_mask`].
pub fn segment_mask(
    model: &dyn Model,
    hu: ArrayView3<'_, f32>,
    progress: &(dyn Fn(Stage, usize, usize) + Sync),
) -> Result<Array3<bool>, PipelineError> {
    run_regions(model, hu, &whole_slices(hu), progress, |p| p > THRESHOLD)
}

/// Every slice's whole plane as its region: its tile is then the whole padded slice
/// ([`tile_span`]), whose input is [`slice_input`]'s.
fn whole_slices(hu: ArrayView3<'_, f32>) -> Vec<Option<Region>> {
    let [n, h, w] = [hu.shape()[0], hu.shape()[1], hu.shape()[2]];
    vec![
        Some(Region {
            rows: 0..h,
            cols: 0..w,
        });
        n
    ]
}

/// The `[H, W]` plane of the model's `[1, 1, H, W]` probability output, checked against `size`.
fn output_plane<'a>(
    model: &dyn Model,
    outputs: &'a Outputs,
    size: [usize; 2],
) -> Result<ArrayView2<'a, f32>, PipelineError> {
    let name = &model.info().name;
    let prob = match outputs.get(OUTPUT) {
        Some(p) => p,
        None => outputs
            .0
            .first()
            .map(|(_, a)| a)
            .ok_or_else(|| EngineError::MissingOutput {
                name: name.clone(),
                output: OUTPUT.to_string(),
                available: String::new(),
            })?,
    };
    let shape_err = || PipelineError::OutputShape {
        model: name.clone(),
        output: OUTPUT.to_string(),
        shape: prob.shape().to_vec(),
        expected: format!("[1, 1, {}, {}]", size[0], size[1]),
    };
    let prob = prob
        .view()
        .into_dimensionality::<Ix4>()
        .map_err(|_| shape_err())?;
    if prob.shape() != [1, 1, size[0], size[1]] {
        return Err(shape_err());
    }
    Ok(prob.index_axis_move(Axis(0), 0).index_axis_move(Axis(0), 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_slices_repeat_the_edges_and_clamp() {
        // 4 slices whose voxels hold their slice index × 1000 - 1500: -1500, -500, 500, 1500.
        let hu = Array3::from_shape_fn((4, 4, 4), |(i, _, _)| i as f32 * 1000.0 - 1500.0);
        let first = slice_input(hu.view(), 0);
        let wanted_first = [0, 0, 0, 0, 1, 2, 3];
        for (k, &src) in wanted_first.iter().enumerate() {
            let v = (src as f32 * 1000.0 - 1500.0).clamp(-1000.0, 1000.0);
            assert_eq!(first[[0, k, 1, 2]], v, "channel {k}");
        }
        let last = slice_input(hu.view(), 3);
        let wanted_last = [0, 1, 2, 3, 3, 3, 3];
        for (k, &src) in wanted_last.iter().enumerate() {
            let v = (src as f32 * 1000.0 - 1500.0).clamp(-1000.0, 1000.0);
            assert_eq!(last[[0, k, 3, 0]], v, "channel {k}");
        }
    }

    #[test]
    fn odd_planes_are_padded_with_air() {
        let hu = Array3::from_elem((1, 5, 6), 40.0f32);
        let input = slice_input(hu.view(), 0);
        assert_eq!(input.shape(), &[1, 7, 8, 8]);
        assert_eq!(input[[0, 3, 4, 5]], 40.0);
        assert_eq!(input[[0, 3, 5, 0]], -1000.0);
        assert_eq!(input[[0, 3, 0, 6]], -1000.0);
    }

    #[test]
    fn tiles_cover_the_region_with_margin_on_the_pooling_grid() {
        for (range, extent) in [(100..300, 512), (0..10, 512), (500..512, 512), (3..5, 6)] {
            let (start, len) = tile_span(&range, extent);
            let padded = padded_extent(extent);
            assert_eq!(start % 4, 0, "{range:?}");
            assert!(start + len <= padded, "{range:?}: {start}+{len}");
            assert!(
                len % TILE_STEP == 0 || (start, len) == (0, padded),
                "{range:?}"
            );
            // The margin is there unless the tile reaches the slice's own edge.
            assert!(
                start == 0 || start + TILE_MARGIN <= range.start,
                "{range:?}"
            );
            assert!(start + len == padded || range.end + TILE_MARGIN <= start + len);
        }
        assert_eq!(tile_span(&(200..260), 512), (168, 128));
        assert_eq!(tile_span(&(0..512), 512), (0, 512));
    }

    #[test]
    fn tile_input_is_the_slice_input_cut_to_the_tile() {
        let hu = Array3::from_shape_fn((5, 10, 14), |(i, r, c)| {
            (i * 1000 + r * 20 + c) as f32 - 1200.0
        });
        let whole = slice_input(hu.view(), 2);
        let tile = tile_input(hu.view(), 2, 4..12, 8..16);
        assert_eq!(tile.shape(), &[1, 7, 8, 8]);
        assert_eq!(tile, whole.slice(s![.., .., 4..12, 8..16]));
    }

    #[test]
    fn body_region_is_the_box_of_the_large_tissue_parts() {
        let mut hu = Array3::from_elem((3, 40, 50), -1000.0f32);
        // Slice 0: a body (rows 5..25, columns 10..40) with air (lung) inside, and a 2×2 speck.
        hu.slice_mut(s![0, 5..25, 10..40]).fill(40.0);
        hu.slice_mut(s![0, 10..20, 15..35]).fill(-850.0);
        hu.slice_mut(s![0, 30..32, 45..47]).fill(200.0);
        // Slice 1: two large parts (a body cut in two) -> their joint box.
        hu.slice_mut(s![1, 5..15, 2..12]).fill(0.0);
        hu.slice_mut(s![1, 20..35, 30..45]).fill(0.0);
        // Slice 2: air only.
        let regions = body_regions(hu.view());
        let region = |rows: Range<usize>, cols: Range<usize>| Some(Region { rows, cols });
        assert_eq!(regions[0], region(5..25, 10..40));
        assert_eq!(regions[1], region(5..35, 2..45));
        assert_eq!(regions[2], None);
    }

    #[test]
    fn lung_regions_reach_the_margin_around_the_lung_inside_the_body() {
        let region = |rows: Range<usize>, cols: Range<usize>| Some(Region { rows, cols });
        // Lung in slices 3..=5, rows 20..30, columns 10..20; 1 mm pixels, 2 mm slices.
        let mut mask = Array3::from_elem((10, 64, 64), false);
        mask.slice_mut(s![3..6, 20..30, 10..20]).fill(true);
        let lung = LungMask::from_parts(mask, [1.0, 1.0, 2.0]);
        let mut body = vec![region(0..64, 0..64); 10];
        body[4] = region(18..64, 0..64);
        body[2] = None;
        // 4 mm: 2 slices either way, 4 pixels in-plane.
        let regions = lung_regions(&lung, &body, [1.0, 1.0, 2.0], 4.0);
        assert_eq!(regions.len(), 10);
        for i in [0, 8, 9] {
            assert_eq!(regions[i], None, "slice {i} is beyond the lung's reach");
        }
        assert_eq!(regions[2], None, "no body, nothing to run");
        for i in [1, 3, 5, 6, 7] {
            assert_eq!(regions[i], region(16..34, 6..24), "slice {i}");
        }
        assert_eq!(regions[4], region(18..34, 6..24), "cut to the body");
        // No lung found: the body regions, unchanged.
        let empty = LungMask::from_parts(Array3::from_elem((10, 64, 64), false), [1.0; 3]);
        assert_eq!(lung_regions(&empty, &body, [1.0; 3], 4.0), body);
    }
}
