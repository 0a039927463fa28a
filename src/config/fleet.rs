//! `fleet:` in the config: how many nodes of the cluster may pull from one registry at the same
//! time (pull slots on Kubernetes Leases, see `crate::fleet`). Absent: every node pulls on its own.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::duration;

/// A Lease's duration unless `leaseDuration` says otherwise: client-go leader election's 15 s
/// is for failover; a pull slot only needs to come back within a minute of a dead holder.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(60);
/// More Leases per registry than any registry needs; bounds the objects one typo can create.
pub const MAX_CONCURRENT_NODES: u32 = 1000;

/// What a node does when the API (or its RBAC for Leases) is not there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OnUnavailable {
    /// Pull uncoordinated: a broken control plane must not strand new nodes.
    #[default]
    Proceed,
    /// Pull nothing until the API answers.
    Wait,
}

/// The effective settings (defaults filled in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSettings {
    /// Nodes pulling at once from a registry not named in `registries`.
    pub max_concurrent_nodes: u32,
    /// Per registry host (`host[:port]`, as in image references).
    pub registries: BTreeMap<String, u32>,
    pub on_unavailable: OnUnavailable,
    pub lease_duration: Duration,
}

impl FleetSettings {
    /// The number of slots for `registry` (a reference's domain).
    pub fn slots_for(&self, registry: &str) -> u32 {
        self.registries
            .get(registry)
            .copied()
            .unwrap_or(self.max_concurrent_nodes)
    }
}

/// What is wrong with `fleet:`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetError {
    #[error("maxConcurrentNodes must be from 1 to {MAX_CONCURRENT_NODES}, not {0}")]
    Slots(u32),
    #[error(
        "registries.{registry:?}.maxConcurrentNodes must be from 1 to {MAX_CONCURRENT_NODES}, not {value}"
    )]
    RegistrySlots { registry: String, value: u32 },
    #[error(
        "registries: {0:?} is not a registry host; write the host (and port) as in an image reference, e.g. registry.example.com or docker.io"
    )]
    Host(String),
    #[error("leaseDuration must be from 10s to 1h, not {0}")]
    LeaseDuration(String),
}

/// As written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", try_from = "RawFields")]
pub(super) struct RawFleet {
    fields: RawFields,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFields {
    max_concurrent_nodes: Option<u32>,
    #[serde(default)]
    registries: BTreeMap<String, RawRegistry>,
    on_unavailable: Option<OnUnavailable>,
    #[serde(default, deserialize_with = "duration::option")]
    lease_duration: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRegistry {
    max_concurrent_nodes: u32,
}

impl TryFrom<RawFields> for RawFleet {
    type Error = FleetError;
    fn try_from(fields: RawFields) -> Result<Self, FleetError> {
        let raw = RawFleet { fields };
        raw.settings()?;
        Ok(raw)
    }
}

/// `host[:port]` as a reference's domain is: lower-case letters, digits, `.`, `-`, one `:port`.
fn is_host(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && port.is_none_or(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

impl RawFleet {
    fn settings(&self) -> Result<FleetSettings, FleetError> {
        let f = &self.fields;
        let in_range = |n: u32| (1..=MAX_CONCURRENT_NODES).contains(&n);
        // Without a default every registry not listed gets one slot: the safe reading.
        let max_concurrent_nodes = f.max_concurrent_nodes.unwrap_or(1);
        if !in_range(max_concurrent_nodes) {
            return Err(FleetError::Slots(max_concurrent_nodes));
        }
        let mut registries = BTreeMap::new();
        for (host, r) in &f.registries {
            if !is_host(host) {
                return Err(FleetError::Host(host.clone()));
            }
            if !in_range(r.max_concurrent_nodes) {
                return Err(FleetError::RegistrySlots {
                    registry: host.clone(),
                    value: r.max_concurrent_nodes,
                });
            }
            registries.insert(host.clone(), r.max_concurrent_nodes);
        }
        let lease_duration = f.lease_duration.unwrap_or(DEFAULT_LEASE_DURATION);
        if !(Duration::from_secs(10)..=Duration::from_secs(3600)).contains(&lease_duration) {
            return Err(FleetError::LeaseDuration(
                humantime::format_duration(lease_duration).to_string(),
            ));
        }
        Ok(FleetSettings {
            max_concurrent_nodes,
            registries,
            on_unavailable: f.on_unavailable.unwrap_or_default(),
            lease_duration,
        })
    }

    pub fn effective(raw: Option<&RawFleet>) -> Option<FleetSettings> {
        raw.and_then(|r| r.settings().ok())
    }
}
