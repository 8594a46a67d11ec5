//! Hardening (issue 8): attacks on a running `noduled serve` over loopback — bad instances, bad
//! PDUs, stalled peers, bad series, SIGKILLs at random moments, concurrent senders, strangers and a
//! full disk. Every attack ends by checking that the daemon still answers C-ECHO and that the
//! instances it acknowledged before are still there (and retrievable with C-GET).
//!
//! Instances are sent with a raw dicom-ul client (so the bytes can be crafted and each status
//! read) or with DCMTK `storescu`. Phantoms are small (64–128 px, 10–16 slices) to keep CI fast;
//! the per-series cap is exercised by configuring `max_series_instances` low rather than by
//! sending 3000 real slices. The crash run (20 SIGKILLs, 8 series of 16×128×128) takes about a
//! minute; `--nocapture` prints the moments of the kills, job attempts and peak RSS.
//! Needs DCMTK, curl and the book models from `../shared` (skips with a reason otherwise).

mod common;

use common::daemon::{describe, have, phantom_series, Daemon};
use dicom_core::{dicom_value, DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::{
    EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN,
};
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
use dicom_ul::{ClientAssociation, ClientAssociationOptions};
use noduled::server::dimse::{command, CommandBuilder};
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
const VERIFICATION: &str = "1.2.840.10008.1.1";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const JPEG_2000: &str = "1.2.840.10008.1.2.4.90";

fn ready() -> Option<PathBuf> {
    let shared = common::shared()?;
    for tool in ["echoscu", "storescu", "getscu", "curl"] {
        if !have(tool) {
            return None;
        }
    }
    Some(shared)
}

/// Small timeouts so stalled peers are noticed within seconds.
const QUICK: &str = "artim_seconds = 2.0\ndimse_timeout_seconds = 2.0\nidle_timeout_seconds = 3.0";

// ---------------------------------------------------------------------------------------------
// A raw DICOM client: crafted data sets, one status per instance.

type Assoc = ClientAssociation<TcpStream>;

fn associate(port: u16, contexts: &[(&str, &[&str])]) -> Result<Assoc, String> {
    let mut options = ClientAssociationOptions::new()
        .calling_ae_title("SCANNER")
        .called_ae_title("NODULED")
        .read_timeout(Duration::from_secs(30))
        .write_timeout(Duration::from_secs(30));
    for (class, syntaxes) in contexts {
        options = options.with_presentation_context(*class, syntaxes.to_vec());
    }
    options
        .establish(("127.0.0.1", port))
        .map_err(|e| e.to_string())
}

fn ct_association(port: u16) -> Assoc {
    associate(
        port,
        &[
            (CT, &[EXPLICIT_LE, IMPLICIT_LE]),
            (VERIFICATION, &[IMPLICIT_LE]),
        ],
    )
    .expect("association for CT storage")
}

/// The accepted presentation context for `class` (id and transfer syntax).
fn context_of(assoc: &Assoc, class: &str) -> Option<(u8, String)> {
    assoc
        .presentation_contexts()
        .iter()
        .find(|pc| {
            pc.abstract_syntax.trim_end_matches('\0') == class
                && pc.reason == dicom_ul::pdu::PresentationContextResultReason::Acceptance
        })
        .map(|pc| (pc.id, pc.transfer_syntax.trim_end_matches('\0').to_string()))
}

/// Sends one C-STORE on context `pc_id` with `data` as the data set and returns the status.
fn c_store(
    assoc: &mut Assoc,
    pc_id: u8,
    class: &str,
    instance: &str,
    data: &[u8],
) -> Result<u16, String> {
    let cmd = CommandBuilder::new(command::C_STORE_RQ)
        .us(tags::MESSAGE_ID, 1)
        .us(tags::PRIORITY, 0)
        .ui(tags::AFFECTED_SOP_CLASS_UID, class)
        .ui(tags::AFFECTED_SOP_INSTANCE_UID, instance)
        .with_dataset()
        .encode();
    let send = |assoc: &mut Assoc, value_type, is_last, data: Vec<u8>| {
        assoc
            .send(&Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: pc_id,
                    value_type,
                    is_last,
                    data,
                }],
            })
            .map_err(|e| e.to_string())
    };
    send(assoc, PDataValueType::Command, true, cmd)?;
    let chunk = 16 * 1024;
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[][..]]
    } else {
        data.chunks(chunk).collect()
    };
    let n = chunks.len();
    for (i, part) in chunks.into_iter().enumerate() {
        send(assoc, PDataValueType::Data, i + 1 == n, part.to_vec())?;
    }
    response_status(assoc)
}

