//! The node-local gRPC API end to end: `serve_unix` on a socket in a temp dir, a hand-built
//! `StatusHub` (no runtime needed), and the real client, `prepuller status`.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use prepuller::config::PullPolicy;
use prepuller::status::grpc::{self, AgentClient, GrpcServeError, pb};
use prepuller::status::{
    AgentEventKind, AgentStatus, ErrorClass, ImageState, ImageStatus, StatusHub,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(10);

fn image(name: &str, required: bool, state: ImageState) -> ImageStatus {
    let normalized = format!("docker.io/library/{name}");
    ImageStatus {
        state,
        ..ImageStatus::new(name.into(), normalized, required, PullPolicy::IfNotPresent)
    }
}

fn hub() -> Arc<StatusHub> {
    let hub = StatusHub::new(
        Some("worker-1".into()),
        "/etc/prepuller/images.yaml".into(),
        "unix:///run/containerd/containerd.sock".into(),
    );
    hub.update(|s| {
        s.config.generation = 2;
        s.config.applied_at = Some("2026-11-23T11:00:00Z".into());
        s.runtime.reachable = true;
        s.runtime.name = Some("containerd".into());
        s.runtime.version = Some("v1.7.2".into());
        s.runtime.api_version = Some("v1".into());
        let mut present = image("nginx:1.27", true, ImageState::Present);
        present.size_bytes = Some(67_000_000);
        present.image_id = Some("sha256:aaaa".into());
        present.last_pull_seconds = Some(4.5);
        present.present_since = Some("2026-11-23T11:00:05Z".into());
        let mut failing = image("missing:1", true, ImageState::BackingOff);
        failing.attempts = 3;
        failing.last_error = Some("registry answered 503".into());
        failing.last_error_class = Some(ErrorClass::Transient);
        failing.next_retry_at = Some("2026-11-23T11:01:00Z".into());
        s.images = vec![
            present,
            failing,
            image("tool:2", false, ImageState::Waiting),
        ];
    });
    Arc::new(hub)
}

struct Server {
    dir: tempfile::TempDir,
    socket: PathBuf,
    hub: Arc<StatusHub>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), GrpcServeError>>,
}

/// Serves `hub` on `<tempdir>/run/prepuller/agent.sock` (the parent does not exist yet).
async fn serve(hub: Arc<StatusHub>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/prepuller/agent.sock");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (socket, hub, shutdown) = (socket.clone(), hub.clone(), shutdown.clone());
        async move { grpc::serve_unix(&socket, hub, shutdown).await }
    });
    let deadline = tokio::time::Instant::now() + WAIT;
    while !socket.exists() {
        assert!(!task.is_finished(), "serve_unix stopped: {:?}", task.await);
        assert!(
            tokio::time::Instant::now() < deadline,
            "no socket after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Server {
        dir,
        socket,
        hub,
        shutdown,
        task,
    }
}

async fn client(socket: &Path) -> AgentClient<Channel> {
    let channel = testkit::unix_channel(socket).await.unwrap();
    AgentClient::new(channel)
}

#[tokio::test]
async fn get_status_returns_what_the_hub_holds() {
    let server = serve(hub()).await;
    let mut client = client(&server.socket).await;
    let got = client
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.images[1].state, pb::ImageState::BackingOff as i32);
    assert_eq!(got.images[0].repo_digest, None, "absent stays absent");
    assert_eq!(
        AgentStatus::try_from(got).unwrap(),
        server.hub.snapshot(),
        "every field, as the hub holds it"
    );

    // Later changes show up: each call reads a fresh snapshot.
    server
        .hub
        .update(|s| s.images[1].state = ImageState::Present);
    let got = client
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(got.ready);
}

#[tokio::test]
async fn the_socket_is_root_only_and_removed_on_shutdown() {
    let server = serve(hub()).await;
    let meta = std::fs::symlink_metadata(&server.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let parent = std::fs::metadata(server.socket.parent().unwrap()).unwrap();
    assert_eq!(
        parent.permissions().mode() & 0o077,
        0,
        "created dir is private"
    );

    // An open watch must not hold the shutdown up: its stream ends.
    let mut events = client(&server.socket)
        .await
        .watch_events(pb::WatchEventsRequest {})
        .await
        .unwrap()
        .into_inner();
    server.shutdown.cancel();
    let end = tokio::time::timeout(WAIT, events.message()).await.unwrap();
    assert!(matches!(end, Ok(None)), "{end:?}");
    tokio::time::timeout(WAIT, server.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!server.socket.exists());
    drop(server.dir);
}

#[tokio::test]
async fn a_stale_socket_is_replaced_but_other_files_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    // A socket file whose listener is gone, as a crashed agent leaves it.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (socket, shutdown) = (socket.clone(), shutdown.clone());
        async move { grpc::serve_unix(&socket, hub(), shutdown).await }
    });
    let mut c = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(s) = tokio::net::UnixStream::connect(&socket).await {
                drop(s);
                break client(&socket).await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    c.get_status(pb::GetStatusRequest {}).await.unwrap();
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "keep me").unwrap();
    let err = grpc::serve_unix(&file, hub(), CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, GrpcServeError::NotASocket { .. }), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[tokio::test]
