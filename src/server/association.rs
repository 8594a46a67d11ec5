//! One association, from A-ASSOCIATE to release: negotiation, access control, and the loop that
//! reads DIMSE messages and hands each to its service.
//!
//! Everything that goes wrong here ends this association (with a log line in its span), never the
//! listener. The peer's calling AE title and address are checked against the allow-list at
//! A-ASSOCIATE; a rejected peer gets A-ASSOCIATE-RJ with the standard reason.
//!
//! With `[server.tls]` configured the connection first completes a TLS handshake (see
//! [`super::tls`]); a failed handshake is logged and counted like a rejected association. One
//! code path serves both: [`Session`] and the services are generic over the [`Transport`] (a plain
//! TCP stream or a TLS stream over it).

use super::dimse::{self, command, status, Event, Message, Reassembler};
use super::Context;
use crate::config::AllowedPeer;
use dicom_ul::association::server::AsyncServerAssociation;
use dicom_ul::association::server::{AccessControl, Negotiation, ServerAssociationOptions};
use dicom_ul::pdu::{AssociationRJServiceUserReason, Pdu, RequestorRoles, UserIdentity};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::Instrument;

/// SOP classes (abstract syntaxes) we negotiate.
pub mod sop {
    pub const VERIFICATION: &str = "1.2.840.10008.1.1";
    pub const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
    pub const COMPREHENSIVE_3D_SR: &str = "1.2.840.10008.5.1.4.1.1.88.34";
    pub const COMPREHENSIVE_SR: &str = "1.2.840.10008.5.1.4.1.1.88.33";
    pub const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";
    pub const STUDY_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";
    pub const STUDY_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.2.2";
    pub const STUDY_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.2.3";
    pub const PATIENT_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.1.1";
    pub const PATIENT_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.1.2";
    pub const PATIENT_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.1.3";

    /// Storage classes we accept and serve.
    pub const STORAGE: &[&str] = &[
        CT_IMAGE_STORAGE,
        COMPREHENSIVE_3D_SR,
        COMPREHENSIVE_SR,
        SECONDARY_CAPTURE,
    ];

    pub fn is_storage(uid: &str) -> bool {
        STORAGE.contains(&uid)
    }
}

/// Transfer syntaxes we accept: the uncompressed ones and the compressed ones the series loader
/// decodes (JPEG lossless, RLE).
pub const TRANSFER_SYNTAXES: &[&str] = &[
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.5",
];

/// The allow-list check, with the peer's address (dicom-ul's hook only sees AE titles).
struct PeerAccess {
    our_ae: String,
    allowed: Vec<AllowedPeer>,
    peer_ip: IpAddr,
}

impl AccessControl for PeerAccess {
    fn check_access(
        &self,
        _this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if called_ae_title.trim() != self.our_ae {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        if self.allowed.is_empty() {
            return Ok(());
        }
        let calling = calling_ae_title.trim();
        let permitted = self.allowed.iter().any(|p| {
            p.ae_title == calling
                && p.host
                    .as_deref()
                    .is_none_or(|host| host_matches(host, self.peer_ip))
        });
        if permitted {
            Ok(())
        } else {
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        }
    }
}

/// An allow-list host matches the peer when it is the same IP (or `localhost` for loopback).
fn host_matches(host: &str, peer: IpAddr) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return peer.is_loopback();
    }
    match host.parse::<IpAddr>() {
        Ok(ip) => ip == peer || (ip.is_loopback() && peer.is_loopback()),
        Err(_) => false,
    }
}

/// Accepts the SCP role for storage classes (C-GET sends C-STOREs back on the association).
struct RoleNegotiation;

impl Negotiation for RoleNegotiation {
    fn extended_negotiation(&self, _sop_class_uid: &str, _scai: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn negotiate_roles(
        &self,
        sop_class_uid: &str,
        scu_role: bool,
        scp_role: bool,
    ) -> Option<RequestorRoles> {
        sop::is_storage(sop_class_uid.trim_end_matches('\0')).then_some(RequestorRoles {
            scu: scu_role,
            scp: scp_role,
        })
    }
}

/// The byte stream under an association: plain TCP, or TLS over TCP.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for T {}

/// The accepted association, as the services see it.
pub type Association<S> = AsyncServerAssociation<S>;

/// The negotiation options every association gets (TLS or not).
fn options(
    context: &Context,
    peer: SocketAddr,
) -> ServerAssociationOptions<'static, PeerAccess, RoleNegotiation> {
    let cfg = &context.config.server;
    let mut options = ServerAssociationOptions::new()
        .ae_access_control(PeerAccess {
            our_ae: cfg.ae_title.clone(),
            allowed: cfg.allowed_peers(),
            peer_ip: peer.ip(),
        })
        .with_negotiation(RoleNegotiation)
        .ae_title(cfg.ae_title.clone())
        .max_pdu_length(cfg.max_pdu_bytes)
        .read_timeout(Duration::from_secs_f64(cfg.artim_seconds))
        .write_timeout(Duration::from_secs_f64(cfg.dimse_timeout_seconds));
    for uid in [
        sop::VERIFICATION,
        sop::STUDY_ROOT_FIND,
        sop::STUDY_ROOT_MOVE,
        sop::STUDY_ROOT_GET,
        sop::PATIENT_ROOT_FIND,
        sop::PATIENT_ROOT_MOVE,
        sop::PATIENT_ROOT_GET,
    ]
    .iter()
    .chain(sop::STORAGE)
    {
        options = options.with_abstract_syntax(*uid);
    }
    for ts in TRANSFER_SYNTAXES {
        options = options.with_transfer_syntax(*ts);
    }
    options
}

