//! The long-running agent: keeps every declared image present, reloads its config safely,
//! and reports through the [`StatusHub`].
//!
//! Each pass lists the runtime's images once, then queues every image that needs a pull and is
//! not queued yet. The queue ([`crate::puller::PullQueue`]) keeps one small record per image
//! and starts attempts only into free slots; records outlive passes, so an image in back-off
//! keeps its back-off across resyncs. The agent never removes images.
//!
//! This module is the loop ([`Agent::run`]): it waits on cancellation, the pulls, the timers
//! and the watchers, and hands each to its part: [`reload`] reads and applies the config,
//! [`schedule`] decides what to pull when, [`project`] writes what happens into the status,
//! and [`watch`] turns file changes into wake-ups.

mod disk;
#[cfg(test)]
mod fleet_tests;
mod project;
mod reload;
mod schedule;
#[cfg(test)]
mod testing;
mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::config::Labels;
use crate::credentials::{Credentials, SecretReader};
use crate::k8s::AgentLink;
use crate::puller::sleep_until_some;
use crate::runtime::Runtime;
use crate::status::StatusHub;
use crate::status::metrics::Metrics;

use reload::{Applying, Reloader};
use schedule::Schedule;
use watch::Watch;

/// How often an unreachable runtime is tried again (instead of waiting a whole resync).
const RUNTIME_RETRY: Duration = Duration::from_secs(5);
/// In-flight pulls get this long to notice cancellation at shutdown (they select on it, so
/// they take microseconds); with the servers' 300 ms, the exit stays within the documented 2 s.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// At start in a cluster, how long the first pass waits for the Node's labels (which select
/// image sets) before going ahead with the sets that need none.
const LABELS_WAIT: Duration = Duration::from_secs(10);

/// What the agent is given to work with (as controller-rs passes its `Context`): the runtime
/// it pulls through, where it reports, and what it has of the cluster.
struct Context<R> {
    runtime: Arc<R>,
    hub: Arc<StatusHub>,
    metrics: Arc<Metrics>,
    /// Reads `secret:` credential sources, when there is a cluster.
    secrets: Option<Arc<dyn SecretReader>>,
    /// In a cluster: the Node's labels in, the node settings out (see [`crate::k8s`]).
    node: Option<AgentLink>,
}

impl<R> Context<R> {
    /// The credentials a config declares, with the Secret reader when there is one.
    fn credentials_for(&self, config: &Config) -> Arc<Credentials> {
        Arc::new(Credentials::new(
            config.credentials.clone(),
            config.anonymous_fallback,
            self.secrets.clone(),
        ))
    }

    /// The Node's labels, once known; `None` without a Node.
    fn labels(&self) -> Option<Labels> {
        self.node.as_ref().and_then(|l| l.labels.borrow().clone())
    }
}

pub struct Agent<R: Runtime> {
    ctx: Context<R>,
    /// The config in force: the last good one.
    config: Config,
    /// Reading the config again (see [`reload`]).
    reloader: Reloader,
    /// The puller, its queue and what is known of each image (see [`schedule`]).
    schedule: Schedule<R>,
    /// Wakes the loop when a credential file changes; follows the config's sources.
    credentials: Watch,
    /// Turns of the run loop, for the tests that bound them.
    #[cfg(test)]
    turns: Arc<std::sync::atomic::AtomicUsize>,
}

impl<R: Runtime> Agent<R> {
    /// An agent for a config that was already validated (an invalid one is refused at start).
    pub fn new(
        runtime: Arc<R>,
        hub: Arc<StatusHub>,
        metrics: Arc<Metrics>,
        config_path: PathBuf,
        config: Config,
    ) -> Self {
        let mut agent = Agent {
            schedule: Schedule::new(runtime.clone(), &config),
            ctx: Context {
                runtime,
                hub,
                metrics,
                secrets: None,
                node: None,
            },
            config: config.clone(),
            reloader: Reloader::new(config_path),
            credentials: Watch::new(),
            #[cfg(test)]
            turns: Arc::default(),
        };
        agent.apply(config, Applying::First);
        agent
    }

