//! Malignancy: the probability that a nodule (a candidate with p_nodule > 0.5) is malignant.
//!
//! Two sources, chosen at load:
//!
//! * an ONNX model with the nodule classifier's interface (`N×1×32×48×48` crop, two classes), run on
//!   the same crop as the nodule classifier, or on a crop resampled to millimetres when the model
//!   declares `crop_mm` (noduled's own: size is most of the malignancy signal, and a crop of the
//!   CT's voxels tells size only as well as the spacing is known): p_malignant = softmax[:, 1]
//!   (`probabilities[:, 1]`);
//! * the book's **diameter baseline** (chapter 14), for when no malignancy model is available. The
//!   book thresholds the nodule diameter; its operating points on LUNA16 were 5.42 mm (TPR 0.96,
//!   FPR 0.43) and 10.55 mm (TPR 0.56, FPR 0.01). noduled turns the threshold into a probability
//!   with a logistic in the equivalent diameter `d` of the candidate's segmented volume:
//!   `p = 1 / (1 + exp(-(d - 10.55 mm) / 1.5 mm))`. It is 0.5 at the 10.55 mm operating point
//!   (the low-false-positive one: an answer "malignant" should be rare on benign nodules), about
//!   0.03 at 5.42 mm, 0.16 at 8 mm, 0.84 at 13 mm and above 0.99 from 17.5 mm. The 1.5 mm scale is a
//!   choice, not a fit: it keeps the step of the book's threshold while telling a 10 mm nodule from a
//!   20 mm one. Note the book measured diameters on LUNA16's annotations; noduled measures them on
//!   the segmentation (see `group`), which runs smaller for part-solid nodules.

use super::classify::classify_one;
use super::PipelineError;
use crate::engine::Model;
use ndarray::ArrayView3;
use std::sync::Arc;

/// Diameter (mm) at which the baseline gives p_malignant = 0.5: the book's 10.55 mm operating point.
pub const DIAMETER_MIDPOINT_MM: f64 = 10.55;
/// Width (mm) of the baseline's logistic step.
pub const DIAMETER_SCALE_MM: f64 = 1.5;

/// Where p_malignant comes from.
#[derive(Debug, Clone)]
pub enum Malignancy {
    /// A two-class ONNX crop classifier.
    Model(Arc<dyn Model>),
    /// The book's diameter baseline ([`p_malignant_from_diameter`]).
    Diameter,
}

/// The diameter baseline: `1 / (1 + exp(-(d - 10.55) / 1.5))`, `d` in mm.
pub fn p_malignant_from_diameter(diameter_mm: f64) -> f64 {
    1.0 / (1.0 + (-(diameter_mm - DIAMETER_MIDPOINT_MM) / DIAMETER_SCALE_MM).exp())
}

impl Malignancy {
    /// p_malignant of one nodule.
    /// `voxel_mm` is the volume's (index, row, column) spacing: a model that declares a `crop_mm`
    /// gets its crop resampled to that (see `classify`).
    pub fn assess(
        &self,
        hu: ArrayView3<'_, f32>,
        voxel_mm: [f64; 3],
        center_irc: [f64; 3],
        diameter_mm: f64,
    ) -> Result<f64, PipelineError> {
        match self {
            Malignancy::Model(model) => classify_one(model.as_ref(), hu, voxel_mm, center_irc),
            Malignancy::Diameter => Ok(p_malignant_from_diameter(diameter_mm)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_is_centred_on_the_books_operating_point() {
        assert!((p_malignant_from_diameter(10.55) - 0.5).abs() < 1e-12);
        assert!(p_malignant_from_diameter(5.42) < 0.05);
        assert!(p_malignant_from_diameter(13.0) > 0.8);
        assert!(p_malignant_from_diameter(20.0) > 0.99);
        assert!(p_malignant_from_diameter(0.0) < 0.001);
        let mut last = 0.0;
        for d in 0..60 {
            let p = p_malignant_from_diameter(d as f64);
            assert!(p > last && p < 1.0 + 1e-15);
            last = p;
        }
    }
}
