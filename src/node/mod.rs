//! Per-node readiness in Kubernetes: what the agent writes on its own Node.

pub mod selector;
pub mod settings;
