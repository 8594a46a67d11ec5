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

use super::{PipelineError, Stage, CONTEXT_SLICES, HU_MAX, HU_MIN};
use crate::engine::{EngineError, Model, Outputs};
use ndarray::{s, Array3, Array4, ArrayView3, ArrayViewMut2, Axis, Ix4};
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Name of the segmentation model's output read (falls back to the first output).
pub const OUTPUT: &str = "nodule_probability";

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

/// The U-Net probability of every voxel, `[index, row, column]` like `hu`. Slices run in parallel
/// on the current rayon pool (the caller installs the pipeline's pool); `progress` gets (slices
/// done, slices total).
pub fn segment(
    model: &dyn Model,
    hu: ArrayView3<'_, f32>,
    progress: &(dyn Fn(Stage, usize, usize) + Sync),
) -> Result<Array3<f32>, PipelineError> {
    let [n, h, w] = [hu.shape()[0], hu.shape()[1], hu.shape()[2]];
    let mut probability = Array3::<f32>::zeros((n, h, w));
    if n == 0 || h == 0 || w == 0 {
        return Ok(probability);
    }
    let done = AtomicUsize::new(0);
    progress(Stage::Segment, 0, n);
    let mut planes: Vec<ArrayViewMut2<'_, f32>> = probability.outer_iter_mut().collect();
    planes
        .par_iter_mut()
        .with_max_len(1)
        .enumerate()
        .try_for_each(|(index, plane)| -> Result<(), PipelineError> {
            let input = slice_input(hu, index);
            let outputs = model.run(input.view().into_dyn())?;
            copy_plane(model, &outputs, plane)?;
            progress(Stage::Segment, done.fetch_add(1, Ordering::Relaxed) + 1, n);
            Ok(())
        })?;
    Ok(probability)
}

/// Copies the top-left `h × w` of the `[1, 1, H', W']` output into `plane` (`h × w`).
fn copy_plane(
    model: &dyn Model,
    outputs: &Outputs,
    plane: &mut ArrayViewMut2<'_, f32>,
) -> Result<(), PipelineError> {
    let (h, w) = plane.dim();
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
        expected: format!("[1, 1, {}, {}]", padded_extent(h), padded_extent(w)),
    };
    let prob = prob
        .view()
        .into_dimensionality::<Ix4>()
        .map_err(|_| shape_err())?;
    if prob.shape()[..2] != [1, 1] || prob.shape()[2] < h || prob.shape()[3] < w {
        return Err(shape_err());
    }
    plane.assign(&prob.slice(s![0, 0, ..h, ..w]));
    Ok(())
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
}
