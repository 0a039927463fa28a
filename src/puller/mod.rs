//! Pulling a list of images: policies, bounded parallelism, and back-off.
//!
//! A pull attempt holds a slot of its registry and a global slot; an image waiting (in back-off
//! or for a slot) is a record in a [`PullQueue`], not a task, and holds neither. Permanent failures end an image's run at once; transient ones are
//! retried with full-jitter exponential back-off. A 429 also pauses new attempts to that
//! registry, because every parallel pull would otherwise hit the same limit; and a host that
//! refuses, fails (5xx) or limits (429) is paused as a whole by its circuit breaker, probed
//! by one pull, and resumed for every image when the probe works.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{BackoffSettings, Config, ImageSpec, PullPolicy};
use crate::credentials::{Credentials, redact};
pub(crate) mod queue;

use queue::PullQueue;
use crate::runtime::{ErrorKind, ImageInfo, Runtime, RuntimeError};

/// containerd already retries a 429 about six times without pausing, so when one reaches us
/// the back-off jumps ahead this many doublings.
const RATE_LIMIT_EXTRA_STEPS: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullSettings {
    pub parallelism: usize,
    pub per_registry_parallelism: usize,
    pub pull_timeout: Duration,
    pub backoff: BackoffSettings,
}

impl From<&Config> for PullSettings {
    fn from(c: &Config) -> Self {
        PullSettings {
            parallelism: c.parallelism,
            per_registry_parallelism: c.per_registry_parallelism,
            pull_timeout: c.pull_timeout,
            backoff: c.backoff,
        }
    }
}

/// Why an image is not present, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{image}: {}: {detail} ({})", kind.summary(), kind.hint())]
pub struct PullError {
    /// The reference that was pulled.
    pub image: String,
    pub kind: ErrorKind,
    /// The runtime's own message.
    pub detail: String,
}

impl PullError {
    fn from_runtime(image: &str, e: RuntimeError) -> Self {
        PullError {
            image: image.to_string(),
            kind: e.kind(),
            detail: e.message,
        }
    }
}

/// Where an image was when the run was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    Waiting,
    Pulling,
    BackingOff,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Waiting => "waiting for a pull slot",
            Stage::Pulling => "pulling",
            Stage::BackingOff => "backing off",
        })
    }
}

/// What happened to one image, as it happens. `index` is the image's position in the list
/// given to [`Puller::run`].
#[derive(Debug, Clone, PartialEq)]
pub enum PullEvent {
    /// Already on the node; nothing to do.
    Present {
        index: usize,
        size_bytes: u64,
    },
    /// Needs a pull and waits for a slot.
    Queued {
        index: usize,
    },
    Started {
        index: usize,
        attempt: u32,
    },
    AttemptFailed {
        index: usize,
        attempt: u32,
        error: PullError,
        retry_in: Duration,
    },
    Pulled {
        index: usize,
        size_bytes: u64,
        elapsed: Duration,
        attempts: u32,
    },
    Failed {
        index: usize,
        error: PullError,
        attempts: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullResult {
    AlreadyPresent,
    Pulled,
    Failed(PullError),
    Cancelled(Stage),
}

/// The end state of one image after a run.
#[derive(Debug, Clone)]
pub struct ImageOutcome {
    pub result: PullResult,
    /// The image as the runtime reports it, when present.
    pub image: Option<ImageInfo>,
    pub attempts: u32,
    /// Time spent on this image, waiting included.
    pub elapsed: Duration,
    /// The last failed attempt, also when a later one succeeded or the run was cancelled.
    pub last_error: Option<PullError>,
}

impl ImageOutcome {
    pub fn is_present(&self) -> bool {
        matches!(self.result, PullResult::AlreadyPresent | PullResult::Pulled)
    }
}

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
pub(crate) fn trips_breaker(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::Network | ErrorKind::RegistryError | ErrorKind::RateLimited
    )
}

impl RegistryGate {
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

    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
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
        failure: Option<ErrorKind>,
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
                    let step = backoff.initial.saturating_mul(1 << b.trips.min(20));
                    b.trips += 1;
                    b.open_until = Some(now + half_jitter(step.min(backoff.max)));
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

/// Pulls images through a runtime. Keep one per process: its slots and registry holds are
/// shared by every run.
pub struct Puller<R> {
    runtime: Arc<R>,
    settings: PullSettings,
    /// Swapped when the credential sources change; each attempt reads it afresh.
    credentials: Mutex<Arc<Credentials>>,
    global: Arc<Semaphore>,
    registries: Mutex<HashMap<String, Arc<RegistryGate>>>,
}

impl<R: Runtime> Puller<R> {
    /// A puller that pulls anonymously.
    pub fn new(runtime: Arc<R>, settings: PullSettings) -> Self {
        Self::with_credentials(runtime, settings, Arc::new(Credentials::none()))
    }

