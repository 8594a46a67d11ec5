//! The accept loop: one task per association, at most `max_associations` at once.
//!
//! A connection over the limit is closed at once (the peer sees the connection drop and retries
//! later) rather than queued, so a flood cannot pile up sockets. On shutdown the loop stops
//! accepting and gives open associations `shutdown_grace_seconds` before aborting them.

use super::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

pub async fn run(listener: TcpListener, context: Arc<Context>) {
    let limit = Arc::new(Semaphore::new(context.config.server.max_associations));
    let mut open = JoinSet::new();
    let mut shutdown = context.shutdown.clone();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(_) = open.join_next(), if !open.is_empty() => {}
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    tracing::warn!(peer = %peer, "association refused: too many open associations");
                    context.metrics.association("refused_limit");
                    drop(socket);
                    continue;
                };
                let context = context.clone();
                open.spawn(async move {
                    super::association::serve(socket, peer, context).await;
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    let grace = Duration::from_secs_f64(context.config.server.shutdown_grace_seconds);
    if !open.is_empty() {
        tracing::info!(
            open = open.len(),
            grace_seconds = grace.as_secs_f64(),
            "waiting for open associations"
        );
        let drained =
            tokio::time::timeout(grace, async { while open.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                aborted = open.len(),
                "grace period over: aborting open associations"
            );
            open.abort_all();
            while open.join_next().await.is_some() {}
        }
    }
}
