//! What the agent tells the world: the status model, the hub that holds it, and its
//! outlets (HTTP probes, status and metrics in `http`/`metrics`, the node-local gRPC API in
//! `grpc`).
//!
//! The agent writes through [`StatusHub`]; every outlet reads snapshots from it or
//! subscribes to its events, so no outlet ever talks to the runtime itself.

pub mod grpc;
pub mod http;
pub mod metrics;

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::{broadcast, watch};

/// Events kept for slow subscribers before they see a `lagged` gap.
const EVENT_BUFFER: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ImageState {
    Present,
    Pulling,
    Waiting,
    BackingOff,
    Failed,
}

impl ImageState {
    pub const ALL: [ImageState; 5] = [
        ImageState::Present,
        ImageState::Pulling,
        ImageState::Waiting,
        ImageState::BackingOff,
        ImageState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ImageState::Present => "Present",
            ImageState::Pulling => "Pulling",
            ImageState::Waiting => "Waiting",
            ImageState::BackingOff => "BackingOff",
            ImageState::Failed => "Failed",
        }
    }
}

/// One declared image, as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageStatus {
    /// As declared in the config.
    pub image: String,
    pub normalized: String,
    pub required: bool,
    pub policy: String,
    pub state: ImageState,
    pub image_id: Option<String>,
    pub repo_digest: Option<String>,
    pub size_bytes: Option<u64>,
    /// Attempts since the image was last present (or since the agent started).
    pub attempts: u32,
    pub last_error: Option<String>,
    /// `permanent` or `transient`.
    pub last_error_class: Option<String>,
    /// RFC 3339.
    pub next_retry_at: Option<String>,
    pub last_pull_seconds: Option<f64>,
    /// RFC 3339: when the agent first saw the image present.
    pub present_since: Option<String>,
    /// The last tag drift seen: "tag drift: sha256:… → sha256:…".
    pub drift: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigStatus {
    /// File or directory the config is read from.
    pub source: String,
    /// Increases by one on every applied (valid) config.
    pub generation: u64,
    /// RFC 3339 time of the last applied config.
    pub applied_at: Option<String>,
    /// The last rejected config's error (file:line:column: field: message); cleared when a
    /// later config is applied.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeStatus {
    pub endpoint: String,
    pub name: Option<String>,
    pub version: Option<String>,
    pub api_version: Option<String>,
    pub reachable: bool,
    pub last_error: Option<String>,
    /// When a runtime that had answered stopped answering; `None` while reachable or before it
    /// ever answered. Not in the JSON: `/livez` reads it.
    #[serde(skip)]
    pub lost_at: Option<SystemTime>,
}

/// The whole agent, as `/status` and `GetStatus` show it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// Every required image of the current config is present, and the agent is not stopping.
    pub ready: bool,
    pub node: Option<String>,
    pub config: ConfigStatus,
    pub runtime: RuntimeStatus,
    pub images: Vec<ImageStatus>,
    pub shutting_down: bool,
}

impl AgentStatus {
    /// Required images that are not present, by normalized reference.
    pub fn missing_required(&self) -> Vec<&str> {
        self.images
            .iter()
            .filter(|i| i.required && i.state != ImageState::Present)
            .map(|i| i.normalized.as_str())
            .collect()
    }

    pub fn required_counts(&self) -> (usize, usize) {
        let total = self.images.iter().filter(|i| i.required).count();
        (total - self.missing_required().len(), total)
    }

    fn recompute_ready(&mut self) {
        self.ready = !self.shutting_down
            && self.runtime.reachable
            && self.config.generation > 0
            // No list built: this runs on every status update (each pull event).
            && !self
                .images
                .iter()
                .any(|i| i.required && i.state != ImageState::Present);
    }
}

