//! C-FIND SCP (PS3.4 Annex C) over everything stored: source images while retained, and reports.
//!
//! Matching follows C.2.2.2: an empty key is universal (returned, not matched); UI keys match a
//! backslash-separated list; DA/TM keys match a single value or a `from-to` range; `*` and `?`
//! are wildcards (case-insensitive for person names); everything else is single-value equality.
//! Entities are built by grouping instance records at the requested level (PATIENT, STUDY,
//! SERIES, IMAGE), with the counts and modalities C.6 defines computed on the fly.
//! The same matcher selects what C-GET and C-MOVE send ([`matching_instances`]).

use super::association::{Session, Transport};
use super::dimse::{self, command, status, DimseError, Message};
use crate::store::{records::tag_key, InstanceRecord};
use dicom_core::header::Header;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use std::collections::BTreeMap;

/// Query/Retrieve levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Patient,
    Study,
    Series,
    Image,
}

impl Level {
    pub fn parse(text: &str) -> Option<Level> {
        match text.trim() {
            "PATIENT" => Some(Level::Patient),
            "STUDY" => Some(Level::Study),
            "SERIES" => Some(Level::Series),
            "IMAGE" => Some(Level::Image),
            _ => None,
        }
    }

    /// The attribute that identifies an entity at this level.
    fn unique_key(self) -> Tag {
        match self {
            Level::Patient => tags::PATIENT_ID,
            Level::Study => tags::STUDY_INSTANCE_UID,
            Level::Series => tags::SERIES_INSTANCE_UID,
            Level::Image => tags::SOP_INSTANCE_UID,
        }
    }
}

/// One key of a query: tag, VR and the requested value ("" = universal).
#[derive(Debug, Clone)]
pub struct QueryKey {
    pub tag: Tag,
    pub vr: VR,
    pub value: String,
}

/// A parsed C-FIND/C-GET/C-MOVE identifier.
#[derive(Debug, Clone)]
pub struct Query {
    pub level: Level,
    pub keys: Vec<QueryKey>,
}

impl Query {
    /// Reads the identifier data set (`data` in `transfer_syntax`).
    pub fn parse(data: &[u8], transfer_syntax: &str) -> Result<Query, String> {
        let ts = TransferSyntaxRegistry
            .get(transfer_syntax)
            .ok_or_else(|| format!("unknown transfer syntax {transfer_syntax}"))?;
        let obj = InMemDicomObject::read_dataset_with_ts(data, ts)
            .map_err(|e| super::one_line(&e.to_string()))?;
        Query::from_object(&obj)
    }

    pub fn from_object(obj: &InMemDicomObject) -> Result<Query, String> {
        let level_text = dimse::str_of(obj, tags::QUERY_RETRIEVE_LEVEL);
        let level = Level::parse(&level_text).ok_or_else(|| {
            format!("QueryRetrieveLevel {level_text:?} is not PATIENT, STUDY, SERIES or IMAGE")
        })?;
        let mut keys = Vec::new();
        for element in obj.iter() {
            let tag = element.tag();
            if tag == tags::QUERY_RETRIEVE_LEVEL
                || tag == tags::SPECIFIC_CHARACTER_SET
                || tag.group() == 0x0002
            {
                continue;
            }
            let value = element
                .to_str()
                .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_string())
                .unwrap_or_default();
            keys.push(QueryKey {
                tag,
                vr: element.vr(),
                value,
            });
        }
        Ok(Query { level, keys })
    }
}

/// Whether `candidate` (an entity's value) matches the query `pattern` of `vr`.
pub fn matches(vr: VR, pattern: &str, candidate: &str) -> bool {
    if pattern.is_empty() || pattern == "*" {
        return true;
    }
    match vr {
        VR::UI => pattern.split('\\').any(|uid| uid.trim() == candidate),
        VR::DA | VR::TM | VR::DT if pattern.contains('-') => {
            let (from, to) = pattern.split_once('-').unwrap_or((pattern, pattern));
            let c = candidate.trim();
            !c.is_empty()
                && (from.is_empty() || c >= from.trim())
                && (to.is_empty() || c[..c.len().min(to.trim().len())] <= *to.trim())
        }
        VR::PN => wildcard(&pattern.to_lowercase(), &candidate.to_lowercase()),
        _ => {
            if pattern.contains(['*', '?']) {
                wildcard(pattern, candidate)
            } else {
                pattern == candidate
            }
        }
    }
}

