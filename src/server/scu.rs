//! Sending stored instances to another AE (C-STORE SCU): C-MOVE destinations and auto-forward.
//!
//! One association per call, proposing each SOP class with the stored transfer syntax first and
//! the two uncompressed ones after it, so any peer that takes Little Endian gets our files.
//! [`dataset_in`] re-encodes between uncompressed syntaxes; compressed files go out as stored.

use super::dimse::{self, command, status, CommandBuilder, Event, Reassembler};
use crate::config::Destination;
use crate::store::{InstanceRecord, Store};
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::client::{AsyncClientAssociation, ClientAssociationOptions};
use dicom_ul::pdu::Pdu;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpStream;

const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";

/// Sub-operation counts of a retrieve or forward.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub completed: u16,
    pub failed: u16,
    pub warning: u16,
}

/// One Part 10 file to send: a stored instance, or a file from disk (the demo's phantom).
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub transfer_syntax: String,
    pub path: PathBuf,
}

impl Outgoing {
    pub fn from_record(store: &Store, record: &InstanceRecord) -> Outgoing {
        Outgoing {
            sop_class_uid: record.sop_class_uid.clone(),
            sop_instance_uid: record.sop_instance_uid.clone(),
            transfer_syntax: record.transfer_syntax.clone(),
            path: store.instance_path(record),
        }
    }

    /// Reads the identity of a Part 10 file from its meta group.
    pub fn from_file(path: &Path) -> Result<Outgoing, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut reader = std::io::BufReader::new(file);
        let mut preamble = [0u8; 128];
        std::io::Read::read_exact(&mut reader, &mut preamble)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let meta = dicom_object::FileMetaTable::from_reader(reader)
            .map_err(|e| format!("{}: {}", path.display(), super::one_line(&e.to_string())))?;
        let trim = |s: &str| s.trim_end_matches('\0').to_string();
        Ok(Outgoing {
            sop_class_uid: trim(meta.media_storage_sop_class_uid()),
            sop_instance_uid: trim(meta.media_storage_sop_instance_uid()),
            transfer_syntax: trim(meta.transfer_syntax()),
            path: path.to_path_buf(),
        })
    }
}

/// Reads a file's data set and returns it encoded in `target_ts`.
pub fn dataset_in(item: &Outgoing, target_ts: &str) -> Result<Vec<u8>, String> {
    let path = &item.path;
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let start = dataset_offset(&bytes).ok_or("file has no valid file meta group")?;
    let stored_ts = item.transfer_syntax.as_str();
    if stored_ts == target_ts {
        return Ok(bytes[start..].to_vec());
    }
    let uncompressed = |ts: &str| ts == EXPLICIT_LE || ts == IMPLICIT_LE;
    if !(uncompressed(stored_ts) && uncompressed(target_ts)) {
        return Err(format!("cannot convert {stored_ts} to {target_ts}"));
    }
    let from = TransferSyntaxRegistry
        .get(stored_ts)
        .ok_or("unknown stored syntax")?;
    let to = TransferSyntaxRegistry
        .get(target_ts)
        .ok_or("unknown target syntax")?;
    let obj = InMemDicomObject::read_dataset_with_ts(&bytes[start..], from)
        .map_err(|e| super::one_line(&e.to_string()))?;
    let mut out = Vec::with_capacity(bytes.len());
    obj.write_dataset_with_ts(&mut out, to)
        .map_err(|e| super::one_line(&e.to_string()))?;
    Ok(out)
}

/// Offset of the data set in a Part 10 file: after preamble, magic and the meta group, whose
/// length (0002,0000) comes first.
pub fn dataset_offset(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < 144 || &bytes[128..132] != b"DICM" {
        return None;
    }
    let head = &bytes[132..144];
    if head[0..4] != [0x02, 0x00, 0x00, 0x00] || &head[4..6] != b"UL" {
        return None;
    }
    let group_length = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
    let start = 144usize.checked_add(group_length)?;
    (start <= bytes.len()).then_some(start)
}

/// The C-STORE-RQ command for a sub-operation.
pub fn store_request(
    message_id: u16,
    record: &Outgoing,
    move_originator: Option<(&str, u16)>,
) -> Vec<u8> {
    let mut builder = CommandBuilder::new(command::C_STORE_RQ)
        .us(tags::MESSAGE_ID, message_id)
        .us(tags::PRIORITY, 0)
        .ui(tags::AFFECTED_SOP_CLASS_UID, &record.sop_class_uid)
        .ui(tags::AFFECTED_SOP_INSTANCE_UID, &record.sop_instance_uid)
        .with_dataset();
    if let Some((ae, id)) = move_originator {
        builder = builder
            .ae(tags::MOVE_ORIGINATOR_APPLICATION_ENTITY_TITLE, ae)
            .us(tags::MOVE_ORIGINATOR_MESSAGE_ID, id);
    }
    builder.encode()
}

