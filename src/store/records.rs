//! The records the index keeps: instances (with their query keys), series and analysis jobs.
//!
//! Records are JSON in sled: readable with any sled dump, and new fields get serde defaults so an
//! index written by an older noduled still opens.

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::mem::InMemElement;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The attributes C-FIND can match and return, at every level (patient, study, series, image).
pub const QUERY_TAGS: &[Tag] = &[
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::STUDY_INSTANCE_UID,
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::ACCESSION_NUMBER,
    tags::STUDY_ID,
    tags::STUDY_DESCRIPTION,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::SERIES_INSTANCE_UID,
    tags::MODALITY,
    tags::SERIES_NUMBER,
    tags::SERIES_DESCRIPTION,
    tags::SERIES_DATE,
    tags::SOP_INSTANCE_UID,
    tags::SOP_CLASS_UID,
    tags::INSTANCE_NUMBER,
    tags::CONTENT_DATE,
];

/// Query-key values of one instance, by tag (`(group << 16) | element`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryKeys(pub BTreeMap<u32, String>);

impl QueryKeys {
    /// Reads the query attributes from a data set (absent ones are left out).
    pub fn from_object<D>(obj: &dicom_object::InMemDicomObject<D>) -> QueryKeys
    where
        D: dicom_core::DataDictionary + Clone,
    {
        let mut keys = BTreeMap::new();
        for tag in QUERY_TAGS {
            if let Ok(element) = obj.element(*tag) {
                keys.insert(tag_key(*tag), element_text(element));
            }
        }
        QueryKeys(keys)
    }

    /// The value of one attribute ("" when absent).
    pub fn get(&self, tag: Tag) -> &str {
        self.0.get(&tag_key(tag)).map(String::as_str).unwrap_or("")
    }

    pub fn set(&mut self, tag: Tag, value: impl Into<String>) {
        self.0.insert(tag_key(tag), value.into());
    }

    pub fn series_uid(&self) -> &str {
        self.get(tags::SERIES_INSTANCE_UID)
    }

    pub fn study_uid(&self) -> &str {
        self.get(tags::STUDY_INSTANCE_UID)
    }
}

/// `(group << 16) | element`.
pub fn tag_key(tag: Tag) -> u32 {
    ((tag.group() as u32) << 16) | tag.element() as u32
}

/// An element's value as trimmed text (multi-values joined by `\`).
fn element_text<D>(element: &InMemElement<D>) -> String {
    element
        .to_str()
        .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_string())
        .unwrap_or_default()
}

/// Whether an instance is a source image or a report noduled (or someone) made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceKind {
    Image,
    Report,
}

impl InstanceKind {
    /// SR and Secondary Capture are reports; everything else is a source image.
    pub fn of_sop_class(sop_class_uid: &str) -> InstanceKind {
        let uid = sop_class_uid.trim_end_matches('\0');
        let secondary_capture =
            uid == "1.2.840.10008.5.1.4.1.1.7" || uid.starts_with("1.2.840.10008.5.1.4.1.1.7.");
        if uid.starts_with("1.2.840.10008.5.1.4.1.1.88.") || secondary_capture {
            InstanceKind::Report
        } else {
            InstanceKind::Image
        }
    }
}

/// One stored instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub transfer_syntax: String,
    /// Path of the Part 10 file, relative to the state folder.
    pub file: String,
    pub bytes: u64,
    pub received_unix: f64,
    pub kind: InstanceKind,
    pub keys: QueryKeys,
}

/// Where a series stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeriesState {
    /// Instances are arriving; complete after the quiet period.
    Receiving,
    /// Complete and waiting for (or in) analysis.
    Queued,
    /// Analysed; `sr_uid` names its report.
    Analysed,
    /// Refused by the input rules or failed in analysis; `reason` says why.
    Refused,
    /// A series of reports (ours or another system's): never analysed.
    Report,
}

impl SeriesState {
    pub fn as_str(self) -> &'static str {
        match self {
            SeriesState::Receiving => "receiving",
            SeriesState::Queued => "queued",
            SeriesState::Analysed => "analysed",
            SeriesState::Refused => "refused",
            SeriesState::Report => "report",
        }
    }
}

/// One series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesRecord {
    pub series_uid: String,
    pub study_uid: String,
    pub modality: String,
    pub instance_count: u64,
    pub last_received_unix: f64,
    pub state: SeriesState,
    /// Bumped whenever new images arrive after completion: the analysis of an older generation
    /// is superseded.
    #[serde(default)]
    pub generation: u64,
    /// Refusal code and reason, for refused series.
    #[serde(default)]
    pub reason: Option<String>,
    /// The SR made from this series.
    #[serde(default)]
    pub sr_uid: Option<String>,
    /// The answer of the latest analysis.
    #[serde(default)]
    pub malignant_present: Option<bool>,
    #[serde(default)]
    pub findings: Option<usize>,
}

impl SeriesRecord {
    pub fn new(keys: &QueryKeys, kind: InstanceKind) -> SeriesRecord {
        SeriesRecord {
            series_uid: keys.series_uid().to_string(),
            study_uid: keys.study_uid().to_string(),
            modality: keys.get(tags::MODALITY).to_string(),
            instance_count: 0,
            last_received_unix: 0.0,
            state: match kind {
                InstanceKind::Image => SeriesState::Receiving,
                InstanceKind::Report => SeriesState::Report,
            },
            generation: 0,
            reason: None,
            sr_uid: None,
            malignant_present: None,
            findings: None,
        }
    }
}

/// Where an analysis job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
        }
    }
}

/// The analysis job of one series (one per series: a newer generation replaces it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub series_uid: String,
    pub generation: u64,
    pub state: JobState,
    pub attempts: u32,
    pub queued_unix: f64,
    #[serde(default)]
    pub finished_unix: Option<f64>,
    #[serde(default)]
    pub error: Option<String>,
}
