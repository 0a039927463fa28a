//! `prepuller nodes`: the fleet view. Lists the cluster's nodes with their `ImagesPrePulled`
//! condition and whether the startup taint is still there; `--wait` waits until every selected
//! node is warm (pre-maintenance staging, CI pipelines).
//!
//! Exit codes: 0 listed (without `--wait`), or every selected node warm (with `--wait`); 1 some
//! selected node still cold when `--timeout` expired, or no node selected; 2 no cluster
//! configured; 3 the API could not be used (unreachable, forbidden).

use std::time::{Duration, SystemTime};

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::ListParams;
use serde::Serialize;

use super::ExitCode;
use super::format::human_duration;
use crate::config::{DEFAULT_STARTUP_TAINT, duration};
use crate::k8s::{CONDITION_TYPE, explain};

/// How often `--wait` lists the nodes again: one cheap LIST, however many nodes.
const POLL: Duration = Duration::from_secs(2);
/// Cold nodes named in the error of `--wait`.
const NAMED: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NodesOutput {
    Table,
    /// The table with the heartbeat and the condition's message.
    Wide,
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct NodesArgs {
    /// Only the nodes matching this label selector (as `kubectl get nodes -l`).
    #[arg(long, short = 'l')]
    pub selector: Option<String>,
    /// Output format: a table, a wider table, or JSON.
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: NodesOutput,
    /// Wait until every selected node is warm; exit 1 naming the cold ones after --timeout.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (e.g. 30m).
    #[arg(long, value_parser = duration::parse, default_value = "10m", requires = "wait")]
    pub timeout: Duration,
    /// The startup taint shown in the TAINTED column (the agents' nodeReadiness.startupTaint).
    #[arg(long, default_value = DEFAULT_STARTUP_TAINT)]
    pub startup_taint: String,
}

/// One node as `prepuller nodes` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRow {
    pub name: String,
    /// `True`, `False`, or `Unknown` when the node has no `ImagesPrePulled` condition (no
    /// agent there yet).
    pub status: String,
    pub reason: Option<String>,
    pub message: Option<String>,
    /// RFC 3339.
    pub last_transition_time: Option<String>,
    pub last_heartbeat_time: Option<String>,
    /// The startup taint is still on the node.
    pub startup_taint: bool,
}

impl NodeRow {
    pub fn from_node(node: &Node, taint: &str) -> NodeRow {
        let condition = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == CONDITION_TYPE));
        let time = |t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time| t.0.to_string();
        NodeRow {
            name: node.metadata.name.clone().unwrap_or_default(),
            status: condition.map_or("Unknown".into(), |c| c.status.clone()),
            reason: condition.and_then(|c| c.reason.clone()),
            message: condition.and_then(|c| c.message.clone()),
            last_transition_time: condition.and_then(|c| c.last_transition_time.as_ref().map(time)),
            last_heartbeat_time: condition.and_then(|c| c.last_heartbeat_time.as_ref().map(time)),
            startup_taint: node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.key == taint)),
        }
    }

    pub fn warm(&self) -> bool {
        self.status == "True"
    }

    /// The reason, with the fleet pull budget's part of the message (`fleet:`): `pulling
    /// (slot 2/5 of registry.example.com)` or `waiting for a slot`.
    fn reason_cell(&self) -> String {
        let reason = self.reason.clone().unwrap_or_default();
        if reason == "WaitingForPullSlot" {
            return format!("{reason}: waiting for a slot");
        }
        let slots = self.message.as_deref().and_then(|m| {
            let rest = m.split_once("; pulling (slot ")?.1;
            Some(rest.split_once("):")?.0)
        });
        match slots {
            Some(slots) => format!("{reason}: pulling (slot {slots})"),
            None => reason,
        }
    }

    /// `node-b (PullFailed: …)`, for the error of `--wait`.
    fn why_cold(&self) -> String {
        match (&self.reason, &self.message) {
            (Some(r), Some(m)) => format!("{} ({r}: {m})", self.name),
            (Some(r), None) => format!("{} ({r})", self.name),
            _ => format!(
                "{} (no {CONDITION_TYPE} condition: is the prepuller agent running there?)",
                self.name
            ),
        }
    }
}

