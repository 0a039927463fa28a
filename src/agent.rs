//! The long-running agent: keeps every declared image present, reloads its config safely,
//! and reports through the [`StatusHub`].
//!
//! Each pass lists the runtime's images once, then queues every image that needs a pull and is
//! not queued yet. The queue ([`PullQueue`]) keeps one small record per image and starts
//! attempts only into free slots; records outlive passes, so an image in back-off keeps its
//! back-off across resyncs. The agent never removes images.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, ImageSpec, PullPolicy};
use crate::credentials::{CredentialSource, Credentials, SecretReader};
use crate::node::AgentLink;
use crate::node::selector::Labels;
use crate::puller::{FailureKind, PullEvent, PullResult, PullSettings, Puller, sleep_until_some};
use crate::puller::{Finished, PullQueue};
use crate::report::metrics::Metrics;
use crate::report::{AgentEventKind, ImageState, ImageStatus, StatusHub, now_rfc3339, rfc3339};
use crate::runtime::{ErrorKind, ImageInfo, Runtime};

/// How often an unreachable runtime is tried again (instead of waiting a whole resync).
const RUNTIME_RETRY: Duration = Duration::from_secs(5);
/// Config files are often written in several steps; wait for the writes to settle.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(300);
/// In-flight pulls get this long to notice cancellation at shutdown (they select on it, so
/// they take microseconds); with the servers' 300 ms, the exit stays within the documented 2 s.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// At start in a cluster, how long the first pass waits for the Node's labels (which select
/// image sets) before going ahead with the sets that need none.
const LABELS_WAIT: Duration = Duration::from_secs(10);

/// What the agent remembers about an image between passes.
#[derive(Default)]
struct Track {
    /// When an `Always` image was last pulled by this agent.
    last_refresh: Option<Instant>,
    /// A permanent failure is not retried before this (unless the config changes).
    retry_after: Option<Instant>,
    /// Refused by the registry: the credentials' fingerprint then. A change retries at once.
    refused_with: Option<u64>,
    /// Its record in the pull queue, while it has one.
    queued: Option<u64>,
}

/// The strings a pass compares for one declared image, made once per config.
struct Names {
    /// The normalized reference: the key of tracks, in-flight pulls and the status.
    key: String,
    /// The name the runtime lists the image under: `name@digest` when pinned, else `name:tag`.
    lookup: String,
    /// `name@`, to find the image's repo digest for this repository.
    digest_prefix: String,
}

impl Names {
    fn of(spec: &ImageSpec) -> Names {
        let key = spec.reference.to_string();
        let name = spec.reference.name();
        let lookup = match spec.reference.digest() {
            Some(d) => format!("{name}@{d}"),
            None => key.clone(),
        };
        Names {
            key,
            lookup,
            digest_prefix: format!("{name}@"),
        }
    }
}

/// An image that left the queue, with what its record knew.
struct TaskDone {
    n: usize,
    key: String,
    outcome: crate::puller::ImageOutcome,
    previous_digest: Option<String>,
    was_present: bool,
    refused_with: Option<u64>,
}

/// What the queue keeps for an image besides its back-off: its key and status live in
/// `names` and the status, by position.
struct Pending {
    /// Present when queued (an `Always` refresh): its status stays Present meanwhile.
    was_present: bool,
    /// The repo digest before an `Always` refresh, to detect tag drift.
    previous_digest: Option<String>,
}

pub struct Agent<R: Runtime> {
    runtime: Arc<R>,
    hub: Arc<StatusHub>,
    metrics: Arc<Metrics>,
    config_path: PathBuf,
    config: Config,
    /// Parallel to `config.images`.
    names: Vec<Names>,
    puller: Arc<Puller<R>>,
    tracks: HashMap<String, Track>,
    /// The images that need a pull. A track names its image's record by id: the end of a
    /// cancelled attempt of an image that was removed and declared again is not taken for
    /// the end of the record that replaced it.
    queue: PullQueue<Pending>,
    /// The text of the last rejected config error, so a broken file is logged once, not every pass.
    last_config_error: Option<String>,
    /// When the config was last read: a pass re-reads it only a resync interval later.
    config_read_at: Instant,
    /// The config texts last read; an unchanged read is not parsed again.
    last_sources: Vec<(PathBuf, String)>,
    /// Reads `secret:` credential sources, when there is a cluster.
    secrets: Option<Arc<dyn SecretReader>>,
    /// Wakes the loop when a credential file changes; the watcher follows the config's sources.
    credentials_changed: mpsc::Sender<()>,
    credentials_events: Option<mpsc::Receiver<()>>,
    credentials_watcher: Option<notify::RecommendedWatcher>,
    /// In a cluster: the Node's labels in, the node settings out (see [`crate::node`]).
    node: Option<AgentLink>,
    /// The labels the current config was selected with.
    node_labels: Option<Labels>,
    /// Turns of the run loop, for the tests that bound them.
    #[cfg(test)]
    turns: Arc<std::sync::atomic::AtomicUsize>,
}

impl<R: Runtime> Agent<R> {
    /// An agent for a config that was already validated (an invalid one is refused at start).
    pub fn new(
        runtime: Arc<R>,
        hub: Arc<StatusHub>,
        metrics: Arc<Metrics>,
        config_path: PathBuf,
        config: Config,
    ) -> Self {
        let puller = Arc::new(Puller::new(runtime.clone(), PullSettings::from(&config)));
        let config_path_for_sources = config_path.clone();
        let (credentials_changed, credentials_events) = mpsc::channel(1);
        let mut agent = Agent {
            runtime,
            hub,
            metrics,
            config_path,
            config: config.clone(),
            names: Vec::new(),
            puller,
            tracks: HashMap::new(),
            queue: PullQueue::new(false),
            last_config_error: None,
            config_read_at: Instant::now(),
            last_sources: Config::read_sources(&config_path_for_sources).unwrap_or_default(),
            secrets: None,
            credentials_changed,
            credentials_events: Some(credentials_events),
            credentials_watcher: None,
            node: None,
            node_labels: None,
            #[cfg(test)]
            turns: Arc::default(),
        };
        agent.apply(config);
        agent
    }

