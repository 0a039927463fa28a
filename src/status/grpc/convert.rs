//! The status model to messages and back: the server sends what the hub holds, the client
//! (`prepuller status`) reads it into the same model, so its JSON is `/status`'s.

use serde::Serialize;

use super::pb;
use crate::config::PullPolicy;
use crate::status::{
    AgentEvent, AgentEventKind, AgentStatus, ConfigStatus, DiskStatus, ErrorClass, HeldBack,
    ImageState, ImageStatus, RuntimeStatus,
};

// ---------------------------------------------------------------------------------------------
// The status model → messages (server side)
// ---------------------------------------------------------------------------------------------

impl From<ImageState> for pb::ImageState {
    fn from(s: ImageState) -> Self {
        match s {
            ImageState::Present => pb::ImageState::Present,
            ImageState::Pulling => pb::ImageState::Pulling,
            ImageState::Waiting => pb::ImageState::Waiting,
            ImageState::BackingOff => pb::ImageState::BackingOff,
            ImageState::Failed => pb::ImageState::Failed,
        }
    }
}

impl From<ImageStatus> for pb::ImageStatus {
    fn from(i: ImageStatus) -> Self {
        pb::ImageStatus {
            image: i.image,
            normalized: i.normalized,
            required: i.required,
            policy: i.policy.to_string(),
            state: pb::ImageState::from(i.state).into(),
            image_id: i.image_id,
            repo_digest: i.repo_digest,
            size_bytes: i.size_bytes,
            attempts: i.attempts,
            last_error: i.last_error,
            last_error_class: i.last_error_class.map(|c| c.as_str().to_owned()),
            next_retry_at: i.next_retry_at,
            last_pull_seconds: i.last_pull_seconds,
            present_since: i.present_since,
            drift: i.drift,
            image_registry: i.image_registry,
            held_back_reason: i.held_back.as_ref().map(|h| h.reason.as_str().to_owned()),
            held_back: i.held_back.map(|h| h.message),
            bytes_done: i.bytes_done,
            bytes_total: i.bytes_total,
            bytes_per_second: i.bytes_per_second,
        }
    }
}

impl From<DiskStatus> for pb::DiskStatus {
    fn from(d: DiskStatus) -> Self {
        pb::DiskStatus {
            mountpoint: d.mountpoint,
            image_bytes: d.image_bytes,
            capacity_bytes: d.capacity_bytes,
            usage_percent: d.usage_percent,
            pull_limit_percent: d.pull_limit_percent.into(),
            low_threshold_percent: d.low_threshold_percent.into(),
            held_back: d.held_back,
            capacity_unknown: d.capacity_unknown,
            checked_at: d.checked_at,
        }
    }
}

impl From<pb::DiskStatus> for DiskStatus {
    fn from(d: pb::DiskStatus) -> Self {
        let percent = |p: u32| u8::try_from(p).unwrap_or(u8::MAX);
        DiskStatus {
            mountpoint: d.mountpoint,
            image_bytes: d.image_bytes,
            capacity_bytes: d.capacity_bytes,
            usage_percent: d.usage_percent,
            pull_limit_percent: percent(d.pull_limit_percent),
            low_threshold_percent: percent(d.low_threshold_percent),
            held_back: d.held_back,
            capacity_unknown: d.capacity_unknown,
            checked_at: d.checked_at,
        }
    }
}

impl From<ConfigStatus> for pb::ConfigStatus {
    fn from(c: ConfigStatus) -> Self {
        pb::ConfigStatus {
            source: c.source,
            generation: c.generation,
            applied_at: c.applied_at,
            last_error: c.last_error,
        }
    }
}

impl From<RuntimeStatus> for pb::RuntimeStatus {
    fn from(r: RuntimeStatus) -> Self {
        pb::RuntimeStatus {
            endpoint: r.endpoint,
            name: r.name,
            version: r.version,
            api_version: r.api_version,
            reachable: r.reachable,
            last_error: r.last_error,
        }
    }
}

