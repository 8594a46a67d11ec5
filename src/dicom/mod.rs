//! DICOM input: files → CT instances → series → [`Volume`].
//!
//! [`instance`] parses one object (format only), [`series`] applies the input rules and geometry
//! (compute only), and this module walks folders and picks the series, so the daemon can feed
//! instances from its store through the same [`series::assemble`].

pub mod codes;
pub mod instance;
pub mod keyimage;
pub mod series;
pub mod sr;

pub use instance::{CtHeader, CtInstance, InstanceError, ReadOutcome};
pub use series::{assemble, Refusal, SeriesRules};

use crate::volume::Volume;
use dicom_core::dictionary::UidDictionary;
use dicom_dictionary_std::StandardSopClassDictionary;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why a folder did not yield a volume.
#[derive(Debug, thiserror::Error)]
pub enum SeriesError {
    #[error("cannot read {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("no CT image series in {dir} ({summary})")]
    NoCtSeries { dir: PathBuf, summary: String },
    #[error("{} CT series in {dir}: {}; choose one with --series UID", .series.len(), list(.series))]
    Ambiguous {
        dir: PathBuf,
        series: Vec<SeriesSummary>,
    },
    #[error("series {uid} is not in {dir} (found: {})", list(.series))]
    NotFound {
        dir: PathBuf,
        uid: String,
        series: Vec<SeriesSummary>,
    },
    #[error("series {uid} refused: {refusal}")]
    Refused { uid: String, refusal: Refusal },
}

fn list(series: &[SeriesSummary]) -> String {
    series
        .iter()
        .map(|s| format!("{} ({} slices)", s.series_uid, s.instances))
        .collect::<Vec<_>>()
        .join(", ")
}

impl SeriesError {
    /// The refusal behind this error, if the series was found but refused by a rule.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            SeriesError::Refused { refusal, .. } => Some(refusal),
            _ => None,
        }
    }
}

/// One CT series found in a folder.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesSummary {
    pub series_uid: String,
    pub description: Option<String>,
    pub instances: usize,
}

/// Everything found under a folder, grouped by series.
#[derive(Debug, Default)]
pub struct FolderScan {
    /// CT instances by SeriesInstanceUID (with decoded pixels).
    pub series: BTreeMap<String, Vec<CtInstance>>,
    /// Per series, the first problem that makes it unusable (no pixel data, undecodable pixels).
    pub broken: BTreeMap<String, Refusal>,
    /// Instances that are DICOM but not CT images, counted by "SOP class (modality)".
    pub other: BTreeMap<String, usize>,
    /// Files that are not readable DICOM (reader XML, notes…).
    pub not_dicom: usize,
}

impl FolderScan {
    /// The CT series found, sorted by UID.
    pub fn summaries(&self) -> Vec<SeriesSummary> {
        self.series
            .iter()
            .map(|(uid, instances)| SeriesSummary {
                series_uid: uid.clone(),
                description: instances
                    .first()
                    .and_then(|i| i.header.series_description.clone()),
                instances: instances.len(),
            })
            .chain(
                self.broken
                    .keys()
                    .filter(|uid| !self.series.contains_key(*uid))
                    .map(|uid| SeriesSummary {
                        series_uid: uid.clone(),
                        description: None,
                        instances: 0,
                    }),
            )
            .collect()
    }

    fn describe_other(&self) -> String {
        let mut parts = vec![];
        for (kind, count) in &self.other {
            parts.push(format!("{count} {kind}"));
        }
        if self.not_dicom > 0 {
            parts.push(format!("{} non-DICOM files", self.not_dicom));
        }
        if parts.is_empty() {
            "the folder holds no files".to_string()
        } else {
            parts.join(", ")
        }
    }
}

