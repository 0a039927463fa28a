//! The node reporter: a loop that reads the [`StatusHub`] and the agent's own Node, and writes
//! on the Node only what differs (the condition, the label, the startup taint's removal, and
//! Events). See the [module documentation](super).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::Api;
use kube::api::{Patch, PatchParams};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client::ClusterError;
use super::condition::{
    BOOT_ANNOTATION, BOOT_ID_PATH, Boot, CONDITION_TYPE, Desired, annotation, condition, desired,
    has_taint, label, to_system_time,
};
use super::error::{CONFLICT_RETRIES, NodeError};
use super::events::{EventSink, Occurrence, Type};
use super::link::{AgentLink, ReporterLink, link};
use super::own_node::{Seen, watch_node};
use crate::config::{Labels, NodeSettings};
use crate::status::{AgentEventKind, StatusHub, rfc3339};

/// An unchanged condition is rewritten this often, so a stale one shows a dead agent.
pub const HEARTBEAT: Duration = Duration::from_secs(5 * 60);
/// Status changes come in bursts (many images landing at once): write once per burst.
const DEBOUNCE: Duration = Duration::from_millis(500);
/// After a failed write, the next try.
const RETRY: Duration = Duration::from_secs(10);
/// Why Node reporting is off, before the reason.
const OFF: &str = "Node readiness reporting (condition, label, startup taint, events) and nodeSelector image sets are off";

/// Without a client, says once why Node reporting is off (the agent then runs as it does
/// outside Kubernetes): `error` is why [`connect`](super::connect) failed, `None` that no
/// cluster is configured.
pub fn off_without_cluster(error: Option<&ClusterError>) {
    match error {
        None => tracing::info!(
            "{OFF}: no cluster (no in-cluster service account, KUBECONFIG or ~/.kube/config)"
        ),
        Some(e) => tracing::warn!("{OFF}: {e}"),
    }
}

/// Node reporting on the process's client, when there is a node name; otherwise says once why
/// it is off and the agent runs as it does outside Kubernetes.
pub fn setup(
    client: kube::Client,
    node_name: Option<&str>,
    hub: Arc<StatusHub>,
    settings: NodeSettings,
) -> Option<(Reporter, AgentLink)> {
    let Some(name) = node_name.filter(|n| !n.is_empty()) else {
        tracing::warn!("{OFF}: no node name (set NODE_NAME from spec.nodeName, or --node-name)");
        return None;
    };
    let boot = Boot::current().unwrap_or_else(|e| {
        tracing::warn!("cannot read the boot id ({BOOT_ID_PATH}): {e}; the startup taint is removed at most once for this Node");
        Boot {
            id: "unknown".into(),
            at: SystemTime::UNIX_EPOCH,
        }
    });
    let (agent, reporter) = link(settings);
    Some((
        Reporter::new(client, name.to_string(), boot, hub, reporter),
        agent,
    ))
}

/// Writes the agent's readiness on its Node. See the module documentation.
pub struct Reporter {
    nodes: Api<Node>,
    name: String,
    boot: Boot,
    hub: Arc<StatusHub>,
    link: ReporterLink,
    events: EventSink,
    /// The Node as last read, watched or returned by a write.
    observed: Option<Node>,
    /// When the condition was last written (or found fresh), for the heartbeat.
    condition_written: Option<Instant>,
    /// The label key written last, to remove it when the setting changes.
    managed_label: Option<String>,
    /// When the taint is removed even if the node is not warm; keyed by what it came from.
    taint_deadline: Option<(SystemTime, Duration, Instant)>,
    /// Why the taint was removed before the node was warm, for the condition message.
    fail_open: Option<String>,
    /// After a failed write, no write before this.
    retry_at: Option<Instant>,
    /// When [`Reporter::reconcile`] last ran: a deadline up to then has been acted on.
    reconciled_at: Option<Instant>,
    /// The resourceVersion of the last write's answer, until the watch delivers it.
    echo: Option<String>,
    /// The last error logged, so a persistent one is logged once.
    last_error: Option<NodeError>,
    /// A taint that came back after prepuller removed it in this boot was logged.
    taint_back_logged: bool,
    /// Iterations of the run loop, for the tests that guard against spinning.
    #[cfg(test)]
    loops: Arc<std::sync::atomic::AtomicUsize>,
}

impl Reporter {
    pub fn new(
        client: kube::Client,
        name: String,
        boot: Boot,
        hub: Arc<StatusHub>,
        link: ReporterLink,
    ) -> Self {
        Reporter {
            nodes: Api::all(client.clone()),
            events: EventSink::new(client, &name),
            name,
            boot,
            hub,
            link,
            observed: None,
            condition_written: None,
            managed_label: None,
            taint_deadline: None,
            fail_open: None,
            retry_at: None,
            reconciled_at: None,
            echo: None,
            last_error: None,
            taint_back_logged: false,
            #[cfg(test)]
            loops: Arc::default(),
        }
    }

