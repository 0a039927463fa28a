//! prepuller: pre-pulls a declared list of images through the node's container runtime (CRI),
//! so that pods with `imagePullPolicy: IfNotPresent` start at once.

pub mod agent;
#[cfg(any(test, feature = "test-util"))]
pub mod apirules;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod fleet;
#[cfg(feature = "test-util")]
pub mod fuzzing;
pub mod k8s;
pub mod manifests;
pub mod puller;
pub mod reference;
pub mod runtime;
pub mod status;
