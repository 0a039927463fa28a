//! Status projection: what the agent learns (a config applied, the runtime lost or back, the
//! puller's events, a pull's result) written into the [`StatusHub`], the metrics and the
//! event stream. The hub is the single writer's; each change is one `update`, so a reader
//! never sees half of it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::config::{Config, ImageSpec};
use crate::puller::FailureKind;
use crate::puller::PullEvent;
use crate::puller::{ProgressSink, ProgressUpdate};
use crate::runtime::{ImageInfo, RuntimeError, RuntimeVersion};
use crate::status::metrics::Metrics;
use crate::status::{
    AgentEventKind, DiskStatus, ErrorClass, HeldBack, ImageState, ImageStatus, StatusHub,
    now_rfc3339, rfc3339,
};

use super::RUNTIME_RETRY;

/// An image by its position in the config and its normalized reference (see [`image_at`]).
pub(super) type At<'a> = (usize, &'a str);

/// A config was applied: the status lists its images in config order (`keys` are their
/// normalized references, in that order), keeping what was known of those still declared.
pub(super) fn config_applied<'a>(
    hub: &StatusHub,
    config: &Config,
    keys: impl Iterator<Item = &'a str>,
) {
    let source = config.source.display().to_string();
    let generation = hub.update(|s| {
        let mut old: HashMap<String, ImageStatus> = std::mem::take(&mut s.images)
            .into_iter()
            .map(|i| (i.normalized.clone(), i))
            .collect();
        s.images = config
            .images
            .iter()
            .zip(keys)
            .map(|(spec, key)| {
                let mut status = old.remove(key).unwrap_or_else(|| new_status(spec));
                status.image = spec.declared.clone();
                status.image_registry = spec.image_registry.clone();
                status.required = spec.required;
                status.policy = spec.policy;
                status
            })
            .collect();
        s.config.generation += 1;
        s.config.source = source.clone();
        s.config.applied_at = Some(now_rfc3339());
        s.config.last_error = None;
        s.config.generation
    });
    tracing::info!(generation, source = %source, images = config.images.len(), "config applied");
    hub.emit(AgentEventKind::ConfigReloaded { generation, source });
}

/// ListImages failed: the runtime is unreachable. Logged once, when it is lost (or at start).
pub(super) fn runtime_lost(hub: &StatusHub, e: &RuntimeError) {
    let first = hub.update(|s| {
        let first = s.runtime.reachable || s.runtime.last_error.is_none();
        if s.runtime.reachable {
            s.runtime.lost_at = Some(SystemTime::now());
        }
        s.runtime.reachable = false;
        s.runtime.last_error = Some(e.message.clone());
        first
    });
    if first {
        tracing::warn!(
            "container runtime unreachable, retrying every {}s: {e}",
            RUNTIME_RETRY.as_secs()
        );
    }
}

/// The runtime answered again (or for the first time), with its version when it gave it.
pub(super) fn runtime_reachable(hub: &StatusHub, version: Option<RuntimeVersion>) {
    if let Some(v) = &version {
        tracing::info!(runtime = %v, "container runtime reachable");
    }
    hub.update(|s| {
        s.runtime.reachable = true;
        s.runtime.lost_at = None;
        s.runtime.last_error = None;
        if let Some(v) = version {
            s.runtime.name = Some(v.runtime_name);
            s.runtime.version = Some(v.runtime_version);
            s.runtime.api_version = Some(v.runtime_api_version);
        }
    });
}

/// What a resync found for an image that has no pull in flight.
pub(super) enum Mark<'a> {
    /// Present, with its repo digest for the declared repository.
    Present(&'a ImageInfo, Option<&'a str>),
    /// `Never` and absent.
    NeverAbsent,
    /// Absent, and a pull starts now.
    Waiting,
    /// The disk guard holds its pull back: it stays as it is (Present for a refresh), saying why.
    HeldBack(HeldBack),
}

