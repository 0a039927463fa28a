//! `prepuller agent`: keeps the declared images present on this node and reports readiness,
//! status and metrics (what the DaemonSet runs). Wires the library's parts together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::shutdown::{spawn_signal_handler, until_cancelled};
use super::{ExitCode, RuntimeArgs, cluster, load_config};
use crate::agent::Agent;
use crate::runtime::{self, CriRuntime};
use crate::status::StatusHub;
use crate::status::metrics::Metrics;

#[derive(clap::Args)]
pub struct AgentArgs {
    /// The image list: a YAML file, or a directory of *.yaml files (a mounted ConfigMap).
    #[arg(long, short)]
    pub config: PathBuf,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Address of the HTTP listener: /livez, /readyz, /status, /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Unix socket of the node-local gRPC API (`prepuller status`), mode 0600.
    #[arg(long, default_value = "/run/prepuller/agent.sock")]
    pub api_socket: PathBuf,
    /// This node's name, shown in the status (the DaemonSet sets it from spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Where the host's `/` (at least the runtime's image filesystem) is mounted, read-only:
    /// the disk guard reads the size of the filesystem the runtime names under it. Unset: the
    /// runtime's paths as they are (an agent running on the host).
    #[arg(long, env = "PREPULLER_HOST_ROOT")]
    pub host_root: Option<PathBuf>,
    /// Namespace of the fleet pull budget's Leases (`fleet:`); the DaemonSet sets it from the
    /// pod's namespace. Default: the client's (the service account's) namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
}

/// Runs `prepuller agent` until a signal.
pub async fn run(args: AgentArgs) -> ExitCode {
    let AgentArgs {
        config: config_path,
        runtime: RuntimeArgs { runtime_endpoint },
        listen,
        api_socket,
        node_name,
        host_root,
        namespace,
    } = args;
    let config = match load_config(&config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let endpoint = match runtime_endpoint {
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
            return ExitCode::Usage;
        }
    };
    let listener = match crate::status::http::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {listen}: {e}");
            return ExitCode::Usage;
        }
    };
    let node_settings = config.node.clone();
    let fleet_settings = config.fleet.clone();
    let hub = Arc::new(StatusHub::new(
        node_name.clone(),
        config_path.display().to_string(),
        endpoint.clone(),
    ));
    let metrics = Arc::new(Metrics::new(hub.clone()));
    tracing::info!(listen = %listen, api_socket = %api_socket.display(), endpoint = %endpoint, "agent starting");

    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone());
    // Servers outlive the agent loop by a moment, so /readyz can say "shutting down".
    let servers = CancellationToken::new();
    let http = tokio::spawn(crate::status::http::serve(
        listener,
        crate::status::http::router(hub.clone(), metrics.clone()),
        servers.clone(),
    ));
    let grpc = {
        let (hub, servers, path) = (hub.clone(), servers.clone(), api_socket.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::status::grpc::serve_unix(&path, hub, servers).await {
                tracing::error!(socket = %path.display(), "node-local API unavailable: {e}");
            }
        })
    };
    // The process's one Kubernetes client, connected once: the Secret reader (a reload that
    // adds a `secret:` source uses it without a restart) and the node reporter share it.
    let connected = until_cancelled(&cancel, crate::k8s::connect()).await;
    let secrets = connected.as_ref().and_then(cluster::secret_reader);
    let client = cluster::node_client(connected);
    let fleet = cluster::fleet_budget(
        fleet_settings,
        client.clone(),
        namespace,
        node_name.as_deref(),
        cancel.clone(),
    );
    let mut agent = Agent::new(cri, hub.clone(), metrics, config_path, config)
        .with_secret_reader(secrets)
        .with_host_root(host_root)
        .with_fleet(fleet);
    let mut reporter = None;
    let node = client.and_then(|c| crate::k8s::setup(c, node_name.as_deref(), hub, node_settings));
    if let Some((r, link)) = node {
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
    ExitCode::Ok
}
