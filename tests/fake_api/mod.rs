//! A small stateful fake of the Kubernetes API server, for the Node parts of the agent: it keeps
//! Node objects and Events in memory and implements only the endpoints prepuller uses, with
//! the real semantics that matter here:
//!
//! - every change bumps a cluster-wide resourceVersion and is sent to watchers;
//! - a patch carrying `metadata.resourceVersion` that is not current is answered 409;
//! - merge patches (RFC 7386) replace lists; strategic-merge patches merge `status.conditions`
//!   by `type` (other lists are replaced, as `spec.taints`, which has no merge key);
//! - `PATCH nodes/{name}/status` changes only `status`, `PATCH nodes/{name}` everything else.
//!
//! Every request is logged, so tests can count writes. `tls` serves the same API over TLS with a
//! bearer token, for the acceptance tests' separate process (`examples/fake_apiserver.rs`).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde_json::{Value, json};
use tokio::sync::broadcast;

pub mod tls;

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
    pub status: u16,
}

impl Request {
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }
}

#[derive(Default)]
struct Inner {
    rv: u64,
    nodes: BTreeMap<String, Value>,
    events: BTreeMap<String, Value>,
    /// Secrets by "namespace/name", for the `secret:` credential source (read-only).
    secrets: BTreeMap<String, Value>,
    requests: Vec<Request>,
    /// Before the next node PATCH that changes `spec.taints`, another writer adds this taint
    /// (so the patch's resourceVersion is stale and gets a 409).
    conflict_with: Option<Value>,
}

#[derive(Clone)]
pub struct FakeApi {
    inner: Arc<Mutex<Inner>>,
    changes: broadcast::Sender<Value>,
    pub url: String,
}

impl FakeApi {
    pub async fn start() -> FakeApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let api = FakeApi::new(url);
        let router = api.router();
        // Lives as long as the test's runtime.
        tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        api
    }

    /// An empty API that will be served at `url` (by `start` or `tls::TlsFakeApi::serve`).
    fn new(url: String) -> FakeApi {
        FakeApi {
            inner: Arc::default(),
            changes: broadcast::channel(256).0,
            url,
        }
    }

    fn router(&self) -> Router {
        Router::new()
            .route("/api/v1/nodes", get(list_or_watch))
            .route("/api/v1/nodes/{name}", get(get_node).patch(patch_node))
            .route("/api/v1/nodes/{name}/status", patch(patch_status))
            .route(
                "/apis/events.k8s.io/v1/namespaces/{ns}/events",
                post(create_event),
            )
            .route(
                "/apis/events.k8s.io/v1/namespaces/{ns}/events/{name}",
                patch(patch_event),
            )
            .route("/api/v1/namespaces/{ns}/secrets/{name}", get(get_secret))
            .with_state(self.clone())
    }

    /// A kubeconfig pointing at this server, for the agent's `KUBECONFIG`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n",
                self.url
            ),
        )
        .unwrap();
        path
    }

    /// Adds (or replaces) a Node; `node` needs `metadata.name`.
    pub fn put_node(&self, mut node: Value) {
        let mut inner = self.inner.lock().unwrap();
        inner.rv += 1;
        let name = node["metadata"]["name"].as_str().unwrap().to_string();
        node["metadata"]["resourceVersion"] = inner.rv.to_string().into();
        if node["metadata"]["uid"].is_null() {
            node["metadata"]["uid"] = format!("uid-{name}").into();
        }
        node["apiVersion"] = "v1".into();
        node["kind"] = "Node".into();
        inner.nodes.insert(name, node.clone());
        let _ = self.changes.send(node);
    }

    pub fn node(&self, name: &str) -> Value {
        self.inner.lock().unwrap().nodes[name].clone()
    }

    pub fn nodes(&self) -> Vec<Value> {
        self.inner.lock().unwrap().nodes.values().cloned().collect()
    }

    /// Another writer changes the Node (a new resourceVersion, sent to watchers).
    pub fn edit_node(&self, name: &str, f: impl FnOnce(&mut Value)) {
        let mut node = self.node(name);
        f(&mut node);
        self.put_node(node);
    }

    /// Adds (or replaces) a Secret; `secret` needs `metadata.namespace` and `metadata.name`.
    pub fn put_secret(&self, mut secret: Value) {
        let mut inner = self.inner.lock().unwrap();
        inner.rv += 1;
        secret["metadata"]["resourceVersion"] = inner.rv.to_string().into();
        secret["apiVersion"] = "v1".into();
        secret["kind"] = "Secret".into();
        let key = format!(
            "{}/{}",
            secret["metadata"]["namespace"].as_str().unwrap(),
            secret["metadata"]["name"].as_str().unwrap()
        );
        inner.secrets.insert(key, secret);
    }

    pub fn conflict_on_next_taint_patch(&self, other_taint: Value) {
        self.inner.lock().unwrap().conflict_with = Some(other_taint);
    }

    pub fn requests(&self) -> Vec<Request> {
        self.inner.lock().unwrap().requests.clone()
    }

    pub fn events(&self) -> Vec<Value> {
        self.inner
            .lock()
            .unwrap()
            .events
            .values()
            .cloned()
            .collect()
    }

    fn log(&self, method: &Method, uri: &Uri, headers: &HeaderMap, body: &Value, status: u16) {
        self.inner.lock().unwrap().requests.push(Request {
            method: method.to_string(),
            path: uri.path().to_string(),
            query: uri.query().unwrap_or("").to_string(),
            content_type: headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
            body: body.clone(),
            status,
        });
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    (
        code,
        axum::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16(),
        })),
    )
        .into_response()
}