    /// Runs until `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) {
        // Ordered and lossless (a `watch` channel would coalesce): [`Reporter::observe_event`]
        // relies on seeing every event of a watch stream in order.
        let (node_tx, mut node_rx) = mpsc::channel::<Seen>(64);
        let watcher = tokio::spawn(watch_node(
            self.nodes.clone(),
            self.name.clone(),
            node_tx,
            cancel.clone(),
        ));
        let mut changes = self.hub.changes();
        let mut agent_events = self.hub.subscribe();
        let mut settings = self.link.settings.clone();
        // The agent may drop its side first: then there are no more settings to wait for.
        let mut settings_open = true;
        loop {
            #[cfg(test)]
            self.loops
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let wake = self.next_wake();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                seen = node_rx.recv() => match seen {
                    None => break,
                    Some(Seen::Read(node)) => self.observe(node),
                    Some(Seen::Event(node)) => self.observe_event(node),
                },
                e = agent_events.recv() => {
                    match e {
                        Ok(e) => {
                            tokio::select! {
                                biased;
                                _ = cancel.cancelled() => break,
                                _ = self.on_agent_event(e.kind) => {}
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::debug!("{n} agent events not turned into Node events (lagging)");
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                    continue;
                }
                r = changes.changed() => {
                    if r.is_err() {
                        break;
                    }
                    // Debounce, but a SIGTERM during it ends the reporter at once.
                    tokio::select! {
                        biased;
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(DEBOUNCE) => {}
                    }
                    changes.borrow_and_update();
                }
                r = settings.changed(), if settings_open => settings_open = r.is_ok(),
                _ = sleep_until(wake) => {
                    tokio::select! {
                        biased;
                        _ = cancel.cancelled() => break,
                        _ = self.events.flush() => {}
                    }
                }
            }
            // An API call that hangs must not hold the shutdown up.
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = self.reconcile() => {}
            }
        }
        watcher.abort();
    }

