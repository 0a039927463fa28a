//! How `prepuller status` reads: a summary line, a table per image, one line per event.

use std::time::{Duration, SystemTime};

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use crate::cli::format::{human_bytes, human_duration, pull_bytes, short_digest};
use crate::status::grpc::WatchedEvent;
use crate::status::{AgentEvent, AgentEventKind, AgentStatus, ImageStatus};

/// One line: node, readiness, runtime and config; a second line with the last config error;
/// with `fleet:`, a line with the node's pull slots.
pub fn header(s: &AgentStatus) -> String {
    let mut text = summary_line(s);
    if let Some(fleet) = s.fleet.as_ref().filter(|f| !f.registries.is_empty()) {
        let slots: Vec<String> = fleet.registries.iter().map(|r| r.to_string()).collect();
        text.push_str(&format!(
            "
fleet pull budget: {}",
            slots.join("; ")
        ));
    }
    if let Some(e) = &s.config.last_error {
        text.push_str(&format!(
            "\nlast config rejected (the previous one stays in force): {e}"
        ));
    }
    text
}

fn summary_line(s: &AgentStatus) -> String {
    let node = s.node.as_deref().unwrap_or("(node unknown)");
    let (present, total) = s.required_counts();
    let ready = match (s.ready, s.shutting_down) {
        (true, _) => "READY",
        (false, true) => "NOT READY (shutting down)",
        (false, false) => "NOT READY",
    };
    let r = &s.runtime;
    let runtime = if r.reachable {
        let name: Vec<&str> = [r.name.as_deref(), r.version.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        match name.is_empty() {
            true => "runtime reachable".to_string(),
            false => format!("runtime {}", name.join(" ")),
        }
    } else {
        format!(
            "runtime unreachable at {}: {}",
            r.endpoint,
            r.last_error.as_deref().unwrap_or("no answer yet")
        )
    };
    let c = &s.config;
    let config = match c.generation {
        0 => format!("config {} (none applied yet)", c.source),
        g => format!("config {} generation {g}", c.source),
    };
    format!("{node}: {ready}, {present}/{total} required images present; {runtime}; {config}")
}

pub fn table(s: &AgentStatus, now: SystemTime) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(["IMAGE", "STATE", "REQUIRED", "SIZE", "ATTEMPTS", "NOTE"]);
    for i in &s.images {
        // Moved by an imageRegistry: the pulled name, then the declared one (as `pull` shows).
        let image = match &i.image_registry {
            Some(_) => format!("{}\n(declared {})", short_digest(&i.normalized), i.image),
            None => short_digest(&i.normalized),
        };
        t.add_row([
            image,
            i.state.as_str().to_string(),
            if i.required { "yes" } else { "no" }.to_string(),
            i.size_bytes.map_or_else(|| "-".to_string(), human_bytes),
            i.attempts.to_string(),
            note(i, now),
        ]);
    }
    t
}

/// Why an image is not simply present: the disk guard's hold, its last error and next retry,
/// else its last drift.
fn note(i: &ImageStatus, now: SystemTime) -> String {
    let mut parts = Vec::new();
    if let Some(h) = &i.held_back {
        parts.push(format!("held back: {}", h.message));
    }
    // A pull in flight on containerd: how far it is.
    if let Some(done) = i.bytes_done {
        parts.push(pull_bytes(done, i.bytes_total, i.bytes_per_second));
    }
    if let Some(e) = &i.last_error {
        parts.push(match &i.last_error_class {
            Some(class) => format!("{class}: {e}"),
            None => e.clone(),
        });
    }
    if let Some(t) = &i.next_retry_at {
        parts.push(retry_note(t, now));
    }
    if parts.is_empty()
        && let Some(d) = &i.drift
    {
        parts.push(d.clone());
    }
    parts.join("; ")
}

