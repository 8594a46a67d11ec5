//! DICOM Structured Report output: an [`Analysis`] as a Comprehensive 3D SR following TID 1500
//! "Imaging Measurement Report", and a reader that gets the findings back (tests, evaluation).
//!
//! The content tree ([`build_sr`]; every code is in [`super::codes`]):
//!
//! ```text
//! CONTAINER Imaging Measurement Report (TID 1500, continuity SEPARATE)
//! ├ HAS CONCEPT MOD  CODE Language of Content Item and Descendants = English     (TID 1204)
//! ├ HAS OBS CONTEXT  CODE Observer Type = Device, UIDREF Device Observer UID,
//! │                  TEXT Device Observer Name / Manufacturer / Model Name / Serial  (TID 1002/1004)
//! ├ HAS CONCEPT MOD  CODE Procedure reported = CT of chest
//! ├ CONTAINS CONTAINER Image Library                                              (TID 1600)
//! │   └ CONTAINER Image Library Group (Modality CT, Frame of Reference UID)
//! │       └ IMAGE (one per source instance, in volume order)
//! ├ CONTAINS CONTAINER Imaging Measurements          (only when there are findings)
//! │   └ CONTAINER Measurement Group  (one per finding, TID 1410-style)
//! │       ├ HAS OBS CONTEXT  TEXT Tracking Identifier "nodule N" | "mass N", UIDREF Tracking Unique Identifier
//! │       ├ HAS CONCEPT MOD  CODE Finding = Nodule | Mass, CODE Finding Site = Lung
//! │       ├ HAS CONCEPT MOD  TEXT Algorithm Name                                 (TID 4019)
//! │       │   └ TEXT Algorithm Version, TEXT Algorithm Parameters (model files and SHA-256)
//! │       ├ CONTAINS SCOORD Image Region (CIRCLE on the nearest slice) └ SELECTED FROM IMAGE
//! │       ├ CONTAINS SCOORD3D Center (POINT, source Frame of Reference)
//! │       ├ CONTAINS NUM Diameter (mm), Volume (mm3), Certainty of Finding (1; nodules only), Probability of cancer (1)
//! │       ├ CONTAINS CODE Impression = Malignant | Benign (a mass is always Malignant)
//! │       ├ CONTAINS NUM Long Axis, Short Axis (mm); NUM Diameter (mm) └ Derivation = Mean;
//! │       │          NUM Attenuation Coefficient (HU) └ Derivation = Mean | Maximum  (when measured)
//! │       └ CONTAINS TEXT Nodule attenuation type, TEXT Lung-RADS v2022 category    (99NODULED)
//! └ CONTAINS CONTAINER Qualitative Evaluations
//!     ├ CODE Malignant neoplastic disease = Yes | No   (the report's answer; Yes with any mass)
//!     ├ TEXT Lung-RADS v2022 category (the exam's, when categorised)
//!     └ TEXT Comment = "caveat <name>: <detail>"   (one per caveat, see `pipeline::caveats`)
//! ```
//!
//! Everything but the UIDs (fresh per run, under [`crate::uid::ROOT`]) and the clock (overridable
//! through [`SrOptions::clock`]) is a function of the inputs. Pixel coordinates of the SCOORD
//! follow PS3.3 C.18.6.1.2: (0,0) is the top-left corner of the top-left pixel, so voxel centre
//! (row r, column c) is (c + 0.5, r + 0.5). The Volume is the measured region's
//! ([`crate::pipeline::measure`]) when the finding is measured, else π/6·d³ of the equivalent
//! diameter, i.e. exactly the segmented voxel count × voxel volume.

use super::codes::{self, Code};
use crate::pipeline::{Analysis, Finding, FindingKind, ModelIdentity};
use crate::uid;
use crate::volume::{Geometry, SeriesInfo};
use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{FileDicomObject, InMemDicomObject};
use std::path::{Path, PathBuf};

/// SOP Class UID of Comprehensive 3D SR Storage.
pub const COMPREHENSIVE_3D_SR_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.88.34";
/// Explicit VR Little Endian.
pub const TRANSFER_SYNTAX: &str = "1.2.840.10008.1.2.1";
/// Mapping Resource UID of the DICOM Content Mapping Resource (DCMR).
pub const DCMR_UID: &str = "1.2.840.10008.8.1.1";
/// Default Series Number of noduled's SR series (high, so it sorts after the scanner's series).
pub const DEFAULT_SERIES_NUMBER: u32 = 9001;

/// What can stop building, writing or reading a report.
#[derive(Debug, thiserror::Error)]
pub enum SrError {
    #[error("the analysis is of series {analysis}, but the source series is {series}")]
    SeriesMismatch { analysis: String, series: String },
    #[error("the source series lists no instances: an SR must reference its source images")]
    NoSourceInstances,
    #[error("{what} is not a valid DICOM UID: {uid:?}")]
    InvalidUid { what: String, uid: String },
    #[error(
        "the source series has no Frame of Reference UID, needed for the findings' 3D centres"
    )]
    MissingFrameOfReference,
    #[error("finding {finding}: {what} is {value}, which cannot be reported")]
    BadValue {
        finding: usize,
        what: &'static str,
        value: f64,
    },
    #[error("invalid clock override {date:?} {time:?} (expected YYYYMMDD and HHMMSS[.ffffff])")]
    BadClock { date: String, time: String },
    #[error("cannot build the DICOM file meta: {0}")]
    Meta(String),
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("not a noduled measurement report: {0}")]
    Malformed(String),
}

