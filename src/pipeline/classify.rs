//! Classification: crops a 32×48×48 (index, row, column) block around each candidate and asks the
//! book's nodule classifier (chapter 14) whether it is a nodule.
//!
//! Crop placement is the reference pipeline's `crop()` to the voxel, since a one-voxel shift changes
//! the classifier's answer:
//! `start = round(round(centre) − size/2)` per axis, with Python's rounding — **half to even** — for
//! both roundings, then shifted to stay inside the volume (`start = min(max(start, 0), extent − size)`).
//! HU are clamped to [-1000, 1000].
//!
//! A volume thinner than the crop on some axis (fewer than 32 slices, fewer than 48 rows or columns)
//! cannot hold the crop however it is shifted. There the crop stays centred on the candidate
//! (`start = round(centre) − size/2`, unshifted) and every crop voxel outside the volume is -1000 HU,
//! air, the clamp floor — what lies beyond a scan's field of view as far as the model is concerned —
//! so such series are classified instead of refused (the reference would fail on them).
//!
//! A model that declares `"crop_mm": [index, row, column]` in its `noduled.input` (noduled's own
//! malignancy model) gets its crop resampled instead ([`crop_resampled`]): crop voxel `k` of an axis
//! sits at `centre + (k − size/2) · crop_mm / voxel_mm`, HU are clamped and then interpolated
//! trilinearly, -1000 outside the volume. Such a model sees a nodule's size in millimetres whatever
//! the scan's spacing — which matters for malignancy, where size is most of the signal.
//! `training/common.py`'s `crop_resampled` is the same arithmetic.
//!
//! Crops are classified one at a time (batch 1) in parallel over the worker pool: tract's 3D
//! convolution is fast at batch 1 (≈17 ms a crop) but far slower per crop in batches.

use super::{PipelineError, Stage, HU_MAX, HU_MIN};
use crate::engine::{Model, Outputs};
use ndarray::{s, Array3, ArrayView3, Axis};
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Crop size, (index, row, column).
pub const CROP: [usize; 3] = [32, 48, 48];

/// The crop's first voxel along one axis of `extent` voxels, for a crop `width` wide around
/// `centre`. In range `0..=extent - width` when the volume is at least `width` thick; otherwise the
/// unshifted, possibly negative start (the caller pads).
pub fn crop_start(centre: f64, width: usize, extent: usize) -> i64 {
    let rounded = centre.round_ties_even();
    let start = (rounded - width as f64 / 2.0).round_ties_even() as i64;
    if extent >= width {
        start.clamp(0, (extent - width) as i64)
    } else {
        start
    }
}

/// The clamped-HU crop around `center_irc`, `CROP`-sized; voxels outside the volume are -1000 HU.
pub fn crop(hu: ArrayView3<'_, f32>, center_irc: [f64; 3]) -> Array3<f32> {
    let mut out = Array3::from_elem((CROP[0], CROP[1], CROP[2]), HU_MIN);
    // Per axis: the overlapping range in volume coordinates and in crop coordinates.
    let mut src = [(0usize, 0usize); 3];
    let mut dst = [(0usize, 0usize); 3];
    for axis in 0..3 {
        let extent = hu.len_of(Axis(axis));
        let start = crop_start(center_irc[axis], CROP[axis], extent);
        let lo = start.max(0);
        let hi = (start + CROP[axis] as i64).min(extent as i64);
        if hi <= lo {
            return out; // no overlap at all (only for a centre far outside the volume)
        }
        src[axis] = (lo as usize, hi as usize);
        dst[axis] = ((lo - start) as usize, (hi - start) as usize);
    }
    let from = hu.slice(s![
        src[0].0..src[0].1,
        src[1].0..src[1].1,
        src[2].0..src[2].1
    ]);
    out.slice_mut(s![
        dst[0].0..dst[0].1,
        dst[1].0..dst[1].1,
        dst[2].0..dst[2].1
    ])
    .zip_mut_with(&from, |o, &v| *o = v.clamp(HU_MIN, HU_MAX));
    out
}

