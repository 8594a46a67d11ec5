//! Writes phantoms as CT Image Storage DICOM series (one explicit-VR little-endian file a slice)
//! and whole datasets (`DIR/<SeriesInstanceUID>/` folders plus a LUNA16-style `annotations.csv`).
//!
//! [`slice_object`] is public so tests can build a slice in memory and break it on purpose (wrong
//! orientation, duplicated positions, another SOP class) before writing it.
//!
//! Instance numbers follow the scanner's head-to-feet order: instance 1 (`000001.dcm`) is the most
//! superior slice, i.e. the last volume index; see [`instance_number`].

use super::raster::{HU_MAX, HU_MIN};
use super::{
    dataset_seed, generate, Phantom, PhantomError, PhantomNodule, PhantomSpec, CT_IMAGE_STORAGE,
};
use crate::uid;
use dicom_core::value::{PrimitiveValue, C};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{FileDicomObject, InMemDicomObject};
use rayon::prelude::*;
use std::fs;
use std::path::{Path, PathBuf};

/// Explicit VR Little Endian.
pub const TRANSFER_SYNTAX: &str = "1.2.840.10008.1.2.1";
/// Stored value = HU − this intercept (RescaleSlope 1).
pub const RESCALE_INTERCEPT: f64 = -1024.0;
/// Header line of `annotations.csv`: the columns of the book's LUNA16 malignancy table, then
/// `kind` (`nodule`, or `mass` for a lesion over 30 mm), so LUNA16 readers taking the first six
/// columns still work.
pub const ANNOTATIONS_HEADER: &str = "seriesuid,coordX,coordY,coordZ,diameter_mm,mal_bool,kind";

/// What [`write_dataset`] wrote.
#[derive(Debug, Clone)]
pub struct DatasetSummary {
    /// `DIR/annotations.csv`.
    pub annotations_csv: PathBuf,
    /// One entry a series, in the order written.
    pub series: Vec<SeriesSummary>,
}

/// One written phantom series.
#[derive(Debug, Clone)]
pub struct SeriesSummary {
    pub series_uid: String,
    pub dir: PathBuf,
    /// Files in volume index order.
    pub files: Vec<PathBuf>,
    pub seed: u64,
    pub nodules: Vec<PhantomNodule>,
}

/// InstanceNumber of volume index `index`: 1 is the most superior slice.
pub fn instance_number(phantom: &Phantom, index: usize) -> usize {
    phantom.volume.shape()[0].saturating_sub(index)
}

/// File name of volume index `index` inside the series folder, e.g. `000001.dcm`.
pub fn slice_file_name(phantom: &Phantom, index: usize) -> String {
    format!("{:06}.dcm", instance_number(phantom, index))
}

