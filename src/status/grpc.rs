//! The node-local gRPC API (`proto/prepuller/v1/agent.proto`): `GetStatus` and `WatchEvents`
//! on a unix socket, read from the [`StatusHub`] like every other outlet. `prepuller status`
//! is its client.

mod convert;
mod socket;

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::net::UnixStream;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response};

pub use convert::{ConversionError, Lagged, WatchedEvent};

use super::{StatusHub, now_rfc3339};

/// The generated messages, server and client.
pub mod pb {
    tonic::include_proto!("prepuller.v1");
}

pub use pb::agent_client::AgentClient;
pub use pb::agent_server::AgentServer;

/// Where the agent listens unless told otherwise (`/run` is a tmpfs: no stale files at boot).
pub const DEFAULT_SOCKET: &str = "/run/prepuller/agent.sock";

/// How long a stopping agent waits for open calls (watchers) to finish before it leaves anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The `Agent` service; build it with [`service`].
pub struct AgentService {
    hub: Arc<StatusHub>,
    /// Ends every `WatchEvents` stream: a graceful shutdown waits for open calls.
    shutdown: CancellationToken,
}

/// The `Agent` service over `hub`, to mount on any tonic server. Its `WatchEvents` streams end
/// only when their client goes away; [`serve_unix`] also ends them when it stops.
pub fn service(hub: Arc<StatusHub>) -> AgentServer<AgentService> {
    service_until(hub, CancellationToken::new())
}

fn service_until(hub: Arc<StatusHub>, shutdown: CancellationToken) -> AgentServer<AgentService> {
    AgentServer::new(AgentService { hub, shutdown })
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    async fn get_status(
        &self,
        _: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::Status>, tonic::Status> {
        Ok(Response::new(self.hub.snapshot().into()))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        _: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, tonic::Status> {
        // Subscribed before the response goes out: whatever happens after the client sees
        // the response headers reaches it.
        let events = BroadcastStream::new(self.hub.subscribe()).map(|r| {
            Ok(match r {
                Ok(e) => e.into(),
                Err(BroadcastStreamRecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "a WatchEvents client fell behind and missed events");
                    pb::Event {
                        time: now_rfc3339(),
                        kind: Some(pb::event::Kind::Lagged(pb::event::Lagged { missed })),
                    }
                }
            })
        });
        let stream = events.take_until(self.shutdown.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GrpcServeError {
    #[error("cannot create the socket directory {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot remove the stale socket {}: {source}", path.display())]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("cannot listen on {}: {source}", path.display())]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot restrict {} to mode 0600: {source}", path.display())]
    Chmod { path: PathBuf, source: io::Error },
    #[error("gRPC server on {}: {source}", path.display())]
    Serve {
        path: PathBuf,
        source: tonic::transport::Error,
    },
}

/// Serves the API on a unix socket at `path` (creating the parent dir, removing a stale socket
/// file first, chmod 0600 so only root on the node can talk to it) until `shutdown` is
/// cancelled; removes the socket file on exit.
pub async fn serve_unix(
    path: &Path,
    hub: Arc<StatusHub>,
    shutdown: CancellationToken,
) -> Result<(), GrpcServeError> {
    let (listener, identity) = socket::bind(path)?;
    tracing::info!(socket = %path.display(), "gRPC API listening");
    let incoming = futures::stream::unfold(listener, |listener| async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => return Some((Ok::<UnixStream, io::Error>(stream), listener)),
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!("gRPC API: accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    let server = tonic::transport::Server::builder()
        .add_service(service_until(hub, shutdown.clone()))
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    let result = tokio::select! {
        r = server => r.map_err(|source| GrpcServeError::Serve { path: path.to_path_buf(), source }),
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!("gRPC API: clients still connected after {SHUTDOWN_GRACE:?}; closing anyway");
            Ok(())
        }
    };
    socket::remove_if_ours(path, identity);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::AgentEventKind;

    #[tokio::test]
    async fn a_slow_watcher_is_told_how_many_events_it_missed() {
        use pb::agent_server::Agent as _;
        let hub = Arc::new(StatusHub::new(None, "c".into(), "e".into()));
        let svc = AgentService {
            hub: hub.clone(),
            shutdown: CancellationToken::new(),
        };
        let mut stream = svc
            .watch_events(Request::new(pb::WatchEventsRequest {}))
            .await
            .unwrap()
            .into_inner();
        // More than the hub keeps for one subscriber.
        for n in 0..(crate::status::hub::EVENT_BUFFER + 10) {
            hub.emit(AgentEventKind::Queued {
                image: n.to_string(),
            });
        }
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(
            first.kind,
            Some(pb::event::Kind::Lagged(pb::event::Lagged { missed: 10 }))
        );
        let next = stream.next().await.unwrap().unwrap();
        assert_eq!(
            next.kind,
            Some(pb::event::Kind::Queued(pb::event::Queued {
                image: "10".into()
            }))
        );
    }

    #[tokio::test]
    async fn watch_streams_end_on_shutdown() {
        use pb::agent_server::Agent as _;
        let hub = Arc::new(StatusHub::new(None, "c".into(), "e".into()));
        let shutdown = CancellationToken::new();
        let svc = AgentService {
            hub: hub.clone(),
            shutdown: shutdown.clone(),
        };
        let mut stream = svc
            .watch_events(Request::new(pb::WatchEventsRequest {}))
            .await
            .unwrap()
            .into_inner();
        shutdown.cancel();
        assert!(stream.next().await.is_none());
    }
}
