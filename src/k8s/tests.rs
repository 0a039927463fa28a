//! The Reporter's requests and their effects, on kube's client over a `tower-test` mock with
//! explicit scenarios (as kube-rs's controller examples do). Time is paused: the heartbeat
//! and the taint timeout are crossed with `tokio::time::advance`.
//!
//! A request the scenario does not expect fails the test (see [`quiet`]), and one that never
//! comes fails it after [`PATIENCE`] of virtual time (see [`next`]): neither hangs.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

use super::*;
use crate::k8s::condition::reason;
use crate::status::{ImageState, ImageStatus, StatusHub};

type MockHandle = Handle<Request<Body>, Response<Body>>;

const TAINT: &str = crate::config::DEFAULT_STARTUP_TAINT;

fn image(name: &str, state: ImageState) -> ImageStatus {
    crate::status::test_image(name, true, state)
}

fn hub(states: &[ImageState]) -> Arc<StatusHub> {
    let hub = Arc::new(StatusHub::new(
        Some("node-a".into()),
        "c.yaml".into(),
        "unix:///x".into(),
    ));
    hub.update(|s| {
        s.config.generation = 1;
        s.runtime.reachable = true;
        s.images = states
            .iter()
            .enumerate()
            .map(|(n, st)| image(&format!("r.example/img{n}:1"), *st))
            .collect();
    });
    hub.mark_synced();
    hub
}

fn node(rv: u64, taints: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": "node-a", "uid": "u1", "resourceVersion": rv.to_string(),
            "labels": {"pool": "a"},
            "creationTimestamp": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        },
        "spec": {"taints": taints},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    })
}

/// How long (virtual) a scenario waits for a request it expects.
const PATIENCE: Duration = Duration::from_secs(3600);

/// A reporter on a mock API, and the agent's side of its link (kept: dropping it is the
/// agent going away).
fn reporter(hub: Arc<StatusHub>, settings: NodeSettings) -> (Reporter, MockHandle, AgentLink) {
    let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let (agent, link) = link(settings);
    let boot = Boot {
        id: "boot-1".into(),
        at: SystemTime::UNIX_EPOCH,
    };
    (
        Reporter::new(client, "node-a".into(), boot, hub, link),
        handle,
        agent,
    )
}

/// Runs `f`, failing at once if it makes a request (the mock would otherwise leave it
/// waiting for an answer forever) or if it does not end within [`PATIENCE`].
async fn quiet<F: std::future::Future>(handle: &mut MockHandle, f: F) -> F::Output {
    tokio::select! {
        biased;
        out = tokio::time::timeout(PATIENCE, f) => out.expect("stuck without making a request"),
        r = handle.next_request() => {
            let what = r.map(|(req, _)| format!("{} {}", req.method(), req.uri()));
            panic!("unexpected request: {what:?}")
        }
    }
}

/// Runs the reporter's side of a scenario: fails after [`PATIENCE`] if it is left waiting
/// for an answer the scenario never gives (a request it did not expect).
async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(PATIENCE, f)
        .await
        .expect("stuck on a request the scenario did not answer")
}

/// The next request: method, path and JSON body; fails after [`PATIENCE`] without one.
async fn next(
    handle: &mut MockHandle,
) -> (Method, String, Value, mock::SendResponse<Response<Body>>) {
    let (req, send) = tokio::time::timeout(PATIENCE, handle.next_request())
        .await
        .expect("no request came")
        .expect("a request");
    let (parts, body) = req.into_parts();
    let bytes = body.collect_bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts.method, parts.uri.path().to_string(), body, send)
}