impl Mark<'_> {
    /// Changes only what differs, so a steady pass allocates nothing per image.
    fn apply(self, i: &mut ImageStatus) {
        match self {
            Mark::Present(info, digest) => {
                i.held_back = None;
                if i.state != ImageState::Present {
                    i.present_since = Some(now_rfc3339());
                    i.attempts = 0;
                    i.next_retry_at = None;
                    i.state = ImageState::Present;
                }
                if i.image_id.as_deref() != Some(info.id.as_str()) {
                    i.image_id = Some(info.id.clone());
                }
                i.size_bytes = Some(info.size_bytes);
                if let Some(d) = digest
                    && i.repo_digest.as_deref() != Some(d)
                {
                    i.repo_digest = Some(d.to_string());
                }
            }
            Mark::Waiting => {
                i.state = ImageState::Waiting;
                i.present_since = None;
                i.held_back = None;
            }
            Mark::HeldBack(hold) => {
                if i.held_back.as_ref() != Some(&hold) {
                    i.held_back = Some(hold);
                }
            }
            Mark::NeverAbsent => {
                if i.state == ImageState::Failed {
                    return;
                }
                i.state = ImageState::Failed;
                i.present_since = None;
                i.last_error = Some(format!(
                    "{}: {} ({})",
                    i.normalized,
                    FailureKind::NotPresent.summary(),
                    FailureKind::NotPresent.hint()
                ));
                i.last_error_class = Some(ErrorClass::from_permanent(
                    FailureKind::NotPresent.is_permanent(),
                ));
            }
        }
    }
}

/// A resync's findings, in one update. Each mark is checked against its image's key: the
/// status may have been rebuilt by a newer config; never touch another image.
pub(super) fn marks(hub: &StatusHub, marks: Vec<(At<'_>, Mark<'_>)>) {
    hub.update(|s| {
        for ((n, key), mark) in marks {
            if let Some(i) = s.images.get_mut(n).filter(|i| i.normalized == key) {
                mark.apply(i);
            }
        }
    });
}

/// A pull left the image present: its details, and tag drift when `previous_digest` (before
/// an `Always` refresh) differs from the new one.
pub(super) fn pulled(
    hub: &StatusHub,
    (n, key): At<'_>,
    info: Option<&ImageInfo>,
    digest: Option<&str>,
    previous_digest: Option<&str>,
) {
    let mut drift = None;
    if let (Some(from), Some(to)) = (previous_digest, digest)
        && from != to
    {
        let text = format!("tag drift: {from} → {to}");
        tracing::warn!(image = %key, "{text}");
        hub.emit(AgentEventKind::Drift {
            image: key.to_string(),
            from: from.to_string(),
            to: to.to_string(),
        });
        drift = Some(text);
    }
    // One update: a reader never sees the drift next to the old digest.
    hub.update(|s| {
        if let Some(i) = image_at(&mut s.images, n, key) {
            if let Some(info) = info {
                Mark::Present(info, digest).apply(i);
            }
            if drift.is_some() {
                i.drift = drift;
            }
        }
    });
}

/// The disk guard looked at the image filesystem.
pub(super) fn disk(hub: &StatusHub, disk: DiskStatus) {
    hub.update(|s| s.disk = Some(disk));
}

/// A refresh of a present image failed for good: the image is still usable; keep it Present.
pub(super) fn refresh_failed(hub: &StatusHub, (n, key): At<'_>) {
    hub.update(|s| {
        if let Some(i) = image_at(&mut s.images, n, key) {
            i.state = ImageState::Present;
        }
    });
}

fn new_status(spec: &ImageSpec) -> ImageStatus {
    ImageStatus {
        image_registry: spec.image_registry.clone(),
        ..ImageStatus::new(
            spec.declared.clone(),
            spec.reference.to_string(),
            spec.required,
            spec.policy,
        )
    }
}