/// Who and what is writing the report. [`SrOptions::default`] fills everything for this
/// installation; tests set [`SrOptions::clock`] to make the output reproducible.
#[derive(Debug, Clone, PartialEq)]
pub struct SrOptions {
    /// Device Observer UID (TID 1004), stable per installation: by default derived from the host
    /// name ([`SrOptions::device_uid_for_host`]).
    pub device_observer_uid: String,
    /// Device Observer Name (TID 1004).
    pub device_name: String,
    /// Manufacturer in the equipment modules and the observer context.
    pub manufacturer: String,
    /// Manufacturer's Model Name / Device Observer Model Name.
    pub model_name: String,
    /// Device Serial Number (Enhanced General Equipment, Type 1) / Device Observer Serial Number:
    /// by default the last component of the device UID.
    pub serial_number: String,
    /// Software Versions and Algorithm Version, e.g. `0.1.0`.
    pub software_version: String,
    pub series_number: u32,
    pub instance_number: u32,
    pub series_description: String,
    /// `(YYYYMMDD, HHMMSS)` UTC for Content/Series/Instance Creation Date and Time; `None` = now.
    pub clock: Option<(String, String)>,
    /// `(SeriesInstanceUID, SOPInstanceUID)` of the report; `None` = fresh ones. The daemon derives
    /// them from the source series so a re-run after a crash rewrites the same report, not a second.
    pub uids: Option<(String, String)>,
}

impl Default for SrOptions {
    fn default() -> Self {
        SrOptions::for_device(SrOptions::device_uid_for_host(&host_name()))
    }
}

impl SrOptions {
    /// The defaults with a given Device Observer UID.
    pub fn for_device(device_observer_uid: String) -> SrOptions {
        let serial_number = device_observer_uid
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_string();
        SrOptions {
            device_observer_uid,
            device_name: "noduled".into(),
            manufacturer: "noduled".into(),
            model_name: "noduled".into(),
            serial_number,
            software_version: env!("CARGO_PKG_VERSION").into(),
            series_number: DEFAULT_SERIES_NUMBER,
            instance_number: 1,
            series_description: "noduled lung nodule report".into(),
            clock: None,
            uids: None,
        }
    }

    /// The installation's Device Observer UID: `uid::derived(["device", host])`.
    pub fn device_uid_for_host(host: &str) -> String {
        uid::derived(&["device", host])
    }
}

/// The host name (from `/etc/hostname` or `$HOSTNAME`), or `noduled` when neither is set.
pub fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "noduled".to_string())
}

