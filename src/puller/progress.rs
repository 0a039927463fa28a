//! Byte-level progress of the pulls in flight: a poller task reads the runtime's active
//! ingests ([`ContentProgress`]) at most every [`POLL_EVERY`] while at least one pull runs,
//! and not at all otherwise (it waits on a notification, no timer), attributes them to images,
//! and hands each image's bytes, total and rate to a sink.
//!
//! Attribution: an ingest names a blob (`layer-sha256:…`), not an image. Each pull looks up
//! the manifests its repository committed since it started (a retry: any of them, as the
//! first attempt fetched it; containerd labels them with their source and their layers), which
//! gives its blobs, their sizes (the total) and those already stored; an ingest of one of those blobs belongs to it (a layer two pulls share counts for
//! both). Ingests no manifest claims go to the one pull whose manifest is not known yet, if
//! there is exactly one (so a single pull shows bytes from its first poll); with several such
//! pulls they are not attributed. A blob whose ingest disappeared is counted as complete.
//!
//! A runtime without a content service (CRI-O) answers `Unsupported` on the first poll: the
//! poller logs one debug line and ends, and the views keep showing elapsed time.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::reference::ImageRef;
use crate::runtime::{ContentProgress, Ingest, ManifestBlobs, ProgressError};

/// The runtime is asked at most this often per poller (one per pull run, one per agent).
pub const POLL_EVERY: Duration = Duration::from_millis(250);
/// The rate is the bytes fetched over about this long.
const RATE_WINDOW: Duration = Duration::from_secs(3);
/// A pull whose manifest is not found yet looks again at most this often.
const MANIFEST_RETRY: Duration = Duration::from_secs(1);
/// containerd's timestamps are compared in whole seconds; a little slack for clock reads.
const SINCE_SLACK: Duration = Duration::from_secs(5);
/// A manifest is fetched first, within a second or so; after this many looks without one the
/// pull shows bytes only (listing a large content store each second would cost for nothing).
const MAX_LOOKUPS: u32 = 10;

/// How far one image's pull in flight is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PullBytes {
    /// Bytes fetched so far by this attempt.
    pub done: u64,
    /// The bytes this attempt has to fetch (its blobs not already stored), once its manifest
    /// is known.
    pub total: Option<u64>,
    /// Bytes per second over the last few seconds, once there are two samples.
    pub per_second: Option<u64>,
}

/// One image's progress, for the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressUpdate {
    /// The queue record.
    pub id: u64,
    /// The image's position in the caller's list.
    pub n: usize,
    /// The image's normalized reference.
    pub image: String,
    pub bytes: PullBytes,
}

/// Where updates go, called by the poller after each poll (with the attribution locked, so an
/// image whose attempt ended is never reported after its end).
pub type ProgressSink = Arc<dyn Fn(Vec<ProgressUpdate>) + Send + Sync>;

/// One pull in flight.
struct Tracked {
    n: usize,
    image: String,
    host: String,
    repository: String,
    /// Manifests committed after this are looked at.
    since: SystemTime,
    /// Blob → (size, stored before this pull fetched it), once the manifest is known.
    blobs: Option<HashMap<String, (u64, bool)>>,
    /// Last look for the manifest, and how many so far.
    looked: Option<Instant>,
    lookups: u32,
    /// Blobs seen being fetched: last offset and total.
    seen: HashMap<String, (u64, Option<u64>)>,
    samples: VecDeque<(Instant, u64)>,
    /// The most reported so far: what an attempt has fetched never goes back (when its
    /// manifest turns up, the small blobs fetched before it may be left out of the count).
    reported: u64,
}

/// The pulls in flight and what their ingests add up to: pure bookkeeping, tested without a
/// runtime.
#[derive(Default)]
pub struct Attribution {
    pulls: HashMap<u64, Tracked>,
}