/// One registry of the fleet pull budget as the listed nodes' conditions tell it: how many of
/// them pull on its slots and how many wait for one. Waiting nodes race for a freed slot
/// rather than queue, so this is the length of the queue, not a position in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetQueue {
    pub registry: String,
    /// The registry's `maxConcurrentNodes`, when a pulling node's message shows it.
    pub slots: Option<u32>,
    pub pulling: usize,
    pub waiting: usize,
}

impl BudgetQueue {
    fn new(registry: &str) -> BudgetQueue {
        BudgetQueue {
            registry: registry.to_string(),
            slots: None,
            pulling: 0,
            waiting: 0,
        }
    }
}

impl NodeRow {
    /// The registries this node pulls from on a slot (with their number of slots) and those
    /// it waits for, from its condition's message (see `k8s::condition`).
    fn budget(&self) -> (Vec<(&str, Option<u32>)>, Vec<&str>) {
        let Some(m) = self.message.as_deref() else {
            return (Vec::new(), Vec::new());
        };
        if self.reason.as_deref() == Some("WaitingForPullSlot") {
            let waiting = m
                .split_once("waiting for a slot of the fleet pull budget for ")
                // The message may go on (`; startup taint … removed …`).
                .map(|(_, r)| r.split(';').next().unwrap_or(r).split(", ").collect())
                .unwrap_or_default();
            return (Vec::new(), waiting);
        }
        let held = m
            .split_once("; pulling (slot ")
            .and_then(|(_, rest)| rest.split_once("):"))
            .map(|(slots, _)| {
                slots
                    .split(", slot ")
                    .filter_map(|s| {
                        let (of, registry) = s.split_once(" of ")?;
                        let n = of.split_once('/').and_then(|(_, n)| n.parse().ok());
                        Some((registry, n))
                    })
                    .collect()
            })
            .unwrap_or_default();
        (held, Vec::new())
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fleet {
    pub nodes: Vec<NodeRow>,
    pub warm: usize,
    pub total: usize,
    /// Per registry of the fleet pull budget (`fleet:`): nodes pulling and waiting.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub budget: Vec<BudgetQueue>,
}

impl Fleet {
    pub fn new(nodes: &[Node], taint: &str) -> Fleet {
        let mut rows: Vec<NodeRow> = nodes.iter().map(|n| NodeRow::from_node(n, taint)).collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        let mut queues: std::collections::BTreeMap<String, BudgetQueue> = Default::default();
        for r in &rows {
            let (held, waiting) = r.budget();
            for (registry, slots) in held {
                let q = queues
                    .entry(registry.to_string())
                    .or_insert_with(|| BudgetQueue::new(registry));
                q.pulling += 1;
                q.slots = q.slots.or(slots);
            }
            for registry in waiting {
                let q = queues
                    .entry(registry.to_string())
                    .or_insert_with(|| BudgetQueue::new(registry));
                q.waiting += 1;
            }
        }
        Fleet {
            warm: rows.iter().filter(|r| r.warm()).count(),
            total: rows.len(),
            nodes: rows,
            budget: queues.into_values().collect(),
        }
    }

    /// `fleet pull budget for registry.example.com: 50 nodes pulling (50 slots), 4950 nodes
    /// waiting`: only with `fleet:`, as the conditions tell it.
    fn budget_lines(&self) -> String {
        let nodes = |n: usize| format!("{n} node{}", if n == 1 { "" } else { "s" });
        self.budget
            .iter()
            .map(|q| {
                let slots = (q.slots)
                    .map(|n| format!(" ({n} slot{})", if n == 1 { "" } else { "s" }))
                    .unwrap_or_default();
                format!(
                    "fleet pull budget for {}: {} pulling{slots}, {} waiting\n",
                    q.registry,
                    nodes(q.pulling),
                    nodes(q.waiting)
                )
            })
            .collect()
    }

    pub fn cold(&self) -> Vec<&NodeRow> {
        self.nodes.iter().filter(|r| !r.warm()).collect()
    }

    pub fn summary(&self) -> String {
        format!("{}/{} nodes warm", self.warm, self.total)
    }

    pub fn render(&self, output: NodesOutput) -> String {
        if output == NodesOutput::Json {
            return serde_json::to_string_pretty(self).unwrap_or_default() + "\n";
        }
        let wide = output == NodesOutput::Wide;
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED);
        let mut header = vec!["NODE", "PREPULLED", "REASON", "SINCE", "STARTUP TAINT"];
        if wide {
            header.extend(["HEARTBEAT", "MESSAGE"]);
        }
        t.set_header(header);
        for r in &self.nodes {
            let mut row = vec![
                r.name.clone(),
                r.status.clone(),
                r.reason_cell(),
                ago(r.last_transition_time.as_deref()),
                if r.startup_taint { "yes" } else { "no" }.to_string(),
            ];
            if wide {
                row.push(ago(r.last_heartbeat_time.as_deref()));
                row.push(r.message.clone().unwrap_or_default());
            }
            t.add_row(row);
        }
        format!("{t}\n{}{}\n", self.budget_lines(), self.summary())
    }
}

/// `5m ago`, from an RFC 3339 time.
fn ago(t: Option<&str>) -> String {
    let Some(t) = t.and_then(|t| humantime::parse_rfc3339(t).ok()) else {
        return String::new();
    };
    let elapsed = SystemTime::now().duration_since(t).unwrap_or_default();
    format!(
        "{} ago",
        human_duration(Duration::from_secs(elapsed.as_secs()))
    )
}

/// Runs `prepuller nodes`.
pub async fn run(args: NodesArgs) -> ExitCode {
    // The process's one client.
    let client = match crate::k8s::connect().await {
        Ok(Some((client, _))) => client,
        Ok(None) => {
            eprintln!(
                "error: no cluster configured: set KUBECONFIG (or ~/.kube/config), or run in a pod"
            );
            return ExitCode::Usage;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::Usage;
        }
    };
    let api: Api<Node> = Api::all(client);
    let params = match &args.selector {
        Some(s) => ListParams::default().labels(s),
        None => ListParams::default(),
    };
    let deadline = tokio::time::Instant::now() + args.timeout;
    // The progress line last printed: a new one only when it changes.
    let mut last_summary: Option<String> = None;
    loop {
        let fleet = match api.list(&params).await {
            Ok(list) => Fleet::new(&list.items, &args.startup_taint),
            Err(e) => {
                eprintln!("error: cannot list nodes: {}", explain(&e, "list", "nodes"));
                return ExitCode::Unavailable;
            }
        };
        if !args.wait {
            print!("{}", fleet.render(args.output));
            return ExitCode::Ok;
        }
        let done = fleet.total > 0 && fleet.warm == fleet.total;
        let timed_out = tokio::time::Instant::now() >= deadline;
        if done || timed_out {
            print!("{}", fleet.render(args.output));
            if done {
                return ExitCode::Ok;
            }
            if fleet.total == 0 {
                eprintln!("error: no node matches the selector");
                return ExitCode::Failed;
            }
            let cold = fleet.cold();
            let mut named: Vec<String> = cold.iter().take(NAMED).map(|r| r.why_cold()).collect();
            if cold.len() > NAMED {
                named.push(format!("and {} more", cold.len() - NAMED));
            }
            eprintln!(
                "error: timed out after {}: {}; cold: {}",
                humantime::format_duration(args.timeout),
                fleet.summary(),
                named.join(", ")
            );
            return ExitCode::Failed;
        }
        let summary = fleet.summary();
        if last_summary.as_ref() != Some(&summary) {
            eprintln!("{summary}, waiting");
            last_summary = Some(summary);
        }
        tokio::time::sleep(POLL.min(deadline - tokio::time::Instant::now())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, condition: Option<(&str, &str)>, tainted: bool) -> Node {
        let mut v = serde_json::json!({
            "metadata": {"name": name},
            "spec": {},
            "status": {"conditions": [
                {"type": "Ready", "status": "True"},
            ]},
        });
        if let Some((status, reason)) = condition {
            v["status"]["conditions"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({
                    "type": CONDITION_TYPE, "status": status, "reason": reason,
                    "message": "1/2 required images present",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }));
        }
        if tainted {
            v["spec"]["taints"] =
                serde_json::json!([{"key": DEFAULT_STARTUP_TAINT, "effect": "NoSchedule"}]);
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_fleet_counts_warm_nodes_and_names_why_the_others_are_cold() {
        let fleet = Fleet::new(
            &[
                node("c", None, false),
                node("a", Some(("True", "AllRequiredImagesPresent")), false),
                node("b", Some(("False", "PullFailed")), true),
            ],
            DEFAULT_STARTUP_TAINT,
        );
        assert_eq!(fleet.summary(), "1/3 nodes warm");
        let names: Vec<_> = fleet.nodes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(fleet.nodes[1].startup_taint);
        let cold: Vec<_> = fleet.cold().iter().map(|r| r.why_cold()).collect();
        assert_eq!(
            cold,
            [
                "b (PullFailed: 1/2 required images present)",
                "c (no ImagesPrePulled condition: is the prepuller agent running there?)"
            ]
        );
        let table = fleet.render(NodesOutput::Wide);
        assert!(table.contains("PullFailed"), "{table}");
        assert!(table.contains("1/2 required images present"), "{table}");
        assert!(table.ends_with("1/3 nodes warm\n"), "{table}");
        let json: serde_json::Value =
            serde_json::from_str(&fleet.render(NodesOutput::Json)).unwrap();
        assert_eq!(json["warm"], 1);
        assert_eq!(json["nodes"][1]["startupTaint"], true);
        assert_eq!(json["nodes"][2]["status"], "Unknown");
    }

    #[test]
    fn the_table_shows_the_fleet_slot_or_the_wait_for_one() {
        let mut pulling = node("a", Some(("False", "PullingImages")), true);
        pulling
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[1]
            .message = Some(
            "0/2 required images present; pulling (slot 2/5 of registry.example.com): r/a:1".into(),
        );
        let fleet = Fleet::new(
            &[
                pulling,
                node("b", Some(("False", "WaitingForPullSlot")), true),
            ],
            DEFAULT_STARTUP_TAINT,
        );
        let table = fleet.render(NodesOutput::Table);
        assert!(
            table.contains("PullingImages: pulling (slot 2/5 of registry.example.com)"),
            "{table}"
        );
        assert!(
            table.contains("WaitingForPullSlot: waiting for a slot"),
            "{table}"
        );
    }

    #[test]
    fn the_fleet_budget_line_counts_nodes_pulling_and_waiting_per_registry() {
        let with = |name: &str, reason: &str, message: &str| {
            let mut n = node(name, Some(("False", reason)), true);
            n.status.as_mut().unwrap().conditions.as_mut().unwrap()[1].message =
                Some(message.into());
            n
        };
        let fleet = Fleet::new(
            &[
                with(
                    "a",
                    "PullingImages",
                    "0/2 required images present; pulling (slot 2/5 of r.example, slot 1/1 of docker.io): r.example/a:1",
                ),
                with(
                    "b",
                    "WaitingForPullSlot",
                    "0/2 required images present; waiting for a slot of the fleet pull budget for r.example",
                ),
                with(
                    "c",
                    "WaitingForPullSlot",
                    "0/2 required images present; waiting for a slot of the fleet pull budget for docker.io, r.example; startup taint startup-taint.cluster-autoscaler.kubernetes.io/prepuller removed after 15m without all required images (fail-open)",
                ),
                node("d", Some(("True", "AllRequiredImagesPresent")), false),
            ],
            DEFAULT_STARTUP_TAINT,
        );
        let table = fleet.render(NodesOutput::Table);
        assert!(
            table.contains(
                "fleet pull budget for docker.io: 1 node pulling (1 slot), 1 node waiting\n"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "fleet pull budget for r.example: 1 node pulling (5 slots), 2 nodes waiting\n"
            ),
            "{table}"
        );
        assert!(table.ends_with("1/4 nodes warm\n"), "{table}");
        let json: serde_json::Value =
            serde_json::from_str(&fleet.render(NodesOutput::Json)).unwrap();
        assert_eq!(json["budget"][1]["waiting"], 2);
    }
}
