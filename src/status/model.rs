//! The status model: what `/status`, `GetStatus` and `WatchEvents` show. Plain data, written
//! by the agent through the [`StatusHub`](super::StatusHub); the JSON field names are the
//! documented API.

use std::fmt;
use std::time::SystemTime;

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use serde::Serialize;

use crate::config::PullPolicy;

/// Where a declared image stands. The variant names are the JSON values and the
/// `prepuller_images{state}` label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, EncodeLabelValue)]
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

/// Whether a failed pull is retried: the class of its error kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// Retrying soon gives the same answer: the image waits for a config change or a refresh.
    Permanent,
    /// Retried with back-off.
    Transient,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 2] = [ErrorClass::Permanent, ErrorClass::Transient];

    /// The class of an error kind, from its `is_permanent()`.
    pub fn from_permanent(permanent: bool) -> Self {
        if permanent {
            ErrorClass::Permanent
        } else {
            ErrorClass::Transient
        }
    }

    /// The name in JSON, gRPC messages, logs and the `class` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Permanent => "permanent",
            ErrorClass::Transient => "transient",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The derive would write the variant name; the label value is the lowercase one.
impl EncodeLabelValue for ErrorClass {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        self.as_str().encode(encoder)
    }
}

/// One declared image, as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageStatus {
    /// As declared in the config.
    pub image: String,
    /// The reference pulled and kept present (after any `imageRegistry`).
    pub normalized: String,
    /// The `imageRegistry` that moved the image from `image` to `normalized`; absent when it
    /// is pulled as declared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_registry: Option<String>,
    pub required: bool,
    pub policy: PullPolicy,
    pub state: ImageState,
    pub image_id: Option<String>,
    pub repo_digest: Option<String>,
    pub size_bytes: Option<u64>,
    /// Attempts since the image was last present (or since the agent started).
    pub attempts: u32,
    pub last_error: Option<String>,
    pub last_error_class: Option<ErrorClass>,
    /// RFC 3339.
    pub next_retry_at: Option<String>,
    pub last_pull_seconds: Option<f64>,
    /// RFC 3339: when the agent first saw the image present.
    pub present_since: Option<String>,
    /// The last tag drift seen: "tag drift: sha256:… → sha256:…".
    pub drift: Option<String>,
    /// While a pull runs on containerd: bytes fetched so far by this attempt.
    pub bytes_done: Option<u64>,
    /// While a pull runs on containerd: the bytes it has to fetch, once its manifest is known.
    pub bytes_total: Option<u64>,
    /// While a pull runs on containerd: bytes per second over the last few seconds.
    pub bytes_per_second: Option<u64>,
    /// Not pulled now, by the disk guard: why.
    pub held_back: Option<HeldBack>,
}

/// Why the disk guard holds an image back. The variant names are the JSON values; the
/// `prepuller_images_held_back{reason}` label values are [`HoldReason::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HoldReason {
    /// The pull would take the image filesystem above the pull limit.
    DiskThreshold,
    /// The kubelet's GC removed the image twice within an hour of its pull.
    GcThrash,
}

impl HoldReason {
    pub const ALL: [HoldReason; 2] = [HoldReason::DiskThreshold, HoldReason::GcThrash];

