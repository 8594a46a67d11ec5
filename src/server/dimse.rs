//! DIMSE messages over an association: reassembling P-DATA fragments into (command, data set)
//! pairs, and encoding command sets (PS3.7 §9–10) for responses and sub-operations.
//!
//! Command sets are always Implicit VR Little Endian with a leading CommandGroupLength; data sets
//! travel in the presentation context's transfer syntax and are kept as bytes here — the services
//! decide whether to parse them. A data set over the size limit is drained and dropped, so one
//! oversized instance costs the sender a failure status, not us our memory.

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
use std::time::Duration;

/// Command Field values (PS3.7 E.1).
pub mod command {
    pub const C_STORE_RQ: u16 = 0x0001;
    pub const C_STORE_RSP: u16 = 0x8001;
    pub const C_GET_RQ: u16 = 0x0010;
    pub const C_GET_RSP: u16 = 0x8010;
    pub const C_FIND_RQ: u16 = 0x0020;
    pub const C_FIND_RSP: u16 = 0x8020;
    pub const C_MOVE_RQ: u16 = 0x0021;
    pub const C_MOVE_RSP: u16 = 0x8021;
    pub const C_ECHO_RQ: u16 = 0x0030;
    pub const C_ECHO_RSP: u16 = 0x8030;
    pub const C_CANCEL_RQ: u16 = 0x0FFF;
}

/// Status codes used here (PS3.4 Annexes B and C, PS3.7 C).
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    pub const PENDING: u16 = 0xFF00;
    pub const CANCEL: u16 = 0xFE00;
    pub const WARNING_SUBOPS_FAILED: u16 = 0xB000;
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    pub const OUT_OF_RESOURCES_SUBOPS: u16 = 0xA702;
    pub const MOVE_DESTINATION_UNKNOWN: u16 = 0xA801;
    pub const DATASET_MISMATCH: u16 = 0xA900;
    pub const IDENTIFIER_MISMATCH: u16 = 0xA900;
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
    pub const UNABLE_TO_PROCESS: u16 = 0xC001;
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
}

/// CommandDataSetType value meaning "no data set follows".
pub const NO_DATASET: u16 = 0x0101;

/// Errors on the wire: each ends its association, never the listener.
#[derive(Debug, thiserror::Error)]
pub enum DimseError {
    #[error("association: {0}")]
    Ul(String),
    #[error("timed out waiting for the peer ({0:?})")]
    Timeout(Duration),
    #[error("malformed command set: {0}")]
    BadCommand(String),
    #[error("protocol violation: {0}")]
    Protocol(String),
}

impl From<dicom_ul::association::Error> for DimseError {
    fn from(e: dicom_ul::association::Error) -> Self {
        DimseError::Ul(crate::server::one_line(&e.to_string()))
    }
}

/// One received DIMSE message.
#[derive(Debug)]
pub struct Message {
    pub pc_id: u8,
    pub command: InMemDicomObject,
    /// The data set bytes, if one followed.
    pub data: Option<Vec<u8>>,
    /// True when the data set exceeded the limit and was dropped.
    pub oversized: bool,
}

impl Message {
    pub fn command_field(&self) -> u16 {
        u16_of(&self.command, tags::COMMAND_FIELD).unwrap_or(0)
    }
    pub fn message_id(&self) -> u16 {
        u16_of(&self.command, tags::MESSAGE_ID).unwrap_or(0)
    }
    pub fn affected_sop_class(&self) -> String {
        str_of(&self.command, tags::AFFECTED_SOP_CLASS_UID)
    }
    pub fn affected_sop_instance(&self) -> String {
        str_of(&self.command, tags::AFFECTED_SOP_INSTANCE_UID)
    }
}

/// What the peer did next.
#[derive(Debug)]
pub enum Event {
    Message(Box<Message>),
    Release,
    Abort,
}

/// Reads PDUs until a whole message (or release/abort) has arrived. `receive` yields the next
/// PDU; `limit` bounds the data set size; `idle` bounds the wait for a message to start and
/// `dimse` the wait for each later fragment.
pub struct Reassembler {
    pub limit: usize,
    pub idle: Duration,
    pub dimse: Duration,
}

