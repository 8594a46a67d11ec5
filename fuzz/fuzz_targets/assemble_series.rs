//! Fuzz target: series assembly from instances parsed out of fuzzed bytes. The input is split on
//! a 4-byte marker into data sets (explicit VR little endian, as files in the spool would be
//! after validation); each that parses as a CT joins the series; `assemble` must refuse or
//! return a volume with one plane per slice, never panic.
#![no_main]

use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN;
use libfuzzer_sys::fuzz_target;
use noduled::dicom::instance::{read_object, ReadOutcome};
use std::path::Path;

const MARKER: &[u8] = b"\xFFSL\xFF";

fuzz_target!(|data: &[u8]| {
    let mut instances = Vec::new();
    let mut rest = data;
    while !rest.is_empty() && instances.len() < 64 {
        let end = rest.windows(MARKER.len()).position(|w| w == MARKER).unwrap_or(rest.len());
        let part = &rest[..end];
        rest = &rest[(end + MARKER.len()).min(rest.len())..];
        if noduled::server::store_scp::check_declared_lengths(part, true).is_err() {
            continue;
        }
        let Ok(obj) = InMemDicomObject::read_dataset_with_ts(part, &EXPLICIT_VR_LITTLE_ENDIAN.erased()) else { continue };
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.2")
            .media_storage_sop_instance_uid("1.2.3")
            .transfer_syntax("1.2.840.10008.1.2.1");
        let Ok(file) = obj.with_meta(meta) else { continue };
        if let Ok(ReadOutcome::Ct(instance)) = read_object(&file, Path::new("(fuzz)")) {
            instances.push(*instance);
        }
    }
    let count = instances.len();
    if let Ok(volume) = noduled::dicom::series::assemble(instances, &Default::default()) {
        assert_eq!(volume.hu.dim().0, count);
    }
});