/// Classifies a C-STORE-RSP status into the counts.
pub fn tally(counts: &mut Counts, code: u16) {
    match code {
        status::SUCCESS => counts.completed += 1,
        0xB000 | 0xB007 | 0xB006 => counts.warning += 1,
        _ => counts.failed += 1,
    }
}

impl dimse::PduSource for AsyncClientAssociation<TcpStream> {
    async fn receive_pdu(&mut self) -> Result<Pdu, dicom_ul::association::Error> {
        self.receive().await
    }
}

/// Sends `instances` to `destination` over one new association, calling as `our_ae`.
pub async fn send(
    our_ae: &str,
    destination: &Destination,
    instances: &[Outgoing],
    move_originator: Option<(&str, u16)>,
    timeout: Duration,
) -> Result<Counts, String> {
    let mut options = ClientAssociationOptions::new()
        .calling_ae_title(our_ae.to_string())
        .called_ae_title(destination.ae_title.clone())
        .read_timeout(timeout)
        .write_timeout(timeout)
        .connection_timeout(timeout);
    let mut classes: Vec<(String, String)> = Vec::new();
    for record in instances {
        let pair = (record.sop_class_uid.clone(), record.transfer_syntax.clone());
        if !classes.contains(&pair) {
            classes.push(pair);
        }
    }
    for (class, ts) in &classes {
        let mut syntaxes = vec![ts.clone()];
        for extra in [EXPLICIT_LE, IMPLICIT_LE] {
            if ts != extra {
                syntaxes.push(extra.to_string());
            }
        }
        options = options.with_presentation_context(class.clone(), syntaxes);
    }
    let address = format!("{}:{}", destination.host, destination.port);
    let mut association = options
        .establish_async(address.as_str())
        .await
        .map_err(|e| {
            format!(
                "association with {} failed: {}",
                destination.ae_title,
                super::one_line(&e.to_string())
            )
        })?;
    let _ = association.inner_stream().set_nodelay(true);
    let accepted: Vec<(u8, String, String)> = association
        .presentation_contexts()
        .iter()
        .filter(|pc| pc.reason == dicom_ul::pdu::PresentationContextResultReason::Acceptance)
        .map(|pc| {
            (
                pc.id,
                pc.abstract_syntax.trim_end_matches('\0').to_string(),
                pc.transfer_syntax.trim_end_matches('\0').to_string(),
            )
        })
        .collect();
    let reassembler = Reassembler {
        limit: 1 << 20,
        idle: timeout,
        dimse: timeout,
    };
    let mut counts = Counts::default();
    for (index, record) in instances.iter().enumerate() {
        let Some((pc_id, _, ts)) = accepted.iter().find(|(_, class, ts)| {
            *class == record.sop_class_uid
                && (*ts == record.transfer_syntax || *ts == EXPLICIT_LE || *ts == IMPLICIT_LE)
        }) else {
            counts.failed += 1;
            continue;
        };
        let data = match dataset_in(record, ts) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(sop_instance_uid = %record.sop_instance_uid, error = %e, "cannot send instance");
                counts.failed += 1;
                continue;
            }
        };
        let id = (index % 0xFFFF) as u16 + 1;
        association
            .send(&dimse::command_pdu(
                *pc_id,
                store_request(id, record, move_originator),
            ))
            .await
            .map_err(|e| super::one_line(&e.to_string()))?;
        {
            use tokio::io::AsyncWriteExt;
            let mut writer = association.send_pdata(*pc_id);
            writer.write_all(&data).await.map_err(|e| e.to_string())?;
            writer.finish().await.map_err(|e| e.to_string())?;
        }
        match reassembler
            .next(&mut association)
            .await
            .map_err(|e| e.to_string())?
        {
            Event::Message(rsp) => {
                let code = dimse::u16_of(&rsp.command, tags::STATUS).unwrap_or(0xC000);
                tally(&mut counts, code);
            }
            _ => return Err("destination left during the transfer".into()),
        }
    }
    let _ = association.release().await;
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_offset_skips_preamble_and_meta() {
        let mut bytes = vec![0u8; 128];
        bytes.extend_from_slice(b"DICM");
        bytes.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0, 10, 0, 0, 0]);
        bytes.extend_from_slice(&[7u8; 10]);
        bytes.extend_from_slice(&[1, 2, 3]);
        assert_eq!(dataset_offset(&bytes), Some(154));
        assert_eq!(&bytes[154..], &[1, 2, 3]);
        assert_eq!(dataset_offset(&bytes[..100]), None);
    }
}
