//! One `prepuller pull` run over the declared list: waits for the runtime, lists what is
//! present, pulls the rest, and sums it up.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use super::summary::{Summary, SummaryRow};
use crate::cli::ExitCode;
use crate::cli::progress::Progress;
use crate::config::Config;
use crate::credentials::Credentials;
use crate::puller::{PullSettings, Puller};
use crate::runtime::{ErrorKind, Runtime, RuntimeError, RuntimeVersion};

/// Waits for the runtime to answer `Version`, retrying while it is absent, still starting
/// (containerd answers "server is not initialized yet" for a moment after start) or hung (a
/// call that times out). Gives up after `wait` in all, however long one call would block,
/// and at once when `cancel` fires.
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
    let interrupted = || RuntimeError::new(Code::Cancelled, "interrupted while waiting for it");
    loop {
        let call = tokio::time::timeout_at(deadline, runtime.version());
        let error = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(interrupted()),
            r = call => match r {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if matches!(e.kind(), ErrorKind::RuntimeUnavailable | ErrorKind::Timeout) => e,
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(RuntimeError::new(
                        Code::DeadlineExceeded,
                        format!("no answer to Version within {}", humantime::format_duration(wait)),
                    ));
                }
            },
        };
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        if Instant::now() + delay > deadline {
            return Err(error);
        }
        on_retry(&error, delay);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return Err(interrupted()),
        }
    }
}

/// Why `run` could not start pulling.
#[derive(Debug, thiserror::Error)]
pub enum PullRunError {
    #[error("listing the runtime's images failed: {0}")]
    ListFailed(RuntimeError),
    #[error(
        "the runtime did not list its images within --timeout; check that it answers (crictl images)"
    )]
    ListTimedOut,
    #[error("interrupted before the runtime listed its images")]
    Interrupted,
}

impl PullRunError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            PullRunError::Interrupted => ExitCode::Failed,
            PullRunError::ListFailed(_) | PullRunError::ListTimedOut => ExitCode::Unavailable,
        }
    }
}

/// Stops the run's timer however the run ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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
    let run_cancel = cancel.child_token();
    // Started first: the timeout bounds the whole run, the ListImages call included.
    let timer = timeout.map(|t| {
        let c = run_cancel.clone();
        AbortOnDrop(tokio::spawn(async move {
            tokio::time::sleep(t).await;
            c.cancel();
        }))
    });
    let present = tokio::select! {
        biased;
        _ = run_cancel.cancelled() => {
            return Err(if cancel.is_cancelled() {
                PullRunError::Interrupted
            } else {
                PullRunError::ListTimedOut
            });
        }
        r = runtime.list_images() => r.map_err(PullRunError::ListFailed)?,
    };
    let puller = std::sync::Arc::new(Puller::with_credentials(runtime, settings, credentials));
    let images = &config.images;
    let outcomes = puller
        .run(
            images,
            &present,
            &|e| progress.event(images, &e),
            &run_cancel,
        )
        .await;
    drop(timer); // ended: a timer firing now must not mark the run timed out
    progress.finish();
    let timed_out = run_cancel.is_cancelled() && !cancel.is_cancelled();
    let rows: Vec<SummaryRow> = images
        .iter()
        .zip(&outcomes)
        .map(|(spec, o)| SummaryRow::new(spec, o, timed_out))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::progress::LogProgress;
    use crate::runtime::fake::FakeRuntime;
    use std::path::Path;

    /// Fails (rather than hangs) a test whose future never ends.
    async fn within_an_hour<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(3600), f)
            .await
            .expect("still waiting an hour later")
    }

    /// A socket that accepts and never answers: each call would block until its deadline.
    #[tokio::test(start_paused = true)]
    async fn the_wait_for_a_hung_runtime_ends_at_once_on_cancel() {
        let rt = FakeRuntime::new();
        rt.set_hanging(true);
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            stop.cancel();
        });
        let started = Instant::now();
        let wait = wait_for_runtime(&rt, Duration::from_secs(60), &cancel, |_, _| {});
        let e = within_an_hour(wait).await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(3), "{e}");
        assert!(e.message.contains("interrupted"), "{e}");
    }

    /// A hung runtime is waited for up to `wait` in all, then reported as not answering; one
    /// call's own deadline neither ends the wait early nor stretches it.
    #[tokio::test(start_paused = true)]
    async fn a_hung_runtime_is_waited_for_the_whole_wait_and_no_longer() {
        let rt = FakeRuntime::new();
        rt.set_hanging(true);
        let started = Instant::now();
        let cancel = CancellationToken::new();
        let wait = wait_for_runtime(&rt, Duration::from_secs(5), &cancel, |_, _| {});
        let e = within_an_hour(wait).await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(5), "{e}");
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    }

    fn options(timeout: Duration) -> RunOptions<'static> {
        let config = Config::parse("images: [r.example/a:1]", Path::new("t.yaml")).unwrap();
        RunOptions {
            endpoint: "unix:///fake.sock",
            version: FakeRuntime::runtime_version(),
            settings: PullSettings::from(&config),
            timeout: Some(timeout),
            credentials: Arc::new(Credentials::none()),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_list_is_bounded_by_the_timeout_and_by_cancel() {
        let config = Config::parse("images: [r.example/a:1]", Path::new("t.yaml")).unwrap();
        let rt = Arc::new(FakeRuntime::new());
        rt.set_hanging(true);
        let started = Instant::now();
        let e = within_an_hour(run(
            rt.clone(),
            &config,
            options(Duration::from_secs(5)),
            &LogProgress,
            &CancellationToken::new(),
        ))
        .await
        .unwrap_err();
        assert!(matches!(e, PullRunError::ListTimedOut), "{e}");
        assert_eq!(e.exit_code(), ExitCode::Unavailable);
        assert_eq!(started.elapsed(), Duration::from_secs(5));

        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            stop.cancel();
        });
        let started = Instant::now();
        let e = within_an_hour(run(
            rt,
            &config,
            options(Duration::from_secs(600)),
            &LogProgress,
            &cancel,
        ))
        .await
        .unwrap_err();
        assert!(matches!(e, PullRunError::Interrupted), "{e}");
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }
}
