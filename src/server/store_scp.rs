//! C-STORE SCP (PS3.4 Annex B): validate, store durably, then answer.
//!
//! The answer is Success only after [`crate::store::Store::put_instance`] has fsynced the file and its folder
//! and indexed it, so a scanner that deletes what we acknowledged loses nothing. Refusals carry the
//! standard status and a one-line reason in the log (UIDs, never patient names):
//! 0xA700 out of resources (too big, disk watermark, series cap), 0xA900 data set does not match
//! the SOP class (not a CT, no pixel data, UIDs missing or not matching the command), 0xC000 cannot
//! understand (unparseable, undecodable pixels).

use super::association::{sop, Session, Transport};
use super::dimse::{self, command, status, DimseError, Message};
use crate::dicom::instance::{read_object, ReadOutcome};
use crate::store::{
    keys_of_dataset, IncomingInstance, InstanceKind, InstanceRecord, PutOutcome, SpoolSlot,
    StoreError, Written,
};
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use std::path::Path;

/// Why an instance was not stored: the status to answer and the reason to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub reason: String,
}

fn refuse(status: u16, reason: impl Into<String>) -> Refused {
    Refused {
        status,
        reason: reason.into(),
    }
}

/// Parses and validates one instance received as `dataset` in `transfer_syntax`, declared by the
/// command as `sop_class`/`sop_instance` (empty strings: no declaration, as for the drop folder).
pub fn validate(
    dataset: Vec<u8>,
    transfer_syntax: &str,
    sop_class: &str,
    sop_instance: &str,
) -> Result<IncomingInstance, Refused> {
    let ts = TransferSyntaxRegistry.get(transfer_syntax).ok_or_else(|| {
        refuse(
            status::CANNOT_UNDERSTAND,
            format!("unknown transfer syntax {transfer_syntax}"),
        )
    })?;
    let pixel_data = match little_endian_vr(transfer_syntax) {
        Some(explicit_vr) => walk_declared_lengths(&dataset, explicit_vr)
            .map_err(|reason| refuse(status::CANNOT_UNDERSTAND, reason))?,
        None => None,
    };
    // The fast path (PS3.5 native pixels that end the data set, the common case): only the header
    // is parsed, and the pixels are checked by their length, not decoded; parsing and copying half
    // a megabyte of pixels twice per instance was most of the service's CPU per instance.
    let native_pixels = pixel_data
        .filter(|p| p.end == dataset.len())
        .and_then(|p| Some((p.header_start, p.length?)));
    let parse = |bytes: &[u8]| {
        InMemDicomObject::read_dataset_with_ts(bytes, ts).map_err(|e| {
            refuse(
                status::CANNOT_UNDERSTAND,
                format!("unparseable data set: {}", super::one_line(&e.to_string())),
            )
        })
    };
    let obj = match native_pixels {
        Some((header_end, _)) => parse(&dataset[..header_end])?,
        None => parse(&dataset)?,
    };
    let text = |tag| dimse::str_of(&obj, tag);
    let class = text(tags::SOP_CLASS_UID);
    let instance = text(tags::SOP_INSTANCE_UID);
    if !sop_class.is_empty() && class != sop_class {
        return Err(refuse(
            status::DATASET_MISMATCH,
            format!("SOP Class UID {class:?} does not match the command's {sop_class}"),
        ));
    }
    if !sop_instance.is_empty() && instance != sop_instance {
        return Err(refuse(
            status::DATASET_MISMATCH,
            "SOP Instance UID does not match the command's",
        ));
    }
    if !sop::is_storage(&class) {
        return Err(refuse(
            status::DATASET_MISMATCH,
            format!("SOP class {class:?} is not one noduled stores (CT images and reports)"),
        ));
    }
    for (tag, name) in [
        (tags::SOP_INSTANCE_UID, "SOPInstanceUID"),
        (tags::STUDY_INSTANCE_UID, "StudyInstanceUID"),
        (tags::SERIES_INSTANCE_UID, "SeriesInstanceUID"),
    ] {
        let value = text(tag);
        if value.is_empty() || !crate::uid::is_valid(&value) {
            return Err(refuse(
                status::DATASET_MISMATCH,
                format!("{name} missing or invalid"),
            ));
        }
    }
    let kind = InstanceKind::of_sop_class(&class);
    if kind == InstanceKind::Image {
        let modality = text(tags::MODALITY);
        if modality != "CT" {
            return Err(refuse(
                status::DATASET_MISMATCH,
                format!("modality {modality:?} is not CT"),
            ));
        }
        match native_pixels {
            Some((_, length)) if native_pixels_fit(&obj, length) => {}
            Some(_) => check_ct_pixels(&parse(&dataset)?, transfer_syntax)?,
            None => check_ct_pixels(&obj, transfer_syntax)?,
        }
    }
    Ok(IncomingInstance {
        keys: keys_of_dataset(&obj),
        sop_class_uid: class,
        sop_instance_uid: instance,
        transfer_syntax: transfer_syntax.to_string(),
        kind,
        dataset,
    })
}