/// `*` matches any run, `?` one character.
fn wildcard(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// One entity at the query level: its attribute values (patient/study/series/image keys and the
/// computed counts).
pub type Entity = BTreeMap<u32, String>;

/// Groups instance records into entities at `level`.
pub fn entities(level: Level, instances: &[InstanceRecord]) -> Vec<Entity> {
    let mut groups: BTreeMap<String, Vec<&InstanceRecord>> = BTreeMap::new();
    for record in instances {
        let key = record.keys.get(level.unique_key()).to_string();
        groups.entry(key).or_default().push(record);
    }
    groups
        .into_values()
        .map(|members| {
            let mut entity: Entity = members[0].keys.0.clone();
            let count = |tag| {
                members
                    .iter()
                    .map(move |m: &&InstanceRecord| m.keys.get(tag).to_string())
            };
            match level {
                Level::Patient => {
                    let studies: std::collections::BTreeSet<_> =
                        count(tags::STUDY_INSTANCE_UID).collect();
                    entity.insert(
                        tag_key(tags::NUMBER_OF_PATIENT_RELATED_STUDIES),
                        studies.len().to_string(),
                    );
                    entity.insert(
                        tag_key(tags::NUMBER_OF_PATIENT_RELATED_INSTANCES),
                        members.len().to_string(),
                    );
                }
                Level::Study => {
                    let series: std::collections::BTreeSet<_> =
                        count(tags::SERIES_INSTANCE_UID).collect();
                    let modalities: std::collections::BTreeSet<_> =
                        count(tags::MODALITY).filter(|m| !m.is_empty()).collect();
                    entity.insert(
                        tag_key(tags::NUMBER_OF_STUDY_RELATED_SERIES),
                        series.len().to_string(),
                    );
                    entity.insert(
                        tag_key(tags::NUMBER_OF_STUDY_RELATED_INSTANCES),
                        members.len().to_string(),
                    );
                    entity.insert(
                        tag_key(tags::MODALITIES_IN_STUDY),
                        modalities.into_iter().collect::<Vec<_>>().join("\\"),
                    );
                }
                Level::Series => {
                    entity.insert(
                        tag_key(tags::NUMBER_OF_SERIES_RELATED_INSTANCES),
                        members.len().to_string(),
                    );
                }
                Level::Image => {}
            }
            entity
        })
        .collect()
}

/// Whether an entity matches every key of the query.
pub fn entity_matches(query: &Query, entity: &Entity) -> bool {
    query.keys.iter().all(|key| {
        let value = entity
            .get(&tag_key(key.tag))
            .map(String::as_str)
            .unwrap_or("");
        if key.tag == tags::MODALITIES_IN_STUDY && !key.value.is_empty() {
            return value.split('\\').any(|m| matches(VR::CS, &key.value, m));
        }
        if key.value.is_empty() {
            return true;
        }
        // A key we do not keep cannot be matched: it is treated as universal (C.2.2.2.5 leaves
        // unsupported keys to the SCP) rather than excluding everything.
        if !entity.contains_key(&tag_key(key.tag)) {
            return true;
        }
        matches(key.vr, &key.value, value)
    })
}

/// The instances a C-GET/C-MOVE identifier selects: every instance whose own keys match.
pub fn matching_instances(query: &Query, instances: &[InstanceRecord]) -> Vec<InstanceRecord> {
    instances
        .iter()
        .filter(|record| entity_matches(query, &record.keys.0))
        .cloned()
        .collect()
}

/// Is this VR one we can answer with text?
fn is_text_vr(vr: VR) -> bool {
    matches!(
        vr,
        VR::AE
            | VR::AS
            | VR::CS
            | VR::DA
            | VR::DS
            | VR::DT
            | VR::IS
            | VR::LO
            | VR::LT
            | VR::PN
            | VR::SH
            | VR::ST
            | VR::TM
            | VR::UI
            | VR::UT
            | VR::UC
    )
}

/// The response identifier for one entity: every requested key with the entity's value.
pub fn response_identifier(query: &Query, entity: &Entity, retrieve_ae: &str) -> InMemDicomObject {
    let mut obj = InMemDicomObject::new_empty();
    let level = match query.level {
        Level::Patient => "PATIENT",
        Level::Study => "STUDY",
        Level::Series => "SERIES",
        Level::Image => "IMAGE",
    };
    obj.put(DataElement::new(
        tags::QUERY_RETRIEVE_LEVEL,
        VR::CS,
        PrimitiveValue::from(level),
    ));
    obj.put(DataElement::new(
        tags::RETRIEVE_AE_TITLE,
        VR::AE,
        PrimitiveValue::from(retrieve_ae),
    ));
    for key in &query.keys {
        let value = entity.get(&tag_key(key.tag)).cloned().unwrap_or_default();
        if is_text_vr(key.vr) {
            obj.put(DataElement::new(
                key.tag,
                key.vr,
                PrimitiveValue::from(value),
            ));
        } else {
            obj.put(DataElement::new(key.tag, key.vr, PrimitiveValue::Empty));
        }
    }
    obj
}

/// Handles one C-FIND-RQ: one Pending response per match, then Success.
pub async fn handle<S: Transport>(
    session: &mut Session<S>,
    message: Message,
) -> Result<(), DimseError> {
    let pc_id = message.pc_id;
    let ts = session.transfer_syntax(pc_id).unwrap_or_default();
    let parsed = match message.data.as_deref() {
        Some(data) => Query::parse(data, &ts),
        None => Err("C-FIND without an identifier".to_string()),
    };
    let query = match parsed {
        Ok(query) => query,
        Err(reason) => {
            tracing::warn!(reason = %reason, "C-FIND refused");
            let rsp = dimse::response(&message, command::C_FIND_RSP, status::IDENTIFIER_MISMATCH)
                .lo(
                    tags::ERROR_COMMENT,
                    &reason.chars().take(64).collect::<String>(),
                )
                .encode();
            return session.send_command(pc_id, rsp).await;
        }
    };
    let store = session.context.store.clone();
    let instances = tokio::task::spawn_blocking(move || store.all_instances())
        .await
        .map_err(|e| DimseError::Protocol(e.to_string()))?;
    let instances = match instances {
        Ok(list) => list,
        Err(e) => {
            tracing::error!(error = %e, "C-FIND: reading the index failed");
            let rsp =
                dimse::response(&message, command::C_FIND_RSP, status::UNABLE_TO_PROCESS).encode();
            return session.send_command(pc_id, rsp).await;
        }
    };
    let matches: Vec<Entity> = entities(query.level, &instances)
        .into_iter()
        .filter(|entity| entity_matches(&query, entity))
        .collect();
    tracing::info!(level = ?query.level, matches = matches.len(), "C-FIND");
    let ae = session.context.config.server.ae_title.clone();
    let ts_entry = TransferSyntaxRegistry
        .get(&ts)
        .ok_or_else(|| DimseError::Protocol(format!("unknown transfer syntax {ts}")))?;
    for entity in &matches {
        let identifier = response_identifier(&query, entity, &ae);
        let mut bytes = Vec::new();
        identifier
            .write_dataset_with_ts(&mut bytes, ts_entry)
            .map_err(|e| DimseError::Protocol(super::one_line(&e.to_string())))?;
        let rsp = dimse::response(&message, command::C_FIND_RSP, status::PENDING)
            .with_dataset()
            .encode();
        session.send_command(pc_id, rsp).await?;
        session.send_dataset(pc_id, &bytes).await?;
    }
    let rsp = dimse::response(&message, command::C_FIND_RSP, status::SUCCESS).encode();
    session.send_command(pc_id, rsp).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::QueryKeys;

    #[test]
    fn matching_rules() {
        assert!(matches(VR::UI, "1.2\\1.3", "1.3"));
        assert!(!matches(VR::UI, "1.2\\1.3", "1.4"));
        assert!(matches(VR::DA, "20240101-20240131", "20240115"));
        assert!(!matches(VR::DA, "20240101-20240131", "20240201"));
        assert!(matches(VR::DA, "-20240131", "20231231"));
        assert!(matches(VR::DA, "20240101-", "20250101"));
        assert!(!matches(VR::DA, "20240101-", ""));
        assert!(matches(VR::PN, "doe*", "DOE^JOHN"));
        assert!(matches(VR::LO, "AB?D", "ABCD"));
        assert!(!matches(VR::LO, "AB?D", "ABCCD"));
        assert!(matches(VR::CS, "", "anything"));
        assert!(matches(VR::CS, "SR", "SR"));
        assert!(!matches(VR::CS, "SR", "CT"));
    }

    fn record(study: &str, series: &str, sop: &str, modality: &str) -> InstanceRecord {
        let mut keys = QueryKeys::default();
        keys.set(tags::STUDY_INSTANCE_UID, study);
        keys.set(tags::SERIES_INSTANCE_UID, series);
        keys.set(tags::SOP_INSTANCE_UID, sop);
        keys.set(tags::MODALITY, modality);
        keys.set(tags::PATIENT_ID, "P1");
        InstanceRecord {
            sop_instance_uid: sop.into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            file: String::new(),
            bytes: 0,
            received_unix: 0.0,
            kind: crate::store::InstanceKind::Image,
            keys,
        }
    }

    #[test]
    fn series_level_groups_and_counts() {
        let records = vec![
            record("1.1", "1.1.1", "1.1.1.1", "CT"),
            record("1.1", "1.1.1", "1.1.1.2", "CT"),
            record("1.1", "1.1.2", "1.1.2.1", "SR"),
        ];
        let query = Query {
            level: Level::Series,
            keys: vec![
                QueryKey {
                    tag: tags::MODALITY,
                    vr: VR::CS,
                    value: "SR".into(),
                },
                QueryKey {
                    tag: tags::SERIES_INSTANCE_UID,
                    vr: VR::UI,
                    value: String::new(),
                },
            ],
        };
        let found: Vec<Entity> = entities(query.level, &records)
            .into_iter()
            .filter(|e| entity_matches(&query, e))
            .collect();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0][&tag_key(tags::SERIES_INSTANCE_UID)], "1.1.2");
        let studies = entities(Level::Study, &records);
        assert_eq!(
            studies[0][&tag_key(tags::NUMBER_OF_STUDY_RELATED_SERIES)],
            "2"
        );
        assert_eq!(studies[0][&tag_key(tags::MODALITIES_IN_STUDY)], "CT\\SR");
        let get = Query {
            level: Level::Series,
            keys: vec![QueryKey {
                tag: tags::SERIES_INSTANCE_UID,
                vr: VR::UI,
                value: "1.1.1".into(),
            }],
        };
        assert_eq!(matching_instances(&get, &records).len(), 2);
    }
}
