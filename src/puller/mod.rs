//! Pulling a list of images: policies, bounded parallelism, and back-off.
//!
//! A pull attempt holds a slot of its registry and a global slot; an image waiting (in back-off
//! or for a slot) is a record in the pull queue, not a task, and holds neither. Permanent
//! failures end an image's run at once; transient ones are retried with full-jitter
//! exponential back-off. A 429 also pauses new attempts to that registry, because every
//! parallel pull would otherwise hit the same limit; and a host that refuses, fails (5xx) or
//! limits (429) is paused as a whole by its circuit breaker, probed by one pull, and resumed
//! for every image when the probe works.
//!
//! Here: the settings, what a run reports, and the entry points ([`Puller::run`] for one run
//! over a list; `PullQueue` for a caller that keeps images queued across passes, the agent).
//! `plan` decides what each image needs, `queue` holds the images that wait, `gate` admits
//! attempts (slots, 429 holds, the breaker), `attempt` runs one, `backoff` says how long to
//! wait, and `error` names what failed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{BackoffSettings, Config, ImageSpec};
use crate::credentials::Credentials;
use crate::fleet::FleetBudget;
use crate::runtime::{ImageInfo, Runtime};

mod attempt;
mod backoff;
mod error;
mod gate;
mod plan;
mod progress;
mod queue;
#[cfg(test)]
mod tests;

pub(crate) use attempt::AttemptEnd;
pub use error::{FailureKind, PullError};
use gate::Gates;
use plan::Plan;
pub use plan::PresentImages;
pub use progress::{POLL_EVERY, ProgressSink, ProgressUpdate, PullBytes};
pub(crate) use queue::{Finished, PullQueue};
pub use queue::{fleet_changed, sleep_until_some};

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
    /// Bytes fetched so far by a pull in flight (containerd only; see `progress`).
    Progress {
        index: usize,
        bytes: PullBytes,
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

/// Pulls images through a runtime. Keep one per process: its slots and registry holds are
/// shared by every run.
pub struct Puller<R> {
    runtime: Arc<R>,
    settings: PullSettings,
    /// Swapped when the credential sources change; each attempt reads it afresh.
    credentials: Mutex<Arc<Credentials>>,
    gates: Gates,
    /// The cluster-wide pull budget (`fleet:`), when the agent coordinates with other nodes.
    fleet: Mutex<Option<Arc<dyn FleetBudget>>>,
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
            gates: Gates::new(settings.parallelism, settings.per_registry_parallelism),
            settings,
            fleet: Mutex::new(None),
        }
    }

    /// Pulls start only while the fleet budget admits their registry (see `crate::fleet`).
    pub fn set_fleet(&self, fleet: Option<Arc<dyn FleetBudget>>) {
        *self.fleet.lock().unwrap_or_else(|e| e.into_inner()) = fleet;
    }

    pub fn fleet(&self) -> Option<Arc<dyn FleetBudget>> {
        self.fleet.lock().unwrap_or_else(|e| e.into_inner()).clone()
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
        let present = PresentImages::new(present);
        let mut outcomes: Vec<ImageOutcome> = Vec::with_capacity(images.len());
        let mut queue = PullQueue::new(true);
        for (index, spec) in images.iter().enumerate() {
            let plan = Plan::for_image(spec, &present);
            let mut outcome = ImageOutcome {
                result: PullResult::AlreadyPresent,
                image: None,
                attempts: 0,
                elapsed: Duration::ZERO,
                last_error: None,
            };
            match plan {
                Plan::Present(info) => {
                    outcome.image = Some(info.clone());
                    on_event(PullEvent::Present {
                        index,
                        size_bytes: info.size_bytes,
                    });
                }
                Plan::NotPresent => {
                    let error = PullError {
                        image: spec.reference.pull_ref(),
                        kind: FailureKind::NotPresent,
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
                Plan::Pull { found } => {
                    outcome.image = found.cloned();
                    on_event(PullEvent::Queued { index });
                    queue.push(index, ());
                }
            }
            outcomes.push(outcome);
        }
        // Progress comes from the poller task; it is forwarded from this loop, in order.
        let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel();
        queue.track_progress(Arc::new(move |updates: Vec<ProgressUpdate>| {
            for u in updates {
                let _ = progress_tx.send(PullEvent::Progress {
                    index: u.n,
                    bytes: u.bytes,
                });
            }
        }));
        let mut emit = |_: usize, _: &(), e: PullEvent| on_event(e);
        let fleet = self.fleet().map(|f| f.changed());
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
                Some(event) = progress_rx.recv() => on_event(event),
                Some(end) = queue.join_next() => {
                    // What the poller said before the attempt ended comes before its end.
                    while let Ok(event) = progress_rx.try_recv() {
                        on_event(event);
                    }
                    if let Some(f) = queue.settle(end, self, &mut emit) {
                        let found = outcomes[f.n].image.take();
                        outcomes[f.n] = f.outcome;
                        if outcomes[f.n].image.is_none() {
                            outcomes[f.n].image = found;
                        }
                    }
                }
                _ = sleep_until_some(wake), if wake.is_some() => {}
                _ = fleet_changed(&fleet) => {}
            }
        }
        if let Some(f) = self.fleet() {
            f.retain(&|_| false);
        }
        outcomes
    }
}
