//! The link between the agent loop and the node reporter: the Node's labels go to the agent
//! (to select image sets), the config's node settings come back (hot-reloaded). The agent never
//! talks to the API itself.

use tokio::sync::watch;

use crate::config::Labels;
use crate::config::NodeSettings;

/// The agent's side of the link: the Node's labels in, the node settings out.
pub struct AgentLink {
    /// `None` until the Node has been read.
    pub labels: watch::Receiver<Option<Labels>>,
    pub settings: watch::Sender<NodeSettings>,
}

/// The reporter's side of the link.
pub struct ReporterLink {
    pub(super) labels: watch::Sender<Option<Labels>>,
    pub(super) settings: watch::Receiver<NodeSettings>,
}

pub fn link(settings: NodeSettings) -> (AgentLink, ReporterLink) {
    let (labels_tx, labels_rx) = watch::channel(None);
    let (settings_tx, settings_rx) = watch::channel(settings);
    (
        AgentLink {
            labels: labels_rx,
            settings: settings_tx,
        },
        ReporterLink {
            labels: labels_tx,
            settings: settings_rx,
        },
    )
}
