//! `prepuller status`: asks the agent running on this node, over its unix socket (the gRPC API
//! of [`crate::status::grpc`]), and prints its status, or follows its events.
//!
//! Exit codes: 0 answered (whether or not the node is ready); 1 the agent's answer could not
//! be used; 2 bad usage; 4 agent unreachable, or it went away while watching.

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::SystemTime;

use crate::cli::ExitCode;
use crate::status::AgentStatus;
use crate::status::grpc::{DEFAULT_SOCKET, WatchedEvent, pb};

mod client;
mod render;

use client::{Failure, connect, get_status};
use render::{event_line, header, table};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusOutput {
    Table,
    /// The same document as the agent's HTTP `/status`; with --watch, one event per line.
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// The agent's unix socket.
    #[arg(long, default_value = DEFAULT_SOCKET, conflicts_with = "addr")]
    pub socket: PathBuf,
    /// Connect over TCP instead (e.g. through a port-forward): http://host:port.
    #[arg(long)]
    pub addr: Option<String>,
    /// Output format: a table for people, or JSON.
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: StatusOutput,
    /// Then print events as they happen, until interrupted.
    #[arg(long, short)]
    pub watch: bool,
}

/// Runs `prepuller status`.
pub async fn run(args: StatusArgs) -> ExitCode {
    match status(&args).await {
        Ok(()) | Err(Stop::StdoutClosed) => ExitCode::Ok,
        Err(Stop::Failed(f)) => {
            eprintln!("error: {}", f.message);
            if let Some(hint) = f.hint {
                eprintln!("hint: {hint}");
            }
            f.code
        }
    }
}

/// Why the command stops early.
#[derive(Debug)]
enum Stop {
    /// stdout was closed (`| head`): nothing to say, and a success.
    StdoutClosed,
    Failed(Failure),
}

impl From<Failure> for Stop {
    fn from(f: Failure) -> Self {
        Stop::Failed(f)
    }
}

async fn status(args: &StatusArgs) -> Result<(), Stop> {
    let (target, mut client) = connect(args).await?;
    if !args.watch {
        let status = get_status(&target, &mut client).await?;
        let text = match args.output {
            StatusOutput::Json => pretty_json(&status)?,
            StatusOutput::Table => {
                format!("{}\n{}", header(&status), table(&status, SystemTime::now()))
            }
        };
        return print(&text);
    }

    // Subscribe before reading the status, so nothing falls between the two.
    let mut events = client
        .watch_events(pb::WatchEventsRequest {})
        .await
        .map_err(|s| Failure::rpc(&target, "WatchEvents", &s))?
        .into_inner();
    if args.output == StatusOutput::Table {
        let status = get_status(&target, &mut client).await?;
        print(&header(&status))?;
    }
    loop {
        let event = match events.message().await {
            Ok(Some(e)) => e,
            Ok(None) => return Err(Failure::stream_closed(&target).into()),
            Err(s) => return Err(Failure::rpc(&target, "WatchEvents", &s).into()),
        };
        let event = match WatchedEvent::try_from(event) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("note: skipped an event: {e}");
                continue;
            }
        };
        let line = match args.output {
            StatusOutput::Json => serde_json::to_string(&event)
                .map_err(|e| Failure::other(format!("cannot print an event as JSON: {e}")))?,
            StatusOutput::Table => event_line(&event),
        };
        print(&line)?;
    }
}

fn pretty_json(status: &AgentStatus) -> Result<String, Failure> {
    serde_json::to_string_pretty(status)
        .map_err(|e| Failure::other(format!("cannot print the status as JSON: {e}")))
}

/// Prints one block and flushes it, so a watcher sees every line at once. A closed stdout
/// (`| head`) ends the command quietly, with success.
fn print(text: &str) -> Result<(), Stop> {
    let mut out = io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(Stop::StdoutClosed),
        Err(e) => Err(Failure::other(format!("cannot write to stdout: {e}")).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: StatusArgs,
    }

    async fn failure(args: &StatusArgs) -> Failure {
        match status(args).await {
            Err(Stop::Failed(f)) => f,
            other => panic!("not a failure: {other:?}"),
        }
    }

    #[test]
    fn arguments_default_to_the_agent_socket_and_a_table() {
        let cli = Cli::try_parse_from(["status"]).unwrap();
        assert_eq!(cli.args.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(cli.args.addr, None);
        assert_eq!(cli.args.output, StatusOutput::Table);
        assert!(!cli.args.watch);
        let cli =
            Cli::try_parse_from(["status", "--addr", "http://127.0.0.1:1", "-o", "json", "-w"])
                .unwrap();
        assert_eq!(cli.args.addr.as_deref(), Some("http://127.0.0.1:1"));
        assert_eq!(cli.args.output, StatusOutput::Json);
        assert!(cli.args.watch);
        assert!(Cli::try_parse_from(["status", "--socket", "/x", "--addr", "http://h:1"]).is_err());
    }

    #[tokio::test]
    async fn a_missing_socket_is_unreachable_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let args = StatusArgs {
            socket: dir.path().join("agent.sock"),
            addr: None,
            output: StatusOutput::Table,
            watch: false,
        };
        let f = failure(&args).await;
        assert_eq!(f.code, ExitCode::AgentUnreachable);
        assert!(f.message.contains("agent.sock"), "{}", f.message);
        assert!(f.hint.unwrap().contains("kubectl exec"));
    }

    #[tokio::test]
    async fn a_malformed_address_is_a_usage_error() {
        let args = StatusArgs {
            socket: DEFAULT_SOCKET.into(),
            addr: Some("not a uri".into()),
            output: StatusOutput::Json,
            watch: false,
        };
        assert_eq!(failure(&args).await.code, ExitCode::Usage);
    }
}
