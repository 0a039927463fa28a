//! The connection to the Kubernetes API, when there is one.
//!
//! prepuller works without a cluster (`prepuller pull` in a bootstrap script, the agent on a
//! plain host): only the parts that need the API (pull secrets read through it, Node status)
//! are off then.

use std::path::PathBuf;

/// Why the API could not be used although a cluster was configured.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read the Kubernetes client config ({cluster}): {source}")]
    Config {
        cluster: ClusterSource,
        source: kube::config::InferConfigError,
    },
    #[error("cannot create the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// Where a client config would come from, if anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterSource {
    /// In a pod: `KUBERNETES_SERVICE_HOST` and the service account token.
    InCluster,
    /// A kubeconfig file (`KUBECONFIG` or `~/.kube/config`).
    Kubeconfig(PathBuf),
}

impl std::fmt::Display for ClusterSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterSource::InCluster => f.write_str("in-cluster service account"),
            ClusterSource::Kubeconfig(p) => write!(f, "kubeconfig {}", p.display()),
        }
    }
}

/// The source a client would use, or `None` when nothing points at a cluster.
pub fn detect() -> Option<ClusterSource> {
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        return Some(ClusterSource::InCluster);
    }
    if let Some(paths) = std::env::var_os("KUBECONFIG") {
        return std::env::split_paths(&paths)
            .find(|p| p.is_file())
            .map(ClusterSource::Kubeconfig);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    let default = home.join(".kube").join("config");
    default
        .is_file()
        .then_some(ClusterSource::Kubeconfig(default))
}

/// A client for the detected cluster; `Ok(None)` when there is none. Called once per process
/// (by `main`): every part that talks to the API is handed this client.
pub async fn connect() -> Result<Option<(kube::Client, ClusterSource)>, ClusterError> {
    let Some(source) = detect() else {
        return Ok(None);
    };
    let config = kube::Config::infer()
        .await
        .map_err(|e| ClusterError::Config {
            cluster: source.clone(),
            source: e,
        })?;
    let client = kube::Client::try_from(config).map_err(ClusterError::Client)?;
    Ok(Some((client, source)))
}