/// "retry in 12s" when the time is readable and ahead, else "retry at <time>".
fn retry_note(at: &str, now: SystemTime) -> String {
    match humantime::parse_rfc3339(at)
        .ok()
        .and_then(|t| t.duration_since(now).ok())
    {
        Some(d) => format!(
            "retry in {}",
            human_duration(Duration::from_secs(d.as_secs()))
        ),
        None => format!("retry at {at}"),
    }
}

/// `2026-11-23T12:00:00Z  pulling  registry/x:1 (attempt 2)`.
pub fn event_line(e: &WatchedEvent) -> String {
    let (time, word, detail) = match e {
        WatchedEvent::Lagged(l) => (
            &l.time,
            "lagged",
            format!(
                "missed {} events (this client read too slowly); run `prepuller status` for the \
                 current state",
                l.missed
            ),
        ),
        WatchedEvent::Agent(AgentEvent { time, kind }) => {
            let (word, detail) = agent_event(kind);
            (time, word, detail)
        }
    };
    format!("{time}  {word:<8} {detail}")
}

fn agent_event(kind: &AgentEventKind) -> (&'static str, String) {
    match kind {
        AgentEventKind::Queued { image } => ("queued", short_digest(image)),
        AgentEventKind::PullStarted { image, attempt } => (
            "pulling",
            format!("{} (attempt {attempt})", short_digest(image)),
        ),
        AgentEventKind::PullProgress {
            image,
            bytes_done,
            bytes_total,
            bytes_per_second,
        } => (
            "progress",
            format!(
                "{} {}",
                short_digest(image),
                pull_bytes(*bytes_done, *bytes_total, *bytes_per_second)
            ),
        ),
        AgentEventKind::AttemptFailed {
            image,
            attempt,
            class,
            reason,
            error,
            next_retry_at,
        } => {
            let retry = next_retry_at
                .as_ref()
                .map(|t| format!("; retry at {t}"))
                .unwrap_or_default();
            (
                "failed",
                format!(
                    "{} (attempt {attempt}, {class} {reason}): {error}{retry}",
                    short_digest(image)
                ),
            )
        }
        AgentEventKind::Present {
            image,
            size_bytes,
            pull_seconds,
        } => {
            let took = pull_seconds
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .map(|d| format!(", pulled in {}", human_duration(d)))
                .unwrap_or_default();
            (
                "present",
                format!(
                    "{} ({}{took})",
                    short_digest(image),
                    human_bytes(*size_bytes)
                ),
            )
        }
        AgentEventKind::Drift { image, from, to } => (
            "drift",
            format!(
                "{}: {} → {}",
                short_digest(image),
                short_hash(from),
                short_hash(to)
            ),
        ),
        AgentEventKind::ConfigReloaded { generation, source } => (
            "config",
            format!("generation {generation} applied from {source}"),
        ),
        AgentEventKind::ConfigRejected { error } => ("config", format!("rejected: {error}")),
    }
}

