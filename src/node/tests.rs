//! The Reporter's requests and their effects, on kube's client over a `tower-test` mock with
//! explicit scenarios (as kube-rs's controller examples do). Time is paused: the heartbeat
//! and the taint timeout are crossed with `tokio::time::advance`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

use super::*;
use crate::report::{ImageState, ImageStatus, StatusHub};

type MockHandle = Handle<Request<Body>, Response<Body>>;

const TAINT: &str = settings::DEFAULT_STARTUP_TAINT;

fn image(name: &str, state: ImageState) -> ImageStatus {
    crate::report::test_image(name, true, state)
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

fn reporter(hub: Arc<StatusHub>, settings: NodeSettings) -> (Reporter, MockHandle) {
    let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let (_agent, link) = link(settings);
    let boot = Boot {
        id: "boot-1".into(),
        at: SystemTime::UNIX_EPOCH,
    };
    (
        Reporter::new(client, "node-a".into(), boot, hub, link),
        handle,
    )
}

/// The next request: method, path and JSON body.
async fn next(
    handle: &mut MockHandle,
) -> (Method, String, Value, mock::SendResponse<Response<Body>>) {
    let (req, send) = handle.next_request().await.expect("a request");
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
    }
    let rv: u64 = node["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    node["metadata"]["resourceVersion"] = (rv + 1).to_string().into();
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
    let (mut r, mut handle) = reporter(hub.clone(), NodeSettings::default());
    let mut node = node(1, json!([]));
    observe(&mut r, &node);
    let (_, seen) = tokio::join!(r.reconcile(), serve(&mut handle, &mut node, 2));
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
    // Nothing changed: no request (the mock would hang the call if one were made).
    hub.update(|_| {});
    tokio::time::advance(HEARTBEAT - Duration::from_secs(1)).await;
    r.reconcile().await;
    assert!(
        handle.next_request().now_or_never().is_none(),
        "a write before the heartbeat"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    let (_, seen) = tokio::join!(r.reconcile(), serve(&mut handle, &mut node, 1));
    let c = &seen[0].2["status"]["conditions"][0];
    assert_eq!(c["status"], "True");
    assert_eq!(
        c["lastTransitionTime"], first_transition,
        "no transition on a heartbeat"
    );
    // A status change is written at once, with a new transition time.
    hub.update(|s| s.images[1].state = ImageState::Pulling);
    let (_, seen) = tokio::join!(r.reconcile(), serve(&mut handle, &mut node, 2));
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
    let (mut r, mut handle) = reporter(hub, NodeSettings::default());
    observe(&mut r, &node);
    r.reconcile().await;
    assert!(handle.next_request().now_or_never().is_none());
}

#[tokio::test(start_paused = true)]
async fn the_taint_goes_when_warm_and_a_conflict_is_read_again_and_retried() {
    let hub = hub(&[ImageState::Pulling]);
    let taints =
        json!([{"key": TAINT, "effect": "NoSchedule"}, {"key": "other", "effect": "NoExecute"}]);
    let mut node = node(1, taints);
    let (mut r, mut handle) = reporter(hub.clone(), NodeSettings::default());
    observe(&mut r, &node);
    // Not warm, before the timeout: condition and label only.
    let (_, seen) = tokio::join!(r.reconcile(), serve(&mut handle, &mut node, 2));
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
    let (_, seen) = tokio::join!(r.reconcile(), scenario);
    assert_eq!(seen[0].2["status"]["conditions"][0]["status"], "True");

    // Put back in the same boot: left alone.
    node["spec"]["taints"]
        .as_array_mut()
        .unwrap()
        .push(json!({"key": TAINT, "effect": "NoSchedule"}));
    node["metadata"]["resourceVersion"] = "20".into();
    observe(&mut r, &node);
    r.reconcile().await;
    assert!(handle.next_request().now_or_never().is_none());
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
    let (mut r, mut handle) = reporter(hub, settings);
    observe(&mut r, &node);
    let (_, seen) = tokio::join!(r.reconcile(), serve(&mut handle, &mut node, 2));
    assert_eq!(seen[0].2["status"]["conditions"][0]["reason"], "PullFailed");
    tokio::time::advance(Duration::from_secs(239)).await;
    r.reconcile().await;
    assert!(
        handle.next_request().now_or_never().is_none(),
        "removed before the timeout"
    );
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
    let (_, seen) = tokio::join!(r.reconcile(), scenario);
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
    let (mut r, mut handle) = reporter(hub, NodeSettings::default());
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
    tokio::join!(r.reconcile(), scenario);
    let error = r.last_error.clone().unwrap();
    assert!(error.contains("lacks `patch` on `nodes/status`"), "{error}");
    // Retried later, not at once.
    r.reconcile().await;
    assert!(handle.next_request().now_or_never().is_none());
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
    let failure = |n: u32| Occurrence {
        type_: Type::Warning,
        reason: "ImagePullFailed",
        subject: "r.example/a:1".into(),
        note: format!("attempt {n}"),
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
    let (_, name) = tokio::join!(sink.publish(&node, failure(1)), created);
    // Nine more within a minute: held back, no request.
    for n in 2..=10 {
        tokio::time::advance(Duration::from_secs(5)).await;
        sink.publish(&node, failure(n)).await;
    }
    assert!(handle.next_request().now_or_never().is_none());
    // After the series interval, one patch carries the count and the latest note.
    tokio::time::advance(events::SERIES_INTERVAL).await;
    let patched = async {
        let (method, path, body, send) = next(&mut handle).await;
        assert_eq!(method, Method::PATCH);
        assert!(path.ends_with(&name), "{path}");
        answer(send, StatusCode::OK, &json!({}));
        body
    };
    let (_, body) = tokio::join!(sink.flush(), patched);
    assert_eq!(body["series"]["count"], 10);
    assert_eq!(body["note"], "attempt 10");

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
            o.subject = format!("r.example/img{i}:1");
            sink.publish(&node, o).await;
        }
    };
    let (_, n) = tokio::join!(publish, creates);
    assert_eq!(
        n, 24,
        "a burst of 25, 2 used above, 1 refilled over the 6 minutes"
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

use futures::FutureExt;
