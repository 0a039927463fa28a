//! prepuller: pre-pulls a declared list of images through the node's container runtime (CRI),
//! so that pods with `imagePullPolicy: IfNotPresent` start at once.

pub mod agent;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod credentials;
pub mod node;
pub mod puller;
pub(crate) mod queue;
pub mod reference;
pub mod report;
pub mod runtime;