/// Builds the SR of `analysis`, whose volume came from `volume_series` with `geometry`.
pub fn build_sr(
    analysis: &Analysis,
    volume_series: &SeriesInfo,
    geometry: &Geometry,
    options: &SrOptions,
) -> Result<FileDicomObject<InMemDicomObject>, SrError> {
    check_inputs(analysis, volume_series, options)?;
    let (date, time) = match &options.clock {
        Some((date, time)) => {
            if !valid_da(date) || !valid_tm(time) {
                return Err(SrError::BadClock {
                    date: date.clone(),
                    time: time.clone(),
                });
            }
            (date.clone(), time.clone())
        }
        None => utc_now(),
    };
    let (series_uid, sop_instance_uid) = options
        .uids
        .clone()
        .unwrap_or_else(|| (uid::generate(), uid::generate()));

    let mut obj = InMemDicomObject::new_empty();
    // SOP Common
    put_str(
        &mut obj,
        tags::SPECIFIC_CHARACTER_SET,
        VR::CS,
        character_set(analysis, volume_series, options),
    );
    put_str(&mut obj, tags::INSTANCE_CREATION_DATE, VR::DA, &date);
    put_str(&mut obj, tags::INSTANCE_CREATION_TIME, VR::TM, &time);
    put_str(&mut obj, tags::TIMEZONE_OFFSET_FROM_UTC, VR::SH, "+0000");
    put_str(
        &mut obj,
        tags::SOP_CLASS_UID,
        VR::UI,
        COMPREHENSIVE_3D_SR_STORAGE,
    );
    put_str(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, &sop_instance_uid);
    put_patient_and_study(&mut obj, volume_series);
    // SR Document Series
    put_str(&mut obj, tags::MODALITY, VR::CS, "SR");
    put_str(&mut obj, tags::SERIES_INSTANCE_UID, VR::UI, &series_uid);
    put_str(
        &mut obj,
        tags::SERIES_NUMBER,
        VR::IS,
        &options.series_number.to_string(),
    );
    put_str(&mut obj, tags::SERIES_DATE, VR::DA, &date);
    put_str(&mut obj, tags::SERIES_TIME, VR::TM, &time);
    put_str(
        &mut obj,
        tags::SERIES_DESCRIPTION,
        VR::LO,
        &options.series_description,
    );
    put_seq(
        &mut obj,
        tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
        vec![],
    );
    // General Equipment and Enhanced General Equipment
    put_str(&mut obj, tags::MANUFACTURER, VR::LO, &options.manufacturer);
    put_str(
        &mut obj,
        tags::MANUFACTURER_MODEL_NAME,
        VR::LO,
        &options.model_name,
    );
    put_str(
        &mut obj,
        tags::DEVICE_SERIAL_NUMBER,
        VR::LO,
        &options.serial_number,
    );
    put_multi(
        &mut obj,
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        software_versions(options, analysis),
    );
    // SR Document General
    put_str(
        &mut obj,
        tags::INSTANCE_NUMBER,
        VR::IS,
        &options.instance_number.to_string(),
    );
    put_str(&mut obj, tags::COMPLETION_FLAG, VR::CS, "COMPLETE");
    put_str(&mut obj, tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED");
    put_str(&mut obj, tags::CONTENT_DATE, VR::DA, &date);
    put_str(&mut obj, tags::CONTENT_TIME, VR::TM, &time);
    put_seq(&mut obj, tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, vec![]);
    put_seq(
        &mut obj,
        tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
        vec![evidence(volume_series)],
    );
    // SR Document Content: the root item's attributes live in the top-level data set.
    put_str(&mut obj, tags::VALUE_TYPE, VR::CS, "CONTAINER");
    put_seq(
        &mut obj,
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![code_item(&codes::IMAGING_MEASUREMENT_REPORT)],
    );
    put_str(&mut obj, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    let mut template = InMemDicomObject::new_empty();
    put_str(&mut template, tags::MAPPING_RESOURCE, VR::CS, "DCMR");
    put_str(&mut template, tags::MAPPING_RESOURCE_UID, VR::UI, DCMR_UID);
    put_str(&mut template, tags::TEMPLATE_IDENTIFIER, VR::CS, "1500");
    put_seq(&mut obj, tags::CONTENT_TEMPLATE_SEQUENCE, vec![template]);
    put_seq(
        &mut obj,
        tags::CONTENT_SEQUENCE,
        root_content(analysis, volume_series, geometry, options)?,
    );

    obj.with_meta(
        FileMetaTableBuilder::new()
            .transfer_syntax(TRANSFER_SYNTAX)
            .implementation_class_uid(uid::IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(uid::IMPLEMENTATION_VERSION_NAME),
    )
    .map_err(|e| SrError::Meta(e.to_string()))
}

/// Builds the SR ([`build_sr`]) and writes it to `path` (explicit VR little endian, through a
/// temporary file beside it, so readers never see half a file). Returns its SOP Instance UID.
pub fn write_sr(
    path: &Path,
    analysis: &Analysis,
    volume_series: &SeriesInfo,
    geometry: &Geometry,
    options: &SrOptions,
) -> Result<String, SrError> {
    let object = build_sr(analysis, volume_series, geometry, options)?;
    save(&object, path)?;
    Ok(object.meta().media_storage_sop_instance_uid().to_string())
}

/// Writes an SR object to `path` through `<path>.partial` and a rename.
pub fn save(object: &FileDicomObject<InMemDicomObject>, path: &Path) -> Result<(), SrError> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let failed = |message: String| SrError::Write {
        path: path.to_path_buf(),
        message,
    };
    if let Err(e) = object.write_to_file(&partial) {
        let _ = std::fs::remove_file(&partial);
        return Err(failed(e.to_string()));
    }
    std::fs::rename(&partial, path).map_err(|e| {
        let _ = std::fs::remove_file(&partial);
        failed(e.to_string())
    })
}

fn check_inputs(
    analysis: &Analysis,
    series: &SeriesInfo,
    options: &SrOptions,
) -> Result<(), SrError> {
    if analysis.series_uid != series.series_uid {
        return Err(SrError::SeriesMismatch {
            analysis: analysis.series_uid.clone(),
            series: series.series_uid.clone(),
        });
    }
    if series.instances.is_empty() {
        return Err(SrError::NoSourceInstances);
    }
    let check = |what: &str, value: &str| {
        if uid::is_valid(value) {
            Ok(())
        } else {
            Err(SrError::InvalidUid {
                what: what.to_string(),
                uid: value.to_string(),
            })
        }
    };
    check("Study Instance UID", &series.study_uid)?;
    check("Series Instance UID", &series.series_uid)?;
    check("Device Observer UID", &options.device_observer_uid)?;
    for instance in &series.instances {
        check("SOP Class UID", &instance.sop_class_uid)?;
        check("SOP Instance UID", &instance.sop_instance_uid)?;
    }
    if !analysis.findings.is_empty() {
        match &series.frame_of_reference_uid {
            Some(frame) => check("Frame of Reference UID", frame)?,
            None => return Err(SrError::MissingFrameOfReference),
        }
    }
    for (k, f) in analysis.findings.iter().enumerate() {
        let bad = |what, value| SrError::BadValue {
            finding: k,
            what,
            value,
        };
        for (what, value) in [
            ("centre x", f.center_xyz[0]),
            ("centre y", f.center_xyz[1]),
            ("centre z", f.center_xyz[2]),
            ("centre index", f.center_irc[0]),
            ("centre row", f.center_irc[1]),
            ("centre column", f.center_irc[2]),
        ] {
            if !value.is_finite() {
                return Err(bad(what, value));
            }
        }
        if !(f.diameter_mm.is_finite() && f.diameter_mm >= 0.0) {
            return Err(bad("the diameter (mm)", f.diameter_mm));
        }
        for (what, p) in [("p_nodule", f.p_nodule), ("p_malignant", f.p_malignant)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(bad(what, p));
            }
        }
    }
    Ok(())
}

/// `ISO_IR 100` when every text we write is ASCII (the common case, byte-identical in Latin-1 and
/// readable by every toolkit), else `ISO_IR 192` (UTF-8: the strings are Unicode once decoded from
/// the source, whatever its character set was).
fn character_set(analysis: &Analysis, series: &SeriesInfo, options: &SrOptions) -> &'static str {
    let ps = &series.patient_study;
    let mut texts = vec![
        &ps.patient_name,
        &ps.patient_id,
        &ps.patient_birth_date,
        &ps.patient_sex,
        &ps.study_date,
        &ps.study_time,
        &ps.study_id,
        &ps.accession_number,
        &ps.referring_physician_name,
        &ps.study_description,
        &options.device_name,
        &options.manufacturer,
        &options.model_name,
        &options.serial_number,
        &options.software_version,
        &options.series_description,
        &analysis.engine,
    ];
    texts.extend(analysis.models.iter().map(|m| &m.name));
    if texts.iter().all(|t| t.is_ascii()) {
        "ISO_IR 100"
    } else {
        "ISO_IR 192"
    }
}

fn software_versions(options: &SrOptions, analysis: &Analysis) -> Vec<String> {
    let mut versions = vec![format!("noduled {}", options.software_version)];
    if !analysis.engine.is_empty() {
        versions.push(analysis.engine.clone());
    }
    versions
}

/// Current Requested Procedure Evidence: the study → its series → every source SOP instance.
fn evidence(series: &SeriesInfo) -> InMemDicomObject {
    let sops = series
        .instances
        .iter()
        .map(|i| sop_reference(&i.sop_class_uid, &i.sop_instance_uid))
        .collect();
    let mut series_item = InMemDicomObject::new_empty();
    put_str(
        &mut series_item,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &series.series_uid,
    );
    put_seq(&mut series_item, tags::REFERENCED_SOP_SEQUENCE, sops);
    let mut study = InMemDicomObject::new_empty();
    put_str(
        &mut study,
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        &series.study_uid,
    );
    put_seq(
        &mut study,
        tags::REFERENCED_SERIES_SEQUENCE,
        vec![series_item],
    );
    study
}

