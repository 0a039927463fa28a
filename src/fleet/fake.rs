//! A stateful Lease API in memory (resourceVersions, 409s, watches fed from a change log), for
//! the unit tests and the fleet bench, and the simulation the README's 5,000-node figures come
//! from. Compiled for this crate's tests and with the `test-util` feature: never shipped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::REGISTRY_LABEL;
use super::lease::{ApiError, LeaseApi, LeaseEvent, LeaseEvents, released};
use super::slots::{Clock, Coordinator, Grant};
use crate::config::{FleetSettings, OnUnavailable};

#[derive(Default)]
pub struct Store {
    pub leases: BTreeMap<String, Lease>,
    pub rv: u64,
    /// Every write in order, with its resourceVersion: what watches replay and follow.
    log: Vec<(u64, Arc<Lease>)>,
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
        store.log.push((store.rv, Arc::new(lease.clone())));
        store.leases.insert(name, lease.clone());
        self.changes.notify_waiters();
        lease
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
        let conflict = match (store.leases.get(&name), create) {
            (Some(_), true) | (None, false) => true,
            (Some(old), false) => old.metadata.resource_version != lease.metadata.resource_version,
            (None, true) => false,
        };
        if conflict {
            self.shared.conflicts.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::Conflict);
        }
        Ok(self.shared.put(&mut store, name, lease.clone()))
    }
}

fn selects(selector: &str, lease: &Lease) -> bool {
    let key = selector.rsplit('=').next().unwrap_or_default();
    lease
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(REGISTRY_LABEL))
        .is_some_and(|k| k == key)
}

impl LeaseApi for Fake {
    async fn list(&self, selector: &str) -> Result<(Vec<Lease>, String), ApiError> {
        // A round trip: other nodes' calls interleave, as over the network.
        tokio::task::yield_now().await;
        self.fail("list", false)?;
        self.shared.reads.fetch_add(1, Ordering::Relaxed);
        let store = self.shared.store.lock().unwrap();
        let items = store
            .leases
            .values()
            .filter(|l| selects(selector, l))
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
        let rv: u64 = rv.parse().unwrap();
        let next = {
            let store = self.shared.store.lock().unwrap();
            store.log.partition_point(|(r, _)| *r <= rv)
        };
        let (shared, selector) = (self.shared.clone(), selector.to_string());
        let events = futures::stream::unfold(next, move |mut next| {
            let (shared, selector) = (shared.clone(), selector.clone());
            async move {
                loop {
                    let notified = shared.changes.notified();
                    if shared.down.lock().unwrap().is_some() {
                        return None;
                    }
                    {
                        let store = shared.store.lock().unwrap();
                        while let Some((_, lease)) = store.log.get(next) {
                            next += 1;
                            if selects(&selector, lease) {
                                return Some((Ok(LeaseEvent::Put(lease.clone())), next));
                            }
                        }
                    }
                    notified.await;
                }
            }
        });
        Ok(events.boxed())
    }
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
