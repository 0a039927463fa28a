//! The `prepuller` command line: parses the arguments, runs the subcommand ([`prepuller::cli`])
//! and exits with its code.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;

use prepuller::cli::{self, Cli, Command, ExitCode};

fn main() -> std::process::ExitCode {
    // A usage error exits with clap's code 2 (`ExitCode::Usage`), --help and --version with 0.
    let cli = Cli::parse();
    init_logging();
    let code = match cli.command {
        Command::Check(args) => cli::check::run(&args),
        Command::Images(args) => cli::images::run(&args),
        Command::Pull(args) => block_on(cli::pull::command(args)),
        Command::Agent(args) => block_on(cli::agent::run(args)),
        Command::Status(args) => block_on(cli::status::run(args)),
        Command::Nodes(args) => block_on(cli::nodes::run(args)),
    };
    code.into()
}

fn block_on(f: impl Future<Output = ExitCode>) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime");
    match runtime {
        Ok(runtime) => runtime.block_on(f),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::Usage
        }
    }
}

fn init_logging() {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("PREPULLER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // notify traces every inotify event it reads, the agent's own log writes included when the
    // log lies beside the config: at `trace` each line would log another, without end. Its
    // traces only when asked for by name (`PREPULLER_LOG=trace,notify=trace`).
    if !std::env::var("PREPULLER_LOG").is_ok_and(|v| v.contains("notify")) {
        filter = filter.add_directive("notify=info".parse().expect("a valid directive"));
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