fn root_content(
    analysis: &Analysis,
    series: &SeriesInfo,
    geometry: &Geometry,
    options: &SrOptions,
) -> Result<Vec<InMemDicomObject>, SrError> {
    let mut items = vec![
        code_value(
            "HAS CONCEPT MOD",
            &codes::LANGUAGE_OF_CONTENT,
            &codes::ENGLISH,
        ),
        code_value("HAS OBS CONTEXT", &codes::OBSERVER_TYPE, &codes::DEVICE),
        uidref(
            "HAS OBS CONTEXT",
            &codes::DEVICE_OBSERVER_UID,
            &options.device_observer_uid,
        ),
        text(
            "HAS OBS CONTEXT",
            &codes::DEVICE_OBSERVER_NAME,
            &options.device_name,
        ),
        text(
            "HAS OBS CONTEXT",
            &codes::DEVICE_OBSERVER_MANUFACTURER,
            &options.manufacturer,
        ),
        text(
            "HAS OBS CONTEXT",
            &codes::DEVICE_OBSERVER_MODEL_NAME,
            &options.model_name,
        ),
        text(
            "HAS OBS CONTEXT",
            &codes::DEVICE_OBSERVER_SERIAL_NUMBER,
            &options.serial_number,
        ),
        code_value(
            "HAS CONCEPT MOD",
            &codes::PROCEDURE_REPORTED,
            &codes::CT_OF_CHEST,
        ),
        image_library(series),
    ];
    if !analysis.findings.is_empty() {
        let groups = analysis
            .findings
            .iter()
            .enumerate()
            .map(|(k, f)| measurement_group(k, f, analysis, series, geometry, options))
            .collect::<Result<Vec<_>, _>>()?;
        items.push(container("CONTAINS", &codes::IMAGING_MEASUREMENTS, groups));
    }
    let malignant_present = analysis.findings.iter().any(Finding::is_malignant);
    let mut evaluations = vec![code_value(
        "CONTAINS",
        &codes::MALIGNANT_NEOPLASTIC_DISEASE,
        if malignant_present {
            &codes::YES
        } else {
            &codes::NO
        },
    )];
    if let Some(category) = analysis.lung_rads {
        evaluations.push(text(
            "CONTAINS",
            &codes::LUNG_RADS_CATEGORY,
            category.as_str(),
        ));
    }
    evaluations.extend(
        analysis
            .caveats
            .iter()
            .map(|c| text("CONTAINS", &codes::COMMENT, &format!("caveat {c}"))),
    );
    items.push(container(
        "CONTAINS",
        &codes::QUALITATIVE_EVALUATIONS,
        evaluations,
    ));
    Ok(items)
}

fn image_library(series: &SeriesInfo) -> InMemDicomObject {
    let mut group = vec![code_value(
        "HAS ACQ CONTEXT",
        &codes::MODALITY,
        &codes::COMPUTED_TOMOGRAPHY,
    )];
    if let Some(frame) = &series.frame_of_reference_uid {
        group.push(uidref(
            "HAS ACQ CONTEXT",
            &codes::FRAME_OF_REFERENCE_UID,
            frame,
        ));
    }
    group.extend(
        series
            .instances
            .iter()
            .map(|i| image("CONTAINS", &i.sop_class_uid, &i.sop_instance_uid)),
    );
    container(
        "CONTAINS",
        &codes::IMAGE_LIBRARY,
        vec![container("CONTAINS", &codes::IMAGE_LIBRARY_GROUP, group)],
    )
}

fn measurement_group(
    k: usize,
    finding: &Finding,
    analysis: &Analysis,
    series: &SeriesInfo,
    geometry: &Geometry,
    options: &SrOptions,
) -> Result<InMemDicomObject, SrError> {
    let frame = series
        .frame_of_reference_uid
        .as_deref()
        .ok_or(SrError::MissingFrameOfReference)?;
    let last = series.instances.len() - 1;
    let slice = (finding.center_irc[0].round().max(0.0) as usize).min(last);
    let source = &series.instances[slice];
    let region = region_graphic(finding, geometry, k)?;
    let center: Vec<f32> = finding.center_xyz.iter().map(|&v| v as f32).collect();

    let mut algorithm_children = vec![text(
        "HAS CONCEPT MOD",
        &codes::ALGORITHM_VERSION,
        &options.software_version,
    )];
    algorithm_children.extend(
        algorithm_parameters(&analysis.models, &analysis.engine)
            .iter()
            .map(|p| text("HAS CONCEPT MOD", &codes::ALGORITHM_PARAMETERS, p)),
    );
    let mut algorithm = text(
        "HAS CONCEPT MOD",
        &codes::ALGORITHM_NAME,
        "noduled lung nodule pipeline",
    );
    put_seq(&mut algorithm, tags::CONTENT_SEQUENCE, algorithm_children);

    let mut region_item = scoord("CONTAINS", &codes::IMAGE_REGION, region.0, &region.1);
    put_seq(
        &mut region_item,
        tags::CONTENT_SEQUENCE,
        vec![image(
            "SELECTED FROM",
            &source.sop_class_uid,
            &source.sop_instance_uid,
        )],
    );
    let bad = |what, value| SrError::BadValue {
        finding: k,
        what,
        value,
    };
    let volume_mm3 = match &finding.measurements {
        Some(m) => m.volume_mm3,
        None => std::f64::consts::PI / 6.0 * finding.diameter_mm.powi(3),
    };
    let is_mass = finding.kind == FindingKind::Mass;
    let mut children = vec![
        text(
            "HAS OBS CONTEXT",
            &codes::TRACKING_IDENTIFIER,
            &format!("{} {}", finding.kind.as_str(), k + 1),
        ),
        uidref(
            "HAS OBS CONTEXT",
            &codes::TRACKING_UNIQUE_IDENTIFIER,
            &uid::generate(),
        ),
        code_value(
            "HAS CONCEPT MOD",
            &codes::FINDING,
            if is_mass {
                &codes::MASS
            } else {
                &codes::NODULE
            },
        ),
        code_value("HAS CONCEPT MOD", &codes::FINDING_SITE, &codes::LUNG),
        algorithm,
        region_item,
        scoord3d("CONTAINS", &codes::CENTER, "POINT", &center, frame),
        num(
            "CONTAINS",
            &codes::DIAMETER,
            finding.diameter_mm,
            &codes::UNIT_MM,
        )
        .ok_or_else(|| bad("the diameter (mm)", finding.diameter_mm))?,
        num("CONTAINS", &codes::VOLUME, volume_mm3, &codes::UNIT_MM3)
            .ok_or_else(|| bad("the volume (mm3)", volume_mm3))?,
    ];
    // The classifier is not asked about a mass: no certainty from it.
    if !is_mass {
        children.push(
            num(
                "CONTAINS",
                &codes::CERTAINTY_OF_FINDING,
                finding.p_nodule,
                &codes::UNIT_ONE,
            )
            .ok_or_else(|| bad("p_nodule", finding.p_nodule))?,
        );
    }
    children.extend([
        num(
            "CONTAINS",
            &codes::PROBABILITY_OF_CANCER,
            finding.p_malignant,
            &codes::UNIT_ONE,
        )
        .ok_or_else(|| bad("p_malignant", finding.p_malignant))?,
        code_value(
            "CONTAINS",
            &codes::IMPRESSION,
            if finding.is_malignant() {
                &codes::MALIGNANT
            } else {
                &codes::BENIGN
            },
        ),
    ]);
    if let Some(m) = &finding.measurements {
        let derived = |concept: &Code, value: f64, unit: &Code, how: &Code, what| {
            let mut item = num("CONTAINS", concept, value, unit).ok_or_else(|| bad(what, value))?;
            put_seq(
                &mut item,
                tags::CONTENT_SEQUENCE,
                vec![code_value("HAS CONCEPT MOD", &codes::DERIVATION, how)],
            );
            Ok::<_, SrError>(item)
        };
        children.push(
            num(
                "CONTAINS",
                &codes::LONG_AXIS,
                m.long_axis_mm,
                &codes::UNIT_MM,
            )
            .ok_or_else(|| bad("the long axis (mm)", m.long_axis_mm))?,
        );
        children.push(
            num(
                "CONTAINS",
                &codes::SHORT_AXIS,
                m.short_axis_mm,
                &codes::UNIT_MM,
            )
            .ok_or_else(|| bad("the short axis (mm)", m.short_axis_mm))?,
        );
        children.push(derived(
            &codes::DIAMETER,
            m.mean_diameter_mm,
            &codes::UNIT_MM,
            &codes::MEAN,
            "the mean diameter (mm)",
        )?);
        children.push(derived(
            &codes::ATTENUATION_COEFFICIENT,
            m.mean_hu,
            &codes::UNIT_HU,
            &codes::MEAN,
            "the mean HU",
        )?);
        children.push(derived(
            &codes::ATTENUATION_COEFFICIENT,
            m.max_hu,
            &codes::UNIT_HU,
            &codes::MAXIMUM,
            "the maximum HU",
        )?);
        children.push(text(
            "CONTAINS",
            &codes::NODULE_TYPE,
            m.nodule_type.as_str(),
        ));
    }
    if let Some(category) = finding.lung_rads {
        children.push(text(
            "CONTAINS",
            &codes::LUNG_RADS_CATEGORY,
            category.as_str(),
        ));
    }
    Ok(container("CONTAINS", &codes::MEASUREMENT_GROUP, children))
}

