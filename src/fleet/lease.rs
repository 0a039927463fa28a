//! The Lease calls the coordinator makes, behind a trait so that the tests run it on a stateful
//! fake with paused time.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{ListParams, PostParams, WatchEvent, WatchParams};

/// How a Lease call failed, as the coordinator decides on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 409: someone else wrote the Lease first (or created it): try another slot.
    #[error("conflict")]
    Conflict,
    /// 401/403: the agent's Role lacks Leases; it will not fix itself.
    #[error(
        "forbidden: the agent's Role lacks `{verb}` on `leases` in its namespace; apply deploy/base/rbac.yaml (see the README, section Fleet pull budget) ({message})"
    )]
    Forbidden { verb: &'static str, message: String },
    /// Anything else (unreachable, 5xx, timeouts): retried with back-off.
    #[error("{verb} leases: {message} (is the API server reachable?)")]
    Unavailable { verb: &'static str, message: String },
}

impl ApiError {
    fn from_kube(verb: &'static str, e: kube::Error) -> ApiError {
        match e {
            kube::Error::Api(s) if s.code == 409 => ApiError::Conflict,
            kube::Error::Api(s) if s.code == 401 || s.code == 403 => ApiError::Forbidden {
                verb,
                message: s.message,
            },
            kube::Error::Api(s) => ApiError::Unavailable {
                verb,
                message: format!("{} ({} {})", s.message, s.code, s.reason),
            },
            e => ApiError::Unavailable {
                verb,
                message: e.to_string(),
            },
        }
    }
}

/// The Leases of one namespace.
pub trait LeaseApi: Clone + Send + Sync + 'static {
    /// The Leases matching `selector`, and the list's resourceVersion (where a watch starts).
    fn list(
        &self,
        selector: &str,
    ) -> impl Future<Output = Result<(Vec<Lease>, String), ApiError>> + Send;
    fn get(&self, name: &str) -> impl Future<Output = Result<Option<Lease>, ApiError>> + Send;
    /// Fails with `Conflict` when the name exists.
    fn create(&self, lease: &Lease) -> impl Future<Output = Result<Lease, ApiError>> + Send;
    /// A PUT with `metadata.resourceVersion` as precondition: `Conflict` when it moved on.
    fn replace(&self, lease: &Lease) -> impl Future<Output = Result<Lease, ApiError>> + Send;
    /// The changes to the Leases matching `selector` after `resource_version`, as the API
    /// server sends them: a waiting node keeps the list it made current from these instead of
    /// listing again on every release. The stream ends when the server ends the watch.
    fn watch(
        &self,
        selector: &str,
        resource_version: &str,
    ) -> impl Future<Output = Result<LeaseEvents, ApiError>> + Send;
}

/// One change a watch reports.
#[derive(Debug, Clone)]
pub enum LeaseEvent {
    /// Added or modified: the Lease as it now is.
    Put(Arc<Lease>),
    /// Deleted.
    Deleted(Arc<Lease>),
    /// Nothing changed up to this resourceVersion (a bookmark).
    Bookmark(String),
    /// The watch cannot go on from its resourceVersion (410 Gone: compacted away): list again.
    Expired,
}

pub type LeaseEvents = BoxStream<'static, Result<LeaseEvent, ApiError>>;

/// The real API, through the agent's one kube client.
#[derive(Clone)]
pub struct KubeLeases {
    api: kube::Api<Lease>,
}

impl KubeLeases {
    pub fn new(client: kube::Client, namespace: &str) -> KubeLeases {
        KubeLeases {
            api: kube::Api::namespaced(client, namespace),
        }
    }
}

/// How long one Lease call may take. kube's own read timeout (295 s, for watches) would leave a
/// waiting node stuck through an outage where requests hang instead of failing; a budget call
/// that has not answered in this time counts as a failure (three of them: the API is unavailable).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

async fn bounded<T>(
    verb: &'static str,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(r) => r.map_err(|e| ApiError::from_kube(verb, e)),
        Err(_) => Err(ApiError::Unavailable {
            verb,
            message: format!("no answer within {}s", CALL_TIMEOUT.as_secs()),
        }),
    }
}

impl LeaseApi for KubeLeases {
    async fn list(&self, selector: &str) -> Result<(Vec<Lease>, String), ApiError> {
        let params = ListParams::default().labels(selector);
        let list = bounded("list", self.api.list(&params)).await?;
        let rv = list.metadata.resource_version.unwrap_or_default();
        Ok((list.items, rv))
    }

    async fn get(&self, name: &str) -> Result<Option<Lease>, ApiError> {
        bounded("get", self.api.get_opt(name)).await
    }

    async fn create(&self, lease: &Lease) -> Result<Lease, ApiError> {
        bounded("create", self.api.create(&PostParams::default(), lease)).await
    }

    async fn replace(&self, lease: &Lease) -> Result<Lease, ApiError> {
        let name = lease.metadata.name.as_deref().unwrap_or_default();
        bounded(
            "update",
            self.api.replace(name, &PostParams::default(), lease),
        )
        .await
    }

    async fn watch(&self, selector: &str, resource_version: &str) -> Result<LeaseEvents, ApiError> {
        let params = WatchParams::default().labels(selector);
        // Bounded while it opens; once open, events may be minutes apart.
        let stream = bounded("watch", self.api.watch(&params, resource_version)).await?;
        Ok(stream
            .map(|event| {
                Ok(match event.map_err(|e| ApiError::from_kube("watch", e))? {
                    WatchEvent::Added(l) | WatchEvent::Modified(l) => LeaseEvent::Put(Arc::new(l)),
                    WatchEvent::Deleted(l) => LeaseEvent::Deleted(Arc::new(l)),
                    WatchEvent::Bookmark(b) => LeaseEvent::Bookmark(b.metadata.resource_version),
                    WatchEvent::Error(e) if e.code == 410 => LeaseEvent::Expired,
                    WatchEvent::Error(e) => {
                        return Err(ApiError::Unavailable {
                            verb: "watch",
                            message: format!("{} ({} {})", e.message, e.code, e.reason),
                        });
                    }
                })
            })
            .boxed())
    }
}

/// The Lease has no holder: a slot released (or a breaker Lease without one).
pub(super) fn released(lease: &Lease) -> bool {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .is_none_or(str::is_empty)
}
