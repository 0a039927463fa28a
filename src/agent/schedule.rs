//! What to pull when: each resync compares the runtime's images with the declared ones and
//! queues those that need a pull; the queue ([`PullQueue`]) starts them into free slots of the
//! [`Puller`], and what an image's pulls ended with decides when it is tried again.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::time::Instant;

use crate::config::{Config, ImageSpec, PullPolicy};
use crate::credentials::Credentials;
use crate::puller::{AttemptEnd, PullEvent, PullResult, PullSettings, Puller};
use crate::puller::{Finished, PullQueue};
use crate::runtime::{ErrorKind, ImageInfo, Runtime};

use super::Context;
use super::disk::{Candidate, DiskGuard};
use super::project::{self, Mark};

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

/// What the queue keeps for an image besides its back-off: its key and status live in
/// `names` and the status, by position.
pub(super) struct Pending {
    /// Present when queued (an `Always` refresh): its status stays Present meanwhile.
    was_present: bool,
    /// The repo digest before an `Always` refresh, to detect tag drift.
    previous_digest: Option<String>,
}

/// The pulling side of the agent: the puller, the queue in front of it, and what is known of
/// each declared image between passes.
pub(super) struct Schedule<R> {
    puller: Arc<Puller<R>>,
    /// Parallel to the images of the config in force.
    names: Vec<Names>,
    tracks: HashMap<String, Track>,
    /// The images that need a pull. A track names its image's record by id: the end of a
    /// cancelled attempt of an image that was removed and declared again is not taken for
    /// the end of the record that replaced it.
    queue: PullQueue<Pending>,
    /// Holds back pulls the image filesystem has no room for (see [`super::disk`]).
    disk: DiskGuard,
    /// The cluster-wide pull budget, handed to every puller (see `crate::fleet`).
    fleet: Option<Arc<dyn crate::fleet::FleetBudget>>,
}

impl<R: Runtime> Schedule<R> {
    /// Nothing declared yet: [`Schedule::follow`] gives it the config's images.
    pub(super) fn new(runtime: Arc<R>, config: &Config) -> Self {
        Schedule {
            puller: Arc::new(Puller::new(runtime, PullSettings::from(config))),
            names: Vec::new(),
            tracks: HashMap::new(),
            queue: PullQueue::new(false),
            disk: DiskGuard::default(),
            fleet: None,
        }
    }

    pub(super) fn set_fleet(&mut self, fleet: Option<Arc<dyn crate::fleet::FleetBudget>>) {
        self.puller.set_fleet(fleet.clone());
        self.fleet = fleet;
    }

    /// Notified when the fleet budget granted a slot.
    /// Shows this node's slots in the status (and so on the Node), when they changed.
    fn project_fleet(&self, ctx: &Context<R>) {
        let Some(fleet) = &self.fleet else { return };
        let now = Some(crate::status::FleetStatus {
            registries: fleet.registries(),
        });
        if ctx.hub.inspect(|s| s.fleet != now) {
            ctx.hub.update(|s| s.fleet = now);
        }
    }

    pub(super) fn fleet_changed(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.fleet.as_ref().map(|f| f.changed())
    }

    /// Where the host's `/` is mounted, to find the image filesystem the runtime names.
    pub(super) fn set_host_root(&mut self, host_root: Option<std::path::PathBuf>) {
        self.disk.set_host_root(host_root);
    }

    /// The credentials pulls use now.
    pub(super) fn credentials(&self) -> Arc<Credentials> {
        self.puller.credentials()
    }

    pub(super) fn set_credentials(&self, credentials: Arc<Credentials>) {
        self.puller.set_credentials(credentials);
    }

