//! A stateful Lease API in memory (resourceVersions, 409s, watches fed from a change log), for
//! the unit tests and the fleet bench, and the simulation the README's 5,000-node figures come
//! from. Compiled for this crate's tests and with the `test-util` feature: never shipped.
//!
//! It refuses what kube-apiserver refuses, by the rules of [`crate::apirules`] (shared with
//! the fake API server of `tests/fake_api`): label selectors parsed with their keys; a create
//! of an existing name is a conflict; an update without `metadata.resourceVersion` is 422
//! (here `Unavailable`, as `KubeLeases` classifies a 422), a stale one a conflict; an invalid
//! Lease is 422. Its watches behave as the apiserver's watch cache: they end by themselves
//! after [`Shared::set_watch_timeout`] (default [`WATCH_TIMEOUT`]), send a BOOKMARK every
//! [`BOOKMARK_EVERY`] and before they end, report DELETED ([`Shared::delete`]), and answer a
//! resourceVersion older than the last [`Shared::compact`] with `Expired` (410), as
//! staging/src/k8s.io/apiserver/pkg/storage/cacher/ does (cacher.go: the watch's deadline from
//! its timeout; cache_watcher.go: bookmarks; watch_cache.go: "too old resource version", 410).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::lease::{ApiError, LeaseApi, LeaseEvent, LeaseEvents, released};
use super::slots::{Clock, Coordinator, Grant};
use crate::apirules::lease::{Put, update_precondition, validate};
use crate::apirules::selector::Selector;
use crate::config::{FleetSettings, OnUnavailable};

/// How long a watch lasts unless [`Shared::set_watch_timeout`] says otherwise: kube's
/// `WatchParams` default `timeoutSeconds` (290), which the real server honours.
pub const WATCH_TIMEOUT: Duration = Duration::from_secs(290);
/// How often an open watch gets a BOOKMARK (the apiserver's watch cache: about a minute).
pub const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Store {
    pub leases: BTreeMap<String, Lease>,
    pub rv: u64,
    /// Every change in order since the last compaction, with its resourceVersion and whether
    /// it was a delete: what watches replay and follow.
    log: Vec<(u64, bool, Arc<Lease>)>,
    /// A watch from a resourceVersion below this is answered `Expired` (410).
    compacted: u64,
    /// Bumped by [`Shared::compact`]: open watches end.
    epoch: u64,
}

/// The API server: its Leases and what was asked of it.
#[derive(Default)]
pub struct Shared {
    pub store: Mutex<Store>,
    changes: tokio::sync::Notify,
    pub writes: AtomicUsize,
    /// Writes refused with a 409 (counted in `writes` too: each is a request).
    pub conflicts: AtomicUsize,
    /// Lists and gets.
    pub reads: AtomicUsize,
    /// Watches opened.
    pub watches: AtomicUsize,
    /// Every call fails: `Some(true)` 403, `Some(false)` unreachable.
    down: Mutex<Option<bool>>,
    /// The longest a watch lasts; `None`: [`WATCH_TIMEOUT`].
    watch_timeout: Mutex<Option<Duration>>,
    /// Writes from these nodes fail as unreachable.
    pub cut_off: Mutex<Vec<String>>,
    /// Before the next write, this holder takes the Lease written to: the write then conflicts.
    pub steal_next: Mutex<Option<String>>,
}

impl Shared {
    /// The nodes holding slots now.
    pub fn holders(&self) -> Vec<String> {
        let store = self.store.lock().unwrap();
        store
            .leases
            .values()
            .filter(|l| !l.metadata.name.as_deref().unwrap().ends_with("breaker"))
            .filter(|l| !released(l))
            .filter_map(|l| l.spec.as_ref()?.holder_identity.clone())
            .collect()
    }

