//! `noduled eval`: how good a set of models is on annotated data, measured the way the book and
//! LUNA16 measure it, and never on data the models were trained on.
//!
//! [`evaluate`] runs the analysis pipeline on every CT series of a dataset folder (or the `val` and
//! `test` series of a split manifest), matches its candidates to the annotated nodules
//! ([`matching`]) and reports:
//!
//! * the book's end-to-end **confusion matrix** (rows non-nodule, benign, malignant; columns complete
//!   miss, filtered out, predicted benign, predicted malignant);
//! * **false positives per scan** at the pipeline's operating point (nodules, p_nodule > 0.5, that
//!   match no annotated nodule), and the **FROC** curve with its **CPM** as LUNA16 ([`metrics`]);
//! * **ROC/AUC** of the nodule classifier over all candidates (positive: matches a nodule), of the
//!   malignancy model over the annotated nodules a candidate matched (its best-scoring match; its
//!   p_malignant is computed even when the nodule classifier filtered it out), and of the book's
//!   **diameter baseline** (the annotated diameter as score) over the same nodules.
//!
//! Before any series is analysed, the [`leak`] guard checks the models' training series and the
//! split; a leak is an error unless `allow_leak` is set, and then the report is stamped LEAKY.
//! The slow segmentation step is cached per series ([`cache`]) so re-runs with other classifiers
//! are fast. All detections use the same match rule (the book's 0.7 × diameter; LUNA16's own
//! script counts a hit within the radius, 0.5 × diameter).
//!
//! Memory: the dataset's stored pixels are read once (2 bytes a voxel) and each series is turned
//! into a float volume only while it is analysed.

pub mod cache;
pub mod leak;
pub mod matching;
pub mod metrics;
pub mod plots;

use crate::dicom::series::{assemble, SeriesRules};
use crate::dicom::{scan_folder, SeriesError};
use crate::engine::provenance::ProvenanceError;
use crate::pipeline::{ModelIdentity, Pipeline, PipelineError, ProgressFn, StageSeconds};
use cache::SegmentationCache;
use leak::LeakCheck;
use matching::{Confusion, Detection, Matching, TrueNodule};
use metrics::{Froc, MetricError, Roc};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What can stop an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("cannot read {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path} line {line}: {reason}")]
    Csv {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{0}")]
    Leak(String),
    #[error(transparent)]
    Provenance(#[from] ProvenanceError),
    #[error(transparent)]
    Series(#[from] SeriesError),
    #[error("series {uid} refused: {reason}")]
    Refused { uid: String, reason: String },
    #[error("series {uid}: {error}")]
    Pipeline {
        uid: String,
        error: Box<PipelineError>,
    },
    #[error("nothing to evaluate: {0}")]
    Empty(String),
}

/// Annotated nodules by SeriesInstanceUID.
pub type Annotations = BTreeMap<String, Vec<TrueNodule>>;

fn csv_error(path: &Path, line: usize, reason: impl Into<String>) -> EvalError {
    EvalError::Csv {
        path: path.to_path_buf(),
        line,
        reason: reason.into(),
    }
}

/// Reads a LUNA16-style annotations CSV: a header naming `seriesuid`, `coordX`, `coordY`, `coordZ`,
/// `diameter_mm` and optionally a malignancy column (`mal_bool`, `malignant` or `is_malignant`:
/// `1`/`0`, `true`/`false`), in any order. Coordinates are patient mm (DICOM LPS).
pub fn read_annotations(path: &Path) -> Result<Annotations, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|error| EvalError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        return Err(csv_error(path, 1, "empty file (expected a header line)"));
    };
    let names: Vec<String> = header
        .split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let column = |wanted: &[&str]| names.iter().position(|n| wanted.contains(&n.as_str()));
    let required = |name: &str, aliases: &[&str]| {
        column(aliases).ok_or_else(|| {
            csv_error(
                path,
                1,
                format!("no {name} column in the header {header:?} (expected seriesuid,coordX,coordY,coordZ,diameter_mm[,mal_bool])"),
            )
        })
    };
    let uid_col = required("seriesuid", &["seriesuid", "series_uid"])?;
    let x_col = required("coordX", &["coordx"])?;
    let y_col = required("coordY", &["coordy"])?;
    let z_col = required("coordZ", &["coordz"])?;
    let d_col = required("diameter_mm", &["diameter_mm"])?;
    let mal_col = column(&["mal_bool", "malignant", "is_malignant", "ismal_bool"]);

    let mut out = Annotations::new();
    for (index, line) in lines {
        let n = index + 1;
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let field = |col: usize| {
            fields
                .get(col)
                .copied()
                .ok_or_else(|| csv_error(path, n, format!("only {} fields", fields.len())))
        };
        let number = |col: usize| -> Result<f64, EvalError> {
            let raw = field(col)?;
            raw.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| csv_error(path, n, format!("{raw:?} is not a number")))
        };
        let uid = field(uid_col)?;
        if uid.is_empty() {
            return Err(csv_error(path, n, "empty seriesuid"));
        }
        let diameter_mm = number(d_col)?;
        if diameter_mm <= 0.0 {
            return Err(csv_error(
                path,
                n,
                format!("diameter {diameter_mm} mm is not positive"),
            ));
        }
        let malignant = match mal_col {
            None => None,
            Some(col) => Some(match field(col)?.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" => true,
                "0" | "false" | "no" => false,
                other => {
                    return Err(csv_error(
                        path,
                        n,
                        format!("malignancy {other:?} is not 1/0/true/false"),
                    ))
                }
            }),
        };
        out.entry(uid.to_string()).or_default().push(TrueNodule {
            xyz: [number(x_col)?, number(y_col)?, number(z_col)?],
            diameter_mm,
            malignant,
        });
    }
    Ok(out)
}

