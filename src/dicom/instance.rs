//! One CT image instance: the header fields series assembly needs, and its stored pixels.
//!
//! Parsing is separate from geometry and validation (see [`super::series`]) so the same code serves a
//! folder on disk and an instance arriving over the network. Pixels are kept as stored (2 bytes a
//! voxel) until the volume is assembled, which keeps a whole series in memory at half its f32 size.

use dicom_dictionary_std::{tags, uids};
use dicom_object::{DefaultDicomObject, Tag};
use dicom_pixeldata::PixelDecoder;
use std::path::{Path, PathBuf};

/// Why an instance could not be used.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("{path}: not a readable DICOM file: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("{path}: missing or invalid {attribute}")]
    Attribute {
        path: PathBuf,
        attribute: &'static str,
    },
    #[error("{path}: cannot decode pixel data: {reason}")]
    Pixels { path: PathBuf, reason: String },
}

/// Stored sample layout of a slice, needed to turn raw bytes into numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelFormat {
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub signed: bool,
}

/// The header fields of a CT image that series assembly and the SR writer need.
#[derive(Debug, Clone, PartialEq)]
pub struct CtHeader {
    pub path: PathBuf,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub modality: String,
    pub series_uid: String,
    pub study_uid: String,
    pub frame_of_reference_uid: Option<String>,
    pub series_description: Option<String>,
    pub series_number: Option<String>,
    pub patient_study: crate::volume::PatientStudy,
    pub image_type: Vec<String>,
    pub rows: usize,
    pub columns: usize,
    /// ImagePositionPatient (mm).
    pub position: Option<[f64; 3]>,
    /// ImageOrientationPatient: row cosine then column cosine.
    pub orientation: Option<[f64; 6]>,
    /// PixelSpacing as (row spacing, column spacing) in mm, in DICOM's order.
    pub pixel_spacing: Option<[f64; 2]>,
    pub slice_thickness: Option<f64>,
    pub gantry_tilt: Option<f64>,
    pub rescale_slope: f64,
    pub rescale_intercept: f64,
    pub has_pixel_data: bool,
    /// ContrastBolusAgent (0018,0010), if present and not empty.
    pub contrast_agent: Option<String>,
    /// CTDIvol (0018,9345) in mGy, if present.
    pub ctdi_vol_mgy: Option<f64>,
}

impl CtHeader {
    /// Whether this is a CT Image Storage instance with modality CT.
    pub fn is_ct_image(&self) -> bool {
        self.sop_class_uid == uids::CT_IMAGE_STORAGE
    }

    /// Whether ImageType marks a localizer (scout / topogram), which is a projection, not a slice.
    pub fn is_localizer(&self) -> bool {
        self.image_type
            .iter()
            .any(|v| v.trim().eq_ignore_ascii_case("LOCALIZER"))
    }
}

/// A CT instance with its stored pixel bytes (little endian, `format` layout), if decoded.
#[derive(Debug, Clone)]
pub struct CtInstance {
    pub header: CtHeader,
    pub format: PixelFormat,
    pub pixels: Vec<u8>,
}

impl CtInstance {
    /// Number of stored bytes a slice of this header must have.
    pub fn expected_len(&self) -> usize {
        self.header.rows * self.header.columns * usize::from(self.format.bits_allocated).div_ceil(8)
    }

    /// Writes this slice's Hounsfield units into `out` (rows × columns values).
    pub fn write_hu(&self, out: &mut [f32]) {
        let (slope, intercept) = (
            self.header.rescale_slope as f32,
            self.header.rescale_intercept as f32,
        );
        let PixelFormat {
            bits_allocated,
            bits_stored,
            signed,
        } = self.format;
        match bits_allocated {
            8 => {
                for (dst, &raw) in out.iter_mut().zip(&self.pixels) {
                    let value = if signed {
                        f32::from(raw as i8)
                    } else {
                        f32::from(raw)
                    };
                    *dst = value * slope + intercept;
                }
            }
            _ => {
                // 16 bits allocated: mask to the stored bits and sign-extend when signed.
                let unused = 16 - bits_stored.clamp(1, 16) as u32;
                for (dst, pair) in out.iter_mut().zip(self.pixels.chunks_exact(2)) {
                    let raw = u16::from_le_bytes([pair[0], pair[1]]);
                    let value = if signed {
                        f32::from(((raw << unused) as i16) >> unused)
                    } else {
                        f32::from((raw << unused) >> unused)
                    };
                    *dst = value * slope + intercept;
                }
            }
        }
    }
}

