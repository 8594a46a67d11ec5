//! Matching detections to annotated nodules, and the book's end-to-end confusion matrix.
//!
//! The rule is the book's (`match_and_score`, chapter 14 of *Deep Learning with PyTorch*): a
//! detection matches a true nodule when their distance is below 0.7 × the nodule's diameter. A
//! detection is classed as *filtered out* (p_nodule ≤ 0.5), *predicted benign* (a nodule with
//! p_malignant ≤ 0.5) or *predicted malignant*. A true nodule matched by several detections takes the
//! "highest" class among them; a detection matching several nodules counts for all of them; a
//! detection matching none is a non-nodule (row 0). A nodule no detection matches is a *complete
//! miss* (column 0). The 0.5 decisions are the pipeline's ([`DECISION_THRESHOLD`], strictly above).

use crate::pipeline::DECISION_THRESHOLD;
use serde::Serialize;

/// Fraction of a nodule's diameter within which a detection matches it (the book's 0.7).
pub const MATCH_DIAMETER_FRACTION: f64 = 0.7;

/// Row labels of the confusion matrix (truth).
pub const ROWS: [&str; 3] = ["non-nodule", "benign", "malignant"];
/// Column labels of the confusion matrix (outcome).
pub const COLUMNS: [&str; 4] = [
    "complete miss",
    "filtered out",
    "predicted benign",
    "predicted malignant",
];

/// One detection (a candidate of the pipeline).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// Centre in patient mm.
    pub xyz: [f64; 3],
    pub p_nodule: f64,
    /// Present for nodules (p_nodule > 0.5); absent counts as benign.
    pub p_malignant: Option<f64>,
}

/// One annotated nodule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrueNodule {
    /// Centre in patient mm.
    pub xyz: [f64; 3],
    pub diameter_mm: f64,
    /// `None` when the annotations have no malignancy column (counted in the benign row).
    pub malignant: Option<bool>,
}

impl TrueNodule {
    /// Confusion row: 2 for malignant, 1 otherwise.
    pub fn row(&self) -> usize {
        if self.malignant == Some(true) {
            2
        } else {
            1
        }
    }

    /// Whether a detection at `xyz` matches this nodule.
    pub fn matches(&self, xyz: [f64; 3]) -> bool {
        distance(self.xyz, xyz) < MATCH_DIAMETER_FRACTION * self.diameter_mm
    }
}