    /// The normalized references of the declared images, in config order.
    pub(super) fn keys(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|x| x.key.as_str())
    }

    /// Follows a new config: new pull settings make a new puller (in-flight pulls finish
    /// with the old one), images no longer declared stop pulling, and permanent failures are
    /// retried (the config may have fixed them). `credentials_changed` when the config's
    /// credentials differ from what the puller has (always, for the first config).
    pub(super) fn follow(&mut self, ctx: &Context<R>, config: &Config, credentials_changed: bool) {
        if PullSettings::from(config) != *self.puller.settings() {
            // In-flight pulls finish with the old settings; new ones use the new slots.
            self.puller = Arc::new(Puller::with_credentials(
                ctx.runtime.clone(),
                PullSettings::from(config),
                ctx.credentials_for(config),
            ));
            self.puller.set_fleet(self.fleet.clone());
        } else if credentials_changed {
            self.puller.set_credentials(ctx.credentials_for(config));
        }
        self.names = config.images.iter().map(Names::of).collect();
        let positions: HashMap<&str, usize> = self
            .names
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
        self.disk.follow(
            config
                .images
                .iter()
                .zip(&self.names)
                .map(|(spec, x)| (x.key.as_str(), spec.reference.name())),
        );
    }

    /// Images the registry refused wait for `backoff.max`, unless the credentials change: then
    /// they are retried at once. Costs nothing while nothing was refused.
    pub(super) async fn retry_if_credentials_changed(&mut self) {
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

    /// One resync: one ListImages, then a pull task for each image that needs one. Returns
    /// whether the runtime answered.
    pub(super) async fn resync(&mut self, ctx: &Context<R>, config: &Config) -> bool {
        let images = match ctx.runtime.list_images().await {
            Ok(images) => images,
            Err(e) => {
                project::runtime_lost(&ctx.hub, &e);
                return false;
            }
        };
        if !ctx.hub.snapshot_runtime().reachable {
            let version = ctx.runtime.version().await.ok();
            project::runtime_reachable(&ctx.hub, version);
        }
        // Index the runtime's images by the names CRI reports, so each lookup is O(1).
        let mut by_name: HashMap<&str, &ImageInfo> = HashMap::with_capacity(images.len() * 2);
        for info in &images {
            for name in info.repo_tags.iter().chain(&info.repo_digests) {
                by_name.insert(name.as_str(), info);
            }
        }
        let now = Instant::now();
        if config.disk_guard.enabled {
            self.disk.learn(&images);
        }
        // Positions in the status, which lists the images in config order (see `follow`).
        let mut marks = Vec::new();
        let mut to_pull = Vec::new();
        for (n, (spec, names)) in config.images.iter().zip(&self.names).enumerate() {
            if !self.tracks.contains_key(&names.key) {
                self.tracks.insert(names.key.clone(), Track::default());
            }
            let track = &self.tracks[&names.key];
            if track.queued.is_some() {
                continue;
            }
            let at = (n, names.key.as_str());
            let found = by_name.get(names.lookup.as_str()).copied();
            if config.disk_guard.enabled {
                self.disk.seen(&names.key, found, now);
            }
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
                    marks.push((at, Mark::Present(info, digest)));
                }
                None if spec.policy == PullPolicy::Never => marks.push((at, Mark::NeverAbsent)),
                None => {}
            }
            if needs_pull && track.retry_after.is_none_or(|t| now >= t) {
                if found.is_none() {
                    marks.push((at, Mark::Waiting));
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
        let to_pull = if config.disk_guard.enabled {
            guard_disk(
                &mut self.disk,
                &self.names,
                ctx,
                config,
                to_pull,
                &mut marks,
            )
            .await
        } else {
            to_pull
        };
        project::marks(&ctx.hub, marks);
        for (n, pending) in to_pull {
            let key = &self.names[n].key;
            project::record_event(
                &ctx.hub,
                &ctx.metrics,
                (n, key),
                pending.was_present,
                PullEvent::Queued { index: n },
            );
            let id = self.queue.push(n, pending);
            if let Some(track) = self.tracks.get_mut(key) {
                track.queued = Some(id);
            }
        }
        self.start_due(ctx, config);
        true
    }

    /// The queue's timer: the earliest not-before time, always in the future here.
    pub(super) fn next_wake(&self) -> Option<Instant> {
        self.queue.next_wake(&self.puller)
    }

    /// The next attempt that ends; pends while none runs.
    pub(super) async fn join_next(&mut self) -> Option<(u64, String, AttemptEnd)> {
        self.queue.join_next().await
    }

    /// Starts the queued pulls that have a free slot and are due.
    pub(super) fn start_due(&mut self, ctx: &Context<R>, config: &Config) {
        if !self.queue.tracks_progress() {
            self.queue
                .track_progress(project::progress_sink(ctx.hub.clone()));
        }
        let mut on_event = recorder(ctx, &self.names);
        self.queue
            .start_due(&self.puller, &config.images, &mut on_event);
        self.project_fleet(ctx);
    }

    /// An attempt ended: its events are recorded; returns the image if it left the queue.
    pub(super) fn settle_attempt(
        &mut self,
        ctx: &Context<R>,
        end: (u64, String, AttemptEnd),
    ) -> Option<Finished<Pending>> {
        let mut on_event = recorder(ctx, &self.names);
        self.queue.settle(end, &self.puller, &mut on_event)
    }

    /// An image left the queue: remember what the next passes need, and detect tag drift.
    pub(super) async fn finish(
        &mut self,
        ctx: &Context<R>,
        config: &Config,
        done: Finished<Pending>,
    ) {
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
        let at = (done.n, key.as_str());
        match &done.outcome.result {
            PullResult::Pulled => {
                let size = done.outcome.image.as_ref().map(|i| i.size_bytes);
                self.disk.pulled(&key, size, Instant::now());
                track.last_refresh = Some(Instant::now());
                track.retry_after = None;
                track.refused_with = None;
                let info = done.outcome.image.as_ref();
                let digest = info.and_then(|i| i.repo_digest_for(&config.images[done.n].reference));
                project::pulled(
                    &ctx.hub,
                    at,
                    info,
                    digest,
                    done.key.previous_digest.as_deref(),
                );
            }
            PullResult::Failed(_) => {
                self.disk.ended(&key);
                // Permanent: the registry will answer the same until something changes.
                track.retry_after = Some(Instant::now() + config.backoff.max);
                track.refused_with = refused_with;
                if done.key.was_present {
                    project::refresh_failed(&ctx.hub, at);
                }
            }
            PullResult::AlreadyPresent | PullResult::Cancelled(_) => self.disk.ended(&key),
        }
    }

    /// Stops every pull; in-flight ones get `grace` to notice. The fleet slots are given back
    /// meanwhile, not after: the README promises them back within 300 ms of the signal, and
    /// no new pull starts once the queue is shutting down.
    pub(super) async fn shutdown(&mut self, grace: std::time::Duration) {
        let release = async {
            if let Some(fleet) = &self.fleet {
                // Bounded: the exit stays within the pod's grace; an unreleased slot expires.
                let release = fleet.release_all();
                let _ = tokio::time::timeout(std::time::Duration::from_millis(300), release).await;
            }
        };
        tokio::join!(self.queue.shutdown(grace), release);
    }
}

/// The disk guard's word on a resync's pulls: those it admits, required ones first; the others
/// are marked held back. Looks at the disk only when there is something to pull or an image is
/// held back.
async fn guard_disk<'a, R: Runtime>(
    disk: &mut DiskGuard,
    names: &'a [Names],
    ctx: &Context<R>,
    config: &Config,
    mut to_pull: Vec<(usize, Pending)>,
    marks: &mut Vec<(project::At<'a>, Mark<'a>)>,
) -> Vec<(usize, Pending)> {
    if to_pull.is_empty() && !disk.holding() {
        return to_pull;
    }
    // Required images first: they get the room, optional ones are held back first.
    to_pull.sort_by_key(|(n, _)| !config.images[*n].required);
    let settings = &config.disk_guard;
    let fs = disk.measure(&*ctx.runtime).await;
    let candidates: Vec<Candidate<'_>> = to_pull
        .iter()
        .map(|(n, _)| Candidate {
            key: &names[*n].key,
            repository: config.images[*n].reference.name(),
        })
        .collect();
    let holds = disk.decide(settings, &fs, &candidates);
    let mut admitted = Vec::with_capacity(to_pull.len());
    let mut held_keys = Vec::new();
    for ((n, pending), hold) in to_pull.into_iter().zip(holds) {
        match hold {
            None => admitted.push((n, pending)),
            Some(hold) => {
                let key = names[n].key.as_str();
                held_keys.push(key.to_string());
                marks.push(((n, key), Mark::HeldBack(hold)));
            }
        }
    }
    project::disk(&ctx.hub, disk.summary(settings, &fs, held_keys));
    admitted
}

