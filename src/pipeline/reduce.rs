//! From the classifier's nodules to the findings a radiologist sees: every finding is measured
//! ([`super::measure`]) and categorised ([`super::lungrads`]); outside
//! [`super::PipelineOptions::exact`], false positives are cut by three rules that keep the true
//! nodules:
//!
//! 1. **fragments are merged**: the book's erosion splits one nodule into several components, each
//!    classified on its own, so one nodule shows as several findings a few mm apart. Findings whose
//!    segmentation components were one before erosion (the pre-erosion mask, 6-connected), or whose
//!    grown regions overlap or touch, become one finding: the highest p_nodule and p_malignant of
//!    the parts, the region's centroid, measured again on the union;
//! 2. **in or touching the lung**: a finding whose grown region lies farther than
//!    [`ReduceOptions::lung_margin_mm`] from the lung mask ([`super::lung`]) is not a lung nodule
//!    (chest wall, mediastinum, abdomen);
//! 3. **size floor**: a finding whose mean diameter is under [`ReduceOptions::min_mean_diameter_mm`]
//!    (4 mm) is not reported. Justification: Lung-RADS v2022 puts every solid nodule < 6 mm at
//!    baseline in category 2 (annual screening, as if nothing were found), and its smallest
//!    threshold for a new nodule is 4 mm; Fleischner 2017 recommends no routine follow-up under
//!    6 mm; LUNA16's reference standard, on which the book's models were trained, only counts
//!    nodules ≥ 3 mm. Reporting below 4 mm changes no management and costs false alarms.
//!
//! Every dropped finding is kept in [`super::Analysis::suppressed`] with its reason, so an
//! evaluation can tell what each rule removed.

use super::lung::LungMask;
use super::lungrads;
use super::measure::{self, MeasureOptions, Measurements};
use super::Finding;
use crate::volume::Geometry;
use ndarray::ArrayView3;
use serde::{Deserialize, Serialize};

/// The rules' parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReduceOptions {
    /// A finding's region must come this close (mm) to the lung mask.
    pub lung_margin_mm: f64,
    /// Findings with a smaller mean diameter (mm) are not reported.
    pub min_mean_diameter_mm: f64,
    /// Region growing of the measurements.
    pub measure: MeasureOptions,
}

impl Default for ReduceOptions {
    fn default() -> Self {
        ReduceOptions {
            lung_margin_mm: 2.0,
            min_mean_diameter_mm: 4.0,
            measure: MeasureOptions::default(),
        }
    }
}

/// Why a nodule from the classifier is not a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SuppressReason {
    /// Merged into another finding (see [`Suppressed::into`]).
    Merged,
    /// Not in and not touching the lung.
    OutsideLung,
    /// Mean diameter under the size floor.
    BelowSizeFloor,
    /// A fragment of a mass (see `pipeline::mass`): the mass is the finding.
    PartOfMass,
}

/// A classifier nodule that is not reported, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suppressed {
    /// Position of the candidate in [`super::Analysis::candidates`].
    pub candidate: usize,
    pub center_xyz: [f64; 3],
    pub p_nodule: f64,
    pub reason: SuppressReason,
    /// For `merged`: the candidate of the finding it joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub into: Option<usize>,
    /// Its mean diameter (mm), when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_diameter_mm: Option<f64>,
}

/// A finding with its grown region (voxels, sorted).
#[derive(Debug, Clone)]
pub struct MeasuredFinding {
    pub finding: Finding,
    pub region: Vec<[usize; 3]>,
}

impl MeasuredFinding {
    /// The finding with its region stored in [`Finding::region`].
    pub fn into_finding(self) -> Finding {
        let mut finding = self.finding;
        finding.region = self.region;
        finding
    }
}

/// How far (mm) a seed flood may go from its start: bounds the work on huge components.
const SEED_REACH_MM: f64 = 60.0;

