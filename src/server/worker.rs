//! Analysis workers: a fixed pool of OS threads (inference is CPU-bound and must not block the
//! async runtime) that take queued jobs from sled and run the same library path as
//! `noduled analyze`: load the series with the input rules, run the [`Pipeline`](crate::pipeline::Pipeline), build the SR,
//! and store it like any received instance.
//!
//! Exactly once: a job is claimed atomically; its SR's UIDs are derived from the series and its
//! generation, so a job re-run after a crash rewrites the same SR instead of adding a second; a
//! newer generation's SR supersedes (deletes) the older one. Memory is bounded by `workers`: the
//! queue itself is in sled, not in memory.

use super::Context;
use crate::dicom::sr::{self, SrOptions};
use crate::dicom::{load_series_with, SeriesError};
use crate::store::{
    keys_of_dataset, IncomingInstance, InstanceKind, JobRecord, JobState, SeriesState,
};
use crate::uid;
use dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Wakes idle workers when a job is queued (they also poll, so a lost wake-up costs a second).
#[derive(Default)]
pub struct JobSignal {
    generation: Mutex<u64>,
    ready: Condvar,
}

impl JobSignal {
    pub fn wake_all(&self) {
        if let Ok(mut g) = self.generation.lock() {
            *g += 1;
        }
        self.ready.notify_all();
    }

    fn wait(&self, timeout: Duration) {
        if let Ok(guard) = self.generation.lock() {
            let _ = self.ready.wait_timeout(guard, timeout);
        }
    }
}

/// Starts `server.workers` threads.
pub fn start(
    context: Arc<Context>,
    runtime: tokio::runtime::Handle,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..context.config.server.workers.max(1))
        .filter_map(|i| {
            let context = context.clone();
            let runtime = runtime.clone();
            std::thread::Builder::new()
                .name(format!("noduled-analysis-{i}"))
                .spawn(move || run(context, runtime))
                .ok()
        })
        .collect()
}

