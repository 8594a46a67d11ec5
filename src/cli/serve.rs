//! `noduled serve`: the DICOM service (see `noduled::server`). Flags override the `[server]`
//! section of `--config`; the models are loaded before the port opens, so a bad model file stops
//! the start with a one-line error instead of failing every series later.

use super::model_flags::ModelFlags;
use anyhow::Context as _;
use noduled::config::Config;
use noduled::server::{systemd, RunningServer};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// DICOM port [default: 11112, or server.port].
    #[arg(long)]
    port: Option<u16>,
    /// Address to listen on [default: 127.0.0.1, or server.bind].
    #[arg(long)]
    bind: Option<String>,
    /// Our AE title [default: NODULED, or server.ae_title].
    #[arg(long)]
    ae_title: Option<String>,
    /// Index and spool folder [default: /var/lib/noduled, or server.state_dir].
    #[arg(long, value_name = "D")]
    state_dir: Option<PathBuf>,
    /// Quiet seconds after which a series is complete [default: 10].
    #[arg(long, value_name = "S")]
    completion_seconds: Option<f64>,
    /// Allow this calling AE (`AE` or `AE@host`); repeat for more. Replaces the configured list.
    #[arg(long, value_name = "AE")]
    allow_calling_ae: Vec<String>,
    /// A peer to send to, `AE@host:port` (C-MOVE destination); repeat for more. Adds to the list.
    #[arg(long, value_name = "AE@HOST:PORT")]
    destination: Vec<String>,
    /// HTTP endpoint `host:port`, or `off` [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    #[command(flatten)]
    models: ModelFlags,
}

/// Applies the flags to the configuration and re-validates it.
fn configure(args: &Args, config: &Config) -> anyhow::Result<Config> {
    let mut config = config.clone();
    let server = &mut config.server;
    if let Some(port) = args.port {
        server.port = port;
    }
    if let Some(bind) = &args.bind {
        server.bind = bind.clone();
    }
    if let Some(ae) = &args.ae_title {
        server.ae_title = ae.clone();
    }
    if let Some(dir) = &args.state_dir {
        server.state_dir = dir.clone();
    }
    if let Some(seconds) = args.completion_seconds {
        server.completion_seconds = seconds;
    }
    if !args.allow_calling_ae.is_empty() {
        server.allowed_calling_aes = args.allow_calling_ae.clone();
    }
    server.destinations.extend(args.destination.iter().cloned());
    if let Some(http) = &args.http {
        server.http = if http == "off" {
            String::new()
        } else {
            http.clone()
        };
    }
    let text = toml::to_string(&config).context("cannot serialise the configuration")?;
    Config::parse(&text).map_err(|problems| anyhow::anyhow!("{}", problems.join("; ")))
}

pub fn run(args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    let config = configure(&args, config)?;
    let pipeline = Arc::new(args.models.load_pipeline(&config)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("noduled-io")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let server = RunningServer::start(config, pipeline).await?;
        systemd::ready();
        let watchdog = tokio::spawn(systemd::watchdog());
        wait_for_signal().await;
        tracing::info!("shutting down");
        systemd::stopping();
        watchdog.abort();
        server.shutdown().await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM (systemd) or SIGINT (a terminal).
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