/// The pre-erosion component of `mask` that holds the mask voxel nearest to `center` (searched
/// within 3 voxels), limited to `SEED_REACH_MM` around it; the centre voxel alone when no mask
/// voxel is that close.
pub fn seed_component(
    mask: ArrayView3<'_, bool>,
    spacing_xyz: [f64; 3],
    center_irc: [f64; 3],
) -> Vec<[usize; 3]> {
    let shape = [mask.shape()[0], mask.shape()[1], mask.shape()[2]];
    if shape.contains(&0) {
        return Vec::new();
    }
    let c: [usize; 3] =
        std::array::from_fn(|a| (center_irc[a].round().max(0.0) as usize).min(shape[a] - 1));
    let mut start = None;
    let mut best = f64::INFINITY;
    for i in c[0].saturating_sub(3)..=(c[0] + 3).min(shape[0] - 1) {
        for r in c[1].saturating_sub(3)..=(c[1] + 3).min(shape[1] - 1) {
            for col in c[2].saturating_sub(3)..=(c[2] + 3).min(shape[2] - 1) {
                if mask[[i, r, col]] {
                    let d = (i as f64 - center_irc[0]).powi(2)
                        + (r as f64 - center_irc[1]).powi(2)
                        + (col as f64 - center_irc[2]).powi(2);
                    if d < best {
                        best = d;
                        start = Some([i, r, col]);
                    }
                }
            }
        }
    }
    let Some(start) = start else {
        return vec![c];
    };
    let spacing = [spacing_xyz[2], spacing_xyz[1], spacing_xyz[0]];
    let reach: [usize; 3] = std::array::from_fn(|a| {
        if spacing[a] > 0.0 {
            (SEED_REACH_MM / spacing[a]).ceil() as usize
        } else {
            0
        }
    });
    let lo: [usize; 3] = std::array::from_fn(|a| start[a].saturating_sub(reach[a]));
    let hi: [usize; 3] = std::array::from_fn(|a| (start[a] + reach[a]).min(shape[a] - 1));
    let mut seen = std::collections::HashSet::new();
    seen.insert(start);
    let mut stack = vec![start];
    let mut out = Vec::new();
    while let Some(v) = stack.pop() {
        out.push(v);
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
                if mask[q] && seen.insert(q) {
                    stack.push(q);
                }
            }
        }
    }
    out.sort_unstable();
    out
}

/// Measures `finding` on the region grown from `seed` and fills its measurements and Lung-RADS
/// category. `None` when the seed is empty.
pub fn measure_finding(
    hu: ArrayView3<'_, f32>,
    geometry: &Geometry,
    seed: &[[usize; 3]],
    finding: Finding,
    options: &MeasureOptions,
) -> Option<MeasuredFinding> {
    measure_finding_within(hu, geometry, seed, finding, options, None)
}

/// [`measure_finding`] with growth beyond the seed kept inside `lung` ([`measure::refine_within`]).
pub fn measure_finding_within(
    hu: ArrayView3<'_, f32>,
    geometry: &Geometry,
    seed: &[[usize; 3]],
    finding: Finding,
    options: &MeasureOptions,
    lung: Option<&LungMask>,
) -> Option<MeasuredFinding> {
    let (region, m) =
        measure::refine_and_measure_within(hu, geometry.spacing_xyz, seed, options, lung)?;
    Some(MeasuredFinding {
        finding: with_measurements(finding, m),
        region,
    })
}

fn with_measurements(mut finding: Finding, m: Measurements) -> Finding {
    finding.lung_rads = Some(lungrads::baseline(
        m.nodule_type,
        m.mean_diameter_mm,
        m.solid_mean_diameter_mm,
    ));
    finding.measurements = Some(m);
    finding
}

/// Every finding measured on the region grown from its pre-erosion component (`mask` is the
/// thresholded segmentation), nothing dropped: the [`super::PipelineOptions::exact`] path.
pub fn measure_all(
    hu: ArrayView3<'_, f32>,
    geometry: &Geometry,
    mask: ArrayView3<'_, bool>,
    lung: &LungMask,
    findings: Vec<Finding>,
    options: &MeasureOptions,
) -> Vec<MeasuredFinding> {
    findings
        .into_iter()
        .map(|f| {
            let seed = seed_component(mask, geometry.spacing_xyz, f.center_irc);
            match measure_finding_within(hu, geometry, &seed, f.clone(), options, Some(lung)) {
                Some(m) => m,
                None => MeasuredFinding {
                    finding: f,
                    region: Vec::new(),
                },
            }
        })
        .collect()
}

/// Union-find root with path halving.
fn root(parent: &mut [usize], mut k: usize) -> usize {
    while parent[k] != k {
        parent[k] = parent[parent[k]];
        k = parent[k];
    }
    k
}

/// Whether two sorted regions share a voxel or a face.
fn overlap_or_touch(a: &[[usize; 3]], b: &[[usize; 3]]) -> bool {
    if a.is_empty() || b.is_empty() {
        return false;
    }
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let has = |v: [usize; 3]| large.binary_search(&v).is_ok();
    small.iter().any(|&v| {
        if has(v) {
            return true;
        }
        (0..3).any(|ax| {
            let mut up = v;
            up[ax] += 1;
            let down = (v[ax] > 0).then(|| {
                let mut d = v;
                d[ax] -= 1;
                d
            });
            has(up) || down.is_some_and(has)
        })
    })
}