fn response_status(assoc: &mut Assoc) -> Result<u16, String> {
    match assoc.receive().map_err(|e| e.to_string())? {
        Pdu::PData { data } => {
            let bytes: Vec<u8> = data.into_iter().flat_map(|v| v.data).collect();
            let obj = InMemDicomObject::read_dataset_with_ts(
                bytes.as_slice(),
                &IMPLICIT_VR_LITTLE_ENDIAN.erased(),
            )
            .map_err(|e| e.to_string())?;
            obj.element(tags::STATUS)
                .ok()
                .and_then(|e| e.to_int::<u16>().ok())
                .ok_or_else(|| "response without a status".to_string())
        }
        other => Err(format!("unexpected PDU {other:?}")),
    }
}

fn c_echo(port: u16) -> bool {
    let Ok(mut assoc) = associate(port, &[(VERIFICATION, &[IMPLICIT_LE])]) else {
        return false;
    };
    let cmd = CommandBuilder::new(command::C_ECHO_RQ)
        .us(tags::MESSAGE_ID, 7)
        .ui(tags::AFFECTED_SOP_CLASS_UID, VERIFICATION)
        .encode();
    let sent = assoc.send(&Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: 1,
            value_type: PDataValueType::Command,
            is_last: true,
            data: cmd,
        }],
    });
    let ok = sent.is_ok() && response_status(&mut assoc) == Ok(0);
    let _ = assoc.release();
    ok
}

/// A phantom slice's data set, re-encoded in Explicit VR LE, with its SOP instance and series UIDs.
fn dataset_of(obj: &InMemDicomObject) -> Vec<u8> {
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, &EXPLICIT_VR_LITTLE_ENDIAN.erased())
        .expect("encodes");
    out
}

fn text(obj: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    obj.element(tag)
        .ok()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
        .unwrap_or_default()
}

fn open(path: &Path) -> InMemDicomObject {
    dicom_object::open_file(path)
        .expect("phantom slice readable")
        .into_inner()
}

/// Sends a file's data set; returns (status, SOP instance UID).
fn send_file(assoc: &mut Assoc, path: &Path) -> Result<(u16, String), String> {
    let obj = open(path);
    let uid = text(&obj, tags::SOP_INSTANCE_UID);
    let (pc, _) = context_of(assoc, CT).ok_or("no CT context")?;
    c_store(assoc, pc, CT, &uid, &dataset_of(&obj)).map(|s| (s, uid))
}

// ---------------------------------------------------------------------------------------------
// Checks shared by every attack.