/// A split manifest: for each SeriesInstanceUID, the splits it is listed in (`train`, `val`,
/// `test`). A series listed in more than one split is kept with all of them: the leak guard
/// needs to see a series that is both trained on and evaluated.
pub type Split = BTreeMap<String, BTreeSet<String>>;

/// The split names a manifest may use.
pub const SPLITS: [&str; 3] = ["train", "val", "test"];

/// Reads a split manifest `series_uid,split` (header optional).
pub fn read_split(path: &Path) -> Result<Split, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|error| EvalError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let mut split = Split::new();
    for (index, line) in text.lines().enumerate() {
        let n = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [uid, which] = fields[..] else {
            return Err(csv_error(path, n, "expected two fields: series_uid,split"));
        };
        if n == 1
            && matches!(
                uid.to_ascii_lowercase().as_str(),
                "series_uid" | "seriesuid"
            )
        {
            continue;
        }
        let which = which.to_ascii_lowercase();
        if !SPLITS.contains(&which.as_str()) {
            return Err(csv_error(
                path,
                n,
                format!("split {which:?} is not train, val or test"),
            ));
        }
        split.entry(uid.to_string()).or_default().insert(which);
    }
    if split.is_empty() {
        return Err(csv_error(path, 1, "the split lists no series"));
    }
    Ok(split)
}

/// How to evaluate.
#[derive(Debug, Clone, Default)]
pub struct EvalOptions {
    /// Evaluate only the `val` and `test` series of this manifest (path for messages, contents).
    pub split: Option<(PathBuf, Split)>,
    /// Run despite a leak, stamping the report LEAKY.
    pub allow_leak: bool,
    /// Where to cache segmentation output (none: no caching).
    pub cache: Option<SegmentationCache>,
    /// Input rules for the series.
    pub rules: SeriesRules,
}

/// One annotated nodule's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NoduleOutcome {
    pub center_xyz: [f64; 3],
    pub diameter_mm: f64,
    pub malignant: Option<bool>,
    /// A [`matching::COLUMNS`] label.
    pub outcome: String,
    /// The best-scoring matching candidate's p_nodule and distance (mm), if any matched.
    pub p_nodule: Option<f64>,
    pub distance_mm: Option<f64>,
    /// Its p_malignant (computed for evaluation even when it was filtered out).
    pub p_malignant: Option<f64>,
}

