//! The hardened HTTP/1 listener behind the HTTP outlet: a connection cap, a header-read
//! timeout, small request heads, and a graceful shutdown. tests/listener.rs attacks it.
//!
//! On hyper's http1 builder rather than `axum::serve`, which sets no timer (so no header-read
//! timeout) and no head limits; hyper-util supplies the tokio I/O and timer adapters it needs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use futures::future::BoxFuture;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceBuilder, ServiceExt};

/// Binds the listener up front, so a taken port fails startup rather than a background task.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding {addr}: {e}")))
}

/// At most this many connections are served at once. More wait in the kernel's accept queue,
/// which costs the agent nothing; probes and scrapes need a handful. Each served connection
/// holds at most about `MAX_HEAD_BYTES` of request plus its response: the cap bounds memory
/// whatever any pod on the network does.
pub const MAX_CONNECTIONS: usize = 256;
/// A client has this long to send a request's headers, on a new connection and between
/// requests on a kept-alive one; then it is disconnected. Frees the slots of idle, half-sent
/// and slowloris connections; a probe or a scrape sends its request at once.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes buffered for a request head (hyper's minimum); a larger head is answered 431.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Headers per request; more are answered 431. A probe sends about five.
pub const MAX_HEADERS: usize = 32;
/// Pause after an accept error (out of file descriptors): retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves HTTP/1 until `shutdown` is cancelled, then lets in-flight requests finish.
///
/// Request bodies are never read (every route is a GET): hyper answers, then closes a
/// connection whose body was left unread, so a body's size costs nothing either.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /livez /readyz /status /metrics");
    }
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    let graceful = Arc::new(GracefulShutdown::new());
    // The cap is a tower concurrency limit on "serve this connection": a slot is taken before
    // `accept` and given back when the connection ends.
    let mut connections = ServiceBuilder::new()
        .concurrency_limit(MAX_CONNECTIONS)
        .service(ServeConnection {
            http,
            router,
            graceful: graceful.clone(),
        });
    loop {
        let ready = tokio::select! {
            _ = shutdown.cancelled() => break,
            ready = connections.ready() => ready,
        };
        let Ok(slot) = ready;
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!("accepting a connection failed: {e}");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        tokio::spawn(slot.call(stream));
    }
    drop(connections);
    if let Ok(graceful) = Arc::try_unwrap(graceful) {
        graceful.shutdown().await;
    }
    Ok(())
}

/// Serves one accepted connection to its end: the service the connection cap wraps.
#[derive(Clone)]
struct ServeConnection {
    http: http1::Builder,
    router: Router,
    graceful: Arc<GracefulShutdown>,
}

impl Service<TcpStream> for ServeConnection {
    type Response = ();
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<(), Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, stream: TcpStream) -> Self::Future {
        let conn = self.http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(self.router.clone()),
        );
        let conn = self.graceful.watch(conn);
        Box::pin(async move {
            if let Err(e) = conn.await {
                // Timeouts, oversized heads, clients that went away: theirs to fix.
                tracing::trace!("connection ended: {e}");
            }
            Ok(())
        })
    }
}