fn metric(daemon: &Daemon, name: &str) -> Option<f64> {
    daemon
        .http_get("/metrics")
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Peak resident memory of the daemon process (VmHWM), in MB.
fn peak_rss_mb(daemon: &Daemon) -> u64 {
    let pid = daemon.child.as_ref().expect("running").id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

fn count_instances(daemon: &Daemon, series: &str) -> u64 {
    daemon
        .series(series)
        .and_then(|s| s["instance_count"].as_u64())
        .unwrap_or(0)
}

/// The daemon answers C-ECHO, and the series accepted earlier still has all its instances,
/// which C-GET hands back.
fn still_serving(daemon: &Daemon, series: &str, study: &str, expected: usize, dir: &Path) {
    assert!(
        c_echo(daemon.port),
        "no C-ECHO after the attack; log:\n{}",
        daemon.log_text()
    );
    assert_eq!(
        count_instances(daemon, series),
        expected as u64,
        "{}",
        daemon.status()
    );
    let out = dir.join(format!("get-{}", rand_u64()));
    let get = daemon.get_series(study, series, &out);
    let got = std::fs::read_dir(&out).map(|d| d.count()).unwrap_or(0);
    assert_eq!(
        got,
        expected,
        "C-GET returned {got} of {expected}: {}",
        describe(&get)
    );
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish()
}

/// The baseline every bad-input test starts from: one good series stored (and acknowledged).
fn baseline(daemon: &Daemon, dir: &Path) -> (String, String, usize) {
    // 8 slices: under every cap the tests configure.
    let (series, study, files) = phantom_series(&dir.join("good"), 101, 8, 64);
    let mut assoc = ct_association(daemon.port);
    for f in &files {
        assert_eq!(
            send_file(&mut assoc, f).map(|r| r.0),
            Ok(0),
            "good slice stored"
        );
    }
    let _ = assoc.release();
    (series, study, files.len())
}

fn wait_open_associations_zero(daemon: &Daemon, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let open = metric(daemon, "noduled_associations_open");
        if open == Some(0.0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "associations still open: {open:?}\n{}",
            daemon.http_get("/metrics")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Bad instances.

#[test]
fn bad_instances_are_refused_with_a_status_and_not_stored() {
    let Some(shared) = ready() else { return };
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &shared, QUICK);
    let (good, study, n) = baseline(&daemon, dir.path());
    let (_, _, files) = phantom_series(&dir.path().join("bad"), 102, 10, 64);
    let stored_before = metric(
        &daemon,
        "noduled_instances_received_total{outcome=\"stored\"}",
    );
    let mut assoc = ct_association(daemon.port);
    let (pc, _) = context_of(&assoc, CT).unwrap();
    let slice = |i: usize| open(&files[i]);
    let attack =
        |assoc: &mut Assoc, name: &str, obj: InMemDicomObject, data: Vec<u8>, expect: &[u16]| {
            let uid = text(&obj, tags::SOP_INSTANCE_UID);
            let class = text(&obj, tags::SOP_CLASS_UID);
            let status =
                c_store(assoc, pc, &class, &uid, &data).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                expect.contains(&status),
                "{name}: status {status:#06x}, expected one of {expect:04x?}"
            );
            eprintln!("{name}: refused with {status:#06x}");
        };

    // Non-CT modality on a CT SOP class.
    let mut mr = slice(0);
    mr.put(DataElement::new(
        tags::MODALITY,
        VR::CS,
        PrimitiveValue::from("MR"),
    ));
    attack(
        &mut assoc,
        "modality MR",
        mr.clone(),
        dataset_of(&mr),
        &[0xA900],
    );

    // An MR SOP class sent on the CT context: the data set does not match the context/command.
    let mut mr_class = slice(1);
    mr_class.put(DataElement::new(
        tags::SOP_CLASS_UID,
        VR::UI,
        PrimitiveValue::from(MR),
    ));
    let uid = text(&mr_class, tags::SOP_INSTANCE_UID);
    let status = c_store(&mut assoc, pc, CT, &uid, &dataset_of(&mr_class)).unwrap();
    assert_eq!(status, 0xA900, "MR SOP class in a CT C-STORE");

    // Truncated data set: cut in the middle of the pixel data, and in the middle of a header.
    let whole = dataset_of(&slice(2));
    attack(
        &mut assoc,
        "truncated pixel data",
        slice(2),
        whole[..whole.len() - 1000].to_vec(),
        &[0xC000, 0xA900],
    );
    attack(
        &mut assoc,
        "truncated header",
        slice(2),
        whole[..300].to_vec(),
        &[0xC000, 0xA900],
    );
    attack(
        &mut assoc,
        "empty data set",
        slice(2),
        Vec::new(),
        &[0xC000, 0xA900],
    );

    // Pixel data shorter than Rows × Columns × BitsAllocated/8 (a consistent element, wrong size).
    let mut short = slice(3);
    let rows = short.element(tags::ROWS).unwrap().to_int::<u32>().unwrap() as usize;
    let cols = short
        .element(tags::COLUMNS)
        .unwrap()
        .to_int::<u32>()
        .unwrap() as usize;
    short.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::from(vec![0u8; rows * cols]),
    ));
    attack(
        &mut assoc,
        "pixel data half the declared size",
        short.clone(),
        dataset_of(&short),
        &[0xC000, 0xA900],
    );
    // Rows doubled: the pixel data no longer covers the image.
    let mut tall = slice(4);
    tall.put(DataElement::new(
        tags::ROWS,
        VR::US,
        PrimitiveValue::from((rows * 2) as u16),
    ));
    attack(
        &mut assoc,
        "rows larger than the pixel data",
        tall.clone(),
        dataset_of(&tall),
        &[0xC000, 0xA900],
    );

    // Absurd declared lengths: a 4 GB element appended after the pixel data, and one in place of
    // an early element (both in a data set of a few kB).
    let mut absurd = dataset_of(&slice(5));
    absurd.extend_from_slice(&[0xE1, 0x7F, 0x10, 0x10, b'O', b'B', 0, 0]);
    absurd.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    absurd.extend_from_slice(&[1, 2, 3, 4]);
    attack(
        &mut assoc,
        "4 GB element after pixel data",
        slice(5),
        absurd,
        &[0xC000, 0xA900],
    );
    let mut early = Vec::new();
    early.extend_from_slice(&[0x08, 0x00, 0x05, 0x00, b'U', b'N', 0, 0]);
    early.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    early.extend_from_slice(&dataset_of(&slice(5))[..64]);
    attack(
        &mut assoc,
        "4 GB element first",
        slice(5),
        early,
        &[0xC000, 0xA900],
    );
    let mut absurd_text = Vec::new();
    absurd_text.extend_from_slice(&[0x08, 0x00, 0x05, 0x00, b'C', b'S', 0xF0, 0xFF]);
    attack(
        &mut assoc,
        "64 kB short-form element in 8 bytes",
        slice(5),
        absurd_text,
        &[0xC000, 0xA900],
    );

    // The declared 4 GB were not allocated: peak memory stays far below them.
    let peak = peak_rss_mb(&daemon);
    eprintln!("peak RSS after the absurd lengths: {peak} MB");
    assert!(
        peak < 1536,
        "peak RSS {peak} MB after 4 GB declared lengths"
    );

    // SOP instance in the data set differs from the command's.
    let other = slice(6);
    let status = c_store(&mut assoc, pc, CT, "1.2.3.4.5", &dataset_of(&other)).unwrap();
    assert_eq!(status, 0xA900, "instance UID mismatch");
    let _ = assoc.release();

    // Nothing of the bad series was stored.
    let bad_series = text(&slice(0), tags::SERIES_INSTANCE_UID);
    assert_eq!(
        count_instances(&daemon, &bad_series),
        0,
        "{}",
        daemon.status()
    );
    assert_eq!(
        metric(
            &daemon,
            "noduled_instances_received_total{outcome=\"stored\"}"
        ),
        stored_before,
        "a refused instance was counted as stored"
    );
    still_serving(&daemon, &good, &study, n, dir.path());
}

