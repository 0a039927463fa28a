//! prepuller: pre-pulls a declared list of images through the node's container runtime (CRI),
//! so that pods with `imagePullPolicy: IfNotPresent` start at once.

pub mod agent;
pub mod cluster;
pub mod config;
pub mod credentials;
pub mod node;
pub mod nodes_cmd;
pub mod progress;
pub mod pull;
pub mod puller;
pub mod reference;
pub mod report;
pub mod runtime;
pub mod status_cmd;
