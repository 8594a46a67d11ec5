//! Command-line interface: one file a subcommand, each a thin layer over the library.

mod analyze;
mod check_config;
mod demo;
mod eval;
mod info;
mod model_flags;
mod phantom;
mod report;
mod serve;

use clap::{Parser, Subcommand};
use noduled::config::Config;
use noduled::logging::LogFormat;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "noduled",
    version,
    about = "Lung-nodule detection beside the CT scanner"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr: `auto` is human on a terminal and JSON otherwise.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
    /// Configuration file (TOML; see config/noduled.toml). Without it every key has its default.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// More log detail (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load a CT series folder and print its geometry (refuses series the pipeline cannot trust).
    Info(info::Args),
    /// Find nodules in a CT series and answer "are malignant nodules present?".
    Analyze(analyze::Args),
    /// Write deterministic synthetic chest CTs with known nodules.
    Phantom(phantom::Args),
    /// Validate a configuration file, reporting every bad key at once.
    CheckConfig(check_config::Args),
    /// Run the DICOM service: receive CTs, analyse complete series, serve the SRs to the PACS.
    Serve(serve::Args),
    /// Phantom → service → C-STORE → analysis → SR, in one command: the product end to end.
    Demo(demo::Args),
    /// Measure models on an annotated dataset: confusion matrix, FROC/CPM, ROC/AUC; refuses leaks.
    Eval(eval::Args),
    /// Render a noduled SR as a readable text (and HTML) summary.
    Report(report::Args),
}

/// The configuration: loaded once from `--config`, or the defaults.
pub fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    Ok(match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    })
}

pub fn run(cli: Cli, config: &Config) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Info(args) => info::run(args, config),
        Command::Analyze(args) => analyze::run(args, config),
        Command::Phantom(args) => phantom::run(args),
        Command::CheckConfig(args) => check_config::run(args),
        Command::Serve(args) => serve::run(args, config),
        Command::Demo(args) => demo::run(args, config),
        Command::Eval(args) => eval::run(args, config),
        Command::Report(args) => report::run(args, config),
    }
}