fn answer(send: mock::SendResponse<Response<Body>>, code: StatusCode, body: &Value) {
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

/// Answers a patch of the condition or the label as the API server would, returning the Node.
fn apply(node: &mut Value, path: &str, body: &Value) {
    if path.ends_with("/status") {
        let c = body["status"]["conditions"][0].clone();
        let list = node["status"]["conditions"].as_array_mut().unwrap();
        list.retain(|e| e["type"] != c["type"]);
        list.push(c);
    } else {
        for (k, v) in body["metadata"]["labels"].as_object().into_iter().flatten() {
            node["metadata"]["labels"][k] = v.clone();
        }
        for (k, v) in body["metadata"]["annotations"]
            .as_object()
            .into_iter()
            .flatten()
        {
            node["metadata"]["annotations"][k] = v.clone();
        }
        if let Some(t) = body["spec"].get("taints") {
            node["spec"]["taints"] = t.clone();
        }
    }
    // The tests' own versions are numbers (a real server's are opaque); others are left to
    // the scenario.
    if let Some(rv) = node["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|r| r.parse::<u64>().ok())
    {
        node["metadata"]["resourceVersion"] = (rv + 1).to_string().into();
    }
}

/// Serves condition and label patches until `n` were seen, and returns them; Events created
/// meanwhile are answered and not counted.
async fn serve(
    handle: &mut MockHandle,
    node: &mut Value,
    n: usize,
) -> Vec<(Method, String, Value)> {
    let mut seen = Vec::new();
    while seen.len() < n {
        let (method, path, body, send) = next(handle).await;
        if method == Method::POST && path.ends_with("/events") {
            answer(send, StatusCode::CREATED, &body);
            continue;
        }
        assert_eq!(method, Method::PATCH, "{path}");
        apply(node, &path, &body);
        answer(send, StatusCode::OK, node);
        seen.push((method, path, body));
    }
    seen
}

fn observe(r: &mut Reporter, node: &Value) {
    r.observe(serde_json::from_value(node.clone()).unwrap());
}

#[tokio::test(start_paused = true)]
async fn writes_only_on_change_and_a_heartbeat_every_five_minutes() {
    let hub = hub(&[ImageState::Present, ImageState::Present]);
    let (mut r, mut handle, _agent) = reporter(hub.clone(), NodeSettings::default());
    let mut node = node(1, json!([]));
    observe(&mut r, &node);
    let (_, seen) = tokio::join!(bounded(r.reconcile()), serve(&mut handle, &mut node, 2));
    assert_eq!(seen[0].1, "/api/v1/nodes/node-a/status");
    let c = &seen[0].2["status"]["conditions"][0];
    assert_eq!(c["type"], "ImagesPrePulled");
    assert_eq!(c["status"], "True");
    assert_eq!(c["reason"], "AllRequiredImagesPresent");
    assert_eq!(c["message"], "2/2 required images present");
    let first_transition = c["lastTransitionTime"].clone();
    assert_eq!(
        seen[1],
        (
            Method::PATCH,
            "/api/v1/nodes/node-a".into(),
            json!({"metadata": {"labels": {"prepuller.dev/ready": "true"}}})
        )
    );
    // Nothing changed: no request until the heartbeat, which the README gives as 5 minutes.
    hub.update(|_| {});
    tokio::time::advance(Duration::from_secs(5 * 60 - 1)).await;
    quiet(&mut handle, r.reconcile()).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let (_, seen) = tokio::join!(bounded(r.reconcile()), serve(&mut handle, &mut node, 1));
    let c = &seen[0].2["status"]["conditions"][0];
    assert_eq!(c["status"], "True");
    assert_eq!(
        c["lastTransitionTime"], first_transition,
        "no transition on a heartbeat"
    );
    // A status change is written at once, with a new transition time.
    hub.update(|s| s.images[1].state = ImageState::Pulling);
    let (_, seen) = tokio::join!(bounded(r.reconcile()), serve(&mut handle, &mut node, 2));
    let c = &seen[0].2["status"]["conditions"][0];
    assert_eq!(
        (c["status"].as_str(), c["reason"].as_str()),
        (Some("False"), Some("PullingImages"))
    );
    assert_eq!(
        c["message"],
        "1/2 required images present; pulling: r.example/img1:1"
    );
    assert_eq!(
        seen[1].2["metadata"]["labels"]["prepuller.dev/ready"],
        "false"
    );
}

#[tokio::test(start_paused = true)]
async fn a_restarted_agent_finding_the_node_as_it_should_be_writes_nothing() {
    let hub = hub(&[ImageState::Present]);
    let mut node = node(1, json!([]));
    node["metadata"]["labels"]["prepuller.dev/ready"] = "true".into();
    node["status"]["conditions"]
        .as_array_mut()
        .unwrap()
        .push(json!({
            "type": "ImagesPrePulled", "status": "True", "reason": "AllRequiredImagesPresent",
            "message": "1/1 required images present",
            "lastHeartbeatTime": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }));
    let (mut r, mut handle, _agent) = reporter(hub, NodeSettings::default());
    observe(&mut r, &node);
    quiet(&mut handle, r.reconcile()).await;
}

#[tokio::test(start_paused = true)]
async fn the_taint_goes_when_warm_and_a_conflict_is_read_again_and_retried() {
    let hub = hub(&[ImageState::Pulling]);
    let taints =
        json!([{"key": TAINT, "effect": "NoSchedule"}, {"key": "other", "effect": "NoExecute"}]);
    let mut node = node(1, taints);
    let (mut r, mut handle, _agent) = reporter(hub.clone(), NodeSettings::default());
    observe(&mut r, &node);
    // Not warm, before the timeout: condition and label only.
    let (_, seen) = tokio::join!(bounded(r.reconcile()), serve(&mut handle, &mut node, 2));
    assert!(seen.iter().all(|(_, _, b)| b["spec"].is_null()), "{seen:?}");

    hub.update(|s| s.images[0].state = ImageState::Present);
    let scenario = async {
        // The first removal carries the resourceVersion the agent read...
        let (method, path, body, send) = next(&mut handle).await;
        assert_eq!(
            (method, path.as_str()),
            (Method::PATCH, "/api/v1/nodes/node-a")
        );
        assert_eq!(
            body["metadata"]["resourceVersion"],
            node["metadata"]["resourceVersion"]
        );
        assert_eq!(body["metadata"]["annotations"][BOOT_ANNOTATION], "boot-1");
        assert_eq!(
            body["spec"]["taints"],
            json!([{"key": "other", "effect": "NoExecute"}])
        );
        // ...but another writer added a taint meanwhile.
        node["spec"]["taints"]
            .as_array_mut()
            .unwrap()
            .push(json!({"key": "third", "effect": "NoSchedule"}));
        node["metadata"]["resourceVersion"] = "10".into();
        answer(
            send,
            StatusCode::CONFLICT,
            &json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 409,
                "reason": "Conflict", "message": "the object has been modified",
            }),
        );
        let (method, path, _, send) = next(&mut handle).await;
        assert_eq!(
            (method, path.as_str()),
            (Method::GET, "/api/v1/nodes/node-a")
        );
        answer(send, StatusCode::OK, &node);
        let (_, _, body, send) = next(&mut handle).await;
        assert_eq!(body["metadata"]["resourceVersion"], "10");
        assert_eq!(
            body["spec"]["taints"],
            json!([{"key": "other", "effect": "NoExecute"}, {"key": "third", "effect": "NoSchedule"}]),
            "the other writer's taint is kept"
        );
        node["spec"]["taints"] = body["spec"]["taints"].clone();
        node["metadata"]["annotations"] = json!({BOOT_ANNOTATION: "boot-1"});
        node["metadata"]["resourceVersion"] = "11".into();
        answer(send, StatusCode::OK, &node);
        serve(&mut handle, &mut node, 2).await
    };
    let (_, seen) = tokio::join!(bounded(r.reconcile()), scenario);
    assert_eq!(seen[0].2["status"]["conditions"][0]["status"], "True");

    // Put back in the same boot: left alone, while the reporter goes on writing the rest
    // (here the heartbeat), so a reporter that had stopped would fail this.
    node["spec"]["taints"]
        .as_array_mut()
        .unwrap()
        .push(json!({"key": TAINT, "effect": "NoSchedule"}));
    node["metadata"]["resourceVersion"] = "20".into();
    observe(&mut r, &node);
    quiet(&mut handle, r.reconcile()).await;
    tokio::time::advance(Duration::from_secs(5 * 60)).await;
    let (_, seen) = tokio::join!(bounded(r.reconcile()), serve(&mut handle, &mut node, 1));
    assert_eq!(seen[0].1, "/api/v1/nodes/node-a/status", "the heartbeat");
    quiet(&mut handle, r.reconcile()).await;
    assert!(taint_keys(&node).contains(&TAINT.to_string()));
}