/// The clamped-HU crop of `CROP` voxels `crop_mm` (index, row, column) apart, centred on
/// `center_irc` (unrounded) of a volume whose voxels are `voxel_mm` apart: trilinear interpolation of
/// the clamped HU, voxels outside the volume -1000 HU. See the module doc.
pub fn crop_resampled(
    hu: ArrayView3<'_, f32>,
    center_irc: [f64; 3],
    voxel_mm: [f64; 3],
    crop_mm: [f64; 3],
) -> Array3<f32> {
    // Per axis and crop index: the lower neighbour's index and the weights of it and the next one.
    let taps: Vec<Vec<(i64, f64)>> = (0..3)
        .map(|axis| {
            let step = crop_mm[axis] / voxel_mm[axis];
            (0..CROP[axis])
                .map(|k| {
                    let p = center_irc[axis] + (k as f64 - CROP[axis] as f64 / 2.0) * step;
                    let lower = p.floor();
                    (lower as i64, p - lower)
                })
                .collect()
        })
        .collect();
    let (n0, n1, n2) = hu.dim();
    let at = |i: i64, r: i64, c: i64| -> f64 {
        let inside = (0..n0 as i64).contains(&i)
            && (0..n1 as i64).contains(&r)
            && (0..n2 as i64).contains(&c);
        if inside {
            hu[[i as usize, r as usize, c as usize]].clamp(HU_MIN, HU_MAX) as f64
        } else {
            HU_MIN as f64
        }
    };
    Array3::from_shape_fn((CROP[0], CROP[1], CROP[2]), |(k0, k1, k2)| {
        let ((i, fi), (r, fr), (c, fc)) = (taps[0][k0], taps[1][k1], taps[2][k2]);
        let mut sum = 0.0;
        for (di, wi) in [(0, 1.0 - fi), (1, fi)] {
            for (dr, wr) in [(0, 1.0 - fr), (1, fr)] {
                for (dc, wc) in [(0, 1.0 - fc), (1, fc)] {
                    sum += wi * wr * wc * at(i + di, r + dr, c + dc);
                }
            }
        }
        sum as f32
    })
}

/// The positive-class probability of a two-class model's batch-1 answer: `probabilities[0, 1]`, or
/// the softmax of `logits`, or else column 1 of the last output (what the reference reads).
pub fn positive_probability(outputs: &Outputs, model: &str) -> Result<f64, PipelineError> {
    let shape_err = |output: &str, shape: &[usize]| PipelineError::OutputShape {
        model: model.to_string(),
        output: output.to_string(),
        shape: shape.to_vec(),
        expected: "[1, 2]".to_string(),
    };
    let pair = |output: &str, a: &ndarray::ArrayD<f32>| -> Result<(f64, f64), PipelineError> {
        match a.as_slice() {
            Some(&[p0, p1]) if a.ndim() == 2 => Ok((p0 as f64, p1 as f64)),
            _ => Err(shape_err(output, a.shape())),
        }
    };
    if let Some(p) = outputs.get("probabilities") {
        return Ok(pair("probabilities", p)?.1);
    }
    if let Some(l) = outputs.get("logits") {
        let (l0, l1) = pair("logits", l)?;
        return Ok(1.0 / (1.0 + (l0 - l1).exp()));
    }
    match outputs.0.last() {
        Some((name, a)) => Ok(pair(name, a)?.1),
        None => Err(shape_err("(none)", &[])),
    }
}

/// The crop spacing `model` declares (`None`: the CT's own voxels). A malformed declaration is
/// refused at load by `engine::check_role`; only a model loaded without that check gets the error.
fn crop_grid(model: &dyn Model) -> Result<Option<[f64; 3]>, PipelineError> {
    model.info().crop_mm().map_err(|message| {
        PipelineError::Engine(crate::engine::EngineError::Parse {
            path: model.info().path.clone(),
            message,
        })
    })
}

/// Runs `model` on the crop around `center_irc` cut on `grid`; the positive-class probability.
fn classify_on_grid(
    model: &dyn Model,
    grid: Option<[f64; 3]>,
    hu: ArrayView3<'_, f32>,
    voxel_mm: [f64; 3],
    center_irc: [f64; 3],
) -> Result<f64, PipelineError> {
    let block = match grid {
        None => crop(hu, center_irc),
        Some(crop_mm) => crop_resampled(hu, center_irc, voxel_mm, crop_mm),
    };
    let input = block.insert_axis(Axis(0)).insert_axis(Axis(0));
    let outputs = model.run(input.view().into_dyn())?;
    positive_probability(&outputs, &model.info().name)
}

/// Runs a two-class crop model on the crop of one centre (of a volume whose voxels are `voxel_mm`
/// apart, index, row, column); the positive-class probability.
pub fn classify_one(
    model: &dyn Model,
    hu: ArrayView3<'_, f32>,
    voxel_mm: [f64; 3],
    center_irc: [f64; 3],
) -> Result<f64, PipelineError> {
    classify_on_grid(model, crop_grid(model)?, hu, voxel_mm, center_irc)
}

