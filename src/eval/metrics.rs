//! ROC/AUC and FROC/CPM.
//!
//! * **ROC**: one point per distinct score (all tied scores enter together), from (0, 0) to (1, 1);
//!   the AUC is the trapezoid area under those points, which equals the Mann–Whitney probability
//!   that a positive scores above a negative, ties counting one half. With one class only there is
//!   no ROC: [`roc`] refuses ([`MetricError::SingleClass`]) rather than report 0, 0.5 or 1.
//! * **FROC** as LUNA16's evaluation script (`noduleCADEvaluationLUNA16.py`): each true nodule takes
//!   the highest score of the detections matching it (the others are neither hits nor false
//!   positives); detections matching no nodule are false positives. Sweeping the threshold over
//!   the distinct scores gives points (false positives per scan, sensitivity), starting at (0, 0);
//!   nodules no detection matches are never found, so sensitivity may stay below 1. The sensitivity
//!   at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives per scan is read off the curve by linear
//!   interpolation (numpy's `interp`: beyond the last point it stays at the last sensitivity), and
//!   the **CPM** (competition performance metric) is their mean.

use serde::Serialize;

/// The FROC operating points of LUNA16 (false positives per scan).
pub const FROC_FP_RATES: [f64; 7] = [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0];

/// Why a metric cannot be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricError {
    #[error("only one class ({positives} positive, {negatives} negative): an ROC needs both")]
    SingleClass { positives: usize, negatives: usize },
    #[error("{scores} scores but {labels} labels")]
    Length { scores: usize, labels: usize },
    #[error("score {0} is not a finite number")]
    NotFinite(f64),
    #[error("no annotated nodules: sensitivity is undefined")]
    NoNodules,
    #[error("no scans: false positives per scan are undefined")]
    NoScans,
}

/// An ROC curve and its area.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Roc {
    /// False-positive rates, ascending from 0 to 1.
    pub fpr: Vec<f64>,
    /// True-positive rates, one per `fpr`.
    pub tpr: Vec<f64>,
    pub auc: f64,
    pub positives: usize,
    pub negatives: usize,
}

fn check_finite(scores: &[f64]) -> Result<(), MetricError> {
    match scores.iter().find(|s| !s.is_finite()) {
        Some(&bad) => Err(MetricError::NotFinite(bad)),
        None => Ok(()),
    }
}

/// Cumulative (positives, negatives) at each distinct score, highest score first.
fn sweep(scored: &mut [(f64, bool)]) -> Vec<(usize, usize)> {
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut points = Vec::new();
    let (mut pos, mut neg) = (0, 0);
    for (k, &(score, label)) in scored.iter().enumerate() {
        if label {
            pos += 1;
        } else {
            neg += 1;
        }
        let last_of_tie = scored.get(k + 1).is_none_or(|next| next.0 != score);
        if last_of_tie {
            points.push((pos, neg));
        }
    }
    points
}

/// The ROC of `scores` against `labels` (true = positive).
pub fn roc(scores: &[f64], labels: &[bool]) -> Result<Roc, MetricError> {
    if scores.len() != labels.len() {
        return Err(MetricError::Length {
            scores: scores.len(),
            labels: labels.len(),
        });
    }
    check_finite(scores)?;
    let positives = labels.iter().filter(|&&l| l).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return Err(MetricError::SingleClass {
            positives,
            negatives,
        });
    }
    let mut scored: Vec<(f64, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    let (mut fpr, mut tpr) = (vec![0.0], vec![0.0]);
    for (pos, neg) in sweep(&mut scored) {
        fpr.push(neg as f64 / negatives as f64);
        tpr.push(pos as f64 / positives as f64);
    }
    let auc = fpr
        .windows(2)
        .zip(tpr.windows(2))
        .map(|(f, t)| (f[1] - f[0]) * (t[0] + t[1]) / 2.0)
        .sum();
    Ok(Roc {
        fpr,
        tpr,
        auc,
        positives,
        negatives,
    })
}