/// `sha256:0123456789ab…`, as [`short_digest`] shortens the digest of a reference.
fn short_hash(digest: &str) -> String {
    short_digest(&format!("@{digest}"))[1..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ConfigStatus, ImageState};

    fn image(name: &str, state: ImageState) -> ImageStatus {
        crate::status::test_image(name, true, state)
    }

    fn sample() -> AgentStatus {
        AgentStatus {
            ready: false,
            node: Some("worker-1".into()),
            config: ConfigStatus {
                source: "/etc/prepuller/images.yaml".into(),
                generation: 3,
                applied_at: None,
                last_error: None,
            },
            runtime: crate::status::test_runtime(),
            images: vec![
                image("a:1", ImageState::Present),
                image("b:1", ImageState::BackingOff),
            ],
            shutting_down: false,
            disk: None,
            fleet: None,
        }
    }

    #[test]
    fn the_summary_names_readiness_runtime_and_config() {
        let s = sample();
        assert_eq!(
            summary_line(&s),
            "worker-1: NOT READY, 1/2 required images present; runtime containerd v1.7.2; \
             config /etc/prepuller/images.yaml generation 3"
        );
        let mut s = sample();
        s.ready = true;
        s.node = None;
        s.images.truncate(1);
        s.runtime.reachable = false;
        s.runtime.last_error = Some("connection refused".into());
        s.config.generation = 0;
        s.config.last_error = Some("images.yaml:2:3: image: empty".into());
        assert_eq!(
            header(&s),
            "(node unknown): READY, 1/1 required images present; runtime unreachable at \
             unix:///run/containerd/containerd.sock: connection refused; config \
             /etc/prepuller/images.yaml (none applied yet)\nlast config rejected (the previous \
             one stays in force): images.yaml:2:3: image: empty"
        );
        s.ready = false;
        s.shutting_down = true;
        assert!(summary_line(&s).contains("NOT READY (shutting down)"));
    }

    /// An image moved by `imageRegistry`: the table names what is pulled and what was declared.
    #[test]
    fn an_image_moved_by_image_registry_shows_both_names() {
        let mut s = sample();
        s.images[0].image = "bitnami/redis:7".into();
        s.images[0].normalized = "mirror.example.com/bitnami/redis:7".into();
        s.images[0].image_registry = Some("mirror.example.com".into());
        let text = table(&s, SystemTime::now()).to_string();
        assert!(
            text.contains("mirror.example.com/bitnami/redis:7"),
            "{text}"
        );
        assert!(text.contains("(declared bitnami/redis:7)"), "{text}");
        // Pulled as declared: one name.
        assert!(!text.contains("(declared b:1)"), "{text}");
    }

    /// A pull in flight on containerd: its bytes in the NOTE column, and a `progress` line
    /// when watching.
    #[test]
    fn a_pull_in_flight_shows_its_bytes() {
        let mut s = sample();
        s.images[1].state = ImageState::Pulling;
        s.images[1].bytes_done = Some(12_000_000);
        s.images[1].bytes_total = Some(50_000_000);
        s.images[1].bytes_per_second = Some(3_000_000);
        let text = table(&s, SystemTime::now()).to_string();
        assert!(
            text.contains("12.00 MB / 50.00 MB (24%) at 3.00 MB/s"),
            "{text}"
        );
        let line = event_line(&WatchedEvent::Agent(AgentEvent {
            time: "2026-11-23T12:00:00Z".into(),
            kind: AgentEventKind::PullProgress {
                image: "registry/x:1".into(),
                bytes_done: 5_000_000,
                bytes_total: None,
                bytes_per_second: Some(1_000_000),
            },
        }));
        assert_eq!(
            line,
            "2026-11-23T12:00:00Z  progress registry/x:1 5.00 MB at 1.00 MB/s"
        );
    }

    #[test]
    fn the_table_shortens_digests_and_explains_images_that_are_not_present() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut s = sample();
        s.images[0].normalized =
            format!("registry.local/app@sha256:{}", "0123456789abcdef".repeat(4));
        s.images[0].size_bytes = Some(67_000_000);
        s.images[0].drift = Some("tag drift: sha256:1 → sha256:2".into());
        s.images[1].required = false;
        s.images[1].attempts = 2;
        s.images[1].last_error = Some("registry answered 503".into());
        s.images[1].last_error_class = Some(crate::status::ErrorClass::Transient);
        s.images[1].next_retry_at = Some(crate::status::rfc3339(now + Duration::from_secs(12)));
        let text = table(&s, now).to_string();
        assert!(
            text.contains("registry.local/app@sha256:0123456789ab…"),
            "{text}"
        );
        assert!(text.contains("67.00 MB"), "{text}");
        assert!(text.contains("tag drift: sha256:1 → sha256:2"), "{text}");
        assert!(
            text.contains("transient: registry answered 503; retry in 12.0s"),
            "{text}"
        );
        assert!(text.contains("BackingOff"), "{text}");
        for column in ["IMAGE", "STATE", "REQUIRED", "SIZE", "ATTEMPTS", "NOTE"] {
            assert!(text.contains(column), "{text}");
        }
    }

    #[test]
    fn the_header_shows_the_fleet_slots() {
        use crate::fleet::{FleetRegistry, FleetState};
        let mut s = sample();
        assert!(!header(&s).contains("fleet"));
        let reg = |registry: &str, state, slot| FleetRegistry {
            registry: registry.into(),
            state,
            slot,
            slots: 5,
        };
        s.fleet = Some(crate::status::FleetStatus {
            registries: vec![
                reg("registry.example.com", FleetState::Holding, Some(2)),
                reg("docker.io", FleetState::Waiting, None),
            ],
        });
        assert!(
            header(&s).ends_with(
                "\nfleet pull budget: pulling (slot 2/5 of registry.example.com); waiting for a slot of docker.io (5 slots)"
            ),
            "{}",
            header(&s)
        );
    }

    #[test]
    fn an_image_the_disk_guard_holds_back_says_why() {
        let mut i = image("a:1", ImageState::Waiting);
        i.held_back = Some(crate::status::HeldBack {
            reason: crate::status::HoldReason::GcThrash,
            message: "GC thrash: gone 2 times within 1h of its pull".into(),
        });
        assert_eq!(
            note(&i, SystemTime::UNIX_EPOCH),
            "held back: GC thrash: gone 2 times within 1h of its pull"
        );
    }

    #[test]
    fn a_past_or_unreadable_retry_time_is_shown_as_is() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(
            retry_note("2000-01-01T00:00:00Z", now),
            "retry at 2000-01-01T00:00:00Z"
        );
        assert_eq!(retry_note("soon", now), "retry at soon");
    }

    #[test]
    fn events_read_as_one_line_each() {
        let at = |kind| {
            event_line(&WatchedEvent::Agent(AgentEvent {
                time: "2026-11-23T12:00:00Z".into(),
                kind,
            }))
        };
        assert_eq!(
            at(AgentEventKind::PullStarted {
                image: "registry/x:1".into(),
                attempt: 2
            }),
            "2026-11-23T12:00:00Z  pulling  registry/x:1 (attempt 2)"
        );
        assert_eq!(
            at(AgentEventKind::Queued {
                image: "registry/x:1".into()
            }),
            "2026-11-23T12:00:00Z  queued   registry/x:1"
        );
        assert_eq!(
            at(AgentEventKind::AttemptFailed {
                image: "registry/x:1".into(),
                attempt: 1,
                class: crate::status::ErrorClass::Transient,
                reason: "rate_limited".into(),
                error: "429 Too Many Requests".into(),
                next_retry_at: Some("2026-11-23T12:00:10Z".into()),
            }),
            "2026-11-23T12:00:00Z  failed   registry/x:1 (attempt 1, transient rate_limited): \
             429 Too Many Requests; retry at 2026-11-23T12:00:10Z"
        );
        assert_eq!(
            at(AgentEventKind::Present {
                image: "registry/x:1".into(),
                size_bytes: 1_500_000,
                pull_seconds: Some(4.2),
            }),
            "2026-11-23T12:00:00Z  present  registry/x:1 (1.50 MB, pulled in 4.2s)"
        );
        let long = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            at(AgentEventKind::Drift {
                image: "registry/x:1".into(),
                from: long.clone(),
                to: long,
            }),
            "2026-11-23T12:00:00Z  drift    registry/x:1: sha256:abababababab… → sha256:abababababab…"
        );
        assert_eq!(
            at(AgentEventKind::ConfigReloaded {
                generation: 4,
                source: "/etc/p.yaml".into()
            }),
            "2026-11-23T12:00:00Z  config   generation 4 applied from /etc/p.yaml"
        );
        let lagged = event_line(&WatchedEvent::Lagged(crate::status::grpc::Lagged {
            time: "2026-11-23T12:00:00Z".into(),
            missed: 7,
        }));
        assert!(lagged.starts_with("2026-11-23T12:00:00Z  lagged   missed 7 events"));
    }
}
