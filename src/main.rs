//! The `prepuller` command line: parses arguments and wires the library together.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use prepuller::agent::Agent;
use prepuller::config::{Config, duration};
use prepuller::credentials::Credentials;
use prepuller::progress::{LogProgress, Progress, TerminalProgress};
use prepuller::pull::{self, exit};
use prepuller::puller::PullSettings;
use prepuller::report::StatusHub;
use prepuller::report::metrics::Metrics;
use prepuller::runtime::{self, CriRuntime};

#[derive(Parser)]
#[command(
    name = "prepuller",
    version,
    about = "Pre-pulls a declared list of images through the node's container runtime (CRI)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Pull every declared image that is missing, then exit (for bootstrap scripts).
    ///
    /// Exit codes: 0 every required image is present; 1 some required image failed;
    /// 2 bad usage or invalid config; 3 container runtime unreachable.
    Pull {
        /// The image list (YAML).
        #[arg(long, short)]
        config: PathBuf,
        #[command(flatten)]
        runtime: RuntimeArgs,
        /// How long to wait for the runtime to answer at start (it may still be starting).
        #[arg(long, value_parser = duration::parse, default_value = "1m")]
        runtime_wait: Duration,
        /// At most this many pulls at once (overrides `parallelism` in the config).
        #[arg(long)]
        parallelism: Option<usize>,
        /// Give up after this long in all (e.g. 30m); what was left is named.
        #[arg(long, value_parser = duration::parse, default_value = "30m")]
        timeout: Duration,
        /// Output format of the summary.
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// Keep the declared images present on this node and report readiness, status and metrics
    /// (what the DaemonSet runs).
    ///
    /// Exit code 2 when the config is invalid at start; later invalid configs are rejected
    /// and the last good one keeps running.
    Agent {
        /// The image list: a YAML file, or a directory of *.yaml files (a mounted ConfigMap).
        #[arg(long, short)]
        config: PathBuf,
        #[command(flatten)]
        runtime: RuntimeArgs,
        /// Address of the HTTP listener: /livez, /readyz, /status, /metrics.
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: std::net::SocketAddr,
        /// Unix socket of the node-local gRPC API (`prepuller status`), mode 0600.
        #[arg(long, default_value = "/run/prepuller/agent.sock")]
        api_socket: PathBuf,
        /// This node's name, shown in the status (the DaemonSet sets it from spec.nodeName).
        #[arg(long, env = "NODE_NAME")]
        node_name: Option<String>,
    },
    /// Show a running agent's status, or follow its events with --watch.
    ///
    /// Exit code 3 when the agent cannot be reached.
    Status(prepuller::status_cmd::StatusArgs),
    /// List the cluster's nodes with their ImagesPrePulled condition; --wait until all are warm.
    ///
    /// Exit codes: 0 listed, or (--wait) every selected node warm; 1 (--wait) some node still
    /// cold at --timeout, or none selected; 2 no cluster configured; 3 the API refused or failed.
    Nodes(prepuller::nodes_cmd::NodesArgs),
    /// Validate a config and print every entry's normalized reference and policy.
    ///
    /// Exit code 0 when valid, 1 otherwise.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(clap::Args)]
struct RuntimeArgs {
    /// CRI socket, unix:///path. Default: the first of /run/containerd/containerd.sock,
    /// /run/crio/crio.sock, /var/run/cri-dockerd.sock that exists.
    #[arg(long, env = "PREPULLER_RUNTIME_ENDPOINT")]
    runtime_endpoint: Option<String>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    init_logging();
    let result = match cli.command {
        Command::Check { config, output } => check(&config, output),
        Command::Pull {
            config,
            runtime,
            runtime_wait,
            parallelism,
            timeout,
            output,
        } => block_on(pull_command(
            config,
            runtime,
            runtime_wait,
            parallelism,
            timeout,
            output,
        )),
        Command::Agent {
            config,
            runtime,
            listen,
            api_socket,
            node_name,
        } => block_on(agent_command(
            config, runtime, listen, api_socket, node_name,
        )),
        Command::Status(args) => block_on(async { Ok(prepuller::status_cmd::run(args).await) }),
        Command::Nodes(args) => block_on(async { Ok(prepuller::nodes_cmd::run(args).await) }),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::USAGE)
        }
    }
}

/// Whether the config reads anything through the Kubernetes API.
fn needs_cluster(config: &Config) -> bool {
    config
        .credentials
        .iter()
        .any(|c| matches!(c, prepuller::credentials::CredentialSource::Secret { .. }))
}

/// The reader of `secret:` credentials, through a client connected here (the library never
/// connects by itself); said once in the log either way.
async fn secret_reader() -> Option<Arc<dyn prepuller::credentials::SecretReader>> {
    match prepuller::cluster::connect().await {
        Ok(Some((client, source))) => {
            tracing::debug!(%source, "Kubernetes API available for `secret:` credentials");
            Some(prepuller::credentials::secret_reader(client))
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!("`secret:` credentials cannot be read: {e}");
            None
        }
    }
}

fn block_on(f: impl std::future::Future<Output = anyhow::Result<u8>>) -> anyhow::Result<u8> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(f)
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

fn check(path: &std::path::Path, output: Output) -> anyhow::Result<u8> {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}", e.render());
            return Ok(1);
        }
    };
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&prepuller::config::CheckReport::from(&config))?
        ),
        Output::Table => print!("{}", prepuller::config::CheckReport::from(&config).table()),
    }
    Ok(0)
}

