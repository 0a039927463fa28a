//! Who may start a pull attempt now: a global slot, and per registry a slot, the end of a
//! pause a 429 asked for, and its circuit breaker. Admission never waits; the queue waits
//! instead, so an image that cannot start holds nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::FailureKind;
use super::backoff::{ceiling, half_jitter};
use crate::config::BackoffSettings;
use crate::runtime::ErrorKind;

/// The slots shared by every run of one puller: global, and per registry host.
pub(crate) struct Gates {
    global: Arc<Semaphore>,
    per_registry: usize,
    registries: Mutex<HashMap<String, Arc<RegistryGate>>>,
}

impl Gates {
    pub(crate) fn new(parallelism: usize, per_registry: usize) -> Self {
        Gates {
            global: Arc::new(Semaphore::new(parallelism)),
            per_registry,
            registries: Mutex::new(HashMap::new()),
        }
    }

    /// A global slot is free: an attempt could start now.
    pub(crate) fn has_free_slot(&self) -> bool {
        self.global.available_permits() > 0
    }

    /// The gate of `registry`, made on first use.
    pub(crate) fn gate(&self, registry: &str) -> Arc<RegistryGate> {
        let mut registries = self.registries.lock().unwrap_or_else(|e| e.into_inner());
        registries
            .entry(registry.to_string())
            .or_insert_with(|| Arc::new(RegistryGate::new(self.per_registry)))
            .clone()
    }

    /// Whether an attempt to `gate`'s registry may start now: the breaker's admission, a
    /// registry slot, then a global one.
    pub(crate) fn try_admit(&self, gate: &Arc<RegistryGate>) -> Admission {
        if !self.has_free_slot() {
            return Admission::Full;
        }
        if let Some(until) = gate.held_until() {
            return Admission::NotBefore(until);
        }
        let probe = match gate.admit() {
            Admit::Go { probe } => probe,
            Admit::WaitUntil(until) => return Admission::NotBefore(until),
            Admit::WaitForProbe => return Admission::Blocked,
        };
        let guard = ProbeGuard {
            gate: gate.clone(),
            armed: probe,
        };
        let Ok(registry) = gate.slots.clone().try_acquire_owned() else {
            return Admission::Blocked;
        };
        let Ok(global) = self.global.clone().try_acquire_owned() else {
            return Admission::Full;
        };
        Admission::Go(Admitted {
            permits: (registry, global),
            guard,
        })
    }
}

/// The answer of [`Gates::try_admit`].
pub(crate) enum Admission {
    Go(Admitted),
    /// The registry is paused (breaker, 429) until then.
    NotBefore(Instant),
    /// The registry's slots are taken, or its probe is under way: an attempt to it must end
    /// first.
    Blocked,
    /// Every global slot is taken.
    Full,
}

/// The slots of one attempt, and whether it probes a paused host. Dropped without
/// [`Admitted::finish`] (a cancelled attempt), it frees its slots and lets another attempt
/// probe.
pub(crate) struct Admitted {
    permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    guard: ProbeGuard,
}

impl Admitted {
    /// This attempt probes a paused host.
    pub(crate) fn probe(&self) -> bool {
        self.guard.armed
    }

    /// Records how the attempt ended with its registry (a 429's `hold`, the breaker) while it
    /// still holds its slots, so that no other attempt slips in first; then frees them.
    /// Returns when the host's pause ends, if it is paused now.
    pub(crate) fn finish(
        mut self,
        failure: Option<FailureKind>,
        hold: Option<Duration>,
        backoff: &BackoffSettings,
    ) -> Option<Instant> {
        let gate = self.guard.gate.clone();
        if let Some(hold) = hold {
            gate.hold(Instant::now() + hold);
        }
        let paused_until = gate.record(self.guard.armed, failure, backoff);
        self.guard.armed = false;
        drop(self.permits);
        paused_until
    }
}

/// One registry host's slots, 429 hold and breaker.
pub(crate) struct RegistryGate {
    slots: Arc<Semaphore>,
    /// No new attempt to this registry starts before this instant (set by a 429).
    hold_until: Mutex<Option<Instant>>,
    breaker: Mutex<Breaker>,
}

/// The per-registry circuit breaker. A host that refuses connections, answers 5xx or 429 is
/// paused as a whole (jittered, growing from `backoff.initial` to `backoff.max`); when the
/// pause ends one attempt probes it while the others wait; its success resumes them all.
#[derive(Default)]
struct Breaker {
    /// Paused until then.
    open_until: Option<Instant>,
    /// Pauses in a row without a success: the pause doubles with each.
    trips: u32,
    /// The one attempt allowed through after a pause is under way.
    probing: bool,
}

/// What the breaker lets an attempt do.
enum Admit {
    Go { probe: bool },
    WaitUntil(Instant),
    WaitForProbe,
}

