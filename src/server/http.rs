//! The HTTP endpoint (loopback by default): `/healthz` for probes, `/metrics` for Prometheus,
//! `/status` (JSON) for operators: every series with its state and, for refused ones, the reason;
//! the analysis jobs. Patient names never appear here, only UIDs.

use super::{Context, ServerError};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use std::net::SocketAddr;
use std::sync::Arc;

pub async fn start(
    context: Arc<Context>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ServerError> {
    let address = context.config.server.http.clone();
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .map_err(|error| ServerError::Bind {
            address: address.clone(),
            error,
        })?;
    let local = listener
        .local_addr()
        .map_err(|error| ServerError::Bind { address, error })?;
    let mut shutdown = context.shutdown.clone();
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(context);
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "HTTP endpoint failed");
        }
    });
    Ok((local, task))
}

async fn healthz(State(context): State<Arc<Context>>) -> impl IntoResponse {
    if context.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn metrics(State(context): State<Arc<Context>>) -> impl IntoResponse {
    let ctx = context.clone();
    let counts = tokio::task::spawn_blocking(move || ctx.store.counts())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        context.metrics.render(&counts),
    )
}

/// What `/status` returns.
#[derive(serde::Serialize)]
pub struct Status {
    pub counts: crate::store::StoreCounts,
    pub series: Vec<crate::store::SeriesRecord>,
    pub jobs: Vec<crate::store::JobRecord>,
}

async fn status(State(context): State<Arc<Context>>) -> Result<Json<Status>, (StatusCode, String)> {
    let ctx = context.clone();
    let result =
        tokio::task::spawn_blocking(move || -> Result<Status, crate::store::StoreError> {
            Ok(Status {
                counts: ctx.store.counts()?,
                series: ctx.store.all_series()?,
                jobs: ctx.store.all_jobs()?,
            })
        })
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    result
        .map(Json)
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}
