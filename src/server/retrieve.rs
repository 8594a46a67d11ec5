//! C-GET and C-MOVE SCP (PS3.4 Annex C): select instances with the query matcher, then send them
//! back on this association (C-GET, as C-STORE sub-operations the peer accepted the SCP role for)
//! or over a new association to a destination from the configured AE table (C-MOVE).
//! The final response carries the completed / failed / warning counts; an unknown destination is
//! 0xA801, nothing matched is Success with zero sub-operations.

use super::association::{Session, Transport};
use super::dimse::{self, command, status, DimseError, Message};
use super::query::{matching_instances, Query};
use super::scu::{self, Counts};
use dicom_dictionary_std::tags;
use std::time::Duration;

fn final_status(counts: &Counts) -> u16 {
    if counts.failed == 0 && counts.warning == 0 {
        status::SUCCESS
    } else if counts.completed == 0 && counts.warning == 0 {
        0xA702
    } else {
        status::WARNING_SUBOPS_FAILED
    }
}

fn with_counts(
    builder: dimse::CommandBuilder,
    remaining: u16,
    counts: &Counts,
) -> dimse::CommandBuilder {
    builder
        .us(tags::NUMBER_OF_REMAINING_SUBOPERATIONS, remaining)
        .us(tags::NUMBER_OF_COMPLETED_SUBOPERATIONS, counts.completed)
        .us(tags::NUMBER_OF_FAILED_SUBOPERATIONS, counts.failed)
        .us(tags::NUMBER_OF_WARNING_SUBOPERATIONS, counts.warning)
}

/// Parses the identifier and selects the instances, or answers the failure itself.
async fn select<S: Transport>(
    session: &mut Session<S>,
    message: &Message,
    rsp_field: u16,
) -> Result<Option<Vec<crate::store::InstanceRecord>>, DimseError> {
    let ts = session.transfer_syntax(message.pc_id).unwrap_or_default();
    let parsed = match message.data.as_deref() {
        Some(data) => Query::parse(data, &ts),
        None => Err("no identifier".to_string()),
    };
    let query = match parsed {
        Ok(q) => q,
        Err(reason) => {
            tracing::warn!(reason = %reason, "retrieve refused");
            let rsp = dimse::response(message, rsp_field, status::IDENTIFIER_MISMATCH).encode();
            session.send_command(message.pc_id, rsp).await?;
            return Ok(None);
        }
    };
    let store = session.context.store.clone();
    let all = tokio::task::spawn_blocking(move || store.all_instances())
        .await
        .map_err(|e| DimseError::Protocol(e.to_string()))?;
    match all {
        Ok(all) => Ok(Some(matching_instances(&query, &all))),
        Err(e) => {
            tracing::error!(error = %e, "retrieve: reading the index failed");
            let rsp = dimse::response(message, rsp_field, status::UNABLE_TO_PROCESS).encode();
            session.send_command(message.pc_id, rsp).await?;
            Ok(None)
        }
    }
}

/// C-GET: C-STORE sub-operations on this association.
pub async fn handle_get<S: Transport>(
    session: &mut Session<S>,
    message: Message,
) -> Result<(), DimseError> {
    let Some(instances) = select(session, &message, command::C_GET_RSP).await? else {
        return Ok(());
    };
    tracing::info!(instances = instances.len(), "C-GET");
    let mut counts = Counts::default();
    let total = instances.len() as u16;
    for (index, record) in instances.iter().enumerate() {
        let context = session
            .association
            .presentation_contexts()
            .iter()
            .filter(|pc| pc.reason == dicom_ul::pdu::PresentationContextResultReason::Acceptance)
            .find(|pc| pc.abstract_syntax.trim_end_matches('\0') == record.sop_class_uid)
            .map(|pc| (pc.id, pc.transfer_syntax.trim_end_matches('\0').to_string()));
        let Some((pc_id, ts)) = context else {
            tracing::warn!(sop_class = %record.sop_class_uid, "C-GET: the peer offered no storage context for this class");
            counts.failed += 1;
            continue;
        };
        let item = scu::Outgoing::from_record(&session.context.store, record);
        let data = match scu::dataset_in(&item, &ts) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "C-GET: cannot send instance");
                counts.failed += 1;
                continue;
            }
        };
        let id = (index % 0xFFFF) as u16 + 1;
        session
            .send_command(pc_id, scu::store_request(id, &item, None))
            .await?;
        session.send_dataset(pc_id, &data).await?;
        let rsp = session.next_message().await?;
        if rsp.command_field() == command::C_CANCEL_RQ {
            break;
        }
        scu::tally(
            &mut counts,
            dimse::u16_of(&rsp.command, tags::STATUS).unwrap_or(0xC000),
        );
        let remaining = total.saturating_sub(index as u16 + 1);
        if remaining > 0 {
            let pending = with_counts(
                dimse::response(&message, command::C_GET_RSP, status::PENDING),
                remaining,
                &counts,
            )
            .encode();
            session.send_command(message.pc_id, pending).await?;
        }
    }
    let rsp = with_counts(
        dimse::response(&message, command::C_GET_RSP, final_status(&counts)),
        0,
        &counts,
    )
    .encode();
    session.send_command(message.pc_id, rsp).await
}

/// C-MOVE: C-STORE sub-operations over a new association to the named destination.
pub async fn handle_move<S: Transport>(
    session: &mut Session<S>,
    message: Message,
) -> Result<(), DimseError> {
    let destination_ae = dimse::str_of(&message.command, tags::MOVE_DESTINATION);
    let Some(destination) = session.context.destination(destination_ae.trim()).cloned() else {
        tracing::warn!(destination = %destination_ae, "C-MOVE to an AE not in server.destinations");
        let rsp = dimse::response(
            &message,
            command::C_MOVE_RSP,
            status::MOVE_DESTINATION_UNKNOWN,
        )
        .encode();
        return session.send_command(message.pc_id, rsp).await;
    };
    let Some(instances) = select(session, &message, command::C_MOVE_RSP).await? else {
        return Ok(());
    };
    tracing::info!(instances = instances.len(), destination = %destination.ae_title, "C-MOVE");
    let counts = if instances.is_empty() {
        Counts::default()
    } else {
        let timeout = Duration::from_secs_f64(session.context.config.server.dimse_timeout_seconds);
        let our_ae = session.context.config.server.ae_title.clone();
        let peer_ae = session.peer_ae.clone();
        let items: Vec<scu::Outgoing> = instances
            .iter()
            .map(|r| scu::Outgoing::from_record(&session.context.store, r))
            .collect();
        match scu::send(
            &our_ae,
            &destination,
            &items,
            Some((&peer_ae, message.message_id())),
            timeout,
        )
        .await
        {
            Ok(counts) => counts,
            Err(e) => {
                tracing::warn!(error = %e, "C-MOVE sub-operations failed");
                Counts {
                    failed: instances.len() as u16,
                    ..Counts::default()
                }
            }
        }
    };
    let rsp = with_counts(
        dimse::response(&message, command::C_MOVE_RSP, final_status(&counts)),
        0,
        &counts,
    )
    .encode();
    session.send_command(message.pc_id, rsp).await
}
