//! The fleet simulation (`make fleet-sim`): K nodes on this machine (each its own containerd
//! and `prepuller agent`), one registry behind the measuring front (testkit/src/front.rs), the
//! fake Kubernetes API as its own process (examples/fake_apiserver.rs), and scenarios run one
//! after the other, each on a fresh fleet and a fresh API. Prints one table row per scenario.
//!
//!   cargo run --example fleet_sim -- [--nodes K] [--only NAME[;NAME…]]
//!
//! Needs `prepuller` and `examples/fake_apiserver` built beside it (`make fleet-sim` builds
//! both). Scenarios that set `fleet:` in the agent's config are reported as skipped while the
//! agent refuses that key.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::fleet::Fleet;
use testkit::front::RateLimitStyle;
use testkit::{FakeApiServer, Registry, http_client, images_prepulled_condition, push_image};

const MB: usize = 1024 * 1024;
/// Images every node pulls: (repo:tag, bytes of layers). 24 MiB a node.
const IMAGES: [(&str, usize); 4] = [
    ("sim/base:1", 9 * MB),
    ("sim/app:1", 7 * MB),
    ("sim/sidecar:1", 5 * MB),
    ("sim/tools:1", 3 * MB),
];
/// The registry's uplink, shared by the fleet: K=6 × 24 MiB take about 12 s uncoordinated.
const UPLINK: u64 = 12 * MB as u64;
/// A scenario that is not warm after this has failed.
const GIVE_UP: Duration = Duration::from_secs(180);
const STARTUP_TAINT: &str = "startup-taint.cluster-autoscaler.kubernetes.io/prepuller";

#[derive(Clone, Copy, Debug)]
enum Action {
    RateLimit(RateLimitStyle, u64),
    ApiDown,
    ApiUp,
    /// SIGKILL of node i's agent.
    Kill(usize),
    /// Node i's agent started again (the DaemonSet's restart).
    Restart(usize),
    /// SIGKILL of the agent of a node pulling now (a slot holder, when there are slots).
    KillPulling,
    /// That node's agent started again.
    RestartKilled,
}

struct Scenario {
    name: &'static str,
    /// The agent's `fleet:` block, if any.
    fleet: Option<&'static str>,
    events: Vec<(Duration, Action)>,
    /// Every node warm within this (the run fails above it): the README's figure for the
    /// scenario with half again as much margin (and 10 s) for a 2-core machine.
    warm_within: Duration,
}

fn scenarios() -> Vec<Scenario> {
    let at = Duration::from_secs;
    let s = |name, fleet, events, warm_within: u64| Scenario {
        name,
        fleet,
        events,
        warm_within: Duration::from_secs(warm_within),
    };
    vec![
        s("uncoordinated", None, vec![], 30),
        s(
            "429 window 20 s (Docker Hub)",
            None,
            vec![(at(3), Action::RateLimit(RateLimitStyle::DockerHub, 20))],
            60,
        ),
        s(
            "429 window 20 s (GHCR, retry-after)",
            None,
            vec![(at(3), Action::RateLimit(RateLimitStyle::Ghcr, 20))],
            55,
        ),
        s(
            "API server down 30 s",
            None,
            vec![(at(1), Action::ApiDown), (at(31), Action::ApiUp)],
            30,
        ),
        s(
            "SIGKILL of an agent (restarted 2 s later)",
            None,
            vec![(at(3), Action::Kill(0)), (at(5), Action::Restart(0))],
            30,
        ),
        s(
            "maxConcurrentNodes 1",
            Some("{maxConcurrentNodes: 1}"),
            vec![],
            46,
        ),
        s(
            "maxConcurrentNodes 2",
            Some("{maxConcurrentNodes: 2}"),
            vec![],
            36,
        ),
        s(
            "maxConcurrentNodes 4",
            Some("{maxConcurrentNodes: 4}"),
            vec![],
            34,
        ),
        s(
            "maxConcurrentNodes 2, 429 window 20 s (Docker Hub)",
            Some("{maxConcurrentNodes: 2}"),
            vec![(at(3), Action::RateLimit(RateLimitStyle::DockerHub, 20))],
            125,
        ),
        s(
            "maxConcurrentNodes 2, 429 window 20 s (GHCR, retry-after)",
            Some("{maxConcurrentNodes: 2}"),
            vec![(at(3), Action::RateLimit(RateLimitStyle::Ghcr, 20))],
            125,
        ),
        // `onUnavailable: proceed` (the default): the nodes that find no API pull
        // uncoordinated, so the peak may pass the budget here.
        s(
            "maxConcurrentNodes 2, API server down 30 s",
            Some("{maxConcurrentNodes: 2}"),
            vec![(at(1), Action::ApiDown), (at(31), Action::ApiUp)],
            60,
        ),
        // Restarted only after its Lease (60 s) has expired: the same node name would take its
        // own slot back at once, which is not what is measured.
        s(
            "maxConcurrentNodes 1, SIGKILL of the holder",
            Some("{maxConcurrentNodes: 1}"),
            vec![
                (at(1), Action::KillPulling),
                (at(78), Action::RestartKilled),
            ],
            140,
        ),
    ]
}

