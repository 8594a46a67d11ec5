//! The drop folder: DICOM files copied into `server.drop_folder` are ingested exactly like a
//! C-STORE (same validation, same durable store), once their size has stopped changing. A stored
//! file is deleted from the folder; a refused one moves to `rejected/` beside a `.reason` file.
//! `notify` wakes the scan as soon as something appears; a periodic scan also catches files that
//! were there before the start or whose events were missed.

use super::store_scp;
use super::Context;
use notify::{RecursiveMode, Watcher};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub async fn run(context: Arc<Context>) {
    let folder = context.config.server.drop_folder.clone();
    let rejected = folder.join("rejected");
    if let Err(e) = std::fs::create_dir_all(&rejected) {
        tracing::error!(folder = %folder.display(), error = %e, "drop folder unusable");
        return;
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(16);
    let watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
        let _ = tx.try_send(());
    })
    .and_then(|mut w| w.watch(&folder, RecursiveMode::NonRecursive).map(|_| w));
    let _watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the drop folder; polling it instead");
            None
        }
    };
    tracing::info!(folder = %folder.display(), "watching the drop folder");
    let mut seen: HashMap<PathBuf, (u64, Instant)> = HashMap::new();
    let mut shutdown = context.shutdown.clone();
    loop {
        tokio::select! {
            _ = rx.recv() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        let mut present = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file()
                || path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            present.push(path.clone());
            let size = meta.len();
            let stable = match seen.get(&path) {
                Some((last, since)) if *last == size => since.elapsed() >= Duration::from_secs(1),
                _ => {
                    seen.insert(path.clone(), (size, Instant::now()));
                    false
                }
            };
            if stable {
                seen.remove(&path);
                ingest(&context, &path, &rejected).await;
            }
        }
        seen.retain(|p, _| present.contains(p));
    }
}

async fn ingest(context: &Context, path: &Path, rejected: &Path) {
    let outcome = match std::fs::read(path) {
        Err(e) => Err(format!("cannot read: {e}")),
        Ok(bytes) => match parse(&bytes) {
            Err(e) => Err(e),
            Ok((ts, start)) => match store_scp::validate(bytes[start..].to_vec(), &ts, "", "") {
                Err(refused) => Err(refused.reason),
                Ok(incoming) => store_scp::store(context, incoming)
                    .await
                    .map_err(|r| r.reason),
            },
        },
    };
    match outcome {
        Ok(_) => {
            context.metrics.instance("stored");
            let _ = std::fs::remove_file(path);
        }
        Err(reason) => {
            context.metrics.instance("refused");
            let name = path
                .file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_default();
            tracing::warn!(file = ?name, reason = %reason, "drop-folder file refused");
            let target = rejected.join(&name);
            let _ = std::fs::rename(path, &target);
            let mut reason_file = target.into_os_string();
            reason_file.push(".reason");
            let _ = std::fs::write(PathBuf::from(reason_file), format!("{reason}\n"));
        }
    }
}

/// The transfer syntax and the data set offset of a Part 10 file.
fn parse(bytes: &[u8]) -> Result<(String, usize), String> {
    let start = super::scu::dataset_offset(bytes).ok_or("not a DICOM Part 10 file")?;
    let meta = dicom_object::FileMetaTable::from_reader(&bytes[128..start])
        .map_err(|e| format!("bad file meta group: {}", super::one_line(&e.to_string())))?;
    Ok((
        meta.transfer_syntax().trim_end_matches('\0').to_string(),
        start,
    ))
}
