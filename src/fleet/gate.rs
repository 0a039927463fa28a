//! The puller's side of the budget: a synchronous answer per registry ("may a pull start
//! now?") backed by background acquisitions, so that the pull queue never waits on the API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::lease::LeaseApi;
use super::slots::{Coordinator, Grant, Slot};

/// What the budget says about starting a pull from one registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetAdmit {
    Go,
    /// No slot yet: park until [`FleetBudget::take_granted`] names the registry.
    Wait,
    /// The shared breaker is open until then.
    NotBefore(Instant),
}

/// One registry as the node stands with it, for the status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetRegistry {
    pub registry: String,
    /// `pulling (slot 2/5)`, `waiting for a slot`, `uncoordinated`, `paused (rate limit)`.
    pub state: FleetState,
    /// 1-based slot number, when one is held.
    pub slot: Option<u32>,
    pub slots: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum FleetState {
    Waiting,
    Holding,
    Uncoordinated,
}

impl FleetState {
    pub fn as_str(self) -> &'static str {
        match self {
            FleetState::Waiting => "waiting",
            FleetState::Holding => "holding",
            FleetState::Uncoordinated => "uncoordinated",
        }
    }

    pub fn parse(s: &str) -> Option<FleetState> {
        [
            FleetState::Waiting,
            FleetState::Holding,
            FleetState::Uncoordinated,
        ]
        .into_iter()
        .find(|f| f.as_str() == s)
    }
}

impl std::fmt::Display for FleetRegistry {
    /// `pulling (slot 2/5 of registry.example.com)`, `waiting for a slot of …`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.state, self.slot) {
            (FleetState::Holding, Some(slot)) => write!(
                f,
                "pulling (slot {slot}/{} of {})",
                self.slots, self.registry
            ),
            (FleetState::Uncoordinated, _) => {
                write!(
                    f,
                    "pulling {} uncoordinated (the API is unavailable)",
                    self.registry
                )
            }
            _ => write!(
                f,
                "waiting for a slot of {} ({} slots)",
                self.registry, self.slots
            ),
        }
    }
}

/// The budget as the puller sees it (object-safe: the puller is not generic over the API).
pub trait FleetBudget: Send + Sync {
    /// May a pull from `registry` start now? `Wait` also starts acquiring a slot.
    fn admit(&self, registry: &str) -> FleetAdmit;
    /// Registries whose slot arrived since the last call: their parked pulls may start.
    fn take_granted(&self) -> Vec<String>;
    /// Gives back the slots (and stops the acquisitions) of registries `needed` says no.
    fn retain(&self, needed: &dyn Fn(&str) -> bool);
    /// A pull from `registry` met a 429: open the shared breaker.
    fn rate_limited(&self, registry: &str, retry_after: Option<Duration>);
    /// Notified when `take_granted` has something.
    fn changed(&self) -> Arc<Notify>;
    fn registries(&self) -> Vec<FleetRegistry>;
    /// At shutdown: gives every held slot back (one write each), so that waiting nodes need
    /// not wait for it to expire.
    fn release_all(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
}

enum Standing {
    Acquiring(tokio::task::JoinHandle<()>),
    Held(Slot),
    Uncoordinated,
}

/// The budget over a [`Coordinator`].
pub struct FleetGate<A: LeaseApi> {
    coordinator: Arc<Coordinator<A>>,
    inner: Arc<Mutex<Inner>>,
    notify: Arc<Notify>,
}

#[derive(Default)]
struct Inner {
    registries: HashMap<String, Standing>,
    granted: Vec<String>,
}

impl<A: LeaseApi> FleetGate<A> {
    pub fn new(coordinator: Arc<Coordinator<A>>) -> FleetGate<A> {
        FleetGate {
            coordinator,
            inner: Arc::default(),
            notify: Arc::new(Notify::new()),
        }
    }

