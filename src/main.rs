//! The `noduled` binary: parse arguments, call the library, turn errors into one line and an exit code.

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    noduled::logging::init(args.log_format, args.verbose);
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            // One line, the whole cause chain, no backtrace: scripts and people both read this.
            eprintln!("noduled: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