/// `<role> <file> sha256=<hex>` for each model (the diameter baseline has no file), then the engine.
fn algorithm_parameters(models: &[ModelIdentity], engine: &str) -> Vec<String> {
    let mut parameters: Vec<String> = models
        .iter()
        .map(|m| match &m.sha256 {
            Some(sha) => format!("{} model {} sha256={sha}", m.role.as_str(), m.name),
            None => format!("{} model {} (no file)", m.role.as_str(), m.name),
        })
        .collect();
    if !engine.is_empty() {
        parameters.push(format!("engine {engine}"));
    }
    parameters
}

/// The finding's outline on its nearest slice: a CIRCLE (centre, point on the circumference) in
/// pixel coordinates, or an ELLIPSE (major then minor axis end points) when pixels are not square.
fn region_graphic(
    finding: &Finding,
    geometry: &Geometry,
    k: usize,
) -> Result<(&'static str, Vec<f32>), SrError> {
    let [sx, sy, _] = geometry.spacing_xyz;
    for (what, s) in [("column spacing", sx), ("row spacing", sy)] {
        if !(s.is_finite() && s > 0.0) {
            return Err(SrError::BadValue {
                finding: k,
                what,
                value: s,
            });
        }
    }
    let x = finding.center_irc[2] + 0.5;
    let y = finding.center_irc[1] + 0.5;
    // At least half a pixel, so a tiny nodule still has a visible, non-degenerate outline.
    let rx = (finding.diameter_mm / 2.0 / sx).max(0.5);
    let ry = (finding.diameter_mm / 2.0 / sy).max(0.5);
    let graphic = if (rx - ry).abs() <= 1e-6 * rx {
        ("CIRCLE", vec![x, y, x + rx, y])
    } else if rx >= ry {
        ("ELLIPSE", vec![x - rx, y, x + rx, y, x, y - ry, x, y + ry])
    } else {
        ("ELLIPSE", vec![x, y - ry, x, y + ry, x - rx, y, x + rx, y])
    };
    Ok((graphic.0, graphic.1.into_iter().map(|v| v as f32).collect()))
}

// ---------------------------------------------------------------------------------------------
// Content item builders
// ---------------------------------------------------------------------------------------------

/// The Patient and General Study modules of a derived object (SR, key image): copied from the
/// source series so the object files into the CT's study. Patient attributes are Type 2 (present
/// even when empty).
pub(super) fn put_patient_and_study(obj: &mut InMemDicomObject, series: &SeriesInfo) {
    let ps = &series.patient_study;
    put_str(obj, tags::PATIENT_NAME, VR::PN, &ps.patient_name);
    put_str(obj, tags::PATIENT_ID, VR::LO, &ps.patient_id);
    put_str(
        obj,
        tags::PATIENT_BIRTH_DATE,
        VR::DA,
        &ps.patient_birth_date,
    );
    put_str(obj, tags::PATIENT_SEX, VR::CS, &ps.patient_sex);
    put_str(obj, tags::STUDY_INSTANCE_UID, VR::UI, &series.study_uid);
    put_str(obj, tags::STUDY_DATE, VR::DA, &ps.study_date);
    put_str(obj, tags::STUDY_TIME, VR::TM, &ps.study_time);
    put_str(
        obj,
        tags::REFERRING_PHYSICIAN_NAME,
        VR::PN,
        &ps.referring_physician_name,
    );
    put_str(obj, tags::STUDY_ID, VR::SH, &ps.study_id);
    put_str(obj, tags::ACCESSION_NUMBER, VR::SH, &ps.accession_number);
    if !ps.study_description.is_empty() {
        put_str(obj, tags::STUDY_DESCRIPTION, VR::LO, &ps.study_description);
    }
}