    /// Lets `secret:` credential sources be read through the Kubernetes API.
    pub fn with_secret_reader(mut self, secrets: Option<Arc<dyn SecretReader>>) -> Self {
        self.secrets = secrets;
        self.puller
            .set_credentials(self.credentials_for(&self.config));
        self
    }

    fn credentials_for(&self, config: &Config) -> Arc<Credentials> {
        Arc::new(Credentials::new(
            config.credentials.clone(),
            config.anonymous_fallback,
            self.secrets.clone(),
        ))
    }

    /// Links the agent to its Node: the labels select image sets (re-selected when they
    /// change), and each applied config's node settings are handed over.
    pub fn with_node(mut self, link: AgentLink) -> Self {
        link.settings.send_replace(self.config.node.clone());
        self.node = Some(link);
        self
    }

    /// Runs until `cancel`, then stops every pull and returns within about two seconds.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut credentials_events = self.credentials_events.take().expect("run is called once");
        if let Some(link) = &mut self.node {
            let labels = tokio::time::timeout(LABELS_WAIT, link.labels.wait_for(Option::is_some));
            let known = tokio::select! {
                biased;
                _ = cancel.cancelled() => None,
                labels = labels => Some(matches!(labels, Ok(Ok(_)))),
            };
            match known {
                None => return self.shutdown().await,
                Some(false) => tracing::warn!(
                    "the Node's labels are not known yet; image sets with a nodeSelector wait for them"
                ),
                Some(true) => {}
            }
            self.reload().await;
        }
        let (reload_tx, mut reload_rx) = mpsc::channel::<()>(1);
        let _watcher = match watch(&self.config_path, reload_tx) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(path = %self.config_path.display(), "cannot watch the config, re-reading it every resync instead: {e}");
                None
            }
        };
        let mut next_pass = Instant::now();
        loop {
            #[cfg(test)]
            self.turns
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // The queue's timer: the earliest not-before time, always in the future here.
            let wake = self.queue.next_wake(&self.puller);
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some(end) = self.queue.join_next() => {
                    let done = self.settle_attempt(end);
                    if let Some(done) = done {
                        tokio::select! {
                            biased;
                            _ = cancel.cancelled() => break,
                            _ = self.finish(done) => {}
                        }
                    }
                    self.start_due();
                }
                _ = sleep_until_some(wake), if wake.is_some() => self.start_due(),
                Some(()) = credentials_events.recv() => {
                    if !debounce(&cancel).await {
                        break;
                    }
                    while credentials_events.try_recv().is_ok() {}
                    // Read again even a rewrite that kept the size and the mtime tick.
                    self.puller.credentials().files_changed();
                    // The pass compares the credentials with those that were refused.
                    next_pass = Instant::now();
                }
                Some(()) = labels_changed(&mut self.node) => {
                    if self.reload().await {
                        next_pass = Instant::now();
                    }
                }
                Some(()) = reload_rx.recv() => {
                    if !debounce(&cancel).await {
                        break;
                    }
                    while reload_rx.try_recv().is_ok() {}
                    if self.reload().await {
                        next_pass = Instant::now();
                    }
                }
                _ = tokio::time::sleep_until(next_pass) => {
                    // A runtime or API server that never answers must not hold up a SIGTERM:
                    // the pass is dropped at cancellation, whatever call it is waiting on.
                    let reachable = tokio::select! {
                        biased;
                        _ = cancel.cancelled() => break,
                        reachable = self.pass(&cancel) => reachable,
                    };
                    let wait = if reachable {
                        self.config.resync_interval
                    } else {
                        RUNTIME_RETRY.min(self.config.resync_interval)
                    };
                    next_pass = Instant::now() + wait;
                }
            }
        }
        self.shutdown().await;
    }

    async fn shutdown(mut self) {
        self.hub.begin_shutdown();
        self.queue.shutdown(SHUTDOWN_GRACE).await;
        tracing::info!("agent stopped");
    }

    /// Re-reads the config; applies it when it is valid and different. Returns whether it was
    /// applied. An invalid config is reported and the last good one keeps running.
    async fn reload(&mut self) -> bool {
        let labels = self.node.as_ref().and_then(|l| l.labels.borrow().clone());
        self.config_read_at = Instant::now();
        // Blocking file reads stay off the async worker threads.
        let path = self.config_path.clone();
        let read = tokio::task::spawn_blocking(move || Config::read_sources(&path))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let loaded = read.and_then(|sources| {
            if sources == self.last_sources
                && self.last_config_error.is_none()
                && labels == self.node_labels
            {
                return Ok(None); // unchanged: skip parsing thousands of entries every pass
            }
            let config =
                Config::from_sources_for_node(&self.config_path, &sources, labels.as_ref())?;
            self.last_sources = sources;
            self.node_labels = labels;
            Ok(Some(config))
        });
        match loaded {
            Ok(None) => false,
            Ok(Some(config)) => {
                self.last_config_error = None;
                if config == self.config {
                    self.hub.update(|s| s.config.last_error = None);
                    return false;
                }
                self.apply(config);
                self.metrics.observe_config_reload(true);
                true
            }
            Err(e) => {
                self.reject(&e);
                false
            }
        }
    }

    fn reject(&mut self, e: &ConfigError) {
        let text = e.headline();
        if self.last_config_error.as_deref() == Some(text.as_str()) {
            return;
        }
        tracing::error!(
            "config rejected, keeping generation {}: {}",
            self.hub.snapshot().config.generation,
            e.render()
        );
        self.metrics.observe_config_reload(false);
        self.hub
            .update(|s| s.config.last_error = Some(text.clone()));
        self.hub.emit(AgentEventKind::ConfigRejected {
            error: text.clone(),
        });
        self.last_config_error = Some(text);
    }

    /// Makes `config` current: images no longer declared stop pulling, new ones appear as
    /// Waiting, and permanent failures are retried (the config may have fixed them).
    fn apply(&mut self, config: Config) {
        let first = self.names.is_empty() && self.credentials_watcher.is_none();
        if PullSettings::from(&config) != *self.puller.settings() {
            // In-flight pulls finish with the old settings; new ones use the new slots.
            self.puller = Arc::new(Puller::with_credentials(
                self.runtime.clone(),
                PullSettings::from(&config),
                self.credentials_for(&config),
            ));
        } else if first
            || config.credentials != self.config.credentials
            || config.anonymous_fallback != self.config.anonymous_fallback
        {
            self.puller.set_credentials(self.credentials_for(&config));
        }
        if first || config.credentials != self.config.credentials {
            self.credentials_watcher =
                watch_credentials(&config.credentials, self.credentials_changed.clone());
        }
        let names: Vec<Names> = config.images.iter().map(Names::of).collect();
        let positions: HashMap<&str, usize> = names
            .iter()
            .enumerate()
            .map(|(n, x)| (x.key.as_str(), n))
            .collect();
        // Images no longer declared leave the queue (a running pull is cancelled); the others
        // follow their new position.
        let queue = &mut self.queue;
        self.tracks.retain(|key, track| {
            let position = positions.get(key.as_str()).copied();
            if let Some(id) = track.queued {
                match position {
                    Some(n) => {
                        if let Some(r) = queue.get_mut(id) {
                            r.n = n;
                        }
                    }
                    None => queue.remove(id),
                }
            }
            position.is_some()
        });
        for track in self.tracks.values_mut() {
            track.retry_after = None;
            track.refused_with = None;
        }
        for note in &config.merged {
            tracing::info!("{note}");
        }
        for skipped in &config.skipped_sets {
            tracing::info!("{skipped}");
        }
        if let Some(link) = &self.node {
            link.settings.send_if_modified(|s| {
                let changed = *s != config.node;
                *s = config.node.clone();
                changed
            });
        }
        let source = config.source.display().to_string();
        let generation = self.hub.update(|s| {
            let mut old: HashMap<String, ImageStatus> = std::mem::take(&mut s.images)
                .into_iter()
                .map(|i| (i.normalized.clone(), i))
                .collect();
            s.images = config
                .images
                .iter()
                .zip(&names)
                .map(|(spec, names)| {
                    let mut status = old.remove(&names.key).unwrap_or_else(|| new_status(spec));
                    status.image = spec.declared.clone();
                    status.required = spec.required;
                    status.policy = spec.policy.to_string();
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
        self.hub
            .emit(AgentEventKind::ConfigReloaded { generation, source });
        self.names = names;
        self.config = config;
    }

    /// One periodic pass: re-read the config (a fallback for file systems where change events
    /// do not arrive), then resync. Returns whether the runtime answered. Public for the
    /// benchmark.
    pub async fn pass(&mut self, cancel: &CancellationToken) -> bool {
        // Changes arrive through the watcher; the re-read is a fallback, once per resync.
        if self.config_read_at.elapsed() >= self.config.resync_interval {
            self.reload().await;
        }
        self.retry_if_credentials_changed().await;
        let reachable = self.resync(cancel).await;
        self.hub.mark_synced();
        reachable
    }

    /// Images the registry refused wait for `backoff.max`, unless the credentials change: then
    /// they are retried at once. Costs nothing while nothing was refused.
    async fn retry_if_credentials_changed(&mut self) {
        if !self.tracks.values().any(|t| t.refused_with.is_some()) {
            return;
        }
        let now = self.puller.credentials().fingerprint().await;
        let mut retried = 0;
        for track in self.tracks.values_mut() {
            if track.refused_with.is_some_and(|then| then != now) {
                track.refused_with = None;
                track.retry_after = None;
                retried += 1;
            }
        }
        if retried > 0 {
            tracing::info!("credentials changed: retrying {retried} image(s) the registry refused");
        }
    }

    /// One resync: one ListImages, then a pull task for each image that needs one.
    async fn resync(&mut self, _cancel: &CancellationToken) -> bool {
        let images = match self.runtime.list_images().await {
            Ok(images) => images,
            Err(e) => {
                let first = self.hub.update(|s| {
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
                return false;
            }
        };
        if !self.hub.snapshot_runtime().reachable {
            self.runtime_came_back().await;
        }
        // Index the runtime's images by the names CRI reports, so each lookup is O(1).
        let mut by_name: HashMap<&str, &ImageInfo> = HashMap::with_capacity(images.len() * 2);
        for info in &images {
            for name in info.repo_tags.iter().chain(&info.repo_digests) {
                by_name.insert(name.as_str(), info);
            }
        }
        let now = Instant::now();
        // Positions in the status, which lists the images in config order (see `apply`).
        let mut marks: Vec<(usize, Mark)> = Vec::new();
        let mut to_pull = Vec::new();
        for (n, (spec, names)) in self.config.images.iter().zip(&self.names).enumerate() {
            if !self.tracks.contains_key(&names.key) {
                self.tracks.insert(names.key.clone(), Track::default());
            }
            let track = &self.tracks[&names.key];
            if track.queued.is_some() {
                continue;
            }
            let found = by_name.get(names.lookup.as_str()).copied();
            let needs_pull = match spec.policy {
                PullPolicy::Never => false,
                PullPolicy::IfNotPresent => found.is_none(),
                PullPolicy::Always => {
                    found.is_none()
                        || track
                            .last_refresh
                            .is_none_or(|t| now.duration_since(t) >= spec.refresh_interval)
                }
            };
            match found {
                Some(info) => {
                    let digest = info
                        .repo_digests
                        .iter()
                        .find_map(|d| d.strip_prefix(names.digest_prefix.as_str()));
                    marks.push((n, Mark::Present(info, digest)));
                }
                None if spec.policy == PullPolicy::Never => marks.push((n, Mark::NeverAbsent)),
                None => {}
            }
            if needs_pull && track.retry_after.is_none_or(|t| now >= t) {
                if found.is_none() {
                    marks.push((n, Mark::Waiting));
                }
                let previous_digest = found
                    .and_then(|i| i.repo_digest_for(&spec.reference))
                    .map(str::to_string);
                to_pull.push((
                    n,
                    Pending {
                        was_present: found.is_some(),
                        previous_digest,
                    },
                ));
            }
        }
        let names = &self.names;
        self.hub.update(|s| {
            for (n, mark) in marks {
                // The status may have been rebuilt by a newer config; never touch another image.
                if let Some(i) = s.images.get_mut(n).filter(|i| i.normalized == names[n].key) {
                    mark.apply(i);
                }
            }
        });
        for (n, pending) in to_pull {
            let key = &self.names[n].key;
            record_event(
                &self.hub,
                &self.metrics,
                (n, key),
                pending.was_present,
                PullEvent::Queued { index: n },
            );
            let id = self.queue.push(n, pending);
            if let Some(track) = self.tracks.get_mut(key) {
                track.queued = Some(id);
            }
        }
        self.start_due();
        true
    }

    async fn runtime_came_back(&self) {
        let version = self.runtime.version().await.ok();
        if let Some(v) = &version {
            tracing::info!(runtime = %v, "container runtime reachable");
        }
        self.hub.update(|s| {
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

    /// Starts the queued pulls that have a free slot and are due.
    fn start_due(&mut self) {
        let (hub, metrics, names) = (&self.hub, &self.metrics, &self.names);
        let mut on_event = |n: usize, p: &Pending, e: PullEvent| {
            if let Some(x) = names.get(n) {
                record_event(hub, metrics, (n, &x.key), p.was_present, e);
            }
        };
        self.queue
            .start_due(&self.puller, &self.config.images, &mut on_event);
    }

    /// An attempt ended: its events are recorded; returns the image if it left the queue.
    fn settle_attempt(
        &mut self,
        end: (u64, String, crate::puller::AttemptEnd),
    ) -> Option<Finished<Pending>> {
        let (hub, metrics, names) = (&self.hub, &self.metrics, &self.names);
        let mut on_event = |n: usize, p: &Pending, e: PullEvent| {
            if let Some(x) = names.get(n) {
                record_event(hub, metrics, (n, &x.key), p.was_present, e);
            }
        };
        self.queue.settle(end, &self.puller, &mut on_event)
    }

    /// An image left the queue: remember what the next passes need, and detect tag drift.
    async fn finish(&mut self, done: Finished<Pending>) {
        let Some(key) = self.names.get(done.n).map(|x| x.key.clone()) else {
            return;
        };
        let refused = matches!(&done.outcome.result, PullResult::Failed(e) if e.kind == ErrorKind::Unauthorized);
        // Read after the refusal: a change from this fingerprint retries at once.
        let refused_with = if refused {
            Some(self.puller.credentials().fingerprint().await)
        } else {
            None
        };
        let Some(track) = self.tracks.get_mut(&key) else {
            return; // no longer declared
        };
        if track.queued != Some(done.id) {
            return; // a record that was replaced
        }
        track.queued = None;
        let spec = &self.config.images[done.n];
        let done = TaskDone {
            n: done.n,
            key,
            outcome: done.outcome,
            previous_digest: done.key.previous_digest,
            was_present: done.key.was_present,
            refused_with,
        };
        match &done.outcome.result {
            PullResult::Pulled => {
                track.last_refresh = Some(Instant::now());
                track.retry_after = None;
                track.refused_with = None;
                let info = done.outcome.image.as_ref();
                let digest = info
                    .and_then(|i| i.repo_digest_for(&spec.reference))
                    .map(str::to_string);
                let mut drift = None;
                if let (Some(from), Some(to)) = (&done.previous_digest, &digest)
                    && from != to
                {
                    let text = format!("tag drift: {from} → {to}");
                    tracing::warn!(image = %done.key, "{text}");
                    self.hub.emit(AgentEventKind::Drift {
                        image: done.key.clone(),
                        from: from.clone(),
                        to: to.clone(),
                    });
                    drift = Some(text);
                }
                // One update: a reader never sees the drift next to the old digest.
                self.hub.update(|s| {
                    if let Some(i) = image_at(&mut s.images, done.n, &done.key) {
                        if let Some(info) = info {
                            Mark::Present(info, digest.as_deref()).apply(i);
                        }
                        if drift.is_some() {
                            i.drift = drift;
                        }
                    }
                });
            }
            PullResult::Failed(_) => {
                // Permanent: the registry will answer the same until something changes.
                track.retry_after = Some(Instant::now() + self.config.backoff.max);
                track.refused_with = done.refused_with;
                if done.was_present {
                    // A failed refresh leaves the image usable; keep it Present.
                    self.hub.update(|s| {
                        if let Some(i) = image_at(&mut s.images, done.n, &done.key) {
                            i.state = ImageState::Present;
                        }
                    });
                }
            }
            PullResult::AlreadyPresent | PullResult::Cancelled(_) => {}
        }
    }
}

/// What a resync found for an image that has no pull in flight.
enum Mark<'a> {
    /// Present, with its repo digest for the declared repository.
    Present(&'a ImageInfo, Option<&'a str>),
    /// `Never` and absent.
    NeverAbsent,
    /// Absent, and a pull starts now.
    Waiting,
}

impl Mark<'_> {
    /// Changes only what differs, so a steady pass allocates nothing per image.
    fn apply(self, i: &mut ImageStatus) {
        match self {
            Mark::Present(info, digest) => {
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
                i.last_error_class = Some(FailureKind::NotPresent.class().into());
            }
        }
    }
}

fn new_status(spec: &ImageSpec) -> ImageStatus {
    ImageStatus {
        image: spec.declared.clone(),
        normalized: spec.reference.to_string(),
        required: spec.required,
        policy: spec.policy.to_string(),
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
    }
}

/// Mirrors one puller event into the status, the metrics and the event stream. A refresh of
/// an image that is present leaves its state Present, so readiness does not flap.
fn record_event(
    hub: &StatusHub,
    metrics: &Metrics,
    (n, key): (usize, &str),
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
        PullEvent::Queued { .. } => {
            if !was_present {
                update(&|i| i.state = ImageState::Waiting);
            }
            hub.emit(AgentEventKind::Queued { image: key.into() });
        }
        PullEvent::Started { attempt, .. } => {
            update(&|i| {
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
            tracing::warn!(image = %key, attempt, class = error.kind.class(), reason = error.kind.as_str(), retry_in = ?retry_in, "pull failed, retrying: {error}");
            metrics.observe_pull_failure(error.kind.as_str(), error.kind.class());
            update(&|i| {
                if !was_present {
                    i.state = ImageState::BackingOff;
                }
                i.last_error = Some(error.to_string());
                i.last_error_class = Some(error.kind.class().into());
                i.next_retry_at = Some(next.clone());
            });
            hub.emit(AgentEventKind::AttemptFailed {
                image: key.into(),
                attempt,
                class: error.kind.class().into(),
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
            tracing::error!(image = %key, attempts, class = error.kind.class(), reason = error.kind.as_str(), "pull failed: {error}");
            metrics.observe_pull_failure(error.kind.as_str(), error.kind.class());
            update(&|i| {
                if !was_present {
                    i.state = ImageState::Failed;
                }
                i.last_error = Some(error.to_string());
                i.last_error_class = Some(error.kind.class().into());
                i.next_retry_at = None;
            });
            hub.emit(AgentEventKind::AttemptFailed {
                image: key.into(),
                attempt: attempts,
                class: error.kind.class().into(),
                reason: error.kind.as_str().into(),
                error: error.to_string(),
                next_retry_at: None,
            });
        }
    }
}

/// The status entry of `key`, found at its position `n` in the config (the status lists the
/// images in config order) without a search; by name when a newer config moved it.
fn image_at<'a>(images: &'a mut [ImageStatus], n: usize, key: &str) -> Option<&'a mut ImageStatus> {
    if images.get(n).is_some_and(|i| i.normalized == key) {
        return images.get_mut(n);
    }
    images.iter_mut().find(|i| i.normalized == key)
}

/// Lets a burst of file writes settle; `false` when cancelled meanwhile.
async fn debounce(cancel: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(RELOAD_DEBOUNCE) => true,
    }
}

/// Resolves when the Node's labels change; never without a Node.
async fn labels_changed(node: &mut Option<AgentLink>) -> Option<()> {
    match node {
        Some(link) => link.labels.changed().await.ok(),
        None => std::future::pending().await,
    }
}

/// Watches the config path for changes. For a file, its directory is watched: editors and
/// the kubelet replace files (and the `..data` link of a ConfigMap) rather than write them.
/// Only events on the config itself wake the agent: that file (or, for a directory, its
/// `*.yaml`/`*.yml` files) and `..data`. Anything else there, such as a log file the agent
/// itself writes, would otherwise wake it on every write.
fn watch(path: &Path, tx: mpsc::Sender<()>) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let interest = if path.is_dir() {
        Interest::ConfigDir(path.to_path_buf())
    } else {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Interest::File(
            dir.to_path_buf(),
            path.file_name().unwrap_or_default().into(),
        )
    };
    let interest = interest.absolute();
    let dir = interest.dir().to_path_buf();
    let interests = [interest];
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| concerns(&interests, &e)) {
            // A full channel already holds a wake-up; dropping this one loses nothing.
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Watches the credential files and directories (mounted secrets are swapped like ConfigMaps,
/// so a directory is watched recursively). `None` when there is nothing to watch or the
/// watcher fails: lookups still see changes by size and mtime. Only the declared files (and a
/// `..data` swap beside them) and whatever is below a declared directory wake the agent.
fn watch_credentials(
    sources: &[CredentialSource],
    tx: mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let mut interests = Vec::new();
    for path in sources.iter().flat_map(|s| s.watched_paths()) {
        if path.is_dir() {
            interests.push(Interest::Tree(path));
        } else if let (Some(parent), Some(name)) = (path.parent(), path.file_name()) {
            // The file itself may be replaced (a rename, a `..data` swap): watch its folder.
            if parent.is_dir() {
                interests.push(Interest::File(parent.to_path_buf(), name.into()));
            }
        }
    }
    if interests.is_empty() {
        return None;
    }
    let interests: Vec<Interest> = interests.into_iter().map(Interest::absolute).collect();
    let targets: Vec<(PathBuf, RecursiveMode)> = interests
        .iter()
        .map(|i| match i {
            Interest::Tree(dir) => (dir.clone(), RecursiveMode::Recursive),
            other => (other.dir().to_path_buf(), RecursiveMode::NonRecursive),
        })
        .collect();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| concerns(&interests, &e)) {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| tracing::warn!("cannot watch credential files, checking their size and mtime on every pull instead: {e}"))
    .ok()?;
    for (target, mode) in targets {
        if let Err(e) = watcher.watch(&target, mode) {
            tracing::debug!(path = %target.display(), "not watching: {e}");
        }
    }
    Some(watcher)
}

/// What a watcher acts on.
enum Interest {
    /// One file of a directory (by name), or that directory's `..data` link.
    File(PathBuf, std::ffi::OsString),
    /// A config directory: its `*.yaml`/`*.yml` files (not hidden) and its `..data` link.
    ConfigDir(PathBuf),
    /// Anything below a directory.
    Tree(PathBuf),
}

impl Interest {
    /// notify reports paths as the watched one joined to the current directory, like this.
    fn absolute(self) -> Interest {
        let abs = |p: PathBuf| std::env::current_dir().map(|c| c.join(&p)).unwrap_or(p);
        match self {
            Interest::File(dir, name) => Interest::File(abs(dir), name),
            Interest::ConfigDir(dir) => Interest::ConfigDir(abs(dir)),
            Interest::Tree(dir) => Interest::Tree(abs(dir)),
        }
    }

    fn dir(&self) -> &Path {
        match self {
            Interest::File(dir, _) | Interest::ConfigDir(dir) | Interest::Tree(dir) => dir,
        }
    }

    fn covers(&self, path: &Path) -> bool {
        let name = path.file_name().unwrap_or_default();
        let beside = || path.parent() == Some(self.dir());
        match self {
            Interest::File(_, file) => beside() && (name == file.as_os_str() || name == "..data"),
            Interest::ConfigDir(_) => {
                let name = name.to_string_lossy();
                beside()
                    && (name == "..data"
                        || !name.starts_with('.')
                            && (name.ends_with(".yaml") || name.ends_with(".yml")))
            }
            Interest::Tree(dir) => path.starts_with(dir),
        }
    }
}

/// Whether an event concerns the watched files. An event without paths (the kernel's queue
/// overflowed: some events were lost) counts, so nothing is missed.
fn concerns(interests: &[Interest], event: &notify::Event) -> bool {
    !is_read(&event.kind)
        && (event.paths.is_empty()
            || event
                .paths
                .iter()
                .any(|p| interests.iter().any(|i| i.covers(p))))
}

/// Opening and reading files are events too; the agent's own reads must not wake it.
fn is_read(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    matches!(kind, EventKind::Access(a) if *a != AccessKind::Close(AccessMode::Write))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::RuntimeError;
    use crate::runtime::fake::FakeRuntime;
    use tonic::Code;

    struct Setup {
        rt: Arc<FakeRuntime>,
        hub: Arc<StatusHub>,
        agent: Agent<FakeRuntime>,
        _dir: tempfile::TempDir,
        path: PathBuf,
    }

    fn setup(yaml: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.yaml");
        std::fs::write(&path, yaml).unwrap();
        let config = Config::load(&path).unwrap();
        let rt = Arc::new(FakeRuntime::new());
        let hub = Arc::new(StatusHub::new(
            None,
            path.display().to_string(),
            "unix:///fake".into(),
        ));
        let agent = Agent::new(
            rt.clone(),
            hub.clone(),
            Arc::new(Metrics::new()),
            path.clone(),
            config,
        );
        Setup {
            rt,
            hub,
            agent,
            _dir: dir,
            path,
        }
    }

    impl<R: Runtime> Agent<R> {
        /// Waits for every pull task and records its end, as the run loop would.
        async fn settle(&mut self) {
            loop {
                self.start_due();
                if self.queue.is_empty() {
                    return;
                }
                let wake = self.queue.next_wake(&self.puller);
                tokio::select! {
                    Some(end) = self.queue.join_next() => {
                        if let Some(done) = self.settle_attempt(end) {
                            self.finish(done).await;
                        }
                    }
                    _ = sleep_until_some(wake), if wake.is_some() => {}
                }
            }
        }
    }

    /// An image removed (its pull cancelled) and declared again before the cancelled task is
    /// reaped: the new pull keeps its place, and no second pull of it starts.
    #[tokio::test(start_paused = true)]
    async fn a_reaped_cancelled_task_does_not_orphan_the_new_pull_of_its_image() {
        let mut s = setup("images: [r.example/a:1]");
        s.rt.set_pull_delay(Duration::from_secs(100));
        let cancel = CancellationToken::new();
        s.agent.resync(&cancel).await;
        tokio::time::sleep(Duration::from_secs(1)).await; // a is pulling
        std::fs::write(&s.path, "images: [r.example/b:1]").unwrap();
        assert!(s.agent.reload().await, "a removed: its pull is cancelled");
        std::fs::write(&s.path, "images: [r.example/a:1]").unwrap();
        assert!(s.agent.reload().await, "a declared again");
        s.agent.resync(&cancel).await;
        // The cancelled attempt of a ends first, and is reaped.
        let end = s.agent.queue.join_next().await.unwrap();
        assert!(end.2.result.is_none(), "the cut pull ends cancelled");
        assert!(s.agent.settle_attempt(end).is_none());
        s.agent.resync(&cancel).await;
        s.agent.settle().await;
        let stats = s.rt.stats();
        assert_eq!(stats.max_in_flight, 1, "two pulls of a at once");
        assert_eq!(
            stats.pulls.len(),
            2,
            "the cut pull, then one: {:?}",
            stats.pulls
        );
    }

    /// The watcher reports changes; a pass re-reads the files only once per resync interval, as
    /// a fallback, not on every pass (runtime retries, pull wake-ups).
    #[tokio::test(start_paused = true)]
    async fn passes_re_read_the_config_once_per_resync_interval() {
        let mut s = setup("resyncInterval: 1m\nimages: [r.example/a:1]");
        let cancel = CancellationToken::new();
        std::fs::write(
            &s.path,
            "resyncInterval: 1m\nimages: [r.example/a:1, r.example/b:1]",
        )
        .unwrap();
        tokio::time::advance(Duration::from_secs(30)).await;
        s.agent.pass(&cancel).await;
        assert_eq!(
            s.hub.snapshot().images.len(),
            1,
            "re-read before a resync interval"
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        s.agent.pass(&cancel).await;
        assert_eq!(s.hub.snapshot().images.len(), 2, "the fallback re-read");
        s.agent.settle().await;
    }

    fn state(hub: &StatusHub, key: &str) -> ImageState {
        hub.snapshot()
            .images
            .iter()
            .find(|i| i.normalized == key)
            .unwrap()
            .state
    }

    #[tokio::test(start_paused = true)]
    async fn one_list_per_resync_and_no_pulls_when_everything_is_present() {
        let mut s = setup("images: [r.example/a:1, r.example/b:1]");
        s.rt.add_image("r.example/a:1", 10);
        let cancel = CancellationToken::new();
        assert!(s.agent.resync(&cancel).await);
        s.agent.settle().await;
        assert_eq!(s.rt.stats().pulls, vec!["r.example/b:1"]);
        assert!(s.hub.is_ready());
        s.agent.resync(&cancel).await;
        s.agent.settle().await;
        let stats = s.rt.stats();
        assert_eq!(stats.list_calls, 2);
        assert_eq!(stats.pulls.len(), 1, "nothing pulled when all present");
    }

    #[tokio::test(start_paused = true)]
    async fn removed_images_are_pulled_again_on_the_next_resync() {
        let mut s = setup("images: [r.example/a:1]");
        let cancel = CancellationToken::new();
        s.agent.resync(&cancel).await;
        s.agent.settle().await;
        s.rt.remove_image("r.example/a:1");
        s.agent.resync(&cancel).await;
        assert!(!s.hub.is_ready(), "missing while the pull runs");
        s.agent.settle().await;
        assert_eq!(s.rt.stats().pulls.len(), 2);
        assert_eq!(state(&s.hub, "r.example/a:1"), ImageState::Present);
    }

    #[tokio::test(start_paused = true)]
    async fn always_images_are_refreshed_and_drift_is_reported() {
        let mut s = setup("images:\n  - image: r.example/app:latest\n    refreshInterval: 10m\n");
        let cancel = CancellationToken::new();
        let mut events = s.hub.subscribe();
        s.agent.resync(&cancel).await;
        s.agent.settle().await;
        // Within the refresh interval: no pull.
        tokio::time::advance(Duration::from_secs(60)).await;
        s.agent.resync(&cancel).await;
        s.agent.settle().await;
        assert_eq!(s.rt.stats().pulls.len(), 1);
        // The tag now points elsewhere; after the interval the refresh sees it.
        let new = format!("sha256:{}", "b".repeat(64));
        s.rt.set_repo_digest("r.example/app", &new);
        tokio::time::advance(Duration::from_secs(600)).await;
        s.agent.resync(&cancel).await;
        assert!(
            s.hub.is_ready(),
            "a refresh does not make a present image unready"
        );
        s.agent.settle().await;
        assert_eq!(s.rt.stats().pulls.len(), 2);
        let status = s.hub.snapshot();
        let drift = status.images[0].drift.as_deref().unwrap();
        assert!(
            drift.starts_with("tag drift: sha256:") && drift.ends_with(&new),
            "{drift}"
        );
        let mut saw_drift = false;
        while let Ok(e) = events.try_recv() {
            saw_drift |= matches!(e.kind, AgentEventKind::Drift { .. });
        }
        assert!(saw_drift);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failures_wait_for_the_longest_backoff() {
        let mut s = setup("backoff: {initial: 1s, max: 5m}\nimages: [r.example/gone:1]");
        let not_found = || {
            Err(RuntimeError::new(
                Code::NotFound,
                "r.example/gone:1: not found",
            ))
        };
        s.rt.script_pulls("r.example/gone:1", [not_found(), not_found()]);
        let cancel = CancellationToken::new();
        s.agent.resync(&cancel).await;
        s.agent.settle().await;
        assert_eq!(state(&s.hub, "r.example/gone:1"), ImageState::Failed);
        tokio::time::advance(Duration::from_secs(60)).await;
        s.agent.resync(&cancel).await;
        s.agent.settle().await;
        assert_eq!(s.rt.stats().pulls.len(), 1, "not retried hot");
        tokio::time::advance(Duration::from_secs(300)).await;
        s.agent.resync(&cancel).await;
        s.agent.settle().await;
        assert_eq!(s.rt.stats().pulls.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_bad_reload_keeps_the_last_good_config() {
        let mut s = setup("images: [r.example/a:1]");
        std::fs::write(&s.path, "images: [r.example/a:1, R.example/Bad:1]\n").unwrap();
        assert!(!s.agent.reload().await);
        let status = s.hub.snapshot();
        assert_eq!(status.config.generation, 1);
        assert!(
            status
                .config
                .last_error
                .as_deref()
                .unwrap()
                .contains("lowercase")
        );
        assert_eq!(status.images.len(), 1);
        // Putting the old text back clears the error without a new generation.
        std::fs::write(&s.path, "images: [r.example/a:1]").unwrap();
        assert!(!s.agent.reload().await);
        let status = s.hub.snapshot();
        assert_eq!(status.config.generation, 1);
        assert_eq!(status.config.last_error, None);
        std::fs::write(&s.path, "images: [r.example/a:1, r.example/b:1]\n").unwrap();
        assert!(s.agent.reload().await);
        let status = s.hub.snapshot();
        assert_eq!(status.config.generation, 2);
        assert_eq!(status.config.last_error, None);
        assert_eq!(status.images.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_runtime_is_reported_then_recovered() {
        let mut s = setup("images: [r.example/a:1]");
        s.rt.set_available(false);
        let cancel = CancellationToken::new();
        assert!(!s.agent.resync(&cancel).await);
        let status = s.hub.snapshot();
        assert!(!status.runtime.reachable);
        assert!(status.runtime.last_error.is_some());
        s.rt.set_available(true);
        assert!(s.agent.resync(&cancel).await);
        s.agent.settle().await;
        let status = s.hub.snapshot();
        assert_eq!(status.runtime.name.as_deref(), Some("fake"));
        assert!(status.ready);
    }

    /// A runtime socket that accepts and never answers (issue 9): SIGTERM must still end the
    /// agent at once, not after the call's 30 s deadline.
    #[tokio::test(start_paused = true)]
    async fn cancellation_is_seen_while_a_runtime_call_hangs() {
        let Setup {
            rt, agent, _dir, ..
        } = setup("images: [r.example/a:1]");
        rt.set_hanging(true);
        let cancel = CancellationToken::new();
        let run = tokio::spawn(agent.run(cancel.clone()));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            rt.stats().list_calls,
            1,
            "the first pass waits on ListImages"
        );
        let cancelled_at = Instant::now();
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(2), run)
            .await
            .expect("the agent did not stop within the documented 2 s")
            .unwrap();
        assert!(
            cancelled_at.elapsed() < Duration::from_millis(100),
            "{:?}",
            cancelled_at.elapsed()
        );
    }

    #[tokio::test]
    async fn the_watcher_wakes_on_a_replaced_file_but_not_on_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.yaml");
        std::fs::write(&path, "images: [r.example/a:1]").unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let _watcher = watch(&path, tx).unwrap();
        for _ in 0..3 {
            Config::load(&path).unwrap();
        }
        // inotify delivers within milliseconds; a read would have woken us by now.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(rx.try_recv().is_err(), "reading the config woke the agent");
        // Editors and config tools replace the file with a rename.
        let tmp = dir.path().join("images.yaml.tmp");
        std::fs::write(&tmp, "images: [r.example/a:1, r.example/b:1]").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("no wake-up after the file was replaced");
    }

    /// A docker config.json with user `bot` and `password` for r.example.
    fn write_bot_login(path: &Path, password: &str) {
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("bot:{password}"));
        std::fs::write(
            path,
            format!(r#"{{"auths": {{"r.example": {{"auth": "{auth}"}}}}}}"#),
        )
        .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_image_is_retried_as_soon_as_the_credentials_change() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("config.json");
        let write = |password: &str| write_bot_login(&creds, password);
        write("expired");
        let mut s = setup(&format!(
            "backoff: {{initial: 1s, max: 1h}}\ncredentials:\n  - dockerConfig: {}\nimages: [r.example/private:1]",
            creds.display()
        ));
        s.rt.require_login("r.example", "bot", "rotated");
        let cancel = CancellationToken::new();
        s.agent.pass(&cancel).await;
        s.agent.settle().await;
        assert_eq!(state(&s.hub, "r.example/private:1"), ImageState::Failed);
        s.agent.pass(&cancel).await;
        s.agent.settle().await;
        assert_eq!(
            s.rt.stats().pulls.len(),
            1,
            "refused: waits for backoff.max (1h)"
        );
        write("rotated");
        s.agent.pass(&cancel).await;
        s.agent.settle().await;
        assert_eq!(state(&s.hub, "r.example/private:1"), ImageState::Present);
        assert_eq!(s.rt.stats().pulls.len(), 2);
    }

    /// The watcher's word makes the files be read again, even a rewrite that kept the size and
    /// the mtime, which the lookup's own stat check cannot tell from the old file.
    #[tokio::test]
    async fn a_credentials_event_rereads_a_file_the_stat_check_cannot_tell_apart() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("config.json");
        let write = |password: &str| write_bot_login(&creds, password);
        write("expired");
        let s = setup(&format!(
            "backoff: {{initial: 1s, max: 1h}}\ncredentials:\n  - dockerConfig: {}\nimages: [r.example/private:1]",
            creds.display()
        ));
        s.rt.require_login("r.example", "bot", "rotated");
        let wait_for = |want: ImageState| {
            let hub = s.hub.clone();
            async move {
                for _ in 0..200 {
                    if state(&hub, "r.example/private:1") == want {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                panic!(
                    "not {want:?} within 10 s: {:?}",
                    state(&hub, "r.example/private:1")
                );
            }
        };
        let cancel = CancellationToken::new();
        let checks = async {
            wait_for(ImageState::Failed).await;
            // Same length; the mtime put back as if written within the same tick.
            let mtime = std::fs::metadata(&creds).unwrap().modified().unwrap();
            write("rotated");
            std::fs::File::options()
                .write(true)
                .open(&creds)
                .unwrap()
                .set_modified(mtime)
                .unwrap();
            wait_for(ImageState::Present).await;
            cancel.cancel();
        };
        tokio::join!(s.agent.run(cancel.clone()), checks);
        assert_eq!(s.rt.stats().pulls.len(), 2);
    }

    /// Issue 10: with many images backing off, on a host its breaker pauses and on their own
    /// back-off with every slot busy, the run loop wakes only when an attempt ends or a record
    /// falls due: its one timer is never in the past. Over an hour of virtual time, with the
    /// documented defaults (back-off 10 s to 5 min, 3 slots), each turn is at most one attempt
    /// ending plus one wake to start it, plus the passes.
    #[tokio::test(start_paused = true)]
    async fn the_loop_sleeps_while_many_images_back_off() {
        const DOWN: usize = 500;
        const SLOW: usize = 30;
        let mut yaml = String::from("images:\n");
        for i in 0..DOWN {
            yaml.push_str(&format!("  - down.example/img{i}:1\n"));
        }
        for i in 0..SLOW {
            yaml.push_str(&format!("  - slow.example/img{i}:1\n"));
        }
        let Setup {
            rt, agent, _dir, ..
        } = setup(&yaml);
        rt.set_registry_down("down.example", true);
        // Every attempt takes 20 s and times out: the three slots stay busy while records are
        // due, and each slow image backs off on its own (a timeout says nothing of the host).
        rt.set_pull_delay(Duration::from_secs(20));
        for i in 0..SLOW {
            rt.script_pulls(
                &format!("slow.example/img{i}:1"),
                (0..1000).map(|_| Err(RuntimeError::new(Code::Cancelled, "Timeout expired"))),
            );
        }
        let turns = agent.turns.clone();
        let cancel = CancellationToken::new();
        let run = tokio::spawn(agent.run(cancel.clone()));
        // 3 slots of 20 s attempts: at most 540 attempts an hour; the passes, one a minute.
        let limit = 2 * 3600 / 20 * 3 + 2 * 60 + 50;
        let step = Duration::from_secs(10);
        let mut elapsed = Duration::ZERO;
        while elapsed < Duration::from_secs(3600) {
            tokio::time::advance(step).await;
            elapsed += step;
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
            let n = turns.load(std::sync::atomic::Ordering::Relaxed);
            assert!(
                n <= limit,
                "the agent's loop ran {n} times in {elapsed:?} (virtual): it spins"
            );
        }
        let attempts = rt.stats().pulls.len();
        let n = turns.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!("an hour: {n} loop turns, {attempts} attempts");
        assert!(attempts > 100, "the slow images were retried: {attempts}");
        cancel.cancel();
        run.await.unwrap();
    }
}
