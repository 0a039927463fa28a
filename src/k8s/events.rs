//! Events on the agent's Node (`kubectl describe node` shows them), aggregated and
//! rate-limited so that a failing image cannot flood the API server.
//!
//! Occurrences with the same reason, subject (image) and note form one `events.k8s.io/v1`
//! Event whose `series.count` grows; a repeat is written at most once per [`SERIES_INTERVAL`]
//! (the count carries what was held back), and every write takes a token from a per-node
//! bucket with the kubelet's own event spam-filter numbers (burst 25, one token per 5 minutes).
//!
//! The API server refuses an update of an Event that changes its `note` (or `reason`, `type`,
//! `regarding`, `action`, `eventTime`, the reporting fields): a repeat updates only `series`,
//! and an occurrence with another note starts a new Event.
//!
//! Why not kube-runtime's event `Recorder`: it cannot keep what the README documents.
//! - Write budget: it writes on every `publish` (a create, then a PATCH per repeat); the README
//!   promises a repeat written at most every 5 minutes, and every write taking a token from the
//!   kubelet's spam-filter bucket (burst 25, one per 5 minutes), a due series waiting for one.
//!   Throttling in front of it does not help: its `series.count` counts its own writes (+1 per
//!   `publish`), not the occurrences held back in between.
//! - Aggregation: its key is (type, action, reason, reporter, regarding, related), without the
//!   image or the note, so two images failing (or one failing with another message) would be
//!   folded into the first Event, the later notes lost; the README's series are per reason,
//!   image and note, and another note starts a new Event.
//! - It patches the whole cached Event, not `series` alone.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use tokio::time::Instant;

pub const REPORTING_CONTROLLER: &str = "prepuller.dev/agent";
/// Node events live in `default`, as the kubelet's do.
const NAMESPACE: &str = "default";
/// The kubelet's EventSourceObjectSpamFilter: burst 25, refill one per 5 minutes.
const BURST: f64 = 25.0;
const REFILL_EVERY: Duration = Duration::from_secs(300);
/// A repeat of the same event updates its series at most this often.
pub const SERIES_INTERVAL: Duration = Duration::from_secs(300);
/// After this long without an occurrence, the next one starts a new Event (the API server
/// drops Events after an hour by default).
const SERIES_TTL: Duration = Duration::from_secs(30 * 60);
/// The API refuses longer notes.
const MAX_NOTE: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Normal,
    Warning,
}

/// One occurrence to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occurrence {
    pub type_: Type,
    /// `ImagePullFailed`, `ImagesPrePulled`, `TagDrift`.
    pub reason: &'static str,
    /// What the event is about within the Node (an image), for aggregation; `None`: the Node
    /// itself.
    pub subject: Option<String>,
    pub note: String,
}

