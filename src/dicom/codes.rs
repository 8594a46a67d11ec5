//! Every coded concept noduled writes into DICOM Structured Reports, in one documented table.
//!
//! A [`Code`] is a DICOM coded entry (Code Value, Coding Scheme Designator, Code Meaning). All
//! codes come from schemes that DICOM PS3.16 uses: `DCM` (the DICOM Controlled Terminology,
//! PS3.16 Annex D), `SCT` (SNOMED CT), `UCUM` (units), `UMLS` and `RFC5646` (language tags).
//! Values and meanings were checked against the PS3.16 code tables as shipped by DCMTK
//! (`dcmsr/include/dcmtk/dcmsr/codes/*.h`, `libcmr/cid*.cc`) and pydicom
//! (`pydicom/sr/_concepts_dict.py`, generated from PS3.16). Where the choice needed judgement,
//! the constant's doc says why.
//!
//! Groups below follow the content tree of the report (TID 1500 "Imaging Measurement Report").

/// One DICOM coded entry: what goes into a Code Sequence item (Basic Code Sequence Macro).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Code {
    /// Code Value (0008,0100).
    pub value: &'static str,
    /// Coding Scheme Designator (0008,0102).
    pub scheme: &'static str,
    /// Code Meaning (0008,0104).
    pub meaning: &'static str,
}

impl Code {
    /// Whether `value` and `scheme` match (the meaning is for people and may vary).
    pub fn matches(&self, value: &str, scheme: &str) -> bool {
        self.value == value.trim() && self.scheme == scheme.trim()
    }
}

const fn code(value: &'static str, scheme: &'static str, meaning: &'static str) -> Code {
    Code {
        value,
        scheme,
        meaning,
    }
}

// ---------------------------------------------------------------------------------------------
// Document root and top-level containers (TID 1500)
// ---------------------------------------------------------------------------------------------

/// Root CONTAINER title of TID 1500 (CID 7021 "Measurement Report Document Titles").
pub const IMAGING_MEASUREMENT_REPORT: Code = code("126000", "DCM", "Imaging Measurement Report");
/// CONTAINER holding one Measurement Group per finding (TID 1500 row 6).
pub const IMAGING_MEASUREMENTS: Code = code("126010", "DCM", "Imaging Measurements");
/// CONTAINER holding report-level qualitative evaluations (TID 1500 row 10; a UMLS concept in
/// the template itself).
pub const QUALITATIVE_EVALUATIONS: Code = code("C0034375", "UMLS", "Qualitative Evaluations");
/// One CONTAINER per finding (TID 1410/1411 row 1).
pub const MEASUREMENT_GROUP: Code = code("125007", "DCM", "Measurement Group");

// ---------------------------------------------------------------------------------------------
// Language (TID 1204)
// ---------------------------------------------------------------------------------------------

/// Concept of the language modifier on the root.
pub const LANGUAGE_OF_CONTENT: Code =
    code("121049", "DCM", "Language of Content Item and Descendants");
/// English, as an RFC 5646 language tag (CID 5000 "Languages").
pub const ENGLISH: Code = code("eng", "RFC5646", "English");

// ---------------------------------------------------------------------------------------------
// Observer context (TID 1001 / 1002 / 1004): the observer is a device, noduled itself
// ---------------------------------------------------------------------------------------------

pub const OBSERVER_TYPE: Code = code("121005", "DCM", "Observer Type");
/// Value of [`OBSERVER_TYPE`] (CID 270 "Observer Type").
pub const DEVICE: Code = code("121007", "DCM", "Device");
pub const DEVICE_OBSERVER_UID: Code = code("121012", "DCM", "Device Observer UID");
pub const DEVICE_OBSERVER_NAME: Code = code("121013", "DCM", "Device Observer Name");
pub const DEVICE_OBSERVER_MANUFACTURER: Code =
    code("121014", "DCM", "Device Observer Manufacturer");
pub const DEVICE_OBSERVER_MODEL_NAME: Code = code("121015", "DCM", "Device Observer Model Name");
pub const DEVICE_OBSERVER_SERIAL_NUMBER: Code =
    code("121016", "DCM", "Device Observer Serial Number");

// ---------------------------------------------------------------------------------------------
// Procedure reported (TID 1500 row 4, DCID 100 "Quantitative Diagnostic Imaging Procedures")
// ---------------------------------------------------------------------------------------------

pub const PROCEDURE_REPORTED: Code = code("121058", "DCM", "Procedure reported");
/// SNOMED CT 169069000 "Computed tomography of chest" (procedure). CID 100 is extensible and
/// lists only "CT unspecified body region" (LOINC 25045-6) for CT; a chest-specific SNOMED CT
/// procedure is more precise and keeps us off LOINC. (SCT 418023006, which was suggested, is "CT
/// of chest, abdomen and pelvis", so it is not used.)
pub const CT_OF_CHEST: Code = code("169069000", "SCT", "CT of chest");

// ---------------------------------------------------------------------------------------------
// Image library (TID 1600 / 1601 / 1602)
// ---------------------------------------------------------------------------------------------