fn taint_keys(node: &Value) -> Vec<String> {
    node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["key"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn fail_open_after_the_taint_timeout_says_why_in_the_condition() {
    let hub = hub(&[ImageState::Failed]);
    let mut node = node(1, json!([{"key": TAINT, "effect": "NoSchedule"}]));
    let settings = NodeSettings {
        // Shorter than the heartbeat, so that only the timeout can cause a write.
        taint_timeout: Duration::from_secs(240),
        ..NodeSettings::default()
    };
    let (mut r, mut handle, _agent) = reporter(hub, settings);
    observe(&mut r, &node);
    let (_, seen) = tokio::join!(bounded(r.reconcile()), serve(&mut handle, &mut node, 2));
    assert_eq!(seen[0].2["status"]["conditions"][0]["reason"], "PullFailed");
    tokio::time::advance(Duration::from_secs(239)).await;
    quiet(&mut handle, r.reconcile()).await; // not removed before the timeout
    tokio::time::advance(Duration::from_secs(1)).await;
    let scenario = async {
        let (_, path, body, send) = next(&mut handle).await;
        assert_eq!(path, "/api/v1/nodes/node-a");
        assert_eq!(body["spec"]["taints"], json!([]));
        node["spec"]["taints"] = json!([]);
        node["metadata"]["resourceVersion"] = "5".into();
        answer(send, StatusCode::OK, &node);
        serve(&mut handle, &mut node, 1).await
    };
    let (_, seen) = tokio::join!(bounded(r.reconcile()), scenario);
    let c = &seen[0].2["status"]["conditions"][0];
    assert_eq!(c["status"], "False");
    let message = c["message"].as_str().unwrap();
    assert!(
        message.ends_with(&format!(
            "startup taint {TAINT} removed after 4m without all required images (fail-open)"
        )),
        "{message}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_forbidden_write_names_what_the_cluster_role_lacks() {
    let hub = hub(&[ImageState::Present]);
    let node = node(1, json!([]));
    let (mut r, mut handle, _agent) = reporter(hub, NodeSettings::default());
    observe(&mut r, &node);
    let scenario = async {
        let (_, _, _, send) = next(&mut handle).await;
        answer(
            send,
            StatusCode::FORBIDDEN,
            &json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403, "reason": "Forbidden",
                "message": "nodes \"node-a\" is forbidden: User \"system:serviceaccount:prepuller:prepuller\" cannot patch resource \"nodes/status\"",
            }),
        );
    };
    tokio::join!(bounded(r.reconcile()), scenario);
    let error = r.last_error.as_ref().unwrap().to_string();
    assert!(error.contains("lacks `patch` on `nodes/status`"), "{error}");
    // Retried later, not at once.
    quiet(&mut handle, r.reconcile()).await;
}

#[tokio::test(start_paused = true)]
async fn repeated_failures_become_one_event_series_and_cannot_flood() {
    let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let mut sink = EventSink::new(kube::Client::new(svc, "default"), "node-a");
    let node = ObjectReference {
        kind: Some("Node".into()),
        name: Some("node-a".into()),
        ..Default::default()
    };
    let failure = |_n: u32| Occurrence {
        type_: Type::Warning,
        reason: "ImagePullFailed",
        subject: Some("r.example/a:1".into()),
        note: "Failed to pull image r.example/a:1 (transient): 503".into(),
    };
    let created = async {
        let (method, path, body, send) = next(&mut handle).await;
        assert_eq!(method, Method::POST);
        assert_eq!(path, "/apis/events.k8s.io/v1/namespaces/default/events");
        assert_eq!(body["reason"], "ImagePullFailed");
        assert_eq!(body["regarding"]["name"], "node-a");
        answer(send, StatusCode::CREATED, &body);
        body["metadata"]["name"].as_str().unwrap().to_string()
    };
    let (_, name) = tokio::join!(bounded(sink.publish(&node, failure(1))), created);
    // Nine more within a minute: held back, no request.
    for n in 2..=10 {
        tokio::time::advance(Duration::from_secs(5)).await;
        sink.publish(&node, failure(n)).await;
    }
    quiet(&mut handle, sink.flush()).await;
    // The README's "at most every 5 minutes", counted from the first write: 4m59s after it,
    // still nothing; then one patch carries the count, and nothing but the series (the API
    // server refuses a change of the note or any other field of an Event).
    tokio::time::advance(Duration::from_secs(5 * 60 - 45 - 1)).await;
    quiet(&mut handle, sink.flush()).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let patched = async {
        let (method, path, body, send) = next(&mut handle).await;
        assert_eq!(method, Method::PATCH);
        assert!(path.ends_with(&name), "{path}");
        answer(send, StatusCode::OK, &json!({}));
        body
    };
    let (_, body) = tokio::join!(bounded(sink.flush()), patched);
    assert_eq!(body["series"]["count"], 10);
    assert_eq!(
        body.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["series"]
    );
    // The same image failing otherwise: a new Event with that note, not a changed one.
    let mut other = failure(11);
    other.note = "Failed to pull image r.example/a:1 (permanent): not found".into();
    let created = async {
        let (method, _, body, send) = next(&mut handle).await;
        answer(send, StatusCode::CREATED, &body);
        (method, body)
    };
    let (_, (method, body)) = tokio::join!(bounded(sink.publish(&node, other.clone())), created);
    assert_eq!(method, Method::POST);
    assert_eq!(body["note"], other.note);
    assert_ne!(body["metadata"]["name"], name.as_str());

    // Many different images failing at once: the node's bucket (burst 25) caps the creates.
    let creates = async {
        let mut n = 0;
        while let Ok(Some((req, send))) =
            tokio::time::timeout(Duration::from_millis(10), handle.next_request()).await
        {
            assert_eq!(req.method(), Method::POST);
            answer(send, StatusCode::CREATED, &json!({}));
            n += 1;
        }
        n
    };
    let publish = async {
        for i in 0..40 {
            let mut o = failure(1);
            o.subject = Some(format!("r.example/img{i}:1"));
            sink.publish(&node, o).await;
        }
    };
    let (_, n) = tokio::join!(publish, creates);
    assert_eq!(
        n, 23,
        "a burst of 25, 3 used above, 1 refilled over the 5 minutes"
    );
}

#[test]
fn the_condition_names_the_first_reason_that_keeps_the_node_cold() {
    let hub = hub(&[ImageState::Failed; 5]);
    hub.update(|s| {
        for i in &mut s.images {
            i.last_error = Some("not found".into());
        }
    });
    let d = desired(&hub.snapshot());
    assert_eq!((d.status, d.reason), (false, reason::FAILED));
    assert_eq!(
        d.message,
        "0/5 required images present; failing: r.example/img0:1 (not found), r.example/img1:1 (not found), r.example/img2:1 (not found) and 2 more"
    );
    hub.update(|s| {
        s.runtime.reachable = false;
        s.runtime.last_error = Some("connection refused".into());
    });
    let d = desired(&hub.snapshot());
    assert_eq!((d.status, d.reason), (false, reason::RUNTIME));
    assert!(
        d.message
            .ends_with("container runtime unreachable at unix:///x: connection refused"),
        "{}",
        d.message
    );
    // A stopping agent does not make the node cold.
    hub.update(|s| {
        s.runtime.reachable = true;
        s.images
            .iter_mut()
            .for_each(|i| i.state = ImageState::Present);
    });
    hub.begin_shutdown();
    assert!(desired(&hub.snapshot()).status);
}

/// Answers the reporter's requests as the API server would: the Node for a GET, writes
/// applied to it, Events created and patched; a watch is held open without events. Returns
/// the method and path of every request but the watch.
fn api_server(mut handle: MockHandle, mut node: Value) -> Arc<std::sync::Mutex<Vec<String>>> {
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = log.clone();
    tokio::spawn(async move {
        let mut watches = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let path = parts.uri.path().to_string();
            if parts.uri.query().is_some_and(|q| q.contains("watch=true")) {
                watches.push(send);
                continue;
            }
            seen.lock()
                .unwrap()
                .push(format!("{} {path}", parts.method));
            match (parts.method, path.contains("/events")) {
                (Method::GET, false) => answer(send, StatusCode::OK, &node),
                (Method::PATCH, false) => {
                    apply(&mut node, &path, &body);
                    answer(send, StatusCode::OK, &node);
                }
                (Method::POST, true) => answer(send, StatusCode::CREATED, &body),
                (_, true) => answer(send, StatusCode::OK, &json!({})),
                (m, _) => panic!("unexpected {m} {path}"),
            }
        }
    });
    log
}