/// Euclidean distance in mm.
pub fn distance(a: [f64; 3], b: [f64; 3]) -> f64 {
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

/// Column of a detection: 1 filtered out, 2 predicted benign, 3 predicted malignant.
pub fn detection_class(d: &Detection) -> usize {
    if d.p_nodule <= DECISION_THRESHOLD {
        1
    } else if d.p_malignant.unwrap_or(0.0) <= DECISION_THRESHOLD {
        2
    } else {
        3
    }
}

/// Which detections match which nodules.
#[derive(Debug, Clone, PartialEq)]
pub struct Matching {
    /// Per nodule, the detections matching it (ascending index).
    pub nodule_matches: Vec<Vec<usize>>,
    /// Per detection, whether it matches any nodule.
    pub detection_matched: Vec<bool>,
}

impl Matching {
    /// Matches every detection against every nodule.
    pub fn new(truth: &[TrueNodule], detections: &[Detection]) -> Matching {
        let mut detection_matched = vec![false; detections.len()];
        let nodule_matches = truth
            .iter()
            .map(|n| {
                let hits: Vec<usize> = detections
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| n.matches(d.xyz))
                    .map(|(k, _)| k)
                    .collect();
                for &k in &hits {
                    detection_matched[k] = true;
                }
                hits
            })
            .collect();
        Matching {
            nodule_matches,
            detection_matched,
        }
    }

    /// Per nodule, its outcome column (0 complete miss .. 3 predicted malignant).
    pub fn nodule_outcomes(&self, detections: &[Detection]) -> Vec<usize> {
        self.nodule_matches
            .iter()
            .map(|hits| {
                hits.iter()
                    .map(|&k| detection_class(&detections[k]))
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }

    /// Per nodule, the matching detection with the highest p_nodule (ties: the first).
    pub fn best_detection(&self, detections: &[Detection]) -> Vec<Option<usize>> {
        self.nodule_matches
            .iter()
            .map(|hits| {
                hits.iter().copied().reduce(|best, k| {
                    if detections[k].p_nodule > detections[best].p_nodule {
                        k
                    } else {
                        best
                    }
                })
            })
            .collect()
    }
}

/// The book's 3×4 confusion matrix (rows [`ROWS`], columns [`COLUMNS`]).
pub type Confusion = [[u64; 4]; 3];

/// The confusion matrix of one scan.
pub fn confusion(truth: &[TrueNodule], detections: &[Detection]) -> Confusion {
    let matching = Matching::new(truth, detections);
    let mut table = [[0u64; 4]; 3];
    for (d, matched) in detections.iter().zip(&matching.detection_matched) {
        if !matched {
            table[0][detection_class(d)] += 1;
        }
    }
    for (n, outcome) in truth.iter().zip(matching.nodule_outcomes(detections)) {
        table[n.row()][outcome] += 1;
    }
    table
}

/// Element-wise sum of confusion matrices.
pub fn add(total: &mut Confusion, other: &Confusion) {
    for (row, other_row) in total.iter_mut().zip(other) {
        for (cell, value) in row.iter_mut().zip(other_row) {
            *cell += value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(xyz: [f64; 3], p_nodule: f64, p_malignant: Option<f64>) -> Detection {
        Detection {
            xyz,
            p_nodule,
            p_malignant,
        }
    }

    fn nodule(xyz: [f64; 3], diameter_mm: f64, malignant: bool) -> TrueNodule {
        TrueNodule {
            xyz,
            diameter_mm,
            malignant: Some(malignant),
        }
    }

    #[test]
    fn the_match_radius_is_strictly_below_seven_tenths_of_the_diameter() {
        let n = nodule([0.0; 3], 10.0, false);
        assert!(n.matches([6.99, 0.0, 0.0]));
        assert!(!n.matches([7.0, 0.0, 0.0]));
        assert!(n.matches([4.0, 4.0, 4.0])); // 6.93 mm
        assert!(!n.matches([4.1, 4.1, 4.1])); // 7.10 mm
    }

    #[test]
    fn one_detection_near_two_nodules_counts_for_both() {
        // Nodules 10 mm apart, 20 mm wide: a detection half-way (5 mm from each) matches both.
        let truth = [
            nodule([0.0, 0.0, 0.0], 20.0, true),
            nodule([10.0, 0.0, 0.0], 20.0, false),
        ];
        let dets = [
            det([5.0, 0.0, 0.0], 0.9, Some(0.8)),    // predicted malignant
            det([100.0, 0.0, 0.0], 0.2, None),       // filtered out, no nodule
            det([-100.0, 0.0, 0.0], 0.7, Some(0.1)), // predicted benign, no nodule
        ];
        let m = Matching::new(&truth, &dets);
        assert_eq!(m.nodule_matches, vec![vec![0], vec![0]]);
        assert_eq!(m.detection_matched, vec![true, false, false]);
        let c = confusion(&truth, &dets);
        assert_eq!(
            c,
            [
                [0, 1, 1, 0], // the two unmatched detections
                [0, 0, 0, 1], // the benign nodule, "predicted malignant" by the shared detection
                [0, 0, 0, 1], // the malignant nodule
            ]
        );
    }

    #[test]
    fn two_detections_on_one_nodule_take_the_highest_class_and_are_not_false_positives() {
        let truth = [nodule([0.0; 3], 10.0, true)];
        // Both within 7 mm: one filtered out, one predicted benign.
        let dets = [
            det([3.0, 0.0, 0.0], 0.3, None),
            det([0.0, 4.0, 0.0], 0.6, Some(0.2)),
        ];
        let c = confusion(&truth, &dets);
        assert_eq!(c, [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]]);
        let m = Matching::new(&truth, &dets);
        assert_eq!(m.best_detection(&dets), vec![Some(1)]);
    }

    #[test]
    fn unmatched_nodules_are_complete_misses() {
        let truth = [
            nodule([0.0; 3], 5.0, false),
            nodule([50.0, 0.0, 0.0], 5.0, true),
        ];
        assert_eq!(
            confusion(&truth, &[]),
            [[0, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]]
        );
        let dets = [det([0.0, 0.0, 3.4], 0.51, Some(0.51))];
        assert_eq!(
            confusion(&truth, &dets),
            [[0, 0, 0, 0], [0, 0, 0, 1], [1, 0, 0, 0]]
        );
        // Exactly 0.5 is not above the threshold: filtered out.
        let dets = [det([0.0, 0.0, 0.0], 0.5, None)];
        assert_eq!(confusion(&truth, &dets)[1], [0, 1, 0, 0]);
        let mut total = confusion(&truth, &dets);
        add(&mut total, &confusion(&truth, &[]));
        assert_eq!(total[1], [1, 1, 0, 0]);
        assert_eq!(total[2], [2, 0, 0, 0]);
    }
}