/// The queue reports the puller's events through this: each is mirrored into the status.
fn recorder<'a, R>(
    ctx: &'a Context<R>,
    names: &'a [Names],
) -> impl FnMut(usize, &Pending, PullEvent) + 'a {
    move |n, pending, event| {
        if let Some(x) = names.get(n) {
            project::record_event(
                &ctx.hub,
                &ctx.metrics,
                (n, &x.key),
                pending.was_present,
                event,
            );
        }
    }
}

#[cfg(test)]
impl<R: Runtime> super::Agent<R> {
    /// Waits for every pull task and records its end, as the run loop would.
    pub(super) async fn settle(&mut self) {
        let (ctx, config, schedule) = (&self.ctx, &self.config, &mut self.schedule);
        loop {
            schedule.start_due(ctx, config);
            if schedule.queue.is_empty() {
                return;
            }
            let wake = schedule.next_wake();
            tokio::select! {
                Some(end) = schedule.queue.join_next() => {
                    if let Some(done) = schedule.settle_attempt(ctx, end) {
                        schedule.finish(ctx, config, done).await;
                    }
                }
                _ = crate::puller::sleep_until_some(wake), if wake.is_some() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;
    use tonic::Code;

    use crate::agent::testing::{setup, state, write_bot_login};
    use crate::runtime::RuntimeError;
    use crate::status::{AgentEventKind, ImageState};

    /// An image removed (its pull cancelled) and declared again before the cancelled task is
    /// reaped: the new pull keeps its place, and no second pull of it starts.
    #[tokio::test(start_paused = true)]
    async fn a_reaped_cancelled_task_does_not_orphan_the_new_pull_of_its_image() {
        let mut s = setup("images: [r.example/a:1]");
        s.rt.set_pull_delay(Duration::from_secs(100));
        s.agent.resync().await;
        tokio::time::sleep(Duration::from_secs(1)).await; // a is pulling
        std::fs::write(&s.path, "images: [r.example/b:1]").unwrap();
        assert!(s.agent.reload().await, "a removed: its pull is cancelled");
        std::fs::write(&s.path, "images: [r.example/a:1]").unwrap();
        assert!(s.agent.reload().await, "a declared again");
        s.agent.resync().await;
        // The cancelled attempt of a ends first, and is reaped.
        let end = s.agent.schedule.queue.join_next().await.unwrap();
        assert!(end.2.result.is_none(), "the cut pull ends cancelled");
        assert!(s.agent.schedule.settle_attempt(&s.agent.ctx, end).is_none());
        s.agent.resync().await;
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

    #[tokio::test(start_paused = true)]
    async fn one_list_per_resync_and_no_pulls_when_everything_is_present() {
        let mut s = setup("images: [r.example/a:1, r.example/b:1]");
        s.rt.add_image("r.example/a:1", 10);
        assert!(s.agent.resync().await);
        s.agent.settle().await;
        assert_eq!(s.rt.stats().pulls, vec!["r.example/b:1"]);
        assert!(s.hub.is_ready());
        s.agent.resync().await;
        s.agent.settle().await;
        let stats = s.rt.stats();
        assert_eq!(stats.list_calls, 2);
        assert_eq!(stats.pulls.len(), 1, "nothing pulled when all present");
    }

    #[tokio::test(start_paused = true)]
    async fn removed_images_are_pulled_again_on_the_next_resync() {
        let mut s = setup("images: [r.example/a:1]");
        s.agent.resync().await;
        s.agent.settle().await;
        s.rt.remove_image("r.example/a:1");
        s.agent.resync().await;
        assert!(!s.hub.is_ready(), "missing while the pull runs");
        s.agent.settle().await;
        assert_eq!(s.rt.stats().pulls.len(), 2);
        assert_eq!(state(&s.hub, "r.example/a:1"), ImageState::Present);
    }

    #[tokio::test(start_paused = true)]
    async fn always_images_are_refreshed_and_drift_is_reported() {
        let mut s = setup("images:\n  - image: r.example/app:latest\n    refreshInterval: 10m\n");
        let mut events = s.hub.subscribe();
        s.agent.resync().await;
        s.agent.settle().await;
        // Within the refresh interval: no pull.
        tokio::time::advance(Duration::from_secs(60)).await;
        s.agent.resync().await;
        s.agent.settle().await;
        assert_eq!(s.rt.stats().pulls.len(), 1);
        // The tag now points elsewhere; after the interval the refresh sees it.
        let new = format!("sha256:{}", "b".repeat(64));
        s.rt.set_repo_digest("r.example/app", &new);
        tokio::time::advance(Duration::from_secs(600)).await;
        s.agent.resync().await;
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
        s.agent.resync().await;
        s.agent.settle().await;
        assert_eq!(state(&s.hub, "r.example/gone:1"), ImageState::Failed);
        tokio::time::advance(Duration::from_secs(60)).await;
        s.agent.resync().await;
        s.agent.settle().await;
        assert_eq!(s.rt.stats().pulls.len(), 1, "not retried hot");
        tokio::time::advance(Duration::from_secs(300)).await;
        s.agent.resync().await;
        s.agent.settle().await;
        assert_eq!(s.rt.stats().pulls.len(), 2);
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
}
