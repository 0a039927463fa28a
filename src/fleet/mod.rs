//! The cluster-wide pull budget (`fleet:`): at most N nodes pull from one registry at a time,
//! coordinated through `coordination.k8s.io/v1` Leases in the agent's namespace (no controller,
//! no extra server), and a rate-limit breaker all nodes share.
//!
//! - `lease`: the few Lease calls this needs (`LeaseApi`), over kube's client, with errors
//!   classified (conflict, forbidden, unavailable).
//! - `slots`: the `Coordinator`: acquire a slot (`prepuller-<registry-hash>-<i>`), renew it
//!   while pulling, release it; wait on a watch of the registry's Leases, keeping the list
//!   current from its events.
//! - `gate`: `FleetGate`, what the puller asks (`FleetBudget`): may a pull start now; slots
//!   acquired in the background and released when nothing is left to pull from the registry.
//! - `breaker`: `backoffUntil` on a per-registry Lease after a 429.
//! - `fake` (tests and benches only): a stateful Lease API in memory, and the fleet simulation.

mod breaker;
#[cfg(any(test, feature = "test-util"))]
pub mod fake;
mod gate;
mod lease;
mod slots;

#[cfg(test)]
mod kube_tests;
#[cfg(test)]
mod tests;

pub use breaker::{BREAKER_FIRST, BREAKER_MAX};
pub use gate::{FleetAdmit, FleetBudget, FleetGate, FleetRegistry, FleetState};
pub use lease::{ApiError, KubeLeases, LeaseApi, LeaseEvent, LeaseEvents};
pub use slots::{Clock, Coordinator, Grant, Slot};

/// Every Lease prepuller makes carries it, so that one label selector finds them.
pub const FLEET_LABEL: &str = "prepuller.dev/fleet";
/// Which registry a Lease is for (the hash in its name; the host is in an annotation).
pub const REGISTRY_LABEL: &str = "prepuller.dev/registry";
/// The registry host in full, for people reading the Leases.
pub const REGISTRY_ANNOTATION: &str = "prepuller.dev/registry-host";
/// On the breaker Lease: until when (RFC 3339) no node pulls from the registry.
pub const BACKOFF_UNTIL_ANNOTATION: &str = "prepuller.dev/backoff-until";
/// On the breaker Lease: the last window's length in seconds, doubled by the next 429.
pub const BACKOFF_STEP_ANNOTATION: &str = "prepuller.dev/backoff-seconds";

/// FNV-1a, 64 bits: stable across Rust versions and platforms (std's hasher is not), so every
/// node computes the same Lease names.
pub(crate) fn fnv64(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The label value and name stem for `registry`: a DNS label, whatever the host's port or length.
pub fn registry_key(registry: &str) -> String {
    format!("{:016x}", fnv64(&[registry]))
}

/// The name of slot `index` of `registry`.
pub fn slot_name(registry: &str, index: u32) -> String {
    format!("prepuller-{}-{index}", registry_key(registry))
}

/// The name of `registry`'s breaker Lease.
pub fn breaker_name(registry: &str) -> String {
    format!("prepuller-{}-breaker", registry_key(registry))
}

/// The label selector of `registry`'s Leases (slots and breaker).
pub fn registry_selector(registry: &str) -> String {
    format!(
        "{FLEET_LABEL}=slot,{REGISTRY_LABEL}={}",
        registry_key(registry)
    )
}