/// Puts a string attribute; an empty value is written as an empty (Type 2) element.
pub(super) fn put_str(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    let value = if value.is_empty() {
        PrimitiveValue::Empty
    } else {
        PrimitiveValue::from(value.to_string())
    };
    obj.put(DataElement::new(tag, vr, value));
}

fn put_multi(obj: &mut InMemDicomObject, tag: Tag, vr: VR, values: Vec<String>) {
    obj.put(DataElement::new(
        tag,
        vr,
        PrimitiveValue::Strs(values.into_iter().collect()),
    ));
}

fn put_seq(obj: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    obj.put(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)));
}

fn code_item(code: &Code) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_str(&mut item, tags::CODE_VALUE, VR::SH, code.value);
    put_str(
        &mut item,
        tags::CODING_SCHEME_DESIGNATOR,
        VR::SH,
        code.scheme,
    );
    put_str(&mut item, tags::CODE_MEANING, VR::LO, code.meaning);
    item
}

fn sop_reference(class: &str, instance: &str) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_str(&mut item, tags::REFERENCED_SOP_CLASS_UID, VR::UI, class);
    put_str(
        &mut item,
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        instance,
    );
    item
}

fn content_item(relationship: &str, value_type: &str, concept: Option<&Code>) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_str(&mut item, tags::RELATIONSHIP_TYPE, VR::CS, relationship);
    put_str(&mut item, tags::VALUE_TYPE, VR::CS, value_type);
    if let Some(concept) = concept {
        put_seq(
            &mut item,
            tags::CONCEPT_NAME_CODE_SEQUENCE,
            vec![code_item(concept)],
        );
    }
    item
}

fn container(
    relationship: &str,
    concept: &Code,
    children: Vec<InMemDicomObject>,
) -> InMemDicomObject {
    let mut item = content_item(relationship, "CONTAINER", Some(concept));
    put_str(&mut item, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    if !children.is_empty() {
        put_seq(&mut item, tags::CONTENT_SEQUENCE, children);
    }
    item
}

fn text(relationship: &str, concept: &Code, value: &str) -> InMemDicomObject {
    let mut item = content_item(relationship, "TEXT", Some(concept));
    put_str(&mut item, tags::TEXT_VALUE, VR::UT, value);
    item
}

fn code_value(relationship: &str, concept: &Code, value: &Code) -> InMemDicomObject {
    let mut item = content_item(relationship, "CODE", Some(concept));
    put_seq(
        &mut item,
        tags::CONCEPT_CODE_SEQUENCE,
        vec![code_item(value)],
    );
    item
}

fn uidref(relationship: &str, concept: &Code, value: &str) -> InMemDicomObject {
    let mut item = content_item(relationship, "UIDREF", Some(concept));
    put_str(&mut item, tags::UID, VR::UI, value);
    item
}

/// A NUM item; `None` when the value cannot be written as a DS.
fn num(relationship: &str, concept: &Code, value: f64, unit: &Code) -> Option<InMemDicomObject> {
    let mut measured = InMemDicomObject::new_empty();
    put_seq(
        &mut measured,
        tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
        vec![code_item(unit)],
    );
    put_str(&mut measured, tags::NUMERIC_VALUE, VR::DS, &ds(value)?);
    let mut item = content_item(relationship, "NUM", Some(concept));
    put_seq(&mut item, tags::MEASURED_VALUE_SEQUENCE, vec![measured]);
    Some(item)
}

fn image(relationship: &str, class: &str, instance: &str) -> InMemDicomObject {
    let mut item = content_item(relationship, "IMAGE", None);
    put_seq(
        &mut item,
        tags::REFERENCED_SOP_SEQUENCE,
        vec![sop_reference(class, instance)],
    );
    item
}

/// A SCOORD or SCOORD3D content item: graphic type and data (FL) under `concept`.
fn graphic_item(
    relationship: &str,
    value_type: &str,
    concept: &Code,
    graphic_type: &str,
    data: &[f32],
) -> InMemDicomObject {
    let mut item = content_item(relationship, value_type, Some(concept));
    put_str(&mut item, tags::GRAPHIC_TYPE, VR::CS, graphic_type);
    item.put(DataElement::new(
        tags::GRAPHIC_DATA,
        VR::FL,
        PrimitiveValue::F32(data.iter().copied().collect()),
    ));
    item
}

fn scoord(
    relationship: &str,
    concept: &Code,
    graphic_type: &str,
    data: &[f32],
) -> InMemDicomObject {
    graphic_item(relationship, "SCOORD", concept, graphic_type, data)
}

fn scoord3d(
    relationship: &str,
    concept: &Code,
    graphic_type: &str,
    data: &[f32],
    frame: &str,
) -> InMemDicomObject {
    let mut item = graphic_item(relationship, "SCOORD3D", concept, graphic_type, data);
    put_str(
        &mut item,
        tags::REFERENCED_FRAME_OF_REFERENCE_UID,
        VR::UI,
        frame,
    );
    item
}

/// `value` as a Decimal String (at most 16 characters), as precise as fits; `None` if not finite.
pub fn ds(value: f64) -> Option<String> {
    if !value.is_finite() {
        return None;
    }
    for decimals in (0..=8).rev() {
        let mut s = format!("{value:.decimals$}");
        if s.contains('.') {
            s = s.trim_end_matches('0').trim_end_matches('.').to_string();
        }
        if s == "-0" {
            s = "0".to_string();
        }
        if s.len() <= 16 {
            return Some(s);
        }
    }
    let s = format!("{value:.6e}");
    (s.len() <= 16).then_some(s)
}

// ---------------------------------------------------------------------------------------------
// Dates and times
// ---------------------------------------------------------------------------------------------

fn valid_da(date: &str) -> bool {
    date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit())
}

