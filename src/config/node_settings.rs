//! `nodeReadiness:` in the config: what the agent writes on its own Node.

use std::time::Duration;

use serde::Deserialize;

use super::duration;
use super::node_selector::{NameError, qualified_name};

pub const DEFAULT_LABEL: &str = "prepuller.dev/ready";
/// Cluster Autoscaler treats taints with the `startup-taint.cluster-autoscaler.kubernetes.io/`
/// prefix as startup taints: it simulates the node without them while scaling up.
pub const DEFAULT_STARTUP_TAINT: &str = "startup-taint.cluster-autoscaler.kubernetes.io/prepuller";
pub const DEFAULT_TAINT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The effective settings (defaults filled in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSettings {
    /// The label set to `true`/`false`; `None`: no label.
    pub label: Option<String>,
    /// The key of the startup taint to remove when warm; `None`: taints are left alone.
    pub startup_taint: Option<String>,
    /// After this long since the Node was created, the taint is removed even when not warm.
    pub taint_timeout: Duration,
    /// Events on the Node for failed pulls, drift and warm-up.
    pub events: bool,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            label: Some(DEFAULT_LABEL.into()),
            startup_taint: Some(DEFAULT_STARTUP_TAINT.into()),
            taint_timeout: DEFAULT_TAINT_TIMEOUT,
            events: true,
        }
    }
}

/// What is wrong with `nodeReadiness:`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeSettingsError {
    /// `field` is `label` or `startupTaint`.
    #[error("{field} {key:?}: {source}")]
    Key {
        field: &'static str,
        key: String,
        source: NameError,
    },
    #[error("taintTimeout must be longer than 0s")]
    ZeroTaintTimeout,
}

/// As written; an empty string turns the label or the taint removal off.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", try_from = "RawFields")]
pub(super) struct RawNodeSettings {
    label: Option<String>,
    startup_taint: Option<String>,
    taint_timeout: Option<Duration>,
    events: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFields {
    label: Option<String>,
    startup_taint: Option<String>,
    #[serde(default, deserialize_with = "duration::option")]
    taint_timeout: Option<Duration>,
    events: Option<bool>,
}

impl TryFrom<RawFields> for RawNodeSettings {
    type Error = NodeSettingsError;
    fn try_from(r: RawFields) -> Result<Self, NodeSettingsError> {
        for (field, key) in [("label", &r.label), ("startupTaint", &r.startup_taint)] {
            if let Some(key) = key.as_deref().filter(|k| !k.is_empty()) {
                qualified_name(key).map_err(|source| NodeSettingsError::Key {
                    field,
                    key: key.to_string(),
                    source,
                })?;
            }
        }
        if r.taint_timeout.is_some_and(|t| t.is_zero()) {
            return Err(NodeSettingsError::ZeroTaintTimeout);
        }
        Ok(RawNodeSettings {
            label: r.label,
            startup_taint: r.startup_taint,
            taint_timeout: r.taint_timeout,
            events: r.events,
        })
    }
}

impl RawNodeSettings {
    pub fn effective(raw: Option<&RawNodeSettings>) -> NodeSettings {
        let d = NodeSettings::default();
        let Some(raw) = raw else { return d };
        let key = |v: &Option<String>, default: Option<String>| match v.as_deref() {
            None => default,
            Some("") => None,
            Some(k) => Some(k.to_string()),
        };
        NodeSettings {
            label: key(&raw.label, d.label),
            startup_taint: key(&raw.startup_taint, d.startup_taint),
            taint_timeout: raw.taint_timeout.unwrap_or(d.taint_timeout),
            events: raw.events.unwrap_or(d.events),
        }
    }
}