/// The positive-class probability of every centre, in order, in parallel on the current rayon pool.
pub fn classify(
    model: &dyn Model,
    hu: ArrayView3<'_, f32>,
    voxel_mm: [f64; 3],
    centers: &[[f64; 3]],
    stage: Stage,
    progress: &(dyn Fn(Stage, usize, usize) + Sync),
) -> Result<Vec<f64>, PipelineError> {
    let grid = crop_grid(model)?;
    let total = centers.len();
    let done = AtomicUsize::new(0);
    progress(stage, 0, total);
    centers
        .par_iter()
        .with_max_len(1)
        .map(|&center| {
            let p = classify_on_grid(model, grid, hu, voxel_mm, center)?;
            progress(stage, done.fetch_add(1, Ordering::Relaxed) + 1, total);
            Ok(p)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::ArrayD;

    #[test]
    fn start_rounds_half_to_even() {
        // round(40.5) = 40 (even), round(41.5) = 42: start = rounded - 24.
        assert_eq!(crop_start(40.5, 48, 512), 16);
        assert_eq!(crop_start(41.5, 48, 512), 18);
        assert_eq!(crop_start(40.49, 48, 512), 16);
        assert_eq!(crop_start(40.51, 48, 512), 17);
        // Slices: round(20.5) = 20, start 4; round(21.5) = 22, start 6.
        assert_eq!(crop_start(20.5, 32, 133), 4);
        assert_eq!(crop_start(21.5, 32, 133), 6);
    }

    #[test]
    fn start_shifts_inside_at_every_border() {
        // Low border: would start before 0.
        assert_eq!(crop_start(0.0, 32, 133), 0);
        assert_eq!(crop_start(15.4, 32, 133), 0);
        assert_eq!(crop_start(16.0, 32, 133), 0);
        assert_eq!(crop_start(17.0, 32, 133), 1);
        // High border: would run past the last slice.
        assert_eq!(crop_start(132.0, 32, 133), 101);
        assert_eq!(crop_start(117.0, 32, 133), 101);
        assert_eq!(crop_start(116.0, 32, 133), 100);
        // Rows and columns likewise.
        assert_eq!(crop_start(2.0, 48, 512), 0);
        assert_eq!(crop_start(511.0, 48, 512), 464);
        // Exactly as thick as the crop: the only start is 0.
        assert_eq!(crop_start(20.0, 32, 32), 0);
    }

    fn ramp(shape: (usize, usize, usize)) -> Array3<f32> {
        // Encodes the position, inside the clamp range: v = 10·i + r + c/100 - 900.
        Array3::from_shape_fn(shape, |(i, r, c)| {
            i as f32 * 10.0 + r as f32 + c as f32 * 0.01 - 900.0
        })
    }

    fn value(i: usize, r: usize, c: usize) -> f32 {
        i as f32 * 10.0 + r as f32 + c as f32 * 0.01 - 900.0
    }

    #[test]
    fn crop_reads_the_shifted_block() {
        let hu = ramp((40, 60, 70));
        // Centre near the high corner: starts clamp to (8, 12, 22).
        let block = crop(hu.view(), [39.0, 59.0, 69.0]);
        assert_eq!(block.shape(), &[32, 48, 48]);
        assert_eq!(block[[0, 0, 0]], value(8, 12, 22));
        assert_eq!(block[[31, 47, 47]], value(39, 59, 69));
        // Near the low corner: starts clamp to 0.
        let block = crop(hu.view(), [1.0, 2.0, 3.0]);
        assert_eq!(block[[0, 0, 0]], value(0, 0, 0));
        // In the middle: start = round(c) - size/2.
        let block = crop(hu.view(), [20.2, 30.5, 35.5]);
        assert_eq!(block[[0, 0, 0]], value(4, 6, 12));
    }

    #[test]
    fn resampled_crop_at_the_volumes_own_spacing_is_the_voxel_crop() {
        let hu = ramp((40, 60, 70));
        let spacing = [2.5, 0.7, 0.7];
        for centre in [[20.0, 30.0, 35.0], [17.0, 25.0, 40.0]] {
            assert_eq!(
                crop_resampled(hu.view(), centre, spacing, spacing),
                crop(hu.view(), centre)
            );
        }
    }

    #[test]
    fn resampled_crop_interpolates_a_ramp_exactly() {
        // Trilinear interpolation reproduces a linear function: the crop voxel k of each axis
        // sits at centre + (k - size/2) · crop_mm / voxel_mm.
        let hu = ramp((80, 120, 120));
        let (voxel, grid) = ([2.0, 0.8, 0.6], [1.5, 0.75, 0.75]);
        let centre = [40.3, 60.7, 59.2];
        let block = crop_resampled(hu.view(), centre, voxel, grid);
        let at = |k: usize, axis: usize| {
            centre[axis] + (k as f64 - CROP[axis] as f64 / 2.0) * grid[axis] / voxel[axis]
        };
        for (i, r, c) in [(0, 0, 0), (16, 24, 24), (31, 47, 47), (5, 40, 7)] {
            let want = at(i, 0) * 10.0 + at(r, 1) + at(c, 2) * 0.01 - 900.0;
            assert!(
                (block[[i, r, c]] as f64 - want).abs() < 1e-3,
                "({i}, {r}, {c}): {} against {want}",
                block[[i, r, c]]
            );
        }
    }

    #[test]
    fn resampled_crop_clamps_then_interpolates_and_pads_with_air() {
        let mut hu = Array3::from_elem((10, 10, 10), 3000.0f32);
        hu[[5, 5, 5]] = -2000.0;
        // Halfway between a clamped 1000 and a clamped -1000: 0.
        let block = crop_resampled(hu.view(), [5.5, 5.0, 5.0], [1.0; 3], [1.0; 3]);
        assert_eq!(block[[16, 24, 24]], 0.0);
        // Far outside the volume: air everywhere; at the edge, half air.
        let outside = crop_resampled(hu.view(), [100.0, 5.0, 5.0], [1.0; 3], [1.0; 3]);
        assert!(outside.iter().all(|&v| v == HU_MIN));
        let edge = crop_resampled(hu.view(), [9.5, 5.0, 4.0], [1.0; 3], [1.0; 3]);
        assert_eq!(edge[[16, 24, 24]], 0.0);
    }

    #[test]
    fn crop_clamps_hu() {
        let mut hu = Array3::from_elem((32, 48, 48), 3000.0f32);
        hu[[0, 0, 0]] = -3000.0;
        let block = crop(hu.view(), [16.0, 24.0, 24.0]);
        assert_eq!(block[[0, 0, 0]], -1000.0);
        assert_eq!(block[[5, 5, 5]], 1000.0);
    }

    #[test]
    fn thin_volume_is_padded_with_air_around_a_centred_crop() {
        // 10 slices, 30 rows, 100 columns: index and row axes are thinner than the crop.
        let hu = ramp((10, 30, 100));
        let block = crop(hu.view(), [4.0, 15.0, 50.0]);
        assert_eq!(block.shape(), &[32, 48, 48]);
        // Index: start = 4 - 16 = -12, so slice 0 lands at crop index 12; rows start at -9.
        assert_eq!(block[[11, 20, 10]], -1000.0);
        assert_eq!(block[[12, 9, 0]], value(0, 0, 26));
        assert_eq!(block[[21, 38, 47]], value(9, 29, 73));
        assert_eq!(block[[22, 20, 10]], -1000.0);
        assert_eq!(block[[15, 8, 10]], -1000.0);
        assert_eq!(block[[15, 39, 10]], -1000.0);
        // A one-slice volume still yields a full crop.
        let one = ramp((1, 1, 1));
        let block = crop(one.view(), [0.0, 0.0, 0.0]);
        assert_eq!(block[[16, 24, 24]], value(0, 0, 0));
        assert_eq!(block.iter().filter(|&&v| v != -1000.0).count(), 1);
    }

    #[test]
    fn positive_probability_reads_probabilities_then_logits() {
        let two = |a: f32, b: f32| ArrayD::from_shape_vec(vec![1, 2], vec![a, b]).unwrap();
        let both = Outputs(vec![
            ("logits".into(), two(0.0, 0.0)),
            ("probabilities".into(), two(0.3, 0.7)),
        ]);
        assert!((positive_probability(&both, "m").unwrap() - 0.7).abs() < 1e-7);
        let logits = Outputs(vec![("logits".into(), two(1.0, 3.0))]);
        let expect = 1.0 / (1.0 + (-2.0f64).exp());
        assert!((positive_probability(&logits, "m").unwrap() - expect).abs() < 1e-12);
        let bad = Outputs(vec![(
            "probabilities".into(),
            ArrayD::from_shape_vec(vec![1, 3], vec![0.1, 0.2, 0.7]).unwrap(),
        )]);
        assert!(positive_probability(&bad, "m").is_err());
        assert!(positive_probability(&Outputs::default(), "m").is_err());
    }
}