/// The complete DICOM file (meta header and data set) of volume index `index`.
pub fn slice_object(
    phantom: &Phantom,
    index: usize,
) -> Result<FileDicomObject<InMemDicomObject>, PhantomError> {
    let [slices, rows, columns] = phantom.volume.shape();
    if index >= slices {
        return Err(PhantomError::SliceIndex { index, slices });
    }
    let series = &phantom.volume.series;
    let geometry = &phantom.volume.geometry;
    let id = &phantom.identity;
    let sop_instance_uid = series
        .instances
        .get(index)
        .map(|i| i.sop_instance_uid.clone())
        .ok_or(PhantomError::SliceIndex { index, slices })?;
    let position = geometry.irc_to_xyz([index as f64, 0.0, 0.0]);
    let spacing = geometry.spacing_xyz;
    let thickness = series.slice_thickness_mm.unwrap_or(spacing[2]);
    let instance = instance_number(phantom, index);
    let mut obj = InMemDicomObject::new_empty();
    let mut put = |tag: Tag, vr: VR, value: PrimitiveValue| {
        obj.put(DataElement::new(tag, vr, value));
    };
    let text = |s: &str| PrimitiveValue::from(s.to_string());
    let multi = |values: Vec<String>| PrimitiveValue::Strs(values.into_iter().collect());
    // SOP Common
    put(tags::SPECIFIC_CHARACTER_SET, VR::CS, text("ISO_IR 100"));
    put(
        tags::IMAGE_TYPE,
        VR::CS,
        multi(vec!["ORIGINAL".into(), "PRIMARY".into(), "AXIAL".into()]),
    );
    put(tags::INSTANCE_CREATION_DATE, VR::DA, text(&id.study_date));
    put(
        tags::INSTANCE_CREATION_TIME,
        VR::TM,
        text(&id.acquisition_time),
    );
    put(tags::SOP_CLASS_UID, VR::UI, text(CT_IMAGE_STORAGE));
    put(tags::SOP_INSTANCE_UID, VR::UI, text(&sop_instance_uid));
    // General Study / Series / Image dates
    put(tags::STUDY_DATE, VR::DA, text(&id.study_date));
    put(tags::SERIES_DATE, VR::DA, text(&id.study_date));
    put(tags::ACQUISITION_DATE, VR::DA, text(&id.study_date));
    put(tags::CONTENT_DATE, VR::DA, text(&id.study_date));
    put(tags::STUDY_TIME, VR::TM, text(&id.study_time));
    put(tags::SERIES_TIME, VR::TM, text(&id.acquisition_time));
    put(tags::ACQUISITION_TIME, VR::TM, text(&id.acquisition_time));
    put(tags::CONTENT_TIME, VR::TM, text(&id.acquisition_time));
    put(tags::ACCESSION_NUMBER, VR::SH, text(&id.accession_number));
    put(tags::MODALITY, VR::CS, text("CT"));
    put(tags::MANUFACTURER, VR::LO, text("noduled phantom"));
    put(
        tags::REFERRING_PHYSICIAN_NAME,
        VR::PN,
        PrimitiveValue::Empty,
    );
    put(tags::STATION_NAME, VR::SH, text("PHANTOM"));
    put(tags::STUDY_DESCRIPTION, VR::LO, text(&id.study_description));
    put(
        tags::SERIES_DESCRIPTION,
        VR::LO,
        text(&id.series_description),
    );
    put(
        tags::MANUFACTURER_MODEL_NAME,
        VR::LO,
        text("Synthetic Chest"),
    );
    // Patient
    put(tags::PATIENT_NAME, VR::PN, text(&id.patient_name));
    put(tags::PATIENT_ID, VR::LO, text(&id.patient_id));
    put(
        tags::PATIENT_BIRTH_DATE,
        VR::DA,
        text(&id.patient_birth_date),
    );
    put(tags::PATIENT_SEX, VR::CS, text(&id.patient_sex));
    put(tags::PATIENT_AGE, VR::AS, text(&id.patient_age));
    // CT acquisition
    put(tags::BODY_PART_EXAMINED, VR::CS, text("CHEST"));
    put(tags::SLICE_THICKNESS, VR::DS, text(&ds(thickness)));
    put(tags::KVP, VR::DS, text(&id.kvp.to_string()));
    put(tags::DATA_COLLECTION_DIAMETER, VR::DS, text("500"));
    put(
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        text(concat!("noduled ", env!("CARGO_PKG_VERSION"))),
    );
    put(
        tags::RECONSTRUCTION_DIAMETER,
        VR::DS,
        text(&ds(columns as f64 * spacing[0])),
    );
    put(tags::GANTRY_DETECTOR_TILT, VR::DS, text("0"));
    put(tags::TABLE_HEIGHT, VR::DS, text("160"));
    put(tags::ROTATION_DIRECTION, VR::CS, text("CW"));
    put(
        tags::X_RAY_TUBE_CURRENT,
        VR::IS,
        text(&id.tube_current_ma.to_string()),
    );
    put(
        tags::CONVOLUTION_KERNEL,
        VR::SH,
        text(&id.convolution_kernel),
    );
    put(tags::PATIENT_POSITION, VR::CS, text("HFS"));
    // Relationship
    put(tags::STUDY_INSTANCE_UID, VR::UI, text(&series.study_uid));
    put(tags::SERIES_INSTANCE_UID, VR::UI, text(&series.series_uid));
    put(tags::STUDY_ID, VR::SH, text(&id.study_id));
    put(
        tags::SERIES_NUMBER,
        VR::IS,
        text(&id.series_number.to_string()),
    );
    put(tags::ACQUISITION_NUMBER, VR::IS, text("1"));
    put(tags::INSTANCE_NUMBER, VR::IS, text(&instance.to_string()));
    put(
        tags::IMAGE_POSITION_PATIENT,
        VR::DS,
        multi(position.iter().map(|v| ds(*v)).collect()),
    );
    put(
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        multi(
            orientation(&geometry.direction)
                .iter()
                .map(|v| ds(*v))
                .collect(),
        ),
    );
    if let Some(frame) = &series.frame_of_reference_uid {
        put(tags::FRAME_OF_REFERENCE_UID, VR::UI, text(frame));
    }
    put(
        tags::POSITION_REFERENCE_INDICATOR,
        VR::LO,
        PrimitiveValue::Empty,
    );
    put(tags::SLICE_LOCATION, VR::DS, text(&ds(position[2])));
    // Image Pixel
    put(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16));
    put(
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        text("MONOCHROME2"),
    );
    put(tags::ROWS, VR::US, PrimitiveValue::from(rows as u16));
    put(tags::COLUMNS, VR::US, PrimitiveValue::from(columns as u16));
    put(
        tags::PIXEL_SPACING,
        VR::DS,
        multi(vec![ds(spacing[1]), ds(spacing[0])]),
    );
    put(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16));
    put(tags::BITS_STORED, VR::US, PrimitiveValue::from(16u16));
    put(tags::HIGH_BIT, VR::US, PrimitiveValue::from(15u16));
    put(
        tags::PIXEL_REPRESENTATION,
        VR::US,
        PrimitiveValue::from(1u16),
    );
    put(tags::WINDOW_CENTER, VR::DS, text("-600"));
    put(tags::WINDOW_WIDTH, VR::DS, text("1500"));
    put(
        tags::RESCALE_INTERCEPT,
        VR::DS,
        text(&ds(RESCALE_INTERCEPT)),
    );
    put(tags::RESCALE_SLOPE, VR::DS, text("1"));
    put(tags::RESCALE_TYPE, VR::LO, text("HU"));
    put(tags::WINDOW_CENTER_WIDTH_EXPLANATION, VR::LO, text("LUNG"));
    put(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, text("00"));
    let plane = phantom.volume.hu.index_axis(ndarray::Axis(0), index);
    let pixels: Vec<u16> = plane
        .iter()
        .map(|&hu| {
            // Stored values 0..=4095 as signed 16-bit: the bit pattern equals the u16 value.
            let stored = (hu.clamp(HU_MIN, HU_MAX) - RESCALE_INTERCEPT as f32).round() as i16;
            stored as u16
        })
        .collect();
    put(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(C::from_vec(pixels)),
    );
    obj.with_meta(
        FileMetaTableBuilder::new()
            .transfer_syntax(TRANSFER_SYNTAX)
            .implementation_class_uid(uid::IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(uid::IMPLEMENTATION_VERSION_NAME),
    )
    .map_err(|e| PhantomError::Build {
        index,
        message: e.to_string(),
    })
}

