//! `prepuller status`: asks the agent running on this node, over its unix socket (the gRPC API
//! of [`crate::status::grpc`]), and prints its status, or follows its events.
//!
//! Exit codes: 0 answered (whether or not the node is ready); 1 the agent's answer could not
//! be used; 2 bad usage; 3 agent unreachable, or it went away while watching.

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::progress::{human_bytes, human_duration, short_digest};
use crate::pull::exit;
use crate::status::grpc::{AgentClient, DEFAULT_SOCKET, WatchedEvent, pb};
use crate::status::{AgentEvent, AgentEventKind, AgentStatus, ImageStatus};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Generous: a node busy pulling can be slow to schedule the agent.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const OTHER_FAILURE: u8 = 1;
/// The same code as `pull` uses for an unreachable runtime.
const UNREACHABLE: u8 = exit::RUNTIME_UNREACHABLE;

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
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: StatusOutput,
    /// Then print events as they happen, until interrupted.
    #[arg(long, short)]
    pub watch: bool,
}

/// Runs `prepuller status`; returns the exit code.
pub async fn run(args: StatusArgs) -> u8 {
    match status(&args).await {
        Ok(()) => exit::OK,
        Err(f) if f.message.is_empty() => f.code,
        Err(f) => {
            eprintln!("error: {}", f.message);
            if let Some(hint) = f.hint {
                eprintln!("hint: {hint}");
            }
            f.code
        }
    }
}

/// Why the command stops early. An empty message: nothing to say (stdout was closed).
struct Failure {
    code: u8,
    message: String,
    hint: Option<String>,
}

impl Failure {
    fn other(message: String) -> Self {
        Failure {
            code: OTHER_FAILURE,
            message,
            hint: None,
        }
    }

    /// Maps a failed call: a vanished agent is "unreachable", anything else a bad answer.
    fn rpc(target: &Target, what: &str, s: &tonic::Status) -> Self {
        match s.code() {
            tonic::Code::Unavailable | tonic::Code::Cancelled => Failure {
                code: UNREACHABLE,
                message: format!("lost the agent at {target} ({what}): {}", s.message()),
                hint: Some(target.hint(false)),
            },
            tonic::Code::DeadlineExceeded => Failure {
                code: UNREACHABLE,
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
}

enum Target {
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

async fn status(args: &StatusArgs) -> Result<(), Failure> {
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
            Ok(None) => {
                return Err(Failure {
                    code: UNREACHABLE,
                    message: format!(
                        "the agent at {target} closed the event stream (it is stopping or \
                         restarting)"
                    ),
                    hint: None,
                });
            }
            Err(s) => return Err(Failure::rpc(&target, "WatchEvents", &s)),
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

async fn connect(args: &StatusArgs) -> Result<(Target, AgentClient<Channel>), Failure> {
    let (target, connected) = match &args.addr {
        Some(addr) => {
            let endpoint = Endpoint::from_shared(addr.clone()).map_err(|e| Failure {
                code: exit::USAGE,
                message: format!("--addr {addr}: {e} (expected http://host:port)"),
                hint: None,
            })?;
            let connected = endpoint.connect_timeout(CONNECT_TIMEOUT).connect().await;
            (Target::Addr(addr.clone()), connected)
        }
        None => {
            let path = args.socket.clone();
            // The URI is ignored by the connector; tonic wants one all the same.
            let connected = Endpoint::from_static("http://[::]:50051")
                .connect_timeout(CONNECT_TIMEOUT)
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(&path).await?;
                        Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(stream))
                    }
                }))
                .await;
            (Target::Socket(args.socket.clone()), connected)
        }
    };
    match connected {
        Ok(channel) => Ok((target, AgentClient::new(channel))),
        Err(e) => {
            let denied = io_error_kind(&e) == Some(io::ErrorKind::PermissionDenied);
            Err(Failure {
                code: UNREACHABLE,
                message: format!(
                    "cannot reach the prepuller agent at {target}: {}",
                    chain(&e)
                ),
                hint: Some(target.hint(denied)),
            })
        }
    }
}

