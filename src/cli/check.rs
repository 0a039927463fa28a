//! `prepuller check`: validates a config and prints every entry's normalized reference and
//! policy.

use std::path::PathBuf;

use super::format::print_json;
use super::{ExitCode, Output};
use crate::config::{CheckReport, Config};

#[derive(clap::Args)]
pub struct CheckArgs {
    #[arg(long, short)]
    pub config: PathBuf,
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
}

/// Runs `prepuller check`.
pub fn run(args: &CheckArgs) -> ExitCode {
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}", e.render());
            return ExitCode::Failed;
        }
    };
    let report = CheckReport::from(&config);
    match args.output {
        Output::Json => {
            if let Err(code) = print_json(&report) {
                return code;
            }
        }
        Output::Table => print!("{}", report.table()),
    }
    ExitCode::Ok
}
