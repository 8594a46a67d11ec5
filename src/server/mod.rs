//! `noduled serve`: the DICOM service beside the scanner.
//!
//! Data flows one way: the scanner's C-STOREs ([`store_scp`]) land durably in the [`Store`]; a
//! series that has gone quiet is complete ([`completion`]) and queued; [`worker`]s run the same
//! [`Pipeline`] as `noduled analyze` and store the SR like any instance; the PACS pulls it with
//! C-FIND ([`query`]) and C-GET/C-MOVE ([`retrieve`]), or receives it by auto-forward ([`scu`]).
//! One file per concern, as in mini-redis: [`listener`] accepts and bounds connections,
//! [`association`] runs one association (over TCP, or TLS when [`tls`] is configured), [`dimse`]
//! frames messages.
//!
//! Limits are explicit: a semaphore bounds associations, timeouts bound every wait, instance and
//! series sizes are capped, the disk watermark refuses storage before the disk fills, and the
//! analysis queue lives in sled (memory holds only the `workers` CTs being analysed).
//! Shutdown: stop accepting, give open associations `shutdown_grace_seconds`, let the running
//! analysis finish or leave it queued in sled for the next start.

pub mod association;
pub mod completion;
pub mod dimse;
pub mod dropfolder;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod query;
pub mod retrieve;
pub mod scu;
pub mod store_scp;
pub mod systemd;
pub mod tls;
pub mod worker;

use crate::config::{Config, Destination};
use crate::pipeline::Pipeline;
use crate::store::{Store, StoreError};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// What can stop the service from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {address}: {error}")]
    Bind {
        address: String,
        error: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Setup(String),
}

/// Everything the tasks of a running service share.
pub struct Context {
    pub config: Config,
    pub store: Store,
    pub pipeline: Arc<Pipeline>,
    pub metrics: metrics::Metrics,
    pub destinations: Vec<Destination>,
    /// Series some open association is still sending to (series UID → associations).
    pub sending: Mutex<HashMap<String, usize>>,
    /// Wakes idle workers when a job is queued.
    pub jobs_ready: worker::JobSignal,
    /// Flips to true when the service shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// The TLS configuration when `[server.tls]` is set: every connection is TLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Context {
    /// Marks `series` as being sent by one more association.
    pub fn begin_sending(&self, series: &str) {
        if let Ok(mut map) = self.sending.lock() {
            *map.entry(series.to_string()).or_default() += 1;
        }
    }

    /// Undoes [`Context::begin_sending`].
    pub fn end_sending(&self, series: &str) {
        if let Ok(mut map) = self.sending.lock() {
            if let Some(count) = map.get_mut(series) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    map.remove(series);
                }
            }
        }
    }

    pub fn is_sending(&self, series: &str) -> bool {
        self.sending
            .lock()
            .map(|map| map.contains_key(series))
            .unwrap_or(false)
    }

    pub fn destination(&self, ae_title: &str) -> Option<&Destination> {
        self.destinations.iter().find(|d| d.ae_title == ae_title)
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// A started service: its addresses and the handle that stops it.
pub struct RunningServer {
    pub dicom_address: SocketAddr,
    pub http_address: Option<SocketAddr>,
    pub context: Arc<Context>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl RunningServer {
    /// Starts every part of the service on the current tokio runtime. Binds before returning, so
    /// a caller may connect as soon as this returns.
    pub async fn start(
        config: Config,
        pipeline: Arc<Pipeline>,
    ) -> Result<RunningServer, ServerError> {
        let server = &config.server;
        // Certificate problems stop the start with one line, before the port opens.
        let tls = tls::server_config(&server.tls).map_err(ServerError::Setup)?;
        let store_dir = server.state_dir.clone();
        let min_free = server.min_free_disk_mb;
        let store = tokio::task::spawn_blocking(move || Store::open(&store_dir, min_free))
            .await
            .map_err(|e| ServerError::Setup(e.to_string()))??;
        let requeued = store.requeue_interrupted()?;
        if requeued > 0 {
            tracing::info!(
                requeued,
                "analysis jobs interrupted by the last stop are queued again"
            );
        }
        let address = format!("{}:{}", server.bind, server.port);
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .map_err(|error| ServerError::Bind {
                address: address.clone(),
                error,
            })?;
        let dicom_address = listener
            .local_addr()
            .map_err(|error| ServerError::Bind { address, error })?;
        let (stop, shutdown) = watch::channel(false);
        let context = Arc::new(Context {
            destinations: server.destinations(),
            metrics: metrics::Metrics::new(),
            sending: Mutex::new(HashMap::new()),
            jobs_ready: worker::JobSignal::default(),
            shutdown,
            tls,
            store,
            pipeline,
            config,
        });
        let mut tasks = Vec::new();
        let http_address = if context.config.server.http.is_empty() {
            None
        } else {
            let (address, task) = http::start(context.clone()).await?;
            tasks.push(task);
            Some(address)
        };
        tasks.push(tokio::spawn(listener::run(listener, context.clone())));
        tasks.push(tokio::spawn(completion::run(context.clone())));
        if !context.config.server.drop_folder.as_os_str().is_empty() {
            tasks.push(tokio::spawn(dropfolder::run(context.clone())));
        }
        let workers = worker::start(context.clone(), tokio::runtime::Handle::current());
        tracing::info!(
            address = %dicom_address,
            ae_title = %context.config.server.ae_title,
            http = ?http_address,
            tls = context.tls.is_some(),
            "noduled is listening"
        );
        Ok(RunningServer {
            dicom_address,
            http_address,
            context,
            stop,
            tasks,
            workers,
        })
    }

    /// Stops accepting, lets open associations finish within the grace period, lets a running
    /// analysis finish (queued jobs stay in sled), and flushes the store.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.context.jobs_ready.wake_all();
        for task in self.tasks {
            let _ = task.await;
        }
        let workers = self.workers;
        let _ = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        })
        .await;
        if let Err(e) = self.context.store.flush() {
            tracing::error!(error = %e, "flushing the index at shutdown failed");
        }
        tracing::info!("noduled stopped");
    }
}

/// An error message on one line (dicom-rs errors nest causes over several lines).
pub fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}