    /// An outage (`Some(false)`: unreachable; `Some(true)`: 403) or its end (`None`). Open
    /// watches end, as they do when an API server restarts.
    pub fn set_down(&self, down: Option<bool>) {
        *self.down.lock().unwrap() = down;
        self.changes.notify_waiters();
    }

    fn put(&self, store: &mut Store, name: String, mut lease: Lease) -> Lease {
        store.rv += 1;
        lease.metadata.resource_version = Some(store.rv.to_string());
        store.log.push((store.rv, false, Arc::new(lease.clone())));
        store.leases.insert(name, lease.clone());
        self.changes.notify_waiters();
        lease
    }

    /// Another client deletes the Lease `name` (watchers get DELETED); false if there is none.
    pub fn delete(&self, name: &str) -> bool {
        let mut store = self.store.lock().unwrap();
        let Some(mut lease) = store.leases.remove(name) else {
            return false;
        };
        store.rv += 1;
        lease.metadata.resource_version = Some(store.rv.to_string());
        let rv = store.rv;
        store.log.push((rv, true, Arc::new(lease)));
        self.changes.notify_waiters();
        true
    }

    /// As etcd's compaction and the watch cache's window do: the history before the current
    /// resourceVersion is gone and open watches end; a watch resuming from an older version
    /// gets `Expired` (410), one from the current version (a bookmark's, say) goes on.
    pub fn compact(&self) {
        let mut store = self.store.lock().unwrap();
        store.compacted = store.rv;
        store.log.clear();
        store.epoch += 1;
        self.changes.notify_waiters();
    }

    /// Watches end after `d` at most (the real server ends them after their timeout).
    pub fn set_watch_timeout(&self, d: Duration) {
        *self.watch_timeout.lock().unwrap() = Some(d);
    }
}

/// One node's client of [`Shared`].
#[derive(Clone)]
pub struct Fake {
    pub shared: Arc<Shared>,
    pub node: String,
}

impl Fake {
    fn fail(&self, verb: &'static str, write: bool) -> Result<(), ApiError> {
        match *self.shared.down.lock().unwrap() {
            Some(true) => {
                return Err(ApiError::Forbidden {
                    verb,
                    message: "no".into(),
                });
            }
            Some(false) => {
                return Err(ApiError::Unavailable {
                    verb,
                    message: "connection refused".into(),
                });
            }
            None => {}
        }
        if write && self.shared.cut_off.lock().unwrap().contains(&self.node) {
            return Err(ApiError::Unavailable {
                verb,
                message: "connection refused".into(),
            });
        }
        Ok(())
    }

    fn write(&self, lease: &Lease, create: bool) -> Result<Lease, ApiError> {
        self.fail("update", true)?;
        self.shared.writes.fetch_add(1, Ordering::Relaxed);
        let name = lease.metadata.name.clone().unwrap();
        let mut store = self.shared.store.lock().unwrap();
        if let Some(thief) = self.shared.steal_next.lock().unwrap().take() {
            let mut stolen = lease.clone();
            stolen.spec.as_mut().unwrap().holder_identity = Some(thief);
            self.shared.put(&mut store, name.clone(), stolen);
        }
        let refused = |e: crate::apirules::Refusal| ApiError::Unavailable {
            verb: if create { "create" } else { "update" },
            message: format!("{} ({} {})", e.message, e.code, e.reason),
        };
        let json = serde_json::to_value(lease).unwrap_or_default();
        validate(&json).map_err(refused)?;
        let stored = store
            .leases
            .get(&name)
            .map(|l| l.metadata.resource_version.clone());
        let conflict = if create {
            // store.go `Store.Create` of a name that exists: 409 AlreadyExists.
            stored.is_some()
        } else {
            let given = lease.metadata.resource_version.as_deref();
            match update_precondition(
                &name,
                stored.as_ref().map(|rv| rv.as_deref().unwrap_or("")),
                given,
            ) {
                Ok(Put::Create | Put::Update) => false,
                Err(e) if e.code == 409 => true,
                Err(e) => return Err(refused(e)),
            }
        };
        if conflict {
            self.shared.conflicts.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::Conflict);
        }
        Ok(self.shared.put(&mut store, name, lease.clone()))
    }
}