    /// Lets `secret:` credential sources be read through the Kubernetes API.
    pub fn with_secret_reader(mut self, secrets: Option<Arc<dyn SecretReader>>) -> Self {
        self.ctx.secrets = secrets;
        self.schedule
            .set_credentials(self.ctx.credentials_for(&self.config));
        self
    }

    /// Where the host's `/` is mounted in the agent's container: the disk guard reads the
    /// runtime's image filesystem (a host path) under it.
    pub fn with_host_root(mut self, host_root: Option<PathBuf>) -> Self {
        self.schedule.set_host_root(host_root);
        self
    }

    /// Links the agent to its Node: the labels select image sets (re-selected when they
    /// change), and each applied config's node settings are handed over.
    pub fn with_node(mut self, link: AgentLink) -> Self {
        link.settings.send_replace(self.config.node.clone());
        self.ctx.node = Some(link);
        self
    }

    /// Pulls start only while the fleet budget admits their registry (`fleet:`).
    pub fn with_fleet(mut self, fleet: Option<Arc<dyn crate::fleet::FleetBudget>>) -> Self {
        self.schedule.set_fleet(fleet);
        self
    }

    /// Runs until `cancel`, then stops every pull and returns within about two seconds.
    pub async fn run(mut self, cancel: CancellationToken) {
        if self.ctx.node.is_some() {
            if !self.wait_for_labels(&cancel).await {
                return self.shutdown().await;
            }
            self.reload().await;
        }
        let mut config_changes = Watch::config(self.reloader.path());
        let mut next_pass = Instant::now();
        let fleet = self.schedule.fleet_changed();
        loop {
            #[cfg(test)]
            self.turns
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // The queue's timer: the earliest not-before time, always in the future here.
            let wake = self.schedule.next_wake();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some(end) = self.schedule.join_next() => {
                    let done = self.schedule.settle_attempt(&self.ctx, end);
                    if let Some(done) = done {
                        tokio::select! {
                            biased;
                            _ = cancel.cancelled() => break,
                            _ = self.schedule.finish(&self.ctx, &self.config, done) => {}
                        }
                    }
                    self.schedule.start_due(&self.ctx, &self.config);
                }
                _ = sleep_until_some(wake), if wake.is_some() => {
                    self.schedule.start_due(&self.ctx, &self.config);
                }
                _ = crate::puller::fleet_changed(&fleet) => {
                    self.schedule.start_due(&self.ctx, &self.config);
                }
                Some(()) = self.credentials.changed() => {
                    if !self.credentials.settle(&cancel).await {
                        break;
                    }
                    // Read again even a rewrite that kept the size and the mtime tick.
                    self.schedule.credentials().files_changed();
                    // The pass compares the credentials with those that were refused.
                    next_pass = Instant::now();
                }
                Some(()) = labels_changed(&mut self.ctx.node) => {
                    if self.reload().await {
                        next_pass = Instant::now();
                    }
                }
                Some(()) = config_changes.changed() => {
                    if !config_changes.settle(&cancel).await {
                        break;
                    }
                    if self.reload().await {
                        next_pass = Instant::now();
                    }
                }
                _ = tokio::time::sleep_until(next_pass) => {
                    // A runtime or API server that never answers must not hold up a SIGTERM:
                    // the pass is dropped at cancellation, whatever call it is waiting on.
                    let reachable = tokio::select! {
                        biased;
                        _ = cancel.cancelled() => break,
                        reachable = self.pass(&cancel) => reachable,
                    };
                    let wait = if reachable {
                        self.config.resync_interval
                    } else {
                        RUNTIME_RETRY.min(self.config.resync_interval)
                    };
                    next_pass = Instant::now() + wait;
                }
            }
        }
        self.shutdown().await;
    }

    /// At start with a Node: waits up to [`LABELS_WAIT`] for its labels. `false` when
    /// cancelled meanwhile.
    async fn wait_for_labels(&mut self, cancel: &CancellationToken) -> bool {
        let Some(link) = &mut self.ctx.node else {
            return true;
        };
        let labels = tokio::time::timeout(LABELS_WAIT, link.labels.wait_for(Option::is_some));
        let known = tokio::select! {
            biased;
            _ = cancel.cancelled() => return false,
            labels = labels => matches!(labels, Ok(Ok(_))),
        };
        if !known {
            tracing::warn!(
                "the Node's labels are not known yet; image sets with a nodeSelector wait for them"
            );
        }
        true
    }

    async fn shutdown(mut self) {
        self.ctx.hub.begin_shutdown();
        self.schedule.shutdown(SHUTDOWN_GRACE).await;
        tracing::info!("agent stopped");
    }

    /// One periodic pass: re-read the config (a fallback for file systems where change events
    /// do not arrive), then resync. Returns whether the runtime answered. Public for the
    /// benchmark; `_cancel` is not looked at: the run loop drops a pass at cancellation.
    pub async fn pass(&mut self, _cancel: &CancellationToken) -> bool {
        // Changes arrive through the watcher; the re-read is a fallback, once per resync.
        if self.reloader.is_due(self.config.resync_interval) {
            self.reload().await;
        }
        self.schedule.retry_if_credentials_changed().await;
        let reachable = self.resync().await;
        self.ctx.hub.mark_synced();
        reachable
    }

    /// One resync (see [`Schedule::resync`]).
    async fn resync(&mut self) -> bool {
        self.schedule.resync(&self.ctx, &self.config).await
    }
}