/// One series' results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesResult {
    pub series_uid: String,
    pub candidates: usize,
    /// Candidates with p_nodule > 0.5.
    pub findings: usize,
    /// Findings that match no annotated nodule.
    pub false_positives: usize,
    pub confusion: Confusion,
    pub nodules: Vec<NoduleOutcome>,
    /// Whether the segmentation came from the cache.
    pub segmentation_cached: bool,
    pub seconds: StageSeconds,
    pub warnings: Vec<String>,
}

/// The FROC values as the JSON report shows them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrocSummary {
    pub fp_rates: Vec<f64>,
    pub sensitivity: Vec<f64>,
    pub cpm: f64,
}

/// Everything an evaluation measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// True when run with `allow_leak` on leaked series: the figures flatter the models.
    pub leaky: bool,
    /// `LEAKY: ...` when `leaky`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stamp: Option<String>,
    pub confusion: Confusion,
    pub confusion_rows: [&'static str; 3],
    pub confusion_columns: [&'static str; 4],
    pub froc: Option<FrocSummary>,
    pub fp_per_scan: f64,
    pub auc_nodule: Option<f64>,
    pub auc_malignancy: Option<f64>,
    pub auc_diameter_baseline: Option<f64>,
    pub scans: usize,
    pub nodules: usize,
    /// Why a figure is missing, and caveats.
    pub notes: Vec<String>,
    pub leak_check: LeakCheck,
    pub series: Vec<SeriesResult>,
    pub models: Vec<ModelIdentity>,
    /// Curves for plots.
    pub curves: Curves,
}

/// The curves behind the figures.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Curves {
    pub froc: Option<Froc>,
    pub roc_nodule: Option<Roc>,
    pub roc_malignancy: Option<Roc>,
    pub roc_diameter_baseline: Option<Roc>,
}

impl Report {
    /// The stamp line for leaky reports.
    pub fn leak_stamp(&self) -> Option<&str> {
        self.stamp.as_deref()
    }
}

/// What [`evaluate`] tells its caller as it goes.
pub trait Progress: Sync {
    /// Series `index` (of `total`) starts; `cached`: its segmentation is cached.
    fn series(&self, index: usize, total: usize, series_uid: &str, cached: bool);
    /// Pipeline progress inside the current series.
    fn stage(&self) -> ProgressFn<'_>;
}

/// Per-series data the aggregate figures need.
struct Scored {
    nodule_best_scores: Vec<Option<f64>>,
    fp_scores: Vec<f64>,
    candidate_scores: Vec<f64>,
    candidate_labels: Vec<bool>,
    /// (p_malignant, annotated diameter, malignant) of matched nodules with a known label.
    malignancy: Vec<(f64, f64, bool)>,
}

/// The series of the dataset to evaluate: all, or those the split marks `val` or `test`.
fn select_series(found: &[String], split: Option<&Split>, notes: &mut Vec<String>) -> Vec<String> {
    let Some(split) = split else {
        return found.to_vec();
    };
    let mut selected = Vec::new();
    let mut skipped_train = 0;
    let mut unlisted = 0;
    for uid in found {
        match split.get(uid) {
            Some(s) if s.contains("val") || s.contains("test") => selected.push(uid.clone()),
            Some(_) => skipped_train += 1,
            None => unlisted += 1,
        }
    }
    if skipped_train > 0 {
        notes.push(format!(
            "{skipped_train} series of the dataset are train series of the split: not evaluated"
        ));
    }
    if unlisted > 0 {
        notes.push(format!(
            "{unlisted} series of the dataset are not in the split: not evaluated"
        ));
    }
    selected
}