/// Mirrors one puller event into the status, the metrics and the event stream. A refresh of
/// an image that is present leaves its state Present, so readiness does not flap.
pub(super) fn record_event(
    hub: &StatusHub,
    metrics: &Metrics,
    (n, key): At<'_>,
    was_present: bool,
    event: PullEvent,
) {
    let update = |f: &dyn Fn(&mut ImageStatus)| {
        hub.update(|s| {
            if let Some(i) = image_at(&mut s.images, n, key) {
                f(i);
            }
        })
    };
    match event {
        PullEvent::Present { .. } => {}
        // The agent's progress comes through `progress_sink`.
        PullEvent::Progress { .. } => {}
        PullEvent::Queued { .. } => {
            if !was_present {
                update(&|i| i.state = ImageState::Waiting);
            }
            hub.emit(AgentEventKind::Queued { image: key.into() });
        }
        PullEvent::Started { attempt, .. } => {
            update(&|i| {
                clear_bytes(i);
                i.attempts = attempt;
                if !was_present {
                    i.state = ImageState::Pulling;
                }
            });
            hub.emit(AgentEventKind::PullStarted {
                image: key.into(),
                attempt,
            });
        }
        PullEvent::AttemptFailed {
            attempt,
            error,
            retry_in,
            ..
        } => {
            let next = rfc3339(SystemTime::now() + retry_in);
            let class = ErrorClass::from_permanent(error.kind.is_permanent());
            tracing::warn!(image = %key, attempt, class = error.kind.class(), reason = error.kind.as_str(), retry_in = ?retry_in, "pull failed, retrying: {error}");
            metrics.observe_pull_failure(error.kind.as_str(), class);
            update(&|i| {
                clear_bytes(i);
                if !was_present {
                    i.state = ImageState::BackingOff;
                }
                i.last_error = Some(error.to_string());
                i.last_error_class = Some(class);
                i.next_retry_at = Some(next.clone());
            });
            hub.emit(AgentEventKind::AttemptFailed {
                image: key.into(),
                attempt,
                class,
                reason: error.kind.as_str().into(),
                error: error.to_string(),
                next_retry_at: Some(next),
            });
        }
        PullEvent::Pulled {
            size_bytes,
            elapsed,
            attempts,
            ..
        } => {
            tracing::info!(image = %key, size_bytes, attempts, took = ?elapsed, "pulled");
            metrics.observe_pull_success(elapsed.as_secs_f64(), size_bytes);
            update(&|i| {
                clear_bytes(i);
                i.last_pull_seconds = Some(elapsed.as_secs_f64());
                i.last_error = None;
                i.last_error_class = None;
                i.next_retry_at = None;
            });
            hub.emit(AgentEventKind::Present {
                image: key.into(),
                size_bytes,
                pull_seconds: Some(elapsed.as_secs_f64()),
            });
        }
        PullEvent::Failed {
            error, attempts, ..
        } => {
            let class = ErrorClass::from_permanent(error.kind.is_permanent());
            tracing::error!(image = %key, attempts, class = error.kind.class(), reason = error.kind.as_str(), "pull failed: {error}");
            metrics.observe_pull_failure(error.kind.as_str(), class);
            update(&|i| {
                clear_bytes(i);
                if !was_present {
                    i.state = ImageState::Failed;
                }
                i.last_error = Some(error.to_string());
                i.last_error_class = Some(class);
                i.next_retry_at = None;
            });
            hub.emit(AgentEventKind::AttemptFailed {
                image: key.into(),
                attempt: attempts,
                class,
                reason: error.kind.as_str().into(),
                error: error.to_string(),
                next_retry_at: None,
            });
        }
    }
}

/// A `pullProgress` event per pull in flight at most this often: `status --watch` shows it,
/// without flooding the stream at the poll rate.
const PROGRESS_EVENT_EVERY: Duration = Duration::from_secs(2);

/// Byte-level progress of the pulls in flight, written into the status as it is polled
/// (`puller::progress`), and an event every [`PROGRESS_EVENT_EVERY`]; an attempt's end clears
/// it ([`record_event`]).
pub(super) fn progress_sink(hub: Arc<StatusHub>) -> ProgressSink {
    // Attempt id → when its last event went out; only attempts in the latest update are kept.
    let last_event: Mutex<HashMap<u64, Instant>> = Mutex::default();
    Arc::new(move |updates: Vec<ProgressUpdate>| {
        hub.update(|s| {
            for u in &updates {
                if let Some(i) = image_at(&mut s.images, u.n, &u.image) {
                    i.bytes_done = Some(u.bytes.done);
                    i.bytes_total = u.bytes.total;
                    i.bytes_per_second = u.bytes.per_second;
                }
            }
        });
        let now = Instant::now();
        let mut last = last_event.lock().unwrap_or_else(|e| e.into_inner());
        last.retain(|id, _| updates.iter().any(|u| u.id == *id));
        for u in updates {
            if last
                .get(&u.id)
                .is_some_and(|&at| now < at + PROGRESS_EVENT_EVERY)
            {
                continue;
            }
            last.insert(u.id, now);
            hub.emit(AgentEventKind::PullProgress {
                image: u.image,
                bytes_done: u.bytes.done,
                bytes_total: u.bytes.total,
                bytes_per_second: u.bytes.per_second,
            });
        }
    })
}

