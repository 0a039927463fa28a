//! Kubernetes: the one client of the process, and per-node readiness (what the agent writes on
//! its own Node).
//!
//! `main` calls [`connect`] once and hands the client to whatever talks to the API. The
//! [`Reporter`] reads the [`StatusHub`](crate::status::StatusHub) (snapshots when it changes,
//! and its events) and the agent's own Node (a GET, then a watch with a `metadata.name` field
//! selector), and writes only what differs:
//!
//! - the `ImagesPrePulled` condition, through `nodes/status` with a strategic-merge patch
//!   keyed by condition type (other writers' conditions are untouched, as node-problem-detector
//!   does), refreshed by a heartbeat at most every [`HEARTBEAT`];
//! - a label (default `prepuller.dev/ready=true|false`), with a merge patch of that key only;
//! - the removal of the startup taint once the node is warm or after `taintTimeout`, with the
//!   Node's resourceVersion in the patch so a concurrent change to the taints is answered with
//!   409 and retried on a fresh read; at most once per boot (the boot id is recorded in an
//!   annotation in the same patch); never added;
//! - Events ([`events`]).
//!
//! The agent loop never talks to the API: it only hands its config's settings over and
//! receives the Node's labels (to select image sets) through [`AgentLink`].
//!
//! - `client`: finding the cluster and building the client;
//! - `reporter`: the loop, and the condition, label and taint writes;
//! - `condition`: what the condition should say, and the reads of a Node they compare with;
//! - `own_node`: the watch of the agent's own Node;
//! - `link`: what the agent loop and the reporter hand each other;
//! - [`events`]: Node Events, aggregated and rate-limited;
//! - `error`: why a Node write failed.

mod client;
mod condition;
mod error;
pub mod events;
mod link;
mod own_node;
mod reporter;

pub use client::{ClusterError, ClusterSource, connect, detect};
pub use condition::{BOOT_ANNOTATION, Boot, CONDITION_TYPE, Desired, desired, reason};
pub use error::{NodeError, explain};
pub use link::{AgentLink, ReporterLink, link};
pub use reporter::{HEARTBEAT, Reporter, off_without_cluster, setup};