pub const IMAGE_LIBRARY: Code = code("111028", "DCM", "Image Library");
pub const IMAGE_LIBRARY_GROUP: Code = code("126200", "DCM", "Image Library Group");
/// Group descriptor (TID 1602 row 1).
pub const MODALITY: Code = code("121139", "DCM", "Modality");
/// Value of [`MODALITY`] (CID 29 "Acquisition Modality").
pub const COMPUTED_TOMOGRAPHY: Code = code("CT", "DCM", "Computed Tomography");
/// Group descriptor (TID 1602): the source Frame of Reference.
pub const FRAME_OF_REFERENCE_UID: Code = code("112227", "DCM", "Frame of Reference UID");

// ---------------------------------------------------------------------------------------------
// Measurement group content (TID 1410 "Planar ROI Measurements and Qualitative Evaluations")
// ---------------------------------------------------------------------------------------------

/// TID 4108: human-readable tracking identifier, e.g. `nodule 1`.
pub const TRACKING_IDENTIFIER: Code = code("112039", "DCM", "Tracking Identifier");
/// TID 4108: the finding's UID.
pub const TRACKING_UNIQUE_IDENTIFIER: Code = code("112040", "DCM", "Tracking Unique Identifier");
pub const FINDING: Code = code("121071", "DCM", "Finding");
/// Value of [`FINDING`]: SNOMED CT 27925004 "Nodule" (morphologic abnormality; in CID 6102 and
/// CID 7151).
pub const NODULE: Code = code("27925004", "SCT", "Nodule");
pub const FINDING_SITE: Code = code("363698007", "SCT", "Finding Site");
/// Value of [`FINDING_SITE`]: SNOMED CT 39607008 "Lung" (body structure; CID 4 and others).
pub const LUNG: Code = code("39607008", "SCT", "Lung");

/// TID 4019 "Algorithm Identification": TEXT, the name.
pub const ALGORITHM_NAME: Code = code("111001", "DCM", "Algorithm Name");
/// TID 4019: TEXT child of [`ALGORITHM_NAME`].
pub const ALGORITHM_VERSION: Code = code("111003", "DCM", "Algorithm Version");
/// TID 4019: TEXT children of [`ALGORITHM_NAME`]; we write one per model file
/// (`<role> <file> sha256=<hex>`) plus the engine.
pub const ALGORITHM_PARAMETERS: Code = code("111002", "DCM", "Algorithm Parameters");

/// TID 1410 row "Image Region": the SCOORD on the nearest source slice (CIRCLE, or ELLIPSE when
/// pixels are not square).
pub const IMAGE_REGION: Code = code("111030", "DCM", "Image Region");
/// The nodule's 3D centre, a SCOORD3D POINT in the source Frame of Reference. TID 1410 has no
/// row for a centre point, and TID 1500 and TID 1410 are extensible; DCM 111010 "Center" is the
/// concept CAD SR templates use for a finding's centre point.
pub const CENTER: Code = code("111010", "DCM", "Center");

/// NUM: equivalent diameter (mm) of the segmented volume (CID 7469 "Generic Intensity and Size
/// Measurements").
pub const DIAMETER: Code = code("81827009", "SCT", "Diameter");
/// NUM: volume (mm³) = π/6 · d³ from the equivalent diameter, which equals the segmented voxel
/// count × voxel volume exactly (the eroded count the book uses for grouping would undercount).
pub const VOLUME: Code = code("118565006", "SCT", "Volume");
/// NUM (unit "1", value 0–1): the nodule classifier's p_nodule. DCM 111012 is "the likelihood
/// that the finding is a true positive" (CID 6048), which is what p_nodule estimates.
pub const CERTAINTY_OF_FINDING: Code = code("111012", "DCM", "Certainty of Finding");
/// NUM (unit "1", value 0–1): p_malignant.
pub const PROBABILITY_OF_CANCER: Code = code("111047", "DCM", "Probability of cancer");
/// CODE: the per-finding malignant / benign call (p_malignant > 0.5). PS3.16 has no "malignancy"
/// question concept; DCM 121073 "Impression" (an interpretation of findings) carries the call, with
/// SNOMED CT qualifier values [`MALIGNANT`] / [`BENIGN`] (both in CID 6063).
pub const IMPRESSION: Code = code("121073", "DCM", "Impression");
pub const MALIGNANT: Code = code("21594007", "SCT", "Malignant");
pub const BENIGN: Code = code("30807003", "SCT", "Benign");

