//! The process's one Kubernetes client: the subcommand connects once
//! ([`crate::cluster::connect`]) and hands the client to what reads the API.

use std::sync::Arc;

use crate::cluster::{ClusterError, ClusterSource};
use crate::credentials::SecretReader;

/// What [`crate::cluster::connect`] found.
pub type Connected = Result<Option<(kube::Client, ClusterSource)>, ClusterError>;

/// The client, when there is one (why not was logged by whoever needed it).
pub fn client(connected: Option<Connected>) -> Option<kube::Client> {
    connected?.ok().flatten().map(|(client, _)| client)
}

/// `secret:` credentials read through the process's client; says why they cannot be.
pub fn secret_reader(connected: &Connected) -> Option<Arc<dyn SecretReader>> {
    match connected {
        Ok(Some((client, source))) => {
            tracing::debug!(%source, "Kubernetes API available for `secret:` credentials");
            Some(Arc::new(client.clone()))
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!("`secret:` credentials cannot be read: {e}");
            None
        }
    }
}