/// For the little-endian, not deflated transfer syntaxes (everything we negotiate): whether
/// VRs are explicit. None for the others (big endian, deflate), which are not pre-checked.
fn little_endian_vr(transfer_syntax: &str) -> Option<bool> {
    match transfer_syntax {
        "1.2.840.10008.1.2" => Some(false),
        "1.2.840.10008.1.2.2" | "1.2.840.10008.1.2.1.99" => None,
        ts if ts.starts_with("1.2.840.10008.1.2") => Some(true),
        _ => None,
    }
}

fn le16(data: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([data[at], data[at + 1]])
}

fn le32(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

/// Walks the element headers of a little-endian data set (into sequences and items) and refuses
/// any defined length that runs past the end of the bytes. The parser allocates and zeroes a
/// declared length before reading it, so without this a 4 GB length in a 1 kB data set costs
/// 4 GB of memory per attempt (found by tests/hardening.rs).
pub fn check_declared_lengths(data: &[u8], explicit_vr: bool) -> Result<(), String> {
    walk_declared_lengths(data, explicit_vr).map(|_| ())
}

/// Bytes one value of a fixed-size binary VR takes (PS3.5 table 6.2-1); 1 for every other VR.
fn fixed_value_size(vr: &[u8]) -> usize {
    match vr {
        b"SS" | b"US" | b"OW" => 2,
        b"AT" | b"FL" | b"SL" | b"UL" | b"OF" | b"OL" => 4,
        b"FD" | b"SV" | b"UV" | b"OD" | b"OV" => 8,
        _ => 1,
    }
}

/// Where the data set's top-level (7FE0,0010) Pixel Data element lies, as the declared-length
/// walk found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelDataAt {
    /// Offset of the element's first header byte: everything before it is the header.
    pub header_start: usize,
    /// Defined value length (native pixels); `None` for undefined length (encapsulated).
    pub length: Option<usize>,
    /// Offset just past the value (for a defined length).
    pub end: usize,
}

