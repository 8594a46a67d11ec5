//! The `noduled` binary: parse arguments, call the library, turn errors into one line and an exit code.

mod cli;

use clap::Parser;
use noduled::logging::LogFormat;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let config = match cli::load_config(&args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("noduled: error: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    // Command-line flags win over the configuration file.
    let format = match args.log_format {
        LogFormat::Auto => config.log.format.parse().unwrap_or(LogFormat::Auto),
        explicit => explicit,
    };
    noduled::logging::init(format, args.verbose, &config.log.level);
    match cli::run(args, &config) {
        Ok(code) => code,
        Err(err) => {
            // One line, the whole cause chain, no backtrace: scripts and people both read this.
            eprintln!("noduled: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