#[test]
fn unaccepted_sop_classes_and_transfer_syntaxes_are_refused_at_negotiation() {
    let Some(shared) = ready() else { return };
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &shared, QUICK);
    let (good, study, n) = baseline(&daemon, dir.path());

    // MR Image Storage only: no context is accepted, so the association cannot be used.
    match associate(daemon.port, &[(MR, &[EXPLICIT_LE])]) {
        Err(_) => {}
        Ok(assoc) => assert!(context_of(&assoc, MR).is_none(), "MR storage accepted"),
    }
    // CT in JPEG 2000 only (a syntax we cannot decode): rejected, verification still accepted.
    let mut assoc = associate(
        daemon.port,
        &[(VERIFICATION, &[IMPLICIT_LE]), (CT, &[JPEG_2000])],
    )
    .expect("verification");
    assert!(
        context_of(&assoc, CT).is_none(),
        "JPEG 2000 CT context accepted"
    );
    assert!(context_of(&assoc, VERIFICATION).is_some());
    // A C-STORE on the rejected context (id 3): refused or the association is dropped; never stored.
    let (_, _, files) = phantom_series(&dir.path().join("j2k"), 103, 10, 64);
    let obj = open(&files[0]);
    let result = c_store(
        &mut assoc,
        3,
        CT,
        &text(&obj, tags::SOP_INSTANCE_UID),
        &dataset_of(&obj),
    );
    assert!(
        result != Ok(0),
        "C-STORE on an unaccepted context answered success"
    );
    let _ = assoc.abort();
    assert_eq!(
        count_instances(&daemon, &text(&obj, tags::SERIES_INSTANCE_UID)),
        0
    );
    still_serving(&daemon, &good, &study, n, dir.path());
}

// ---------------------------------------------------------------------------------------------
// 1b. Bad bytes on the socket and stalled peers.

