//! The shared rate-limit breaker: one node's 429 from a registry pauses every node's pulls
//! from it, so that the fleet takes about one 429 per window instead of one per node.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;

use super::lease::{ApiError, LeaseApi};
use super::slots::Coordinator;
use super::{
    BACKOFF_STEP_ANNOTATION, BACKOFF_UNTIL_ANNOTATION, FLEET_LABEL, REGISTRY_ANNOTATION,
    REGISTRY_LABEL, breaker_name, registry_key,
};

/// The first window when the registry gave no Retry-After (Docker Hub, Quay).
pub const BREAKER_FIRST: Duration = Duration::from_secs(60);
/// Windows double up to this.
pub const BREAKER_MAX: Duration = Duration::from_secs(15 * 60);

fn until_of(lease: &Lease) -> Option<SystemTime> {
    let s = lease
        .metadata
        .annotations
        .as_ref()?
        .get(BACKOFF_UNTIL_ANNOTATION)?;
    let t: Timestamp = s.parse().ok()?;
    Some(SystemTime::from(t))
}

fn step_of(lease: &Lease) -> Option<Duration> {
    let s = lease
        .metadata
        .annotations
        .as_ref()?
        .get(BACKOFF_STEP_ANNOTATION)?;
    s.parse().ok().map(Duration::from_secs)
}

impl<A: LeaseApi> Coordinator<A> {
    /// The local instant the breaker Lease says pulls resume at, if it is open. Capped at
    /// `BREAKER_MAX` from now, so that a skewed writer's clock cannot stop a node for longer.
    pub(super) fn breaker_from(&self, lease: &Lease) -> Option<Instant> {
        let left = until_of(lease)?.duration_since(self.clock.now()).ok()?;
        Some(Instant::now() + left.min(BREAKER_MAX))
    }

    /// Reads `registry`'s breaker (one GET), pausing this node if it is open; for a slot
    /// holder before each pull. Returns the instant pulls may resume.
    pub async fn check_breaker(&self, registry: &str) -> Result<Option<Instant>, ApiError> {
        if let Some(lease) = self.api.get(&breaker_name(registry)).await?
            && let Some(until) = self.breaker_from(&lease)
        {
            self.pause(registry, until);
        }
        Ok(self.paused_until(registry))
    }

    /// This node got a 429 (or `toomanyrequests`) from `registry`: opens the breaker for every
    /// node, `retry_after` long where the registry said, else twice the last window (from
    /// `BREAKER_FIRST`, at most `BREAKER_MAX`). A window already open is left as it is.
    /// Returns the instant pulls may resume; on API errors only this node pauses.
    pub async fn record_rate_limit(
        &self,
        registry: &str,
        retry_after: Option<Duration>,
    ) -> Instant {
        for _ in 0..3 {
            match self.try_record(registry, retry_after).await {
                Ok(until) => {
                    self.pause(registry, until);
                    return until;
                }
                Err(ApiError::Conflict) => continue,
                Err(e) => {
                    tracing::warn!(registry, "recording the rate limit for the fleet: {e}");
                    break;
                }
            }
        }
        let until = Instant::now() + retry_after.unwrap_or(BREAKER_FIRST).min(BREAKER_MAX);
        self.pause(registry, until);
        until
    }

    async fn try_record(
        &self,
        registry: &str,
        retry_after: Option<Duration>,
    ) -> Result<Instant, ApiError> {
        let current = self.api.get(&breaker_name(registry)).await?;
        if let Some(lease) = &current
            && let Some(until) = self.breaker_from(lease)
        {
            // Another node was first: one 429 per window.
            return Ok(until);
        }
        let now = self.clock.now();
        let step = match retry_after {
            Some(d) => d.min(BREAKER_MAX),
            None => {
                // Doubled when the last window ended recently (the limit held), else afresh.
                let last = current
                    .as_ref()
                    .and_then(|l| Some((step_of(l)?, until_of(l)?)));
                match last {
                    Some((step, until))
                        if now.duration_since(until).unwrap_or_default() < step * 2 =>
                    {
                        (step * 2).min(BREAKER_MAX)
                    }
                    _ => BREAKER_FIRST,
                }
            }
        };
        let until = Timestamp::try_from(now + step)
            .map(|t| t.to_string())
            .unwrap_or_default();
        let mut lease = current.unwrap_or_else(|| Lease {
            metadata: ObjectMeta {
                name: Some(breaker_name(registry)),
                labels: Some(
                    [
                        (FLEET_LABEL.to_string(), "slot".to_string()),
                        (REGISTRY_LABEL.to_string(), registry_key(registry)),
                    ]
                    .into(),
                ),
                annotations: Some([(REGISTRY_ANNOTATION.to_string(), registry.to_string())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec::default()),
        });
        let annotations = lease
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        annotations.insert(BACKOFF_UNTIL_ANNOTATION.to_string(), until);
        annotations.insert(
            BACKOFF_STEP_ANNOTATION.to_string(),
            step.as_secs().to_string(),
        );
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = Some(self.node.clone());
            spec.renew_time = Some(self.clock.micro());
        }
        if lease.metadata.resource_version.is_some() {
            self.api.replace(&lease).await?;
        } else {
            self.api.create(&lease).await?;
        }
        Ok(Instant::now() + step)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{BREAKER_FIRST, BREAKER_MAX};
    use crate::config::OnUnavailable;
    use crate::fleet::Clock;
    use crate::fleet::fake::{Shared, node, settings};

    const R: &str = "registry.example.com";

    /// The README's windows: 1 minute, doubled by each 429 that follows the last window, and
    /// held at 15 minutes however long the registry keeps refusing (here a day of 429s).
    #[tokio::test(start_paused = true)]
    async fn windows_double_from_one_minute_up_to_the_15_minute_cap() {
        let shared = Arc::new(Shared::default());
        let a = node(
            &shared,
            "node-a",
            &settings(2, OnUnavailable::Proceed),
            Clock::new(),
        );
        let mut windows = Vec::new();
        let day = Instant::now() + Duration::from_secs(24 * 3600);
        while Instant::now() < day {
            let until = a.record_rate_limit(R, None).await;
            let window = (until - Instant::now()).as_secs_f64().round() as u64;
            windows.push(window);
            // The next pull, just after the window ends, meets the next 429.
            tokio::time::sleep_until(until + Duration::from_secs(1)).await;
        }
        assert_eq!(windows[..6], [60, 120, 240, 480, 900, 900], "{windows:?}");
        assert!(windows[5..].iter().all(|w| *w == 900), "{windows:?}");
        assert_eq!(BREAKER_FIRST, Duration::from_secs(60));
        assert_eq!(BREAKER_MAX, Duration::from_secs(15 * 60));
    }
}