async fn watch_events_streams_what_happens_after_subscribing() {
    let server = serve(hub()).await;
    server.hub.emit(AgentEventKind::Queued {
        image: "before".into(),
    });
    let mut events = client(&server.socket)
        .await
        .watch_events(pb::WatchEventsRequest {})
        .await
        .unwrap()
        .into_inner();
    server.hub.emit(AgentEventKind::PullStarted {
        image: "docker.io/library/missing:1".into(),
        attempt: 4,
    });
    server.hub.emit(AgentEventKind::Present {
        image: "docker.io/library/missing:1".into(),
        size_bytes: 1234,
        pull_seconds: Some(2.5),
    });
    let first = tokio::time::timeout(WAIT, events.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.time.ends_with('Z'), "RFC 3339: {}", first.time);
    assert_eq!(
        first.kind,
        Some(pb::event::Kind::PullStarted(pb::event::PullStarted {
            image: "docker.io/library/missing:1".into(),
            attempt: 4,
        })),
        "the event before subscribing is not replayed"
    );
    let second = tokio::time::timeout(WAIT, events.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        second.kind,
        Some(pb::event::Kind::Present(pb::event::Present {
            image: "docker.io/library/missing:1".into(),
            size_bytes: 1234,
            pull_seconds: Some(2.5),
        }))
    );
}

// ---------------------------------------------------------------------------------------------
// `prepuller status`, the built binary
// ---------------------------------------------------------------------------------------------

fn status_command(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_prepuller"));
    cmd.arg("status")
        .args(args)
        .env("PREPULLER_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn prepuller_status(args: &[&str]) -> Run {
    let out = tokio::time::timeout(WAIT, status_command(args).output())
        .await
        .expect("prepuller status did not finish")
        .unwrap();
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    };
    assert!(
        !run.stderr.contains("unrecognized subcommand"),
        "`prepuller status` is not wired into main.rs yet: {}",
        run.stderr
    );
    run
}

#[tokio::test]
async fn status_json_is_the_http_status_document() {
    let server = serve(hub()).await;
    let socket = server.socket.to_str().unwrap();
    let run = prepuller_status(&["--socket", socket, "-o", "json"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let got: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(got, serde_json::to_value(server.hub.snapshot()).unwrap());
    assert_eq!(got["images"][1]["lastErrorClass"], "transient", "camelCase");
}

#[tokio::test]
async fn status_table_summarizes_the_node() {
    let server = serve(hub()).await;
    let run = prepuller_status(&["--socket", server.socket.to_str().unwrap()]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let header = run.stdout.lines().next().unwrap();
    assert_eq!(
        header,
        "worker-1: NOT READY, 1/2 required images present; runtime containerd v1.7.2; \
         config /etc/prepuller/images.yaml generation 2"
    );
    for text in [
        "docker.io/library/nginx:1.27",
        "BackingOff",
        "67.00 MB",
        "transient: registry answered 503",
    ] {
        assert!(run.stdout.contains(text), "{text} missing:\n{}", run.stdout);
    }
}

#[tokio::test]
async fn status_names_an_unreachable_socket_and_exits_4() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let run = prepuller_status(&["--socket", socket.to_str().unwrap()]).await;
    assert_eq!(run.code, Some(4));
    assert!(
        run.stderr.contains(socket.to_str().unwrap()),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("kubectl exec"), "{}", run.stderr);
    assert!(run.stdout.is_empty());
}

/// Reads lines from a running `prepuller status --watch` until `pred` matches one.
async fn wait_for_line<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
    mut pred: impl FnMut(&str) -> bool,
) -> String {
    tokio::time::timeout(WAIT, async {
        loop {
            let line = lines.next_line().await.unwrap().expect("stdout closed");
            if pred(&line) {
                return line;
            }
        }
    })
    .await
    .expect("no such line")
}

#[tokio::test]
async fn status_watch_prints_the_summary_then_one_line_per_event() {
    let server = serve(hub()).await;
    let mut child = status_command(&["--socket", server.socket.to_str().unwrap(), "--watch"])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The summary comes after subscribing: what is emitted from here on is seen.
    let header = wait_for_line(&mut lines, |_| true).await;
    assert!(header.starts_with("worker-1: NOT READY"), "{header}");
    server.hub.emit(AgentEventKind::PullStarted {
        image: "docker.io/library/missing:1".into(),
        attempt: 4,
    });
    let line = wait_for_line(&mut lines, |_| true).await;
    assert!(
        line.ends_with("  pulling  docker.io/library/missing:1 (attempt 4)"),
        "{line}"
    );

    // The agent stopping ends the watch: no longer reachable.
    server.shutdown.cancel();
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(4));
}

#[tokio::test]
async fn status_watch_json_prints_one_event_object_per_line() {
    let server = serve(hub()).await;
    let mut child = status_command(&[
        "--socket",
        server.socket.to_str().unwrap(),
        "--watch",
        "-o",
        "json",
    ])
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // No summary in JSON: probe until the watcher has subscribed.
    let probing = tokio::spawn({
        let hub = server.hub.clone();
        async move {
            loop {
                hub.emit(AgentEventKind::Queued {
                    image: "probe".into(),
                });
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    wait_for_line(&mut lines, |l| l.contains("probe")).await;
    probing.abort();
    let _ = probing.await;
    server.hub.emit(AgentEventKind::ConfigRejected {
        error: "images.yaml:3:5: image: empty".into(),
    });
    let line = wait_for_line(&mut lines, |l| !l.contains("probe")).await;
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["kind"], "configRejected");
    assert_eq!(event["error"], "images.yaml:3:5: image: empty");
    assert!(event["time"].as_str().unwrap().ends_with('Z'));
    child.kill().await.unwrap();
}