impl From<AgentStatus> for pb::Status {
    fn from(s: AgentStatus) -> Self {
        pb::Status {
            ready: s.ready,
            node: s.node,
            config: Some(s.config.into()),
            runtime: Some(s.runtime.into()),
            shutting_down: s.shutting_down,
            images: s.images.into_iter().map(Into::into).collect(),
            disk: s.disk.map(Into::into),
            fleet: s.fleet.map(|f| pb::FleetStatus {
                registries: f
                    .registries
                    .into_iter()
                    .map(|r| pb::FleetRegistry {
                        registry: r.registry,
                        state: r.state.as_str().to_owned(),
                        slot: r.slot,
                        slots: r.slots,
                    })
                    .collect(),
            }),
        }
    }
}

impl From<AgentEventKind> for pb::event::Kind {
    fn from(k: AgentEventKind) -> Self {
        use pb::event::{self as e, Kind};
        match k {
            AgentEventKind::Queued { image } => Kind::Queued(e::Queued { image }),
            AgentEventKind::PullStarted { image, attempt } => {
                Kind::PullStarted(e::PullStarted { image, attempt })
            }
            AgentEventKind::PullProgress {
                image,
                bytes_done,
                bytes_total,
                bytes_per_second,
            } => Kind::PullProgress(e::PullProgress {
                image,
                bytes_done,
                bytes_total,
                bytes_per_second,
            }),
            AgentEventKind::AttemptFailed {
                image,
                attempt,
                class,
                reason,
                error,
                next_retry_at,
            } => Kind::AttemptFailed(e::AttemptFailed {
                image,
                attempt,
                class: class.as_str().to_owned(),
                reason,
                error,
                next_retry_at,
            }),
            AgentEventKind::Present {
                image,
                size_bytes,
                pull_seconds,
            } => Kind::Present(e::Present {
                image,
                size_bytes,
                pull_seconds,
            }),
            AgentEventKind::Drift { image, from, to } => Kind::Drift(e::Drift { image, from, to }),
            AgentEventKind::ConfigReloaded { generation, source } => {
                Kind::ConfigReloaded(e::ConfigReloaded { generation, source })
            }
            AgentEventKind::ConfigRejected { error } => {
                Kind::ConfigRejected(e::ConfigRejected { error })
            }
        }
    }
}