async fn get_status(
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

fn pretty_json(status: &AgentStatus) -> Result<String, Failure> {
    serde_json::to_string_pretty(status)
        .map_err(|e| Failure::other(format!("cannot print the status as JSON: {e}")))
}

/// Prints one block and flushes it, so a watcher sees every line at once. A closed stdout
/// (`| head`) ends the command quietly, with success.
fn print(text: &str) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(Failure {
            code: exit::OK,
            message: String::new(),
            hint: None,
        }),
        Err(e) => Err(Failure::other(format!("cannot write to stdout: {e}"))),
    }
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

/// One line: node, readiness, runtime and config; a second line with the last config error.
fn header(s: &AgentStatus) -> String {
    let mut text = summary_line(s);
    if let Some(e) = &s.config.last_error {
        text.push_str(&format!(
            "\nlast config rejected (the previous one stays in force): {e}"
        ));
    }
    text
}

fn summary_line(s: &AgentStatus) -> String {
    let node = s.node.as_deref().unwrap_or("(node unknown)");
    let (present, total) = s.required_counts();
    let ready = match (s.ready, s.shutting_down) {
        (true, _) => "READY",
        (false, true) => "NOT READY (shutting down)",
        (false, false) => "NOT READY",
    };
    let r = &s.runtime;
    let runtime = if r.reachable {
        let name: Vec<&str> = [r.name.as_deref(), r.version.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        match name.is_empty() {
            true => "runtime reachable".to_string(),
            false => format!("runtime {}", name.join(" ")),
        }
    } else {
        format!(
            "runtime unreachable at {}: {}",
            r.endpoint,
            r.last_error.as_deref().unwrap_or("no answer yet")
        )
    };
    let c = &s.config;
    let config = match c.generation {
        0 => format!("config {} (none applied yet)", c.source),
        g => format!("config {} generation {g}", c.source),
    };
    format!("{node}: {ready}, {present}/{total} required images present; {runtime}; {config}")
}

fn table(s: &AgentStatus, now: SystemTime) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(["IMAGE", "STATE", "REQUIRED", "SIZE", "ATTEMPTS", "NOTE"]);
    for i in &s.images {
        t.add_row([
            short_digest(&i.normalized),
            i.state.as_str().to_string(),
            if i.required { "yes" } else { "no" }.to_string(),
            i.size_bytes.map_or_else(|| "-".to_string(), human_bytes),
            i.attempts.to_string(),
            note(i, now),
        ]);
    }
    t
}

/// Why an image is not simply present: its last error and next retry, else its last drift.
fn note(i: &ImageStatus, now: SystemTime) -> String {
    let mut parts = Vec::new();
    if let Some(e) = &i.last_error {
        parts.push(match &i.last_error_class {
            Some(class) => format!("{class}: {e}"),
            None => e.clone(),
        });
    }
    if let Some(t) = &i.next_retry_at {
        parts.push(retry_note(t, now));
    }
    if parts.is_empty()
        && let Some(d) = &i.drift
    {
        parts.push(d.clone());
    }
    parts.join("; ")
}

/// "retry in 12s" when the time is readable and ahead, else "retry at <time>".
fn retry_note(at: &str, now: SystemTime) -> String {
    match humantime::parse_rfc3339(at)
        .ok()
        .and_then(|t| t.duration_since(now).ok())
    {
        Some(d) => format!(
            "retry in {}",
            human_duration(Duration::from_secs(d.as_secs()))
        ),
        None => format!("retry at {at}"),
    }
}

/// `2026-11-23T12:00:00Z  pulling  registry/x:1 (attempt 2)`.
fn event_line(e: &WatchedEvent) -> String {
    let (time, word, detail) = match e {
        WatchedEvent::Lagged(l) => (
            &l.time,
            "lagged",
            format!(
                "missed {} events (this client read too slowly); run `prepuller status` for the \
                 current state",
                l.missed
            ),
        ),
        WatchedEvent::Agent(AgentEvent { time, kind }) => {
            let (word, detail) = agent_event(kind);
            (time, word, detail)
        }
    };
    format!("{time}  {word:<8} {detail}")
}