#[test]
fn garbage_malformed_pdus_and_stalled_peers_are_dropped_and_freed() {
    let Some(shared) = ready() else { return };
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &shared, QUICK);
    let (good, study, n) = baseline(&daemon, dir.path());
    let raw = |bytes: &[u8]| {
        let mut s = TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(bytes);
        s
    };
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut random = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    let mut sockets = Vec::new();
    // Random bytes instead of an A-ASSOCIATE-RQ (several sizes).
    for len in [1, 7, 64, 4096, 70_000] {
        sockets.push(raw(&random(len)));
    }
    // Well-formed headers with absurd lengths: an A-ASSOCIATE-RQ of 4 GB, an unknown PDU type.
    sockets.push(raw(&[0x01, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 1]));
    sockets.push(raw(&[0x09, 0, 0, 0, 0, 4, 1, 2, 3, 4]));
    // A P-DATA before any association.
    sockets.push(raw(&[0x04, 0, 0, 0, 0, 6, 0, 0, 0, 2, 1, 3]));
    // Stalled mid-PDU during negotiation: 3 bytes of a header, then nothing.
    sockets.push(raw(&[0x01, 0, 0]));

    // After association: a P-DATA whose PDV claims more than the PDU holds; an unknown PDU type;
    // and a P-DATA header promising 4096 bytes followed by 10 (a stall mid-PDU).
    for bytes in [
        vec![0x04, 0, 0, 0, 0, 10, 0, 0, 0x10, 0, 1, 3, 1, 2, 3, 4],
        vec![0x0A, 0, 0, 0, 0, 2, 0, 0],
        [vec![0x04, 0, 0, 0, 0x10, 0], random(10)].concat(),
    ] {
        let mut assoc = ct_association(daemon.port);
        let _ = assoc.inner_stream().write_all(&bytes);
        sockets.push(assoc.inner_stream().try_clone().unwrap());
    }
    // A command whose data set never ends (the stall is between fragments).
    let mut assoc = ct_association(daemon.port);
    let (pc, _) = context_of(&assoc, CT).unwrap();
    let cmd = CommandBuilder::new(command::C_STORE_RQ)
        .us(tags::MESSAGE_ID, 1)
        .ui(tags::AFFECTED_SOP_CLASS_UID, CT)
        .ui(tags::AFFECTED_SOP_INSTANCE_UID, "1.2.3.4")
        .with_dataset()
        .encode();
    assoc
        .send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc,
                value_type: PDataValueType::Command,
                is_last: true,
                data: cmd,
            }],
        })
        .unwrap();
    assoc
        .send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc,
                value_type: PDataValueType::Data,
                is_last: false,
                data: vec![0; 100],
            }],
        })
        .unwrap();
    sockets.push(assoc.inner_stream().try_clone().unwrap());

    // Every one of them is dropped within the configured timeouts (idle 3 s, DIMSE 2 s, ARTIM 2 s)
    // while the sockets are still held open on our side.
    wait_open_associations_zero(&daemon, Duration::from_secs(20));
    for s in &mut sockets {
        let mut buf = [0u8; 256];
        // The daemon closed (EOF or reset) or answered with a reject/abort and closed.
        let mut closed = false;
        for _ in 0..100 {
            match std::io::Read::read(s, &mut buf) {
                Ok(0) | Err(_) => {
                    closed = true;
                    break;
                }
                Ok(_) => continue,
            }
        }
        assert!(closed, "a socket was never closed by the daemon");
    }
    drop(sockets);
    assert!(metric(&daemon, "noduled_associations_open") == Some(0.0));
    still_serving(&daemon, &good, &study, n, dir.path());
}

// ---------------------------------------------------------------------------------------------
// 1c. Bad series: each is stored (its instances are fine) but refused by the input rules or the
// per-series cap, with the reason recorded in /status and counted in /metrics.

fn write_all(objs: Vec<InMemDicomObject>, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (i, obj) in objs.into_iter().enumerate() {
        let meta = dicom_object::FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(text(&obj, tags::SOP_CLASS_UID))
            .media_storage_sop_instance_uid(text(&obj, tags::SOP_INSTANCE_UID))
            .transfer_syntax(EXPLICIT_LE);
        obj.with_meta(meta)
            .unwrap()
            .write_to_file(dir.join(format!("{i:04}.dcm")))
            .unwrap();
    }
}

