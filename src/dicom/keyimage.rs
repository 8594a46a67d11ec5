//! Key images as DICOM Secondary Capture (SC Image Storage, 1.2.840.10008.5.1.4.1.1.7): the
//! rendered picture of a finding ([`crate::render`]) in the **same study** as its CT, in a series
//! of its own, so a PACS or viewer without SR display still shows the result next to the scan.
//!
//! Modules written (PS3.3 A.8.1): Patient, General Study (copied from the CT), General Series
//! (Modality OT), General Equipment, SC Equipment (Conversion Type WSD: workstation), General
//! Image (with Derivation Description and Source Image Sequence pointing at the CT slice, Image
//! Type DERIVED\SECONDARY, Burned In Annotation YES: the outline and text are in the pixels),
//! Image Pixel (8-bit RGB, interleaved), SC Image, SOP Common. Explicit VR little endian.

use super::sr::{self, put_str, SrError};
use crate::render::RgbImage;
use crate::uid;
use crate::volume::SeriesInfo;
use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{FileDicomObject, InMemDicomObject};

/// SOP Class UID of Secondary Capture Image Storage.
pub const SECONDARY_CAPTURE_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.7";
/// Default Series Number of the key-image series (after the SR's 9001).
pub const DEFAULT_SERIES_NUMBER: u32 = 9002;

/// Series and instance identity of one key image.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyImageOptions {
    /// Series Instance UID shared by all key images of one analysis.
    pub series_uid: String,
    pub series_number: u32,
    pub instance_number: u32,
    pub series_description: String,
    pub manufacturer: String,
    pub software_version: String,
    /// `(YYYYMMDD, HHMMSS)` for the creation dates; `None` = now.
    pub clock: Option<(String, String)>,
    /// The SOP Instance UID; `None` = a fresh one. The daemon derives it from the series so a
    /// re-run rewrites the same image.
    pub sop_instance_uid: Option<String>,
}

impl KeyImageOptions {
    /// Options for image `instance_number` of a new key-image series.
    pub fn new(series_uid: String, instance_number: u32) -> KeyImageOptions {
        KeyImageOptions {
            series_uid,
            series_number: DEFAULT_SERIES_NUMBER,
            instance_number,
            series_description: "noduled key images".into(),
            manufacturer: "noduled".into(),
            software_version: env!("CARGO_PKG_VERSION").into(),
            clock: None,
            sop_instance_uid: None,
        }
    }
}

fn put_u16(obj: &mut InMemDicomObject, tag: Tag, value: u16) {
    obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
}

