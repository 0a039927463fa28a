//! Acceptance: the binary that ships, end to end. `make acceptance` builds the image
//! (`make image`), takes `/usr/local/bin/prepuller` out of the image's root filesystem and runs
//!
//!   PREPULLER_ACCEPTANCE_BIN=<that binary> cargo test --test acceptance -- --ignored --test-threads=1
//!
//! Each test runs that binary as a separate process on a real containerd + registry, against
//! the stateful fake Kubernetes API running as its own process (`examples/fake_apiserver.rs`)
//! and served over TLS with a bearer token, as a cluster serves it. The agent's token is
//! authorized with the RBAC of `deploy/` (`kubectl kustomize`, see `testkit::rbac`) and any 403
//! fails the test; the operator's commands (`prepuller nodes`, `pull` with `secret:`) use the
//! operator's own kubeconfig, which is not RBAC-checked. The tests are `#[ignore]`d
//! so that `cargo test` (debug binaries) skips them; run without the variable they fail.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use testkit::{
    AgentProc, AgentSpec, FakeApiServer, Sandbox, SecureRegistry, dockerconfigjson,
    images_prepulled_condition, log_tail, push_image, taint_keys,
};

const MB: usize = 1024 * 1024;
/// Generous: a 2-core machine runs several sandboxes and builds at once.
const CONVERGE: Duration = Duration::from_secs(60);
/// README, "Node readiness in Kubernetes": the default startup taint and the boot annotation.
const STARTUP_TAINT: &str = "startup-taint.cluster-autoscaler.kubernetes.io/prepuller";
const BOOT_ANNOTATION: &str = "prepuller.dev/startup-taint-removed-boot-id";
const READY_LABEL: &str = "prepuller.dev/ready";
const PASSWORD: &str = "acceptance-Pa55word";

/// The binary under test: the release build taken out of the image by `make acceptance`.
fn shipped_bin() -> PathBuf {
    let Some(bin) = std::env::var_os("PREPULLER_ACCEPTANCE_BIN") else {
        panic!(
            "PREPULLER_ACCEPTANCE_BIN is not set: these tests check the binary the image ships. \
             Run `make acceptance` (it builds the image and sets it), or set it to a prepuller binary."
        );
    };
    let bin = PathBuf::from(bin);
    assert!(
        bin.is_file(),
        "PREPULLER_ACCEPTANCE_BIN={} is not a file",
        bin.display()
    );
    bin
}

// ---------------------------------------------------------------------------------------------
// The fake API server, as its own process
// ---------------------------------------------------------------------------------------------

/// `examples/fake_apiserver` next to this test binary (target/<profile>/examples/), or
/// `PREPULLER_FAKE_APISERVER`.
fn fake_apiserver_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("PREPULLER_FAKE_APISERVER") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .join("examples/fake_apiserver");
    assert!(
        bin.is_file(),
        "{} is missing: `cargo build --example fake_apiserver` first (`make acceptance` does)",
        bin.display()
    );
    bin
}

struct FakeApiProc {
    server: FakeApiServer,
    http: reqwest::Client,
}

impl FakeApiProc {
    async fn start(dir: &Path) -> FakeApiProc {
        let dir = dir.join("fake-api");
        std::fs::create_dir_all(&dir).unwrap();
        FakeApiProc {
            server: FakeApiServer::start(&fake_apiserver_bin(), &dir).await,
            http: testkit::http_client(),
        }
    }

    async fn put(&self, what: &str, object: Value) {
        let r = self
            .http
            .put(format!("{}/{what}", self.server.control))
            .json(&object)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "PUT /{what}: {}", r.status());
    }

    async fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.server.control))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    async fn node(&self, name: &str) -> Value {
        self.get(&format!("/nodes/{name}")).await
    }

    async fn events(&self) -> Vec<Value> {
        serde_json::from_value(self.get("/events").await).unwrap()
    }

    async fn requests(&self) -> Vec<Value> {
        serde_json::from_value(self.get("/requests").await).unwrap()
    }
}