#[test]
fn bad_series_are_refused_with_recorded_reasons() {
    let Some(shared) = ready() else { return };
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        dir.path(),
        &shared,
        &format!("{QUICK}\nmax_series_instances = 10"),
    );
    let (good, study, n) = baseline(&daemon, dir.path());
    let d = dir.path();
    let load = |seed: u64, name: &str| {
        let slices = if name == "cap" { 12 } else { 10 };
        let (uid, _, files) = phantom_series(&d.join(format!("src-{name}")), seed, slices, 64);
        (uid, files.iter().map(|f| open(f)).collect::<Vec<_>>())
    };
    let mut cases: Vec<(&str, String, Vec<&str>)> = Vec::new();

    let (uid, mut objs) = load(201, "orientation");
    for obj in objs.iter_mut().skip(5) {
        obj.put(DataElement::new(
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            dicom_value!(Strs, ["1", "0", "0", "0", "0.984808", "-0.173648"]),
        ));
    }
    write_all(objs, &d.join("orientation"));
    cases.push(("orientation", uid, vec!["mixed_orientation", "non_axial"]));

    let (uid, mut objs) = load(202, "gap");
    objs.drain(4..6);
    write_all(objs, &d.join("gap"));
    cases.push(("gap", uid, vec!["gap"]));

    let (uid, mut objs) = load(203, "duplicate");
    let position = objs[3]
        .element(tags::IMAGE_POSITION_PATIENT)
        .unwrap()
        .clone();
    objs[4].put(position);
    write_all(objs, &d.join("duplicate"));
    cases.push(("duplicate", uid, vec!["duplicate_position"]));

    let (uid, mut objs) = load(204, "single");
    objs.truncate(1);
    write_all(objs, &d.join("single"));
    cases.push(("single", uid, vec!["too_few_slices"]));

    // Per-series cap (max_series_instances = 10): the 11th and 12th instances are answered 0xA700 and
    // the series is refused as a whole, not analysed on its first 10 slices.
    let (uid, objs) = load(205, "cap");
    write_all(objs, &d.join("cap"));
    cases.push(("cap", uid, vec!["series-too-large"]));

    for (name, _, _) in &cases {
        let out = daemon.dcmtk_with(
            "storescu",
            &["-aet", "SCANNER", "-aec", "NODULED", "+sd", "+r"],
            &[d.join(name).to_str().unwrap()],
        );
        if *name == "cap" {
            // storescu exits non-zero when an instance is refused (its log says 0xA700 at -v).
            assert!(!out.status.success(), "cap: {}", describe(&out));
        }
    }
    for (name, uid, codes) in &cases {
        let record = daemon.wait_analysed(uid, Duration::from_secs(120));
        let reason = record["reason"].as_str().unwrap_or("").to_string();
        assert_eq!(record["state"], "refused", "{name}: {record}");
        assert!(
            codes.iter().any(|c| reason.contains(c)),
            "{name}: reason {reason:?} names none of {codes:?}"
        );
        eprintln!("{name}: refused: {reason}");
        assert!(
            daemon.log_text().contains(uid.as_str()),
            "{name}: the refusal is logged with the series UID"
        );
    }
    // Patient data stays out of the log (info level): names and IDs never, UIDs yes.
    let phantom_slice = open(
        &std::fs::read_dir(d.join("gap"))
            .unwrap()
            .flatten()
            .next()
            .unwrap()
            .path(),
    );
    let log = daemon.log_text();
    for tag in [
        tags::PATIENT_NAME,
        tags::PATIENT_ID,
        tags::PATIENT_BIRTH_DATE,
    ] {
        let value = text(&phantom_slice, tag);
        if value.len() >= 4 {
            assert!(
                !log.contains(&value),
                "{tag} value {value:?} appears in the log"
            );
        }
    }
    let cap = &cases.last().unwrap().1;
    assert_eq!(
        count_instances(&daemon, cap),
        10,
        "no more than the cap was stored"
    );
    let refused = metric(&daemon, "noduled_series{state=\"refused\"}").unwrap_or(0.0);
    assert!(
        refused >= cases.len() as f64,
        "/metrics counts {refused} refused series"
    );
    still_serving(&daemon, &good, &study, n, dir.path());
}

// ---------------------------------------------------------------------------------------------
// 2. Crash consistency: SIGKILL at random moments while a sender resends what was not acknowledged.