fn label_selector_matches(selector: &str, labels: &Value) -> bool {
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .all(|term| match term.split_once('=') {
            Some((k, v)) => {
                labels[k.trim_end_matches('=')].as_str() == Some(v.trim_start_matches('='))
            }
            None => !labels[term].is_null(),
        })
}

async fn list_or_watch(
    State(api): State<FakeApi>,
    Query(q): Query<BTreeMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    api.log(&method, &uri, &headers, &Value::Null, 200);
    let name = q
        .get("fieldSelector")
        .and_then(|f| f.strip_prefix("metadata.name="))
        .map(str::to_string);
    let selected = move |n: &Value| {
        name.as_ref()
            .is_none_or(|name| n["metadata"]["name"] == name.as_str())
    };
    if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) {
        let since: u64 = q
            .get("resourceVersion")
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        let rx = api.changes.subscribe();
        // No history is kept: a watcher that is behind gets the current object first.
        let current: Vec<Value> = {
            let inner = api.inner.lock().unwrap();
            inner
                .nodes
                .values()
                .filter(|n| selected(n))
                .filter(|n| {
                    n["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|r| r.parse::<u64>().ok())
                        .is_some_and(|r| r > since)
                })
                .cloned()
                .collect()
        };
        let initial = futures::stream::iter(current);
        let updates = futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(n) => return Some((n, rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        use futures::StreamExt;
        let stream = initial.chain(updates).filter_map(move |n| {
            let keep = selected(&n);
            async move {
                keep.then(|| {
                    let line = json!({"type": "MODIFIED", "object": n}).to_string() + "\n";
                    Ok::<_, Infallible>(Bytes::from(line))
                })
            }
        });
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(stream))
            .unwrap();
    }
    let inner = api.inner.lock().unwrap();
    let items: Vec<Value> = inner
        .nodes
        .values()
        .filter(|n| selected(n))
        .filter(|n| {
            q.get("labelSelector")
                .is_none_or(|s| label_selector_matches(s, &n["metadata"]["labels"]))
        })
        .cloned()
        .collect();
    axum::Json(json!({
        "kind": "NodeList", "apiVersion": "v1",
        "metadata": {"resourceVersion": inner.rv.to_string()},
        "items": items,
    }))
    .into_response()
}

async fn get_node(
    State(api): State<FakeApi>,
    UrlPath(name): UrlPath<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let node = api.inner.lock().unwrap().nodes.get(&name).cloned();
    api.log(
        &method,
        &uri,
        &headers,
        &Value::Null,
        if node.is_some() { 200 } else { 404 },
    );
    match node {
        Some(n) => axum::Json(n).into_response(),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("nodes \"{name}\" not found"),
        ),
    }
}