/// [`check_declared_lengths`], also telling where the top-level Pixel Data is (a Pixel Data
/// element inside a sequence item, such as an icon image's, is not it).
pub fn walk_declared_lengths(
    data: &[u8],
    explicit_vr: bool,
) -> Result<Option<PixelDataAt>, String> {
    const UNDEFINED: u32 = 0xFFFF_FFFF;
    let mut pos = 0usize;
    // Inside encapsulated pixel data, items hold raw fragments rather than elements.
    let mut in_fragments = false;
    // Open sequences and items: `Some(end)` for a defined length, `None` until a delimiter.
    let mut open: Vec<Option<usize>> = Vec::new();
    let mut pixel_data = None;
    while pos < data.len() {
        while matches!(open.last(), Some(Some(end)) if pos >= *end) {
            open.pop();
        }
        let header_start = pos;
        let remaining = data.len() - pos;
        if remaining < 8 {
            return Err(format!(
                "data set ends inside an element header at byte {pos}"
            ));
        }
        let group = le16(data, pos);
        let element = le16(data, pos + 2);
        let tag = dicom_core::Tag(group, element);
        // Bytes a value of the element's VR takes, for the fixed-size binary VRs (else 1).
        let mut unit = 1usize;
        let (length, header, is_sequence) = if group == 0xFFFE {
            (le32(data, pos + 4), 8, false)
        } else if explicit_vr {
            let vr = [data[pos + 4], data[pos + 5]];
            unit = fixed_value_size(&vr);
            // Only these VRs have a 2-byte length; any other code, known or not, has the 4-byte
            // form (PS3.5 7.1.2), as the parser reads it. Treating an unknown code as short let a
            // 3 kB data set declare 2 GB (found by cargo fuzz, validate_instance).
            let short = matches!(
                &vr,
                b"AE"
                    | b"AS"
                    | b"AT"
                    | b"CS"
                    | b"DA"
                    | b"DS"
                    | b"DT"
                    | b"FD"
                    | b"FL"
                    | b"IS"
                    | b"LO"
                    | b"LT"
                    | b"PN"
                    | b"SH"
                    | b"SL"
                    | b"SS"
                    | b"ST"
                    | b"TM"
                    | b"UI"
                    | b"UL"
                    | b"US"
            );
            let long = !short;
            if long {
                if remaining < 12 {
                    return Err(format!("data set ends inside the header of {tag}"));
                }
                (le32(data, pos + 8), 12, &vr == b"SQ")
            } else {
                (u32::from(le16(data, pos + 6)), 8, false)
            }
        } else {
            use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
            let vr = dicom_dictionary_std::StandardDataDictionary
                .by_tag(tag)
                .map(|e| e.vr().relaxed());
            if let Some(vr) = vr {
                unit = fixed_value_size(vr.to_string().as_bytes());
            }
            (
                le32(data, pos + 4),
                8,
                vr.is_some_and(|vr| vr == dicom_core::VR::SQ),
            )
        };
        // The parser reads fixed-size values whole: a length that is no multiple of the value
        // size makes it read past the element and take later bytes for headers (an AT of length
        // 2 made it read "noduled " as a 2 GB length: cargo fuzz, validate_instance). PS3.5 6.2
        // forbids such lengths anyway.
        if unit > 1 && length != UNDEFINED && !(length as usize).is_multiple_of(unit) {
            return Err(format!(
                "element {tag} has length {length}, not a multiple of its value size {unit}"
            ));
        }
        pos += header;
        let remaining = data.len() - pos;
        if group == 0xFFFE {
            match element {
                // An item: its fragment is skipped, its elements are walked.
                0xE000 if in_fragments || length != UNDEFINED => {
                    if length as usize > remaining {
                        return Err(format!(
                            "an item declares {length} bytes, only {remaining} remain"
                        ));
                    }
                    if in_fragments {
                        pos += length as usize;
                    } else {
                        open.push(Some(pos + length as usize));
                    }
                }
                0xE0DD => {
                    if in_fragments {
                        in_fragments = false;
                    } else if open.last() == Some(&None) {
                        open.pop();
                    }
                }
                0xE000 => open.push(None),
                0xE00D => {
                    if open.last() == Some(&None) {
                        open.pop();
                    }
                }
                // Group FFFE holds only items and delimiters; the parser reads anything else as an
                // element of the declared length (a 43-byte data set asked for 4 GB: cargo fuzz).
                _ => return Err(format!("{tag} is neither an item nor a delimiter")),
            }
            continue;
        }
        let top_level_pixels = tag == tags::PIXEL_DATA && open.is_empty();
        if length == UNDEFINED {
            // A sequence (walked into) or encapsulated pixel data (fragments).
            in_fragments = !is_sequence && tag == tags::PIXEL_DATA;
            if is_sequence {
                open.push(None);
            } else if top_level_pixels {
                pixel_data = Some(PixelDataAt {
                    header_start,
                    length: None,
                    end: pos,
                });
            }
            continue;
        }
        if length as usize > remaining {
            return Err(format!(
                "element {tag} declares {length} bytes, only {remaining} remain"
            ));
        }
        if is_sequence {
            open.push(Some(pos + length as usize));
        } else {
            if top_level_pixels {
                pixel_data = Some(PixelDataAt {
                    header_start,
                    length: Some(length as usize),
                    end: pos + length as usize,
                });
            }
            pos += length as usize;
        }
    }
    Ok(pixel_data)
}

