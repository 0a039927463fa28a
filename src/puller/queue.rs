//! The images that need a pull, as a queue of small records: an attempt task exists only
//! while a pull runs, so memory follows `parallelism`, not the number of images waiting.
//!
//! A record is due at its not-before time (its back-off, or its registry's pause). Due
//! records start when their registry admits them and a global slot is free; one whose
//! registry is busy (slots taken, a probe under way) is parked on it until an attempt to
//! that registry ends. The caller drives the queue from one loop with one timer:
//! [`PullQueue::start_due`], then waits for [`PullQueue::join_next`] or
//! [`PullQueue::next_wake`], which is always in the future.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::backoff::full_jitter;
use super::gate::{Admission, trips_breaker};
use super::progress::{ProgressPoller, ProgressSink};
use super::{AttemptEnd, ImageOutcome, PullError, PullEvent, PullResult, Puller, Stage};
use crate::config::ImageSpec;
use crate::fleet::FleetAdmit;
use crate::runtime::{ErrorKind, Runtime};

/// What the queue keeps for one image: a few dozen bytes, plus the caller's `K`.
pub struct Record<K> {
    /// The image's position in the list the caller starts attempts from.
    pub n: usize,
    pub key: K,
    not_before: Instant,
    /// In the due heap with `not_before` (else parked, running, or just popped).
    due: bool,
    attempts: u32,
    /// Back-off doublings so far.
    step: u32,
    started: Instant,
    /// Cancels the running attempt, if one runs.
    running: Option<CancellationToken>,
    /// Kept only when the caller has nowhere else to keep it (`prepuller pull`).
    last_error: Option<Box<PullError>>,
}

/// An image that left the queue: pulled, failed for good, or cancelled.
pub struct Finished<K> {
    pub id: u64,
    pub n: usize,
    pub key: K,
    pub outcome: ImageOutcome,
}

/// Events go to the caller with the image's position and key.
pub type OnEvent<'a, K> = dyn FnMut(usize, &K, PullEvent) + 'a;

pub struct PullQueue<K> {
    records: HashMap<u64, Record<K>>,
    due: BinaryHeap<Reverse<(Instant, u64)>>,
    /// By registry: records waiting for an attempt to that registry to end.
    parked: HashMap<String, VecDeque<u64>>,
    running: JoinSet<(u64, String, AttemptEnd)>,
    next_id: u64,
    keep_errors: bool,
    /// Where byte-level progress goes, if the caller wants it; the poller starts with the
    /// first attempt (it needs the runtime).
    progress_sink: Option<ProgressSink>,
    progress: Option<ProgressPoller>,
}

impl<K> PullQueue<K> {
    /// `keep_errors`: keep each image's last error in its record (for a caller that reports it
    /// at the end; the agent keeps it in the status instead).
    pub fn new(keep_errors: bool) -> Self {
        PullQueue {
            records: HashMap::new(),
            due: BinaryHeap::new(),
            parked: HashMap::new(),
            running: JoinSet::new(),
            next_id: 0,
            keep_errors,
            progress_sink: None,
            progress: None,
        }
    }

    /// Reports the bytes of every attempt in flight to `sink` (see `puller::progress`).
    pub fn track_progress(&mut self, sink: ProgressSink) {
        self.progress_sink = Some(sink);
    }

    pub fn tracks_progress(&self) -> bool {
        self.progress_sink.is_some()
    }