fn parse(verb: &'static str, selector: &str) -> Result<Selector, ApiError> {
    Selector::parse(selector).map_err(|e| ApiError::Unavailable {
        verb,
        message: format!("{} ({} {})", e.message, e.code, e.reason),
    })
}

fn selects(selector: &Selector, lease: &Lease) -> bool {
    selector.matches(&lease.metadata.labels.clone().unwrap_or_default())
}

impl LeaseApi for Fake {
    async fn list(&self, selector: &str) -> Result<(Vec<Lease>, String), ApiError> {
        // A round trip: other nodes' calls interleave, as over the network.
        tokio::task::yield_now().await;
        self.fail("list", false)?;
        self.shared.reads.fetch_add(1, Ordering::Relaxed);
        let selector = parse("list", selector)?;
        let store = self.shared.store.lock().unwrap();
        let items = store
            .leases
            .values()
            .filter(|l| selects(&selector, l))
            .cloned()
            .collect();
        Ok((items, store.rv.to_string()))
    }

    async fn get(&self, name: &str) -> Result<Option<Lease>, ApiError> {
        self.fail("get", false)?;
        self.shared.reads.fetch_add(1, Ordering::Relaxed);
        Ok(self.shared.store.lock().unwrap().leases.get(name).cloned())
    }

    async fn create(&self, lease: &Lease) -> Result<Lease, ApiError> {
        tokio::task::yield_now().await;
        self.write(lease, true)
    }

    async fn replace(&self, lease: &Lease) -> Result<Lease, ApiError> {
        tokio::task::yield_now().await;
        self.write(lease, false)
    }

    async fn watch(&self, selector: &str, rv: &str) -> Result<LeaseEvents, ApiError> {
        tokio::task::yield_now().await;
        self.fail("watch", false)?;
        self.shared.watches.fetch_add(1, Ordering::Relaxed);
        let selector = parse("watch", selector)?;
        let rv: u64 = rv.parse().unwrap_or(0);
        let timeout = self
            .shared
            .watch_timeout
            .lock()
            .unwrap()
            .unwrap_or(WATCH_TIMEOUT);
        let (next, epoch, expired) = {
            let store = self.shared.store.lock().unwrap();
            let next = store.log.partition_point(|(r, _, _)| *r <= rv);
            (next, store.epoch, rv < store.compacted)
        };
        if expired {
            // The apiserver answers with one ERROR event (410 Expired) and ends the watch.
            return Ok(futures::stream::iter([Ok(LeaseEvent::Expired)]).boxed());
        }
        let end = Instant::now() + timeout;
        let state = Watching {
            next,
            bookmark: Instant::now() + BOOKMARK_EVERY,
            done: false,
        };
        let shared = self.shared.clone();
        let events = futures::stream::unfold(state, move |mut w| {
            let (shared, selector) = (shared.clone(), selector.clone());
            async move {
                if w.done {
                    return None;
                }
                loop {
                    let notified = shared.changes.notified();
                    if shared.down.lock().unwrap().is_some() {
                        return None;
                    }
                    {
                        let store = shared.store.lock().unwrap();
                        if store.epoch != epoch {
                            return None; // compacted: the watch ends; resuming gets 410
                        }
                        while let Some((_, deleted, lease)) = store.log.get(w.next) {
                            w.next += 1;
                            if selects(&selector, lease) {
                                let event = if *deleted {
                                    LeaseEvent::Deleted(lease.clone())
                                } else {
                                    LeaseEvent::Put(lease.clone())
                                };
                                return Some((Ok(event), w));
                            }
                        }
                        let now = Instant::now();
                        if now >= end || now >= w.bookmark {
                            // A bookmark before the watch ends too, as the watch cache sends.
                            w.done = now >= end;
                            w.bookmark = now + BOOKMARK_EVERY;
                            let bookmark = LeaseEvent::Bookmark(store.rv.to_string());
                            return Some((Ok(bookmark), w));
                        }
                    }
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(end.min(w.bookmark)) => {}
                    }
                }
            }
        });
        Ok(events.boxed())
    }
}