/// Advances virtual time by `total` in steps, letting the reporter run between them, and
/// fails as soon as its loop has run more than `limit` times: a loop that spins never lets
/// paused time move on by itself, so the clock is driven from here.
async fn run_for(loops: &std::sync::atomic::AtomicUsize, total: Duration, limit: usize) {
    let start = loops.load(std::sync::atomic::Ordering::Relaxed);
    let step = Duration::from_secs(10);
    let mut elapsed = Duration::ZERO;
    while elapsed < total {
        tokio::time::advance(step).await;
        elapsed += step;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        let n = loops.load(std::sync::atomic::Ordering::Relaxed) - start;
        assert!(
            n <= limit,
            "the Node reporter's loop ran {n} times in {elapsed:?} (virtual): it spins"
        );
    }
}

/// A label or taint write, and a condition write, as [`api_server`] logs them.
const NODE_PATCH: &str = "PATCH /api/v1/nodes/node-a";
const STATUS_PATCH: &str = "PATCH /api/v1/nodes/node-a/status";

/// Starts the reporter's loop; returns its iteration counter.
fn start(r: Reporter, cancel: &CancellationToken) -> Arc<std::sync::atomic::AtomicUsize> {
    let loops = r.loops.clone();
    tokio::spawn(r.run(cancel.clone()));
    loops
}