/// For native pixel data of `length` bytes: whether the header describes a monochrome,
/// single-frame, 8- or 16-bit image that those bytes fill, with every attribute the decoder needs
/// present. `false` sends the instance down the full decode of [`check_ct_pixels`], which then
/// names the problem (or accepts what this quick check is too strict for).
fn native_pixels_fit(obj: &InMemDicomObject, length: usize) -> bool {
    let number = |tag| dimse::u16_of(obj, tag);
    let (Some(rows), Some(columns), Some(bits)) = (
        number(tags::ROWS),
        number(tags::COLUMNS),
        number(tags::BITS_ALLOCATED),
    ) else {
        return false;
    };
    let frames = dimse::str_of(obj, tags::NUMBER_OF_FRAMES);
    let photometric = dimse::str_of(obj, tags::PHOTOMETRIC_INTERPRETATION);
    number(tags::SAMPLES_PER_PIXEL) == Some(1)
        && (frames.is_empty() || frames.trim() == "1")
        && matches!(photometric.trim(), "MONOCHROME1" | "MONOCHROME2")
        && (bits == 8 || bits == 16)
        && number(tags::BITS_STORED).is_some_and(|b| (1..=bits).contains(&b))
        && number(tags::HIGH_BIT).is_some()
        && matches!(number(tags::PIXEL_REPRESENTATION), Some(0 | 1))
        && rows > 0
        && columns > 0
        && length >= usize::from(rows) * usize::from(columns) * usize::from(bits / 8)
}

/// Decodes the pixels the way the series loader will, so a broken slice is refused now, with a
/// status the sender sees, instead of failing its whole series later.
fn check_ct_pixels(obj: &InMemDicomObject, transfer_syntax: &str) -> Result<(), Refused> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop::CT_IMAGE_STORAGE)
        .media_storage_sop_instance_uid(dimse::str_of(obj, tags::SOP_INSTANCE_UID))
        .transfer_syntax(transfer_syntax);
    let file = obj
        .clone()
        .with_meta(meta)
        .map_err(|e| refuse(status::CANNOT_UNDERSTAND, super::one_line(&e.to_string())))?;
    match read_object(&file, Path::new("(received)")) {
        Ok(ReadOutcome::Ct(_)) => Ok(()),
        Ok(ReadOutcome::CtWithoutPixels(_)) => Err(refuse(
            status::DATASET_MISMATCH,
            "CT image without pixel data",
        )),
        Ok(ReadOutcome::CtUndecodable { reason, .. }) => Err(refuse(
            status::CANNOT_UNDERSTAND,
            format!("pixel data cannot be decoded: {}", super::one_line(&reason)),
        )),
        Ok(ReadOutcome::OtherSopClass { sop_class_uid, .. }) => Err(refuse(
            status::DATASET_MISMATCH,
            format!("not a CT image ({sop_class_uid})"),
        )),
        Err(e) => Err(refuse(
            status::DATASET_MISMATCH,
            super::one_line(&e.to_string()),
        )),
    }
}

/// Stores a validated instance (both halves of [`crate::store::Store::put_instance`]), mapping store errors to
/// statuses.
pub async fn store(
    context: &super::Context,
    incoming: IncomingInstance,
) -> Result<PutOutcome, Refused> {
    match write(context, incoming, None).await?.0 {
        Written::Duplicate => Ok(PutOutcome::Duplicate),
        Written::New(record) => index(context, record)
            .await
            .map_err(|e| refuse(status::OUT_OF_RESOURCES, e)),
    }
}