/// Reason and subject: what one series aggregates (with the note, which a series keeps).
type SeriesKey = (&'static str, Option<String>);

struct Series {
    name: String,
    count: i32,
    /// Occurrences not yet written.
    pending: bool,
    note: String,
    last_write: Instant,
    last_seen: Instant,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// When [`Bucket::take`] will succeed.
    fn next_token(&self) -> Instant {
        if self.tokens >= 1.0 {
            return self.at;
        }
        // Rounded up by a millisecond, so that the token is whole when woken for it.
        let wait = (1.0 - self.tokens) * REFILL_EVERY.as_secs_f64() + 0.001;
        self.at + Duration::from_secs_f64(wait)
    }

    fn take(&mut self, now: Instant) -> bool {
        let refill = now.duration_since(self.at).as_secs_f64() / REFILL_EVERY.as_secs_f64();
        self.tokens = (self.tokens + refill).min(BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub struct EventSink {
    api: Api<Event>,
    instance: String,
    series: HashMap<SeriesKey, Series>,
    bucket: Bucket,
    /// Occurrences dropped by the bucket, reported in the log now and then.
    dropped: u64,
}

impl EventSink {
    pub fn new(client: kube::Client, node: &str) -> Self {
        EventSink {
            api: Api::namespaced(client, NAMESPACE),
            instance: format!("prepuller-{node}"),
            series: HashMap::new(),
            bucket: Bucket {
                tokens: BURST,
                at: Instant::now(),
            },
            dropped: 0,
        }
    }

    /// Records an occurrence; writes it when the limits allow. `node` is the Event's subject.
    pub async fn publish(&mut self, node: &ObjectReference, o: Occurrence) {
        let now = Instant::now();
        let key = (o.reason, o.subject.clone());
        let note = truncate(&o.note);
        if let Some(s) = self
            .series
            .get_mut(&key)
            .filter(|s| now.duration_since(s.last_seen) < SERIES_TTL && s.note == note)
        {
            s.count += 1;
            s.pending = true;
            s.last_seen = now;
            if now.duration_since(s.last_write) >= SERIES_INTERVAL {
                self.flush_one(&key, now).await;
            }
            return;
        }
        // Another note for the same reason and image: the old series' held-back count is
        // written before a new Event replaces it.
        if self.series.get(&key).is_some_and(|s| s.pending) {
            self.flush_one(&key, now).await;
        }
        if !self.bucket.take(now) {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = self.dropped,
                    "Node events rate-limited: {} {} not written",
                    o.reason,
                    o.subject.as_deref().unwrap_or_default()
                );
            }
            return;
        }
        let name = format!(
            "{}.{:x}",
            node.name.as_deref().unwrap_or("node"),
            Timestamp::now().as_nanosecond()
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(NAMESPACE.into()),
                ..Default::default()
            },
            event_time: Some(MicroTime(Timestamp::now())),
            action: Some("PrePull".into()),
            reason: Some(o.reason.into()),
            note: Some(note.clone()),
            regarding: Some(node.clone()),
            reporting_controller: Some(REPORTING_CONTROLLER.into()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(
                match o.type_ {
                    Type::Normal => "Normal",
                    Type::Warning => "Warning",
                }
                .into(),
            ),
            ..Default::default()
        };
        match self.api.create(&PostParams::default(), &event).await {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(
                    "cannot create a Node event ({} {}): {}",
                    o.reason,
                    o.subject.as_deref().unwrap_or_default(),
                    super::explain(&e, "create", "events.events.k8s.io")
                );
                return;
            }
        }
        self.series.insert(
            key,
            Series {
                name,
                count: 1,
                pending: false,
                note,
                last_write: now,
                last_seen: now,
            },
        );
    }

    /// Writes held-back repeats whose interval has passed; call now and then.
    pub async fn flush(&mut self) {
        let now = Instant::now();
        self.series
            .retain(|_, s| now.duration_since(s.last_seen) < SERIES_TTL || s.pending);
        let due: Vec<_> = self
            .series
            .iter()
            .filter(|(_, s)| s.pending && now.duration_since(s.last_write) >= SERIES_INTERVAL)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.flush_one(&key, now).await;
        }
    }

    /// When [`EventSink::flush`] has something to do, if ever: a series is due and the
    /// bucket has a token for it (not before, or the caller would spin on an empty bucket).
    pub fn next_flush(&self) -> Option<Instant> {
        let due = self
            .series
            .values()
            .filter(|s| s.pending)
            .map(|s| s.last_write + SERIES_INTERVAL)
            .min()?;
        Some(due.max(self.bucket.next_token()))
    }

    async fn flush_one(&mut self, key: &SeriesKey, now: Instant) {
        if !self.bucket.take(now) {
            self.dropped += 1;
            return; // stays pending: a later flush carries the count
        }
        let Some(s) = self.series.get_mut(key) else {
            return;
        };
        // `series` only: the rest of an Event is immutable.
        let patch = serde_json::json!({
            "series": {
                "count": s.count,
                "lastObservedTime": MicroTime(Timestamp::now()),
            },
        });
        match self
            .api
            .patch(&s.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                s.pending = false;
                s.last_write = now;
            }
            Err(e) => {
                // Gone (expired) or refused: the next occurrence starts a new Event.
                tracing::debug!("cannot update Node event {}: {e}", s.name);
                self.series.remove(key);
            }
        }
    }
}

fn truncate(note: &str) -> String {
    if note.len() <= MAX_NOTE {
        return note.to_string();
    }
    let mut end = MAX_NOTE - 3;
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &note[..end])
}