impl From<AgentEvent> for pb::Event {
    fn from(e: AgentEvent) -> Self {
        pb::Event {
            time: e.time,
            kind: Some(e.kind.into()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Messages → the status model (client side: `prepuller status`)
// ---------------------------------------------------------------------------------------------

/// A message this client cannot represent, typically from a newer agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversionError {
    #[error("unknown image state {0} (is the agent newer than this client?)")]
    UnknownImageState(i32),
    #[error("unknown pull policy {0:?} (is the agent newer than this client?)")]
    UnknownPolicy(String),
    #[error("unknown error class {0:?} (is the agent newer than this client?)")]
    UnknownErrorClass(String),
    #[error("event of an unknown kind (is the agent newer than this client?)")]
    UnknownEvent,
}

/// Every policy, to read one back by its name (its `Display`, which is also its JSON).
const POLICIES: [PullPolicy; 3] = [
    PullPolicy::Never,
    PullPolicy::IfNotPresent,
    PullPolicy::Always,
];

fn policy(name: String) -> Result<PullPolicy, ConversionError> {
    POLICIES
        .into_iter()
        .find(|p| p.to_string() == name)
        .ok_or(ConversionError::UnknownPolicy(name))
}

fn error_class(name: String) -> Result<ErrorClass, ConversionError> {
    ErrorClass::ALL
        .into_iter()
        .find(|c| c.as_str() == name)
        .ok_or(ConversionError::UnknownErrorClass(name))
}

impl TryFrom<pb::ImageState> for ImageState {
    type Error = ConversionError;

    fn try_from(s: pb::ImageState) -> Result<Self, ConversionError> {
        Ok(match s {
            pb::ImageState::Present => ImageState::Present,
            pb::ImageState::Pulling => ImageState::Pulling,
            pb::ImageState::Waiting => ImageState::Waiting,
            pb::ImageState::BackingOff => ImageState::BackingOff,
            pb::ImageState::Failed => ImageState::Failed,
            pb::ImageState::Unspecified => return Err(ConversionError::UnknownImageState(0)),
        })
    }
}

impl TryFrom<pb::ImageStatus> for ImageStatus {
    type Error = ConversionError;

    fn try_from(i: pb::ImageStatus) -> Result<Self, ConversionError> {
        let state = pb::ImageState::try_from(i.state)
            .map_err(|_| ConversionError::UnknownImageState(i.state))?
            .try_into()?;
        Ok(ImageStatus {
            image: i.image,
            normalized: i.normalized,
            required: i.required,
            policy: policy(i.policy)?,
            state,
            image_id: i.image_id,
            repo_digest: i.repo_digest,
            size_bytes: i.size_bytes,
            attempts: i.attempts,
            last_error: i.last_error,
            last_error_class: i.last_error_class.map(error_class).transpose()?,
            next_retry_at: i.next_retry_at,
            last_pull_seconds: i.last_pull_seconds,
            present_since: i.present_since,
            drift: i.drift,
            image_registry: i.image_registry,
            // A reason this client does not know is shown without its kind: dropped.
            held_back: i
                .held_back_reason
                .zip(i.held_back)
                .and_then(|(r, m)| HeldBack::from_parts(&r, m)),
            bytes_done: i.bytes_done,
            bytes_total: i.bytes_total,
            bytes_per_second: i.bytes_per_second,
        })
    }
}

impl From<pb::ConfigStatus> for ConfigStatus {
    fn from(c: pb::ConfigStatus) -> Self {
        ConfigStatus {
            source: c.source,
            generation: c.generation,
            applied_at: c.applied_at,
            last_error: c.last_error,
        }
    }
}

impl From<pb::RuntimeStatus> for RuntimeStatus {
    fn from(r: pb::RuntimeStatus) -> Self {
        RuntimeStatus {
            endpoint: r.endpoint,
            name: r.name,
            version: r.version,
            api_version: r.api_version,
            reachable: r.reachable,
            last_error: r.last_error,
            lost_at: None,
        }
    }
}

impl TryFrom<pb::Status> for AgentStatus {
    type Error = ConversionError;

    /// `ready` is taken as the agent computed it, not recomputed.
    fn try_from(s: pb::Status) -> Result<Self, ConversionError> {
        Ok(AgentStatus {
            ready: s.ready,
            node: s.node,
            config: s.config.map(Into::into).unwrap_or_default(),
            runtime: s.runtime.map(Into::into).unwrap_or_default(),
            images: s
                .images
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_, _>>()?,
            shutting_down: s.shutting_down,
            disk: s.disk.map(Into::into),
            // A state this client does not know reads as waiting.
            fleet: s.fleet.map(|f| crate::status::FleetStatus {
                registries: f
                    .registries
                    .into_iter()
                    .map(|r| crate::fleet::FleetRegistry {
                        state: crate::fleet::FleetState::parse(&r.state)
                            .unwrap_or(crate::fleet::FleetState::Waiting),
                        registry: r.registry,
                        slot: r.slot,
                        slots: r.slots,
                    })
                    .collect(),
            }),
        })
    }
}

/// An event as a `WatchEvents` client sees it: the agent's, or a gap in the stream. Serializes
/// like [`AgentEvent`] (`{"time", "kind", …}`); a gap is `{"kind": "lagged", "missed": N}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum WatchedEvent {
    Agent(AgentEvent),
    Lagged(Lagged),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename = "lagged")]
pub struct Lagged {
    /// RFC 3339.
    pub time: String,
    /// Events this client never received.
    pub missed: u64,
}

impl TryFrom<pb::Event> for WatchedEvent {
    type Error = ConversionError;