    pub fn as_str(self) -> &'static str {
        match self {
            HoldReason::DiskThreshold => "disk_threshold",
            HoldReason::GcThrash => "gc_thrash",
        }
    }

    fn parse(s: &str) -> Option<HoldReason> {
        HoldReason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl EncodeLabelValue for HoldReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        self.as_str().encode(encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeldBack {
    pub reason: HoldReason,
    /// Which threshold, the usage and the image's size, or the disappearances.
    pub message: String,
}

impl HeldBack {
    /// From the label value and message (the gRPC client's side).
    pub fn from_parts(reason: &str, message: String) -> Option<HeldBack> {
        Some(HeldBack {
            reason: HoldReason::parse(reason)?,
            message,
        })
    }
}

/// The image filesystem as the disk guard last saw it (before pulls, and while images are held
/// back): the node-level summary of `/status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskStatus {
    /// As the runtime reports it (a host path).
    pub mountpoint: Option<String>,
    /// Bytes the runtime's images take (CRI `ImageFsInfo`).
    pub image_bytes: Option<u64>,
    /// Size of the filesystem (statvfs); `None` when the agent cannot see it.
    pub capacity_bytes: Option<u64>,
    /// Used share of the filesystem, as the kubelet's image GC computes it.
    pub usage_percent: Option<f64>,
    /// Pulls stop before this (`highThresholdPercent - marginPercent`).
    pub pull_limit_percent: u8,
    /// Images held back for GC thrash are pulled again below this.
    pub low_threshold_percent: u8,
    /// Normalized references of the images held back now.
    pub held_back: Vec<String>,
    /// Why the capacity is not known (only the thrash guard works then).
    pub capacity_unknown: Option<String>,
    /// RFC 3339.
    pub checked_at: Option<String>,
}

impl ImageStatus {
    /// A declared image the agent has not seen yet: Waiting, nothing known about it.
    pub fn new(image: String, normalized: String, required: bool, policy: PullPolicy) -> Self {
        ImageStatus {
            image,
            normalized,
            image_registry: None,
            required,
            policy,
            state: ImageState::Waiting,
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
            held_back: None,
            bytes_done: None,
            bytes_total: None,
            bytes_per_second: None,
        }
    }
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
    /// The disk guard's view of the image filesystem; `None` before its first check.
    pub disk: Option<DiskStatus>,
    /// The cluster-wide pull budget as this node stands with it; absent when `fleet:` is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetStatus>,
}

/// This node's slots of the fleet pull budget: per registry it has pulls for, holding a slot,
/// waiting for one, or pulling uncoordinated (the API is unavailable).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetStatus {
    pub registries: Vec<crate::fleet::FleetRegistry>,
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

    /// Run by the hub after every update: writers never set `ready` themselves.
    pub(super) fn recompute_ready(&mut self) {
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
    /// A pull in flight on containerd, every few seconds (see `puller::progress`).
    PullProgress {
        image: String,
        bytes_done: u64,
        bytes_total: Option<u64>,
        bytes_per_second: Option<u64>,
    },
    AttemptFailed {
        image: String,
        attempt: u32,
        class: ErrorClass,
        /// The error kind's stable name (`not_found`, `rate_limited` …). A string rather than
        /// the kind: a client shows what a newer agent sends, names it does not know included.
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

/// An image status with only what tests vary; shared by the outlets' tests.
#[cfg(test)]
pub(crate) fn test_image(name: &str, required: bool, state: ImageState) -> ImageStatus {
    ImageStatus {
        state,
        ..ImageStatus::new(name.into(), name.into(), required, PullPolicy::IfNotPresent)
    }
}

/// A reachable containerd's status; shared by the outlets' tests.
#[cfg(test)]
pub(crate) fn test_runtime() -> RuntimeStatus {
    RuntimeStatus {
        endpoint: "unix:///run/containerd/containerd.sock".into(),
        name: Some("containerd".into()),
        version: Some("v1.7.2".into()),
        api_version: Some("v1".into()),
        reachable: true,
        last_error: None,
        lost_at: None,
    }
}

/// An image status with every field set; shared by the model's and the wire's tests.
#[cfg(test)]
pub(crate) fn test_full_image(state: ImageState) -> ImageStatus {
    ImageStatus {
        image: "nginx:1.27".into(),
        image_id: Some("sha256:aaa".into()),
        repo_digest: Some("sha256:bbb".into()),
        size_bytes: Some(67_000_000),
        attempts: 2,
        last_error: Some("registry said 503".into()),
        last_error_class: Some(ErrorClass::Transient),
        next_retry_at: Some("2026-11-23T12:00:10Z".into()),
        last_pull_seconds: Some(4.25),
        present_since: Some("2026-11-23T12:00:00Z".into()),
        drift: Some("tag drift: sha256:1 → sha256:2".into()),
        image_registry: Some("registry.example.com".into()),
        held_back: Some(HeldBack {
            reason: HoldReason::DiskThreshold,
            message: "held back: pulling it would take the image filesystem above 80%".into(),
        }),
        bytes_done: Some(12_000_000),
        bytes_total: Some(67_000_000),
        bytes_per_second: Some(4_000_000),
        ..test_image("registry.example.com/nginx:1.27", true, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field set: the `/status` document of one image, byte for byte (the API).
    #[test]
    fn a_full_image_status_serializes_as_documented() {
        let i = test_full_image(ImageState::BackingOff);
        assert_eq!(
            serde_json::to_string_pretty(&i).unwrap(),
            FULL_IMAGE_JSON.trim_end()
        );
        let bare = test_image("x", false, ImageState::Present);
        assert_eq!(
            serde_json::to_string(&bare).unwrap(),
            "{\"image\":\"x\",\"normalized\":\"x\",\"required\":false,\"policy\":\"IfNotPresent\",\
             \"state\":\"Present\",\"imageId\":null,\"repoDigest\":null,\"sizeBytes\":null,\
             \"attempts\":0,\"lastError\":null,\"lastErrorClass\":null,\"nextRetryAt\":null,\
             \"lastPullSeconds\":null,\"presentSince\":null,\"drift\":null,\"bytesDone\":null,\
             \"bytesTotal\":null,\"bytesPerSecond\":null,\"heldBack\":null}"
        );
    }

    const FULL_IMAGE_JSON: &str = r#"{
  "image": "nginx:1.27",
  "normalized": "registry.example.com/nginx:1.27",
  "imageRegistry": "registry.example.com",
  "required": true,
  "policy": "IfNotPresent",
  "state": "BackingOff",
  "imageId": "sha256:aaa",
  "repoDigest": "sha256:bbb",
  "sizeBytes": 67000000,
  "attempts": 2,
  "lastError": "registry said 503",
  "lastErrorClass": "transient",
  "nextRetryAt": "2026-11-23T12:00:10Z",
  "lastPullSeconds": 4.25,
  "presentSince": "2026-11-23T12:00:00Z",
  "drift": "tag drift: sha256:1 → sha256:2",
  "bytesDone": 12000000,
  "bytesTotal": 67000000,
  "bytesPerSecond": 4000000,
  "heldBack": {
    "reason": "diskThreshold",
    "message": "held back: pulling it would take the image filesystem above 80%"
  }
}
"#;

    #[test]
    fn policies_classes_and_states_serialize_as_their_names() {
        for p in [
            PullPolicy::Never,
            PullPolicy::IfNotPresent,
            PullPolicy::Always,
        ] {
            assert_eq!(serde_json::to_value(p).unwrap(), p.to_string());
        }
        for c in ErrorClass::ALL {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
        for s in ImageState::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    /// The fields inside an event keep their Rust names (`rename_all` on the enum renames the
    /// variants only): the documented API.
    #[test]
    fn a_failed_attempt_serializes_flat_with_its_kind() {
        let e = AgentEvent {
            time: "2026-11-23T12:00:00Z".into(),
            kind: AgentEventKind::AttemptFailed {
                image: "a".into(),
                attempt: 2,
                class: ErrorClass::Permanent,
                reason: "not_found".into(),
                error: "404".into(),
                next_retry_at: None,
            },
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            "{\"time\":\"2026-11-23T12:00:00Z\",\"kind\":\"attemptFailed\",\"image\":\"a\",\
             \"attempt\":2,\"class\":\"permanent\",\"reason\":\"not_found\",\"error\":\"404\",\
             \"next_retry_at\":null}"
        );
    }
}