/// Runs one association to its end.
pub async fn serve(socket: TcpStream, peer: SocketAddr, context: Arc<Context>) {
    let _ = socket.set_nodelay(true);
    let options = options(&context, peer);
    match context.tls.clone() {
        None => match options.establish_async(socket).await {
            Ok(association) => run(association, peer, context, false).await,
            Err(e) => not_established(&context, peer, &e.to_string()),
        },
        Some(tls) => {
            // dicom-ul bounds the A-ASSOCIATE-RQ by ARTIM but not the TLS handshake before it:
            // ARTIM bounds both, so a peer that connects and stays silent cannot hold a slot.
            let artim = Duration::from_secs_f64(context.config.server.artim_seconds);
            let options = options.tls_config(tls);
            match tokio::time::timeout(artim, options.establish_tls_async(socket)).await {
                Ok(Ok(association)) => run(association, peer, context, true).await,
                Ok(Err(e)) => not_established(&context, peer, &error_chain(&e)),
                Err(_) => not_established(
                    &context,
                    peer,
                    "no TLS handshake and A-ASSOCIATE-RQ within artim_seconds",
                ),
            }
        }
    }
}

/// A connection that did not become an association (bad peer, rejected, TLS handshake failed).
fn not_established(context: &Context, peer: SocketAddr, error: &str) {
    let message = super::one_line(error);
    tracing::warn!(peer = %peer, error = %message, "association not established");
    context.metrics.association("rejected");
}

/// An error with its causes (dicom-ul's TLS errors keep rustls' reason in the source).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Runs an established association to its end.
async fn run<S: Transport>(
    association: Association<S>,
    peer: SocketAddr,
    context: Arc<Context>,
    tls: bool,
) {
    let peer_ae = association.client_ae_title_str().to_string();
    context.metrics.association("accepted");
    let span = tracing::info_span!("association", peer_ae = %peer_ae, peer = %peer);
    async move {
        tracing::info!(tls, "association accepted");
        let _open = context.metrics.open_association();
        let mut session = Session {
            association,
            context: context.clone(),
            series_sent: Vec::new(),
            peer_ae,
            spool_slot: None,
        };
        let outcome = session.run().await;
        for series in &session.series_sent {
            context.end_sending(series);
        }
        match outcome {
            Ok(Ending::Released) => tracing::info!("association released"),
            Ok(Ending::Aborted) => tracing::info!("association aborted by the peer"),
            Ok(Ending::Shutdown) => tracing::info!("association aborted: service shutting down"),
            Err(e) => tracing::warn!(error = %e, "association ended by an error"),
        }
    }
    .instrument(span)
    .await;
}

/// How an association ended.
enum Ending {
    Released,
    Aborted,
    Shutdown,
}

/// The state of one association.
pub struct Session<S: Transport> {
    pub association: Association<S>,
    pub context: Arc<Context>,
    /// Series this association stored into (they are not complete while it is open).
    pub series_sent: Vec<String>,
    pub peer_ae: String,
    /// A spool file made ahead for this association's next instance (see `store::SpoolSlot`).
    pub spool_slot: Option<crate::store::SpoolSlot>,
}

trait PeerTitle {
    fn client_ae_title_str(&self) -> &str;
}

impl<S: Transport> PeerTitle for Association<S> {
    fn client_ae_title_str(&self) -> &str {
        use dicom_ul::association::Association as _;
        self.peer_ae_title()
    }
}