    fn try_from(e: pb::Event) -> Result<Self, ConversionError> {
        use pb::event::Kind;
        let time = e.time;
        let kind = match e.kind.ok_or(ConversionError::UnknownEvent)? {
            Kind::Lagged(l) => {
                return Ok(WatchedEvent::Lagged(Lagged {
                    time,
                    missed: l.missed,
                }));
            }
            Kind::Queued(q) => AgentEventKind::Queued { image: q.image },
            Kind::PullStarted(p) => AgentEventKind::PullStarted {
                image: p.image,
                attempt: p.attempt,
            },
            Kind::PullProgress(p) => AgentEventKind::PullProgress {
                image: p.image,
                bytes_done: p.bytes_done,
                bytes_total: p.bytes_total,
                bytes_per_second: p.bytes_per_second,
            },
            Kind::AttemptFailed(f) => AgentEventKind::AttemptFailed {
                image: f.image,
                attempt: f.attempt,
                class: error_class(f.class)?,
                reason: f.reason,
                error: f.error,
                next_retry_at: f.next_retry_at,
            },
            Kind::Present(p) => AgentEventKind::Present {
                image: p.image,
                size_bytes: p.size_bytes,
                pull_seconds: p.pull_seconds,
            },
            Kind::Drift(d) => AgentEventKind::Drift {
                image: d.image,
                from: d.from,
                to: d.to,
            },
            Kind::ConfigReloaded(c) => AgentEventKind::ConfigReloaded {
                generation: c.generation,
                source: c.source,
            },
            Kind::ConfigRejected(c) => AgentEventKind::ConfigRejected { error: c.error },
        };
        Ok(WatchedEvent::Agent(AgentEvent { time, kind }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bare_image(state: ImageState) -> ImageStatus {
        ImageStatus {
            image: "x".into(),
            policy: PullPolicy::Always,
            ..crate::status::test_image("docker.io/library/x:latest", false, state)
        }
    }

    #[test]
    fn status_survives_the_wire_unchanged() {
        let status = AgentStatus {
            ready: true,
            node: Some("worker-1".into()),
            config: ConfigStatus {
                source: "/etc/prepuller/images.yaml".into(),
                generation: 3,
                applied_at: Some("2026-11-23T11:00:00Z".into()),
                last_error: Some("images.yaml:4:3: image: empty".into()),
            },
            runtime: crate::status::test_runtime(),
            images: ImageState::ALL
                .iter()
                .map(|&s| crate::status::test_full_image(s))
                .chain(ImageState::ALL.iter().map(|&s| bare_image(s)))
                .collect(),
            shutting_down: true,
            fleet: Some(crate::status::FleetStatus {
                registries: [
                    (crate::fleet::FleetState::Holding, Some(2)),
                    (crate::fleet::FleetState::Waiting, None),
                    (crate::fleet::FleetState::Uncoordinated, None),
                ]
                .into_iter()
                .map(|(state, slot)| crate::fleet::FleetRegistry {
                    registry: format!("{}.example", state.as_str()),
                    state,
                    slot,
                    slots: 5,
                })
                .collect(),
            }),
            disk: Some(crate::status::DiskStatus {
                mountpoint: Some(
                    "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs".into(),
                ),
                image_bytes: Some(5_000_000),
                capacity_bytes: Some(100_000_000),
                usage_percent: Some(81.5),
                pull_limit_percent: 80,
                low_threshold_percent: 80,
                held_back: vec!["docker.io/library/nginx:1.27".into()],
                capacity_unknown: None,
                checked_at: Some("2026-11-23T12:00:00Z".into()),
            }),
        };
        let wire = pb::Status::from(status.clone());
        // Through the bytes too: `optional` keeps None apart from "" and 0.
        let bytes = tonic_prost::prost::Message::encode_to_vec(&wire);
        let decoded: pb::Status = tonic_prost::prost::Message::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded, wire);
        assert_eq!(AgentStatus::try_from(decoded).unwrap(), status);
        // …so the CLI's JSON matches `/status` exactly.
        assert_eq!(
            serde_json::to_value(AgentStatus::try_from(wire).unwrap()).unwrap(),
            serde_json::to_value(&status).unwrap()
        );
    }

    #[test]
    fn policies_and_classes_read_back_by_name() {
        for p in POLICIES {
            assert_eq!(policy(p.to_string()), Ok(p));
        }
        for c in ErrorClass::ALL {
            assert_eq!(error_class(c.as_str().to_owned()), Ok(c));
        }
    }

    #[test]
    fn image_states_map_one_to_one() {
        for s in ImageState::ALL {
            let wire = pb::ImageState::from(s);
            assert_ne!(wire, pb::ImageState::Unspecified);
            assert_eq!(ImageState::try_from(wire).unwrap(), s);
        }
    }

    #[test]
    fn unknown_states_and_events_are_errors_not_guesses() {
        let mut i = pb::ImageStatus::from(bare_image(ImageState::Present));
        i.state = 42;
        assert_eq!(
            ImageStatus::try_from(i),
            Err(ConversionError::UnknownImageState(42))
        );
        let mut i = pb::ImageStatus::from(bare_image(ImageState::Present));
        i.state = 0;
        assert_eq!(
            ImageStatus::try_from(i),
            Err(ConversionError::UnknownImageState(0))
        );
        let mut i = pb::ImageStatus::from(bare_image(ImageState::Present));
        i.policy = "Sometimes".into();
        assert_eq!(
            ImageStatus::try_from(i),
            Err(ConversionError::UnknownPolicy("Sometimes".into()))
        );
        let mut i = pb::ImageStatus::from(bare_image(ImageState::Present));
        i.last_error_class = Some("fatal".into());
        assert_eq!(
            ImageStatus::try_from(i),
            Err(ConversionError::UnknownErrorClass("fatal".into()))
        );
        let e = pb::Event {
            time: "t".into(),
            kind: None,
        };
        assert_eq!(
            WatchedEvent::try_from(e),
            Err(ConversionError::UnknownEvent)
        );
    }

    #[test]
    fn a_status_without_config_or_runtime_reads_as_defaults() {
        let s = AgentStatus::try_from(pb::Status::default()).unwrap();
        assert_eq!(s, AgentStatus::default());
    }

    #[test]
    fn every_event_kind_round_trips_and_serializes_like_the_agent_event() {
        let kinds = vec![
            AgentEventKind::Queued { image: "a".into() },
            AgentEventKind::PullProgress {
                image: "a".into(),
                bytes_done: 5,
                bytes_total: Some(10),
                bytes_per_second: None,
            },
            AgentEventKind::PullStarted {
                image: "a".into(),
                attempt: 2,
            },
            AgentEventKind::AttemptFailed {
                image: "a".into(),
                attempt: 2,
                class: ErrorClass::Transient,
                reason: "rate_limited".into(),
                error: "429".into(),
                next_retry_at: Some("2026-11-23T12:00:10Z".into()),
            },
            AgentEventKind::AttemptFailed {
                image: "a".into(),
                attempt: 1,
                class: ErrorClass::Permanent,
                reason: "not_found".into(),
                error: "404".into(),
                next_retry_at: None,
            },
            AgentEventKind::Present {
                image: "a".into(),
                size_bytes: 12,
                pull_seconds: Some(0.5),
            },
            AgentEventKind::Present {
                image: "a".into(),
                size_bytes: 12,
                pull_seconds: None,
            },
            AgentEventKind::Drift {
                image: "a".into(),
                from: "sha256:1".into(),
                to: "sha256:2".into(),
            },
            AgentEventKind::ConfigReloaded {
                generation: 7,
                source: "/etc/p".into(),
            },
            AgentEventKind::ConfigRejected {
                error: "bad".into(),
            },
        ];
        for kind in kinds {
            let event = AgentEvent {
                time: "2026-11-23T12:00:00Z".into(),
                kind,
            };
            let back = WatchedEvent::try_from(pb::Event::from(event.clone())).unwrap();
            assert_eq!(back, WatchedEvent::Agent(event.clone()));
            assert_eq!(
                serde_json::to_value(&back).unwrap(),
                serde_json::to_value(&event).unwrap()
            );
        }
    }

    #[test]
    fn a_gap_is_a_lagged_event() {
        let e = pb::Event {
            time: "2026-11-23T12:00:00Z".into(),
            kind: Some(pb::event::Kind::Lagged(pb::event::Lagged { missed: 5 })),
        };
        let w = WatchedEvent::try_from(e).unwrap();
        assert_eq!(
            serde_json::to_value(&w).unwrap(),
            serde_json::json!({"kind": "lagged", "time": "2026-11-23T12:00:00Z", "missed": 5})
        );
    }
}