impl Attribution {
    /// Pull `id` of image `n` began; its manifest is one committed at or after `since`.
    pub fn begin(&mut self, id: u64, n: usize, reference: &ImageRef, since: SystemTime) {
        self.pulls.insert(
            id,
            Tracked {
                n,
                image: reference.to_string(),
                host: reference.domain().to_string(),
                repository: reference.path().to_string(),
                since,
                blobs: None,
                looked: None,
                lookups: 0,
                seen: HashMap::new(),
                samples: VecDeque::new(),
                reported: 0,
            },
        );
    }

    pub fn end(&mut self, id: u64) {
        self.pulls.remove(&id);
    }

    pub fn is_idle(&self) -> bool {
        self.pulls.is_empty()
    }

    /// The pulls whose manifest should be looked up now: (id, host, repository, since).
    pub fn manifests_wanted(&mut self, now: Instant) -> Vec<(u64, String, String, SystemTime)> {
        self.pulls
            .iter_mut()
            .filter(|(_, t)| t.blobs.is_none() && t.lookups < MAX_LOOKUPS)
            .filter(|(_, t)| t.looked.is_none_or(|at| now >= at + MANIFEST_RETRY))
            .map(|(&id, t)| {
                t.looked = Some(now);
                t.lookups += 1;
                (id, t.host.clone(), t.repository.clone(), t.since)
            })
            .collect()
    }

    /// The manifests found for pull `id` (none: looked again later).
    pub fn set_manifests(&mut self, id: u64, manifests: Vec<ManifestBlobs>) {
        let Some(t) = self.pulls.get_mut(&id) else {
            return;
        };
        if manifests.is_empty() {
            return;
        }
        let mut blobs = HashMap::new();
        for m in manifests {
            for (digest, size, stored) in m.blobs {
                blobs.insert(digest, (size, stored));
            }
        }
        t.blobs = Some(blobs);
    }

    /// Attributes the ingests of one poll taken at `now`; one update per pull that has bytes.
    pub fn observe(&mut self, ingests: &[Ingest], now: Instant) -> Vec<ProgressUpdate> {
        let claimed: HashSet<&str> = self
            .pulls
            .values()
            .filter_map(|t| t.blobs.as_ref())
            .flat_map(|b| b.keys().map(String::as_str))
            .collect();
        let unknown = self.pulls.values().filter(|t| t.blobs.is_none()).count();
        let unclaimed: Vec<&Ingest> = ingests
            .iter()
            .filter(|i| !claimed.contains(i.digest.as_str()))
            .collect();
        let active: HashMap<&str, &Ingest> =
            ingests.iter().map(|i| (i.digest.as_str(), i)).collect();
        let mut updates = Vec::new();
        for (&id, t) in &mut self.pulls {
            let mine: Vec<&Ingest> = match &t.blobs {
                Some(blobs) => ingests
                    .iter()
                    .filter(|i| blobs.contains_key(&i.digest))
                    .collect(),
                None if unknown == 1 => unclaimed.clone(),
                None => Vec::new(),
            };
            for i in mine {
                t.seen.insert(i.digest.clone(), (i.offset, i.total));
            }
            let Some(bytes) = t.bytes(&active, now) else {
                continue;
            };
            updates.push(ProgressUpdate {
                id,
                n: t.n,
                image: t.image.clone(),
                bytes,
            });
        }
        updates.sort_by_key(|u| u.n);
        updates
    }
}