fn crash_run(kills: usize, series_count: usize, slices: usize, size: usize) {
    let Some(shared) = ready() else { return };
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &shared, "completion_seconds = 0.5\nworkers = 1");
    let mut all: Vec<(String, Vec<PathBuf>)> = Vec::new();
    for i in 0..series_count {
        let (uid, _, files) = phantom_series(
            &dir.path().join(format!("s{i}")),
            300 + i as u64,
            slices,
            size,
        );
        all.push((uid, files));
    }
    let port = daemon.port;
    let daemon = Arc::new(Mutex::new(daemon));

    // The killer: `kills` times, waits (at most 5 s) for a moment of the wanted kind — the first
    // third, then every other one, while the sender is storing; the rest while a job is analysed (the SR is stored at the end
    // of the analysis) — then SIGKILLs after a further random 0–400 ms and restarts. Once the
    // sender is done every kill aims at analysis.
    let sending = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let killer = {
        let daemon = daemon.clone();
        let sending = sending.clone();
        std::thread::spawn(move || {
            let phase_now = |d: &Daemon| {
                if sending.load(std::sync::atomic::Ordering::SeqCst)
                    && describe_phase(d) != "analysis"
                {
                    "c-store"
                } else {
                    describe_phase(d)
                }
            };
            let mut phases = Vec::new();
            for k in 0..kills {
                let want = if (k % 2 == 0 || k < kills / 3)
                    && sending.load(std::sync::atomic::Ordering::SeqCst)
                {
                    "c-store"
                } else {
                    "analysis"
                };
                let waiting = Instant::now();
                while waiting.elapsed() < Duration::from_secs(5)
                    && phase_now(&daemon.lock().unwrap()) != want
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                std::thread::sleep(Duration::from_millis(rand_u64() % 400));
                let mut d = daemon.lock().unwrap();
                phases.push(phase_now(&d));
                d.kill9();
                d.spawn();
            }
            phases
        })
    };

    // The sender: one association at a time, resending every instance not yet acknowledged.
    let mut acked: std::collections::BTreeSet<String> = Default::default();
    let mut attempts = 0usize;
    let deadline = Instant::now() + Duration::from_secs(600);
    'outer: loop {
        let pending: Vec<&PathBuf> = all
            .iter()
            .flat_map(|(_, files)| files.iter())
            .filter(|f| !acked.contains(&f.display().to_string()))
            .collect();
        if pending.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "sender never finished");
        let Ok(mut assoc) = associate(port, &[(CT, &[EXPLICIT_LE])]) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        for f in pending {
            attempts += 1;
            // Paced like a scanner reconstructing slices, so kills land mid-session.
            std::thread::sleep(Duration::from_millis(60));
            match send_file(&mut assoc, f) {
                Ok((0, _)) => {
                    acked.insert(f.display().to_string());
                }
                Ok((status, _)) => panic!("{} refused with {status:#06x}", f.display()),
                Err(_) => continue 'outer,
            }
        }
        let _ = assoc.release();
    }
    sending.store(false, std::sync::atomic::Ordering::SeqCst);
    let phases = killer.join().expect("killer thread");
    eprintln!(
        "kills survived: {}; phases: {phases:?}; C-STORE attempts {attempts} for {} instances",
        phases.len(),
        acked.len()
    );

    let mut daemon = Arc::try_unwrap(daemon).ok().unwrap().into_inner().unwrap();
    let status = {
        for (uid, _) in &all {
            let record = daemon.wait_analysed(uid, Duration::from_secs(600));
            assert_eq!(record["state"], "analysed", "{record}");
        }
        daemon.status()
    };
    // Every acknowledged instance exactly once: index counts and spool files both match.
    for (uid, files) in &all {
        assert_eq!(
            count_instances(&daemon, uid),
            files.len() as u64,
            "series {uid}"
        );
        let spool = daemon.state.join("spool").join(uid);
        let on_disk = std::fs::read_dir(&spool)
            .map(|d| {
                d.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(on_disk, files.len(), "spool files of {uid}");
    }
    // Every series analysed: exactly one SR each, and its job's attempts recorded.
    let series = status["series"].as_array().cloned().unwrap_or_default();
    let reports: Vec<_> = series.iter().filter(|s| s["state"] == "report").collect();
    let sr_total: u64 = reports
        .iter()
        .map(|s| s["instance_count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(sr_total as usize, all.len(), "one SR per series: {status}");
    for (uid, _) in &all {
        let record = series
            .iter()
            .find(|s| s["series_uid"] == uid.as_str())
            .unwrap();
        assert!(
            record["sr_uid"].as_str().is_some(),
            "series names its SR: {record}"
        );
        let job = status["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["series_uid"] == uid.as_str())
            .cloned()
            .unwrap();
        assert!(job["attempts"].as_u64().unwrap_or(0) >= 1, "{job}");
        eprintln!("series {uid}: job attempts {}", job["attempts"]);
    }
    // A clean stop, then sled opens cleanly in-process and agrees.
    assert!(
        daemon.terminate().success(),
        "clean exit after the crash run"
    );
    let store = noduled::store::Store::open(&daemon.state, 0)
        .expect("sled opens cleanly after the crash run");
    for (uid, files) in &all {
        assert_eq!(store.series_instances(uid).unwrap().len(), files.len());
    }
}

/// What the daemon was doing when killed (for the report): a series still receiving, a job
/// queued or running, or idle.
fn describe_phase(daemon: &Daemon) -> &'static str {
    let status = daemon.status();
    let series = status["series"].as_array().cloned().unwrap_or_default();
    let jobs = status["jobs"].as_array().cloned().unwrap_or_default();
    if jobs.iter().any(|j| j["state"] == "running") {
        "analysis"
    } else if series.iter().any(|s| s["state"] == "receiving") {
        "c-store"
    } else if jobs.iter().any(|j| j["state"] == "queued") {
        "queued"
    } else {
        "idle"
    }
}

#[test]
fn sigkill_twenty_times_during_a_sending_session_loses_and_doubles_nothing() {
    // Larger slices than the CI variant, so analysis lasts long enough to be hit repeatedly.
    crash_run(20, 8, 16, 128);
}

// ---------------------------------------------------------------------------------------------
// 3. Load: 8 concurrent associations.

#[test]
fn eight_concurrent_senders_all_stored_and_analysed_with_bounded_memory() {
    let Some(shared) = ready() else { return };
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &shared, "workers = 1\nmax_associations = 16");
    let series: Vec<(String, PathBuf, usize)> = (0..8)
        .map(|i| {
            let folder = dir.path().join(format!("load{i}"));
            let (uid, _, files) = phantom_series(&folder, 400 + i, 16, 128);
            (uid, folder, files.len())
        })
        .collect();
    let port = daemon.port;
    let senders: Vec<_> = series
        .iter()
        .map(|(_, folder, _)| {
            let folder = folder.clone();
            std::thread::spawn(move || {
                std::process::Command::new("storescu")
                    .args([
                        "-aet",
                        "SCANNER",
                        "-aec",
                        "NODULED",
                        "+sd",
                        "+r",
                        "127.0.0.1",
                        &port.to_string(),
                    ])
                    .arg(&folder)
                    .output()
                    .unwrap()
            })
        })
        .collect();
    for s in senders {
        let out = s.join().unwrap();
        assert!(out.status.success(), "storescu: {}", describe(&out));
    }
    for (uid, _, n) in &series {
        let record = daemon.wait_analysed(uid, Duration::from_secs(600));
        assert_eq!(record["state"], "analysed", "{record}");
        assert_eq!(record["instance_count"], *n as u64);
    }
    let peak = peak_rss_mb(&daemon);
    eprintln!("peak RSS (VmHWM) after 8 concurrent series of 16x128x128: {peak} MB");
    // One worker holds one small CT; the models and runtime dominate. 2 GB is a generous bound
    // that an unbounded queue of decoded CTs or per-association buffering would still not explain.
    assert!(peak > 0 && peak < 2048, "peak RSS {peak} MB");
    assert!(c_echo(port));
}

// ---------------------------------------------------------------------------------------------
// 4. Access control.

#[test]
fn wrong_host_is_refused_and_disk_watermark_answers_a700() {
    let Some(shared) = ready() else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    let daemon = Daemon::start(
        &dir.path().join("a"),
        &shared,
        "allowed_calling_aes = [\"SCANNER@10.11.12.13\", \"PACS@127.0.0.1\"]",
    );
    let wrong_host = daemon.dcmtk("echoscu", &["-aet", "SCANNER", "-aec", "NODULED"]);
    assert!(
        !wrong_host.status.success(),
        "SCANNER from the wrong host accepted: {}",
        describe(&wrong_host)
    );
    let right = daemon.dcmtk("echoscu", &["-aet", "PACS", "-aec", "NODULED"]);
    assert!(right.status.success(), "{}", describe(&right));
    assert!(
        metric(&daemon, "noduled_associations_total{result=\"rejected\"}").unwrap_or(0.0) >= 1.0
    );
    drop(daemon);

    // The disk watermark: restart with min_free_disk_mb far above the free space.
    let mut full = Daemon::start(&dir.path().join("b"), &shared, "");
    full.kill9();
    let config = std::fs::read_to_string(&full.config).unwrap();
    std::fs::write(
        &full.config,
        config.replace("min_free_disk_mb = 0", "min_free_disk_mb = 1000000000"),
    )
    .unwrap();
    full.spawn();
    let (series, _, files) = phantom_series(&dir.path().join("b/phantom"), 501, 10, 64);
    let mut assoc = ct_association(full.port);
    let status = send_file(&mut assoc, &files[0]).unwrap().0;
    assert_eq!(status, 0xA700, "disk watermark");
    let _ = assoc.release();
    assert_eq!(count_instances(&full, &series), 0);
    assert!(c_echo(full.port), "still answers C-ECHO with a full disk");
}

#[test]
fn http_and_dicom_bind_loopback_by_default() {
    let defaults = noduled::config::Config::default();
    assert!(
        defaults.server.http.starts_with("127.0.0.1:"),
        "{}",
        defaults.server.http
    );
    assert_eq!(defaults.server.bind, "127.0.0.1");
}

/// `systemd-analyze security` on the shipped unit: prints the exposure score and keeps it at or
/// below 2.5 ("OK" or better).
#[test]
fn systemd_unit_exposure_is_low() {
    if !have("systemd-analyze") {
        return;
    }
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/noduled.service");
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let Some(line) = text.lines().find(|l| l.contains("Overall exposure level")) else {
        eprintln!("skipping: this systemd-analyze has no offline security check: {text}");
        return;
    };
    eprintln!("{line}");
    let score: f64 = line
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .expect("a score");
    assert!(score <= 2.5, "exposure {score}: {text}");
}
