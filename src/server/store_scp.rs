//! C-STORE SCP (PS3.4 Annex B): validate, store durably, then answer.
//!
//! The answer is Success only after [`Store::put_instance`] has fsynced the file and flushed the
//! index, so a scanner that deletes what we acknowledged loses nothing. Refusals carry the
//! standard status and a one-line reason in the log (UIDs, never patient names):
//! 0xA700 out of resources (too big, disk watermark, series cap), 0xA900 data set does not match
//! the SOP class (not a CT, no pixel data, UIDs missing or not matching the command), 0xC000 cannot
//! understand (unparseable, undecodable pixels).

use super::association::{sop, Session};
use super::dimse::{self, command, status, DimseError, Message};
use crate::dicom::instance::{read_object, ReadOutcome};
use crate::store::{keys_of_dataset, IncomingInstance, InstanceKind, PutOutcome, StoreError};
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
    let obj = InMemDicomObject::read_dataset_with_ts(dataset.as_slice(), ts).map_err(|e| {
        refuse(
            status::CANNOT_UNDERSTAND,
            format!("unparseable data set: {}", super::one_line(&e.to_string())),
        )
    })?;
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
        check_ct_pixels(&obj, transfer_syntax)?;
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

/// Stores a validated instance, mapping store errors to statuses. Runs the blocking fsync work
/// off the async runtime.
pub async fn store(
    context: &super::Context,
    incoming: IncomingInstance,
) -> Result<PutOutcome, Refused> {
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
    let outcome = tokio::task::spawn_blocking(move || store.put_instance(incoming))
        .await
        .map_err(|e| refuse(status::OUT_OF_RESOURCES, e.to_string()))?;
    outcome.map_err(|e| match e {
        StoreError::DiskFull { .. } => refuse(status::OUT_OF_RESOURCES, e.to_string()),
        StoreError::Invalid(_) => refuse(status::DATASET_MISMATCH, e.to_string()),
        other => refuse(status::OUT_OF_RESOURCES, other.to_string()),
    })
}

/// Handles one C-STORE-RQ.
pub async fn handle(session: &mut Session, message: Message) -> Result<(), DimseError> {
    let class = message.affected_sop_class();
    let instance = message.affected_sop_instance();
    let result = match (&message.data, message.oversized) {
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
        (Some(_), false) => match session.transfer_syntax(message.pc_id) {
            None => Err(refuse(
                status::CANNOT_UNDERSTAND,
                "unknown presentation context",
            )),
            Some(ts) => {
                let data = message.data.clone().unwrap_or_default();
                match validate(data, &ts, &class, &instance) {
                    Err(refused) => Err(refused),
                    Ok(incoming) => {
                        let series = incoming.keys.series_uid().to_string();
                        if incoming.kind == InstanceKind::Image
                            && !session.series_sent.contains(&series)
                        {
                            session.context.begin_sending(&series);
                            session.series_sent.push(series);
                        }
                        store(&session.context, incoming).await
                    }
                }
            }
        },
    };
    let code = match &result {
        Ok(PutOutcome::Stored) => {
            tracing::debug!(sop_instance_uid = %instance, "stored");
            session.context.metrics.instance("stored");
            status::SUCCESS
        }
        Ok(PutOutcome::Duplicate) => {
            tracing::debug!(sop_instance_uid = %instance, "already stored");
            session.context.metrics.instance("duplicate");
            status::SUCCESS
        }
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
    let rsp = dimse::response(&message, command::C_STORE_RSP, code).encode();
    session.send_command(message.pc_id, rsp).await
}