/// A host-level failure: the registry as a whole is down, failing or limiting.
pub(crate) fn trips_breaker(kind: FailureKind) -> bool {
    matches!(
        kind.runtime(),
        Some(ErrorKind::Network | ErrorKind::RegistryError | ErrorKind::RateLimited)
    )
}

impl RegistryGate {
    fn new(slots: usize) -> Self {
        RegistryGate {
            slots: Arc::new(Semaphore::new(slots)),
            hold_until: Mutex::new(None),
            breaker: Mutex::new(Breaker::default()),
        }
    }

    fn held_until(&self) -> Option<Instant> {
        let hold = *self.hold_until.lock().unwrap_or_else(|e| e.into_inner());
        hold.filter(|h| *h > Instant::now())
    }

    fn hold(&self, until: Instant) {
        let mut hold = self.hold_until.lock().unwrap_or_else(|e| e.into_inner());
        if hold.is_none_or(|h| h < until) {
            *hold = Some(until);
        }
    }

    fn breaker(&self) -> MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn admit(&self) -> Admit {
        let mut b = self.breaker();
        match b.open_until {
            None => Admit::Go { probe: false },
            Some(until) if until > Instant::now() => Admit::WaitUntil(until),
            Some(_) if b.probing => Admit::WaitForProbe,
            Some(_) => {
                b.probing = true;
                Admit::Go { probe: true }
            }
        }
    }

    /// Records how an attempt that the breaker let through ended. Returns when the host's
    /// pause ends, if it is paused now.
    fn record(
        &self,
        probe: bool,
        failure: Option<FailureKind>,
        backoff: &BackoffSettings,
    ) -> Option<Instant> {
        let mut b = self.breaker();
        let now = Instant::now();
        match failure {
            // The host answered (a success, or a not-found, a refusal, a certificate): resume
            // everything.
            None => {
                *b = Breaker::default();
                None
            }
            Some(kind) if kind.is_permanent() => {
                *b = Breaker::default();
                None
            }
            Some(kind) if trips_breaker(kind) => {
                // Attempts in flight when the host went down fail together: one trip for them.
                if b.open_until.is_none_or(|u| u <= now) || probe {
                    let step = ceiling(backoff, b.trips);
                    b.trips += 1;
                    b.open_until = Some(now + half_jitter(step));
                }
                if probe {
                    b.probing = false;
                }
                b.open_until
            }
            // Says nothing about the host (a timeout, the runtime): let another attempt probe.
            Some(_) => {
                if probe {
                    b.probing = false;
                }
                b.open_until.filter(|u| *u > now)
            }
        }
    }

    /// A probe that ended without a result (cancelled): another attempt may probe.
    fn abandon_probe(&self) {
        self.breaker().probing = false;
    }
}

/// Frees the probe slot of a probe that is dropped (cancelled) before it records its end.
struct ProbeGuard {
    gate: Arc<RegistryGate>,
    armed: bool,
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if self.armed {
            self.gate.abandon_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe that the host answers with a permanent error (a mistyped tag, a refusal) shows
    /// the host is back: the breaker closes, and the host's images are not serialised behind
    /// one probe after another.
    #[tokio::test(start_paused = true)]
    async fn a_permanent_answer_to_the_probe_closes_the_breaker() {
        let gate = RegistryGate::new(3);
        let backoff = BackoffSettings::default();
        assert!(
            gate.record(false, Some(ErrorKind::Network.into()), &backoff)
                .is_some(),
            "a refused connection pauses the host"
        );
        tokio::time::advance(backoff.max + Duration::from_secs(1)).await;
        assert!(matches!(gate.admit(), Admit::Go { probe: true }));
        assert_eq!(
            gate.record(true, Some(ErrorKind::NotFound.into()), &backoff),
            None
        );
        for _ in 0..3 {
            assert!(
                matches!(gate.admit(), Admit::Go { probe: false }),
                "the host answered: its attempts go without a probe"
            );
        }
    }

    /// A cancelled probe (its attempt dropped) frees the probe: the next attempt probes.
    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_lets_another_attempt_probe() {
        let gates = Gates::new(2, 2);
        let gate = gates.gate("r.example");
        let backoff = BackoffSettings::default();
        gate.record(false, Some(ErrorKind::Network.into()), &backoff);
        tokio::time::advance(backoff.max + Duration::from_secs(1)).await;
        let Admission::Go(probe) = gates.try_admit(&gate) else {
            panic!("the pause ended: one probe goes")
        };
        assert!(probe.probe());
        assert!(matches!(gates.try_admit(&gate), Admission::Blocked));
        drop(probe);
        assert!(matches!(gates.try_admit(&gate), Admission::Go(a) if a.probe()));
    }
}
