//! What the agent tells the world: the status model, the hub that holds it, and its
//! outlets (HTTP probes, status and metrics in `http`/`metrics`, the node-local gRPC API in
//! `grpc`).
//!
//! The agent writes through [`StatusHub`]; every outlet reads snapshots from it or
//! subscribes to its events, so no outlet ever talks to the runtime itself.

pub mod grpc;
pub mod http;
mod hub;
pub mod metrics;
mod model;

pub use hub::StatusHub;
pub use model::{
    AgentEvent, AgentEventKind, AgentStatus, ConfigStatus, DiskStatus, ErrorClass, FleetStatus,
    HeldBack, HoldReason, ImageState, ImageStatus, RuntimeStatus, now_rfc3339, rfc3339,
};
#[cfg(test)]
pub(crate) use model::{test_full_image, test_image, test_runtime};
