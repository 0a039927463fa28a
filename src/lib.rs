//! prepuller: pre-pulls a declared list of images through the node's container runtime (CRI),
//! so that pods with `imagePullPolicy: IfNotPresent` start at once.

pub mod agent;
pub mod config;
pub mod credentials;
pub mod k8s;
/// The node selector and node-readiness settings of the config (their place until they join
/// `config`).
pub mod nodes_cmd;
pub mod progress;
pub mod pull;
pub mod puller;
pub(crate) mod queue;
pub mod reference;
pub mod runtime;
pub mod status;
pub mod status_cmd;