fn valid_tm(time: &str) -> bool {
    let (whole, fraction) = time.split_once('.').unwrap_or((time, ""));
    whole.len() == 6
        && whole.bytes().all(|b| b.is_ascii_digit())
        && fraction.len() <= 6
        && fraction.bytes().all(|b| b.is_ascii_digit())
}

/// The current UTC date and time as DICOM DA and TM (`YYYYMMDD`, `HHMMSS`).
pub(crate) fn utc_now() -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    (
        format!("{y:04}{m:02}{d:02}"),
        format!("{:02}{:02}{:02}", rem / 3600, rem / 60 % 60, rem % 60),
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar (H. Hinnant).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

// ---------------------------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------------------------

/// One finding as read back from a report.
#[derive(Debug, Clone, PartialEq)]
pub struct SrFinding {
    /// The Finding code: Nodule or Mass.
    pub kind: FindingKind,
    /// Tracking Identifier, e.g. `nodule 1`.
    pub tracking_identifier: String,
    pub tracking_uid: String,
    /// SCOORD3D centre (patient mm, LPS).
    pub center_xyz: [f64; 3],
    /// Frame of Reference of [`SrFinding::center_xyz`].
    pub frame_of_reference_uid: String,
    /// SOP Instance UID of the slice the 2D region is drawn on.
    pub image_sop_instance_uid: String,
    /// Centre of the 2D region in SCOORD pixel coordinates (column, row).
    pub image_center_colrow: [f64; 2],
    pub diameter_mm: f64,
    pub volume_mm3: f64,
    /// Certainty of Finding; NaN for a mass (the classifier is not asked about masses).
    pub p_nodule: f64,
    pub p_malignant: f64,
    /// The Impression: Malignant (true) or Benign (false).
    pub malignant: bool,
    /// Long and short axial axes (mm), when measured.
    pub long_axis_mm: Option<f64>,
    pub short_axis_mm: Option<f64>,
    /// Lung-RADS mean diameter (mm): the Diameter with Derivation = Mean.
    pub mean_diameter_mm: Option<f64>,
    /// Mean and maximum HU.
    pub mean_hu: Option<f64>,
    pub max_hu: Option<f64>,
    /// Nodule type text (`solid`, `part-solid`, `ground-glass`, `calcified`).
    pub nodule_type: Option<String>,
    /// Lung-RADS v2022 baseline category text (`2`, `4A`, ...).
    pub lung_rads: Option<String>,
}

type Item = InMemDicomObject;

fn children(item: &Item) -> &[Item] {
    item.get(tags::CONTENT_SEQUENCE)
        .and_then(|e| e.items())
        .unwrap_or(&[])
}

fn first_code(item: &Item, tag: Tag) -> Option<(String, String)> {
    let code = item.get(tag)?.items()?.first()?;
    let text = |t| {
        code.get(t)
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim().to_string())
    };
    Some((
        text(tags::CODE_VALUE)?,
        text(tags::CODING_SCHEME_DESIGNATOR)?,
    ))
}

fn concept_is(item: &Item, code: &Code) -> bool {
    first_code(item, tags::CONCEPT_NAME_CODE_SEQUENCE).is_some_and(|(v, s)| code.matches(&v, &s))
}

fn find_child<'a>(item: &'a Item, concept: &Code) -> Option<&'a Item> {
    children(item).iter().find(|c| concept_is(c, concept))
}

fn string_of(item: &Item, tag: Tag) -> Option<String> {
    item.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
}

fn numeric(item: &Item) -> Option<f64> {
    item.get(tags::MEASURED_VALUE_SEQUENCE)?
        .items()?
        .first()?
        .get(tags::NUMERIC_VALUE)?
        .to_float64()
        .ok()
}

fn graphic(item: &Item) -> Option<Vec<f64>> {
    item.get(tags::GRAPHIC_DATA)?.to_multi_float64().ok()
}

fn check_root(obj: &Item) -> Result<(), SrError> {
    if concept_is(obj, &codes::IMAGING_MEASUREMENT_REPORT) {
        Ok(())
    } else {
        Err(SrError::Malformed(
            "the root is not an Imaging Measurement Report".into(),
        ))
    }
}

/// The findings of a report written by [`build_sr`], in report order.
pub fn read_findings(obj: &InMemDicomObject) -> Result<Vec<SrFinding>, SrError> {
    check_root(obj)?;
    let Some(measurements) = find_child(obj, &codes::IMAGING_MEASUREMENTS) else {
        return Ok(Vec::new());
    };
    children(measurements)
        .iter()
        .filter(|g| concept_is(g, &codes::MEASUREMENT_GROUP))
        .enumerate()
        .map(|(k, group)| read_group(k, group))
        .collect()
}

