//! The durable store: DICOM files in a spool folder, indexed in sled.
//!
//! Everything the daemon acknowledges lives here. The order of writes is what makes it crash-safe:
//! an instance's file is written to a temporary name, fsynced, renamed into place and its folder
//! fsynced; only then is it indexed in sled (one transaction over the instance, series-membership
//! and series trees) and the caller answers Success. The spool file is the durable copy: the index
//! is not flushed per instance (sled flushes on its own every half second), because a crash that
//! loses the newest index entries leaves files the index does not know, and [`Store::open`] finds
//! such files and indexes them. So nothing acknowledged or half-written is lost, and a resend of
//! the same SOP Instance UID is recognised and stored once.
//!
//! Analysis jobs live in sled too ([`JobRecord`]), keyed by series, so they survive restarts.
//! Layout on disk: `<state>/index.sled/` and `<state>/spool/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`.

pub mod records;

pub use records::{
    InstanceKind, InstanceRecord, JobRecord, JobState, QueryKeys, SeriesRecord, SeriesState,
};

use dicom_object::{DefaultDicomObject, FileMetaTableBuilder, InMemDicomObject};
use sled::Transactional;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{IoSlice, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O on {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("index database: {0}")]
    Index(String),
    #[error("free disk space {free_mb} MB is below the watermark {min_mb} MB")]
    DiskFull { free_mb: u64, min_mb: u64 },
    #[error("invalid instance: {0}")]
    Invalid(String),
    #[error("corrupt index record {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Index(e.to_string())
    }
}