/// RFC 7386, with conditions merged by `type` when `strategic`.
fn merge(target: &mut Value, patch: &Value, strategic: bool, path: &str) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                let child = format!("{path}.{k}");
                if v.is_null() {
                    t.remove(k);
                } else if strategic && child == ".status.conditions" {
                    let list = t.entry(k.clone()).or_insert_with(|| json!([]));
                    for c in v.as_array().cloned().unwrap_or_default() {
                        let items = list.as_array_mut().unwrap();
                        match items.iter_mut().find(|e| e["type"] == c["type"]) {
                            Some(e) => merge(e, &c, strategic, &child),
                            None => items.push(c),
                        }
                    }
                } else {
                    merge(
                        t.entry(k.clone()).or_insert(Value::Null),
                        v,
                        strategic,
                        &child,
                    );
                }
            }
        }
        _ => *target = patch.clone(),
    }
    if let Some(t) = target.as_object_mut() {
        t.retain(|_, v| !v.is_null());
    }
}

fn apply_patch(
    api: &FakeApi,
    name: &str,
    headers: &HeaderMap,
    patch: &Value,
    subresource_status: bool,
) -> Response {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let strategic = match content_type {
        "application/merge-patch+json" => false,
        "application/strategic-merge-patch+json" => true,
        other => {
            return status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!("the fake API does not implement {other}"),
            );
        }
    };
    let conflict = if !subresource_status && patch["spec"].get("taints").is_some() {
        api.inner.lock().unwrap().conflict_with.take()
    } else {
        None
    };
    if let Some(taint) = conflict {
        api.edit_node(name, |n| {
            let taints = n["spec"]["taints"].as_array_mut().unwrap();
            taints.push(taint);
        });
    }
    let mut inner = api.inner.lock().unwrap();
    let Some(mut node) = inner.nodes.get(name).cloned() else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("nodes \"{name}\" not found"),
        );
    };
    if let Some(rv) = patch["metadata"]["resourceVersion"].as_str()
        && node["metadata"]["resourceVersion"].as_str() != Some(rv)
    {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on nodes \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
    }
    // The status subresource changes only status; the main resource everything but status.
    let mut effective = patch.clone();
    if let Some(o) = effective.as_object_mut() {
        if subresource_status {
            o.retain(|k, _| k == "status");
        } else {
            o.remove("status");
        }
    }
    merge(&mut node, &effective, strategic, "");
    inner.rv += 1;
    node["metadata"]["resourceVersion"] = inner.rv.to_string().into();
    inner.nodes.insert(name.to_string(), node.clone());
    let _ = api.changes.send(node.clone());
    axum::Json(node).into_response()
}

async fn patch_node(
    State(api): State<FakeApi>,
    UrlPath(name): UrlPath<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let r = apply_patch(&api, &name, &headers, &body, false);
    api.log(&method, &uri, &headers, &body, r.status().as_u16());
    r
}

async fn patch_status(
    State(api): State<FakeApi>,
    UrlPath(name): UrlPath<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let r = apply_patch(&api, &name, &headers, &body, true);
    api.log(&method, &uri, &headers, &body, r.status().as_u16());
    r
}

async fn create_event(
    State(api): State<FakeApi>,
    UrlPath(ns): UrlPath<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    axum::Json(mut body): axum::Json<Value>,
) -> Response {
    api.log(&method, &uri, &headers, &body, 201);
    let name = body["metadata"]["name"].as_str().unwrap_or("").to_string();
    body["metadata"]["namespace"] = ns.into();
    api.inner.lock().unwrap().events.insert(name, body.clone());
    (StatusCode::CREATED, axum::Json(body)).into_response()
}

async fn patch_event(
    State(api): State<FakeApi>,
    UrlPath((_ns, name)): UrlPath<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let mut inner = api.inner.lock().unwrap();
    let Some(event) = inner.events.get_mut(&name) else {
        drop(inner);
        api.log(&method, &uri, &headers, &body, 404);
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("events \"{name}\" not found"),
        );
    };
    merge(event, &body, false, "");
    let event = event.clone();
    drop(inner);
    api.log(&method, &uri, &headers, &body, 200);
    axum::Json(event).into_response()
}

async fn get_secret(
    State(api): State<FakeApi>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let secret = api
        .inner
        .lock()
        .unwrap()
        .secrets
        .get(&format!("{ns}/{name}"))
        .cloned();
    api.log(
        &method,
        &uri,
        &headers,
        &Value::Null,
        if secret.is_some() { 200 } else { 404 },
    );
    match secret {
        Some(s) => axum::Json(s).into_response(),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("secrets \"{name}\" not found"),
        ),
    }
}