fn run(context: Arc<Context>, runtime: tokio::runtime::Handle) {
    while !context.is_shutting_down() {
        match context.store.claim_job() {
            Ok(Some(job)) => {
                let series = job.series_uid.clone();
                let span = tracing::info_span!("analysis", series_uid = %series, generation = job.generation);
                let _entered = span.enter();
                if let Err(e) = run_job(&context, &job, &runtime) {
                    tracing::error!(error = %e, "analysis failed");
                    let _ = context.store.set_job(&series, |j| {
                        j.state = JobState::Failed;
                        j.error = Some(e.clone());
                        j.finished_unix = Some(crate::store::now_unix());
                    });
                    let _ = context.store.update_series(&series, |s| {
                        if s.generation == job.generation {
                            s.state = SeriesState::Refused;
                            s.reason = Some(format!("analysis-failed: {e}"));
                        }
                    });
                    context.metrics.job("failed");
                }
            }
            Ok(None) => context.jobs_ready.wait(Duration::from_secs(1)),
            Err(e) => {
                tracing::error!(error = %e, "reading the job queue failed");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Runs one job to its recorded end. `Err` is an unexpected failure (recorded by the caller);
/// a series the input rules refuse is a normal, recorded outcome.
fn run_job(
    context: &Context,
    job: &JobRecord,
    runtime: &tokio::runtime::Handle,
) -> Result<(), String> {
    let store = &context.store;
    let uid = job.series_uid.as_str();
    let dir = store.series_dir(uid);
    let volume = match load_series_with(&dir, Some(uid), &context.config.series) {
        Ok(volume) => volume,
        Err(SeriesError::Refused { refusal, .. }) => {
            let reason = format!("{}: {refusal}", refusal.code());
            tracing::warn!(reason = %reason, "series refused by the input rules");
            store
                .update_series(uid, |s| {
                    if s.generation == job.generation {
                        s.state = SeriesState::Refused;
                        s.reason = Some(reason.clone());
                    }
                })
                .map_err(|e| e.to_string())?;
            store
                .set_job(uid, |j| {
                    j.state = JobState::Done;
                    j.error = Some(reason.clone());
                    j.finished_unix = Some(crate::store::now_unix());
                })
                .map_err(|e| e.to_string())?;
            context.metrics.job("refused");
            return Ok(());
        }
        Err(other) => return Err(super::one_line(&other.to_string())),
    };
    let analysis = context
        .pipeline
        .analyze(&volume, &|_, _, _| {})
        .map_err(|e| super::one_line(&e.to_string()))?;
    context.metrics.stage_seconds(&analysis.seconds);
    let generation = job.generation.to_string();
    let options = SrOptions {
        uids: Some((
            uid::derived(&["sr-series", uid]),
            uid::derived(&["sr", uid, &generation]),
        )),
        ..SrOptions::default()
    };
    let report = sr::build_sr(&analysis, &volume.series, &volume.geometry, &options)
        .map_err(|e| e.to_string())?;
    if context.config.server.key_images {
        store_key_images(context, uid, &generation, &analysis, &volume)?;
    }
    drop(volume);
    let sr_uid = store_derived(store, &report)?;
    let mut superseded = None;
    store
        .update_series(uid, |s| {
            if s.sr_uid.as_deref().is_some_and(|old| old != sr_uid) {
                superseded = s.sr_uid.clone();
            }
            s.sr_uid = Some(sr_uid.clone());
            s.findings = Some(analysis.findings.len());
            s.malignant_present = Some(analysis.malignant_present);
            if s.generation == job.generation && s.state == SeriesState::Queued {
                s.state = SeriesState::Analysed;
                s.reason = None;
            }
        })
        .map_err(|e| e.to_string())?;
    if let Some(old) = superseded {
        tracing::info!(superseded = %old, "an earlier report of this series was replaced");
        store.remove_instance(&old).map_err(|e| e.to_string())?;
    }
    store
        .set_job(uid, |j| {
            if j.generation == job.generation {
                j.state = JobState::Done;
                j.error = None;
                j.finished_unix = Some(crate::store::now_unix());
            }
        })
        .map_err(|e| e.to_string())?;
    context.metrics.job("done");
    tracing::info!(
        sr_sop_instance_uid = %sr_uid,
        candidates = analysis.candidates.len(),
        findings = analysis.findings.len(),
        malignant_present = analysis.malignant_present,
        seconds = format!("{:.1}", analysis.seconds.total),
        "series analysed, report stored"
    );
    forward(context, &sr_uid, runtime);
    Ok(())
}

/// Stores an object noduled made (SR, key image) like a received instance, in explicit VR little
/// endian; returns its SOP Instance UID.
fn store_derived(
    store: &crate::store::Store,
    object: &dicom_object::InMemDicomObject,
) -> Result<String, String> {
    let mut dataset = Vec::new();
    object
        .write_dataset_with_ts(&mut dataset, &EXPLICIT_VR_LITTLE_ENDIAN.erased())
        .map_err(|e| super::one_line(&e.to_string()))?;
    let keys = keys_of_dataset(object);
    let sop_instance_uid = keys
        .get(dicom_dictionary_std::tags::SOP_INSTANCE_UID)
        .to_string();
    store
        .put_instance(IncomingInstance {
            sop_class_uid: keys
                .get(dicom_dictionary_std::tags::SOP_CLASS_UID)
                .to_string(),
            sop_instance_uid: sop_instance_uid.clone(),
            transfer_syntax: EXPLICIT_VR_LITTLE_ENDIAN.uid().to_string(),
            keys,
            kind: InstanceKind::Report,
            dataset,
        })
        .map_err(|e| e.to_string())?;
    Ok(sop_instance_uid)
}

/// Stores one Secondary Capture key image per finding in a series of the CT's study, with UIDs
/// derived from the source series and generation; images of an older generation are removed.
fn store_key_images(
    context: &Context,
    uid: &str,
    generation: &str,
    analysis: &crate::pipeline::Analysis,
    volume: &crate::Volume,
) -> Result<(), String> {
    use crate::dicom::keyimage::{build_key_image, KeyImageOptions};
    let series_uid = uid::derived(&["key-images", uid]);
    let mut current = Vec::new();
    for (k, finding) in analysis.findings.iter().enumerate() {
        let number = k + 1;
        let Some((slice, image)) = crate::render::finding_key_image(
            volume.hu.view(),
            volume.geometry.spacing_xyz,
            finding,
            number,
        ) else {
            continue;
        };
        let description = crate::render::describe_finding(finding, number);
        let options = KeyImageOptions {
            sop_instance_uid: Some(uid::derived(&[
                "key-image",
                uid,
                generation,
                &number.to_string(),
            ])),
            ..KeyImageOptions::new(series_uid.clone(), number as u32)
        };
        let object = build_key_image(&image, &volume.series, slice, &description, &options)
            .map_err(|e| e.to_string())?;
        current.push(store_derived(&context.store, &object)?);
    }
    for old in context
        .store
        .series_instances(&series_uid)
        .map_err(|e| e.to_string())?
    {
        if !current.contains(&old.sop_instance_uid) {
            context
                .store
                .remove_instance(&old.sop_instance_uid)
                .map_err(|e| e.to_string())?;
        }
    }
    tracing::info!(key_images = current.len(), "key images stored");
    Ok(())
}

/// Sends a new report to every `forward_reports_to` destination, retrying with back-off.
fn forward(context: &Context, sr_uid: &str, runtime: &tokio::runtime::Handle) {
    let Ok(Some(record)) = context.store.instance(sr_uid) else {
        return;
    };
    for ae in &context.config.server.forward_reports_to {
        let Some(destination) = context.destination(ae).cloned() else {
            continue;
        };
        let store = context.store.clone();
        let record = record.clone();
        let our_ae = context.config.server.ae_title.clone();
        let timeout = Duration::from_secs_f64(context.config.server.dimse_timeout_seconds);
        let mut shutdown = context.shutdown.clone();
        runtime.spawn(async move {
            let mut delay = Duration::from_secs(2);
            for attempt in 1..=6 {
                let item = super::scu::Outgoing::from_record(&store, &record);
                match super::scu::send(&our_ae, &destination, std::slice::from_ref(&item), None, timeout).await {
                    Ok(counts) if counts.failed == 0 => {
                        tracing::info!(destination = %destination.ae_title, "report forwarded");
                        return;
                    }
                    Ok(_) => tracing::warn!(destination = %destination.ae_title, attempt, "forward refused by the destination"),
                    Err(e) => tracing::warn!(destination = %destination.ae_title, attempt, error = %e, "forward failed"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(300));
            }
            tracing::error!(destination = %destination.ae_title, "giving up forwarding the report");
        });
    }
}