fn clear_bytes(i: &mut ImageStatus) {
    i.bytes_done = None;
    i.bytes_total = None;
    i.bytes_per_second = None;
}

/// The status entry of `key`, found at its position `n` in the config (the status lists the
/// images in config order) without a search; by name when a newer config moved it.
fn image_at<'a>(images: &'a mut [ImageStatus], n: usize, key: &str) -> Option<&'a mut ImageStatus> {
    if images.get(n).is_some_and(|i| i.normalized == key) {
        return images.get_mut(n);
    }
    images.iter_mut().find(|i| i.normalized == key)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use crate::agent::testing::setup;
    use crate::runtime::Ingest;
    use crate::status::AgentEventKind;

    /// On containerd the image being pulled carries its bytes in the status, with a progress
    /// event every 2 s (not at the 250 ms poll rate); its end clears them.
    #[tokio::test(start_paused = true)]
    async fn a_pull_in_flight_shows_its_bytes_until_it_ends() {
        let s = setup("images: [r.example/a:1]");
        s.rt.set_pull_delay(Duration::from_secs(10));
        s.rt.set_ingests(Some(vec![Ingest {
            digest: format!("sha256:{}", "1".repeat(64)),
            offset: 4_000,
            total: Some(10_000),
        }]));
        let mut events = s.hub.subscribe();
        let cancel = CancellationToken::new();
        let run = tokio::spawn(s.agent.run(cancel.clone()));
        tokio::time::sleep(Duration::from_secs(9)).await;
        let image = s.hub.snapshot().images[0].clone();
        assert_eq!(image.bytes_done, Some(4_000), "{image:?}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let image = s.hub.snapshot().images[0].clone();
        assert_eq!(image.state, crate::status::ImageState::Present);
        assert_eq!(image.bytes_done, None, "cleared at the end");
        let mut progress = 0;
        while let Ok(e) = events.try_recv() {
            if matches!(e.kind, AgentEventKind::PullProgress { .. }) {
                progress += 1;
            }
        }
        assert!(
            (4..=6).contains(&progress),
            "{progress} progress events in 10 s"
        );
        cancel.cancel();
        run.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_runtime_is_reported_then_recovered() {
        let mut s = setup("images: [r.example/a:1]");
        s.rt.set_available(false);
        assert!(!s.agent.resync().await);
        let status = s.hub.snapshot();
        assert!(!status.runtime.reachable);
        assert!(status.runtime.last_error.is_some());
        s.rt.set_available(true);
        assert!(s.agent.resync().await);
        s.agent.settle().await;
        let status = s.hub.snapshot();
        assert_eq!(status.runtime.name.as_deref(), Some("fake"));
        assert!(status.ready);
    }

    #[tokio::test(start_paused = true)]
    async fn the_status_shows_the_declared_name_and_the_reference_pulled() {
        let mut s = setup("imageRegistry: r.example/mirror\nimages: [a:1, r.example/mirror/b:1]");
        assert!(s.agent.resync().await);
        s.agent.settle().await;
        let status = s.hub.snapshot();
        let shown: Vec<_> = status
            .images
            .iter()
            .map(|i| {
                (
                    i.image.as_str(),
                    i.normalized.as_str(),
                    i.image_registry.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                ("a:1", "r.example/mirror/a:1", Some("r.example/mirror")),
                ("r.example/mirror/b:1", "r.example/mirror/b:1", None),
            ]
        );
        assert!(status.ready, "{status:?}");
    }
}
