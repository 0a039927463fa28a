//! The `prepuller` command line: one module per subcommand (its clap `*Args`, its `run`, its
//! rendering), and what they share. `main` parses [`Cli`], dispatches and exits with the
//! [`ExitCode`] the subcommand returns.

use std::path::Path;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;

pub mod agent;
pub mod check;
mod cluster;
mod exit;
pub mod format;
pub mod images;
pub mod nodes;
pub mod progress;
pub mod pull;
mod shutdown;
pub mod status;

pub use exit::ExitCode;

#[derive(Parser)]
#[command(
    name = "prepuller",
    version,
    about = "Pre-pulls a declared list of images through the node's container runtime (CRI)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Pull every declared image that is missing, then exit (for bootstrap scripts).
    ///
    /// Exit codes: 0 every required image is present; 1 some required image failed;
    /// 2 bad usage or invalid config; 3 container runtime unreachable.
    Pull(pull::PullArgs),
    /// Keep the declared images present on this node and report readiness, status and metrics
    /// (what the DaemonSet runs).
    ///
    /// Exit code 2 when the config is invalid at start; later invalid configs are rejected
    /// and the last good one keeps running.
    Agent(agent::AgentArgs),
    /// Show a running agent's status, or follow its events with --watch.
    ///
    /// Exit code 4 when the agent cannot be reached.
    Status(status::StatusArgs),
    /// List the cluster's nodes with their ImagesPrePulled condition; --wait until all are warm.
    ///
    /// Exit codes: 0 listed, or (--wait) every selected node warm; 1 (--wait) some node still
    /// cold at --timeout, or none selected; 2 no cluster configured; 3 the API refused or failed.
    Nodes(nodes::NodesArgs),
    /// Validate a config and print every entry's normalized reference and policy.
    ///
    /// Exit code 0 when valid, 1 otherwise.
    Check(check::CheckArgs),
    /// Print an image-list config for the images of Kubernetes manifests (`helm template`,
    /// `kubectl get -o yaml`), Redis Enterprise clusters and Helm values files.
    ///
    /// Exit codes: 0 printed; 1 no images found; 2 bad usage or input that cannot be read.
    Images(images::ImagesArgs),
}

/// The output of `pull` and `check`.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

// The container runtime to talk to (`pull`, `agent`).
#[derive(clap::Args)]
pub struct RuntimeArgs {
    /// CRI socket, unix:///path. Default: the first of /run/containerd/containerd.sock,
    /// /run/crio/crio.sock, /var/run/cri-dockerd.sock that exists.
    #[arg(long, env = "PREPULLER_RUNTIME_ENDPOINT")]
    pub runtime_endpoint: Option<String>,
}

/// The config `pull` and `agent` start with; an invalid one ends them as a usage error.
fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("error: invalid config: {}", e.render());
        ExitCode::Usage
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every flag of every subcommand says what it is for in `--help`, so a new one cannot
    /// arrive without a line.
    #[test]
    fn every_argument_has_a_help_line() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            for arg in cmd.get_arguments() {
                let generated = ["help", "version"].contains(&arg.get_id().as_str());
                if !generated && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} --{}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(format!("{path} {} (the subcommand)", sub.get_name()));
                }
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "no help line: {missing:#?}");
    }
}