/// The durable half of storing ([`crate::store::Store::write_instance_in`], into `slot` when there is one):
/// after it, Success may be answered. Refuses past the series cap. Runs the blocking fsync work
/// off the async runtime. Gives back the slot when it was not used.
async fn write(
    context: &super::Context,
    incoming: IncomingInstance,
    mut slot: Option<SpoolSlot>,
) -> Result<(Written, Option<SpoolSlot>), Refused> {
    let series_uid = incoming.keys.series_uid().to_string();
    if incoming.kind == InstanceKind::Image {
        if let Ok(Some(series)) = context.store.series(&series_uid) {
            if series.instance_count >= context.config.server.max_series_instances
                && context
                    .store
                    .instance(&incoming.sop_instance_uid)
                    .ok()
                    .flatten()
                    .is_none()
            {
                let reason = format!(
                    "series-too-large: more than {} instances",
                    context.config.server.max_series_instances
                );
                let _ = context.store.update_series(&series_uid, |s| {
                    s.reason = Some(reason.clone());
                });
                return Err(refuse(status::OUT_OF_RESOURCES, reason));
            }
        }
    }
    let store = context.store.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let written = store.write_instance_in(incoming, Some(&mut slot));
        written.map(|w| (w, slot))
    })
    .await
    .map_err(|e| refuse(status::OUT_OF_RESOURCES, e.to_string()))?;
    outcome.map_err(|e| match e {
        StoreError::DiskFull { .. } => refuse(status::OUT_OF_RESOURCES, e.to_string()),
        StoreError::Invalid(_) => refuse(status::DATASET_MISMATCH, e.to_string()),
        other => refuse(status::OUT_OF_RESOURCES, other.to_string()),
    })
}