    /// When the loop has something to do without being told, if ever. Every time returned is
    /// one that a reconcile (or a flush) has not yet seen: a deadline that has passed and was
    /// acted on (or could not be) is not a wake, or the loop would spin on it.
    fn next_wake(&self) -> Option<Instant> {
        let reconcile = [
            self.condition_written.map(|t| t + HEARTBEAT),
            self.taint_deadline
                .filter(|_| self.fail_open.is_none())
                .map(|(_, _, t)| t),
            self.retry_at,
        ]
        .into_iter()
        .flatten()
        // Nothing is written before `retry_at`, whatever falls due before it.
        .map(|t| self.retry_at.map_or(t, |r| t.max(r)))
        .filter(|t| self.reconciled_at.is_none_or(|r| *t > r))
        .min();
        [reconcile, self.events.next_flush()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Takes the Node as read (a GET): the newest there is, whatever was seen before.
    pub fn observe(&mut self, node: Node) {
        self.echo = None;
        self.take(node);
    }

    /// Takes a Node from the watch. resourceVersion is opaque (never compared as a number):
    /// a watch delivers a Node's changes in order, so after a write the events up to the one
    /// carrying the write's answer are older than what the agent holds and are skipped.
    fn observe_event(&mut self, node: Node) {
        if let Some(echo) = &self.echo {
            if node.metadata.resource_version.as_ref() != Some(echo) {
                return;
            }
            self.echo = None;
        }
        self.take(node);
    }

    /// Takes a write's answer; its watch event is awaited (unless the write changed nothing,
    /// when no event comes).
    fn observe_written(&mut self, node: Node) {
        let before = self
            .observed
            .as_ref()
            .and_then(|n| n.metadata.resource_version.as_ref());
        if node.metadata.resource_version.as_ref() != before {
            self.echo = node.metadata.resource_version.clone();
        }
        self.take(node);
    }

    fn take(&mut self, node: Node) {
        let labels: Labels = node.metadata.labels.clone().unwrap_or_default();
        self.link.labels.send_if_modified(|l| {
            if l.as_ref() == Some(&labels) {
                return false;
            }
            *l = Some(labels);
            true
        });
        self.observed = Some(node);
    }

    fn node_ref(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(self.name.clone()),
            uid: self
                .observed
                .as_ref()
                .and_then(|n| n.metadata.uid.clone())
                .or_else(|| Some(self.name.clone())),
            ..Default::default()
        }
    }

    async fn on_agent_event(&mut self, kind: AgentEventKind) {
        if !self.link.settings.borrow().events || self.observed.is_none() {
            return;
        }
        let occurrence = match kind {
            // The note is immutable once written: no attempt number or retry time (they are
            // in `/status`); the series count says how often, and another error makes
            // another Event.
            AgentEventKind::AttemptFailed {
                image,
                class,
                error,
                ..
            } => Occurrence {
                type_: Type::Warning,
                reason: "ImagePullFailed",
                note: format!("Failed to pull image {image} ({class}): {error}"),
                subject: Some(image),
            },
            AgentEventKind::Drift { image, from, to } => Occurrence {
                type_: Type::Normal,
                reason: "TagDrift",
                note: format!("Image {image} now points to {to} (was {from})"),
                subject: Some(image),
            },
            _ => return,
        };
        let node = self.node_ref();
        self.events.publish(&node, occurrence).await;
    }

    /// Compares what the Node shows with what it should show, and writes the difference.
    pub async fn reconcile(&mut self) {
        self.reconciled_at = Some(Instant::now());
        if self.observed.is_none() || !self.hub.is_synced() {
            return; // before the first resync the images' states are not known yet
        }
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let status = self.hub.snapshot();
        if status.shutting_down {
            return; // a restart must not flip the node to cold
        }
        let settings = self.link.settings.borrow().clone();
        let desired = desired(&status);
        let result = async {
            self.reconcile_taint(&settings, desired.status).await?;
            self.reconcile_condition(&desired).await?;
            self.reconcile_label(&settings, desired.status).await
        }
        .await;
        match result {
            Ok(()) => {
                self.retry_at = None;
                if self.last_error.take().is_some() {
                    tracing::info!(node = %self.name, "Node status written again");
                }
            }
            Err(e) => {
                self.retry_at = Some(Instant::now() + RETRY);
                let text = e.to_string();
                if self
                    .last_error
                    .as_ref()
                    .is_none_or(|l| l.to_string() != text)
                {
                    tracing::warn!(node = %self.name, "cannot update the Node, retrying every {}s: {text}", RETRY.as_secs());
                    self.last_error = Some(e);
                }
            }
        }
    }

    async fn reconcile_condition(&mut self, desired: &Desired) -> Result<(), NodeError> {
        let node = self.observed.as_ref().expect("checked by reconcile");
        let mut message = desired.message.clone();
        if !desired.status
            && let Some(note) = &self.fail_open
        {
            message = format!("{message}; {note}");
        }
        let status = if desired.status { "True" } else { "False" };
        let existing = condition(node);
        let same = existing.is_some_and(|c| {
            c.status == status
                && c.reason.as_deref() == Some(desired.reason)
                && c.message.as_deref() == Some(message.as_str())
        });
        if same && self.condition_written.is_none() {
            // Found as it should be (the agent restarted): the heartbeat goes on from there.
            let age = existing
                .and_then(|c| c.last_heartbeat_time.as_ref())
                .and_then(|t| SystemTime::now().duration_since(to_system_time(&t.0)).ok())
                .unwrap_or(HEARTBEAT);
            self.condition_written = Some(
                Instant::now()
                    .checked_sub(age.min(HEARTBEAT))
                    .unwrap_or_else(Instant::now),
            );
        }
        let heartbeat_due = self
            .condition_written
            .is_none_or(|t| t.elapsed() >= HEARTBEAT);
        if same && !heartbeat_due {
            return Ok(());
        }
        let now = rfc3339(SystemTime::now());
        let transition = match existing {
            Some(c) if c.status == status => c
                .last_transition_time
                .as_ref()
                .map(|t| serde_json::to_value(t).unwrap_or_default())
                .unwrap_or_else(|| now.clone().into()),
            _ => now.clone().into(),
        };
        let became_warm = desired.status && existing.is_none_or(|c| c.status != "True");
        // Strategic merge: `conditions` merge by `type`, so other conditions are untouched.
        let patch = serde_json::json!({
            "status": {
                "conditions": [{
                    "type": CONDITION_TYPE,
                    "status": status,
                    "reason": desired.reason,
                    "message": message,
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": transition,
                }]
            }
        });
        let node = self
            .nodes
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
            .map_err(NodeError::api("patch", "nodes/status"))?;
        if !same {
            tracing::info!(node = %self.name, status, reason = desired.reason, "{CONDITION_TYPE}: {message}");
        }
        self.condition_written = Some(Instant::now());
        self.observe_written(node);
        if became_warm && self.link.settings.borrow().events {
            let node = self.node_ref();
            self.events
                .publish(
                    &node,
                    Occurrence {
                        type_: Type::Normal,
                        reason: "ImagesPrePulled",
                        subject: None,
                        note: message,
                    },
                )
                .await;
        }
        Ok(())
    }

    async fn reconcile_label(
        &mut self,
        settings: &NodeSettings,
        warm: bool,
    ) -> Result<(), NodeError> {
        let node = self.observed.as_ref().expect("checked by reconcile");
        let mut labels = serde_json::Map::new();
        if let Some(old) = &self.managed_label
            && settings.label.as_ref() != Some(old)
            && label(node, old).is_some()
        {
            labels.insert(old.clone(), serde_json::Value::Null);
        }
        let value = if warm { "true" } else { "false" };
        if let Some(key) = &settings.label
            && label(node, key) != Some(value)
        {
            labels.insert(key.clone(), value.into());
        }
        if labels.is_empty() {
            self.managed_label = settings.label.clone();
            return Ok(());
        }
        // A merge patch of these keys only: other labels are untouched.
        let patch = serde_json::json!({ "metadata": { "labels": labels } });
        let node = self
            .nodes
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(NodeError::api("patch", "nodes"))?;
        self.managed_label = settings.label.clone();
        self.observe_written(node);
        Ok(())
    }

    /// When the taint is removed anyway: `taintTimeout` after the later of the Node's creation
    /// and this boot (the taint has been keeping pods off since then).
    fn deadline(&mut self, settings: &NodeSettings) -> Instant {
        let node = self.observed.as_ref().expect("checked by reconcile");
        let created = node
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| to_system_time(&t.0))
            .unwrap_or(self.boot.at);
        let since = created.max(self.boot.at);
        match self.taint_deadline {
            Some((s, t, at)) if s == since && t == settings.taint_timeout => at,
            _ => {
                let elapsed = SystemTime::now().duration_since(since).unwrap_or_default();
                let at = Instant::now() + settings.taint_timeout.saturating_sub(elapsed);
                self.taint_deadline = Some((since, settings.taint_timeout, at));
                at
            }
        }
    }

