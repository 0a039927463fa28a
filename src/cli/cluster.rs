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

/// The fleet pull budget, when `fleet:` is set and there is a cluster and a node name to hold
/// slots as; says why not otherwise. `fleet:` changes apply at the next start.
pub fn fleet_budget(
    settings: Option<crate::config::FleetSettings>,
    client: Option<kube::Client>,
    namespace: Option<String>,
    node_name: Option<&str>,
    cancel: tokio_util::sync::CancellationToken,
) -> Option<Arc<dyn crate::fleet::FleetBudget>> {
    use crate::fleet::{Clock, Coordinator, FleetGate, KubeLeases};
    let settings = settings?;
    let (Some(client), Some(node)) = (client, node_name) else {
        tracing::warn!(
            "fleet: is set, but without a Kubernetes API and a node name (NODE_NAME) there is no fleet to coordinate with; pulling on this node's own budget"
        );
        return None;
    };
    let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_string());
    tracing::info!(
        namespace,
        "fleet pull budget: pull slots are Leases in this namespace"
    );
    let api = KubeLeases::new(client, &namespace);
    let coordinator = Coordinator::new(api, node, settings, Clock::new(), cancel);
    Some(Arc::new(FleetGate::new(Arc::new(coordinator))))
}