fn text(obj: &DefaultDicomObject, tag: Tag) -> Option<String> {
    let value = obj.element_opt(tag).ok().flatten()?.to_str().ok()?;
    let trimmed = value.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

fn numbers(obj: &DefaultDicomObject, tag: Tag) -> Option<Vec<f64>> {
    obj.element_opt(tag).ok().flatten()?.to_multi_float64().ok()
}

fn fixed<const N: usize>(obj: &DefaultDicomObject, tag: Tag) -> Option<[f64; N]> {
    let values = numbers(obj, tag)?;
    let array: [f64; N] = values.get(..N)?.try_into().ok()?;
    array.iter().all(|v| v.is_finite()).then_some(array)
}

fn integer(obj: &DefaultDicomObject, tag: Tag) -> Option<u16> {
    obj.element_opt(tag).ok().flatten()?.to_int::<u16>().ok()
}

impl CtHeader {
    /// Reads the header fields from a parsed object (`path` is kept for messages).
    pub fn from_object(obj: &DefaultDicomObject, path: &Path) -> Result<Self, InstanceError> {
        let required = |tag: Tag, attribute: &'static str| {
            text(obj, tag).ok_or_else(|| InstanceError::Attribute {
                path: path.to_path_buf(),
                attribute,
            })
        };
        let sop_class_uid = text(obj, tags::SOP_CLASS_UID).unwrap_or_else(|| {
            obj.meta()
                .media_storage_sop_class_uid()
                .trim_end_matches('\0')
                .to_string()
        });
        Ok(CtHeader {
            path: path.to_path_buf(),
            sop_class_uid,
            sop_instance_uid: required(tags::SOP_INSTANCE_UID, "SOPInstanceUID")?,
            modality: text(obj, tags::MODALITY).unwrap_or_default(),
            series_uid: required(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?,
            study_uid: required(tags::STUDY_INSTANCE_UID, "StudyInstanceUID")?,
            frame_of_reference_uid: text(obj, tags::FRAME_OF_REFERENCE_UID),
            series_description: text(obj, tags::SERIES_DESCRIPTION),
            series_number: text(obj, tags::SERIES_NUMBER),
            patient_study: crate::volume::PatientStudy {
                patient_name: text(obj, tags::PATIENT_NAME).unwrap_or_default(),
                patient_id: text(obj, tags::PATIENT_ID).unwrap_or_default(),
                patient_birth_date: text(obj, tags::PATIENT_BIRTH_DATE).unwrap_or_default(),
                patient_sex: text(obj, tags::PATIENT_SEX).unwrap_or_default(),
                study_date: text(obj, tags::STUDY_DATE).unwrap_or_default(),
                study_time: text(obj, tags::STUDY_TIME).unwrap_or_default(),
                study_id: text(obj, tags::STUDY_ID).unwrap_or_default(),
                accession_number: text(obj, tags::ACCESSION_NUMBER).unwrap_or_default(),
                referring_physician_name: text(obj, tags::REFERRING_PHYSICIAN_NAME)
                    .unwrap_or_default(),
                study_description: text(obj, tags::STUDY_DESCRIPTION).unwrap_or_default(),
                specific_character_set: text(obj, tags::SPECIFIC_CHARACTER_SET).unwrap_or_default(),
            },
            image_type: obj
                .element_opt(tags::IMAGE_TYPE)
                .ok()
                .flatten()
                .and_then(|e| e.to_multi_str().ok().map(|v| v.to_vec()))
                .unwrap_or_default(),
            rows: integer(obj, tags::ROWS).map_or(0, usize::from),
            columns: integer(obj, tags::COLUMNS).map_or(0, usize::from),
            position: fixed::<3>(obj, tags::IMAGE_POSITION_PATIENT),
            orientation: fixed::<6>(obj, tags::IMAGE_ORIENTATION_PATIENT),
            pixel_spacing: fixed::<2>(obj, tags::PIXEL_SPACING),
            slice_thickness: numbers(obj, tags::SLICE_THICKNESS).and_then(|v| v.first().copied()),
            gantry_tilt: numbers(obj, tags::GANTRY_DETECTOR_TILT).and_then(|v| v.first().copied()),
            rescale_slope: numbers(obj, tags::RESCALE_SLOPE)
                .and_then(|v| v.first().copied())
                .unwrap_or(1.0),
            rescale_intercept: numbers(obj, tags::RESCALE_INTERCEPT)
                .and_then(|v| v.first().copied())
                .unwrap_or(0.0),
            has_pixel_data: obj.element_opt(tags::PIXEL_DATA).ok().flatten().is_some(),
            contrast_agent: text(obj, tags::CONTRAST_BOLUS_AGENT),
            ctdi_vol_mgy: numbers(obj, tags::CTD_IVOL).and_then(|v| v.first().copied()),
        })
    }
}

impl CtInstance {
    /// Decodes the pixel data of a parsed CT object (native or any encapsulated syntax that
    /// dicom-pixeldata's pure-Rust decoders handle: JPEG lossless/baseline, RLE).
    pub fn from_object(obj: &DefaultDicomObject, header: CtHeader) -> Result<Self, InstanceError> {
        let fail = |reason: String| InstanceError::Pixels {
            path: header.path.clone(),
            reason,
        };
        let decoded = obj.decode_pixel_data().map_err(|e| fail(e.to_string()))?;
        if decoded.samples_per_pixel() != 1 {
            return Err(fail(format!(
                "{} samples per pixel (CT is monochrome)",
                decoded.samples_per_pixel()
            )));
        }
        if decoded.number_of_frames() != 1 {
            return Err(fail(format!(
                "{} frames (one slice a file expected)",
                decoded.number_of_frames()
            )));
        }
        let bits_allocated = decoded.bits_allocated();
        if bits_allocated != 8 && bits_allocated != 16 {
            return Err(fail(format!(
                "{bits_allocated} bits allocated (8 or 16 supported)"
            )));
        }
        let format = PixelFormat {
            bits_allocated,
            bits_stored: decoded.bits_stored(),
            signed: matches!(
                decoded.pixel_representation(),
                dicom_pixeldata::PixelRepresentation::Signed
            ),
        };
        let instance = CtInstance {
            format,
            pixels: Vec::new(),
            header,
        };
        let data = decoded.data();
        let expected = instance.expected_len();
        if data.len() < expected {
            return Err(InstanceError::Pixels {
                path: instance.header.path.clone(),
                reason: format!(
                    "{} bytes of pixel data, {} needed for {}×{}",
                    data.len(),
                    expected,
                    instance.header.rows,
                    instance.header.columns
                ),
            });
        }
        Ok(CtInstance {
            pixels: data[..expected].to_vec(),
            ..instance
        })
    }
}

/// What reading one file gave.
#[derive(Debug)]
pub enum ReadOutcome {
    /// A CT image (with decoded pixels when it has pixel data).
    Ct(Box<CtInstance>),
    /// A CT Image Storage instance without pixel data (kept so the series can be refused clearly).
    CtWithoutPixels(Box<CtHeader>),
    /// A CT image whose pixel data cannot be decoded (truncated, unsupported syntax…).
    CtUndecodable {
        header: Box<CtHeader>,
        reason: String,
    },
    /// DICOM, but not a CT image (SR, MR, presentation state…): its SOP class and modality.
    OtherSopClass {
        sop_class_uid: String,
        modality: String,
    },
}

/// Reads one file: parse, classify, decode pixels of CT images.
pub fn read_file(path: &Path) -> Result<ReadOutcome, InstanceError> {
    let obj = dicom_object::open_file(path).map_err(|e| InstanceError::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    read_object(&obj, path)
}

/// Classifies a parsed object and decodes its pixels if it is a CT image.
pub fn read_object(obj: &DefaultDicomObject, path: &Path) -> Result<ReadOutcome, InstanceError> {
    let sop_class_uid = text(obj, tags::SOP_CLASS_UID).unwrap_or_else(|| {
        obj.meta()
            .media_storage_sop_class_uid()
            .trim_end_matches('\0')
            .to_string()
    });
    if sop_class_uid != uids::CT_IMAGE_STORAGE {
        return Ok(ReadOutcome::OtherSopClass {
            sop_class_uid,
            modality: text(obj, tags::MODALITY).unwrap_or_default(),
        });
    }
    let header = CtHeader::from_object(obj, path)?;
    if !header.has_pixel_data {
        return Ok(ReadOutcome::CtWithoutPixels(Box::new(header)));
    }
    match CtInstance::from_object(obj, header.clone()) {
        Ok(instance) => Ok(ReadOutcome::Ct(Box::new(instance))),
        Err(InstanceError::Pixels { reason, .. }) => Ok(ReadOutcome::CtUndecodable {
            header: Box::new(header),
            reason,
        }),
        Err(other) => Err(other),
    }
}