    async fn reconcile_taint(
        &mut self,
        settings: &NodeSettings,
        warm: bool,
    ) -> Result<(), NodeError> {
        let Some(key) = settings.startup_taint.clone() else {
            self.taint_deadline = None; // turned off: nothing will be removed
            return Ok(());
        };
        for _ in 0..CONFLICT_RETRIES {
            let node = self.observed.as_ref().expect("checked by reconcile");
            if !has_taint(node, &key) {
                self.taint_deadline = None; // gone: nothing to fail open
                return Ok(());
            }
            if annotation(node, BOOT_ANNOTATION) == Some(self.boot.id.as_str()) {
                self.taint_deadline = None; // removed once this boot: left alone
                if !self.taint_back_logged {
                    tracing::info!(node = %self.name, taint = %key, "the startup taint is back after prepuller removed it in this boot; leaving it (it is removed once per boot)");
                    self.taint_back_logged = true;
                }
                return Ok(());
            }
            let deadline = self.deadline(settings);
            let fail_open = !warm && Instant::now() >= deadline;
            if !warm && !fail_open {
                return Ok(());
            }
            let node = self.observed.as_ref().expect("checked by reconcile");
            let rest: Vec<_> = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|t| t.key != key)
                .collect();
            // `spec.taints` has no merge key: the list is replaced whole, so the
            // resourceVersion makes the API server refuse (409) if it changed since our read.
            let patch = serde_json::json!({
                "metadata": {
                    "resourceVersion": node.metadata.resource_version,
                    "annotations": { BOOT_ANNOTATION: self.boot.id },
                },
                "spec": { "taints": rest },
            });
            match self
                .nodes
                .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(NodeError::api("patch", "nodes"))
            {
                Ok(node) => {
                    if fail_open {
                        let note = format!(
                            "startup taint {key} removed after {} without all required images (fail-open)",
                            humantime::format_duration(settings.taint_timeout)
                        );
                        tracing::warn!(node = %self.name, "{note}");
                        self.fail_open = Some(note);
                    } else {
                        tracing::info!(node = %self.name, taint = %key, "node warm: startup taint removed");
                    }
                    self.observe_written(node);
                    return Ok(());
                }
                Err(e) if e.is_conflict() => {
                    tracing::debug!(node = %self.name, "the Node changed while removing the taint; reading it again");
                    let node = self
                        .nodes
                        .get(&self.name)
                        .await
                        .map_err(NodeError::api("get", "nodes"))?;
                    self.observe(node);
                }
                Err(e) => return Err(e),
            }
        }
        Err(NodeError::KeptChanging { taint: key })
    }
}

/// Sleeps until `at`; forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The reporter's requests and their effects (they read its private state, so they live here).
#[cfg(test)]
#[path = "tests.rs"]
mod tests;