impl<S: Transport> Session<S> {
    async fn run(&mut self) -> Result<Ending, dimse::DimseError> {
        let cfg = &self.context.config.server;
        let reassembler = Reassembler {
            limit: (cfg.max_instance_mb as usize).saturating_mul(1024 * 1024),
            idle: Duration::from_secs_f64(cfg.idle_timeout_seconds),
            dimse: Duration::from_secs_f64(cfg.dimse_timeout_seconds),
        };
        let mut shutdown = self.context.shutdown.clone();
        loop {
            let event = tokio::select! {
                event = reassembler.next(&mut self.association) => event?,
                _ = shutdown.changed() => {
                    // Between messages: nothing is half-done, so leave at once.
                    let _ = self.association.send(&Pdu::AbortRQ {
                        source: dicom_ul::pdu::AbortRQSource::ServiceProvider(
                            dicom_ul::pdu::AbortRQServiceProviderReason::ReasonNotSpecified,
                        ),
                    }).await;
                    return Ok(Ending::Shutdown);
                }
            };
            match event {
                Event::Release => {
                    self.association.send(&Pdu::ReleaseRP).await?;
                    return Ok(Ending::Released);
                }
                Event::Abort => return Ok(Ending::Aborted),
                Event::Message(message) => self.dispatch(*message).await?,
            }
        }
    }

    async fn dispatch(&mut self, message: Message) -> Result<(), dimse::DimseError> {
        match message.command_field() {
            command::C_ECHO_RQ => {
                let rsp = dimse::response(&message, command::C_ECHO_RSP, status::SUCCESS).encode();
                self.send_command(message.pc_id, rsp).await
            }
            command::C_STORE_RQ => super::store_scp::handle(self, message).await,
            command::C_FIND_RQ => super::query::handle(self, message).await,
            command::C_GET_RQ => super::retrieve::handle_get(self, message).await,
            command::C_MOVE_RQ => super::retrieve::handle_move(self, message).await,
            command::C_CANCEL_RQ => Ok(()),
            other => {
                tracing::warn!(
                    command = format!("{other:#06x}"),
                    "unsupported DIMSE command"
                );
                let rsp = dimse::response(&message, other | 0x8000, 0x0211).encode();
                self.send_command(message.pc_id, rsp).await
            }
        }
    }

    /// The negotiated transfer syntax of a presentation context.
    pub fn transfer_syntax(&self, pc_id: u8) -> Option<String> {
        self.association
            .presentation_contexts()
            .iter()
            .find(|pc| pc.id == pc_id)
            .map(|pc| pc.transfer_syntax.trim_end_matches('\0').to_string())
    }

    /// Sends one command set.
    pub async fn send_command(
        &mut self,
        pc_id: u8,
        command: Vec<u8>,
    ) -> Result<(), dimse::DimseError> {
        self.association
            .send(&dimse::command_pdu(pc_id, command))
            .await?;
        Ok(())
    }

    /// Sends a data set, fragmented to the peer's maximum PDU length.
    pub async fn send_dataset(&mut self, pc_id: u8, data: &[u8]) -> Result<(), dimse::DimseError> {
        use tokio::io::AsyncWriteExt;
        let mut writer = self.association.send_pdata(pc_id);
        writer
            .write_all(data)
            .await
            .map_err(|e| dimse::DimseError::Ul(e.to_string()))?;
        writer
            .finish()
            .await
            .map_err(|e| dimse::DimseError::Ul(e.to_string()))?;
        Ok(())
    }

    /// Reads the next message (used by C-GET to read the sub-operations' C-STORE responses).
    pub async fn next_message(&mut self) -> Result<Message, dimse::DimseError> {
        let cfg = &self.context.config.server;
        let reassembler = Reassembler {
            limit: 1 << 20,
            idle: Duration::from_secs_f64(cfg.dimse_timeout_seconds),
            dimse: Duration::from_secs_f64(cfg.dimse_timeout_seconds),
        };
        match reassembler.next(&mut self.association).await? {
            Event::Message(m) => Ok(*m),
            Event::Release | Event::Abort => Err(dimse::DimseError::Protocol(
                "peer left in the middle of a retrieve".into(),
            )),
        }
    }
}

impl<S: Transport> dimse::PduSource for Association<S> {
    async fn receive_pdu(&mut self) -> Result<Pdu, dicom_ul::association::Error> {
        self.receive().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_checks_called_and_calling_titles_and_host() {
        let access = PeerAccess {
            our_ae: "NODULED".into(),
            allowed: vec![
                AllowedPeer::parse("SCANNER@10.0.0.5").unwrap(),
                AllowedPeer::parse("PACS").unwrap(),
            ],
            peer_ip: "10.0.0.5".parse().unwrap(),
        };
        assert!(access
            .check_access("NODULED", "SCANNER", "NODULED", None)
            .is_ok());
        assert!(access
            .check_access("NODULED", "PACS", "NODULED", None)
            .is_ok());
        assert_eq!(
            access.check_access("NODULED", "OTHER", "NODULED", None),
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        );
        assert_eq!(
            access.check_access("NODULED", "SCANNER", "SOMEONE", None),
            Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized)
        );
        let elsewhere = PeerAccess {
            peer_ip: "10.0.0.6".parse().unwrap(),
            ..access
        };
        assert_eq!(
            elsewhere.check_access("NODULED", "SCANNER", "NODULED", None),
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        );
    }
}