/// Anything PDUs can be read from (an association; a scripted list in tests).
pub trait PduSource {
    fn receive_pdu(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Pdu, dicom_ul::association::Error>> + Send;
}

impl Reassembler {
    pub async fn next<S: PduSource>(&self, source: &mut S) -> Result<Event, DimseError> {
        let mut command_bytes: Vec<u8> = Vec::new();
        let mut command: Option<InMemDicomObject> = None;
        let mut expects_data = false;
        // Data set fragments, joined once at the end: one allocation of the exact size instead of
        // a growing buffer copied at every doubling.
        let mut data: Vec<Vec<u8>> = Vec::new();
        let mut data_len = 0usize;
        let mut oversized = false;
        let mut started = false;
        loop {
            let wait = if started { self.dimse } else { self.idle };
            let pdu = tokio::time::timeout(wait, source.receive_pdu())
                .await
                .map_err(|_| DimseError::Timeout(wait))??;
            let values = match pdu {
                Pdu::PData { data } => data,
                Pdu::ReleaseRQ => return Ok(Event::Release),
                Pdu::AbortRQ { .. } => return Ok(Event::Abort),
                other => {
                    return Err(DimseError::Protocol(format!(
                        "unexpected PDU {}",
                        pdu_name(&other)
                    )))
                }
            };
            started = true;
            for PDataValue {
                presentation_context_id,
                value_type,
                is_last,
                data: fragment,
            } in values
            {
                let pc_id = presentation_context_id;
                match value_type {
                    PDataValueType::Command => {
                        if command.is_some() {
                            return Err(DimseError::Protocol(
                                "command fragment after the command ended".into(),
                            ));
                        }
                        if command_bytes.len() + fragment.len() > 1 << 20 {
                            return Err(DimseError::BadCommand("command set over 1 MB".into()));
                        }
                        command_bytes.extend_from_slice(&fragment);
                        if is_last {
                            let obj = InMemDicomObject::read_dataset_with_ts(
                                command_bytes.as_slice(),
                                &IMPLICIT_VR_LITTLE_ENDIAN.erased(),
                            )
                            .map_err(|e| {
                                DimseError::BadCommand(crate::server::one_line(&e.to_string()))
                            })?;
                            expects_data = u16_of(&obj, tags::COMMAND_DATA_SET_TYPE)
                                .map(|t| t != NO_DATASET)
                                .unwrap_or(false);
                            if !expects_data {
                                return Ok(Event::Message(Box::new(Message {
                                    pc_id,
                                    command: obj,
                                    data: None,
                                    oversized: false,
                                })));
                            }
                            command = Some(obj);
                        }
                    }
                    PDataValueType::Data => {
                        if command.is_none() || !expects_data {
                            return Err(DimseError::Protocol(
                                "data set fragment before its command".into(),
                            ));
                        }
                        if !oversized && data_len + fragment.len() > self.limit {
                            oversized = true;
                            data = Vec::new();
                        }
                        if !oversized {
                            data_len += fragment.len();
                            data.push(fragment);
                        }
                        if is_last {
                            let joined = (!oversized).then(|| {
                                if data.len() == 1 {
                                    data.pop().unwrap_or_default()
                                } else {
                                    data.concat()
                                }
                            });
                            return Ok(Event::Message(Box::new(Message {
                                pc_id,
                                command: command.take().unwrap_or_else(InMemDicomObject::new_empty),
                                data: joined,
                                oversized,
                            })));
                        }
                    }
                }
            }
        }
    }
}

fn pdu_name(pdu: &Pdu) -> &'static str {
    match pdu {
        Pdu::AssociationRQ(_) => "A-ASSOCIATE-RQ",
        Pdu::AssociationAC(_) => "A-ASSOCIATE-AC",
        Pdu::AssociationRJ(_) => "A-ASSOCIATE-RJ",
        Pdu::PData { .. } => "P-DATA-TF",
        Pdu::ReleaseRQ => "A-RELEASE-RQ",
        Pdu::ReleaseRP => "A-RELEASE-RP",
        Pdu::AbortRQ { .. } => "A-ABORT",
        Pdu::Unknown { .. } => "unknown",
    }
}

/// An unsigned-short command element.
pub fn u16_of(obj: &InMemDicomObject, tag: Tag) -> Option<u16> {
    obj.element(tag).ok()?.to_int::<u16>().ok()
}

/// A string element, trimmed of padding ("" when absent).
pub fn str_of(obj: &InMemDicomObject, tag: Tag) -> String {
    obj.element(tag)
        .ok()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
        .unwrap_or_default()
}

/// Builds a command set and encodes it (Implicit VR LE, with CommandGroupLength first).
pub struct CommandBuilder {
    obj: InMemDicomObject,
}

impl CommandBuilder {
    pub fn new(command_field: u16) -> Self {
        let mut obj = InMemDicomObject::new_empty();
        obj.put(DataElement::new(
            tags::COMMAND_FIELD,
            VR::US,
            PrimitiveValue::from(command_field),
        ));
        CommandBuilder { obj }.us(tags::COMMAND_DATA_SET_TYPE, NO_DATASET)
    }

