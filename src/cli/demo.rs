//! `noduled demo`: the whole product in one command, for a newcomer. Writes a synthetic chest CT,
//! starts the service in-process on a free loopback port with a temporary state folder, sends the
//! series over DICOM (C-STORE, as a scanner would), waits for the analysis, fetches the SR back
//! from the store and prints its findings and answer.

use super::model_flags::ModelFlags;
use anyhow::Context as _;
use noduled::config::{Config, Destination};
use noduled::dicom::sr;
use noduled::phantom::{write_dataset, PhantomSpec};
use noduled::server::scu::{self, Outgoing};
use noduled::server::RunningServer;
use noduled::store::SeriesState;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Phantom seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Phantom slices.
    #[arg(long, default_value_t = 48)]
    slices: usize,
    /// Phantom rows and columns.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Give up waiting for the report after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    #[command(flatten)]
    models: ModelFlags,
}

pub fn run(args: Args, config: &Config) -> anyhow::Result<ExitCode> {
    let work = tempfile::tempdir().context("cannot create a temporary folder")?;
    let spec = PhantomSpec {
        seed: args.seed,
        slices: args.slices,
        rows: args.size,
        columns: args.size,
        ..PhantomSpec::default()
    };
    spec.validate()?;
    let dataset = write_dataset(&work.path().join("phantom"), args.seed, 1, &spec)?;
    let series = dataset
        .series
        .first()
        .context("the phantom wrote no series")?;
    println!(
        "phantom    {} slices, {} nodules planted, series {}",
        series.files.len(),
        series.nodules.len(),
        series.series_uid
    );

    let mut config = config.clone();
    config.server.port = 0;
    config.server.bind = "127.0.0.1".into();
    config.server.http = String::new();
    config.server.state_dir = work.path().join("state");
    config.server.completion_seconds = 1.0;
    config.server.allowed_calling_aes = Vec::new();
    config.server.min_free_disk_mb = 0;
    let pipeline = Arc::new(args.models.load_pipeline(&config)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let server = RunningServer::start(config, pipeline).await?;
        let ours = Destination {
            ae_title: server.context.config.server.ae_title.clone(),
            host: "127.0.0.1".into(),
            port: server.dicom_address.port(),
        };
        println!(
            "service    {} listening on {}",
            ours.ae_title, server.dicom_address
        );
        let items = series
            .files
            .iter()
            .map(|f| Outgoing::from_file(f))
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)?;
        let started = Instant::now();
        let counts = scu::send("DEMO_SCANNER", &ours, &items, None, Duration::from_secs(30))
            .await
            .map_err(anyhow::Error::msg)?;
        println!(
            "sent       {} instances by C-STORE ({} failed) in {:.1} s",
            counts.completed,
            counts.failed,
            started.elapsed().as_secs_f64()
        );
        let store = server.context.store.clone();
        let deadline = Instant::now() + Duration::from_secs(args.timeout);
        let record = loop {
            let record = store.series(&series.series_uid)?;
            match record {
                Some(r) if r.state == SeriesState::Analysed || r.state == SeriesState::Refused => {
                    break r
                }
                _ if Instant::now() > deadline => {
                    anyhow::bail!("no report after {} s", args.timeout)
                }
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        };
        if record.state == SeriesState::Refused {
            anyhow::bail!(
                "the series was refused: {}",
                record.reason.unwrap_or_default()
            );
        }
        let sr_uid = record.sr_uid.clone().context("analysed without a report")?;
        let sr_record = store
            .instance(&sr_uid)?
            .context("report not in the store")?;
        let object = dicom_object::open_file(store.instance_path(&sr_record))?;
        let findings = sr::read_findings(&object)?;
        println!(
            "report     SR {sr_uid} stored after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        for (k, f) in findings.iter().enumerate() {
            println!("finding {:>2} {f:?}", k + 1);
        }
        match sr::read_answer(&object) {
            Some(true) => println!("Malignant nodules present: yes"),
            Some(false) => println!("Malignant nodules present: no"),
            None => println!("Malignant nodules present: (not stated)"),
        }
        server.shutdown().await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