/// A reporter's loop running against [`api_server`].
struct Running {
    requests: Arc<std::sync::Mutex<Vec<String>>>,
    loops: Arc<std::sync::atomic::AtomicUsize>,
    cancel: CancellationToken,
    /// Kept: dropping it is the agent going away.
    agent: AgentLink,
}

impl Running {
    /// A reporter with `settings`, on a Node with `taints`, its loop started.
    fn start(
        states: &[ImageState],
        settings: NodeSettings,
        taints: Value,
    ) -> (Running, Arc<StatusHub>) {
        let hub = hub(states);
        let (r, handle, agent) = reporter(hub.clone(), settings);
        let requests = api_server(handle, node(1, taints));
        let cancel = CancellationToken::new();
        let loops = start(r, &cancel);
        let running = Running {
            requests,
            loops,
            cancel,
            agent,
        };
        (running, hub)
    }

    /// Runs for `total` (virtual), failing if the loop ran more than `limit` times.
    async fn run_for(&self, total: Duration, limit: usize) {
        run_for(&self.loops, total, limit).await;
    }

    /// The requests so far whose method and path are `line`.
    fn count(&self, line: &str) -> usize {
        self.count_where(|r| r == line)
    }

    /// The requests so far whose method and path start with `prefix`.
    fn count_starting(&self, prefix: &str) -> usize {
        self.count_where(|r| r.starts_with(prefix))
    }