/// Something that happened to an image or to the agent, for `WatchEvents` and logs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum AgentEventKind {
    Queued {
        image: String,
    },
    PullStarted {
        image: String,
        attempt: u32,
    },
    AttemptFailed {
        image: String,
        attempt: u32,
        /// `permanent` or `transient`.
        class: String,
        reason: String,
        error: String,
        /// RFC 3339; absent for permanent failures.
        next_retry_at: Option<String>,
    },
    Present {
        image: String,
        size_bytes: u64,
        /// Set when this event ends a pull.
        pull_seconds: Option<f64>,
    },
    Drift {
        image: String,
        from: String,
        to: String,
    },
    ConfigReloaded {
        generation: u64,
        source: String,
    },
    ConfigRejected {
        error: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentEvent {
    /// RFC 3339.
    pub time: String,
    #[serde(flatten)]
    pub kind: AgentEventKind,
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// The agent's status and event stream, shared by the agent (writer) and every outlet.
pub struct StatusHub {
    status: RwLock<AgentStatus>,
    events: broadcast::Sender<AgentEvent>,
    /// Bumped on every update, so an outlet can wait for a change instead of polling.
    changes: watch::Sender<u64>,
    /// The agent has compared the config with the runtime at least once: before that, the
    /// images' states are guesses, and the Node must not be told it is cold.
    synced: AtomicBool,
}

impl StatusHub {
    pub fn new(node: Option<String>, config_source: String, runtime_endpoint: String) -> Self {
        let status = AgentStatus {
            node,
            config: ConfigStatus {
                source: config_source,
                ..Default::default()
            },
            runtime: RuntimeStatus {
                endpoint: runtime_endpoint,
                ..Default::default()
            },
            ..Default::default()
        };
        StatusHub {
            status: RwLock::new(status),
            events: broadcast::channel(EVENT_BUFFER).0,
            changes: watch::channel(0).0,
            synced: AtomicBool::new(false),
        }
    }

    pub fn snapshot(&self) -> AgentStatus {
        self.status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes the status; `ready` is recomputed afterwards, so writers never set it.
    pub fn update<T>(&self, f: impl FnOnce(&mut AgentStatus) -> T) -> T {
        let mut s = self.status.write().unwrap_or_else(|e| e.into_inner());
        let out = f(&mut s);
        s.recompute_ready();
        drop(s);
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
        out
    }

    /// Changes whenever the status may have changed (coalesced: a slow reader sees the latest).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Called by the agent after each resync, whether or not the runtime answered.
    pub fn mark_synced(&self) {
        if !self.synced.swap(true, Ordering::Relaxed) {
            self.changes.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// The runtime part only: cheaper than a whole snapshot with thousands of images.
    pub fn snapshot_runtime(&self) -> RuntimeStatus {
        self.status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .runtime
            .clone()
    }

    pub fn is_ready(&self) -> bool {
        self.status.read().unwrap_or_else(|e| e.into_inner()).ready
    }

    /// Publishes an event now; nobody listening is fine.
    pub fn emit(&self, kind: AgentEventKind) {
        let _ = self.events.send(AgentEvent {
            time: now_rfc3339(),
            kind,
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<AgentEvent> {
        self.events.subscribe()
    }

    /// From now on `/readyz` answers 503: the agent is stopping.
    pub fn begin_shutdown(&self) {
        self.update(|s| s.shutting_down = true);
    }
}

/// An image status with only what tests vary; shared by the outlets' tests.
#[cfg(test)]
pub(crate) fn test_image(name: &str, required: bool, state: ImageState) -> ImageStatus {
    ImageStatus {
        image: name.into(),
        normalized: name.into(),
        required,
        policy: "IfNotPresent".into(),
        state,
        image_id: None,
        repo_digest: None,
        size_bytes: None,
        attempts: 0,
        last_error: None,
        last_error_class: None,
        next_retry_at: None,
        last_pull_seconds: None,
        present_since: None,
        drift: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_image as image;

    #[test]
    fn ready_needs_every_required_image_a_config_and_a_runtime() {
        let hub = StatusHub::new(None, "c.yaml".into(), "unix:///x".into());
        assert!(!hub.is_ready(), "no config applied yet");
        hub.update(|s| {
            s.config.generation = 1;
            s.runtime.reachable = true;
            s.images = vec![
                image("a", true, ImageState::Present),
                image("b", true, ImageState::Pulling),
                image("c", false, ImageState::Failed),
            ];
        });
        assert!(!hub.is_ready());
        assert_eq!(hub.snapshot().missing_required(), vec!["b"]);
        hub.update(|s| s.images[1].state = ImageState::Present);
        assert!(hub.is_ready(), "optional failures do not block readiness");
        hub.update(|s| s.runtime.reachable = false);
        assert!(!hub.is_ready());
        hub.update(|s| s.runtime.reachable = true);
        hub.begin_shutdown();
        assert!(!hub.is_ready());
    }

    #[test]
    fn events_reach_subscribers() {
        let hub = StatusHub::new(None, "c.yaml".into(), "unix:///x".into());
        let mut rx = hub.subscribe();
        hub.emit(AgentEventKind::Queued { image: "a".into() });
        let e = rx.try_recv().unwrap();
        assert_eq!(e.kind, AgentEventKind::Queued { image: "a".into() });
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["kind"], "queued");
        assert_eq!(json["image"], "a");
    }
}