/// Resolves when the Node's labels change; never without a Node.
async fn labels_changed(node: &mut Option<AgentLink>) -> Option<()> {
    match node {
        Some(link) => link.labels.changed().await.ok(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::testing::{Setup, setup, state, write_bot_login};
    use crate::runtime::RuntimeError;
    use crate::status::ImageState;
    use tonic::Code;

    /// The watcher reports changes; a pass re-reads the files only once per resync interval, as
    /// a fallback, not on every pass (runtime retries, pull wake-ups).
    #[tokio::test(start_paused = true)]
    async fn passes_re_read_the_config_once_per_resync_interval() {
        let mut s = setup("resyncInterval: 1m\nimages: [r.example/a:1]");
        let cancel = CancellationToken::new();
        std::fs::write(
            &s.path,
            "resyncInterval: 1m\nimages: [r.example/a:1, r.example/b:1]",
        )
        .unwrap();
        tokio::time::advance(Duration::from_secs(30)).await;
        s.agent.pass(&cancel).await;
        assert_eq!(
            s.hub.snapshot().images.len(),
            1,
            "re-read before a resync interval"
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        s.agent.pass(&cancel).await;
        assert_eq!(s.hub.snapshot().images.len(), 2, "the fallback re-read");
        s.agent.settle().await;
    }

    /// A runtime socket that accepts and never answers (issue 9): SIGTERM must still end the
    /// agent at once, not after the call's 30 s deadline.
    #[tokio::test(start_paused = true)]
    async fn cancellation_is_seen_while_a_runtime_call_hangs() {
        let Setup {
            rt, agent, _dir, ..
        } = setup("images: [r.example/a:1]");
        rt.set_hanging(true);
        let cancel = CancellationToken::new();
        let run = tokio::spawn(agent.run(cancel.clone()));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            rt.stats().list_calls,
            1,
            "the first pass waits on ListImages"
        );
        let cancelled_at = Instant::now();
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(2), run)
            .await
            .expect("the agent did not stop within the documented 2 s")
            .unwrap();
        assert!(
            cancelled_at.elapsed() < Duration::from_millis(100),
            "{:?}",
            cancelled_at.elapsed()
        );
    }

    /// The watcher's word makes the files be read again, even a rewrite that kept the size and
    /// the mtime, which the lookup's own stat check cannot tell from the old file.
    #[tokio::test]
    async fn a_credentials_event_rereads_a_file_the_stat_check_cannot_tell_apart() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("config.json");
        let write = |password: &str| write_bot_login(&creds, password);
        write("expired");
        let s = setup(&format!(
            "backoff: {{initial: 1s, max: 1h}}\ncredentials:\n  - dockerConfig: {}\nimages: [r.example/private:1]",
            creds.display()
        ));
        s.rt.require_login("r.example", "bot", "rotated");
        let wait_for = |want: ImageState| {
            let hub = s.hub.clone();
            async move {
                for _ in 0..200 {
                    if state(&hub, "r.example/private:1") == want {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                panic!(
                    "not {want:?} within 10 s: {:?}",
                    state(&hub, "r.example/private:1")
                );
            }
        };
        let cancel = CancellationToken::new();
        let checks = async {
            wait_for(ImageState::Failed).await;
            // Same length; the mtime put back as if written within the same tick.
            let mtime = std::fs::metadata(&creds).unwrap().modified().unwrap();
            write("rotated");
            std::fs::File::options()
                .write(true)
                .open(&creds)
                .unwrap()
                .set_modified(mtime)
                .unwrap();
            wait_for(ImageState::Present).await;
            cancel.cancel();
        };
        tokio::join!(s.agent.run(cancel.clone()), checks);
        assert_eq!(s.rt.stats().pulls.len(), 2);
    }

    /// Issue 10: with many images backing off, on a host its breaker pauses and on their own
    /// back-off with every slot busy, the run loop wakes only when an attempt ends or a record
    /// falls due: its one timer is never in the past. Over an hour of virtual time, with the
    /// documented defaults (back-off 10 s to 5 min, 3 slots), each turn is at most one attempt
    /// ending plus one wake to start it, plus the passes.
    #[tokio::test(start_paused = true)]
    async fn the_loop_sleeps_while_many_images_back_off() {
        const DOWN: usize = 500;
        const SLOW: usize = 30;
        let mut yaml = String::from("images:\n");
        for i in 0..DOWN {
            yaml.push_str(&format!("  - down.example/img{i}:1\n"));
        }
        for i in 0..SLOW {
            yaml.push_str(&format!("  - slow.example/img{i}:1\n"));
        }
        let Setup {
            rt, agent, _dir, ..
        } = setup(&yaml);
        rt.set_registry_down("down.example", true);
        // Every attempt takes 20 s and times out: the three slots stay busy while records are
        // due, and each slow image backs off on its own (a timeout says nothing of the host).
        rt.set_pull_delay(Duration::from_secs(20));
        for i in 0..SLOW {
            rt.script_pulls(
                &format!("slow.example/img{i}:1"),
                (0..1000).map(|_| Err(RuntimeError::new(Code::Cancelled, "Timeout expired"))),
            );
        }
        let turns = agent.turns.clone();
        let cancel = CancellationToken::new();
        let run = tokio::spawn(agent.run(cancel.clone()));
        // 3 slots of 20 s attempts: at most 540 attempts an hour; the passes, one a minute.
        let limit = 2 * 3600 / 20 * 3 + 2 * 60 + 50;
        let step = Duration::from_secs(10);
        let mut elapsed = Duration::ZERO;
        while elapsed < Duration::from_secs(3600) {
            tokio::time::advance(step).await;
            elapsed += step;
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
            let n = turns.load(std::sync::atomic::Ordering::Relaxed);
            assert!(
                n <= limit,
                "the agent's loop ran {n} times in {elapsed:?} (virtual): it spins"
            );
        }
        let attempts = rt.stats().pulls.len();
        let n = turns.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!("an hour: {n} loop turns, {attempts} attempts");
        assert!(attempts > 100, "the slow images were retried: {attempts}");
        cancel.cancel();
        run.await.unwrap();
    }
}
