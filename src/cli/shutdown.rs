//! How a signal ends a subcommand: the first cancels the run, a second exits at once.

use tokio_util::sync::CancellationToken;

use super::ExitCode;

/// `None` when `cancel` fires first: nothing at start may hold up a SIGTERM.
pub async fn until_cancelled<T>(
    cancel: &CancellationToken,
    f: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        v = f => Some(v),
    }
}

/// SIGINT/SIGTERM cancel the run (in-flight pulls are abandoned cleanly); a second one exits at once.
pub fn spawn_signal_handler(cancel: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("cannot listen for SIGTERM: {e}");
                    return;
                }
            };
        for n in 0..2 {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if n == 0 {
                tracing::warn!(
                    "stopping: cancelling in-flight pulls (signal again to exit at once)"
                );
                cancel.cancel();
            } else {
                std::process::exit(ExitCode::Aborted.code().into());
            }
        }
    });
}