fn is_watch(request: &Value) -> bool {
    request["method"] == "GET"
        && request["query"]
            .as_str()
            .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"))
}

// ---------------------------------------------------------------------------------------------
// The shipped binary, as a process
// ---------------------------------------------------------------------------------------------

struct Agent {
    child: tokio::process::Child,
    log: PathBuf,
}

impl Agent {
    /// `prepuller agent` on `endpoint`, for `node` (when given) through `kubeconfig`.
    fn start(
        dir: &Path,
        config: &Path,
        endpoint: &str,
        node: Option<&str>,
        kubeconfig: &Path,
    ) -> Agent {
        let agent = AgentProc::spawn(
            &AgentSpec {
                bin: &shipped_bin(),
                dir,
                endpoint,
                config,
                node,
                kubeconfig,
            },
            &[],
        );
        Agent {
            child: agent.child,
            log: agent.log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("agent running")
    }

    fn log(&self) -> String {
        log_tail(&self.log, 60)
    }

    /// Fails the test when the agent has exited (a panic at start, say).
    fn assert_running(&mut self) {
        if let Ok(Some(exit)) = self.child.try_wait() {
            panic!("the agent exited ({exit}):\n{}", self.log());
        }
    }
}

/// CPU time (user + system, all threads) the process has used, from /proc/<pid>/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name and state.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf CLK_TCK");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid}");
}

/// The shipped binary run to completion: (exit code, stdout, stderr).
async fn run(args: &[&str], env: &[(&str, &Path)]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(shipped_bin());
    cmd.args(args)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("NODE_NAME")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(CONVERGE, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("prepuller {args:?} did not finish within {CONVERGE:?}"))
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------------------------

fn new_node(name: &str) -> Value {
    json!({
        "metadata": {
            "name": name,
            "labels": {"pool": "general"},
            "creationTimestamp": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        },
        "spec": {"taints": [
            {"key": STARTUP_TAINT, "value": "true", "effect": "NoSchedule"},
            {"key": "dedicated", "value": "infra", "effect": "NoSchedule"},
        ]},
        "status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"},
        ]},
    })
}

fn warm_and_untainted(node: &Value) -> bool {
    images_prepulled_condition(node)["status"] == "True"
        && node["metadata"]["labels"][READY_LABEL] == "true"
        && !taint_keys(node).contains(&STARTUP_TAINT.to_string())
}