/// The fake API server process and its control listener.
struct FakeApiProc {
    server: FakeApiServer,
}

impl FakeApiProc {
    async fn start(dir: &Path) -> FakeApiProc {
        let exe = std::env::current_exe().expect("current exe");
        let bin = exe.with_file_name("fake_apiserver");
        assert!(
            bin.is_file(),
            "{} is missing: `cargo build --example fake_apiserver` (make fleet-sim does)",
            bin.display()
        );
        FakeApiProc {
            server: FakeApiServer::start(&bin, dir).await,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = http_client().request(method, format!("{}{path}", self.server.control));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap_or(Value::Null)
    }

    async fn kubeconfig(&self, node: &str) -> PathBuf {
        let v = self
            .call(reqwest::Method::POST, &format!("/kubeconfigs/{node}"), None)
            .await;
        PathBuf::from(v["kubeconfig"].as_str().unwrap())
    }
}

/// Every Node's `ImagesPrePulled` condition is `True` in the API.
async fn api_warm(api: &FakeApiProc, names: &[String]) -> bool {
    for n in names {
        let node = api
            .call(reqwest::Method::GET, &format!("/nodes/{n}"), None)
            .await;
        if images_prepulled_condition(&node)["status"] != "True" {
            return false;
        }
    }
    true
}

/// Holders of the fleet's pull slots (the Leases labelled `prepuller.dev/fleet=slot`).
async fn slot_holders(api: &FakeApiProc) -> Vec<String> {
    let leases = api.call(reqwest::Method::GET, "/leases", None).await;
    (leases.as_array().into_iter().flatten())
        .filter(|l| l["metadata"]["labels"]["prepuller.dev/fleet"] == "slot")
        .filter_map(|l| l["spec"]["holderIdentity"].as_str())
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect()
}

/// One row of the table.
struct Row {
    name: &'static str,
    skipped: Option<String>,
    warm_p50: Option<Duration>,
    warm_max: Option<Duration>,
    warm_nodes: usize,
    peak_pulling: usize,
    gets_per_node_image: (f64, u64),
    answered_429: Vec<u64>,
    writes_per_node: f64,
    lease_writes_per_node: f64,
    cpu_per_agent: Duration,
    /// After a slot holder's SIGKILL, until another node started pulling.
    recovery: Option<Duration>,
}

/// N of `{maxConcurrentNodes: N}`.
fn budget_of(fleet: &str) -> Option<usize> {
    let rest = &fleet[fleet.find("maxConcurrentNodes:")? + "maxConcurrentNodes:".len()..];
    rest.trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

async fn run(scenario: &Scenario, registry: &Registry, k: usize) -> Row {
    let mut fleet = Fleet::start(&registry.host(), k);
    fleet.front.throttle(Some(UPLINK));
    let api_dir = fleet.dir.path().join("fake-api");
    std::fs::create_dir_all(&api_dir).unwrap();
    let mut api = FakeApiProc::start(&api_dir).await;
    let mut kubeconfigs = Vec::new();
    for node in &fleet.nodes {
        let taints = json!([{"key": STARTUP_TAINT, "effect": "NoSchedule"}]);
        api.call(
            reqwest::Method::PUT,
            "/nodes",
            Some(json!({"metadata": {"name": node.name, "labels": {}}, "spec": {"taints": taints}, "status": {}})),
        )
        .await;
        kubeconfigs.push(api.kubeconfig(&node.name).await);
    }
    let mut config = String::from("resyncInterval: 1s\nbackoff: {initial: 1s, max: 10s}\n");
    if let Some(f) = scenario.fleet {
        config.push_str(&format!("fleet: {f}\n"));
    }
    config.push_str("images:\n");
    for (image, _) in IMAGES {
        config.push_str(&format!("  - {}\n", fleet.image(image)));
    }
    let config_path = fleet.dir.path().join("config.yaml");
    std::fs::write(&config_path, config).unwrap();
    let kc = kubeconfigs.clone();
    let names: Vec<String> = fleet.nodes.iter().map(|n| n.name.clone()).collect();
    fleet.start_agents(
        &config_path,
        |node| kc[names.iter().position(|n| n == node).unwrap()].clone(),
        &[],
    );
    let started = Instant::now();
    let mut events = scenario.events.clone();
    let mut skipped = None;
    let mut killed: Option<(usize, Instant)> = None;
    loop {
        while let Some(&(at, action)) = events.first() {
            if started.elapsed() < at {
                break;
            }
            events.remove(0);
            match action {
                Action::RateLimit(style, secs) => {
                    fleet.front.rate_limit(style, Duration::from_secs(secs))
                }
                Action::ApiDown => drop(api.call(reqwest::Method::POST, "/down", None).await),
                Action::ApiUp => drop(api.call(reqwest::Method::POST, "/up", None).await),
                Action::Kill(i) => fleet.kill_agent(i).await,
                Action::Restart(i) => fleet.restart_agent(i, &config_path, &kubeconfigs[i], &[]),
                Action::KillPulling => {
                    // A node pulling now and, with slots, holding one (not one between its
                    // release and the end of its last blob GET): up to 10 s for one.
                    let until = Instant::now() + Duration::from_secs(10);
                    let i = loop {
                        let pulling = fleet.front.pulling_nodes();
                        let holders = slot_holders(&api).await;
                        let found = names.iter().position(|n| {
                            pulling.contains(n) && (scenario.fleet.is_none() || holders.contains(n))
                        });
                        if let Some(i) = found {
                            break i;
                        }
                        if Instant::now() > until {
                            eprintln!(
                                "fleet-sim: no slot holder pulling (holders {holders:?}, pulling {pulling:?}); killing node 0"
                            );
                            break 0;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    };
                    fleet.kill_agent(i).await;
                    eprintln!("fleet-sim: SIGKILL of {}", names[i]);
                    killed = Some((i, Instant::now()));
                }
                Action::RestartKilled => {
                    if let Some((i, _)) = killed {
                        fleet.restart_agent(i, &config_path, &kubeconfigs[i], &[]);
                    }
                }
            }
        }
        // Done when every agent is warm and every Node says so in the API (its writes done).
        if fleet.poll_warm().await && events.is_empty() && api_warm(&api, &names).await {
            break;
        }
        if let Some((node, log)) = fleet.exited_agent() {
            let error = log
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("error:"))
                .unwrap_or_else(|| log.lines().last().unwrap_or(""))
                .trim()
                .to_string();
            // Until the agent knows `fleet:`, its config error names the key: skip, say why.
            skipped = Some(match scenario.fleet {
                Some(_) if error.contains("unknown field `fleet`") => {
                    "the agent refuses `fleet:` (unknown field): coordination not merged yet"
                        .to_string()
                }
                Some(_) if error.contains("invalid config") => {
                    format!("the agent refuses the `fleet:` config: {error}")
                }
                _ => {
                    eprintln!("{log}");
                    format!("FAILED: the agent of {node} exited: {error}")
                }
            });
            break;
        }
        if started.elapsed() > GIVE_UP {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet.read_agent_cpu();
    // FLEET_SIM_LOGS=1: every agent's log after the scenario, to see why a figure is what it is.
    if std::env::var_os("FLEET_SIM_LOGS").is_some() {
        for node in &fleet.nodes {
            if let Some(agent) = &node.agent {
                eprintln!("==== {} ====\n{}", node.name, agent.log());
            }
        }
    }
    let stats = fleet.front.stats();
    let requests = api
        .call(reqwest::Method::GET, "/requests", None)
        .await
        .as_array()
        .cloned()
        .unwrap_or_default();
    let writes = |lease_only: bool| {
        requests
            .iter()
            .filter(|r| r["method"] != "GET")
            .filter(|r| !lease_only || r["path"].as_str().unwrap_or("").contains("/leases"))
            .filter(|r| names.iter().any(|n| r["client"] == n.as_str()))
            .count() as f64
            / k as f64
    };
    let gets: Vec<u64> = names
        .iter()
        .flat_map(|n| {
            IMAGES
                .iter()
                .map(|(i, _)| stats.gets(n, i.split_once(':').unwrap().0))
        })
        .collect();
    for n in &names {
        for (image, _) in IMAGES {
            let repo = image.split_once(':').unwrap().0;
            if stats.gets(n, repo) == 0 {
                let key = (n.clone(), repo.to_string());
                eprintln!(
                    "fleet-sim: {n} has {repo} without a manifest GET reaching the registry ({} HEADs)",
                    stats.manifest_heads.get(&key).copied().unwrap_or(0)
                );
            }
        }
    }
    for w in &stats.windows {
        eprintln!(
            "fleet-sim: 429 window ({:?}): {} answered to {:?}",
            w.style, w.answered, w.nodes
        );
    }
    let times = fleet.warm_times();
    // Slot recovery: from the SIGKILL to the first blob GET of a node that had not pulled yet.
    let recovery = killed.and_then(|(_, at)| {
        stats
            .pull_spans
            .values()
            .map(|(first, _)| *first)
            .filter(|first| *first > at)
            .min()
            .map(|first| first - at)
    });
    if skipped.is_none()
        && let Some(budget) = scenario.fleet.and_then(budget_of)
        && !(scenario.events.iter()).any(|(_, a)| matches!(a, Action::ApiDown))
        && stats.peak_pulling_nodes > budget
    {
        skipped = Some(format!(
            "FAILED: {} nodes pulled at once, over the budget of {budget}",
            stats.peak_pulling_nodes
        ));
    }
    let cpu: Duration = fleet.nodes.iter().filter_map(|n| n.agent_cpu).sum();
    let _ = api.server.child.start_kill();
    Row {
        name: scenario.name,
        skipped,
        warm_p50: times.get(times.len().saturating_sub(1) / 2).copied(),
        warm_max: (times.len() == k).then(|| times.last().copied()).flatten(),
        warm_nodes: times.len(),
        peak_pulling: stats.peak_pulling_nodes,
        gets_per_node_image: (
            gets.iter().sum::<u64>() as f64 / gets.len() as f64,
            gets.iter().copied().max().unwrap_or(0),
        ),
        answered_429: stats.windows.iter().map(|w| w.answered).collect(),
        writes_per_node: writes(false),
        lease_writes_per_node: writes(true),
        cpu_per_agent: cpu / k as u32,
        recovery,
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("—".into(), |d| format!("{:.1} s", d.as_secs_f64()))
}

fn print_table(rows: &[Row], k: usize) {
    println!(
        "\nfleet simulation: {k} nodes, {} images ({} MiB a node), uplink {} MiB/s\n",
        IMAGES.len(),
        IMAGES.iter().map(|(_, b)| b).sum::<usize>() / MB,
        UPLINK / MB as u64
    );
    println!(
        "| scenario | warm p50 | warm max | peak pulling nodes | manifest GETs per node·image (mean/max) | 429s per window | API writes per node (Lease) | agent CPU | slot recovery after SIGKILL |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        if let Some(why) = &r.skipped {
            println!("| {} | skipped: {why} | | | | | | | |", r.name);
            continue;
        }
        let max = if r.warm_nodes == k {
            secs(r.warm_max)
        } else {
            format!("{}/{k} warm", r.warm_nodes)
        };
        let windows = if r.answered_429.is_empty() {
            "—".to_string()
        } else {
            r.answered_429
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "| {} | {} | {max} | {} | {:.2} / {} | {windows} | {:.1} ({:.1}) | {:.2} s | {} |",
            r.name,
            secs(r.warm_p50),
            r.peak_pulling,
            r.gets_per_node_image.0,
            r.gets_per_node_image.1,
            r.writes_per_node,
            r.lease_writes_per_node,
            r.cpu_per_agent.as_secs_f64(),
            secs(r.recovery),
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut k = 6;
    let mut only: Option<Vec<String>> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--nodes" => k = it.next().and_then(|v| v.parse().ok()).expect("--nodes K"),
            "--only" => {
                only = Some(
                    it.next()
                        .expect("--only NAME")
                        .split(';')
                        .filter(|n| !n.trim().is_empty())
                        .map(str::to_string)
                        .collect(),
                )
            }
            other => panic!("usage: fleet_sim [--nodes K] [--only NAME;…] (unknown {other})"),
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("prepuller-fleet-sim-")
        .tempdir()
        .unwrap();
    let registry = Registry::start(&dir.path().join("registry"));
    for (i, (image, bytes)) in IMAGES.iter().enumerate() {
        let (repo, tag) = image.split_once(':').unwrap();
        push_image(&registry.host(), repo, tag, 7000 + i as u64, *bytes).await;
    }
    let mut rows = Vec::new();
    for s in scenarios() {
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|n| s.name.starts_with(n.as_str())))
        {
            continue;
        }
        eprintln!("fleet-sim: {} …", s.name);
        let row = run(&s, &registry, k).await;
        eprintln!(
            "fleet-sim: {}: {}",
            s.name,
            row.skipped.as_deref().unwrap_or("done")
        );
        rows.push(row);
    }
    print_table(&rows, k);
    let scenarios = scenarios();
    let mut goals = testkit::goals::Goals::new();
    for r in rows.iter().filter(|r| r.skipped.is_none()) {
        let scenario = scenarios.iter().find(|s| s.name == r.name).unwrap();
        check_row(&mut goals, r, scenario, k);
    }
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| match &r.skipped {
            Some(why) => why.starts_with("FAILED"),
            None => r.warm_nodes < k,
        })
        .map(|r| r.name)
        .collect();
    if !failed.is_empty() || goals.missed() > 0 {
        if !failed.is_empty() {
            eprintln!("fleet-sim: failed: {}", failed.join("; "));
        }
        // exit() runs no destructors: stop the registry and remove the directory first.
        drop(registry);
        drop(dir);
        goals.finish(); // lists the missed goals and exits 1 if there are any
        std::process::exit(1);
    }
}

/// The bounds every figure of the README's table is held to (`make fleet-sim` fails above
/// them), each with room for a loaded 2-core machine: warm-up within the scenario's
/// `warm_within`; one manifest GET per node·image (two where an agent is killed mid-pull: its
/// containerd drops the pull under way); at most 16 API writes per node (the table: 7 to 13.3)
/// and at most 4 Lease writes (2 to 3.5); at most 12 answered 429s (what containerd asks inside
/// one `PullImage`) per image and pulling node; 1.5 CPU-s per agent (0.2 to 0.8); a killed
/// holder's slot back within its 60 s Lease and 15 s.
fn check_row(goals: &mut testkit::goals::Goals, r: &Row, s: &Scenario, k: usize) {
    let name = r.name;
    goals.check(
        r.warm_max.is_some_and(|m| m <= s.warm_within),
        format!(
            "{name}: warm max {} <= {} s",
            secs(r.warm_max),
            s.warm_within.as_secs()
        ),
    );
    let killed = (s.events.iter()).any(|(_, a)| matches!(a, Action::Kill(_) | Action::KillPulling));
    let (gets_mean, gets_max) = r.gets_per_node_image;
    let most = if killed { 2 } else { 1 };
    goals.check(
        gets_max <= most && gets_mean <= 1.25,
        format!(
            "{name}: manifest GETs per node·image {gets_mean:.2} / {gets_max} <= 1.25 / {most}"
        ),
    );
    goals.check(
        r.writes_per_node <= 16.0 && r.lease_writes_per_node <= 4.0,
        format!(
            "{name}: API writes per node {:.1} ({:.1} Lease) <= 16 (4)",
            r.writes_per_node, r.lease_writes_per_node
        ),
    );
    let pulling = s.fleet.and_then(budget_of).unwrap_or(k);
    let most_429 = 12 * IMAGES.len() as u64 * pulling as u64;
    goals.check(
        r.answered_429.iter().all(|n| *n <= most_429),
        format!(
            "{name}: 429s answered per window {:?} <= {most_429}",
            r.answered_429
        ),
    );
    goals.check(
        r.cpu_per_agent <= Duration::from_millis(1500),
        format!(
            "{name}: agent CPU {:.2} s <= 1.5 s",
            r.cpu_per_agent.as_secs_f64()
        ),
    );
    if (s.events.iter()).any(|(_, a)| matches!(a, Action::KillPulling)) {
        goals.check(
            r.recovery.is_some_and(|d| d <= Duration::from_secs(75)),
            format!(
                "{name}: slot recovery after SIGKILL {} <= 75 s",
                secs(r.recovery)
            ),
        );
    }
}