/// NUM: longest axial diameter (mm) of the measured region ([`crate::pipeline::measure`]).
pub const LONG_AXIS: Code = code("103339001", "SCT", "Long Axis");
/// NUM: the longest diameter perpendicular to [`LONG_AXIS`] in the same slice (mm).
pub const SHORT_AXIS: Code = code("103340004", "SCT", "Short Axis");
/// HAS CONCEPT MOD of a NUM: how the value was derived (TID 1419), valued [`MEAN`] / [`MAXIMUM`]
/// (CID 3488 "Min/Max/Mean"). A [`DIAMETER`] with Derivation = Mean is the Lung-RADS mean
/// diameter, (long + short) / 2.
pub const DERIVATION: Code = code("121401", "DCM", "Derivation");
pub const MEAN: Code = code("373098007", "SCT", "Mean");
pub const MAXIMUM: Code = code("56851009", "SCT", "Maximum");
/// NUM (HU): the region's CT number, with a [`DERIVATION`] (mean or maximum); CID 7180.
pub const ATTENUATION_COEFFICIENT: Code = code("112031", "DCM", "Attenuation Coefficient");
/// TEXT: the nodule type (solid, part-solid, ground-glass, calcified). PS3.16 has no concept for
/// a nodule's attenuation class, so this is a private code (scheme `99NODULED`, PS3.16 8.2:
/// private schemes start with 99).
pub const NODULE_TYPE: Code = code("NT", "99NODULED", "Nodule attenuation type");
/// TEXT: the Lung-RADS v2022 baseline category (`1`…`4B`), per finding and for the exam (under
/// Qualitative Evaluations). Private code, as PS3.16 codes no Lung-RADS category.
pub const LUNG_RADS_CATEGORY: Code = code("LR", "99NODULED", "Lung-RADS v2022 category");

// ---------------------------------------------------------------------------------------------
// Report-level answer (under Qualitative Evaluations)
// ---------------------------------------------------------------------------------------------

/// CODE concept of the report-level answer "malignant nodules present", valued [`YES`] / [`NO`].
/// SNOMED CT 363346000 "Malignant neoplastic disease" (disorder) used as a question with a CID 230
/// Yes/No answer; noduled's "malignant" is the algorithm's suspicion (the SR is UNVERIFIED).
pub const MALIGNANT_NEOPLASTIC_DISEASE: Code =
    code("363346000", "SCT", "Malignant neoplastic disease");
/// CID 230 "Yes-No".
pub const YES: Code = code("373066001", "SCT", "Yes");
pub const NO: Code = code("373067005", "SCT", "No");

// ---------------------------------------------------------------------------------------------
// Units (UCUM)
// ---------------------------------------------------------------------------------------------

pub const UNIT_MM: Code = code("mm", "UCUM", "mm");
pub const UNIT_MM3: Code = code("mm3", "UCUM", "mm3");
/// Hounsfield unit (CID 7181).
pub const UNIT_HU: Code = code("[hnsf'U]", "UCUM", "Hounsfield unit");
/// Dimensionless (probabilities 0–1), as in CID 7181.
pub const UNIT_ONE: Code = code("1", "UCUM", "no units");

/// Every code above, for documentation and tests (each value/scheme pair appears once).
pub const ALL: &[Code] = &[
    IMAGING_MEASUREMENT_REPORT,
    IMAGING_MEASUREMENTS,
    QUALITATIVE_EVALUATIONS,
    MEASUREMENT_GROUP,
    LANGUAGE_OF_CONTENT,
    ENGLISH,
    OBSERVER_TYPE,
    DEVICE,
    DEVICE_OBSERVER_UID,
    DEVICE_OBSERVER_NAME,
    DEVICE_OBSERVER_MANUFACTURER,
    DEVICE_OBSERVER_MODEL_NAME,
    DEVICE_OBSERVER_SERIAL_NUMBER,
    PROCEDURE_REPORTED,
    CT_OF_CHEST,
    IMAGE_LIBRARY,
    IMAGE_LIBRARY_GROUP,
    MODALITY,
    COMPUTED_TOMOGRAPHY,
    FRAME_OF_REFERENCE_UID,
    TRACKING_IDENTIFIER,
    TRACKING_UNIQUE_IDENTIFIER,
    FINDING,
    NODULE,
    FINDING_SITE,
    LUNG,
    ALGORITHM_NAME,
    ALGORITHM_VERSION,
    ALGORITHM_PARAMETERS,
    IMAGE_REGION,
    CENTER,
    DIAMETER,
    VOLUME,
    CERTAINTY_OF_FINDING,
    PROBABILITY_OF_CANCER,
    IMPRESSION,
    MALIGNANT,
    BENIGN,
    LONG_AXIS,
    SHORT_AXIS,
    DERIVATION,
    MEAN,
    MAXIMUM,
    ATTENUATION_COEFFICIENT,
    NODULE_TYPE,
    LUNG_RADS_CATEGORY,
    MALIGNANT_NEOPLASTIC_DISEASE,
    YES,
    NO,
    UNIT_MM,
    UNIT_MM3,
    UNIT_HU,
    UNIT_ONE,
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_and_fit_their_vrs() {
        let mut seen = HashSet::new();
        for c in ALL {
            assert!(seen.insert((c.value, c.scheme)), "duplicate {c:?}");
            // Code Value SH (16), Coding Scheme Designator SH (16), Code Meaning LO (64).
            assert!(!c.value.is_empty() && c.value.len() <= 16, "{c:?}");
            assert!(!c.scheme.is_empty() && c.scheme.len() <= 16, "{c:?}");
            assert!(!c.meaning.is_empty() && c.meaning.len() <= 64, "{c:?}");
        }
    }
}