    fn start_acquiring(&self, registry: &str) -> Standing {
        let (c, inner, notify) = (
            self.coordinator.clone(),
            self.inner.clone(),
            self.notify.clone(),
        );
        let registry = registry.to_string();
        Standing::Acquiring(tokio::spawn(async move {
            let Some(grant) = c.acquire(&registry).await else {
                return;
            };
            let standing = match grant {
                Grant::Slot(slot) => {
                    tracing::info!(registry, "pull slot {}/{} taken", slot.index + 1, slot.of);
                    Standing::Held(slot)
                }
                Grant::Uncoordinated => Standing::Uncoordinated,
            };
            let mut inner = inner.lock().unwrap();
            // Still wanted (`retain` aborts this task otherwise, but may race its end).
            if let Some(s) = inner.registries.get_mut(&registry)
                && matches!(s, Standing::Acquiring(_))
            {
                *s = standing;
                inner.granted.push(registry);
                drop(inner);
                notify.notify_one();
            }
        }))
    }
}

impl<A: LeaseApi> FleetBudget for FleetGate<A> {
    fn admit(&self, registry: &str) -> FleetAdmit {
        if let Some(until) = self.coordinator.paused_until(registry) {
            return FleetAdmit::NotBefore(until);
        }
        let mut inner = self.inner.lock().unwrap();
        match inner.registries.get(registry) {
            Some(Standing::Held(slot)) if slot.held() => return FleetAdmit::Go,
            Some(Standing::Uncoordinated) => return FleetAdmit::Go,
            Some(Standing::Acquiring(_)) => return FleetAdmit::Wait,
            // A lost slot (renewal failed): no new pull on it; queue for another.
            Some(Standing::Held(_)) | None => {}
        }
        let standing = self.start_acquiring(registry);
        inner.registries.insert(registry.to_string(), standing);
        FleetAdmit::Wait
    }

    fn take_granted(&self) -> Vec<String> {
        std::mem::take(&mut self.inner.lock().unwrap().granted)
    }

    fn retain(&self, needed: &dyn Fn(&str) -> bool) {
        let mut inner = self.inner.lock().unwrap();
        let gone: Vec<String> = inner
            .registries
            .keys()
            .filter(|r| !needed(r))
            .cloned()
            .collect();
        for registry in gone {
            match inner.registries.remove(&registry) {
                Some(Standing::Acquiring(task)) => task.abort(),
                Some(Standing::Held(slot)) => {
                    tracing::info!(
                        registry,
                        "pull slot {}/{} released",
                        slot.index + 1,
                        slot.of
                    );
                    let c = self.coordinator.clone();
                    tokio::spawn(async move { c.release(slot).await });
                }
                Some(Standing::Uncoordinated) | None => {}
            }
        }
    }

    fn rate_limited(&self, registry: &str, retry_after: Option<Duration>) {
        let c = self.coordinator.clone();
        let registry = registry.to_string();
        // Paused locally at once; the shared window follows the one write.
        c.pause(
            &registry,
            Instant::now() + retry_after.unwrap_or(super::BREAKER_FIRST),
        );
        tokio::spawn(async move {
            c.record_rate_limit(&registry, retry_after).await;
        });
    }

    fn changed(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    fn release_all(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        let slots: Vec<Slot> = {
            let mut inner = self.inner.lock().unwrap();
            inner
                .registries
                .drain()
                .filter_map(|(_, s)| match s {
                    Standing::Held(slot) => Some(slot),
                    Standing::Acquiring(task) => {
                        task.abort();
                        None
                    }
                    Standing::Uncoordinated => None,
                })
                .collect()
        };
        Box::pin(async move {
            futures::future::join_all(slots.into_iter().map(|s| self.coordinator.release(s))).await;
        })
    }

    fn registries(&self) -> Vec<FleetRegistry> {
        let inner = self.inner.lock().unwrap();
        let mut out: Vec<FleetRegistry> = inner
            .registries
            .iter()
            .map(|(registry, s)| {
                let slots = self.coordinator.settings.slots_for(registry);
                let (state, slot) = match s {
                    Standing::Held(slot) if slot.held() => {
                        (FleetState::Holding, Some(slot.index + 1))
                    }
                    Standing::Uncoordinated => (FleetState::Uncoordinated, None),
                    _ => (FleetState::Waiting, None),
                };
                FleetRegistry {
                    registry: registry.clone(),
                    state,
                    slot,
                    slots,
                }
            })
            .collect();
        out.sort_by(|a, b| a.registry.cmp(&b.registry));
        out
    }
}

impl<A: LeaseApi> Drop for FleetGate<A> {
    fn drop(&mut self) {
        // No task left behind; held slots expire (or are released by `retain` before).
        for (_, s) in self.inner.lock().unwrap().registries.drain() {
            if let Standing::Acquiring(task) = s {
                task.abort();
            }
        }
    }
}