/// A FROC curve, its values at [`FROC_FP_RATES`] and the CPM.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Froc {
    /// The operating points ([`FROC_FP_RATES`]).
    pub fp_rates: Vec<f64>,
    /// Sensitivity at each operating point.
    pub sensitivity: Vec<f64>,
    /// Mean of `sensitivity`.
    pub cpm: f64,
    /// The curve: false positives per scan, ascending from 0.
    pub curve_fp_per_scan: Vec<f64>,
    /// The curve: sensitivity at each `curve_fp_per_scan`.
    pub curve_sensitivity: Vec<f64>,
    pub nodules: usize,
    pub scans: usize,
}

/// Linear interpolation on an ascending `xs` (repeated values allowed: the last point at or
/// below `x` is taken); constant beyond both ends.
pub fn interpolate(xs: &[f64], ys: &[f64], x: f64) -> f64 {
    let Some(below) = xs.iter().rposition(|&v| v <= x) else {
        return ys.first().copied().unwrap_or(0.0);
    };
    match xs.get(below + 1) {
        None => ys[below],
        Some(&x1) => {
            let (x0, y0, y1) = (xs[below], ys[below], ys[below + 1]);
            y0 + (y1 - y0) * (x - x0) / (x1 - x0)
        }
    }
}

/// The FROC of a set of scans. `nodule_scores`: per annotated nodule, the highest score of the
/// detections matching it (`None`: no detection matches); `fp_scores`: the scores of the
/// detections matching no nodule; `scans`: how many scans they come from.
pub fn froc(
    nodule_scores: &[Option<f64>],
    fp_scores: &[f64],
    scans: usize,
) -> Result<Froc, MetricError> {
    if nodule_scores.is_empty() {
        return Err(MetricError::NoNodules);
    }
    if scans == 0 {
        return Err(MetricError::NoScans);
    }
    let found: Vec<f64> = nodule_scores.iter().flatten().copied().collect();
    check_finite(&found)?;
    check_finite(fp_scores)?;
    let mut scored: Vec<(f64, bool)> = found
        .iter()
        .map(|&s| (s, true))
        .chain(fp_scores.iter().map(|&s| (s, false)))
        .collect();
    let (mut fps, mut sens) = (vec![0.0], vec![0.0]);
    for (pos, neg) in sweep(&mut scored) {
        fps.push(neg as f64 / scans as f64);
        sens.push(pos as f64 / nodule_scores.len() as f64);
    }
    let sensitivity: Vec<f64> = FROC_FP_RATES
        .iter()
        .map(|&rate| interpolate(&fps, &sens, rate))
        .collect();
    let cpm = sensitivity.iter().sum::<f64>() / sensitivity.len() as f64;
    Ok(Froc {
        fp_rates: FROC_FP_RATES.to_vec(),
        sensitivity,
        cpm,
        curve_fp_per_scan: fps,
        curve_sensitivity: sens,
        nodules: nodule_scores.len(),
        scans,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn auc_counts_ties_as_one_half() {
        // Pairs (pos, neg): (.9,.5) 1, (.9,.1) 1, (.5,.5) ½, (.5,.1) 1 → 3.5 / 4.
        let r = roc(&[0.9, 0.5, 0.5, 0.1], &[true, true, false, false]).unwrap();
        assert!(close(r.auc, 0.875), "{}", r.auc);
        // The tie is one diagonal step: (0,0) (0,.5) (.5,1) (1,1).
        assert_eq!(r.fpr, vec![0.0, 0.0, 0.5, 1.0]);
        assert_eq!(r.tpr, vec![0.0, 0.5, 1.0, 1.0]);
        // All tied: chance.
        let r = roc(&[0.3; 5], &[true, false, false, true, false]).unwrap();
        assert!(close(r.auc, 0.5));
        // Perfect and inverted.
        assert!(close(roc(&[0.2, 0.8], &[false, true]).unwrap().auc, 1.0));
        assert!(close(roc(&[0.2, 0.8], &[true, false]).unwrap().auc, 0.0));
        // 2 positives, 3 negatives: pos .7 beats .6 .2, ties .7 → 2.5; pos .4 beats .2 → 1; 3.5/6.
        let r = roc(
            &[0.7, 0.4, 0.7, 0.6, 0.2],
            &[true, true, false, false, false],
        )
        .unwrap();
        assert!(close(r.auc, 3.5 / 6.0), "{}", r.auc);
        assert_eq!((r.positives, r.negatives), (2, 3));
    }

    #[test]
    fn auc_refuses_a_single_class_and_bad_input() {
        assert_eq!(
            roc(&[0.1, 0.9], &[true, true]),
            Err(MetricError::SingleClass {
                positives: 2,
                negatives: 0
            })
        );
        assert!(matches!(
            roc(&[0.1], &[false]),
            Err(MetricError::SingleClass { positives: 0, .. })
        ));
        assert!(matches!(
            roc(&[], &[]),
            Err(MetricError::SingleClass { .. })
        ));
        assert!(matches!(
            roc(&[0.1, f64::NAN], &[true, false]),
            Err(MetricError::NotFinite(_))
        ));
        assert!(matches!(
            roc(&[0.1], &[true, false]),
            Err(MetricError::Length { .. })
        ));
    }

    #[test]
    fn froc_by_hand() {
        // 2 scans, 4 nodules (one never matched), found with .9 .6 .3; false positives .8 .7 .5 .2.
        // Points: (0,0) (0,.25) (.5,.25) (1,.25) (1,.5) (1.5,.5) (1.5,.75) (2,.75).
        let f = froc(
            &[Some(0.9), Some(0.6), None, Some(0.3)],
            &[0.8, 0.7, 0.5, 0.2],
            2,
        )
        .unwrap();
        assert_eq!(
            f.curve_fp_per_scan,
            vec![0.0, 0.0, 0.5, 1.0, 1.0, 1.5, 1.5, 2.0]
        );
        assert_eq!(
            f.curve_sensitivity,
            vec![0.0, 0.25, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75]
        );
        assert_eq!(f.sensitivity, vec![0.25, 0.25, 0.25, 0.5, 0.75, 0.75, 0.75]);
        assert!(close(f.cpm, 3.5 / 7.0));
    }

    #[test]
    fn froc_interpolates_between_points() {
        // 1 scan, 2 nodules: one found at .5 tied with two false positives at .5, then a false
        // positive at .4 and the other nodule at .1. Points: (0,0) (2,.5) (3,.5) (3,1).
        let f = froc(&[Some(0.5), Some(0.1)], &[0.5, 0.5, 0.4], 1).unwrap();
        assert_eq!(f.curve_fp_per_scan, vec![0.0, 2.0, 3.0, 3.0]);
        // 1/8 → .5 × 1/16 = 1/32; 1/4 → 1/16; 1/2 → 1/8; 1 → 1/4; 2 → 1/2; 4, 8 → 1.
        let want = [1.0 / 32.0, 1.0 / 16.0, 0.125, 0.25, 0.5, 1.0, 1.0];
        for (got, want) in f.sensitivity.iter().zip(want) {
            assert!(close(*got, want), "{:?}", f.sensitivity);
        }
        assert!(close(f.cpm, want.iter().sum::<f64>() / 7.0));
        // No false positives at all: sensitivity is reached at 0 FP and stays there.
        let f = froc(&[Some(0.9), None], &[], 3).unwrap();
        assert!(f.sensitivity.iter().all(|&s| close(s, 0.5)));
        assert_eq!(froc(&[], &[0.5], 1), Err(MetricError::NoNodules));
        assert_eq!(froc(&[Some(0.5)], &[], 0), Err(MetricError::NoScans));
    }

    #[test]
    fn interpolation_handles_ends_and_vertical_steps() {
        let xs = [0.0, 1.0, 1.0, 3.0];
        let ys = [0.0, 0.2, 0.6, 1.0];
        assert!(close(interpolate(&xs, &ys, 0.5), 0.1));
        assert!(close(interpolate(&xs, &ys, 1.0), 0.6));
        assert!(close(interpolate(&xs, &ys, 2.0), 0.8));
        assert!(close(interpolate(&xs, &ys, 10.0), 1.0));
        assert!(close(interpolate(&xs, &ys, -1.0), 0.0));
    }
}