    fn progress_ended(&self, id: u64) {
        if let Some(p) = &self.progress {
            p.end(id);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Queues image `n`, due now. Returns its id (for [`PullQueue::remove`]).
    pub fn push(&mut self, n: usize, key: K) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let now = Instant::now();
        self.records.insert(
            id,
            Record {
                n,
                key,
                not_before: now,
                due: false,
                attempts: 0,
                step: 0,
                started: now,
                running: None,
                last_error: None,
            },
        );
        self.schedule(id, now);
        id
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Record<K>> {
        self.records.get_mut(&id)
    }

    /// Forgets an image; its running attempt, if any, is cancelled.
    pub fn remove(&mut self, id: u64) {
        self.progress_ended(id);
        if let Some(r) = self.records.remove(&id)
            && let Some(token) = r.running
        {
            token.cancel();
        }
    }

    fn schedule(&mut self, id: u64, at: Instant) {
        if let Some(r) = self.records.get_mut(&id) {
            r.not_before = at;
            r.due = true;
            self.due.push(Reverse((at, id)));
        }
    }

    /// Makes parked records of `registry` due now: all of them, or the first `limit`.
    fn unpark(&mut self, registry: &str, limit: usize) {
        let Some(parked) = self.parked.get_mut(registry) else {
            return;
        };
        let mut ids = Vec::new();
        while ids.len() < limit {
            let Some(id) = parked.pop_front() else { break };
            if self.records.contains_key(&id) {
                ids.push(id);
            }
        }
        if parked.is_empty() {
            self.parked.remove(registry);
        }
        let now = Instant::now();
        for id in ids {
            self.schedule(id, now);
        }
    }

    /// Starts the due records that their registry admits, while global slots are free.
    /// `specs[n]` is the image of record `n`.
    pub fn start_due<R: Runtime>(
        &mut self,
        puller: &Arc<Puller<R>>,
        specs: &[ImageSpec],
        on_event: &mut OnEvent<'_, K>,
    ) where
        K: Send + 'static,
    {
        // Parked records wait for an attempt to end; with none running (a puller replaced
        // by a new config), nothing else would wake them.
        if self.running.is_empty() && !self.parked.is_empty() {
            let registries: Vec<String> = self.parked.keys().cloned().collect();
            for r in registries {
                self.unpark(&r, usize::MAX);
            }
        }
        let now = Instant::now();
        let fleet = puller.fleet();
        if let Some(fleet) = &fleet {
            // A slot is kept while its registry has pulls running, waiting, or due within a
            // lease duration; an image in a long back-off does not hold one meanwhile.
            let horizon = now + crate::config::DEFAULT_LEASE_DURATION;
            let needed: HashSet<&str> = self
                .records
                .values()
                .filter(|r| r.running.is_some() || !r.due || r.not_before <= horizon)
                .filter_map(|r| specs.get(r.n))
                .map(|s| s.reference.domain())
                .collect();
            fleet.retain(&|r| needed.contains(r));
            for registry in fleet.take_granted() {
                self.unpark(&registry, usize::MAX);
            }
        }
        while let Some(&Reverse((at, id))) = self.due.peek() {
            if at > now {
                break;
            }
            let Some(r) = self.records.get_mut(&id) else {
                self.due.pop();
                continue; // removed
            };
            if !r.due || r.not_before != at {
                self.due.pop();
                continue; // stale
            }
            let Some(spec) = specs.get(r.n) else {
                self.due.pop();
                continue;
            };
            if let Some(fleet) = &fleet {
                match fleet.admit(spec.reference.domain()) {
                    FleetAdmit::Go => {}
                    FleetAdmit::NotBefore(until) => {
                        self.due.pop();
                        self.schedule(id, until);
                        continue;
                    }
                    // Parked until the slot arrives (`take_granted` above).
                    FleetAdmit::Wait => {
                        self.due.pop();
                        r.due = false;
                        self.parked
                            .entry(spec.reference.domain().to_string())
                            .or_default()
                            .push_back(id);
                        continue;
                    }
                }
            }
            let gate = puller.gates.gate(spec.reference.domain());
            let admitted = match puller.gates.try_admit(&gate) {
                Admission::Full => break, // stays due: an attempt ending wakes the caller
                Admission::NotBefore(until) => {
                    self.due.pop();
                    self.schedule(id, until);
                    continue;
                }
                Admission::Blocked => {
                    self.due.pop();
                    r.due = false;
                    self.parked
                        .entry(spec.reference.domain().to_string())
                        .or_default()
                        .push_back(id);
                    continue;
                }
                Admission::Go(admitted) => admitted,
            };
            self.due.pop();
            r.due = false;
            r.attempts += 1;
            let token = CancellationToken::new();
            r.running = Some(token.clone());
            on_event(
                r.n,
                &r.key,
                PullEvent::Started {
                    index: r.n,
                    attempt: r.attempts,
                },
            );
            if let Some(sink) = &self.progress_sink {
                self.progress
                    .get_or_insert_with(|| {
                        ProgressPoller::start(puller.runtime().clone(), sink.clone())
                    })
                    .begin(id, r.n, &spec.reference, r.attempts);
            }
            let attempt = puller
                .clone()
                .attempt_admitted(spec.clone(), admitted, r.step, token);
            let registry = spec.reference.domain().to_string();
            self.running
                .spawn(async move { (id, registry, attempt.await) });
        }
    }

    /// When the caller must call [`PullQueue::start_due`] again, if no attempt ends first:
    /// the earliest not-before time, unless every global slot is taken. Always in the future
    /// right after `start_due`.
    pub fn next_wake<R: Runtime>(&self, puller: &Puller<R>) -> Option<Instant> {
        if !puller.gates.has_free_slot() {
            return None;
        }
        self.due.peek().map(|Reverse((at, _))| *at)
    }

    /// Waits for an attempt to end; `None` at once when none runs.
    pub async fn join_next(&mut self) -> Option<(u64, String, AttemptEnd)> {
        loop {
            match self.running.join_next().await? {
                Ok(end) => return Some(end),
                // A panicking attempt: its record would wait forever; say so loudly.
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => continue,
            }
        }
    }

    /// Records how an attempt ended: the image is done (returned), or due again after its
    /// back-off.
    pub fn settle<R: Runtime>(
        &mut self,
        (id, registry, end): (u64, String, AttemptEnd),
        puller: &Puller<R>,
        on_event: &mut OnEvent<'_, K>,
    ) -> Option<Finished<K>> {
        // Before its end is reported: no progress after it.
        self.progress_ended(id);
        // A probe's end changes the registry for every image; another end frees one slot.
        self.unpark(&registry, if end.probe { usize::MAX } else { 1 });
        let r = self.records.get_mut(&id)?;
        r.running = None;
        r.step = end.step;
        let (n, attempts) = (r.n, r.attempts);
        let result = match end.result {
            None => PullResult::Cancelled(Stage::Pulling),
            Some(Ok(info)) => {
                let elapsed = r.started.elapsed();
                on_event(
                    n,
                    &r.key,
                    PullEvent::Pulled {
                        index: n,
                        size_bytes: info.size_bytes,
                        elapsed,
                        attempts,
                    },
                );
                let mut f = self.finish(id, PullResult::Pulled)?;
                f.outcome.image = Some(info);
                return Some(f);
            }
            Some(Err(error)) if error.kind.is_permanent() => {
                on_event(
                    n,
                    &r.key,
                    PullEvent::Failed {
                        index: n,
                        error: error.clone(),
                        attempts,
                    },
                );
                let mut f = self.finish(id, PullResult::Failed(error.clone()))?;
                f.outcome.last_error = Some(error);
                return Some(f);
            }
            Some(Err(error)) => {
                if error.kind == ErrorKind::RateLimited
                    && let Some(fleet) = puller.fleet()
                {
                    // The CRI does not pass the registry's Retry-After on.
                    fleet.rate_limited(&registry, None);
                }
                // The host as a whole is paused: wait for the breaker, not for this image's
                // own back-off, so that a successful probe resumes every image.
                let now = Instant::now();
                let host_paused = if trips_breaker(error.kind) {
                    end.paused_until
                        .map(|until| until.saturating_duration_since(now))
                } else {
                    None
                };
                let retry_in = match host_paused {
                    Some(pause) if error.kind == ErrorKind::RateLimited => {
                        pause.max(end.rate_limit_hold)
                    }
                    Some(pause) => pause,
                    None if error.kind == ErrorKind::RateLimited => end.rate_limit_hold,
                    None => {
                        let ceiling = puller.backoff_ceiling(r.step);
                        r.step += 1;
                        full_jitter(ceiling)
                    }
                };
                on_event(
                    n,
                    &r.key,
                    PullEvent::AttemptFailed {
                        index: n,
                        attempt: attempts,
                        error: error.clone(),
                        retry_in,
                    },
                );
                if self.keep_errors {
                    r.last_error = Some(Box::new(error));
                }
                // A zero delay is due now: `start_due` takes it at once (never a past timer).
                self.schedule(id, now + retry_in);
                return None;
            }
        };
        self.finish(id, result)
    }

    fn finish(&mut self, id: u64, result: PullResult) -> Option<Finished<K>> {
        let r = self.records.remove(&id)?;
        Some(Finished {
            id,
            n: r.n,
            key: r.key,
            outcome: ImageOutcome {
                result,
                image: None,
                attempts: r.attempts,
                elapsed: r.started.elapsed(),
                last_error: r.last_error.map(|e| *e),
            },
        })
    }

    /// Cancels everything: each image ends where it was.
    pub fn cancel_all(&mut self) -> Vec<Finished<K>> {
        if let Some(p) = self.progress.take() {
            p.stop();
        }
        self.running.abort_all();
        self.due.clear();
        self.parked.clear();
        let ids: Vec<u64> = self.records.keys().copied().collect();
        let mut out: Vec<Finished<K>> = ids
            .into_iter()
            .filter_map(|id| {
                let r = &self.records[&id];
                let stage = if r.running.is_some() {
                    Stage::Pulling
                } else if r.attempts == 0 {
                    Stage::Waiting
                } else {
                    Stage::BackingOff
                };
                self.finish(id, PullResult::Cancelled(stage))
            })
            .collect();
        out.sort_by_key(|f| f.n);
        out
    }

    /// Stops every running attempt and waits (at most `grace`) for them to end.
    pub async fn shutdown(&mut self, grace: Duration) {
        if let Some(p) = self.progress.take() {
            p.stop();
        }
        for r in self.records.values() {
            if let Some(t) = &r.running {
                t.cancel();
            }
        }
        let drained = tokio::time::timeout(grace, async {
            while self.running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.running.abort_all();
        }
    }
}

/// Sleeps until `at`; forever without one (the caller's `select!` guards on it).
pub async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves when the fleet budget granted a slot (never without a budget).
pub async fn fleet_changed(changed: &Option<Arc<tokio::sync::Notify>>) {
    match changed {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 10: every waiting image held its pull state in a task of its own (~20 KiB on
    /// CRI, then ~1 KiB boxed), 141 MiB for 5,000 images against a down registry. The goal
    /// (README Cost: under 64 MiB with 20,000 declared) leaves about 3 KiB per image for
    /// everything: a waiting image is now one queue record, a small part of that.
    #[test]
    fn a_waiting_image_is_a_small_record() {
        let size = std::mem::size_of::<Record<()>>();
        assert!(size < 160, "{size} bytes per waiting image");
    }
}
