//! The watch of the agent's own Node: GET, then WATCH from its resourceVersion with a
//! `metadata.name` field selector.
//!
//! Why not kube-runtime's `watcher` (`watch_object`, as bottlerocket-update-operator follows
//! its node): its initial state comes from a LIST (`InitialListStrategy::ListWatch`), and a LIST
//! needs the `list` verb on `nodes` even with a `metadata.name` field selector (the authorizer
//! sees verb `list`, whatever the selector). The README's RBAC section and
//! `deploy/base/rbac.yaml` grant the agent `get`, `watch` and `patch` on nodes, "no list": an
//! agent upgraded onto that ClusterRole would be refused its first request forever. The
//! watcher's other mode (`StreamingList`, a WATCH with `sendInitialEvents`) needs only `watch`,
//! but the API server answers it only with the `WatchList` feature gate (off before 1.32, and
//! off by default again in 1.33), so it would fail on clusters prepuller supports. A GET gives
//! the same starting point with the verb the ClusterRole has; what follows is the watcher's
//! own protocol, kept small: resume from the last resourceVersion (an event's or a bookmark's),
//! after a 410 start from the current state.

use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{WatchEvent, WatchParams};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::error::NodeError;

/// The server ends a watch after this long; it is resumed from the last resourceVersion.
const WATCH_TIMEOUT_SECS: u32 = 290;
/// A watch that ends sooner than this (or is refused as too old) is not resumed at once.
const MIN_WATCH: Duration = Duration::from_secs(1);
/// The longest pause between tries while the Node cannot be read or watched.
const MAX_DELAY: Duration = Duration::from_secs(60);

/// The Node as the watcher saw it.
pub(super) enum Seen {
    /// Read with a GET: the current Node.
    Read(Node),
    /// From the watch, in the order of its changes.
    Event(Node),
}

/// Why a watch (begun after a GET) stopped.
enum Interrupted {
    /// The reporter is gone or cancelled: nothing more to do.
    Done,
    /// Too old twice in a row (410 from the GET's version, then from the current state).
    Expired,
    Failed(NodeError),
}

/// Follows one Node until `cancel` or until `tx`'s receiver is gone (RBAC `get` and `watch`
/// on nodes, no `list`). One watch that is too old (410: the server's history no longer
/// reaches back to it, which can also be true of a GET's resourceVersion) starts again without
/// a version: the server then sends the current Node as ADDED, and its changes after that.
pub(super) async fn watch_node(
    api: Api<Node>,
    name: String,
    tx: mpsc::Sender<Seen>,
    cancel: CancellationToken,
) {
    let mut delay = Duration::from_secs(1);
    // The last error logged, so that a persistent one is logged once.
    let mut last_error: Option<String> = None;
    let params = WatchParams::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(WATCH_TIMEOUT_SECS);
    loop {
        let error = match api.get(&name).await {
            Err(e) => NodeError::api("get", "nodes")(e),
            Ok(node) => {
                let rv = node.metadata.resource_version.clone();
                if tx.send(Seen::Read(node)).await.is_err() {
                    return;
                }
                delay = Duration::from_secs(1);
                if last_error.take().is_some() {
                    tracing::info!(node = %name, "reading the Node again");
                }
                match watch_from(&api, &params, &name, rv, &tx, &cancel).await {
                    Interrupted::Done => return,
                    Interrupted::Expired => {
                        // Read again at once, but not in a tight loop.
                        if !pause(&cancel, MIN_WATCH).await {
                            return;
                        }
                        continue;
                    }
                    Interrupted::Failed(e) => e,
                }
            }
        };
        let error = error.to_string();
        if last_error.as_deref() != Some(error.as_str()) {
            tracing::warn!(node = %name, "cannot follow the Node, retrying: {error}");
            last_error = Some(error);
        }
        if !pause(&cancel, delay).await {
            return;
        }
        delay = (delay * 2).min(MAX_DELAY);
    }
}

/// Watches from `rv` (none: from the current state), resuming each watch the server ends.
async fn watch_from(
    api: &Api<Node>,
    params: &WatchParams,
    name: &str,
    mut rv: Option<String>,
    tx: &mpsc::Sender<Seen>,
    cancel: &CancellationToken,
) -> Interrupted {
    loop {
        let opened = Instant::now();
        // An empty version asks the server for the current state first.
        let stream = match api.watch(params, rv.as_deref().unwrap_or("")).await {
            Ok(s) => s,
            Err(e) => return Interrupted::Failed(NodeError::api("watch", "nodes")(e)),
        };
        let mut stream = std::pin::pin!(stream.into_stream());
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => return Interrupted::Done,
                n = stream.try_next() => n,
            };
            let seen = match next {
                // A Node is added only as the current state of a fresh watch.
                Ok(Some(WatchEvent::Added(n))) => Seen::Read(n),
                Ok(Some(WatchEvent::Modified(n))) => Seen::Event(n),
                Ok(Some(WatchEvent::Bookmark(b))) => {
                    rv = Some(b.metadata.resource_version);
                    continue;
                }
                Ok(Some(WatchEvent::Deleted(_))) => continue,
                Ok(Some(WatchEvent::Error(s))) if s.code == 410 => {
                    // Too old to resume: from the current state, once. A second 410 in a row
                    // starts over with a GET, after a pause.
                    if rv.take().is_none() {
                        return Interrupted::Expired;
                    }
                    tracing::debug!(node = %name, "watch too old ({}); watching from the current state", s.message);
                    break;
                }
                Ok(Some(WatchEvent::Error(s))) => return Interrupted::Failed(NodeError::Watch(s)),
                Ok(None) => {
                    // The server's timeout: resume. A server that ends every watch at once is
                    // not asked again in a tight loop.
                    if opened.elapsed() < MIN_WATCH && !pause(cancel, MIN_WATCH).await {
                        return Interrupted::Done;
                    }
                    break;
                }
                Err(e) => return Interrupted::Failed(NodeError::api("watch", "nodes")(e)),
            };
            let (Seen::Read(n) | Seen::Event(n)) = &seen;
            rv = n.metadata.resource_version.clone();
            if tx.send(seen).await.is_err() {
                return Interrupted::Done;
            }
        }
    }
}

/// Sleeps `d`; false when cancelled meanwhile.
async fn pause(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}