/// Writes every slice of `phantom` into `dir` (created if missing), one `NNNNNN.dcm` a slice.
/// Returns the paths in volume index order.
pub fn write_series(phantom: &Phantom, dir: &Path) -> Result<Vec<PathBuf>, PhantomError> {
    fs::create_dir_all(dir).map_err(|source| PhantomError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    (0..phantom.volume.shape()[0])
        .into_par_iter()
        .map(|index| {
            let path = dir.join(slice_file_name(phantom, index));
            let object = slice_object(phantom, index)?;
            object
                .write_to_file(&path)
                .map_err(|e| PhantomError::Dicom {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            Ok(path)
        })
        .collect()
}

/// The `annotations.csv` rows (no header) of one phantom.
pub fn annotation_rows(phantom: &Phantom) -> Vec<String> {
    phantom
        .nodules
        .iter()
        .map(|n| {
            format!(
                "{},{},{},{},{},{},{}",
                phantom.volume.series.series_uid,
                n.center_xyz[0],
                n.center_xyz[1],
                n.center_xyz[2],
                n.diameter_mm,
                if n.malignant { "True" } else { "False" },
                n.kind.finding_kind()
            )
        })
        .collect()
}

/// Writes `count` phantoms under `out`: `out/<SeriesInstanceUID>/NNNNNN.dcm` and
/// `out/annotations.csv`. Phantom `i` is `spec_template` with seed [`dataset_seed`]`(seed, i)` and
/// case number `spec_template.case_number + i`. Phantoms are generated one at a time, so memory
/// stays at one volume.
pub fn write_dataset(
    out: &Path,
    seed: u64,
    count: usize,
    spec_template: &PhantomSpec,
) -> Result<DatasetSummary, PhantomError> {
    spec_template.validate()?;
    fs::create_dir_all(out).map_err(|source| PhantomError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let mut csv = String::from(ANNOTATIONS_HEADER);
    csv.push('\n');
    let mut series = Vec::with_capacity(count);
    for i in 0..count {
        let spec = PhantomSpec {
            seed: dataset_seed(seed, i as u64),
            case_number: spec_template.case_number.saturating_add(i as u32),
            ..spec_template.clone()
        };
        let phantom = generate(&spec);
        let dir = out.join(&phantom.volume.series.series_uid);
        let files = write_series(&phantom, &dir)?;
        for row in annotation_rows(&phantom) {
            csv.push_str(&row);
            csv.push('\n');
        }
        series.push(SeriesSummary {
            series_uid: phantom.volume.series.series_uid.clone(),
            dir,
            files,
            seed: spec.seed,
            nodules: phantom.nodules.clone(),
        });
    }
    let annotations_csv = out.join("annotations.csv");
    fs::write(&annotations_csv, csv).map_err(|source| PhantomError::Io {
        path: annotations_csv.clone(),
        source,
    })?;
    Ok(DatasetSummary {
        annotations_csv,
        series,
    })
}

/// ImageOrientationPatient: the row cosine then the column cosine (the first two columns of the
/// direction matrix).
fn orientation(d: &[[f64; 3]; 3]) -> [f64; 6] {
    [d[0][0], d[1][0], d[2][0], d[0][1], d[1][1], d[2][1]]
}

/// A DS (decimal string) value of at most 16 characters; exact for the phantom's dyadic values.
pub(crate) fn ds(value: f64) -> String {
    let value = value + 0.0; // no "-0"
    let shortest = format!("{value}");
    if shortest.len() <= 16 {
        return shortest;
    }
    for precision in (0..=12).rev() {
        let s = format!("{value:.precision$}");
        if s.len() <= 16 {
            return s;
        }
    }
    format!("{value:.0}")
}

#[cfg(test)]
mod tests {
    use super::ds;

    #[test]
    fn ds_values_fit_sixteen_characters() {
        assert_eq!(ds(-0.0), "0");
        assert_eq!(ds(0.607421875), "0.607421875");
        assert_eq!(ds(-155.4990234375), "-155.4990234375");
        assert!(ds(1.0 / 3.0).len() <= 16);
        assert!(ds(-12345.678901234567).len() <= 16);
    }
}
