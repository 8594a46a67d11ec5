//! Series completion: DICOM has no "end of series" message, so a series is complete once no
//! instance has arrived for `completion_seconds` and no open association is still sending to it.
//! A complete series gets an analysis job in sled (atomically with its state change, so a crash
//! cannot lose or double it); the input rules then run in the worker, whose refusal is recorded on
//! the series. The same loop applies the retention policy to source images.

use super::Context;
use crate::store::{now_unix, InstanceKind, SeriesState};
use std::sync::Arc;
use std::time::Duration;

pub async fn run(context: Arc<Context>) {
    let quiet = context.config.server.completion_seconds;
    let tick = Duration::from_secs_f64((quiet / 4.0).clamp(0.1, 1.0));
    let mut shutdown = context.shutdown.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.changed() => return,
        }
        let ctx = context.clone();
        let result = tokio::task::spawn_blocking(move || check(&ctx)).await;
        if let Ok(Err(e)) = result {
            tracing::error!(error = %e, "series completion check failed");
        }
    }
}

fn check(context: &Context) -> Result<(), crate::store::StoreError> {
    let now = now_unix();
    let server = &context.config.server;
    for series in context.store.all_series()? {
        match series.state {
            SeriesState::Receiving => {
                if now - series.last_received_unix < server.completion_seconds
                    || context.is_sending(&series.series_uid)
                {
                    continue;
                }
                // C-STORE stops at the cap and records why (so the count never exceeds it):
                // a capped series is refused as a whole, never analysed on its first slices.
                let capped = series
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("series-too-large"));
                if capped || series.instance_count > server.max_series_instances {
                    let reason = format!(
                        "series-too-large: {} instances stored, more than {} sent",
                        series.instance_count, server.max_series_instances
                    );
                    tracing::warn!(series_uid = %series.series_uid, reason = %reason, "series refused");
                    context.store.update_series(&series.series_uid, |s| {
                        s.state = SeriesState::Refused;
                        s.reason = Some(reason.clone());
                    })?;
                    continue;
                }
                if context
                    .store
                    .queue_job(&series.series_uid, series.generation)?
                {
                    tracing::info!(
                        series_uid = %series.series_uid,
                        instances = series.instance_count,
                        "series complete, analysis queued"
                    );
                    context.metrics.job("queued");
                    context.jobs_ready.wake_all();
                }
            }
            SeriesState::Analysed | SeriesState::Refused
                if server.retention_days > 0.0
                    && now - series.last_received_unix > server.retention_days * 86400.0 =>
            {
                expire_images(context, &series.series_uid)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Deletes a series' source images (its reports stay).
fn expire_images(context: &Context, series_uid: &str) -> Result<(), crate::store::StoreError> {
    let images: Vec<_> = context
        .store
        .series_instances(series_uid)?
        .into_iter()
        .filter(|r| r.kind == InstanceKind::Image)
        .collect();
    if images.is_empty() {
        return Ok(());
    }
    for record in &images {
        context.store.remove_instance(&record.sop_instance_uid)?;
    }
    tracing::info!(series_uid = %series_uid, removed = images.len(), "source images past retention removed");
    Ok(())
}
