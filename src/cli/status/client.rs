//! The connection to the agent's gRPC API, and what a failed connection or call means to the
//! user: which exit code, what message, what hint.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use super::StatusArgs;
use crate::cli::ExitCode;
use crate::status::AgentStatus;
use crate::status::grpc::{AgentClient, pb};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Generous: a node busy pulling can be slow to schedule the agent.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the command stops with an error.
#[derive(Debug)]
pub struct Failure {
    pub code: ExitCode,
    pub message: String,
    pub hint: Option<String>,
}

impl Failure {
    pub fn other(message: String) -> Self {
        Failure {
            code: ExitCode::Failed,
            message,
            hint: None,
        }
    }

    /// Maps a failed call: a vanished agent is "unreachable", anything else a bad answer.
    pub fn rpc(target: &Target, what: &str, s: &tonic::Status) -> Self {
        match s.code() {
            tonic::Code::Unavailable | tonic::Code::Cancelled => Failure {
                code: ExitCode::AgentUnreachable,
                message: format!("lost the agent at {target} ({what}): {}", s.message()),
                hint: Some(target.hint(false)),
            },
            tonic::Code::DeadlineExceeded => Failure {
                code: ExitCode::AgentUnreachable,
                message: format!(
                    "the agent at {target} did not answer {what} within {}",
                    humantime::format_duration(CALL_TIMEOUT)
                ),
                hint: None,
            },
            tonic::Code::Unimplemented => Failure::other(format!(
                "the server at {target} does not serve {what} (an older agent, or not prepuller?)"
            )),
            _ => Failure::other(format!("{what} at {target} failed: {s}")),
        }
    }

    /// The agent ended the event stream.
    pub fn stream_closed(target: &Target) -> Self {
        Failure {
            code: ExitCode::AgentUnreachable,
            message: format!(
                "the agent at {target} closed the event stream (it is stopping or restarting)"
            ),
            hint: None,
        }
    }
}

/// Where the agent is asked.
pub enum Target {
    Socket(PathBuf),
    Addr(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Socket(p) => write!(f, "{}", p.display()),
            Target::Addr(a) => f.write_str(a),
        }
    }
}

impl Target {
    fn hint(&self, permission_denied: bool) -> String {
        match self {
            Target::Socket(_) if permission_denied => {
                "the socket is root-only (mode 0600): run this as root on the node, or inside the \
                 prepuller pod"
                    .into()
            }
            Target::Socket(_) => "run this inside the prepuller pod of that node \
                 (kubectl exec -n <namespace> <prepuller pod on the node> -- prepuller status), \
                 and check that the agent is running there (kubectl logs); --socket if it \
                 listens elsewhere"
                .into(),
            Target::Addr(_) => {
                "check that the agent's API is reachable at that address (is the port-forward \
                 running?)"
                    .into()
            }
        }
    }
}

/// Connects to the agent's socket (tonic's own `unix://` endpoint), or to `--addr`.
pub async fn connect(args: &StatusArgs) -> Result<(Target, AgentClient<Channel>), Failure> {
    let (target, endpoint) = match &args.addr {
        Some(addr) => {
            let endpoint = Endpoint::from_shared(addr.clone()).map_err(|e| Failure {
                code: ExitCode::Usage,
                message: format!("--addr {addr}: {e} (expected http://host:port)"),
                hint: None,
            })?;
            (Target::Addr(addr.clone()), endpoint)
        }
        None => {
            let uri = format!("unix://{}", args.socket.to_string_lossy());
            let endpoint = Endpoint::from_shared(uri).map_err(|e| Failure {
                code: ExitCode::Usage,
                message: format!("--socket {}: {e}", args.socket.display()),
                hint: None,
            })?;
            (Target::Socket(args.socket.clone()), endpoint)
        }
    };
    match endpoint.connect_timeout(CONNECT_TIMEOUT).connect().await {
        Ok(channel) => Ok((target, AgentClient::new(channel))),
        Err(e) => {
            let denied = io_error_kind(&e) == Some(io::ErrorKind::PermissionDenied);
            Err(Failure {
                code: ExitCode::AgentUnreachable,
                message: format!(
                    "cannot reach the prepuller agent at {target}: {}",
                    chain(&e)
                ),
                hint: Some(target.hint(denied)),
            })
        }
    }
}

pub async fn get_status(
    target: &Target,
    client: &mut AgentClient<Channel>,
) -> Result<AgentStatus, Failure> {
    let mut request = tonic::Request::new(pb::GetStatusRequest {});
    request.set_timeout(CALL_TIMEOUT);
    let status = client
        .get_status(request)
        .await
        .map_err(|s| Failure::rpc(target, "GetStatus", &s))?
        .into_inner();
    AgentStatus::try_from(status)
        .map_err(|e| Failure::other(format!("cannot read the status from {target}: {e}")))
}

/// "No such file or directory (os error 2)": the causes, without repeats or tonic's bare
/// "transport error".
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = Some(e);
    while let Some(s) = source {
        let text = s.to_string();
        if text != "transport error" && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    if parts.is_empty() {
        return e.to_string();
    }
    parts.join(": ")
}

fn io_error_kind(e: &(dyn std::error::Error + 'static)) -> Option<io::ErrorKind> {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        source = s.source();
    }
    None
}