fn agent_event(kind: &AgentEventKind) -> (&'static str, String) {
    match kind {
        AgentEventKind::Queued { image } => ("queued", short_digest(image)),
        AgentEventKind::PullStarted { image, attempt } => (
            "pulling",
            format!("{} (attempt {attempt})", short_digest(image)),
        ),
        AgentEventKind::AttemptFailed {
            image,
            attempt,
            class,
            reason,
            error,
            next_retry_at,
        } => {
            let retry = next_retry_at
                .as_ref()
                .map(|t| format!("; retry at {t}"))
                .unwrap_or_default();
            (
                "failed",
                format!(
                    "{} (attempt {attempt}, {class} {reason}): {error}{retry}",
                    short_digest(image)
                ),
            )
        }
        AgentEventKind::Present {
            image,
            size_bytes,
            pull_seconds,
        } => {
            let took = pull_seconds
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .map(|d| format!(", pulled in {}", human_duration(d)))
                .unwrap_or_default();
            (
                "present",
                format!(
                    "{} ({}{took})",
                    short_digest(image),
                    human_bytes(*size_bytes)
                ),
            )
        }
        AgentEventKind::Drift { image, from, to } => (
            "drift",
            format!(
                "{}: {} → {}",
                short_digest(image),
                short_hash(from),
                short_hash(to)
            ),
        ),
        AgentEventKind::ConfigReloaded { generation, source } => (
            "config",
            format!("generation {generation} applied from {source}"),
        ),
        AgentEventKind::ConfigRejected { error } => ("config", format!("rejected: {error}")),
    }
}