/// Polls the fake's Node until `check` holds; panics with the agent's log after CONVERGE.
async fn wait_node(
    api: &FakeApiProc,
    agent: &mut Agent,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let node = api.node(name).await;
        if check(&node) {
            return node;
        }
        agent.assert_running();
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}; node {node:#}\nagent log:\n{}\nfake API log:\n{}",
                agent.log(),
                log_tail(&api.server.log, 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A node with the startup taint and another one: the shipped agent makes it warm over TLS
/// (condition, label, startup taint gone and the other kept, boot annotation, Event), and
/// `prepuller nodes` / `nodes --wait` read the fleet through the same API.
#[tokio::test]
#[ignore = "acceptance: run by `make acceptance` on the image's binary"]
async fn the_shipped_agent_makes_a_tainted_node_warm_over_tls_and_prepuller_nodes_sees_it() {
    shipped_bin(); // fail at once without it
    let sb = Sandbox::start();
    let reg = sb.registry.host();
    push_image(&reg, "team/web", "1.0", 1, MB).await;
    let api = FakeApiProc::start(sb.path()).await;
    api.put("nodes", new_node("node-a")).await;
    let config = write_config(
        sb.path(),
        "images.yaml",
        &format!("resyncInterval: 2s\nimages:\n  - {reg}/team/web:1.0\n"),
    );

    // Started before the agent, `--wait` must wait for the node to turn warm.
    let kubeconfig = api.server.operator_kubeconfig.clone();
    let waiter = tokio::spawn(async move {
        run(
            &["nodes", "--wait", "--timeout", "60s"],
            &[("KUBECONFIG", &kubeconfig)],
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    if waiter.is_finished() {
        let (code, out, err) = waiter.await.unwrap();
        panic!("nodes --wait returned (exit {code}) while the node was cold:\n{out}{err}");
    }

    let mut agent = Agent::start(
        sb.path(),
        &config,
        &sb.containerd.endpoint(),
        Some("node-a"),
        &api.server.kubeconfig,
    );
    let node = wait_node(
        &api,
        &mut agent,
        "node-a",
        "warm, untainted, labelled",
        warm_and_untainted,
    )
    .await;
    let warm = images_prepulled_condition(&node);
    assert_eq!(warm["reason"], "AllRequiredImagesPresent", "{warm:#}");
    assert_eq!(warm["message"], "1/1 required images present", "{warm:#}");
    assert_eq!(
        taint_keys(&node),
        ["dedicated"],
        "only the startup taint goes"
    );
    assert_eq!(
        node["metadata"]["annotations"][BOOT_ANNOTATION],
        testkit::boot_id()
    );
    assert_eq!(node["metadata"]["labels"]["pool"], "general");
    assert_eq!(node["status"]["conditions"][0]["reason"], "KubeletReady");
    assert!(
        sb.containerd
            .image_refs()
            .contains(&format!("{reg}/team/web:1.0"))
    );

    // The Event is written on its own, possibly a moment after the condition.
    let deadline = Instant::now() + Duration::from_secs(30);
    let event = loop {
        if let Some(e) = api
            .events()
            .await
            .into_iter()
            .find(|e| e["reason"] == "ImagesPrePulled")
        {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "no ImagesPrePulled event: {:#?}\n{}",
            api.events().await,
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(event["type"], "Normal", "{event:#}");
    assert_eq!(event["metadata"]["namespace"], "default", "{event:#}");
    assert_eq!(event["regarding"]["kind"], "Node", "{event:#}");
    assert_eq!(event["regarding"]["name"], "node-a", "{event:#}");
    assert_eq!(event["note"], "1/1 required images present", "{event:#}");

    // Every request got in (TLS and the token) and none was refused.
    let refused: Vec<Value> = api
        .requests()
        .await
        .into_iter()
        .filter(|r| r["status"].as_u64().unwrap_or(0) >= 400)
        .collect();
    assert!(refused.is_empty(), "refused requests: {refused:#?}");

    let (code, out, err) = tokio::time::timeout(CONVERGE, waiter)
        .await
        .expect("nodes --wait did not return")
        .unwrap();
    assert_eq!(code, 0, "nodes --wait: {out}{err}");
    assert!(out.contains("1/1 nodes warm"), "nodes --wait: {out}{err}");

    let kubeconfig = [("KUBECONFIG", api.server.operator_kubeconfig.as_path())];
    let (code, out, err) = run(&["nodes", "-o", "wide"], &kubeconfig).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("node-a") && out.contains("AllRequiredImagesPresent"),
        "{out}"
    );
    assert!(out.ends_with("1/1 nodes warm\n"), "{out}");
    let (code, out, err) = run(&["nodes", "--wait", "--timeout", "10s"], &kubeconfig).await;
    assert_eq!(code, 0, "nodes --wait on a warm fleet: {out}{err}");
}

/// The node turns warm before `taintTimeout`; past that deadline the agent is idle: under
/// 0.2 CPU-s over 20 s, not one API request beyond its watch, and that watch not reopened
/// (at most once, should the server end it in the window).
#[tokio::test]
#[ignore = "acceptance: run by `make acceptance` on the image's binary"]
async fn past_the_taint_timeout_of_a_warm_node_the_shipped_agent_is_idle() {
    const TAINT_TIMEOUT: Duration = Duration::from_secs(10);
    const WINDOW: Duration = Duration::from_secs(20);
    const CPU_BUDGET: f64 = 0.2;

    shipped_bin();
    let sb = Sandbox::start();
    let reg = sb.registry.host();
    push_image(&reg, "team/web", "1.0", 1, MB).await;
    let config = write_config(
        sb.path(),
        "images.yaml",
        &format!(
            "nodeReadiness: {{taintTimeout: {}s}}\nimages:\n  - {reg}/team/web:1.0\n",
            TAINT_TIMEOUT.as_secs()
        ),
    );
    // The image is there before the agent starts, so the node turns warm at its first pass,
    // well before the deadline (the reported bug: a warm node, then a deadline in the past).
    let (code, out, err) = run(
        &[
            "pull",
            "--config",
            config.to_str().unwrap(),
            "--runtime-endpoint",
            &sb.containerd.endpoint(),
        ],
        &[("KUBECONFIG", Path::new("/nonexistent/kubeconfig"))],
    )
    .await;
    assert_eq!(code, 0, "pull: {out}{err}");

    let api = FakeApiProc::start(sb.path()).await;
    // The deadline counts from the Node's creation (later than the machine's boot).
    let created = Instant::now();
    api.put("nodes", new_node("node-b")).await;
    let mut agent = Agent::start(
        sb.path(),
        &config,
        &sb.containerd.endpoint(),
        Some("node-b"),
        &api.server.kubeconfig,
    );
    let node = wait_node(
        &api,
        &mut agent,
        "node-b",
        "warm, untainted, labelled",
        warm_and_untainted,
    )
    .await;
    assert!(
        created.elapsed() < TAINT_TIMEOUT,
        "the node turned warm only after the taint timeout ({:?}): this test needs it warm before",
        created.elapsed()
    );
    let message = images_prepulled_condition(&node)["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!message.contains("fail-open"), "{message}");

    // One second past the deadline: whatever the deadline triggers has begun.
    tokio::time::sleep(
        (created + TAINT_TIMEOUT + Duration::from_secs(1))
            .saturating_duration_since(Instant::now()),
    )
    .await;
    agent.assert_running();
    let requests_before = api.requests().await.len();
    let cpu_before = cpu_seconds(agent.pid());
    tokio::time::sleep(WINDOW).await;
    let cpu = cpu_seconds(agent.pid()) - cpu_before;
    agent.assert_running();
    let requests: Vec<Value> = api.requests().await.split_off(requests_before);
    println!(
        "measured: agent CPU over {WINDOW:?} after the taint timeout of a warm node: {cpu:.3} CPU-s; \
         API requests: {}",
        requests.len()
    );
    assert!(
        cpu < CPU_BUDGET,
        "the agent used {cpu:.2} CPU-s in the {WINDOW:?} after the taint timeout (budget {CPU_BUDGET}); log:\n{}",
        agent.log()
    );
    let beyond_watch: Vec<&Value> = requests.iter().filter(|r| !is_watch(r)).collect();
    assert!(
        beyond_watch.is_empty(),
        "API requests beyond the watch after the taint timeout: {beyond_watch:#?}"
    );
    // The open watch is not a request; reopening it is. A server ends a watch after minutes
    // (kube's watcher asks for 290 s), so at most one falls in the window: a watch reopened
    // every second (20 here) fails.
    let watches: Vec<&Value> = requests.iter().filter(|r| is_watch(r)).collect();
    assert!(
        watches.len() <= 1,
        "{} watches opened in the {WINDOW:?} after the taint timeout: {watches:#?}",
        watches.len()
    );
    // Still warm, and the taint was not put back or touched.
    let node = api.node("node-b").await;
    assert!(warm_and_untainted(&node), "{node:#}");
}

/// `prepuller pull` with a `secret:` source: the dockerconfigjson Secret is read through the
/// API (TLS, token), and its credentials pull from a TLS + htpasswd registry.
#[tokio::test]
#[ignore = "acceptance: run by `make acceptance` on the image's binary"]
async fn the_shipped_pull_reads_a_pull_secret_through_the_api() {
    shipped_bin();
    let sb = Sandbox::start();
    push_image(&sb.registry.host(), "team/private", "1.0", 7, 64 * 1024).await;
    let secure = SecureRegistry::start(
        &sb.path().join("secure-registry"),
        &sb.registry,
        &sb.containerd,
        &[("bot", PASSWORD)],
    );
    let host = secure.host();
    let image = format!("{host}/team/private:1.0");
    let api = FakeApiProc::start(sb.path()).await;
    api.put(
        "secrets",
        json!({
            "metadata": {"name": "regcred", "namespace": "redis"},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64::engine::general_purpose::STANDARD
                .encode(dockerconfigjson(&[(&host, "bot", PASSWORD)]))},
        }),
    )
    .await;
    let config = write_config(
        sb.path(),
        "images.yaml",
        &format!(
            "credentials:\n  - secret: {{namespace: redis, name: regcred}}\nimages: [{image}]\n"
        ),
    );
    let (code, out, err) = run(
        &[
            "pull",
            "--config",
            config.to_str().unwrap(),
            "--runtime-endpoint",
            &sb.containerd.endpoint(),
            "-o",
            "json",
        ],
        &[("KUBECONFIG", api.server.operator_kubeconfig.as_path())],
    )
    .await;
    assert_eq!(code, 0, "pull: {out}\n{err}");
    let summary: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let row = summary["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["normalized"] == image.as_str())
        .unwrap_or_else(|| panic!("no row for {image}: {summary:#}"))
        .clone();
    assert_eq!(row["result"], "pulled", "{row:#}");
    assert!(sb.containerd.image_refs().contains(&image));
    let requests: Vec<String> = api
        .requests()
        .await
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r["method"].as_str().unwrap(),
                r["path"].as_str().unwrap(),
                r["status"]
            )
        })
        .collect();
    assert_eq!(
        requests,
        ["GET /api/v1/namespaces/redis/secrets/regcred 200"],
        "one authorized GET by name"
    );
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("bot:{PASSWORD}"));
    for text in [&out, &err] {
        assert!(
            !text.contains(PASSWORD) && !text.contains(&auth),
            "a credential leaked: {text}"
        );
    }
}

/// SIGTERM while the runtime accepts connections and never answers: the agent exits within the
/// 2 s the README promises (the DaemonSet's grace period is 10 s).
#[tokio::test]
#[ignore = "acceptance: run by `make acceptance` on the image's binary"]
async fn the_shipped_agent_exits_within_2s_of_sigterm_with_a_hung_runtime() {
    const PROMISED: Duration = Duration::from_secs(2);
    shipped_bin();
    let dir = tempfile::Builder::new()
        .prefix("prepuller-acceptance-")
        .tempdir()
        .unwrap();
    let socket = dir.path().join("hung-runtime.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    // Accepts and holds every connection, reading what the client sends, never answering.
    let hung = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            let _ = accepted_tx.send(());
            held.push(tokio::spawn(async move {
                let mut stream = stream;
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut stream, &mut sink).await;
                std::future::pending::<()>().await;
            }));
        }
    });
    let config = write_config(
        dir.path(),
        "images.yaml",
        "images:\n  - registry.invalid/team/web:1.0\n",
    );
    let mut agent = Agent::start(
        dir.path(),
        &config,
        &format!("unix://{}", socket.display()),
        None,
        Path::new("/nonexistent/kubeconfig"),
    );
    tokio::time::timeout(CONVERGE, accepted.recv())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the agent never connected to the runtime socket:\n{}",
                agent.log()
            )
        });
    // Its first call is now in flight, waiting for an answer that never comes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    agent.assert_running();

    signal(agent.pid(), "TERM");
    let started = Instant::now();
    // Waits past the promise to measure how late it is, then gives up.
    let exit = tokio::time::timeout(Duration::from_secs(40), agent.child.wait()).await;
    let took = started.elapsed();
    println!(
        "measured: SIGTERM to exit with a hung runtime: {} ms",
        took.as_millis()
    );
    let exit = exit
        .unwrap_or_else(|_| panic!("no exit within 40 s of SIGTERM:\n{}", agent.log()))
        .unwrap();
    assert!(
        took < PROMISED,
        "exited {took:?} after SIGTERM, promised within {PROMISED:?}; log:\n{}",
        agent.log()
    );
    assert!(exit.success(), "{exit}:\n{}", agent.log());
    hung.abort();
}