impl From<sled::transaction::TransactionError<StoreError>> for StoreError {
    fn from(e: sled::transaction::TransactionError<StoreError>) -> Self {
        match e {
            sled::transaction::TransactionError::Abort(inner) => inner,
            sled::transaction::TransactionError::Storage(e) => StoreError::Index(e.to_string()),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |error| StoreError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// What [`Store::write_instance`] did.
#[derive(Debug)]
pub enum Written {
    /// The SOP Instance UID is already stored; nothing written.
    Duplicate,
    /// The file is durable; this record still has to be indexed.
    New(InstanceRecord),
}

/// A file created in the spool ahead of the instance it will hold ([`Store::prepare_slot`]).
/// Creating a file costs about as much as fsyncing it here (ext4 inode allocation), so the
/// C-STORE SCP creates the next one while the sender is still sending the next instance. An unused
/// slot is removed when dropped; one a crash leaves behind is removed at the next start.
#[derive(Debug)]
pub struct SpoolSlot {
    path: PathBuf,
    file: File,
    /// Renamed into place: nothing to remove.
    used: bool,
}

impl Drop for SpoolSlot {
    fn drop(&mut self) {
        if !self.used {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Spool subfolder of [`SpoolSlot`]s (series folders are named by UIDs: digits, dots, `_`).
const SLOTS: &str = ".incoming";

/// What [`Store::put_instance`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// A new instance was stored.
    Stored,
    /// The SOP Instance UID was already stored; nothing was written.
    Duplicate,
}

/// An instance ready to be stored: its identity, query keys and encoded data set.
#[derive(Debug, Clone)]
pub struct IncomingInstance {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub transfer_syntax: String,
    pub keys: QueryKeys,
    pub kind: InstanceKind,
    /// The data set encoded in `transfer_syntax` (no preamble, no file meta group).
    pub dataset: Vec<u8>,
}

/// The durable store. Cheap to clone (sled handles are shared).
#[derive(Clone)]
pub struct Store {
    root: PathBuf,
    spool: PathBuf,
    db: sled::Db,
    instances: sled::Tree,
    members: sled::Tree,
    series: sled::Tree,
    jobs: sled::Tree,
    min_free_mb: u64,
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// How long [`open_index`] waits for an index whose lock another holder is giving up.
const INDEX_LOCK_WAIT: Duration = Duration::from_secs(5);

/// Opens the sled index at `path`. sled's lock outlives a dropped `Db` for a moment (its flusher
/// thread exits on its own), and a restarted daemon can start while the old process still exits,
/// so a held lock is retried for [`INDEX_LOCK_WAIT`] before it is an error.
fn open_index(path: &Path) -> Result<sled::Db, sled::Error> {
    let started = std::time::Instant::now();
    loop {
        match sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .open()
        {
            // sled reports a held lock only in words (an `Other` I/O error)
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && started.elapsed() < INDEX_LOCK_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

impl Store {
    /// Opens (or creates) the store under `state_dir`, and indexes any spool file a crash left
    /// unindexed. `min_free_mb` is the disk watermark below which new instances are refused.
    pub fn open(state_dir: &Path, min_free_mb: u64) -> Result<Store, StoreError> {
        let spool = state_dir.join("spool");
        fs::create_dir_all(&spool).map_err(io(&spool))?;
        let db = open_index(&state_dir.join("index.sled"))?;
        let store = Store {
            root: state_dir.to_path_buf(),
            instances: db.open_tree("instances")?,
            members: db.open_tree("series_members")?,
            series: db.open_tree("series")?,
            jobs: db.open_tree("jobs")?,
            db,
            spool,
            min_free_mb,
        };
        store.recover()?;
        Ok(store)
    }

    /// The state folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder holding one series' files (what the analysis loads).
    pub fn series_dir(&self, series_uid: &str) -> PathBuf {
        self.spool.join(safe_name(series_uid))
    }

    /// Refuses with [`StoreError::DiskFull`] when free space is below the watermark.
    pub fn check_space(&self) -> Result<(), StoreError> {
        if self.min_free_mb == 0 {
            return Ok(());
        }
        let free_mb = free_space_mb(&self.spool).map_err(io(&self.spool))?;
        if free_mb < self.min_free_mb {
            return Err(StoreError::DiskFull {
                free_mb,
                min_mb: self.min_free_mb,
            });
        }
        Ok(())
    }

    /// Creates an empty spool file for a coming instance (see [`SpoolSlot`]).
    pub fn prepare_slot(&self) -> Result<SpoolSlot, StoreError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = self.spool.join(SLOTS);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{}-{n}.tmp", std::process::id()));
        let file = File::create(&path).map_err(io(&path))?;
        Ok(SpoolSlot {
            path,
            file,
            used: false,
        })
    }

    /// Stores an instance durably (file and folder fsynced, then indexed) unless its SOP Instance UID is
    /// already stored. A new image instance puts its series back to `Receiving`.
    pub fn put_instance(&self, incoming: IncomingInstance) -> Result<PutOutcome, StoreError> {
        match self.write_instance(incoming)? {
            Written::Duplicate => Ok(PutOutcome::Duplicate),
            Written::New(record) => self.index_instance(&record),
        }
    }

    /// The first half of [`Store::put_instance`]: the durable part. Writes the instance's spool
    /// file (temp file, fsync, rename, folder fsync) unless its SOP Instance UID is already
    /// indexed, and returns the record [`Store::index_instance`] then indexes. Once this returns,
    /// the instance survives a crash (a spool file the index does not know is indexed at the next
    /// start), so the C-STORE SCP answers Success here and indexes while the sender sends on.
    pub fn write_instance(&self, incoming: IncomingInstance) -> Result<Written, StoreError> {
        self.write_instance_in(incoming, None)
    }

    /// [`Store::write_instance`] into a file made ahead by [`Store::prepare_slot`] (used up
    /// only when the instance is written; a duplicate leaves it for the next).
    pub fn write_instance_in(
        &self,
        incoming: IncomingInstance,
        slot: Option<&mut Option<SpoolSlot>>,
    ) -> Result<Written, StoreError> {
        let uid = incoming.sop_instance_uid.clone();
        if uid.is_empty() || incoming.keys.series_uid().is_empty() {
            return Err(StoreError::Invalid(
                "SOP Instance UID or Series Instance UID missing".into(),
            ));
        }
        if self.instances.contains_key(uid.as_bytes())? {
            return Ok(Written::Duplicate);
        }
        self.check_space()?;
        let series_uid = incoming.keys.series_uid().to_string();
        let dir = self.series_dir(&series_uid);
        let path = dir.join(format!("{}.dcm", safe_name(&uid)));
        write_part10(&path, &incoming, slot.and_then(Option::take))?;
        Ok(Written::New(InstanceRecord {
            sop_instance_uid: uid,
            sop_class_uid: incoming.sop_class_uid,
            transfer_syntax: incoming.transfer_syntax,
            file: path
                .strip_prefix(&self.root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned(),
            bytes: incoming.dataset.len() as u64,
            received_unix: now_unix(),
            kind: incoming.kind,
            keys: incoming.keys,
        }))
    }

    /// The second half of [`Store::put_instance`]: indexes a record [`Store::write_instance`]
    /// returned (`Duplicate` when a concurrent sender indexed the same SOP Instance UID first).
    /// No index flush: the fsynced spool file is the durable copy, and [`Store::open`] indexes any
    /// spool file the index lost (a power cut before sled's own periodic flush); flushing sled too
    /// cost a third sync per instance.
    pub fn index_instance(&self, record: &InstanceRecord) -> Result<PutOutcome, StoreError> {
        Ok(if self.index(record)? {
            PutOutcome::Stored
        } else {
            PutOutcome::Duplicate
        })
    }

    /// Indexes one instance record in one transaction; false if it was already indexed.
    fn index(&self, record: &InstanceRecord) -> Result<bool, StoreError> {
        let value = serde_json::to_vec(record).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let series_uid = record.keys.series_uid().to_string();
        let member_key = member_key(&series_uid, &record.sop_instance_uid);
        let result = (&self.instances, &self.members, &self.series).transaction(
            |(instances, members, series)| {
                if instances.get(record.sop_instance_uid.as_bytes())?.is_some() {
                    return Ok(false);
                }
                instances.insert(record.sop_instance_uid.as_bytes(), value.as_slice())?;
                members.insert(member_key.as_slice(), &[] as &[u8])?;
                let mut entry = match series.get(series_uid.as_bytes())? {
                    Some(bytes) => serde_json::from_slice::<SeriesRecord>(&bytes).map_err(|e| {
                        sled::transaction::ConflictableTransactionError::Abort(
                            StoreError::Corrupt {
                                key: series_uid.clone(),
                                reason: e.to_string(),
                            },
                        )
                    })?,
                    None => SeriesRecord::new(&record.keys, record.kind),
                };
                entry.instance_count += 1;
                entry.last_received_unix = record.received_unix;
                if record.kind == InstanceKind::Image {
                    // New images change the series: it must be (re-)completed and (re-)analysed.
                    if entry.state != SeriesState::Receiving {
                        entry.generation += 1;
                    }
                    entry.state = SeriesState::Receiving;
                    entry.reason = None;
                } else {
                    entry.state = SeriesState::Report;
                }
                let bytes = serde_json::to_vec(&entry).map_err(|e| {
                    sled::transaction::ConflictableTransactionError::Abort(StoreError::Invalid(
                        e.to_string(),
                    ))
                })?;
                series.insert(series_uid.as_bytes(), bytes)?;
                Ok(true)
            },
        )?;
        Ok(result)
    }

    /// Finds spool files the index does not know (a crash after the file, before the index) and
    /// indexes them. Temporary files of interrupted writes are removed.
    fn recover(&self) -> Result<(), StoreError> {
        let mut recovered = 0usize;
        for series_dir in read_dir(&self.spool)? {
            if !series_dir.is_dir() {
                continue;
            }
            for path in read_dir(&series_dir)? {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.ends_with(".tmp") {
                    let _ = fs::remove_file(&path);
                    continue;
                }
                let Some(uid) = name.strip_suffix(".dcm") else {
                    continue;
                };
                if self.instances.contains_key(uid.as_bytes())? {
                    continue;
                }
                match record_from_file(&path, &self.root) {
                    Ok(record) => {
                        self.index(&record)?;
                        recovered += 1;
                    }
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "unreadable spool file set aside");
                        let _ = fs::rename(&path, path.with_extension("unreadable"));
                    }
                }
            }
        }
        if recovered > 0 {
            tracing::info!(recovered, "indexed spool files left by an interrupted run");
            self.db.flush()?;
        }
        Ok(())
    }

    /// One instance's record.
    pub fn instance(&self, sop_instance_uid: &str) -> Result<Option<InstanceRecord>, StoreError> {
        self.instances
            .get(sop_instance_uid.as_bytes())?
            .map(|bytes| decode(sop_instance_uid, &bytes))
            .transpose()
    }

    /// The absolute path of an instance's file.
    pub fn instance_path(&self, record: &InstanceRecord) -> PathBuf {
        self.root.join(&record.file)
    }

    /// Every instance record (C-FIND walks these; an appliance holds thousands, not millions).
    pub fn all_instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.instances.iter() {
            let (key, value) = item?;
            out.push(decode(&String::from_utf8_lossy(&key), &value)?);
        }
        Ok(out)
    }

    /// The instances of one series.
    pub fn series_instances(&self, series_uid: &str) -> Result<Vec<InstanceRecord>, StoreError> {
        let prefix = member_key(series_uid, "");
        let mut out = Vec::new();
        for item in self.members.scan_prefix(&prefix) {
            let (key, _) = item?;
            let sop = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            if let Some(record) = self.instance(&sop)? {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// One series' record.
    pub fn series(&self, series_uid: &str) -> Result<Option<SeriesRecord>, StoreError> {
        self.series
            .get(series_uid.as_bytes())?
            .map(|bytes| decode(series_uid, &bytes))
            .transpose()
    }

    /// Every series record.
    pub fn all_series(&self) -> Result<Vec<SeriesRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.series.iter() {
            let (key, value) = item?;
            out.push(decode(&String::from_utf8_lossy(&key), &value)?);
        }
        Ok(out)
    }

    /// Applies `change` to a series record atomically (compare-and-swap loop) and flushes.
    pub fn update_series(
        &self,
        series_uid: &str,
        mut change: impl FnMut(&mut SeriesRecord),
    ) -> Result<Option<SeriesRecord>, StoreError> {
        let mut result = None;
        self.series.fetch_and_update(series_uid.as_bytes(), |old| {
            let old = old?;
            let mut record: SeriesRecord = serde_json::from_slice(old).ok()?;
            change(&mut record);
            let bytes = serde_json::to_vec(&record).ok()?;
            result = Some(record);
            Some(bytes)
        })?;
        self.db.flush()?;
        Ok(result)
    }

    /// Marks a complete series as queued for analysis and records its job, in one transaction:
    /// only if the series is still at `generation` and `Receiving` (a new instance since wins).
    pub fn queue_job(&self, series_uid: &str, generation: u64) -> Result<bool, StoreError> {
        let queued = (&self.series, &self.jobs).transaction(|(series, jobs)| {
            let Some(bytes) = series.get(series_uid.as_bytes())? else {
                return Ok(false);
            };
            let Ok(mut record) = serde_json::from_slice::<SeriesRecord>(&bytes) else {
                return Ok(false);
            };
            if record.generation != generation || record.state != SeriesState::Receiving {
                return Ok(false);
            }
            record.state = SeriesState::Queued;
            let job = JobRecord {
                series_uid: series_uid.to_string(),
                generation,
                state: JobState::Queued,
                attempts: 0,
                queued_unix: now_unix(),
                finished_unix: None,
                error: None,
            };
            series.insert(
                series_uid.as_bytes(),
                serde_json::to_vec(&record).unwrap_or_default(),
            )?;
            jobs.insert(
                series_uid.as_bytes(),
                serde_json::to_vec(&job).unwrap_or_default(),
            )?;
            Ok(true)
        })?;
        if queued {
            self.db.flush()?;
        }
        Ok(queued)
    }

    /// Every job record.
    pub fn all_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.jobs.iter() {
            let (key, value) = item?;
            out.push(decode(&String::from_utf8_lossy(&key), &value)?);
        }
        Ok(out)
    }

    /// One job's record.
    pub fn job(&self, series_uid: &str) -> Result<Option<JobRecord>, StoreError> {
        self.jobs
            .get(series_uid.as_bytes())?
            .map(|bytes| decode(series_uid, &bytes))
            .transpose()
    }

    /// Takes the oldest queued job and marks it running (atomically, so two workers never take
    /// the same one).
    pub fn claim_job(&self) -> Result<Option<JobRecord>, StoreError> {
        let mut queued: Vec<JobRecord> = self
            .all_jobs()?
            .into_iter()
            .filter(|j| j.state == JobState::Queued)
            .collect();
        queued.sort_by(|a, b| a.queued_unix.total_cmp(&b.queued_unix));
        for job in queued {
            let mut claimed = None;
            self.jobs
                .fetch_and_update(job.series_uid.as_bytes(), |old| {
                    let old = old?;
                    let mut record: JobRecord = serde_json::from_slice(old).ok()?;
                    if record.state != JobState::Queued {
                        return Some(old.to_vec());
                    }
                    record.state = JobState::Running;
                    record.attempts += 1;
                    claimed = Some(record.clone());
                    serde_json::to_vec(&record).ok()
                })?;
            if let Some(record) = claimed {
                self.db.flush()?;
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    /// Jobs left `Running` by a crash go back to the queue (their work was never recorded).
    pub fn requeue_interrupted(&self) -> Result<usize, StoreError> {
        let mut count = 0;
        for job in self.all_jobs()? {
            if job.state == JobState::Running {
                self.set_job(&job.series_uid, |j| j.state = JobState::Queued)?;
                count += 1;
            }
        }
        Ok(count)
    }

    /// Applies `change` to a job record and flushes.
    pub fn set_job(
        &self,
        series_uid: &str,
        mut change: impl FnMut(&mut JobRecord),
    ) -> Result<(), StoreError> {
        self.jobs.fetch_and_update(series_uid.as_bytes(), |old| {
            let old = old?;
            let mut record: JobRecord = serde_json::from_slice(old).ok()?;
            change(&mut record);
            serde_json::to_vec(&record).ok()
        })?;
        self.db.flush()?;
        Ok(())
    }

    /// Removes an instance (file and index), e.g. a superseded report or an expired image.
    pub fn remove_instance(&self, sop_instance_uid: &str) -> Result<(), StoreError> {
        let Some(record) = self.instance(sop_instance_uid)? else {
            return Ok(());
        };
        let series_uid = record.keys.series_uid().to_string();
        (&self.instances, &self.members, &self.series).transaction(
            |(instances, members, series)| {
                instances.remove(sop_instance_uid.as_bytes())?;
                members.remove(member_key(&series_uid, sop_instance_uid))?;
                if let Some(bytes) = series.get(series_uid.as_bytes())? {
                    if let Ok(mut entry) = serde_json::from_slice::<SeriesRecord>(&bytes) {
                        entry.instance_count = entry.instance_count.saturating_sub(1);
                        if entry.instance_count == 0 {
                            series.remove(series_uid.as_bytes())?;
                        } else {
                            series.insert(
                                series_uid.as_bytes(),
                                serde_json::to_vec(&entry).unwrap_or_default(),
                            )?;
                        }
                    }
                }
                Ok::<_, sled::transaction::ConflictableTransactionError<StoreError>>(())
            },
        )?;
        self.db.flush()?;
        let path = self.instance_path(&record);
        let _ = fs::remove_file(&path);
        Ok(())
    }

    /// Counts for metrics and status: instances, series by state, jobs by state.
    pub fn counts(&self) -> Result<StoreCounts, StoreError> {
        let mut counts = StoreCounts {
            instances: self.instances.len() as u64,
            ..StoreCounts::default()
        };
        for series in self.all_series()? {
            *counts
                .series_by_state
                .entry(series.state.as_str().to_string())
                .or_default() += 1;
        }
        for job in self.all_jobs()? {
            *counts
                .jobs_by_state
                .entry(job.state.as_str().to_string())
                .or_default() += 1;
        }
        Ok(counts)
    }

    /// Flushes the index (used at shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

/// Counts for `/metrics` and `/status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StoreCounts {
    pub instances: u64,
    pub series_by_state: BTreeMap<String, u64>,
    pub jobs_by_state: BTreeMap<String, u64>,
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

fn member_key(series_uid: &str, sop_uid: &str) -> Vec<u8> {
    let mut key = series_uid.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(sop_uid.as_bytes());
    key
}

/// UIDs are digits and dots; anything else is replaced so a hostile UID cannot escape the spool.
fn safe_name(uid: &str) -> String {
    let cleaned: String = uid
        .chars()
        .map(|c| {
            if c.is_ascii_digit() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cleaned = cleaned.trim_matches('.').to_string();
    if cleaned.is_empty() {
        "_".into()
    } else {
        cleaned
    }
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        out.push(entry.map_err(io(dir))?.path());
    }
    out.sort();
    Ok(out)
}

/// Writes a DICOM Part 10 file durably: temp file (or `slot`), fsync, rename, fsync of the folder.
fn write_part10(
    path: &Path,
    incoming: &IncomingInstance,
    slot: Option<SpoolSlot>,
) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io(dir))?;
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(incoming.sop_class_uid.as_str())
        .media_storage_sop_instance_uid(incoming.sop_instance_uid.as_str())
        .transfer_syntax(incoming.transfer_syntax.as_str())
        .implementation_class_uid(crate::uid::IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(crate::uid::IMPLEMENTATION_VERSION_NAME)
        .build()
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    let tmp = match &slot {
        Some(slot) => slot.path.clone(),
        None => path.with_extension("tmp"),
    };
    let created;
    let mut file: &File = match &slot {
        Some(slot) => &slot.file,
        None => {
            created = File::create(&tmp).map_err(io(&tmp))?;
            &created
        }
    };
    let mut head = vec![0u8; 128];
    head.extend_from_slice(b"DICM");
    meta.write(&mut head)
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    // One vectored write (header + data set) rather than two.
    let mut parts = [IoSlice::new(&head), IoSlice::new(&incoming.dataset)];
    let mut parts: &mut [IoSlice<'_>] = &mut parts;
    while !parts.is_empty() {
        match file.write_vectored(parts) {
            Ok(0) => return Err(io(&tmp)(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => IoSlice::advance_slices(&mut parts, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(&tmp)(e)),
        }
    }
    file.sync_data().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(mut slot) = slot {
        slot.used = true;
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

/// Rebuilds an index record from a stored file (crash recovery).
fn record_from_file(path: &Path, root: &Path) -> Result<InstanceRecord, StoreError> {
    let obj: DefaultDicomObject =
        dicom_object::open_file(path).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let meta = obj.meta();
    let keys = QueryKeys::from_object(&obj);
    let kind = InstanceKind::of_sop_class(meta.media_storage_sop_class_uid());
    let bytes = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    Ok(InstanceRecord {
        sop_instance_uid: trim_uid(meta.media_storage_sop_instance_uid()),
        sop_class_uid: trim_uid(meta.media_storage_sop_class_uid()),
        transfer_syntax: trim_uid(meta.transfer_syntax()),
        file: path
            .strip_prefix(root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned(),
        bytes,
        received_unix: now_unix(),
        kind,
        keys,
    })
}

/// UIDs in DICOM are padded with NUL to even length.
pub fn trim_uid(uid: &str) -> String {
    uid.trim_end_matches(['\0', ' ']).to_string()
}

/// Query keys of a data set read from the wire.
pub fn keys_of_dataset(obj: &InMemDicomObject) -> QueryKeys {
    QueryKeys::from_object(obj)
}

fn free_space_mb(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and `stat` is a writable statvfs.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64) / (1024 * 1024))
}

#[cfg(test)]
mod tests;