impl Tracked {
    /// Bytes done (and the total, the rate) after a poll; `None` while nothing is known.
    fn bytes(&mut self, active: &HashMap<&str, &Ingest>, now: Instant) -> Option<PullBytes> {
        // A blob seen earlier whose ingest is gone was committed (or the attempt is ending).
        let fetched = |digest: &str, seen: &(u64, Option<u64>)| match active.get(digest) {
            Some(i) => i.offset,
            None => seen.1.unwrap_or(seen.0),
        };
        let (done, total) = match &self.blobs {
            Some(blobs) => {
                let mut done = 0;
                let mut total = 0;
                for (digest, &(size, stored)) in blobs {
                    if stored {
                        continue;
                    }
                    total += size;
                    if let Some(seen) = self.seen.get(digest) {
                        done += fetched(digest, seen).min(size);
                    }
                }
                (done, Some(total))
            }
            None if self.seen.is_empty() => return None,
            None => (self.seen.iter().map(|(d, s)| fetched(d, s)).sum(), None),
        };
        let done = done.max(self.reported);
        self.reported = done;
        self.samples.push_back((now, done));
        while self
            .samples
            .front()
            .is_some_and(|&(at, _)| now.duration_since(at) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        let per_second = match (self.samples.front(), self.samples.back()) {
            (Some(&(t0, b0)), Some(&(t1, b1))) if t1 > t0 => {
                let secs = t1.duration_since(t0).as_secs_f64();
                Some((b1.saturating_sub(b0) as f64 / secs) as u64)
            }
            _ => None,
        };
        Some(PullBytes {
            done,
            total,
            per_second,
        })
    }
}

struct Shared {
    attribution: Mutex<Attribution>,
    /// A pull began: wakes an idle poller.
    began: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Attribution> {
        self.attribution.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The poller task of one pull queue; cancelled by [`ProgressPoller::stop`] or when dropped.
pub struct ProgressPoller {
    shared: Arc<Shared>,
    cancel: CancellationToken,
}

impl ProgressPoller {
    /// Starts the task; it sleeps on a notification until the first pull begins.
    pub fn start<S: ContentProgress>(source: Arc<S>, sink: ProgressSink) -> ProgressPoller {
        let shared = Arc::new(Shared {
            attribution: Mutex::new(Attribution::default()),
            began: Notify::new(),
        });
        let cancel = CancellationToken::new();
        tokio::spawn(poll(source, shared.clone(), sink, cancel.clone()));
        ProgressPoller { shared, cancel }
    }

    /// Attempt `attempt` (`id`) of image `n` started. A first attempt looks for the manifests
    /// committed since; a retry for any of its repository (an earlier attempt fetched it).
    pub fn begin(&self, id: u64, n: usize, reference: &ImageRef, attempt: u32) {
        let since = match attempt {
            1 => SystemTime::now()
                .checked_sub(SINCE_SLACK)
                .unwrap_or(SystemTime::UNIX_EPOCH),
            _ => SystemTime::UNIX_EPOCH,
        };
        self.shared.lock().begin(id, n, reference, since);
        self.shared.began.notify_one();
    }

    /// Attempt `id` ended: nothing more is reported for it.
    pub fn end(&self, id: u64) {
        self.shared.lock().end(id);
    }

    pub fn stop(&self) {
        self.cancel.cancel();
    }
}

impl Drop for ProgressPoller {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn poll<S: ContentProgress>(
    source: Arc<S>,
    shared: Arc<Shared>,
    sink: ProgressSink,
    cancel: CancellationToken,
) {
    let mut failing = false;
    loop {
        // Idle: no timer, only the notification of a pull beginning.
        while shared.lock().is_idle() {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = shared.began.notified() => {}
            }
        }
        let next = Instant::now() + POLL_EVERY;
        let step = async {
            let ingests = source.ingests().await?;
            let wanted = shared.lock().manifests_wanted(Instant::now());
            let mut found = Vec::new();
            for (id, host, repository, since) in wanted {
                found.push((id, source.manifests(&host, &repository, since).await?));
            }
            Ok::<_, ProgressError>((ingests, found))
        };
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            r = step => r,
        };
        match result {
            Ok((ingests, found)) => {
                failing = false;
                let mut attribution = shared.lock();
                for (id, manifests) in found {
                    attribution.set_manifests(id, manifests);
                }
                let updates = attribution.observe(&ingests, Instant::now());
                if !updates.is_empty() {
                    sink(updates);
                }
            }
            Err(ProgressError::Unsupported(m)) => {
                tracing::debug!(
                    "no byte-level pull progress (the runtime has no containerd content service: {m}); showing elapsed time"
                );
                return;
            }
            Err(e @ ProgressError::Failed(_)) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::debug!("{e}; trying again while pulls run");
                }
            }
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
    }
}

#[cfg(test)]
mod tests;
