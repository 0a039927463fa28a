//! Node readiness end to end: the real `prepuller agent` pulling through a real containerd
//! from a real registry, writing to a stateful fake Kubernetes API (`fake_api`), and
//! `prepuller nodes` reading it back.

mod fake_api;

use std::path::Path;
use std::time::{Duration, Instant};

use fake_api::FakeApi;
use serde_json::{Value, json};
use testkit::{
    AGENT_CONVERGE, AgentProc, ConfigMapDir, Sandbox, images_prepulled_condition, prepuller_bin,
    push_image, taint_keys,
};

const MB: usize = 1024 * 1024;
/// Generous: a 2-core CI machine runs several sandboxes at once.
const STARTUP_TAINT: &str = "startup-taint.cluster-autoscaler.kubernetes.io/prepuller";
const BOOT_ANNOTATION: &str = "prepuller.dev/startup-taint-removed-boot-id";

/// Polls until `check` holds on the fake's Node; panics with the agent's log after CONVERGE.
async fn wait_node(api: &FakeApi, agent: &AgentProc, what: &str, check: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + AGENT_CONVERGE;
    loop {
        let node = api.node("node-a");
        if check(&node) {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}; node {node:#}\nagent log:\n{}",
                agent.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn new_node(labels: Value) -> Value {
    json!({
        "metadata": {
            "name": "node-a",
            "labels": labels,
            "annotations": {"team.example.com/owner": "infra"},
            "creationTimestamp": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        },
        "spec": {"taints": [
            {"key": STARTUP_TAINT, "effect": "NoSchedule"},
            {"key": "dedicated", "value": "infra", "effect": "NoSchedule"},
        ]},
        "status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"},
        ]},
    })
}