/// The three rules of the module docs on the classifier's nodules (`findings`, candidate order);
/// returns the reported findings (measured) and the suppressed ones.
pub fn reduce(
    hu: ArrayView3<'_, f32>,
    geometry: &Geometry,
    mask: ArrayView3<'_, bool>,
    lung: &LungMask,
    findings: Vec<Finding>,
    options: &ReduceOptions,
) -> (Vec<MeasuredFinding>, Vec<Suppressed>) {
    let spacing = geometry.spacing_xyz;
    let n = findings.len();
    let seeds: Vec<Vec<[usize; 3]>> = findings
        .iter()
        .map(|f| seed_component(mask, spacing, f.center_irc))
        .collect();
    let regions: Vec<Vec<[usize; 3]>> = seeds
        .iter()
        .map(|s| measure::refine_within(hu, spacing, s, &options.measure, Some(lung)))
        .collect();

    // 1. Merge: same pre-erosion component (shared seed voxel) or touching regions.
    let mut parent: Vec<usize> = (0..n).collect();
    for a in 0..n {
        for b in a + 1..n {
            if overlap_or_touch(&seeds[a], &seeds[b]) || overlap_or_touch(&regions[a], &regions[b])
            {
                let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
                if ra != rb {
                    parent[rb.max(ra)] = ra.min(rb);
                }
            }
        }
    }
    let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for k in 0..n {
        let r = root(&mut parent, k);
        groups.entry(r).or_default().push(k);
    }

    let mut kept = Vec::new();
    let mut suppressed = Vec::new();
    for members in groups.values() {
        // The representative: the highest p_nodule (first on ties).
        let lead = members
            .iter()
            .copied()
            .max_by(|&a, &b| {
                findings[a]
                    .p_nodule
                    .total_cmp(&findings[b].p_nodule)
                    .then(b.cmp(&a))
            })
            .unwrap_or(members[0]);
        let mut finding = findings[lead].clone();
        let (region, m) = if members.len() == 1 {
            let region = regions[lead].clone();
            let m = measure::measure(hu, spacing, &region);
            (region, m)
        } else {
            let mut seed: Vec<[usize; 3]> = members
                .iter()
                .flat_map(|&k| seeds[k].iter().copied())
                .collect();
            seed.sort_unstable();
            seed.dedup();
            let region = measure::refine_within(hu, spacing, &seed, &options.measure, Some(lung));
            let m = measure::measure(hu, spacing, &region);
            finding.p_nodule = members
                .iter()
                .map(|&k| findings[k].p_nodule)
                .fold(f64::MIN, f64::max);
            finding.p_malignant = members
                .iter()
                .map(|&k| findings[k].p_malignant)
                .fold(f64::MIN, f64::max);
            finding.voxels = members.iter().map(|&k| findings[k].voxels).sum();
            let segmented: f64 = members
                .iter()
                .map(|&k| std::f64::consts::PI / 6.0 * findings[k].diameter_mm.powi(3))
                .sum();
            finding.diameter_mm = (6.0 * segmented / std::f64::consts::PI).cbrt();
            if !region.is_empty() {
                let mut sum = [0.0f64; 3];
                for v in &region {
                    for a in 0..3 {
                        sum[a] += v[a] as f64;
                    }
                }
                let centroid = sum.map(|s| s / region.len() as f64);
                finding.center_irc = centroid;
                finding.center_xyz = geometry.irc_to_xyz(centroid);
            }
            finding.merged_candidates = members
                .iter()
                .filter(|&&k| k != lead)
                .map(|&k| findings[k].candidate)
                .collect();
            for &k in members.iter().filter(|&&k| k != lead) {
                suppressed.push(Suppressed {
                    candidate: findings[k].candidate,
                    center_xyz: findings[k].center_xyz,
                    p_nodule: findings[k].p_nodule,
                    reason: SuppressReason::Merged,
                    into: Some(findings[lead].candidate),
                    mean_diameter_mm: None,
                });
            }
            (region, m)
        };
        if let Some(m) = m {
            finding = with_measurements(finding, m);
        }
        let mean = finding.measurements.as_ref().map(|m| m.mean_diameter_mm);
        // 2. In or touching the lung.
        let touches = lung.touches(region.iter().copied(), options.lung_margin_mm)
            || lung.contains_point(finding.center_irc);
        let reason = if !touches {
            Some(SuppressReason::OutsideLung)
        } else if mean.unwrap_or(0.0) < options.min_mean_diameter_mm {
            // 3. Size floor.
            Some(SuppressReason::BelowSizeFloor)
        } else {
            None
        };
        match reason {
            Some(reason) => suppressed.push(Suppressed {
                candidate: finding.candidate,
                center_xyz: finding.center_xyz,
                p_nodule: finding.p_nodule,
                reason,
                into: None,
                mean_diameter_mm: mean,
            }),
            None => kept.push(MeasuredFinding { finding, region }),
        }
    }
    kept.sort_by_key(|m| m.finding.candidate);
    suppressed.sort_by_key(|s| s.candidate);
    (kept, suppressed)
}