/// Runs the evaluation (see the module docs).
pub fn evaluate(
    pipeline: &Pipeline,
    dataset_dir: &Path,
    annotations: &Annotations,
    options: &EvalOptions,
    progress: &dyn Progress,
) -> Result<Report, EvalError> {
    let mut notes = Vec::new();
    let mut scan = scan_folder(dataset_dir)?;
    let found: Vec<String> = scan.summaries().into_iter().map(|s| s.series_uid).collect();
    if found.is_empty() {
        return Err(EvalError::Empty(format!(
            "no CT series under {}",
            dataset_dir.display()
        )));
    }
    let series = select_series(&found, options.split.as_ref().map(|(_, s)| s), &mut notes);
    if series.is_empty() {
        return Err(EvalError::Empty(
            "none of the dataset's series is a val or test series of the split".into(),
        ));
    }

    // The leak guard, before any work.
    let models = pipeline.models();
    let mut provenances = vec![
        (
            models.segmentation.info().name.clone(),
            models.segmentation.info().provenance()?,
        ),
        (
            models.nodule.info().name.clone(),
            models.nodule.info().provenance()?,
        ),
    ];
    if let crate::pipeline::Malignancy::Model(m) = &models.malignancy {
        provenances.push((m.info().name.clone(), m.info().provenance()?));
    }
    // A series listed as both train and val/test in the split is trained on and evaluated.
    let split_train: Option<(String, BTreeMap<String, String>)> =
        options.split.as_ref().map(|(path, split)| {
            (
                path.display().to_string(),
                split
                    .iter()
                    .filter(|(_, s)| s.contains("train"))
                    .map(|(uid, _)| (uid.clone(), "train".to_string()))
                    .collect(),
            )
        });
    let leak_check = leak::check(
        &series,
        &provenances,
        split_train.as_ref().map(|(f, s)| (f.as_str(), s)),
    );
    if leak_check.is_leaky() && !options.allow_leak {
        return Err(EvalError::Leak(leak_check.message()));
    }
    if !leak_check.unverified_models.is_empty() {
        notes.push(format!(
            "the training series of {} (or of the weights they started from) are unknown: the leak guard cannot check them",
            leak_check.unverified_models.join(", ")
        ));
    }
    for uid in annotations.keys() {
        if !found.contains(uid) {
            notes.push(format!(
                "annotated series {uid} is not in the dataset: not evaluated"
            ));
        }
    }
    if annotations
        .values()
        .flatten()
        .any(|n| n.malignant.is_none())
    {
        notes.push(
            "the annotations have no malignancy column: nodules are counted in the benign row"
                .into(),
        );
    }

    let seg_sha = models.segmentation.info().sha256.clone();
    let pipeline_options = pipeline.options();
    let mut results = Vec::new();
    let mut scored = Vec::new();
    for (index, uid) in series.iter().enumerate() {
        if let Some(refusal) = scan.broken.remove(uid) {
            return Err(EvalError::Refused {
                uid: uid.clone(),
                reason: refusal.to_string(),
            });
        }
        let instances = scan.series.remove(uid).unwrap_or_default();
        let started = std::time::Instant::now();
        let volume = assemble(instances, &options.rules).map_err(|r| EvalError::Refused {
            uid: uid.clone(),
            reason: r.to_string(),
        })?;
        let load_s = started.elapsed().as_secs_f64();
        let key = cache::key(&volume, &seg_sha, &pipeline_options);
        let cached = options.cache.as_ref().and_then(|c| c.get(uid, &key));
        progress.series(index, series.len(), uid, cached.is_some());
        let segmentation_cached = cached.is_some();
        let segmented = match cached {
            Some(s) => s,
            None => {
                let s = pipeline
                    .segment_and_group(&volume, progress.stage())
                    .map_err(|error| EvalError::Pipeline {
                        uid: uid.clone(),
                        error: Box::new(error),
                    })?;
                if let Some(c) = &options.cache {
                    if let Err(err) = c.put(uid, &key, &s) {
                        tracing::warn!(%err, "segmentation not cached");
                    }
                }
                s
            }
        };
        let mut analysis = pipeline
            .analyze_segmented(&volume, &segmented, progress.stage())
            .map_err(|error| EvalError::Pipeline {
                uid: uid.clone(),
                error: Box::new(error),
            })?;
        analysis.add_load_seconds(load_s);
        let truth = annotations.get(uid).map_or(&[][..], Vec::as_slice);
        let detections: Vec<Detection> = analysis
            .candidates
            .iter()
            .map(|c| Detection {
                xyz: c.center_xyz,
                p_nodule: c.p_nodule,
                p_malignant: c.p_malignant,
            })
            .collect();
        let matching = Matching::new(truth, &detections);
        let outcomes = matching.nodule_outcomes(&detections);
        let best = matching.best_detection(&detections);
        let mut nodules = Vec::new();
        let mut malignancy = Vec::new();
        for ((n, &outcome), best) in truth.iter().zip(&outcomes).zip(&best) {
            let (mut p_nodule, mut distance_mm, mut p_malignant) = (None, None, None);
            if let Some(k) = *best {
                let c = &analysis.candidates[k];
                p_nodule = Some(c.p_nodule);
                distance_mm = Some(matching::distance(n.xyz, c.center_xyz));
                let p = match c.p_malignant {
                    Some(p) => p,
                    None => models
                        .malignancy
                        .assess(
                            volume.hu.view(),
                            volume.geometry.spacing_irc(),
                            c.center_irc,
                            c.diameter_mm,
                        )
                        .map_err(|error| EvalError::Pipeline {
                            uid: uid.clone(),
                            error: Box::new(error),
                        })?,
                };
                p_malignant = Some(p);
                if let Some(label) = n.malignant {
                    malignancy.push((p, n.diameter_mm, label));
                }
            }
            nodules.push(NoduleOutcome {
                center_xyz: n.xyz,
                diameter_mm: n.diameter_mm,
                malignant: n.malignant,
                outcome: matching::COLUMNS[outcome].to_string(),
                p_nodule,
                distance_mm,
                p_malignant,
            });
        }
        let confusion = matching::confusion(truth, &detections);
        let false_positives = (confusion[0][2] + confusion[0][3]) as usize;
        scored.push(Scored {
            nodule_best_scores: best
                .iter()
                .map(|b| b.map(|k| detections[k].p_nodule))
                .collect(),
            fp_scores: detections
                .iter()
                .zip(&matching.detection_matched)
                .filter(|(_, m)| !**m)
                .map(|(d, _)| d.p_nodule)
                .collect(),
            candidate_scores: detections.iter().map(|d| d.p_nodule).collect(),
            candidate_labels: matching.detection_matched.clone(),
            malignancy,
        });
        results.push(SeriesResult {
            series_uid: uid.clone(),
            candidates: analysis.candidates.len(),
            findings: analysis.findings.len(),
            false_positives,
            confusion,
            nodules,
            segmentation_cached,
            seconds: analysis.seconds,
            warnings: analysis.warnings,
        });
    }
    drop(scan);

    let mut report = aggregate(results, scored, notes, leak_check, models.identities());
    if report.leaky {
        report.stamp = Some(format!(
            "LEAKY: evaluated on series the models were trained on ({}); these figures flatter the models",
            report
                .leak_check
                .leaks
                .iter()
                .map(|l| l.series_uid.as_str())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(report)
}

fn aggregate(
    series: Vec<SeriesResult>,
    scored: Vec<Scored>,
    mut notes: Vec<String>,
    leak_check: LeakCheck,
    models: Vec<ModelIdentity>,
) -> Report {
    let scans = series.len();
    let mut confusion = [[0u64; 4]; 3];
    for s in &series {
        matching::add(&mut confusion, &s.confusion);
    }
    let false_positives: usize = series.iter().map(|s| s.false_positives).sum();
    let nodule_scores: Vec<Option<f64>> = scored
        .iter()
        .flat_map(|s| s.nodule_best_scores.iter().copied())
        .collect();
    let fp_scores: Vec<f64> = scored.iter().flat_map(|s| s.fp_scores.clone()).collect();
    let mut note = |what: &str, e: MetricError| notes.push(format!("no {what}: {e}"));
    let froc = match metrics::froc(&nodule_scores, &fp_scores, scans) {
        Ok(f) => Some(f),
        Err(e) => {
            note("FROC", e);
            None
        }
    };
    let scores: Vec<f64> = scored
        .iter()
        .flat_map(|s| s.candidate_scores.clone())
        .collect();
    let labels: Vec<bool> = scored
        .iter()
        .flat_map(|s| s.candidate_labels.clone())
        .collect();
    let roc_nodule = metrics::roc(&scores, &labels)
        .map_err(|e| note("nodule-classifier AUC (candidates)", e))
        .ok();
    let malignancy: Vec<(f64, f64, bool)> =
        scored.iter().flat_map(|s| s.malignancy.clone()).collect();
    let mal_labels: Vec<bool> = malignancy.iter().map(|m| m.2).collect();
    let p_mal: Vec<f64> = malignancy.iter().map(|m| m.0).collect();
    let diameters: Vec<f64> = malignancy.iter().map(|m| m.1).collect();
    let roc_malignancy = metrics::roc(&p_mal, &mal_labels)
        .map_err(|e| note("malignancy AUC (detected annotated nodules)", e))
        .ok();
    let roc_diameter = metrics::roc(&diameters, &mal_labels)
        .map_err(|e| note("diameter-baseline AUC (same nodules)", e))
        .ok();
    Report {
        leaky: leak_check.is_leaky(),
        stamp: None,
        confusion,
        confusion_rows: matching::ROWS,
        confusion_columns: matching::COLUMNS,
        froc: froc.as_ref().map(|f| FrocSummary {
            fp_rates: f.fp_rates.clone(),
            sensitivity: f.sensitivity.clone(),
            cpm: f.cpm,
        }),
        fp_per_scan: if scans == 0 {
            0.0
        } else {
            false_positives as f64 / scans as f64
        },
        auc_nodule: roc_nodule.as_ref().map(|r| r.auc),
        auc_malignancy: roc_malignancy.as_ref().map(|r| r.auc),
        auc_diameter_baseline: roc_diameter.as_ref().map(|r| r.auc),
        scans,
        nodules: nodule_scores.len(),
        notes,
        leak_check,
        series,
        models,
        curves: Curves {
            froc,
            roc_nodule,
            roc_malignancy,
            roc_diameter_baseline: roc_diameter,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_with_and_without_malignancy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.csv");
        std::fs::write(
            &path,
            "seriesuid,coordX,coordY,coordZ,diameter_mm,mal_bool\n1.2,1,2,3,4.5,True\n1.2,0,0,0,6,0\n1.3,-1,-2,-3.5,10,false\n",
        )
        .unwrap();
        let a = read_annotations(&path).unwrap();
        assert_eq!(a["1.2"].len(), 2);
        assert_eq!(a["1.2"][0].xyz, [1.0, 2.0, 3.0]);
        assert_eq!(a["1.2"][0].malignant, Some(true));
        assert_eq!(a["1.2"][1].malignant, Some(false));
        assert_eq!(a["1.3"][0].diameter_mm, 10.0);
        std::fs::write(
            &path,
            "seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2,1,2,3,4.5\n",
        )
        .unwrap();
        assert_eq!(read_annotations(&path).unwrap()["1.2"][0].malignant, None);
        std::fs::write(
            &path,
            "seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2,1,x,3,4.5\n",
        )
        .unwrap();
        let err = read_annotations(&path).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("\"x\""), "{err}");
        std::fs::write(&path, "uid,x,y,z,d\n").unwrap();
        assert!(read_annotations(&path)
            .unwrap_err()
            .to_string()
            .contains("seriesuid"));
    }

    #[test]
    fn split_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("split.csv");
        std::fs::write(
            &path,
            "series_uid,split\n1.1,train\n1.2,val\n1.3,test\n1.2,train\n",
        )
        .unwrap();
        let s = read_split(&path).unwrap();
        assert_eq!(s["1.1"], BTreeSet::from(["train".to_string()]));
        assert_eq!(s["1.2"].len(), 2);
        let mut notes = vec![];
        let found: Vec<String> = ["1.1", "1.2", "1.3", "1.4"].map(String::from).to_vec();
        assert_eq!(
            select_series(&found, Some(&s), &mut notes),
            vec!["1.2", "1.3"]
        );
        assert_eq!(notes.len(), 2);
        std::fs::write(&path, "1.1,training\n").unwrap();
        assert!(read_split(&path)
            .unwrap_err()
            .to_string()
            .contains("training"));
    }
}