    pub fn us(mut self, tag: Tag, value: u16) -> Self {
        self.obj
            .put(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
        self
    }

    pub fn ui(mut self, tag: Tag, value: &str) -> Self {
        self.obj
            .put(DataElement::new(tag, VR::UI, PrimitiveValue::from(value)));
        self
    }

    pub fn ae(mut self, tag: Tag, value: &str) -> Self {
        self.obj
            .put(DataElement::new(tag, VR::AE, PrimitiveValue::from(value)));
        self
    }

    pub fn lo(mut self, tag: Tag, value: &str) -> Self {
        self.obj
            .put(DataElement::new(tag, VR::LO, PrimitiveValue::from(value)));
        self
    }

    /// Marks that a data set follows the command.
    pub fn with_dataset(self) -> Self {
        self.us(tags::COMMAND_DATA_SET_TYPE, 0x0000)
    }

    /// Encodes the command set.
    pub fn encode(self) -> Vec<u8> {
        let ts = IMPLICIT_VR_LITTLE_ENDIAN.erased();
        let mut body = Vec::new();
        // Writing an in-memory command object cannot fail.
        let _ = self.obj.write_dataset_with_ts(&mut body, &ts);
        let mut out = Vec::with_capacity(body.len() + 12);
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&4u32.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }
}

/// A response to `request`: same SOP class/instance echoed, message ID answered, status set.
pub fn response(request: &Message, command_field: u16, status_code: u16) -> CommandBuilder {
    let mut builder = CommandBuilder::new(command_field)
        .us(tags::MESSAGE_ID_BEING_RESPONDED_TO, request.message_id())
        .us(tags::STATUS, status_code);
    let class = request.affected_sop_class();
    if !class.is_empty() {
        builder = builder.ui(tags::AFFECTED_SOP_CLASS_UID, &class);
    }
    let instance = request.affected_sop_instance();
    if !instance.is_empty() {
        builder = builder.ui(tags::AFFECTED_SOP_INSTANCE_UID, &instance);
    }
    builder
}

/// A P-DATA PDU carrying one whole command set.
pub fn command_pdu(pc_id: u8, command: Vec<u8>) -> Pdu {
    Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc_id,
            value_type: PDataValueType::Command,
            is_last: true,
            data: command,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_round_trips_with_group_length() {
        let bytes = CommandBuilder::new(command::C_ECHO_RSP)
            .us(tags::MESSAGE_ID_BEING_RESPONDED_TO, 7)
            .us(tags::STATUS, status::SUCCESS)
            .ui(tags::AFFECTED_SOP_CLASS_UID, "1.2.840.10008.1.1")
            .encode();
        let obj = InMemDicomObject::read_dataset_with_ts(
            bytes.as_slice(),
            &IMPLICIT_VR_LITTLE_ENDIAN.erased(),
        )
        .unwrap();
        let group_length = obj
            .element(tags::COMMAND_GROUP_LENGTH)
            .unwrap()
            .to_int::<u32>()
            .unwrap();
        assert_eq!(group_length as usize, bytes.len() - 12);
        assert_eq!(u16_of(&obj, tags::COMMAND_FIELD), Some(command::C_ECHO_RSP));
        assert_eq!(u16_of(&obj, tags::MESSAGE_ID_BEING_RESPONDED_TO), Some(7));
        assert_eq!(u16_of(&obj, tags::COMMAND_DATA_SET_TYPE), Some(NO_DATASET));
    }

    #[tokio::test]
    async fn fragments_reassemble_and_oversized_data_is_dropped() {
        let command = CommandBuilder::new(command::C_STORE_RQ)
            .us(tags::MESSAGE_ID, 3)
            .with_dataset()
            .encode();
        let (first, second) = command.split_at(10);
        let pdus = vec![
            Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: 1,
                    value_type: PDataValueType::Command,
                    is_last: false,
                    data: first.to_vec(),
                }],
            },
            Pdu::PData {
                data: vec![
                    PDataValue {
                        presentation_context_id: 1,
                        value_type: PDataValueType::Command,
                        is_last: true,
                        data: second.to_vec(),
                    },
                    PDataValue {
                        presentation_context_id: 1,
                        value_type: PDataValueType::Data,
                        is_last: false,
                        data: vec![1; 60],
                    },
                ],
            },
            Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: 1,
                    value_type: PDataValueType::Data,
                    is_last: true,
                    data: vec![2; 60],
                }],
            },
        ]
        .into_iter();
        struct Scripted(std::vec::IntoIter<Pdu>);
        impl PduSource for Scripted {
            async fn receive_pdu(&mut self) -> Result<Pdu, dicom_ul::association::Error> {
                Ok(self.0.next().expect("the test scripts enough PDUs"))
            }
        }
        let mut source = Scripted(pdus);
        let reassembler = Reassembler {
            limit: 100,
            idle: Duration::from_secs(1),
            dimse: Duration::from_secs(1),
        };
        let event = reassembler.next(&mut source).await;
        match event {
            Ok(Event::Message(m)) => {
                assert_eq!(m.message_id(), 3);
                assert!(m.oversized);
                assert!(m.data.is_none());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
