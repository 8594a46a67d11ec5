//! `noduled check-config`: validate a configuration file and list every problem.

use noduled::config::{Config, ConfigError};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The TOML file to check.
    file: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match Config::load(&args.file) {
        Ok(_) => {
            println!("{}: ok", args.file.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(ConfigError::Invalid { path, problems }) => {
            for problem in &problems {
                eprintln!("{}: {problem}", path.display());
            }
            eprintln!(
                "noduled: error: {} problem(s) in {}",
                problems.len(),
                path.display()
            );
            Ok(ExitCode::FAILURE)
        }
        Err(other) => Err(other.into()),
    }
}