/// `sha256:0123456789ab…`, as [`short_digest`] shortens the digest of a reference.
fn short_hash(digest: &str) -> String {
    short_digest(&format!("@{digest}"))[1..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ConfigStatus, ImageState, RuntimeStatus};
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: StatusArgs,
    }

    fn image(name: &str, state: ImageState) -> ImageStatus {
        crate::status::test_image(name, true, state)
    }

    fn sample() -> AgentStatus {
        AgentStatus {
            ready: false,
            node: Some("worker-1".into()),
            config: ConfigStatus {
                source: "/etc/prepuller/images.yaml".into(),
                generation: 3,
                applied_at: None,
                last_error: None,
            },
            runtime: RuntimeStatus {
                endpoint: "unix:///run/containerd/containerd.sock".into(),
                name: Some("containerd".into()),
                version: Some("v1.7.2".into()),
                api_version: Some("v1".into()),
                reachable: true,
                last_error: None,
                lost_at: None,
            },
            images: vec![
                image("a:1", ImageState::Present),
                image("b:1", ImageState::BackingOff),
            ],
            shutting_down: false,
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

    #[test]
    fn the_summary_names_readiness_runtime_and_config() {
        let s = sample();
        assert_eq!(
            summary_line(&s),
            "worker-1: NOT READY, 1/2 required images present; runtime containerd v1.7.2; \
             config /etc/prepuller/images.yaml generation 3"
        );
        let mut s = sample();
        s.ready = true;
        s.node = None;
        s.images.truncate(1);
        s.runtime.reachable = false;
        s.runtime.last_error = Some("connection refused".into());
        s.config.generation = 0;
        s.config.last_error = Some("images.yaml:2:3: image: empty".into());
        assert_eq!(
            header(&s),
            "(node unknown): READY, 1/1 required images present; runtime unreachable at \
             unix:///run/containerd/containerd.sock: connection refused; config \
             /etc/prepuller/images.yaml (none applied yet)\nlast config rejected (the previous \
             one stays in force): images.yaml:2:3: image: empty"
        );
        s.ready = false;
        s.shutting_down = true;
        assert!(summary_line(&s).contains("NOT READY (shutting down)"));
    }

    #[test]
    fn the_table_shortens_digests_and_explains_images_that_are_not_present() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut s = sample();
        s.images[0].normalized =
            format!("registry.local/app@sha256:{}", "0123456789abcdef".repeat(4));
        s.images[0].size_bytes = Some(67_000_000);
        s.images[0].drift = Some("tag drift: sha256:1 → sha256:2".into());
        s.images[1].required = false;
        s.images[1].attempts = 2;
        s.images[1].last_error = Some("registry answered 503".into());
        s.images[1].last_error_class = Some(crate::status::ErrorClass::Transient);
        s.images[1].next_retry_at = Some(crate::status::rfc3339(now + Duration::from_secs(12)));
        let text = table(&s, now).to_string();
        assert!(
            text.contains("registry.local/app@sha256:0123456789ab…"),
            "{text}"
        );
        assert!(text.contains("67.00 MB"), "{text}");
        assert!(text.contains("tag drift: sha256:1 → sha256:2"), "{text}");
        assert!(
            text.contains("transient: registry answered 503; retry in 12.0s"),
            "{text}"
        );
        assert!(text.contains("BackingOff"), "{text}");
        for column in ["IMAGE", "STATE", "REQUIRED", "SIZE", "ATTEMPTS", "NOTE"] {
            assert!(text.contains(column), "{text}");
        }
    }

    #[test]
    fn a_past_or_unreadable_retry_time_is_shown_as_is() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(
            retry_note("2000-01-01T00:00:00Z", now),
            "retry at 2000-01-01T00:00:00Z"
        );
        assert_eq!(retry_note("soon", now), "retry at soon");
    }

    #[test]
    fn events_read_as_one_line_each() {
        let at = |kind| {
            event_line(&WatchedEvent::Agent(AgentEvent {
                time: "2026-11-23T12:00:00Z".into(),
                kind,
            }))
        };
        assert_eq!(
            at(AgentEventKind::PullStarted {
                image: "registry/x:1".into(),
                attempt: 2
            }),
            "2026-11-23T12:00:00Z  pulling  registry/x:1 (attempt 2)"
        );
        assert_eq!(
            at(AgentEventKind::Queued {
                image: "registry/x:1".into()
            }),
            "2026-11-23T12:00:00Z  queued   registry/x:1"
        );
        assert_eq!(
            at(AgentEventKind::AttemptFailed {
                image: "registry/x:1".into(),
                attempt: 1,
                class: crate::status::ErrorClass::Transient,
                reason: "rate_limited".into(),
                error: "429 Too Many Requests".into(),
                next_retry_at: Some("2026-11-23T12:00:10Z".into()),
            }),
            "2026-11-23T12:00:00Z  failed   registry/x:1 (attempt 1, transient rate_limited): \
             429 Too Many Requests; retry at 2026-11-23T12:00:10Z"
        );
        assert_eq!(
            at(AgentEventKind::Present {
                image: "registry/x:1".into(),
                size_bytes: 1_500_000,
                pull_seconds: Some(4.2),
            }),
            "2026-11-23T12:00:00Z  present  registry/x:1 (1.50 MB, pulled in 4.2s)"
        );
        let long = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            at(AgentEventKind::Drift {
                image: "registry/x:1".into(),
                from: long.clone(),
                to: long,
            }),
            "2026-11-23T12:00:00Z  drift    registry/x:1: sha256:abababababab… → sha256:abababababab…"
        );
        assert_eq!(
            at(AgentEventKind::ConfigReloaded {
                generation: 4,
                source: "/etc/p.yaml".into()
            }),
            "2026-11-23T12:00:00Z  config   generation 4 applied from /etc/p.yaml"
        );
        let lagged = event_line(&WatchedEvent::Lagged(crate::status::grpc::Lagged {
            time: "2026-11-23T12:00:00Z".into(),
            missed: 7,
        }));
        assert!(lagged.starts_with("2026-11-23T12:00:00Z  lagged   missed 7 events"));
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
        let f = status(&args).await.err().unwrap();
        assert_eq!(f.code, UNREACHABLE);
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
        assert_eq!(status(&args).await.err().unwrap().code, exit::USAGE);
    }
}