/// The Secondary Capture object of `image`, derived from slice `slice` of the CT series `series`
/// (whose patient and study it joins). `description` goes into Derivation Description and Image
/// Comments (e.g. `nodule 1: 12.3 mm solid, Lung-RADS 4A`).
pub fn build_key_image(
    image: &RgbImage,
    series: &SeriesInfo,
    slice: usize,
    description: &str,
    options: &KeyImageOptions,
) -> Result<FileDicomObject<InMemDicomObject>, SrError> {
    let source = series
        .instances
        .get(slice)
        .ok_or(SrError::NoSourceInstances)?;
    for (what, value) in [
        ("the key-image Series Instance UID", &options.series_uid),
        ("the Study Instance UID", &series.study_uid),
    ] {
        if !uid::is_valid(value) {
            return Err(SrError::InvalidUid {
                what: what.into(),
                uid: value.clone(),
            });
        }
    }
    let too_big = |what: &'static str, v: usize| SrError::BadValue {
        finding: 0,
        what,
        value: v as f64,
    };
    let rows =
        u16::try_from(image.height).map_err(|_| too_big("the image height", image.height))?;
    let cols = u16::try_from(image.width).map_err(|_| too_big("the image width", image.width))?;
    if image.rgb.len() != image.width * image.height * 3 || rows == 0 || cols == 0 {
        return Err(too_big("the pixel buffer length", image.rgb.len()));
    }
    let (date, time) = options.clock.clone().unwrap_or_else(sr::utc_now);
    let sop_instance_uid = options
        .sop_instance_uid
        .clone()
        .unwrap_or_else(uid::generate);
    let ps = &series.patient_study;
    let mut obj = InMemDicomObject::new_empty();
    // SOP Common
    let charset = if ps.specific_character_set.is_empty() {
        "ISO_IR 192"
    } else {
        ps.specific_character_set.as_str()
    };
    put_str(&mut obj, tags::SPECIFIC_CHARACTER_SET, VR::CS, charset);
    put_str(&mut obj, tags::IMAGE_TYPE, VR::CS, "DERIVED\\SECONDARY");
    put_str(&mut obj, tags::INSTANCE_CREATION_DATE, VR::DA, &date);
    put_str(&mut obj, tags::INSTANCE_CREATION_TIME, VR::TM, &time);
    put_str(
        &mut obj,
        tags::SOP_CLASS_UID,
        VR::UI,
        SECONDARY_CAPTURE_IMAGE_STORAGE,
    );
    put_str(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, &sop_instance_uid);
    sr::put_patient_and_study(&mut obj, series);
    // General Series
    put_str(&mut obj, tags::MODALITY, VR::CS, "OT");
    put_str(
        &mut obj,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &options.series_uid,
    );
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
    // Type 2C; dciodvfy requires it without a body part to tell paired from unpaired (it then
    // warns that it is empty).
    put_str(&mut obj, tags::LATERALITY, VR::CS, "");
    // General Equipment, SC Equipment
    put_str(&mut obj, tags::MANUFACTURER, VR::LO, &options.manufacturer);
    put_str(
        &mut obj,
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        &options.software_version,
    );
    put_str(&mut obj, tags::CONVERSION_TYPE, VR::CS, "WSD");
    // General Image
    put_str(
        &mut obj,
        tags::INSTANCE_NUMBER,
        VR::IS,
        &options.instance_number.to_string(),
    );
    put_str(&mut obj, tags::PATIENT_ORIENTATION, VR::CS, "");
    put_str(&mut obj, tags::CONTENT_DATE, VR::DA, &date);
    put_str(&mut obj, tags::CONTENT_TIME, VR::TM, &time);
    put_str(&mut obj, tags::BURNED_IN_ANNOTATION, VR::CS, "YES");
    put_str(&mut obj, tags::IMAGE_COMMENTS, VR::LT, description);
    put_str(&mut obj, tags::DERIVATION_DESCRIPTION, VR::ST, description);
    let mut reference = InMemDicomObject::new_empty();
    put_str(
        &mut reference,
        tags::REFERENCED_SOP_CLASS_UID,
        VR::UI,
        &source.sop_class_uid,
    );
    put_str(
        &mut reference,
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        &source.sop_instance_uid,
    );
    obj.put(DataElement::new(
        tags::SOURCE_IMAGE_SEQUENCE,
        VR::SQ,
        DataSetSequence::from(vec![reference]),
    ));
    // Image Pixel
    put_u16(&mut obj, tags::SAMPLES_PER_PIXEL, 3);
    put_str(&mut obj, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB");
    put_u16(&mut obj, tags::PLANAR_CONFIGURATION, 0);
    put_u16(&mut obj, tags::ROWS, rows);
    put_u16(&mut obj, tags::COLUMNS, cols);
    put_u16(&mut obj, tags::BITS_ALLOCATED, 8);
    put_u16(&mut obj, tags::BITS_STORED, 8);
    put_u16(&mut obj, tags::HIGH_BIT, 7);
    put_u16(&mut obj, tags::PIXEL_REPRESENTATION, 0);
    let mut pixels = image.rgb.clone();
    if pixels.len() % 2 == 1 {
        pixels.push(0); // OB values have even length
    }
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::U8(pixels.into()),
    ));
    obj.with_meta(
        FileMetaTableBuilder::new()
            .transfer_syntax(sr::TRANSFER_SYNTAX)
            .implementation_class_uid(uid::IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(uid::IMPLEMENTATION_VERSION_NAME),
    )
    .map_err(|e| SrError::Meta(e.to_string()))
}