/// Where a watch stands in the change log.
struct Watching {
    next: usize,
    bookmark: Instant,
    done: bool,
}

pub fn settings(n: u32, on_unavailable: OnUnavailable) -> FleetSettings {
    FleetSettings {
        max_concurrent_nodes: n,
        registries: BTreeMap::new(),
        on_unavailable,
        lease_duration: Duration::from_secs(60),
    }
}

pub fn node(
    shared: &Arc<Shared>,
    name: &str,
    s: &FleetSettings,
    clock: Clock,
) -> Arc<Coordinator<Fake>> {
    let api = Fake {
        shared: shared.clone(),
        node: name.into(),
    };
    Arc::new(Coordinator::new(
        api,
        name,
        s.clone(),
        clock,
        CancellationToken::new(),
    ))
}

/// What [`simulate`] measured. Times are virtual (tokio's paused clock).
#[derive(Debug, Clone)]
pub struct SimReport {
    pub nodes: usize,
    pub slots: u32,
    /// Until the last node released its slot.
    pub warm_up: Duration,
    pub peak_pulling: usize,
    pub writes: usize,
    pub conflicts: usize,
    pub lists: usize,
    pub watches: usize,
    /// API calls in the hour after the warm-up.
    pub idle_calls: usize,
}

impl SimReport {
    pub fn writes_per_second(&self) -> f64 {
        self.writes as f64 / self.warm_up.as_secs_f64()
    }

    pub fn lists_per_second(&self) -> f64 {
        self.lists as f64 / self.warm_up.as_secs_f64()
    }
}

/// `nodes` nodes warm up at once on one registry with `maxConcurrentNodes: slots`, each pulling
/// for 30 to 90 s once it holds a slot, on the real coordination code against [`Shared`];
/// then an hour with nothing to pull. Run it on a paused clock (`tokio::time::pause`).
pub async fn simulate(nodes: usize, slots: u32) -> SimReport {
    const R: &str = "registry.example.com";
    let shared = Arc::new(Shared::default());
    let s = settings(slots, OnUnavailable::Proceed);
    let pulling = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..nodes {
        let c = node(&shared, &format!("node-{i}"), &s, Clock::new());
        let (pulling, peak) = (pulling.clone(), peak.clone());
        tasks.push(tokio::spawn(async move {
            let Some(Grant::Slot(slot)) = c.acquire(R).await else {
                panic!("no slot");
            };
            let now = pulling.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            // 30 to 90 s, so that renewals and releases do not come in lockstep.
            tokio::time::sleep(Duration::from_secs(30 + fastrand::u64(0..=60))).await;
            pulling.fetch_sub(1, Ordering::SeqCst);
            c.release(slot).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let warm_up = start.elapsed();
    let calls = |s: &Shared| {
        s.writes.load(Ordering::Relaxed)
            + s.reads.load(Ordering::Relaxed)
            + s.watches.load(Ordering::Relaxed)
    };
    let before = calls(&shared);
    let report = SimReport {
        nodes,
        slots,
        warm_up,
        peak_pulling: peak.load(Ordering::SeqCst),
        writes: shared.writes.load(Ordering::Relaxed),
        conflicts: shared.conflicts.load(Ordering::Relaxed),
        lists: shared.reads.load(Ordering::Relaxed),
        watches: shared.watches.load(Ordering::Relaxed),
        idle_calls: 0,
    };
    tokio::time::sleep(Duration::from_secs(3600)).await;
    SimReport {
        idle_calls: calls(&shared) - before,
        ..report
    }
}
