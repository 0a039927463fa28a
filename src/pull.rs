//! `prepuller pull`: one run over the declared list, with a summary and an exit code a
//! bootstrap script can act on.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ImageSpec};
use crate::credentials::Credentials;
use crate::progress::{Progress, human_bytes, human_duration, short_digest};
use crate::puller::{ImageOutcome, PullResult, PullSettings, Puller};
use crate::runtime::{ErrorKind, Runtime, RuntimeError, RuntimeVersion};

/// Exit codes of `prepuller pull`, documented in the README.
pub mod exit {
    pub const OK: u8 = 0;
    pub const REQUIRED_FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const RUNTIME_UNREACHABLE: u8 = 3;
}

/// Waits for the runtime to answer `Version`, retrying while it is absent or still starting
/// (containerd answers "server is not initialized yet" for a moment after start).
pub async fn wait_for_runtime<R: Runtime>(
    runtime: &R,
    wait: Duration,
    cancel: &CancellationToken,
    mut on_retry: impl FnMut(&RuntimeError, Duration),
) -> Result<RuntimeVersion, RuntimeError> {
    let deadline = Instant::now() + wait;
    let mut delays = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times()
        .build();
    loop {
        let error = match runtime.version().await {
            Ok(v) => return Ok(v),
            Err(e) if e.kind() == ErrorKind::RuntimeUnavailable => e,
            Err(e) => return Err(e),
        };
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        if Instant::now() + delay > deadline {
            return Err(error);
        }
        on_retry(&error, delay);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return Err(error),
        }
    }
}

/// One image's line in the summary.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryRow {
    pub image: String,
    pub normalized: String,
    pub required: bool,
    pub policy: String,
    /// `present` (already there), `pulled`, `failed`, `timedOut` or `cancelled`.
    pub result: &'static str,
    pub image_id: Option<String>,
    pub repo_digest: Option<String>,
    pub size_bytes: Option<u64>,
    pub seconds: f64,
    pub attempts: u32,
    pub reason: Option<String>,
    pub error_class: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub ok: bool,
    pub endpoint: String,
    pub runtime: RuntimeVersion,
    pub required_present: usize,
    pub required_total: usize,
    pub seconds: f64,
    pub timed_out: bool,
    pub images: Vec<SummaryRow>,
}

impl Summary {
    pub fn exit_code(&self) -> u8 {
        if self.ok {
            exit::OK
        } else {
            exit::REQUIRED_FAILED
        }
    }

    /// Images that were not finished when the run ended.
    pub fn unfinished(&self) -> Vec<&str> {
        self.images
            .iter()
            .filter(|r| matches!(r.result, "timedOut" | "cancelled"))
            .map(|r| r.normalized.as_str())
            .collect()
    }

    pub fn table(&self) -> String {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED);
        t.set_header(["IMAGE", "RESULT", "SIZE", "TIME", "ATTEMPTS", "REASON"]);
        for r in &self.images {
            let result = if r.required {
                r.result.to_string()
            } else {
                format!("{} (optional)", r.result)
            };
            t.add_row([
                short_digest(&r.normalized),
                result,
                r.size_bytes.map(human_bytes).unwrap_or_default(),
                human_duration(Duration::from_secs_f64(r.seconds)),
                r.attempts.to_string(),
                r.reason.clone().unwrap_or_default(),
            ]);
        }
        let mut s = t.to_string();
        s.push_str(&format!(
            "\n{}/{} required images present on {} in {}{}\n",
            self.required_present,
            self.required_total,
            self.runtime,
            human_duration(Duration::from_secs_f64(self.seconds)),
            if self.timed_out { " (timed out)" } else { "" }
        ));
        s
    }
}

fn row(spec: &ImageSpec, outcome: &ImageOutcome, timed_out: bool) -> SummaryRow {
    let (result, reason) = match &outcome.result {
        PullResult::AlreadyPresent => ("present", None),
        PullResult::Pulled => ("pulled", None),
        PullResult::Failed(e) => ("failed", Some(e.to_string())),
        PullResult::Cancelled(stage) => {
            let mut reason = format!("{stage} when the run ended");
            if let Some(e) = &outcome.last_error {
                reason.push_str(&format!("; last error: {e}"));
            }
            (
                if timed_out { "timedOut" } else { "cancelled" },
                Some(reason),
            )
        }
    };
    let error_class = match &outcome.result {
        PullResult::Failed(e) => Some(e.kind.class()),
        PullResult::Cancelled(_) => outcome.last_error.as_ref().map(|e| e.kind.class()),
        _ => None,
    };
    SummaryRow {
        image: spec.declared.clone(),
        normalized: spec.reference.to_string(),
        required: spec.required,
        policy: spec.policy.to_string(),
        result,
        image_id: outcome.image.as_ref().map(|i| i.id.clone()),
        repo_digest: outcome
            .image
            .as_ref()
            .and_then(|i| i.repo_digest_for(&spec.reference))
            .map(str::to_string),
        size_bytes: outcome.image.as_ref().map(|i| i.size_bytes),
        seconds: outcome.elapsed.as_secs_f64(),
        attempts: outcome.attempts,
        reason,
        error_class,
    }
}

/// Why `run` could not start pulling.
#[derive(Debug, thiserror::Error)]
pub enum PullRunError {
    #[error("container runtime unreachable: {0}")]
    RuntimeUnreachable(RuntimeError),
    #[error("listing the runtime's images failed: {0}")]
    ListFailed(RuntimeError),
}

impl PullRunError {
    pub fn exit_code(&self) -> u8 {
        exit::RUNTIME_UNREACHABLE
    }
}

/// What a run pulls against, besides the config.
pub struct RunOptions<'a> {
    pub endpoint: &'a str,
    pub version: RuntimeVersion,
    pub settings: PullSettings,
    /// Bounds the whole run.
    pub timeout: Option<Duration>,
    pub credentials: Arc<Credentials>,
}

/// Pulls what `config` declares and is missing. `cancel` (a signal) ends the run early.
pub async fn run<R: Runtime>(
    runtime: Arc<R>,
    config: &Config,
    options: RunOptions<'_>,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> Result<Summary, PullRunError> {
    let RunOptions {
        endpoint,
        version,
        settings,
        timeout,
        credentials,
    } = options;
    let started = Instant::now();
    let present = runtime
        .list_images()
        .await
        .map_err(PullRunError::ListFailed)?;
    let puller = Puller::with_credentials(runtime, settings, credentials);
    let run_cancel = cancel.child_token();
    let timer = timeout.map(|t| {
        let c = run_cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(t).await;
            c.cancel();
        })
    });
    let images = &config.images;
    let outcomes = puller
        .run(
            images,
            &present,
            &|e| progress.event(images, &e),
            &run_cancel,
        )
        .await;
    if let Some(t) = timer {
        t.abort();
    }
    progress.finish();
    let timed_out = run_cancel.is_cancelled() && !cancel.is_cancelled();
    let rows: Vec<SummaryRow> = images
        .iter()
        .zip(&outcomes)
        .map(|(spec, o)| row(spec, o, timed_out))
        .collect();
    let required_total = config.required_count();
    let required_present = images
        .iter()
        .zip(&outcomes)
        .filter(|(s, o)| s.required && o.is_present())
        .count();
    Ok(Summary {
        ok: required_present == required_total,
        endpoint: endpoint.to_string(),
        runtime: version,
        required_present,
        required_total,
        seconds: started.elapsed().as_secs_f64(),
        timed_out,
        images: rows,
    })
}
