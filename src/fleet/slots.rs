//! Pull slots: N Leases per registry; a node pulls from it only while it holds one.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::lease::{ApiError, LeaseApi, LeaseEvent, LeaseEvents, released};
use super::{FLEET_LABEL, REGISTRY_ANNOTATION, REGISTRY_LABEL, fnv64, registry_selector};
use crate::config::{FleetSettings, OnUnavailable};

/// Longest wait of a woken waiter before it looks again (see `acquire`).
const HERD_SPREAD: Duration = Duration::from_secs(5);
/// Writes that may meet a 409 in one round before the node lists again.
const CONFLICT_TRIES: usize = 2;
/// Tries of a transient API error before `onUnavailable` applies.
const UNAVAILABLE_TRIES: usize = 3;

/// Wall-clock time as the Leases carry it, derived from tokio's clock (so paused-time tests
/// move it) plus a skew (so tests can give nodes different clocks). Only what is written for
/// people and other nodes' logs uses it: expiry is judged on the local monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall: SystemTime,
    at: Instant,
    skew: Duration,
    ahead: bool,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            wall: SystemTime::now(),
            at: Instant::now(),
            skew: Duration::ZERO,
            ahead: true,
        }
    }

    /// This clock, `skew` ahead (or behind) of the real one.
    pub fn skewed(skew: Duration, ahead: bool) -> Clock {
        Clock {
            skew,
            ahead,
            ..Clock::new()
        }
    }

    pub fn now(&self) -> SystemTime {
        let t = self.wall + self.at.elapsed();
        if self.ahead {
            t + self.skew
        } else {
            t - self.skew
        }
    }

    pub fn micro(&self) -> MicroTime {
        MicroTime(Timestamp::try_from(self.now()).unwrap_or(Timestamp::UNIX_EPOCH))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// What `acquire` gives.
#[derive(Debug)]
pub enum Grant {
    /// A slot: pull, then `release` it.
    Slot(Slot),
    /// The API is not there and `onUnavailable: proceed`: pull as if there were no budget.
    Uncoordinated,
}

/// A held slot. Renewed in the background until released; dropping it stops the renewal and
/// leaves the Lease to expire.
#[derive(Debug)]
pub struct Slot {
    pub registry: String,
    /// 0-based.
    pub index: u32,
    /// The registry's number of slots.
    pub of: u32,
    lost: Arc<AtomicBool>,
    lease: Arc<Mutex<Lease>>,
    stop: CancellationToken,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl Slot {
    /// False once a renewal failed: finish the pull under way, start no new one.
    pub fn held(&self) -> bool {
        !self.lost.load(Ordering::Relaxed)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What this node last saw of one Lease, and when (local monotonic clock) it last changed.
struct Seen {
    holder: Option<String>,
    renew: Option<MicroTime>,
    since: Instant,
}

#[derive(Default)]
struct State {
    seen: HashMap<String, Seen>,
    /// Per registry: no pull until then (the breaker, as this node read it).
    paused: HashMap<String, Instant>,
}

/// One node's side of the budget.
pub struct Coordinator<A> {
    pub(super) api: A,
    pub(super) node: String,
    pub(super) settings: FleetSettings,
    pub(super) clock: Clock,
    state: Mutex<State>,
    /// The API's absence is said once, not once per registry or retry.
    warned: AtomicBool,
    pub(super) cancel: CancellationToken,
}

/// A waiting node's copy of its registry's Leases: listed once, then kept current from the
/// watch's events (each carries the Lease), so that a release costs the waiters no list.
struct View {
    leases: BTreeMap<String, Arc<Lease>>,
    /// Where the watch (re)starts.
    rv: String,
    events: Option<LeaseEvents>,
    /// When `events` was opened.
    opened: Instant,
}

impl View {
    /// Whether a round could find a slot: one released, or one not made yet.
    fn any_free(&self, n: u32, breaker: &str) -> bool {
        let mut slots = 0;
        for (name, lease) in &self.leases {
            if name == breaker {
                continue;
            }
            if released(lease) {
                return true;
            }
            slots += 1;
        }
        slots < n as usize
    }
}

/// One round of `acquire`.
enum Round {
    Got(Slot),
    /// Every slot is held: wait for a release, or until `expiry` frees one.
    Busy {
        expiry: Option<Instant>,
    },
    Paused(Instant),
    /// Other nodes took the slots this list showed free: look again after a spread.
    Contended,
}

impl<A: LeaseApi> Coordinator<A> {
    pub fn new(
        api: A,
        node: impl Into<String>,
        settings: FleetSettings,
        clock: Clock,
        cancel: CancellationToken,
    ) -> Coordinator<A> {
        Coordinator {
            api,
            node: node.into(),
            settings,
            clock,
            state: Mutex::new(State::default()),
            warned: AtomicBool::new(false),
            cancel,
        }
    }

    fn lease_duration(&self) -> Duration {
        self.settings.lease_duration
    }

    /// Until when this node holds off `registry` (the breaker), if it does.
    pub fn paused_until(&self, registry: &str) -> Option<Instant> {
        let state = self.state.lock().unwrap();
        state
            .paused
            .get(registry)
            .copied()
            .filter(|t| *t > Instant::now())
    }

    pub(super) fn pause(&self, registry: &str, until: Instant) {
        let mut state = self.state.lock().unwrap();
        let at = state.paused.entry(registry.to_string()).or_insert(until);
        *at = (*at).max(until);
    }

    /// Waits for a slot of `registry` (and for its breaker to close). `None`: cancelled.
    pub async fn acquire(&self, registry: &str) -> Option<Grant> {
        let selector = registry_selector(registry);
        let mut delays = ExponentialBuilder::new()
            .with_min_delay(Duration::from_secs(1))
            .with_max_delay(Duration::from_secs(60))
            .with_jitter()
            .without_max_times()
            .build();
        let mut failures = 0;
        let mut view: Option<View> = None;
        // Every waiter sees the same release: each looks again after its own random delay, so
        // that one takes the slot and the others see it taken instead of all meeting 409s.
        let spread = (self.lease_duration() / 12).min(HERD_SPREAD);
        // Each node tries the slots in its own order, so that nodes do not all race for slot 0.
        let n = self.settings.slots_for(registry);
        let mut order: Vec<u32> = (0..n).collect();
        order.sort_by_cached_key(|i| fnv64(&[&self.node, registry, &i.to_string()]));
        let breaker = super::breaker_name(registry);
        loop {
            let wait = match self.round(registry, &selector, &mut view, &order).await {
                Ok(Round::Got(slot)) => return Some(Grant::Slot(slot)),
                Ok(Round::Paused(until)) => {
                    view = None;
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = self.cancel.cancelled() => return None,
                    }
                    continue;
                }
                Ok(Round::Contended) => {
                    // The watch brings the writes that beat ours meanwhile.
                    let until = Instant::now() + spread.mul_f64(fastrand::f64());
                    tokio::select! {
                        r = self.follow(&selector, &mut view, Some(until), false) => r.err(),
                        _ = self.cancel.cancelled() => return None,
                    }
                }
                Ok(Round::Busy { expiry }) => {
                    failures = 0;
                    loop {
                        // No timer when nothing can expire: the watch alone wakes us.
                        let woken = tokio::select! {
                            r = self.follow(&selector, &mut view, expiry, true) => r,
                            _ = self.cancel.cancelled() => return None,
                        };
                        if let Err(e) = woken {
                            break Some(e);
                        }
                        let until = Instant::now() + spread.mul_f64(fastrand::f64());
                        let spread = tokio::select! {
                            r = self.follow(&selector, &mut view, Some(until), false) => r,
                            _ = self.cancel.cancelled() => return None,
                        };
                        if let Err(e) = spread {
                            break Some(e);
                        }
                        // Another waiter took the freed slot meanwhile (as it does for all but
                        // one of them): wait on, without a round over every slot.
                        let expired = expiry.is_some_and(|at| at <= Instant::now());
                        if expired || view.as_ref().is_none_or(|v| v.any_free(n, &breaker)) {
                            break None;
                        }
                    }
                }
                Err(e) => Some(e),
            };
            let Some(e) = wait else { continue };
            failures += 1;
            tracing::debug!(registry, failures, "fleet pull budget: {e}");
            let give_up = matches!(e, ApiError::Forbidden { .. }) || failures >= UNAVAILABLE_TRIES;
            if give_up {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    let then = match self.settings.on_unavailable {
                        OnUnavailable::Proceed => {
                            "pulling without the fleet budget (fleet.onUnavailable: proceed)"
                        }
                        OnUnavailable::Wait => {
                            "waiting for it before pulling (fleet.onUnavailable: wait)"
                        }
                    };
                    tracing::warn!(registry, "fleet pull budget unavailable: {e}; {then}");
                }
                if self.settings.on_unavailable == OnUnavailable::Proceed {
                    return Some(Grant::Uncoordinated);
                }
            }
            let delay = delays.next().unwrap_or(Duration::from_secs(60));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.cancel.cancelled() => return None,
            }
        }
    }

    /// Records what a list or watch event showed; returns whether the Lease is free for this
    /// node now, and else when it expires unless it changes.
    fn observe(&self, lease: &Lease, now: Instant) -> (bool, Option<Instant>) {
        let name = lease.metadata.name.as_deref().unwrap_or_default();
        let spec = lease.spec.as_ref();
        let holder = spec
            .and_then(|s| s.holder_identity.as_deref())
            .filter(|h| !h.is_empty());
        let renew = spec.and_then(|s| s.renew_time.as_ref());
        let duration = spec
            .and_then(|s| s.lease_duration_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.lease_duration(), Duration::from_secs);
        let mut state = self.state.lock().unwrap();
        let since = match state.seen.get_mut(name) {
            Some(seen) if seen.holder.as_deref() == holder && seen.renew.as_ref() == renew => {
                seen.since
            }
            Some(seen) => {
                *seen = Seen {
                    holder: holder.map(str::to_string),
                    renew: renew.cloned(),
                    since: now,
                };
                now
            }
            None => {
                state.seen.insert(
                    name.to_string(),
                    Seen {
                        holder: holder.map(str::to_string),
                        renew: renew.cloned(),
                        since: now,
                    },
                );
                now
            }
        };
        match holder {
            None => (true, None),
            Some(h) if h == self.node => (true, None),
            // As client-go's leader election: expired when the renew time has not changed for
            // a lease duration of *our* clock, whatever the holder's clock wrote in it.
            Some(_) => {
                let expires = since + duration;
                (expires <= now, Some(expires))
            }
        }
    }

    /// Applies the watch's events to `view` until `until` (`None`: no deadline) or, with
    /// `on_release`, until a slot is released or deleted. Opens the watch where the view
    /// stands, and again where the last one ended; drops the view (the next round lists) when
    /// the watch fails or cannot go on.
    async fn follow(
        &self,
        selector: &str,
        view: &mut Option<View>,
        until: Option<Instant>,
        on_release: bool,
    ) -> Result<(), ApiError> {
        let deadline = async {
            match until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let mut deadline = std::pin::pin!(deadline);
        let Some(v) = view.as_mut() else {
            deadline.await;
            return Ok(());
        };
        loop {
            let events = match &mut v.events {
                Some(events) => events,
                None => {
                    let opened = match self.api.watch(selector, &v.rv).await {
                        Ok(events) => events,
                        Err(e) => {
                            *view = None;
                            return Err(e);
                        }
                    };
                    v.opened = Instant::now();
                    v.events.insert(opened)
                }
            };
            let event = tokio::select! {
                event = events.next() => event,
                _ = &mut deadline => return Ok(()),
            };
            let lease = match event {
                Some(Ok(LeaseEvent::Put(lease))) => lease,
                Some(Ok(LeaseEvent::Deleted(lease))) => {
                    if let Some(name) = &lease.metadata.name {
                        v.leases.remove(name);
                    }
                    if let Some(rv) = &lease.metadata.resource_version {
                        v.rv.clone_from(rv);
                    }
                    if on_release {
                        return Ok(());
                    }
                    continue;
                }
                Some(Ok(LeaseEvent::Bookmark(rv))) => {
                    v.rv = rv;
                    continue;
                }
                Some(Ok(LeaseEvent::Expired)) => {
                    *view = None;
                    return Ok(());
                }
                Some(Err(e)) => {
                    *view = None;
                    return Err(e);
                }
                None => {
                    v.events = None;
                    // A server that ends every watch at once would have us call it in a loop.
                    // Measured from the open, not from the last event: a watch the server ends
                    // just after one (the BOOKMARK a real server sends before its timeout, a
                    // compaction) did not end "at once".
                    if v.opened.elapsed() < Duration::from_secs(1) {
                        *view = None;
                        return Err(ApiError::Unavailable {
                            verb: "watch",
                            message: "the watch ended at once".into(),
                        });
                    }
                    continue;
                }
            };
            self.observe(&lease, Instant::now());
            if let Some(rv) = &lease.metadata.resource_version {
                v.rv.clone_from(rv);
            }
            let freed = released(&lease);
            if let Some(name) = &lease.metadata.name {
                match v.leases.get_mut(name) {
                    Some(old) => *old = lease,
                    None => {
                        v.leases.insert(name.clone(), lease);
                    }
                }
            }
            if freed && on_release {
                return Ok(());
            }
        }
    }

    async fn round(
        &self,
        registry: &str,
        selector: &str,
        view: &mut Option<View>,
        order: &[u32],
    ) -> Result<Round, ApiError> {
        if let Some(until) = self.paused_until(registry) {
            return Ok(Round::Paused(until));
        }
        let v = match view {
            Some(v) => v,
            None => {
                let (leases, rv) = self.api.list(selector).await?;
                view.insert(View {
                    leases: leases
                        .into_iter()
                        .map(|l| (l.metadata.name.clone().unwrap_or_default(), Arc::new(l)))
                        .collect(),
                    rv,
                    events: None,
                    opened: Instant::now(),
                })
            }
        };
        let now = Instant::now();
        let n = self.settings.slots_for(registry);
        let breaker = super::breaker_name(registry);
        let mut by_index: BTreeMap<u32, &Lease> = BTreeMap::new();
        for lease in v.leases.values() {
            let lease: &Lease = lease;
            let name = lease.metadata.name.as_deref().unwrap_or_default();
            if name == breaker {
                if let Some(until) = self.breaker_from(lease) {
                    self.pause(registry, until);
                }
                continue;
            }
            let index = name
                .rsplit_once('-')
                .and_then(|(_, i)| i.parse::<u32>().ok());
            if let Some(i) = index.filter(|i| *i < n) {
                by_index.insert(i, lease);
            }
        }
        if let Some(until) = self.paused_until(registry) {
            return Ok(Round::Paused(until));
        }
        let mut expiry: Option<Instant> = None;
        let mut conflicts = 0;
        // Each node tries the slots in its own order, so that nodes do not all race for slot 0.
        for &i in order {
            // Before the write: the API server wrote it after this, so no node counts the
            // Lease's expiry from an earlier instant (the renewals' deadline starts here).
            let sent = Instant::now();
            let written = match by_index.get(&i) {
                None => self.api.create(&self.new_lease(registry, i)).await,
                Some(lease) => {
                    let (free, expires) = self.observe(lease, now);
                    if !free {
                        expiry = match (expiry, expires) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                        continue;
                    }
                    self.api.replace(&self.taken(lease)).await
                }
            };
            match written {
                Ok(lease) => return Ok(Round::Got(self.hold(registry, i, n, lease, sent))),
                // One more slot after a 409; past that the list is stale: list again rather
                // than write against every slot it showed free.
                Err(ApiError::Conflict) => {
                    // Another node took this slot just now: it is free again a lease duration
                    // from now at the latest unless renewed. Without this bound a node that lost
                    // the race would wait for a release only, and wait for ever if the winner died.
                    let taken_until = now + self.lease_duration();
                    expiry = Some(expiry.map_or(taken_until, |e| e.min(taken_until)));
                    conflicts += 1;
                    if conflicts >= CONFLICT_TRIES {
                        return Ok(Round::Contended);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Round::Busy { expiry })
    }

    fn new_lease(&self, registry: &str, index: u32) -> Lease {
        let mut lease = Lease {
            metadata: ObjectMeta {
                name: Some(super::slot_name(registry, index)),
                labels: Some(
                    [
                        (FLEET_LABEL.to_string(), "slot".to_string()),
                        (REGISTRY_LABEL.to_string(), super::registry_key(registry)),
                    ]
                    .into(),
                ),
                annotations: Some([(REGISTRY_ANNOTATION.to_string(), registry.to_string())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec::default()),
        };
        lease = self.taken(&lease);
        lease
    }

    /// `lease` as this node takes it (its resourceVersion kept: the precondition).
    fn taken(&self, lease: &Lease) -> Lease {
        let mut lease = lease.clone();
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let now = self.clock.micro();
        spec.holder_identity = Some(self.node.clone());
        spec.acquire_time = Some(now.clone());
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(self.lease_duration().as_secs() as i32);
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        lease
    }

    fn hold(&self, registry: &str, index: u32, of: u32, lease: Lease, sent: Instant) -> Slot {
        let lost = Arc::new(AtomicBool::new(false));
        let lease = Arc::new(Mutex::new(lease));
        let stop = self.cancel.child_token();
        let renewer = tokio::spawn(renew(
            self.api.clone(),
            self.clock,
            self.lease_duration(),
            lease.clone(),
            sent,
            lost.clone(),
            stop.clone(),
        ));
        Slot {
            registry: registry.to_string(),
            index,
            of,
            lost,
            lease,
            stop,
            renewer: Some(renewer),
        }
    }

    /// Gives the slot back (nothing left to pull from its registry): one write, so that a
    /// waiting node's watch sees it at once instead of after the Lease duration.
    pub async fn release(&self, mut slot: Slot) {
        slot.stop.cancel();
        if let Some(renewer) = slot.renewer.take() {
            let _ = renewer.await;
        }
        if !slot.held() {
            return;
        }
        let mut lease = slot.lease.lock().unwrap().clone();
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.renew_time = Some(self.clock.micro());
        }
        if let Err(e) = self.api.replace(&lease).await {
            // It expires on its own within its duration.
            tracing::debug!(registry = slot.registry, "releasing the pull slot: {e}");
        }
    }
}

/// How long before the Lease would expire a holder whose renewals fail gives the slot up: the
/// other nodes may take it once it has gone unrenewed for its duration (by their clocks, from
/// when they saw the last renewal, which was sent before).
const GIVE_UP_MARGIN: Duration = Duration::from_secs(1);
/// Between tries of a renewal that failed transiently.
const RENEW_RETRY: Duration = Duration::from_secs(5);

/// Renews `lease` (taken by a write sent at `sent`) every third of its duration until `stop`.
/// A conflict or refusal means it is lost; a transient error is retried while the Lease lasts.
/// However the calls fail, an unanswered one included, the slot is given up before the Lease
/// expires: a holder that went on after that would pull beside the node that took it.
async fn renew<A: LeaseApi>(
    api: A,
    clock: Clock,
    duration: Duration,
    lease: Arc<Mutex<Lease>>,
    sent: Instant,
    lost: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let every = duration / 3;
    let mut renewed = sent;
    let mut next = renewed + every;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stop.cancelled() => return,
        }
        let mut update = lease.lock().unwrap().clone();
        if let Some(spec) = update.spec.as_mut() {
            spec.renew_time = Some(clock.micro());
        }
        let give_up = renewed + duration.saturating_sub(GIVE_UP_MARGIN);
        let sent = Instant::now();
        // Not dropped at `stop`: a release waits for it, so as to write on the resourceVersion
        // it brings (a release on the one before would meet a 409 and leave the slot to expire).
        let result = tokio::time::timeout_at(give_up, api.replace(&update)).await;
        let error = match result {
            Ok(Ok(written)) => {
                *lease.lock().unwrap() = written;
                renewed = sent;
                next = renewed + every;
                continue;
            }
            Ok(Err(ApiError::Unavailable { .. })) if Instant::now() + RENEW_RETRY < give_up => {
                next = Instant::now() + RENEW_RETRY;
                continue;
            }
            Ok(Err(e)) => e,
            Err(_) => ApiError::Unavailable {
                verb: "update",
                message: "no answer before the Lease would expire".into(),
            },
        };
        tracing::warn!(
            "lost the pull slot {}: {error}; finishing the pull under way, starting no new one",
            update.metadata.name.as_deref().unwrap_or_default()
        );
        lost.store(true, Ordering::Relaxed);
        return;
    }
}
