//! The Lease calls the coordinator makes, behind a trait so that the tests run it on a stateful
//! fake with paused time.

use std::future::Future;
use std::sync::Arc;

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

impl LeaseApi for KubeLeases {
    async fn list(&self, selector: &str) -> Result<(Vec<Lease>, String), ApiError> {
        let list = self
            .api
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(|e| ApiError::from_kube("list", e))?;
        let rv = list.metadata.resource_version.unwrap_or_default();
        Ok((list.items, rv))
    }

    async fn get(&self, name: &str) -> Result<Option<Lease>, ApiError> {
        self.api
            .get_opt(name)
            .await
            .map_err(|e| ApiError::from_kube("get", e))
    }

    async fn create(&self, lease: &Lease) -> Result<Lease, ApiError> {
        self.api
            .create(&PostParams::default(), lease)
            .await
            .map_err(|e| ApiError::from_kube("create", e))
    }

    async fn replace(&self, lease: &Lease) -> Result<Lease, ApiError> {
        let name = lease.metadata.name.as_deref().unwrap_or_default();
        self.api
            .replace(name, &PostParams::default(), lease)
            .await
            .map_err(|e| ApiError::from_kube("update", e))
    }

    async fn watch(&self, selector: &str, resource_version: &str) -> Result<LeaseEvents, ApiError> {
        let params = WatchParams::default().labels(selector);
        let stream = self
            .api
            .watch(&params, resource_version)
            .await
            .map_err(|e| ApiError::from_kube("watch", e))?;
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