/// `prepuller nodes ARGS` against the fake API: (exit code, stdout, stderr).
async fn nodes_cmd(api: &FakeApi, dir: &Path, args: &[&str]) -> (i32, String, String) {
    let o = tokio::process::Command::new(prepuller_bin())
        .arg("nodes")
        .args(args)
        .env("KUBECONFIG", api.kubeconfig(dir))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .await
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn config(reg: &str, extra: &str, images: &[&str]) -> String {
    let mut s = format!("resyncInterval: 1s\nbackoff: {{initial: 1s, max: 2s}}\n{extra}images:\n");
    for i in images {
        s.push_str(&format!("  - {reg}/{i}\n"));
    }
    s
}

#[tokio::test]
async fn the_node_turns_warm_as_images_land_and_the_startup_taint_goes_exactly_then() {
    let sb = Sandbox::start();
    let reg = sb.registry.host();
    push_image(&reg, "team/web", "1.0", 1, MB).await;
    let api = FakeApi::start().await;
    api.put_node(new_node(json!({"pool": "general"})));
    let path = sb.path().join("images.yaml");
    std::fs::write(&path, config(&reg, "", &["team/web:1.0", "team/late:1.0"])).unwrap();
    let agent = AgentProc::start_with_kubeconfig(&sb, &path, &api.kubeconfig(sb.path()));

    // One required image cannot be pulled: cold, and the taint stays.
    wait_node(&api, &agent, "condition PullFailed and label false", |n| {
        images_prepulled_condition(n)["reason"] == "PullFailed"
            && n["metadata"]["labels"]["prepuller.dev/ready"] == "false"
    })
    .await;
    let node = api.node("node-a");
    let cold = images_prepulled_condition(&node);
    assert_eq!(cold["status"], "False");
    let message = cold["message"].as_str().unwrap();
    assert!(
        message.starts_with("1/2 required images present; failing: ")
            && message.contains("team/late:1.0"),
        "{message}"
    );
    assert_eq!(node["metadata"]["labels"]["prepuller.dev/ready"], "false");
    assert!(taint_keys(&node).contains(&STARTUP_TAINT.to_string()));
    // Events are written on their own, possibly a moment after the condition.
    let deadline = Instant::now() + Duration::from_secs(30);
    let failed = loop {
        if let Some(e) = api
            .events()
            .into_iter()
            .find(|e| e["reason"] == "ImagePullFailed")
        {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "no ImagePullFailed event: {:#?}",
            api.events()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(failed["regarding"]["kind"], "Node");
    assert_eq!(failed["regarding"]["name"], "node-a");
    assert_eq!(failed["type"], "Warning");

    // Someone else changes the taints while the agent removes its own: 409, read, retry.
    api.conflict_on_next_taint_patch(
        json!({"key": "node.example.com/maintenance", "effect": "NoSchedule"}),
    );
    push_image(&reg, "team/late", "1.0", 2, MB).await;
    // The condition, the taint and the label are separate writes: wait for all three.
    wait_node(&api, &agent, "warm, untainted and labelled", |n| {
        images_prepulled_condition(n)["status"] == "True"
            && !taint_keys(n).contains(&STARTUP_TAINT.to_string())
            && n["metadata"]["labels"]["prepuller.dev/ready"] == "true"
    })
    .await;
    let node = api.node("node-a");
    let warm = images_prepulled_condition(&node);
    assert_eq!(warm["reason"], "AllRequiredImagesPresent");
    assert_eq!(warm["message"], "2/2 required images present");
    assert_ne!(warm["lastTransitionTime"], cold["lastTransitionTime"]);
    assert_eq!(node["metadata"]["labels"]["prepuller.dev/ready"], "true");
    // Other writers' taints, labels, annotations and conditions are untouched.
    assert_eq!(
        taint_keys(&node),
        ["dedicated", "node.example.com/maintenance"]
    );
    assert_eq!(node["metadata"]["labels"]["pool"], "general");
    assert_eq!(
        node["metadata"]["annotations"]["team.example.com/owner"],
        "infra"
    );
    assert_eq!(
        node["metadata"]["annotations"][BOOT_ANNOTATION],
        testkit::boot_id()
    );
    assert_eq!(node["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(node["status"]["conditions"][0]["reason"], "KubeletReady");
    let taint_patches: Vec<u16> = api
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.body["spec"].get("taints").is_some())
        .map(|r| r.status)
        .collect();
    assert_eq!(taint_patches, [409, 200], "one conflict, one retry");
    assert!(
        api.events()
            .iter()
            .any(|e| e["reason"] == "ImagesPrePulled" && e["type"] == "Normal")
    );

    // Steady state: resyncs every second, and not one write.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = api.requests().iter().filter(|r| r.is_write()).count();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let writes: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.is_write())
        .skip(before)
        .collect();
    assert!(writes.is_empty(), "writes at steady state: {writes:#?}");

    // The taint is removed once per boot: put back (by an operator), it stays.
    api.edit_node("node-a", |n| {
        n["spec"]["taints"]
            .as_array_mut()
            .unwrap()
            .push(json!({"key": STARTUP_TAINT, "effect": "NoSchedule"}));
    });
    // The agent is alive and writing meanwhile (a dead one would also leave the taint): it
    // puts its label back when another writer changes it.
    api.edit_node("node-a", |n| {
        n["metadata"]["labels"]["prepuller.dev/ready"] = "false".into()
    });
    wait_node(&api, &agent, "label written again", |n| {
        n["metadata"]["labels"]["prepuller.dev/ready"] == "true"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(taint_keys(&api.node("node-a")).contains(&STARTUP_TAINT.to_string()));

    // The fleet view.
    let (code, out, err) = nodes_cmd(&api, sb.path(), &["-o", "wide"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("node-a") && out.contains("AllRequiredImagesPresent"),
        "{out}"
    );
    assert!(out.ends_with("1/1 nodes warm\n"), "{out}");
    let (code, _, err) = nodes_cmd(&api, sb.path(), &["--wait", "--timeout", "10s"]).await;
    assert_eq!(code, 0, "{err}");
}

#[tokio::test]
async fn the_startup_taint_is_removed_after_the_timeout_even_when_cold_and_the_condition_says_why()
{
    let sb = Sandbox::start();
    let reg = sb.registry.host();
    let api = FakeApi::start().await;
    api.put_node(new_node(json!({"pool": "general"})));
    let path = sb.path().join("images.yaml");
    std::fs::write(
        &path,
        config(
            &reg,
            "nodeReadiness: {taintTimeout: 3s}\n",
            &["team/missing:1.0"],
        ),
    )
    .unwrap();
    let started = Instant::now();
    let agent = AgentProc::start_with_kubeconfig(&sb, &path, &api.kubeconfig(sb.path()));
    wait_node(&api, &agent, "taint removed (fail-open)", |n| {
        !taint_keys(n).contains(&STARTUP_TAINT.to_string())
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "removed before the timeout"
    );
    wait_node(&api, &agent, "condition says fail-open", |n| {
        images_prepulled_condition(n)["message"]
            .as_str()
            .is_some_and(|m| m.contains("fail-open"))
    })
    .await;
    let node = api.node("node-a");
    assert_eq!(images_prepulled_condition(&node)["status"], "False");
    assert_eq!(images_prepulled_condition(&node)["reason"], "PullFailed");
    assert_eq!(taint_keys(&node), ["dedicated"]);

    let (code, out, err) = nodes_cmd(&api, sb.path(), &["--wait", "--timeout", "1s"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("cold: node-a (PullFailed"), "{err}");
    assert!(out.contains("0/1 nodes warm"), "{out}");
    let (code, _, err) = nodes_cmd(
        &api,
        sb.path(),
        &["--selector", "pool=none", "--wait", "--timeout", "1s"],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no node matches"), "{err}");
}

#[tokio::test]
async fn image_sets_follow_the_node_labels_without_restart() {
    let sb = Sandbox::start();
    let reg = sb.registry.host();
    push_image(&reg, "team/web", "1.0", 1, MB).await;
    push_image(&reg, "team/cuda", "12", 2, MB).await;
    let api = FakeApi::start().await;
    // Watches end every 2 s (the real server: after timeoutSeconds) and are resumed.
    api.set_watch_timeout(Duration::from_secs(2));
    api.put_node(new_node(json!({"pool": "cpu"})));
    let configmap = ConfigMapDir::create(
        &sb.path().join("config"),
        &[
            ("base.yaml", &config(&reg, "", &["team/web:1.0"])),
            (
                "gpu.yaml",
                &format!(
                    "nodeSelector:\n  matchExpressions:\n    - {{key: pool, operator: In, values: [gpu]}}\nimages:\n  - {reg}/team/cuda:12\n"
                ),
            ),
        ],
    );
    let agent = AgentProc::start_with_kubeconfig(&sb, &configmap.dir, &api.kubeconfig(sb.path()));
    wait_node(&api, &agent, "warm with the base set", |n| {
        images_prepulled_condition(n)["message"] == "1/1 required images present"
    })
    .await;
    let images = |s: &Value| -> Vec<String> {
        s["images"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|i| i["normalized"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        images(&agent.status().await.unwrap_or_default()),
        [format!("{reg}/team/web:1.0")]
    );

    let started = Instant::now();
    // The node joins the GPU pool: the GPU set applies, without restart.
    api.edit_node("node-a", |n| n["metadata"]["labels"]["pool"] = "gpu".into());
    wait_node(&api, &agent, "warm with both sets", |n| {
        images_prepulled_condition(n)["message"] == "2/2 required images present"
    })
    .await;
    let cuda = format!("{reg}/team/cuda:12");
    assert!(sb.containerd.image_refs().contains(&cuda));
    assert!(images(&agent.status().await.unwrap_or_default()).contains(&cuda));

    // The watch window moves past every version the agent has seen, the Node's own included
    // (so reading it again does not help): the agent's watch resumes into 410 and must watch
    // from the current state to see what follows.
    api.compact();
    let resumed = |api: &FakeApi| {
        let watches: Vec<_> = api
            .requests()
            .into_iter()
            .filter(|r| r.query.contains("watch=true"))
            .collect();
        let expired = watches.iter().position(|r| r.status == 410);
        expired.is_some_and(|i| watches[i + 1..].iter().any(|r| r.status == 200))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !resumed(&api) {
        assert!(
            Instant::now() < deadline,
            "no working watch after the 410 while the Node stays unchanged: {:#?}",
            api.requests()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And leaves it again.
    api.edit_node("node-a", |n| n["metadata"]["labels"]["pool"] = "cpu".into());
    wait_node(&api, &agent, "back to the base set", |n| {
        images_prepulled_condition(n)["message"] == "1/1 required images present"
    })
    .await;
    assert_eq!(
        images(&agent.status().await.unwrap_or_default()),
        [format!("{reg}/team/web:1.0")]
    );
    let watches = api
        .requests()
        .into_iter()
        .filter(|r| r.query.contains("watch=true"))
        .count();
    // Resumed once per server timeout (2 s), not in a loop.
    let limit = started.elapsed().as_secs() as usize + 10;
    assert!(watches <= limit, "{watches} watches");
}

/// The fake API answers as the real server does where the agent depends on it: watches end,
/// carry bookmarks, and answer 410 once their resourceVersion is compacted away; Events keep
/// their immutable fields. (Without these, the agent's watch restart and its Event updates
/// were never exercised.)
#[tokio::test]
async fn the_fake_api_ends_watches_sends_bookmarks_and_410_and_guards_events_like_the_real_one() {
    let api = FakeApi::start().await;
    api.put_node(new_node(json!({"pool": "general"})));
    let rv = api.node("node-a")["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    api.edit_node("node-a", |n| n["metadata"]["labels"]["pool"] = "gpu".into());
    api.set_watch_timeout(Duration::from_secs(1));
    let watch = |rv: &str| {
        let path = format!(
            "/api/v1/nodes?watch=true&fieldSelector=metadata.name%3Dnode-a&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion={rv}"
        );
        let api = api.clone();
        async move {
            let started = Instant::now();
            let (_, body) = http(&api, "GET", &path, None).await;
            let events: Vec<Value> = body
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            (events, started.elapsed())
        }
    };
    // From an old version: the change after it, then a bookmark, and the end (1 s, not 290).
    let (events, took) = watch(&rv).await;
    let types: Vec<_> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["MODIFIED", "BOOKMARK"], "{events:#?}");
    assert_eq!(events[0]["object"]["metadata"]["labels"]["pool"], "gpu");
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Without a version: the current Node as ADDED.
    let (events, _) = watch("").await;
    assert_eq!(events[0]["type"], "ADDED");
    // Compacted: 410 Expired as a watch ERROR event.
    api.compact();
    let (events, _) = watch(&rv).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["code"], 410);
    assert_eq!(events[0]["object"]["reason"], "Expired");

    // Events: 409 on an existing name, 422 on a change of the note or a bad series.
    let events = "/apis/events.k8s.io/v1/namespaces/default/events";
    let event = json!({
        "metadata": {"name": "node-a.1"}, "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "prepuller.dev/agent", "reportingInstance": "prepuller-node-a",
        "action": "PrePull", "reason": "ImagePullFailed", "type": "Warning", "note": "first",
        "regarding": {"kind": "Node", "name": "node-a"},
    });
    let (code, _) = http(&api, "POST", events, Some(&event)).await;
    assert_eq!(code, 201);
    let (code, body) = http(&api, "POST", events, Some(&event)).await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("AlreadyExists"), "{body}");
    let one = format!("{events}/node-a.1");
    let series = json!({"count": 2, "lastObservedTime": "2026-01-01T00:05:00.000000Z"});
    let (code, body) = http(
        &api,
        "PATCH",
        &one,
        Some(&json!({"note": "second", "series": series})),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body.contains("\"Invalid\"") && body.contains("note: Invalid value"),
        "{body}"
    );
    let bad = json!({"series": {"count": 1, "lastObservedTime": "2026-01-01T00:05:00Z"}});
    assert_eq!(http(&api, "PATCH", &one, Some(&bad)).await.0, 422);
    assert_eq!(
        http(&api, "PATCH", &one, Some(&json!({"series": series})))
            .await
            .0,
        200
    );
    assert_eq!(api.events()[0]["note"], "first");
}

/// One HTTP/1.0 request to the fake (the body of a response is then delimited by the end of
/// the connection, a watch's included): (status, body).
async fn http(api: &FakeApi, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = api.url.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let content_type = if method == "PATCH" {
        "application/merge-patch+json"
    } else {
        "application/json"
    };
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}
