//! One pull attempt: each matching credential in turn, then a look at what landed (its size,
//! and that a pinned digest is really there), and its end recorded with the registry's gate.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::backoff::{self, RATE_LIMIT_EXTRA_STEPS, half_jitter};
use super::gate::Admitted;
use super::{FailureKind, PullError, Puller};
use crate::config::ImageSpec;
use crate::credentials::redact;
use crate::runtime::{ErrorKind, ImageInfo, Runtime};

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

impl<R: Runtime> Puller<R> {
    /// Runs one admitted attempt and records its end with the registry (the breaker, a 429's
    /// hold) while it still holds its slots, so that no other attempt slips in first.
    pub(crate) async fn attempt_admitted(
        self: Arc<Self>,
        spec: ImageSpec,
        admitted: Admitted,
        mut step: u32,
        cancel: CancellationToken,
    ) -> AttemptEnd {
        let probe = admitted.probe();
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
        }
        let paused_until = admitted.finish(
            result.as_ref().err().map(|e| e.kind),
            (!rate_limit_hold.is_zero()).then_some(rate_limit_hold),
            &self.settings.backoff,
        );
        AttemptEnd {
            result: Some(result),
            paused_until,
            rate_limit_hold,
            step,
            probe,
        }
    }

    /// The back-off ceiling after `step` doublings of this puller's back-off.
    pub(crate) fn backoff_ceiling(&self, step: u32) -> Duration {
        backoff::ceiling(&self.settings.backoff, step)
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
                kind: ErrorKind::Unknown.into(),
                detail: format!("the runtime reported {image_id} pulled but does not list it"),
            })?;
        if let Some(digest) = spec.reference.digest()
            && info.repo_digest_for(&spec.reference) != Some(digest)
        {
            return Err(PullError {
                image: pull_ref.clone(),
                kind: FailureKind::DigestMismatch,
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
                            "no credentials matched {registry} ({}{}); {}",
                            if credentials.sources().is_empty() {
                                "no credential sources configured".to_string()
                            } else {
                                format!("searched {}", credentials.describe_sources())
                            },
                            // Why a source that might have matched gave nothing (a plugin that
                            // timed out, say): the likelier cause of the refusal.
                            found
                                .problems
                                .iter()
                                .map(|p| format!("; unusable: {p}"))
                                .collect::<String>(),
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
        let unauthorized = FailureKind::from(ErrorKind::Unauthorized);
        let kind = refused
            .iter()
            .map(|(_, e)| e.kind)
            .find(|k| *k != unauthorized)
            .unwrap_or(unauthorized);
        let tried = refused
            .iter()
            .map(|(who, e)| format!("{who}: {}", e.detail))
            .collect::<Vec<_>>()
            .join("; ");
        Err(PullError {
            image: pull_ref.to_string(),
            kind,
            detail: if kind == unauthorized {
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
}
