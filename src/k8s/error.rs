//! Why a write to (or a read of) the agent's Node failed, typed so that callers match the
//! `kube::Error` (a 409 is retried on a fresh read) and the log says what an operator fixes.

use kube::core::Status;

/// Attempts of the taint removal that race another writer before giving up for this round.
pub(super) const CONFLICT_RETRIES: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// An API call failed; said as [`explain`] says it.
    #[error("{}", explain(.source, .verb, .resource))]
    Api {
        verb: &'static str,
        resource: &'static str,
        source: kube::Error,
    },
    /// The watch answered with an error event (other than 410, which restarts it).
    #[error("watch nodes: {} ({})", .0.message, .0.code)]
    Watch(Box<Status>),
    /// Every removal of the startup taint met a concurrent change of the Node.
    #[error(
        "the Node kept changing: startup taint {taint} not removed after {CONFLICT_RETRIES} conflicts"
    )]
    KeptChanging { taint: String },
}

impl NodeError {
    /// A failed `verb` on `resource`, for `map_err`.
    pub fn api(verb: &'static str, resource: &'static str) -> impl FnOnce(kube::Error) -> Self {
        move |source| NodeError::Api {
            verb,
            resource,
            source,
        }
    }

    /// The API server refused a write made on a stale resourceVersion.
    pub fn is_conflict(&self) -> bool {
        matches!(self, NodeError::Api { source: kube::Error::Api(s), .. } if s.code == 409)
    }
}

/// A failed API call, said so that an operator knows what to fix. A 403 names the verb and
/// resource the ClusterRole lacks.
pub fn explain(e: &kube::Error, verb: &str, resource: &str) -> String {
    match e {
        kube::Error::Api(s) if s.code == 403 => format!(
            "forbidden: the agent's ClusterRole lacks `{verb}` on `{resource}`; add it (see the README, section RBAC) ({})",
            s.message
        ),
        kube::Error::Api(s) => {
            format!("{verb} {resource}: {} ({} {})", s.message, s.code, s.reason)
        }
        e => format!("{verb} {resource}: {e} (is the API server reachable?)"),
    }
}
