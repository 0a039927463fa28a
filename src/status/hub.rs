//! The [`StatusHub`]: the agent's status and event stream, written by the agent alone and read
//! by every outlet.
//!
//! Its locks are plain `std` locks taken inside synchronous methods, so none is ever held
//! across an `.await`: a slow reader cannot stall the agent, nor the agent a reader.

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{broadcast, watch};

use super::model::{
    AgentEvent, AgentEventKind, AgentStatus, ConfigStatus, RuntimeStatus, now_rfc3339,
};

/// Events kept for slow subscribers before they see a `lagged` gap.
pub(super) const EVENT_BUFFER: usize = 1024;

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
        self.inspect(AgentStatus::clone)
    }

    /// Reads the status in place, for a reader that needs a little of a large status (a count,
    /// one part) without cloning it all. `f` runs under the read lock: keep it short.
    pub fn inspect<T>(&self, f: impl FnOnce(&AgentStatus) -> T) -> T {
        f(&self.status.read().unwrap_or_else(|e| e.into_inner()))
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
        self.inspect(|s| s.runtime.clone())
    }

    pub fn is_ready(&self) -> bool {
        self.inspect(|s| s.ready)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::ImageState;
    use crate::status::test_image as image;

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