    fn count_where(&self, f: impl Fn(&str) -> bool) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| f(r))
            .count()
    }

    fn log(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// The startup taint, 4 minutes before it is removed anyway.
fn tainted() -> (NodeSettings, Value) {
    let settings = NodeSettings {
        taint_timeout: Duration::from_secs(240),
        ..NodeSettings::default()
    };
    (settings, json!([{"key": TAINT, "effect": "NoSchedule"}]))
}

const HOUR: Duration = Duration::from_secs(3600);
/// Over an hour of idle: 12 heartbeats (5 minutes each), plus slack for the writes that follow
/// one and for the start.
const IDLE_LOOPS_PER_HOUR: usize = 40;

#[tokio::test(start_paused = true)]
async fn after_the_taint_is_gone_the_reporter_sleeps_past_the_taint_timeout() {
    // Warm before the 4-minute deadline: the taint goes as warm, the deadline no longer applies.
    let (settings, taints) = tainted();
    let (r, _) = Running::start(&[ImageState::Present], settings, taints);
    r.run_for(Duration::from_secs(10), 20).await;
    assert!(
        r.count(NODE_PATCH) >= 2,
        "taint and label written: {:?}",
        r.log()
    );
    // An hour past the deadline: the heartbeat, and nothing else wakes it.
    r.run_for(HOUR, IDLE_LOOPS_PER_HOUR).await;
    let heartbeats = r.count(STATUS_PATCH);
    assert!(
        (12..=14).contains(&heartbeats),
        "{heartbeats} condition writes"
    );
    r.cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn turning_the_startup_taint_off_after_its_deadline_was_set_leaves_the_reporter_idle() {
    let (settings, taints) = tainted();
    let (r, _) = Running::start(&[ImageState::Pulling], settings.clone(), taints);
    // Cold, before the deadline: the deadline is set, the taint stays.
    r.run_for(Duration::from_secs(60), 20).await;
    // A hot reload turns the taint removal off.
    r.agent.settings.send_replace(NodeSettings {
        startup_taint: None,
        ..settings
    });
    r.run_for(HOUR, IDLE_LOOPS_PER_HOUR).await;
    assert_eq!(
        r.count(NODE_PATCH),
        1,
        "the label only, never the taint: {:?}",
        r.log()
    );
    r.cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_due_event_series_with_an_empty_bucket_waits_for_a_token_without_spinning() {
    let (r, hub) = Running::start(&[ImageState::Present], NodeSettings::default(), json!([]));
    r.run_for(Duration::from_secs(10), 20).await;
    let failed = |n: usize| AgentEventKind::AttemptFailed {
        image: format!("r.example/img{n}:1"),
        attempt: 1,
        class: crate::status::ErrorClass::Transient,
        reason: "unavailable".into(),
        error: "503 Service Unavailable".into(),
        next_retry_at: None,
    };
    // 30 images fail: the bucket (25, one used by ImagesPrePulled) empties; two fail again.
    for n in 0..30 {
        hub.emit(failed(n));
    }
    for _ in 0..3 {
        hub.emit(failed(0));
        hub.emit(failed(1));
    }
    r.run_for(Duration::from_secs(10), 60).await;
    assert_eq!(r.count_starting("POST"), 25, "the burst");
    // Both series fall due after 5 minutes; tokens come one per 5 minutes, so the second
    // waits for the next one: the loop sleeps meanwhile.
    r.run_for(HOUR, IDLE_LOOPS_PER_HOUR).await;
    assert_eq!(
        r.count_starting("PATCH /apis/events.k8s.io"),
        2,
        "each held-back series written once: {:?}",
        r.log()
    );
    r.cancel.cancel();
}

/// Cancels, and fails unless the reporter's task ends without time passing.
async fn ends_at_once(
    cancel: &CancellationToken,
    task: &tokio::task::JoinHandle<()>,
    during: &str,
) {
    cancel.cancel();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(
        task.is_finished(),
        "still running after the cancel ({during})"
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_ends_the_loop_at_once_during_the_debounce_and_during_a_hung_write() {
    let hub = hub(&[ImageState::Present]);
    let (r, mut handle, _agent) = reporter(hub.clone(), NodeSettings::default());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(r.run(cancel.clone()));
    let mut node = node(1, json!([]));
    // The Node is read; the watch is left pending; the first writes are answered.
    let (_, _, _, send) = next(&mut handle).await;
    answer(send, StatusCode::OK, &node);
    let (_, _, _, watch) = next(&mut handle).await;
    serve(&mut handle, &mut node, 2).await;
    // A status change: the reporter is in its debounce when the cancel comes.
    hub.update(|s| s.images[0].state = ImageState::Pulling);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    ends_at_once(&cancel, &task, "debounce").await;

    // A write the API server never answers.
    let (r, mut handle, _agent) = reporter(hub.clone(), NodeSettings::default());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(r.run(cancel.clone()));
    let (_, _, _, send) = next(&mut handle).await;
    answer(send, StatusCode::OK, &node);
    let (_, _, _, _watch) = next(&mut handle).await;
    let (method, _, _, _hung) = next(&mut handle).await;
    assert_eq!(method, Method::PATCH);
    ends_at_once(&cancel, &task, "hung write").await;
    drop(watch);
}

#[tokio::test(start_paused = true)]
async fn watch_events_older_than_a_write_are_skipped_without_comparing_resource_versions() {
    let hub = hub(&[ImageState::Present]);
    let (mut r, mut handle, _agent) = reporter(hub, NodeSettings::default());
    // resourceVersions are opaque strings: these do not even parse as numbers.
    let mut node = node(1, json!([]));
    node["metadata"]["resourceVersion"] = "rv-x".into();
    observe(&mut r, &node);
    // Condition and label written: the answers carry new resourceVersions.
    let scenario = async {
        let mut seen = Vec::new();
        for rv in ["rv-b", "rv-a"] {
            let (mut method, mut path, mut body, mut send) = next(&mut handle).await;
            while method == Method::POST {
                answer(send, StatusCode::CREATED, &body); // the ImagesPrePulled Event
                (method, path, body, send) = next(&mut handle).await;
            }
            apply(&mut node, &path, &body);
            node["metadata"]["resourceVersion"] = rv.into();
            answer(send, StatusCode::OK, &node);
            seen.push(node.clone());
        }
        seen
    };
    let (_, seen) = tokio::join!(bounded(r.reconcile()), scenario);
    // The watch then delivers the same changes in order: the first is behind the label write.
    let event = |v: &Value| serde_json::from_value::<Node>(v.clone()).unwrap();
    let observed_version = |r: &Reporter| r.observed.as_ref()?.metadata.resource_version.clone();
    r.observe_event(event(&seen[0]));
    assert_eq!(
        observed_version(&r),
        Some("rv-a".into()),
        "an event older than the write's answer was taken"
    );
    r.observe_event(event(&seen[1]));
    // From then on every event is taken, in order, whatever its resourceVersion.
    let mut later = seen[1].clone();
    later["metadata"]["resourceVersion"] = "rv-0".into();
    later["metadata"]["labels"]["pool"] = "b".into();
    r.observe_event(event(&later));
    assert_eq!(observed_version(&r), Some("rv-0".into()));
    quiet(&mut handle, r.reconcile()).await;
}

#[test]
fn the_condition_says_a_node_waits_for_a_fleet_slot_or_which_slot_it_pulls_on() {
    use crate::fleet::{FleetRegistry, FleetState};
    use crate::status::FleetStatus;
    let hub = hub(&[ImageState::Pulling; 2]);
    let reg = |state, slot| FleetRegistry {
        registry: "r.example".into(),
        state,
        slot,
        slots: 5,
    };
    hub.update(|s| {
        s.fleet = Some(FleetStatus {
            registries: vec![reg(FleetState::Waiting, None)],
        })
    });
    let d = desired(&hub.snapshot());
    assert_eq!((d.status, d.reason), (false, reason::WAITING_FOR_PULL_SLOT));
    assert_eq!(
        d.message,
        "0/2 required images present; waiting for a slot of the fleet pull budget for r.example"
    );
    hub.update(|s| {
        s.fleet = Some(FleetStatus {
            registries: vec![reg(FleetState::Holding, Some(2))],
        })
    });
    let d = desired(&hub.snapshot());
    assert_eq!(d.reason, reason::PULLING);
    assert!(
        d.message
            .starts_with("0/2 required images present; pulling (slot 2/5 of r.example): "),
        "{}",
        d.message
    );
}