fn read_group(k: usize, group: &Item) -> Result<SrFinding, SrError> {
    let missing = |what: &str| SrError::Malformed(format!("measurement group {k}: no {what}"));
    let child = |code: &Code| find_child(group, code).ok_or_else(|| missing(code.meaning));
    let number =
        |code: &Code| child(code).and_then(|c| numeric(c).ok_or_else(|| missing(code.meaning)));
    let center_item = child(&codes::CENTER)?;
    let center = graphic(center_item)
        .filter(|g| g.len() == 3)
        .ok_or_else(|| missing("3D centre point"))?;
    let region = child(&codes::IMAGE_REGION)?;
    let points = graphic(region)
        .filter(|g| g.len() >= 4)
        .ok_or_else(|| missing("image region data"))?;
    let image_center = match string_of(region, tags::GRAPHIC_TYPE).as_deref() {
        Some("ELLIPSE") if points.len() >= 8 => {
            [(points[0] + points[2]) / 2.0, (points[1] + points[3]) / 2.0]
        }
        _ => [points[0], points[1]],
    };
    let image_uid = children(region)
        .iter()
        .find_map(|c| {
            c.get(tags::REFERENCED_SOP_SEQUENCE)?
                .items()?
                .first()
                .cloned()
        })
        .and_then(|r| string_of(&r, tags::REFERENCED_SOP_INSTANCE_UID))
        .ok_or_else(|| missing("selected-from image"))?;
    let impression = child(&codes::IMPRESSION)?;
    let malignant = match first_code(impression, tags::CONCEPT_CODE_SEQUENCE) {
        Some((v, s)) if codes::MALIGNANT.matches(&v, &s) => true,
        Some((v, s)) if codes::BENIGN.matches(&v, &s) => false,
        _ => return Err(missing("Malignant/Benign impression")),
    };
    let kind = match child(&codes::FINDING)
        .ok()
        .and_then(|c| first_code(c, tags::CONCEPT_CODE_SEQUENCE))
    {
        Some((v, s)) if codes::MASS.matches(&v, &s) => FindingKind::Mass,
        _ => FindingKind::Nodule,
    };
    let p_nodule = match kind {
        FindingKind::Mass => number(&codes::CERTAINTY_OF_FINDING).unwrap_or(f64::NAN),
        FindingKind::Nodule => number(&codes::CERTAINTY_OF_FINDING)?,
    };
    Ok(SrFinding {
        kind,
        tracking_identifier: child(&codes::TRACKING_IDENTIFIER)
            .ok()
            .and_then(|c| string_of(c, tags::TEXT_VALUE))
            .unwrap_or_default(),
        tracking_uid: child(&codes::TRACKING_UNIQUE_IDENTIFIER)
            .ok()
            .and_then(|c| string_of(c, tags::UID))
            .unwrap_or_default(),
        center_xyz: [center[0], center[1], center[2]],
        frame_of_reference_uid: string_of(center_item, tags::REFERENCED_FRAME_OF_REFERENCE_UID)
            .unwrap_or_default(),
        image_sop_instance_uid: image_uid,
        image_center_colrow: image_center,
        diameter_mm: number(&codes::DIAMETER)?,
        volume_mm3: number(&codes::VOLUME)?,
        p_nodule,
        p_malignant: number(&codes::PROBABILITY_OF_CANCER)?,
        malignant,
        long_axis_mm: find_child(group, &codes::LONG_AXIS).and_then(numeric),
        short_axis_mm: find_child(group, &codes::SHORT_AXIS).and_then(numeric),
        mean_diameter_mm: derived_number(group, &codes::DIAMETER, &codes::MEAN),
        mean_hu: derived_number(group, &codes::ATTENUATION_COEFFICIENT, &codes::MEAN),
        max_hu: derived_number(group, &codes::ATTENUATION_COEFFICIENT, &codes::MAXIMUM),
        nodule_type: find_child(group, &codes::NODULE_TYPE)
            .and_then(|c| string_of(c, tags::TEXT_VALUE)),
        lung_rads: find_child(group, &codes::LUNG_RADS_CATEGORY)
            .and_then(|c| string_of(c, tags::TEXT_VALUE)),
    })
}

/// The value of the NUM child `concept` whose Derivation modifier is `derivation`.
fn derived_number(group: &Item, concept: &Code, derivation: &Code) -> Option<f64> {
    children(group)
        .iter()
        .filter(|c| concept_is(c, concept))
        .find(|c| {
            find_child(c, &codes::DERIVATION)
                .and_then(|d| first_code(d, tags::CONCEPT_CODE_SEQUENCE))
                .is_some_and(|(v, s)| derivation.matches(&v, &s))
        })
        .and_then(numeric)
}

/// The exam's Lung-RADS category text, when the report carries it.
pub fn read_lung_rads(obj: &InMemDicomObject) -> Option<String> {
    check_root(obj).ok()?;
    let evaluations = find_child(obj, &codes::QUALITATIVE_EVALUATIONS)?;
    string_of(
        find_child(evaluations, &codes::LUNG_RADS_CATEGORY)?,
        tags::TEXT_VALUE,
    )
}

/// The caveats a report carries (`<name>: <detail>`, from the Qualitative Evaluations' `caveat`
/// comments), in report order.
pub fn read_caveats(obj: &InMemDicomObject) -> Vec<String> {
    if check_root(obj).is_err() {
        return Vec::new();
    }
    let Some(evaluations) = find_child(obj, &codes::QUALITATIVE_EVALUATIONS) else {
        return Vec::new();
    };
    children(evaluations)
        .iter()
        .filter(|c| concept_is(c, &codes::COMMENT))
        .filter_map(|c| string_of(c, tags::TEXT_VALUE))
        .filter_map(|t| t.strip_prefix("caveat ").map(str::to_string))
        .collect()
}

/// The report's answer to "malignant nodules present": `Some(true)` for Yes, `Some(false)` for No,
/// `None` when the object does not carry it.
pub fn read_answer(obj: &InMemDicomObject) -> Option<bool> {
    check_root(obj).ok()?;
    let evaluations = find_child(obj, &codes::QUALITATIVE_EVALUATIONS)?;
    let item = find_child(evaluations, &codes::MALIGNANT_NEOPLASTIC_DISEASE)?;
    match first_code(item, tags::CONCEPT_CODE_SEQUENCE)? {
        (v, s) if codes::YES.matches(&v, &s) => Some(true),
        (v, s) if codes::NO.matches(&v, &s) => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_strings_fit_and_round_trip() {
        for v in [
            0.0,
            -0.0,
            1.0,
            0.123456789,
            12.3456789,
            523598.7755982988,
            -228.800003,
            1e-9,
            123456789012.5,
        ] {
            let s = ds(v).unwrap();
            assert!(s.len() <= 16, "{s}");
            let back: f64 = s.parse().unwrap();
            assert!(
                (back - v).abs() <= 1e-8_f64.max(v.abs() * 1e-9) + 5e-9,
                "{v} → {s}"
            );
        }
        assert_eq!(ds(f64::NAN), None);
        assert_eq!(ds(f64::INFINITY), None);
        assert_eq!(ds(-0.0).unwrap(), "0");
        assert_eq!(ds(2.5).unwrap(), "2.5");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        let (date, time) = utc_now();
        assert!(valid_da(&date) && valid_tm(&time), "{date} {time}");
    }

    #[test]
    fn clock_validation() {
        assert!(valid_tm("120000") && valid_tm("120000.123456"));
        assert!(!valid_tm("1200") && !valid_tm("120000.1234567") && !valid_tm("12a000"));
        assert!(valid_da("20240131") && !valid_da("2024-01-31"));
    }
}