/// All regular files under `dir`, recursively, in name order.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>, SeriesError> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        let entries = std::fs::read_dir(&folder).map_err(|error| SeriesError::Io {
            path: folder.clone(),
            error,
        })?;
        for entry in entries {
            let entry = entry.map_err(|error| SeriesError::Io {
                path: folder.clone(),
                error,
            })?;
            let kind = entry.file_type().map_err(|error| SeriesError::Io {
                path: entry.path(),
                error,
            })?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Reads every file under `dir` (recursively, in parallel) and groups the CT images by series.
pub fn scan_folder(dir: &Path) -> Result<FolderScan, SeriesError> {
    if !dir.is_dir() {
        return Err(SeriesError::Io {
            path: dir.to_path_buf(),
            error: std::io::Error::new(std::io::ErrorKind::NotFound, "not a folder"),
        });
    }
    let files = files_under(dir)?;
    let outcomes: Vec<_> = files
        .par_iter()
        .map(|path| (path, instance::read_file(path)))
        .collect();
    let mut scan = FolderScan::default();
    for (path, outcome) in outcomes {
        match outcome {
            Ok(ReadOutcome::Ct(instance)) => scan
                .series
                .entry(instance.header.series_uid.clone())
                .or_default()
                .push(*instance),
            Ok(ReadOutcome::CtWithoutPixels(header)) => {
                scan.broken
                    .entry(header.series_uid.clone())
                    .or_insert(Refusal::NoPixelData {
                        sop_instance_uid: header.sop_instance_uid.clone(),
                    });
            }
            Ok(ReadOutcome::CtUndecodable { header, reason }) => {
                scan.broken
                    .entry(header.series_uid.clone())
                    .or_insert(Refusal::UndecodablePixels { reason });
            }
            Ok(ReadOutcome::OtherSopClass {
                sop_class_uid,
                modality,
            }) => {
                let name = StandardSopClassDictionary
                    .by_uid(&sop_class_uid)
                    .map_or(sop_class_uid.as_str(), |e| e.name);
                *scan
                    .other
                    .entry(format!("{name} ({modality})"))
                    .or_default() += 1;
            }
            Err(err) => {
                tracing::debug!(path = %path.display(), %err, "skipping file");
                scan.not_dicom += 1;
            }
        }
    }
    Ok(scan)
}

/// Loads one CT series from a folder: the only one there, or the one named by `series_uid`.
pub fn load_series(dir: &Path, series_uid: Option<&str>) -> Result<Volume, SeriesError> {
    load_series_with(dir, series_uid, &SeriesRules::default())
}

/// [`load_series`] with explicit input rules.
pub fn load_series_with(
    dir: &Path,
    series_uid: Option<&str>,
    rules: &SeriesRules,
) -> Result<Volume, SeriesError> {
    let mut scan = scan_folder(dir)?;
    let summaries = scan.summaries();
    let uid = match series_uid {
        Some(uid) if summaries.iter().any(|s| s.series_uid == uid) => uid.to_string(),
        Some(uid) => {
            if summaries.is_empty() {
                return Err(SeriesError::NoCtSeries {
                    dir: dir.to_path_buf(),
                    summary: scan.describe_other(),
                });
            }
            return Err(SeriesError::NotFound {
                dir: dir.to_path_buf(),
                uid: uid.to_string(),
                series: summaries,
            });
        }
        None => match summaries.len() {
            0 => {
                return Err(SeriesError::NoCtSeries {
                    dir: dir.to_path_buf(),
                    summary: scan.describe_other(),
                })
            }
            1 => summaries[0].series_uid.clone(),
            _ => {
                return Err(SeriesError::Ambiguous {
                    dir: dir.to_path_buf(),
                    series: summaries,
                })
            }
        },
    };
    if let Some(refusal) = scan.broken.remove(&uid) {
        return Err(SeriesError::Refused { uid, refusal });
    }
    let instances = scan.series.remove(&uid).unwrap_or_default();
    drop(scan);
    assemble(instances, rules).map_err(|refusal| SeriesError::Refused { uid, refusal })
}
