//! Config reload: the files are read again when they change (or once per resync as a
//! fallback). An unchanged text is not parsed again; an invalid one is reported once and the
//! last good config keeps running; a valid, different one is applied.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Labels;
use crate::config::{Config, ConfigError};
use crate::runtime::Runtime;
use crate::status::AgentEventKind;

use super::{Agent, project};

/// Whether an apply is the agent's first (at start: nothing ran before, so everything is
/// set up) or replaces the config in force (only what changed is redone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Applying {
    First,
    Reload,
}

/// What the last read of the config saw, so the next one can tell whether anything changed.
pub(super) struct Reloader {
    path: PathBuf,
    /// When the config was last read: a pass re-reads it only a resync interval later.
    read_at: Instant,
    /// The config texts last parsed; an unchanged read is not parsed again.
    sources: Vec<(PathBuf, String)>,
    /// The Node's labels the config in force was selected with.
    labels: Option<Labels>,
    /// The headline of the last rejected config, so a broken file is logged once, not every pass.
    rejected: Option<String>,
}

impl Reloader {
    /// For the config at `path`, just read and applied.
    pub(super) fn new(path: PathBuf) -> Self {
        let sources = Config::read_sources(&path).unwrap_or_default();
        Reloader {
            path,
            read_at: Instant::now(),
            sources,
            labels: None,
            rejected: None,
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the fallback re-read is due: the last read is a resync interval old.
    pub(super) fn is_due(&self, resync_interval: Duration) -> bool {
        self.read_at.elapsed() >= resync_interval
    }

    /// Reads the files; `Ok(None)` when neither they nor the labels changed since the last
    /// config that parsed, and nothing was rejected since.
    async fn read(&mut self, labels: Option<Labels>) -> Result<Option<Config>, ConfigError> {
        self.read_at = Instant::now();
        // Blocking file reads stay off the async worker threads.
        let path = self.path.clone();
        let sources = tokio::task::spawn_blocking(move || Config::read_sources(&path))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        if sources == self.sources && self.rejected.is_none() && labels == self.labels {
            return Ok(None); // unchanged: skip parsing thousands of entries every pass
        }
        let config = Config::from_sources_for_node(&self.path, &sources, labels.as_ref())?;
        self.sources = sources;
        self.labels = labels;
        Ok(Some(config))
    }
}

impl<R: Runtime> Agent<R> {
    /// Re-reads the config; applies it when it is valid and different. Returns whether it was
    /// applied. An invalid config is reported and the last good one keeps running.
    pub(super) async fn reload(&mut self) -> bool {
        let labels = self.ctx.labels();
        match self.reloader.read(labels).await {
            Ok(None) => false,
            Ok(Some(config)) => {
                self.reloader.rejected = None;
                if config == self.config {
                    self.ctx.hub.update(|s| s.config.last_error = None);
                    return false;
                }
                self.apply(config, Applying::Reload);
                self.ctx.metrics.observe_config_reload(true);
                true
            }
            Err(e) => {
                self.reject(&e);
                false
            }
        }
    }

    fn reject(&mut self, e: &ConfigError) {
        let text = e.headline();
        if self.reloader.rejected.as_deref() == Some(text.as_str()) {
            return;
        }
        tracing::error!(
            "config rejected, keeping generation {}: {}",
            self.ctx.hub.snapshot().config.generation,
            e.render()
        );
        self.ctx.metrics.observe_config_reload(false);
        self.ctx
            .hub
            .update(|s| s.config.last_error = Some(text.clone()));
        self.ctx.hub.emit(AgentEventKind::ConfigRejected {
            error: text.clone(),
        });
        self.reloader.rejected = Some(text);
    }

    /// Makes `config` the one in force: the puller and the queue follow it (see
    /// [`super::schedule::Schedule::follow`]), the credential files it names are watched, the
    /// Node gets its settings, and the status lists its images.
    pub(super) fn apply(&mut self, config: Config, applying: Applying) {
        // The sources decide which files are watched; with the fallback, what pulls use.
        let (sources_changed, credentials_changed) = match applying {
            Applying::First => (true, true),
            Applying::Reload => {
                let sources = config.credentials != self.config.credentials;
                let fallback = config.anonymous_fallback != self.config.anonymous_fallback;
                (sources, sources || fallback)
            }
        };
        self.schedule
            .follow(&self.ctx, &config, credentials_changed);
        if matches!(applying, Applying::Reload) && config.fleet != self.config.fleet {
            // The budget's Leases and their sizes are set up once, at the start.
            tracing::warn!(
                "fleet: changed; it applies when the agent restarts (kubectl -n NAMESPACE rollout restart daemonset/prepuller)"
            );
        }
        if sources_changed {
            self.credentials.follow_credentials(&config.credentials);
        }
        for note in &config.merged {
            tracing::info!("{note}");
        }
        for skipped in &config.skipped_sets {
            tracing::info!("{skipped}");
        }
        if let Some(link) = &self.ctx.node {
            link.settings.send_if_modified(|s| {
                let changed = *s != config.node;
                *s = config.node.clone();
                changed
            });
        }
        project::config_applied(&self.ctx.hub, &config, self.schedule.keys());
        self.config = config;
    }
}

#[cfg(test)]
mod tests {
    use crate::agent::testing::setup;

    #[tokio::test(start_paused = true)]
    async fn a_bad_reload_keeps_the_last_good_config() {
        let mut s = setup("images: [r.example/a:1]");
        std::fs::write(&s.path, "images: [r.example/a:1, R.example/Bad:1]\n").unwrap();
        assert!(!s.agent.reload().await);
        let status = s.hub.snapshot();
        assert_eq!(status.config.generation, 1);
        assert!(
            status
                .config
                .last_error
                .as_deref()
                .unwrap()
                .contains("lowercase")
        );
        assert_eq!(status.images.len(), 1);
        // Putting the old text back clears the error without a new generation.
        std::fs::write(&s.path, "images: [r.example/a:1]").unwrap();
        assert!(!s.agent.reload().await);
        let status = s.hub.snapshot();
        assert_eq!(status.config.generation, 1);
        assert_eq!(status.config.last_error, None);
        std::fs::write(&s.path, "images: [r.example/a:1, r.example/b:1]\n").unwrap();
        assert!(s.agent.reload().await);
        let status = s.hub.snapshot();
        assert_eq!(status.config.generation, 2);
        assert_eq!(status.config.last_error, None);
        assert_eq!(status.images.len(), 2);
    }
}
