//! What the Node should show: the `ImagesPrePulled` condition computed from the agent's status
//! (a NodeReady-style condition: status, reason, message), and the pure reads of a Node the
//! condition, label and startup-taint reconciles compare against (the boot the taint was
//! removed in, the taints, labels and annotations).

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Node, NodeCondition};

use crate::status::{AgentStatus, ImageState, ImageStatus};

pub const CONDITION_TYPE: &str = "ImagesPrePulled";
/// Records the boot in which the startup taint was removed, so it is removed once per boot.
pub const BOOT_ANNOTATION: &str = "prepuller.dev/startup-taint-removed-boot-id";
pub(super) const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

pub mod reason {
    pub const PRESENT: &str = "AllRequiredImagesPresent";
    pub const PULLING: &str = "PullingImages";
    pub const FAILED: &str = "PullFailed";
    pub const RUNTIME: &str = "RuntimeUnavailable";
    /// The disk guard holds back required images (the image filesystem is full, or the
    /// kubelet's image GC keeps removing them).
    pub const DISK_PRESSURE: &str = "DiskPressure";
    /// Every registry this node still pulls from is at its fleet budget (`fleet:`).
    pub const WAITING_FOR_PULL_SLOT: &str = "WaitingForPullSlot";
}

/// This boot of the machine: the startup taint is removed at most once per boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    pub id: String,
    pub at: SystemTime,
}

impl Boot {
    /// The kernel's boot id (not namespaced: a container sees the host's) and boot time.
    pub fn current() -> std::io::Result<Boot> {
        let id = std::fs::read_to_string(BOOT_ID_PATH)?.trim().to_string();
        let uptime = std::fs::read_to_string("/proc/uptime")?;
        let secs: f64 = uptime
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0);
        let at = SystemTime::now() - Duration::from_secs_f64(secs);
        Ok(Boot { id, at })
    }
}

/// What the condition should say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Images named in a message before "and N more".
const NAMED: usize = 3;
const MAX_ERROR: usize = 200;

/// The condition for a status. Readiness of the agent itself (shutting down) does not count:
/// a restarting agent must not make the node cold.
pub fn desired(s: &AgentStatus) -> Desired {
    let (present, total) = s.required_counts();
    let counts = format!("{present}/{total} required images present");
    if !s.runtime.reachable {
        return Desired {
            status: false,
            reason: reason::RUNTIME,
            message: format!(
                "{counts}; container runtime unreachable at {}: {}",
                s.runtime.endpoint,
                s.runtime.last_error.as_deref().unwrap_or("no answer yet")
            ),
        };
    }
    let missing: Vec<_> = s
        .images
        .iter()
        .filter(|i| i.required && i.state != ImageState::Present)
        .collect();
    // Images the disk guard holds back, named with why (on a True condition: optional ones).
    let held = |images: &mut dyn Iterator<Item = &ImageStatus>| {
        let held: Vec<String> = images
            .filter_map(|i| {
                let h = i.held_back.as_ref()?;
                Some(format!("{} ({})", i.normalized, shorten(&h.message)))
            })
            .collect();
        let n = held.len();
        (
            held.into_iter().take(NAMED).collect::<Vec<_>>().join(", "),
            n,
        )
    };
    if missing.is_empty() {
        let (named, n) = held(&mut s.images.iter());
        let message = if n == 0 {
            counts
        } else {
            format!(
                "{counts}; held back by the disk guard: {named}{}",
                if n > NAMED {
                    format!(" and {} more", n - NAMED)
                } else {
                    String::new()
                }
            )
        };
        return Desired {
            status: true,
            reason: reason::PRESENT,
            message,
        };
    }
    let failing: Vec<_> = missing
        .iter()
        .filter(|i| matches!(i.state, ImageState::Failed | ImageState::BackingOff))
        .collect();
    let more = |n: usize| {
        if n > NAMED {
            format!(" and {} more", n - NAMED)
        } else {
            String::new()
        }
    };
    if !failing.is_empty() {
        let named: Vec<String> = failing
            .iter()
            .take(NAMED)
            .map(|i| match &i.last_error {
                Some(e) => format!("{} ({})", i.normalized, shorten(e)),
                None => i.normalized.clone(),
            })
            .collect();
        return Desired {
            status: false,
            reason: reason::FAILED,
            message: format!(
                "{counts}; failing: {}{}",
                named.join(", "),
                more(failing.len())
            ),
        };
    }
    let (named, n) = held(&mut missing.iter().copied());
    if n > 0 {
        return Desired {
            status: false,
            reason: reason::DISK_PRESSURE,
            message: format!("{counts}; held back by the disk guard: {named}{}", more(n)),
        };
    }
    let named: Vec<&str> = missing
        .iter()
        .take(NAMED)
        .map(|i| i.normalized.as_str())
        .collect();
    // The fleet budget: which slots this node pulls on, or which registries it waits for.
    // The text changes with the slot, not with each retry: one Node write per change.
    let mut slots = String::new();
    if let Some(fleet) = &s.fleet {
        use crate::fleet::FleetState;
        let held: Vec<String> = fleet
            .registries
            .iter()
            .filter_map(|r| Some(format!("slot {}/{} of {}", r.slot?, r.slots, r.registry)))
            .collect();
        let waiting: Vec<&str> = fleet
            .registries
            .iter()
            .filter(|r| r.state == FleetState::Waiting)
            .map(|r| r.registry.as_str())
            .collect();
        if held.is_empty() && !waiting.is_empty() {
            return Desired {
                status: false,
                reason: reason::WAITING_FOR_PULL_SLOT,
                message: format!(
                    "{counts}; waiting for a slot of the fleet pull budget for {}",
                    waiting.join(", ")
                ),
            };
        }
        if !held.is_empty() {
            slots = format!(" ({})", held.join(", "));
        }
    }
    Desired {
        status: false,
        reason: reason::PULLING,
        message: format!(
            "{counts}; pulling{slots}: {}{}",
            named.join(", "),
            more(missing.len())
        ),
    }
}

fn shorten(s: &str) -> String {
    if s.len() <= MAX_ERROR {
        return s.to_string();
    }
    let mut end = MAX_ERROR;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

pub(super) fn condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == CONDITION_TYPE)
}

pub(super) fn has_taint(node: &Node, key: &str) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == key))
}

pub(super) fn annotation<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

pub(super) fn label<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

pub(super) fn to_system_time(t: &k8s_openapi::jiff::Timestamp) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(t.as_second().max(0) as u64)
}
