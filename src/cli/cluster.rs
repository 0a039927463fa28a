//! The process's one Kubernetes client: the subcommand connects once
//! ([`crate::k8s::connect`]) and hands the client to what reads the API.

use std::sync::Arc;

use crate::credentials::SecretReader;
use crate::k8s::{ClusterError, ClusterSource};

/// What [`crate::k8s::connect`] found.
pub type Connected = Result<Option<(kube::Client, ClusterSource)>, ClusterError>;

/// The client for Node reporting; says once why reporting is off when there is none.
pub fn node_client(connected: Option<Connected>) -> Option<kube::Client> {
    match connected? {
        Ok(Some((client, source))) => {
            tracing::info!(cluster = %source, "using the Kubernetes API");
            Some(client)
        }
        Ok(None) => {
            crate::k8s::off_without_cluster(None);
            None
        }
        Err(e) => {
            crate::k8s::off_without_cluster(Some(&e));
            None
        }
    }
}

/// `secret:` credentials read through the process's client; says why they cannot be.
pub fn secret_reader(connected: &Connected) -> Option<Arc<dyn SecretReader>> {
    match connected {
        Ok(Some((client, source))) => {
            tracing::debug!(%source, "Kubernetes API available for `secret:` credentials");
            Some(crate::credentials::secret_reader(client.clone()))
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!("`secret:` credentials cannot be read: {e}");
            None
        }
    }
}