/// The index half ([`crate::store::Store::index_instance`]) of a written instance.
async fn index(context: &super::Context, record: InstanceRecord) -> Result<PutOutcome, String> {
    let store = context.store.clone();
    tokio::task::spawn_blocking(move || store.index_instance(&record))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Handles one C-STORE-RQ.
pub async fn handle<S: Transport>(
    session: &mut Session<S>,
    mut message: Message,
) -> Result<(), DimseError> {
    let class = message.affected_sop_class();
    let instance = message.affected_sop_instance();
    let result = match (message.data.take(), message.oversized) {
        (_, true) => Err(refuse(
            status::OUT_OF_RESOURCES,
            format!(
                "instance larger than max_instance_mb = {}",
                session.context.config.server.max_instance_mb
            ),
        )),
        (None, false) => Err(refuse(
            status::CANNOT_UNDERSTAND,
            "C-STORE without a data set",
        )),
        (Some(data), false) => match session.transfer_syntax(message.pc_id) {
            None => Err(refuse(
                status::CANNOT_UNDERSTAND,
                "unknown presentation context",
            )),
            Some(ts) => match validate(data, &ts, &class, &instance) {
                Err(refused) => Err(refused),
                Ok(incoming) => {
                    let series = incoming.keys.series_uid().to_string();
                    if incoming.kind == InstanceKind::Image
                        && !session.series_sent.contains(&series)
                    {
                        session.context.begin_sending(&series);
                        session.series_sent.push(series);
                    }
                    {
                        let slot = session.spool_slot.take();
                        write(&session.context, incoming, slot)
                            .await
                            .map(|(written, slot)| {
                                session.spool_slot = slot;
                                written
                            })
                    }
                }
            },
        },
    };
    let code = match &result {
        Ok(_) => status::SUCCESS,
        Err(refused) => {
            tracing::warn!(
                sop_instance_uid = %instance,
                status = format!("{:#06x}", refused.status),
                reason = %refused.reason,
                "C-STORE refused"
            );
            session.context.metrics.instance("refused");
            refused.status
        }
    };
    // Success once the file is durable; the index is updated while the sender sends on (this
    // association reads its next message only after), which takes sled's latency off each
    // instance's round trip.
    let rsp = dimse::response(&message, command::C_STORE_RSP, code).encode();
    let sent = session.send_command(message.pc_id, rsp).await;
    // One trip to the blocking pool: index what was written, and make the spool file for the
    // next instance, which the sender is sending meanwhile. (Leaving it running while the next
    // message is read measured no faster: the two then compete for the same two cores.)
    let store = session.context.store.clone();
    let want_slot = session.spool_slot.is_none();
    let (outcome, slot) = tokio::task::spawn_blocking(move || {
        let outcome = match result {
            Err(_) => None,
            Ok(Written::Duplicate) => Some(Ok(PutOutcome::Duplicate)),
            Ok(Written::New(record)) => {
                Some(store.index_instance(&record).map_err(|e| e.to_string()))
            }
        };
        (
            outcome,
            want_slot.then(|| store.prepare_slot().ok()).flatten(),
        )
    })
    .await
    .unwrap_or_else(|e| (Some(Err(e.to_string())), None));
    if want_slot {
        session.spool_slot = slot;
    }
    match outcome {
        None => {}
        Some(Ok(PutOutcome::Stored)) => {
            tracing::debug!(sop_instance_uid = %instance, "stored");
            session.context.metrics.instance("stored");
        }
        Some(Ok(PutOutcome::Duplicate)) => {
            tracing::debug!(sop_instance_uid = %instance, "already stored");
            session.context.metrics.instance("duplicate");
        }
        Some(Err(error)) => tracing::error!(
            sop_instance_uid = %instance,
            %error,
            "stored file not indexed (the next start indexes it)"
        ),
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_transfer_syntax_registry::entries::{
        EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN,
    };

    fn slice_bytes(explicit: bool) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let spec = crate::phantom::PhantomSpec {
            slices: 8,
            rows: 32,
            columns: 32,
            ..crate::phantom::PhantomSpec::default()
        };
        let summary = crate::phantom::write_dataset(dir.path(), 1, 1, &spec).unwrap();
        let obj = dicom_object::open_file(&summary.series[0].files[0]).unwrap();
        let ts = if explicit {
            EXPLICIT_VR_LITTLE_ENDIAN.erased()
        } else {
            IMPLICIT_VR_LITTLE_ENDIAN.erased()
        };
        let mut out = Vec::new();
        obj.write_dataset_with_ts(&mut out, &ts).unwrap();
        out
    }

    #[test]
    fn declared_lengths_within_the_data_pass_and_absurd_ones_are_refused() {
        for explicit in [true, false] {
            let good = slice_bytes(explicit);
            assert_eq!(check_declared_lengths(&good, explicit), Ok(()));
            let mut absurd = good.clone();
            if explicit {
                absurd.extend_from_slice(&[0xE1, 0x7F, 0x10, 0x10, b'O', b'B', 0, 0]);
            } else {
                absurd.extend_from_slice(&[0xE1, 0x7F, 0x10, 0x10]);
            }
            absurd.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
            let error = check_declared_lengths(&absurd, explicit).unwrap_err();
            assert!(error.contains("declares"), "{error}");
            assert!(check_declared_lengths(&good[..good.len() - 3], explicit).is_err());
        }
    }

    #[test]
    fn a_group_fffe_tag_that_is_no_item_or_delimiter_is_refused() {
        // The cargo fuzz find, implicit VR: (FFFE,FFF7) declaring 0xFFFE4158 bytes.
        let data = [
            0x08, 0x00, 0x05, 0x00, 0x02, 0x00, 0x00, 0x00, b'I', b'S', 0xFE, 0xFF, 0xF7, 0xFF,
            0x58, 0x41, 0xFE, 0xFF, 0x00, 0x00,
        ];
        let error = check_declared_lengths(&data, false).unwrap_err();
        assert!(error.contains("neither an item nor a delimiter"), "{error}");
        let refused = validate(data.to_vec(), "1.2.840.10008.1.2", "", "").unwrap_err();
        assert_eq!(refused.status, status::CANNOT_UNDERSTAND);
    }

    #[test]
    fn an_unknown_vr_code_is_read_with_the_long_length_form() {
        // (0028,2110) with the made-up VR "CA": the parser reads a 4-byte length after two
        // reserved bytes, here 0x7FE03030 (2 GB) in a data set of a few kB (a cargo fuzz find).
        let mut data = slice_bytes(true);
        data.extend_from_slice(&[0x28, 0x00, 0x10, 0x21, b'C', b'A', 0x02, 0x00]);
        data.extend_from_slice(&0x7FE0_3030u32.to_le_bytes());
        data.extend_from_slice(&[0u8; 64]);
        let error = check_declared_lengths(&data, true).unwrap_err();
        assert!(error.contains("declares"), "{error}");
        let refused = validate(data, "1.2.840.10008.1.2.1", "", "").unwrap_err();
        assert_eq!(refused.status, status::CANNOT_UNDERSTAND);
    }

    /// Explicit VR little endian element with a 2-byte length.
    fn short_element(group: u16, element: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&group.to_le_bytes());
        out.extend_from_slice(&element.to_le_bytes());
        out.extend_from_slice(vr);
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(value);
        out
    }

    /// Explicit VR little endian element with the 4-byte length form.
    fn long_element(group: u16, element: u16, vr: &[u8; 2], length: u32, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&group.to_le_bytes());
        out.extend_from_slice(&element.to_le_bytes());
        out.extend_from_slice(vr);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&length.to_le_bytes());
        out.extend_from_slice(value);
        out
    }

    #[test]
    fn the_walk_finds_the_top_level_pixel_data_not_an_icon_s() {
        for explicit in [true, false] {
            let data = slice_bytes(explicit);
            let at = walk_declared_lengths(&data, explicit)
                .unwrap()
                .expect("a slice has pixel data");
            // 32×32 16-bit pixels that end the data set, header before them.
            assert_eq!(at.length, Some(32 * 32 * 2));
            assert_eq!(at.end, data.len());
            assert_eq!(
                &data[at.header_start..at.header_start + 4],
                &[0xE0, 0x7F, 0x10, 0x00]
            );
        }
        // An icon image sequence (undefined length, one undefined-length item) whose item holds a
        // Pixel Data element, then the image's own Pixel Data.
        let mut data = short_element(0x0008, 0x0060, b"CS", b"CT");
        data.extend(long_element(0x0088, 0x0200, b"SQ", 0xFFFF_FFFF, &[]));
        data.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        data.extend(long_element(0x7FE0, 0x0010, b"OB", 4, &[1, 2, 3, 4]));
        data.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        data.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        let image = data.len();
        data.extend(long_element(0x7FE0, 0x0010, b"OW", 8, &[0; 8]));
        let at = walk_declared_lengths(&data, true).unwrap().unwrap();
        assert_eq!(at.header_start, image);
        assert_eq!((at.length, at.end), (Some(8), data.len()));
        // The same icon in a defined-length sequence and item.
        let mut data = short_element(0x0008, 0x0060, b"CS", b"CT");
        let icon = long_element(0x7FE0, 0x0010, b"OB", 4, &[1, 2, 3, 4]);
        let mut item = vec![0xFE, 0xFF, 0x00, 0xE0];
        item.extend_from_slice(&(icon.len() as u32).to_le_bytes());
        item.extend(icon);
        data.extend(long_element(
            0x0088,
            0x0200,
            b"SQ",
            item.len() as u32,
            &item,
        ));
        let image = data.len();
        data.extend(long_element(0x7FE0, 0x0010, b"OW", 8, &[0; 8]));
        let at = walk_declared_lengths(&data, true).unwrap().unwrap();
        assert_eq!(at.header_start, image);
        // Only the icon's: no top-level pixel data.
        assert_eq!(walk_declared_lengths(&data[..image], true).unwrap(), None);
    }

    #[test]
    fn an_undefined_length_un_sequence_in_implicit_vr_is_refused_not_misread() {
        // PS3.5 6.2.2 encodes a private sequence sent as UN of undefined length in implicit VR.
        // dicom-rs 0.10 reads its items' elements as explicit VR, where this element's 4-byte
        // length "ABCD" becomes a 1 GB length: the parser fails, and the walk, modelling the
        // parser, refuses it first. The sender gets "cannot understand", never a misread slice.
        let mut data = short_element(0x0008, 0x0060, b"CS", b"CT");
        data.extend(long_element(0x0009, 0x1010, b"UN", 0xFFFF_FFFF, &[]));
        data.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        data.extend_from_slice(&[0x09, 0x00, 0x11, 0x10, 4, 0, 0, 0]);
        data.extend_from_slice(b"ABCD");
        data.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        data.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        data.extend(long_element(0x7FE0, 0x0010, b"OW", 8, &[0; 8]));
        let ts = TransferSyntaxRegistry.get("1.2.840.10008.1.2.1").unwrap();
        assert!(InMemDicomObject::read_dataset_with_ts(data.as_slice(), ts).is_err());
        let error = walk_declared_lengths(&data, true).unwrap_err();
        assert!(error.contains("declares"), "{error}");
        let refused = validate(data, "1.2.840.10008.1.2.1", "", "").unwrap_err();
        assert_eq!(refused.status, status::CANNOT_UNDERSTAND);
    }

    #[test]
    fn the_header_only_path_accepts_what_the_full_decode_accepts_and_no_more() {
        for explicit in [true, false] {
            let ts = if explicit {
                "1.2.840.10008.1.2.1"
            } else {
                "1.2.840.10008.1.2"
            };
            let data = slice_bytes(explicit);
            let fast = validate(data.clone(), ts, "", "").expect("a phantom slice is stored");
            // The same keys as a full parse gives.
            let full = InMemDicomObject::read_dataset_with_ts(
                data.as_slice(),
                TransferSyntaxRegistry.get(ts).unwrap(),
            )
            .unwrap();
            assert_eq!(fast.keys, keys_of_dataset(&full));
            assert!(check_ct_pixels(&full, ts).is_ok());
            // One pixel short (Rows × Columns × 2 - 2 bytes, declared so): refused, as the full
            // decode refuses it.
            let at = walk_declared_lengths(&data, explicit).unwrap().unwrap();
            let length = at.length.unwrap() - 2;
            let mut short = data[..at.end - 2].to_vec();
            let length_at = at.header_start + if explicit { 8 } else { 4 };
            short[length_at..length_at + 4].copy_from_slice(&(length as u32).to_le_bytes());
            let refused = validate(short, ts, "", "").unwrap_err();
            assert_eq!(
                refused.status,
                status::CANNOT_UNDERSTAND,
                "{}",
                refused.reason
            );
        }
    }

    #[test]
    fn a_fixed_size_value_of_the_wrong_length_is_refused() {
        // The cargo fuzz find: (0008,0060) declared AT with 2 bytes ("CT"); the parser reads 4,
        // then takes "noduled " for a 2 GB length.
        let mut data = short_element(0x0008, 0x0060, b"AT", b"CT");
        data.extend(short_element(0x0008, 0x0070, b"LO", b"noduled phantom "));
        let error = check_declared_lengths(&data, true).unwrap_err();
        assert!(error.contains("not a multiple"), "{error}");
        let refused = validate(data, "1.2.840.10008.1.2.1", "", "").unwrap_err();
        assert_eq!(refused.status, status::CANNOT_UNDERSTAND);
        // Implicit VR: the dictionary's VR (Rows is US) counts.
        let mut implicit = vec![0x28, 0x00, 0x10, 0x00, 3, 0, 0, 0, 1, 2, 3];
        assert!(check_declared_lengths(&implicit, false).is_err());
        implicit[4] = 2;
        implicit.pop();
        assert_eq!(check_declared_lengths(&implicit, false), Ok(()));
    }
}