    pub fn with_credentials(
        runtime: Arc<R>,
        settings: PullSettings,
        credentials: Arc<Credentials>,
    ) -> Self {
        Puller {
            runtime,
            credentials: Mutex::new(credentials),
            global: Arc::new(Semaphore::new(settings.parallelism)),
            settings,
            registries: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &PullSettings {
        &self.settings
    }

    pub fn credentials(&self) -> Arc<Credentials> {
        self.credentials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Later attempts use `credentials` (the config's sources changed).
    pub fn set_credentials(&self, credentials: Arc<Credentials>) {
        *self.credentials.lock().unwrap_or_else(|e| e.into_inner()) = credentials;
    }

    /// A global slot is free: an attempt could start now.
    pub(crate) fn has_free_slot(&self) -> bool {
        self.global.available_permits() > 0
    }

    pub fn runtime(&self) -> &Arc<R> {
        &self.runtime
    }

    /// Brings every image of `images` to its policy. `present` is one ListImages answer taken
    /// just before. Returns one outcome per image, in order; events go to `on_event` as they
    /// happen. Cancelling stops waits and in-flight pulls at once.
    ///
    /// Images that need a pull wait in a [`PullQueue`] as small records; at most
    /// `parallelism` attempts exist at a time.
    pub async fn run(
        self: &Arc<Self>,
        images: &[ImageSpec],
        present: &[ImageInfo],
        on_event: &(dyn Fn(PullEvent) + Send + Sync),
        cancel: &CancellationToken,
    ) -> Vec<ImageOutcome> {
        // Indexed once by the names CRI reports (tags, repo digests, ids): each entry is then
        // one lookup, not a scan of the runtime's list.
        let mut by_name: HashMap<&str, &ImageInfo> = HashMap::with_capacity(present.len() * 3);
        for info in present {
            for name in info.repo_tags.iter().chain(&info.repo_digests) {
                by_name.insert(name.as_str(), info);
            }
            by_name.entry(info.id.as_str()).or_insert(info);
        }
        let mut outcomes: Vec<ImageOutcome> = Vec::with_capacity(images.len());
        let mut queue = PullQueue::new(true);
        for (index, spec) in images.iter().enumerate() {
            let key = match spec.reference.digest() {
                Some(digest) => format!("{}@{digest}", spec.reference.name()),
                None => spec.reference.pull_ref(),
            };
            let found = by_name.get(key.as_str()).copied();
            let mut outcome = ImageOutcome {
                result: PullResult::AlreadyPresent,
                image: found.cloned(),
                attempts: 0,
                elapsed: Duration::ZERO,
                last_error: None,
            };
            match (spec.policy, found) {
                (PullPolicy::Never | PullPolicy::IfNotPresent, Some(info)) => {
                    on_event(PullEvent::Present {
                        index,
                        size_bytes: info.size_bytes,
                    });
                }
                (PullPolicy::Never, None) => {
                    let error = PullError {
                        image: spec.reference.pull_ref(),
                        kind: ErrorKind::NotPresent,
                        detail: "not in the runtime's image list".into(),
                    };
                    on_event(PullEvent::Failed {
                        index,
                        error: error.clone(),
                        attempts: 0,
                    });
                    outcome.result = PullResult::Failed(error.clone());
                    outcome.last_error = Some(error);
                }
                _ => {
                    on_event(PullEvent::Queued { index });
                    queue.push(index, ());
                }
            }
            outcomes.push(outcome);
        }
        let mut emit = |_: usize, _: &(), e: PullEvent| on_event(e);
        loop {
            queue.start_due(self, images, &mut emit);
            if queue.is_empty() {
                break;
            }
            let wake = queue.next_wake(self);
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    for f in queue.cancel_all() {
                        let found = outcomes[f.n].image.take();
                        outcomes[f.n] = f.outcome;
                        outcomes[f.n].image = found;
                    }
                    break;
                }
                Some(end) = queue.join_next() => {
                    if let Some(f) = queue.settle(end, self, &mut emit) {
                        let found = outcomes[f.n].image.take();
                        outcomes[f.n] = f.outcome;
                        if outcomes[f.n].image.is_none() {
                            outcomes[f.n].image = found;
                        }
                    }
                }
                _ = sleep_until_some(wake), if wake.is_some() => {}
            }
        }
        outcomes
    }

    /// One pull, then a look at what landed: its size, and that a pinned digest is really there.
    async fn attempt(&self, spec: &ImageSpec) -> Result<ImageInfo, PullError> {
        let pull_ref = spec.reference.pull_ref();
        let err = |e| PullError::from_runtime(&pull_ref, e);
        let image_id = self.pull_with_credentials(spec, &pull_ref).await?;
        let info = self
            .runtime
            .image_status(&image_id)
            .await
            .map_err(err)?
            .ok_or_else(|| PullError {
                image: pull_ref.clone(),
                kind: ErrorKind::Unknown,
                detail: format!("the runtime reported {image_id} pulled but does not list it"),
            })?;
        if let Some(digest) = spec.reference.digest()
            && info.repo_digest_for(&spec.reference) != Some(digest)
        {
            return Err(PullError {
                image: pull_ref.clone(),
                kind: ErrorKind::DigestMismatch,
                detail: format!(
                    "expected {digest}, the runtime has {}",
                    if info.repo_digests.is_empty() {
                        "no repo digest".to_string()
                    } else {
                        info.repo_digests.join(", ")
                    }
                ),
            });
        }
        Ok(info)
    }

    /// Pulls with each matching credential in turn, most specific first, until one works, as
    /// the kubelet does. A transient failure stops the round (another credential would meet the
    /// same outage); refusals are collected and reported together, without the secrets.
    async fn pull_with_credentials(
        &self,
        spec: &ImageSpec,
        pull_ref: &str,
    ) -> Result<String, PullError> {
        let credentials = self.credentials();
        let registry = spec.reference.domain();
        let found = credentials.lookup(&spec.reference).await;
        for problem in &found.problems {
            tracing::warn!(image = %pull_ref, "credential source unusable: {problem}");
        }
        let timeout = self.settings.pull_timeout;
        if found.credentials.is_empty() {
            return self
                .runtime
                .pull_image(pull_ref, None, timeout)
                .await
                .map_err(|e| {
                    let mut e = PullError::from_runtime(pull_ref, e);
                    if e.kind == ErrorKind::Unauthorized {
                        e.detail = format!(
                            "no credentials matched {registry} ({}); {}",
                            if credentials.sources().is_empty() {
                                "no credential sources configured".to_string()
                            } else {
                                format!("searched {}", credentials.describe_sources())
                            },
                            e.detail
                        );
                    }
                    e
                });
        }
        let mut refused: Vec<(String, PullError)> = Vec::new();
        for credential in &found.credentials {
            match self
                .runtime
                .pull_image(pull_ref, Some(&credential.auth), timeout)
                .await
            {
                Ok(id) => {
                    if !refused.is_empty() {
                        tracing::info!(image = %pull_ref, credential = %credential.describe(), "pulled with a later credential after {} refused", refused.len());
                    }
                    return Ok(id);
                }
                Err(e) => {
                    let mut e = PullError::from_runtime(pull_ref, e);
                    e.detail = redact(&e.detail, found.credentials.iter().map(|c| &c.auth));
                    if !e.kind.is_permanent() {
                        return Err(e);
                    }
                    refused.push((credential.describe(), e));
                }
            }
        }
        if credentials.anonymous_fallback {
            tracing::info!(image = %pull_ref, "every credential was refused; trying anonymously (anonymousFallback)");
            return self
                .runtime
                .pull_image(pull_ref, None, timeout)
                .await
                .map_err(|e| PullError::from_runtime(pull_ref, e));
        }
        // A refusal may be temporary (a rotation in progress): read secrets again next time.
        credentials.invalidate();
        // Not found behind a working login says more than the 401s of the other credentials.
        let kind = refused
            .iter()
            .map(|(_, e)| e.kind)
            .find(|k| *k != ErrorKind::Unauthorized)
            .unwrap_or(ErrorKind::Unauthorized);
        let tried = refused
            .iter()
            .map(|(who, e)| format!("{who}: {}", e.detail))
            .collect::<Vec<_>>()
            .join("; ");
        Err(PullError {
            image: pull_ref.to_string(),
            kind,
            detail: if kind == ErrorKind::Unauthorized {
                format!(
                    "credentials rejected by {registry}: tried {} credential{}: {tried}",
                    refused.len(),
                    if refused.len() == 1 { "" } else { "s" }
                )
            } else {
                format!("with {tried}")
            },
        })
    }

    pub(crate) fn gate(&self, registry: &str) -> Arc<RegistryGate> {
        let mut registries = self.registries.lock().unwrap_or_else(|e| e.into_inner());
        registries
            .entry(registry.to_string())
            .or_insert_with(|| {
                Arc::new(RegistryGate {
                    slots: Arc::new(Semaphore::new(self.settings.per_registry_parallelism)),
                    hold_until: Mutex::new(None),
                    breaker: Mutex::new(Breaker::default()),
                })
            })
            .clone()
    }

    /// Whether an attempt to `gate`'s registry may start now: the breaker's admission, a
    /// registry slot, then a global one. Never waits; the queue waits instead.
    pub(crate) fn try_admit(&self, gate: &Arc<RegistryGate>) -> Admission {
        if self.global.available_permits() == 0 {
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

    /// The back-off ceiling after `step` doublings: `backoff.initial` doubled, at most
    /// `backoff.max`.
    pub(crate) fn backoff_ceiling(&self, step: u32) -> Duration {
        let b = &self.settings.backoff;
        b.initial.saturating_mul(1 << step.min(20)).min(b.max)
    }

    /// Runs one admitted attempt and records its end with the registry (the breaker, a 429's
    /// hold) while it still holds its slots, so that no other attempt slips in first.
    pub(crate) async fn attempt_admitted(
        self: Arc<Self>,
        spec: ImageSpec,
        admitted: Admitted,
        mut step: u32,
        cancel: CancellationToken,
    ) -> AttemptEnd {
        let Admitted { permits, mut guard } = admitted;
        let gate = guard.gate.clone();
        let probe = guard.armed;
        // Boxed: the attempt's state (tonic's call futures, ~19 KiB on CRI) lives on the heap
        // only while it runs.
        let result = tokio::select! {
            r = Box::pin(self.attempt(&spec)) => r,
            _ = cancel.cancelled() => {
                return AttemptEnd { result: None, paused_until: None, rate_limit_hold: Duration::ZERO, step, probe };
            }
        };
        let mut rate_limit_hold = Duration::ZERO;
        if let Err(e) = &result
            && e.kind == ErrorKind::RateLimited
        {
            step += RATE_LIMIT_EXTRA_STEPS;
            rate_limit_hold = half_jitter(self.backoff_ceiling(step));
            step += 1;
            gate.hold(Instant::now() + rate_limit_hold);
        }
        let paused_until = gate.record(
            probe,
            result.as_ref().err().map(|e| e.kind),
            &self.settings.backoff,
        );
        guard.armed = false;
        drop(permits);
        AttemptEnd {
            result: Some(result),
            paused_until,
            rate_limit_hold,
            step,
            probe,
        }
    }
}

/// The answer of [`Puller::try_admit`].
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

/// The slots of one attempt, and whether it probes a paused host.
pub(crate) struct Admitted {
    permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    guard: ProbeGuard,
}

/// How one attempt ended. `result` is `None` when it was cancelled.
pub(crate) struct AttemptEnd {
    pub(crate) result: Option<Result<ImageInfo, PullError>>,
    /// The host is paused (its breaker is open) until then.
    pub(crate) paused_until: Option<Instant>,
    /// A 429 paused the registry this long.
    pub(crate) rate_limit_hold: Duration,
    /// The image's back-off doublings so far.
    pub(crate) step: u32,
    pub(crate) probe: bool,
}

/// Sleeps until `at`; forever without one (the caller's `select!` guards on it).
pub(crate) async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Full jitter: uniform in [0, d], so that nodes that failed together retry apart.
pub(crate) fn full_jitter(d: Duration) -> Duration {
    d.mul_f64(fastrand::f64())
}

/// Uniform in [d/2, d]: spread out, but never short, for registries that asked us to slow down.
fn half_jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::runtime::fake::FakeRuntime;
    use std::path::Path;
    use tonic::Code;

    fn config(yaml: &str) -> Config {
        Config::parse(yaml, Path::new("test.yaml")).unwrap()
    }

    struct Run {
        outcomes: Vec<ImageOutcome>,
        events: Vec<PullEvent>,
    }

    async fn run(rt: &Arc<FakeRuntime>, c: &Config) -> Run {
        run_with(rt, c, &CancellationToken::new()).await
    }

    async fn run_with(rt: &Arc<FakeRuntime>, c: &Config, cancel: &CancellationToken) -> Run {
        let puller = Arc::new(Puller::new(rt.clone(), PullSettings::from(c)));
        let present = rt.list_images().await.unwrap();
        let events = Mutex::new(Vec::new());
        let outcomes = puller
            .run(
                &c.images,
                &present,
                &|e| events.lock().unwrap().push(e),
                cancel,
            )
            .await;
        Run {
            outcomes,
            events: events.into_inner().unwrap(),
        }
    }

    fn err(code: Code, msg: &str) -> Result<(), RuntimeError> {
        Err(RuntimeError::new(code, msg))
    }

    #[tokio::test(start_paused = true)]
    async fn pulls_missing_and_skips_present() {
        let rt = Arc::new(FakeRuntime::new());
        rt.add_image("r.example/a:1", 5);
        let c = config("images: [r.example/a:1, r.example/b:1]");
        let r = run(&rt, &c).await;
        assert_eq!(r.outcomes[0].result, PullResult::AlreadyPresent);
        assert_eq!(r.outcomes[1].result, PullResult::Pulled);
        assert_eq!(rt.stats().pulls, vec!["r.example/b:1"]);
        // A second run finds everything present.
        let r = run(&rt, &c).await;
        assert!(
            r.outcomes
                .iter()
                .all(|o| o.result == PullResult::AlreadyPresent)
        );
        assert_eq!(rt.stats().pulls.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn policies() {
        let rt = Arc::new(FakeRuntime::new());
        rt.add_image("r.example/always:1", 5);
        rt.add_image("r.example/never-here:1", 5);
        let c = config(
            "images:\n  - {image: r.example/always:1, pullPolicy: Always}\n  - {image: r.example/never-here:1, pullPolicy: Never}\n  - {image: r.example/never-absent:1, pullPolicy: Never}\n",
        );
        let r = run(&rt, &c).await;
        assert_eq!(r.outcomes[0].result, PullResult::Pulled);
        assert_eq!(r.outcomes[1].result, PullResult::AlreadyPresent);
        match &r.outcomes[2].result {
            PullResult::Failed(e) => assert_eq!(e.kind, ErrorKind::NotPresent),
            other => panic!("{other:?}"),
        }
        assert_eq!(rt.stats().pulls, vec!["r.example/always:1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let rt = Arc::new(FakeRuntime::new());
        rt.script_pulls("r.example/gone:1", [err(Code::NotFound, "failed to pull and unpack image \"r.example/gone:1\": failed to resolve reference \"r.example/gone:1\": r.example/gone:1: not found")]);
        let c = config("images: [r.example/gone:1]");
        let r = run(&rt, &c).await;
        let PullResult::Failed(e) = &r.outcomes[0].result else {
            panic!()
        };
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert!(
            e.to_string()
                .starts_with("r.example/gone:1: the image or tag does not exist"),
            "{e}"
        );
        assert_eq!(r.outcomes[0].attempts, 1);
        assert_eq!(rt.stats().pulls.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_back_off_exponentially_within_bounds() {
        let rt = Arc::new(FakeRuntime::new());
        // A timeout says nothing about the host: the image's own back-off (not the breaker).
        rt.script_pulls(
            "r.example/a:1",
            (0..6).map(|_| err(Code::Cancelled, "Timeout expired")),
        );
        let c = config("backoff: {initial: 1s, max: 8s}\nimages: [r.example/a:1]");
        let r = run(&rt, &c).await;
        assert_eq!(r.outcomes[0].result, PullResult::Pulled);
        assert_eq!(r.outcomes[0].attempts, 7);
        assert_eq!(
            r.outcomes[0].last_error.as_ref().unwrap().kind,
            ErrorKind::Timeout
        );
        let delays: Vec<Duration> = r
            .events
            .iter()
            .filter_map(|e| match e {
                PullEvent::AttemptFailed { retry_in, .. } => Some(*retry_in),
                _ => None,
            })
            .collect();
        // Full jitter: each delay is at most the exponential ceiling 1, 2, 4, 8, 8, 8 seconds.
        let ceilings = [1, 2, 4, 8, 8, 8];
        assert_eq!(delays.len(), ceilings.len());
        for (d, c) in delays.iter().zip(ceilings) {
            assert!(*d <= Duration::from_secs(c), "{delays:?}");
        }
    }

    /// The lower side of the documented back-off: full jitter is uniform in [0, ceiling], so
    /// over many images each attempt's delays average half its ceiling and reach close to it.
    /// A back-off that did not grow, or a jitter that collapsed to 0, fails here.
    #[tokio::test(start_paused = true)]
    async fn back_off_delays_spread_over_the_whole_jitter_range() {
        const IMAGES: usize = 100;
        let rt = Arc::new(FakeRuntime::new());
        let mut yaml = String::from("backoff: {initial: 1s, max: 8s}\nparallelism: 100\nimages:\n");
        for i in 0..IMAGES {
            rt.script_pulls(
                &format!("r.example/a:{i}"),
                (0..4).map(|_| err(Code::Cancelled, "Timeout expired")),
            );
            yaml.push_str(&format!("  - r.example/a:{i}\n"));
        }
        let r = run(&rt, &config(&yaml)).await;
        let ceilings = [1.0, 2.0, 4.0, 8.0];
        for (n, ceiling) in ceilings.iter().enumerate() {
            let delays: Vec<f64> = r
                .events
                .iter()
                .filter_map(|e| match e {
                    PullEvent::AttemptFailed {
                        attempt, retry_in, ..
                    } if *attempt as usize == n + 1 => Some(retry_in.as_secs_f64()),
                    _ => None,
                })
                .collect();
            assert_eq!(delays.len(), IMAGES);
            let mean = delays.iter().sum::<f64>() / IMAGES as f64;
            let max = delays.iter().cloned().fold(0.0, f64::max);
            // Uniform on [0, c]: mean c/2 with a standard error of c/35 over 100 samples.
            assert!(
                mean > 0.35 * ceiling && mean < 0.65 * ceiling,
                "attempt {}: mean {mean:.2}s for a {ceiling}s ceiling",
                n + 1
            );
            assert!(
                max > 0.8 * ceiling,
                "attempt {}: max {max:.2}s for a {ceiling}s ceiling",
                n + 1
            );
        }
        assert!(r.outcomes.iter().all(|o| o.result == PullResult::Pulled));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limits_back_off_hard_and_pause_the_registry() {
        let rt = Arc::new(FakeRuntime::new());
        rt.script_pulls(
            "r.example/a:1",
            [err(
                Code::Unknown,
                "failed with status code [manifests 1]: 429 Too Many Requests",
            )],
        );
        let c = config(
            "parallelism: 1\nbackoff: {initial: 1s, max: 60s}\nimages: [r.example/a:1, r.example/b:1]",
        );
        let r = run(&rt, &c).await;
        let retry_in = r
            .events
            .iter()
            .find_map(|e| match e {
                PullEvent::AttemptFailed {
                    retry_in, error, ..
                } => {
                    assert_eq!(error.kind, ErrorKind::RateLimited);
                    Some(*retry_in)
                }
                _ => None,
            })
            .unwrap();
        // The first delay (1s) after three extra doublings: 8s, half-jittered to [4s, 8s].
        assert!(
            retry_in >= Duration::from_secs(4) && retry_in <= Duration::from_secs(8),
            "{retry_in:?}"
        );
        // b waited for the hold instead of hitting the limited registry right away.
        assert!(
            r.outcomes[1].elapsed >= retry_in,
            "{:?} < {retry_in:?}",
            r.outcomes[1].elapsed
        );
        assert!(r.outcomes.iter().all(|o| o.result == PullResult::Pulled));
    }

    #[tokio::test(start_paused = true)]
    async fn parallelism_caps_are_never_exceeded() {
        let rt = Arc::new(FakeRuntime::new());
        rt.set_pull_delay(Duration::from_secs(3));
        let mut yaml = String::from("parallelism: 4\nperRegistryParallelism: 2\nimages:\n");
        for reg in ["a.example", "b.example", "c.example"] {
            for i in 0..6 {
                yaml.push_str(&format!("  - {reg}/img:{i}\n"));
            }
        }
        let r = run(&rt, &config(&yaml)).await;
        assert!(r.outcomes.iter().all(|o| o.result == PullResult::Pulled));
        let s = rt.stats();
        assert_eq!(s.max_in_flight, 4);
        for reg in ["a.example", "b.example", "c.example"] {
            assert_eq!(s.max_in_flight_per_registry[reg], 2, "{reg}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn backing_off_holds_no_slot() {
        let rt = Arc::new(FakeRuntime::new());
        rt.set_pull_delay(Duration::from_secs(1));
        // A timeout: the image's own back-off. (A 503 would pause the whole host, b and c
        // included, by its breaker.)
        rt.script_pulls(
            "r.example/flaky:1",
            (0..3).map(|_| err(Code::Cancelled, "Timeout expired")),
        );
        let c = config(
            "parallelism: 1\nbackoff: {initial: 60s, max: 60s}\nimages: [r.example/flaky:1, r.example/b:1, r.example/c:1]",
        );
        let r = run(&rt, &c).await;
        // b and c finished while flaky sat in a 60s back-off with the only slot free.
        assert!(
            r.outcomes[1].elapsed < Duration::from_secs(60),
            "{:?}",
            r.outcomes[1].elapsed
        );
        assert!(
            r.outcomes[2].elapsed < Duration::from_secs(60),
            "{:?}",
            r.outcomes[2].elapsed
        );
        assert_eq!(r.outcomes[0].result, PullResult::Pulled);
        assert_eq!(r.outcomes[0].attempts, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn digest_pins_are_verified() {
        let rt = Arc::new(FakeRuntime::new());
        let good = format!("sha256:{}", "a".repeat(64));
        let c = config(&format!(
            "images: [r.example/pinned@{good}, r.example/tagged:1]"
        ));
        let r = run(&rt, &c).await;
        assert_eq!(r.outcomes[0].result, PullResult::Pulled);
        assert_eq!(rt.stats().pulls[0], format!("r.example/pinned@{good}"));
        let image = r.outcomes[0].image.as_ref().unwrap();
        assert_eq!(
            image.repo_digest_for(&c.images[0].reference),
            Some(good.as_str())
        );
    }

    /// A probe that the host answers with a permanent error (a mistyped tag, a refusal) shows
    /// the host is back: the breaker closes, and the host's images are not serialised behind
    /// one probe after another.
    #[tokio::test(start_paused = true)]
    async fn a_permanent_answer_to_the_probe_closes_the_breaker() {
        let gate = RegistryGate {
            slots: Arc::new(Semaphore::new(3)),
            hold_until: Mutex::new(None),
            breaker: Mutex::new(Breaker::default()),
        };
        let backoff = BackoffSettings::default();
        assert!(
            gate.record(false, Some(ErrorKind::Network), &backoff)
                .is_some(),
            "a refused connection pauses the host"
        );
        tokio::time::advance(backoff.max + Duration::from_secs(1)).await;
        assert!(matches!(gate.admit(), Admit::Go { probe: true }));
        assert_eq!(gate.record(true, Some(ErrorKind::NotFound), &backoff), None);
        for _ in 0..3 {
            assert!(
                matches!(gate.admit(), Admit::Go { probe: false }),
                "the host answered: its attempts go without a probe"
            );
        }
    }

    /// Issue 10: 5,000 images against one refused host made ~200 attempts/s with per-image
    /// back-off only. The breaker pauses the host as a whole and probes it with one pull.
    #[tokio::test(start_paused = true)]
    async fn a_refused_host_is_paused_as_a_whole_and_resumed_by_one_probe() {
        const IMAGES: usize = 1_000;
        const DOWN: Duration = Duration::from_secs(1800);
        let rt = Arc::new(FakeRuntime::new());
        rt.set_registry_down("down.example", true);
        // The defaults: backoff 10s..5m, parallelism 3.
        let mut yaml = String::from("images:\n");
        for i in 0..IMAGES {
            yaml.push_str(&format!("  - down.example/team/img{i}:1\n"));
        }
        yaml.push_str("  - up.example/team/other:1\n");
        let c = config(&yaml);
        let counts = Arc::new(Mutex::new(Vec::new()));
        let (rt2, counts2) = (rt.clone(), counts.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let at_10s = rt2.stats().pulls.len();
            tokio::time::sleep(DOWN - Duration::from_secs(10)).await;
            let at_down_end = rt2.stats().pulls.len();
            counts2.lock().unwrap().extend([at_10s, at_down_end]);
            rt2.set_registry_down("down.example", false);
        });
        let started = Instant::now();
        let r = run(&rt, &c).await;
        let took = started.elapsed();
        let counts = counts.lock().unwrap().clone();
        let rate = (counts[1] - counts[0]) as f64 / (DOWN - Duration::from_secs(10)).as_secs_f64();
        eprintln!(
            "refused host: {rate:.3} attempts/s after 10 s; converged {:?} after it came back",
            took - DOWN
        );
        assert!(
            rate < 1.0,
            "{rate:.2} attempts/s to the refused host after the first 10 s"
        );
        assert!(r.outcomes.iter().all(|o| o.result == PullResult::Pulled));
        // Back: everything converges within one breaker interval (at most backoff.max, 5m).
        assert!(
            took <= DOWN + Duration::from_secs(300),
            "converged {:?} after the host came back",
            took - DOWN
        );
        // The other host was never held up by the dead one.
        assert!(
            r.outcomes[IMAGES].elapsed < Duration::from_secs(1),
            "{:?}",
            r.outcomes[IMAGES].elapsed
        );
    }

    /// Issue 10: every waiting image held its pull state in a task of its own (~20 KiB on
    /// CRI, then ~1 KiB boxed), 141 MiB for 5,000 images against a down registry. The goal
    /// (README Cost: under 64 MiB with 20,000 declared) leaves about 3 KiB per image for
    /// everything: a waiting image is now one queue record, a small part of that.
    #[test]
    fn a_waiting_image_is_a_small_record() {
        let size = std::mem::size_of::<crate::puller::queue::Record<()>>();
        assert!(size < 160, "{size} bytes per waiting image");
    }

    /// A registry that serves other content than the pinned digest: a permanent failure that
    /// names both digests, not retried.
    #[tokio::test(start_paused = true)]
    async fn a_pin_the_registry_does_not_serve_is_a_digest_mismatch() {
        let rt = Arc::new(FakeRuntime::new());
        let pinned = format!("sha256:{}", "a".repeat(64));
        let served = format!("sha256:{}", "b".repeat(64));
        rt.serve_digest("r.example/pinned", &served);
        let c = config(&format!("images: [r.example/pinned@{pinned}]"));
        let r = run(&rt, &c).await;
        let PullResult::Failed(e) = &r.outcomes[0].result else {
            panic!("{:?}", r.outcomes[0].result)
        };
        assert_eq!(e.kind, ErrorKind::DigestMismatch);
        assert_eq!(e.kind.class(), "permanent");
        assert!(
            e.detail.contains(&format!("expected {pinned}")) && e.detail.contains(&served),
            "{e}"
        );
        assert_eq!(r.outcomes[0].attempts, 1, "not retried");
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_reports_where_each_image_was() {
        let rt = Arc::new(FakeRuntime::new());
        rt.set_pull_delay(Duration::from_secs(100));
        let c = config("parallelism: 1\nimages: [r.example/a:1, r.example/b:1]");
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            stop.cancel();
        });
        let r = run_with(&rt, &c, &cancel).await;
        assert_eq!(r.outcomes[0].result, PullResult::Cancelled(Stage::Pulling));
        assert_eq!(r.outcomes[1].result, PullResult::Cancelled(Stage::Waiting));
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_are_transient() {
        let rt = Arc::new(FakeRuntime::new());
        rt.set_pull_delay(Duration::from_secs(100));
        let c =
            config("pullTimeout: 5s\nbackoff: {initial: 1s, max: 1s}\nimages: [r.example/slow:1]");
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(20)).await;
            stop.cancel();
        });
        let r = run_with(&rt, &c, &cancel).await;
        assert!(r.outcomes[0].attempts >= 3, "{}", r.outcomes[0].attempts);
        assert_eq!(
            r.outcomes[0].last_error.as_ref().unwrap().kind,
            ErrorKind::Timeout
        );
    }

    mod credentials {
        use super::*;
        use crate::credentials::{CredentialSource, Credentials};
        use base64::Engine;

        /// A docker config file with one `auth` entry per (key, user, password).
        fn docker_config(
            dir: &Path,
            name: &str,
            entries: &[(&str, &str, &str)],
        ) -> CredentialSource {
            let auths: Vec<String> = entries
                .iter()
                .map(|(key, user, password)| {
                    let auth = base64::engine::general_purpose::STANDARD
                        .encode(format!("{user}:{password}"));
                    format!("\"{key}\": {{\"auth\": \"{auth}\"}}")
                })
                .collect();
            let path = dir.join(name);
            std::fs::write(&path, format!("{{\"auths\": {{{}}}}}", auths.join(","))).unwrap();
            CredentialSource::DockerConfig(path)
        }

        async fn pull_one(rt: &Arc<FakeRuntime>, creds: Credentials, image: &str) -> ImageOutcome {
            let c = config(&format!(
                "backoff: {{initial: 1s, max: 2s}}\nimages: [{image}]"
            ));
            let puller = Arc::new(Puller::with_credentials(
                rt.clone(),
                PullSettings::from(&c),
                Arc::new(creds),
            ));
            puller
                .run(&c.images, &[], &|_| {}, &CancellationToken::new())
                .await
                .remove(0)
        }

        #[tokio::test(start_paused = true)]
        async fn matching_credentials_are_tried_most_specific_first_until_one_works() {
            let dir = tempfile::tempdir().unwrap();
            let rt = Arc::new(FakeRuntime::new());
            rt.require_login("r.example.com", "team-bot", "right");
            let source = docker_config(
                dir.path(),
                "config.json",
                &[
                    ("r.example.com", "team-bot", "right"),
                    ("https://r.example.com/team", "stale-bot", "old"),
                ],
            );
            let o = pull_one(
                &rt,
                Credentials::new(vec![source], false, None),
                "r.example.com/team/app:1",
            )
            .await;
            assert_eq!(o.result, PullResult::Pulled);
            assert_eq!(
                rt.stats().pull_users,
                [Some("stale-bot".to_string()), Some("team-bot".to_string())],
                "the path-specific key first, then the host key"
            );
        }

        #[tokio::test(start_paused = true)]
        async fn refusals_are_permanent_and_name_every_source_tried_without_secrets() {
            let dir = tempfile::tempdir().unwrap();
            let rt = Arc::new(FakeRuntime::new());
            rt.require_login("r.example.com", "bot", "right");
            let a = docker_config(
                dir.path(),
                "a.json",
                &[("r.example.com", "bot", "wrong-one")],
            );
            let b = docker_config(
                dir.path(),
                "b.json",
                &[("*.example.com", "bot", "wrong-two")],
            );
            let o = pull_one(
                &rt,
                Credentials::new(vec![a, b], false, None),
                "r.example.com/app:1",
            )
            .await;
            let PullResult::Failed(e) = &o.result else {
                panic!("{:?}", o.result)
            };
            assert_eq!(e.kind, ErrorKind::Unauthorized);
            assert_eq!(o.attempts, 1, "a refusal is not retried hot");
            let text = e.to_string();
            assert!(
                text.contains("credentials rejected by r.example.com: tried 2 credentials"),
                "{text}"
            );
            assert!(
                text.contains("a.json (key r.example.com)")
                    && text.contains("b.json (key *.example.com)"),
                "{text}"
            );
            assert!(
                !text.contains("wrong-one") && !text.contains("wrong-two"),
                "{text}"
            );
        }

        #[tokio::test(start_paused = true)]
        async fn without_a_match_the_refusal_says_what_was_searched() {
            let dir = tempfile::tempdir().unwrap();
            let rt = Arc::new(FakeRuntime::new());
            rt.require_login("r.example.com", "bot", "right");
            let other = docker_config(
                dir.path(),
                "other.json",
                &[("elsewhere.example.org", "x", "y")],
            );
            let o = pull_one(
                &rt,
                Credentials::new(vec![other], false, None),
                "r.example.com/app:1",
            )
            .await;
            let PullResult::Failed(e) = &o.result else {
                panic!("{:?}", o.result)
            };
            assert!(
                e.detail
                    .starts_with("no credentials matched r.example.com (searched dockerConfig "),
                "{}",
                e.detail
            );
            assert_eq!(rt.stats().pull_users, [None]);
        }

        #[tokio::test(start_paused = true)]
        async fn anonymous_fallback_is_opt_in() {
            let dir = tempfile::tempdir().unwrap();
            let rt = Arc::new(FakeRuntime::new());
            let source = docker_config(dir.path(), "c.json", &[("r.example.com", "bot", "pw")]);
            // A public registry that refuses this (stale) login but serves anonymous pulls.
            rt.script_pulls(
                "r.example.com/app:1",
                [err(
                    Code::Unknown,
                    "failed to pull and unpack image: 401 Unauthorized",
                )],
            );
            let o = pull_one(
                &rt,
                Credentials::new(vec![source.clone()], true, None),
                "r.example.com/app:1",
            )
            .await;
            assert_eq!(o.result, PullResult::Pulled);
            assert_eq!(rt.stats().pull_users, [Some("bot".to_string()), None]);

            rt.script_pulls(
                "r.example.com/app:2",
                [err(
                    Code::Unknown,
                    "failed to pull and unpack image: 401 Unauthorized",
                )],
            );
            let o = pull_one(
                &rt,
                Credentials::new(vec![source], false, None),
                "r.example.com/app:2",
            )
            .await;
            assert!(
                matches!(o.result, PullResult::Failed(_)),
                "no fallback by default"
            );
        }
    }
}
