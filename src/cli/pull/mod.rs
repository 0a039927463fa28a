//! `prepuller pull`: one run over the declared list, with a summary and an exit code a
//! bootstrap script can act on.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::format::print_json;
use super::progress::{LogProgress, Progress, TerminalProgress};
use super::shutdown::{spawn_signal_handler, until_cancelled};
use super::{ExitCode, Output, RuntimeArgs, cluster, load_config};
use crate::config::CredentialSource;
use crate::config::{Config, duration};
use crate::credentials::Credentials;
use crate::puller::PullSettings;
use crate::runtime::{self, CriRuntime};

pub(crate) mod reason;
mod run;
mod summary;

pub use run::{PullRunError, RunOptions, run, wait_for_runtime};
pub use summary::{ImageResult, Summary, SummaryRow};

#[derive(clap::Args)]
pub struct PullArgs {
    /// The image list: a YAML file, or a directory of *.yaml files (a mounted ConfigMap).
    #[arg(long, short)]
    pub config: PathBuf,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// How long to wait for the runtime to answer at start (it may still be starting).
    #[arg(long, value_parser = duration::parse, default_value = "1m")]
    pub runtime_wait: Duration,
    /// At most this many pulls at once (overrides `parallelism` in the config).
    #[arg(long)]
    pub parallelism: Option<usize>,
    /// Give up after this long in all (e.g. 30m); what was left is named.
    #[arg(long, value_parser = duration::parse, default_value = "30m")]
    pub timeout: Duration,
    /// Output format of the summary.
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
}

/// Whether the config reads anything through the Kubernetes API.
fn needs_cluster(config: &Config) -> bool {
    config
        .credentials
        .iter()
        .any(|c| matches!(c, CredentialSource::Secret { .. }))
}

/// Runs `prepuller pull`.
pub async fn command(args: PullArgs) -> ExitCode {
    let PullArgs {
        config: config_path,
        runtime: RuntimeArgs { runtime_endpoint },
        runtime_wait,
        parallelism,
        timeout,
        output,
    } = args;
    let config = match load_config(&config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    for note in &config.merged {
        tracing::info!("{note}");
    }
    let mut settings = PullSettings::from(&config);
    if let Some(p) = parallelism {
        if p == 0 {
            eprintln!("error: --parallelism must be at least 1");
            return ExitCode::Usage;
        }
        settings.parallelism = p;
    }

    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone());
    // --timeout bounds the whole run: the wait for the runtime, then the pulls.
    let deadline = tokio::time::Instant::now() + timeout;

    let endpoint = match runtime_endpoint {
        Some(e) => e,
        None => match runtime::discover_endpoint() {
            Ok(e) => {
                tracing::info!(endpoint = %e, "using the first runtime socket found");
                e
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::Unavailable;
            }
        },
    };
    let cri = match CriRuntime::new(&endpoint) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::Usage;
        }
    };
    let wait = runtime_wait.min(timeout);
    let version = match wait_for_runtime(cri.as_ref(), wait, &cancel, |e, delay| {
        tracing::warn!(endpoint = %endpoint, retry_in = ?delay, "runtime not ready: {e}");
    })
    .await
    {
        Ok(v) => v,
        Err(_) if cancel.is_cancelled() => {
            // Still exit 3: the runtime never answered; nothing was pulled.
            eprintln!(
                "error: interrupted while waiting for the container runtime at {endpoint} (it had not answered)"
            );
            return ExitCode::Unavailable;
        }
        Err(e) => {
            let bound = if wait < runtime_wait {
                "--timeout"
            } else {
                "--runtime-wait"
            };
            eprintln!(
                "error: container runtime unreachable at {endpoint} (waited {}, {bound}): {e}",
                humantime::format_duration(wait)
            );
            return ExitCode::Unavailable;
        }
    };
    tracing::info!(endpoint = %endpoint, runtime = %version, images = config.images.len(), "connected");

    let progress: Box<dyn Progress> = if std::io::stderr().is_terminal() {
        Box::new(TerminalProgress::new(&config.images))
    } else {
        Box::new(LogProgress)
    };
    // The process's one client, only when a `secret:` source needs it.
    let secrets = if needs_cluster(&config) {
        until_cancelled(&cancel, crate::k8s::connect())
            .await
            .and_then(|connected| cluster::secret_reader(&connected))
    } else {
        None
    };
    let options = RunOptions {
        endpoint: &endpoint,
        version,
        settings,
        timeout: Some(deadline.saturating_duration_since(tokio::time::Instant::now())),
        credentials: Arc::new(Credentials::new(
            config.credentials.clone(),
            config.anonymous_fallback,
            secrets,
        )),
    };
    let summary = match run(cri, &config, options, progress.as_ref(), &cancel).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return e.exit_code();
        }
    };
    match output {
        Output::Json => {
            if let Err(code) = print_json(&summary) {
                return code;
            }
        }
        Output::Table => print!("{}", summary.table(super::format::stdout_width())),
    }
    let unfinished = summary.unfinished();
    if summary.timed_out {
        eprintln!(
            "error: timed out after {}; not finished: {}",
            humantime::format_duration(timeout),
            unfinished.join(", ")
        );
    } else if cancel.is_cancelled() {
        eprintln!(
            "error: interrupted; not finished: {}",
            unfinished.join(", ")
        );
    }
    summary.exit_code()
}