async fn pull_command(
    config_path: PathBuf,
    args: RuntimeArgs,
    runtime_wait: Duration,
    parallelism: Option<usize>,
    timeout: Duration,
    output: Output,
) -> anyhow::Result<u8> {
    let config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: invalid config: {}", e.render());
            return Ok(exit::USAGE);
        }
    };
    for note in &config.merged {
        tracing::info!("{note}");
    }
    let mut settings = PullSettings::from(&config);
    if let Some(p) = parallelism {
        if p == 0 {
            eprintln!("error: --parallelism must be at least 1");
            return Ok(exit::USAGE);
        }
        settings.parallelism = p;
    }

    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone());
    // --timeout bounds the whole run: the wait for the runtime, then the pulls.
    let deadline = tokio::time::Instant::now() + timeout;

    let endpoint = match args.runtime_endpoint {
        Some(e) => e,
        None => match runtime::discover_endpoint() {
            Ok(e) => {
                tracing::info!(endpoint = %e, "using the first runtime socket found");
                e
            }
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(exit::RUNTIME_UNREACHABLE);
            }
        },
    };
    let cri = match CriRuntime::new(&endpoint) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit::USAGE);
        }
    };
    let wait = runtime_wait.min(timeout);
    let version = match pull::wait_for_runtime(cri.as_ref(), wait, &cancel, |e, delay| {
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
            return Ok(exit::RUNTIME_UNREACHABLE);
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
            return Ok(exit::RUNTIME_UNREACHABLE);
        }
    };
    tracing::info!(endpoint = %endpoint, runtime = %version, images = config.images.len(), "connected");

    let progress: Box<dyn Progress> = if std::io::stderr().is_terminal() {
        Box::new(TerminalProgress::new(&config.images))
    } else {
        Box::new(LogProgress)
    };
    let secrets = if needs_cluster(&config) {
        until_cancelled(&cancel, secret_reader()).await.flatten()
    } else {
        None
    };
    let options = pull::RunOptions {
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
    let summary = match pull::run(cri, &config, options, progress.as_ref(), &cancel).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(e.exit_code());
        }
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&summary)?),
        Output::Table => print!("{}", summary.table()),
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
    Ok(summary.exit_code())
}

async fn agent_command(
    config_path: PathBuf,
    args: RuntimeArgs,
    listen: std::net::SocketAddr,
    api_socket: PathBuf,
    node_name: Option<String>,
) -> anyhow::Result<u8> {
    let config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: invalid config: {}", e.render());
            return Ok(exit::USAGE);
        }
    };
    let endpoint = match args.runtime_endpoint {
        Some(e) => e,
        None => runtime::discover_endpoint().unwrap_or_else(|e| {
            // The runtime may come up after us on a booting node: wait for the usual socket.
            let first = runtime::DEFAULT_ENDPOINTS[0].to_string();
            tracing::warn!("{e}; waiting for {first}");
            first
        }),
    };
    let cri = match CriRuntime::new(&endpoint) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit::USAGE);
        }
    };
    let listener = match prepuller::report::http::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {listen}: {e}");
            return Ok(exit::USAGE);
        }
    };
    let node_settings = config.node.clone();
    let hub = Arc::new(StatusHub::new(
        node_name.clone(),
        config_path.display().to_string(),
        endpoint.clone(),
    ));
    let metrics = Arc::new(Metrics::new());
    tracing::info!(listen = %listen, api_socket = %api_socket.display(), endpoint = %endpoint, "agent starting");

    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone());
    // Servers outlive the agent loop by a moment, so /readyz can say "shutting down".
    let servers = CancellationToken::new();
    let http = tokio::spawn(prepuller::report::http::serve(
        listener,
        prepuller::report::http::router(hub.clone(), metrics.clone()),
        servers.clone(),
    ));
    let grpc = {
        let (hub, servers, path) = (hub.clone(), servers.clone(), api_socket.clone());
        tokio::spawn(async move {
            if let Err(e) = prepuller::report::grpc::serve_unix(&path, hub, servers).await {
                tracing::error!(socket = %path.display(), "node-local API unavailable: {e}");
            }
        })
    };
    // Connected once: a reload that adds a `secret:` source can use it without a restart.
    let secrets = until_cancelled(&cancel, secret_reader()).await.flatten();
    let mut agent =
        Agent::new(cri, hub.clone(), metrics, config_path, config).with_secret_reader(secrets);
    let mut reporter = None;
    let node = prepuller::node::setup(node_name.as_deref(), hub, node_settings);
    if let Some((r, link)) = until_cancelled(&cancel, node).await.flatten() {
        agent = agent.with_node(link);
        reporter = Some(tokio::spawn(r.run(servers.clone())));
    }
    agent.run(cancel).await;
    servers.cancel();
    if let Some(r) = reporter {
        let _ = tokio::time::timeout(Duration::from_millis(300), r).await;
    }
    // A client holding a connection must not delay the exit past the pod's grace period.
    let _ = tokio::time::timeout(Duration::from_millis(300), async {
        let _ = http.await;
        let _ = grpc.await;
    })
    .await;
    Ok(exit::OK)
}

/// `None` when `cancel` fires first: nothing at start may hold up a SIGTERM.
async fn until_cancelled<T>(
    cancel: &CancellationToken,
    f: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        v = f => Some(v),
    }
}

/// SIGINT/SIGTERM cancel the run (in-flight pulls are abandoned cleanly); a second one exits at once.
fn spawn_signal_handler(cancel: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("cannot listen for SIGTERM: {e}");
                    return;
                }
            };
        for n in 0..2 {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if n == 0 {
                tracing::warn!(
                    "stopping: cancelling in-flight pulls (signal again to exit at once)"
                );
                cancel.cancel();
            } else {
                std::process::exit(130);
            }
        }
    });
}
