//! A small stateful fake of the Kubernetes API server, for the Node parts of the agent: it keeps
//! Node objects and Events in memory and implements only the endpoints prepuller uses, with
//! the real semantics that matter here:
//!
//! - every change bumps a cluster-wide resourceVersion and is sent to watchers;
//! - a watch replays the changes after its `resourceVersion` (none: the current objects as
//!   ADDED), ends after `timeoutSeconds` (capped by [`FakeApi::set_watch_timeout`]), sends a
//!   BOOKMARK when `allowWatchBookmarks` asks (every [`BOOKMARK_EVERY`] and before it ends),
//!   and answers a resourceVersion older than its history (see [`FakeApi::compact`]) with an
//!   ERROR event carrying a 410 Expired Status, as the real server does;
//! - a patch carrying `metadata.resourceVersion` that is not current is answered 409; the
//!   patched Node is validated as the server validates it (`prepuller::apirules::node`: labels,
//!   annotations, taints), 422 when invalid;
//! - merge patches (RFC 7386) replace lists; strategic-merge patches merge `status.conditions`
//!   by `type` (other lists are replaced, as `spec.taints`, which has no merge key);
//! - `PATCH nodes/{name}/status` changes only `status`, `PATCH nodes/{name}` everything else;
//! - Events (`events.k8s.io/v1`) follow the API server's validation
//!   (`pkg/apis/core/validation/events.go`): a create of an existing name is 409
//!   AlreadyExists; an update that changes an immutable field (`note`, `reason`, `type`,
//!   `regarding`, `related`, `action`, `eventTime`, `reportingController`,
//!   `reportingInstance`, the `deprecated*` fields) or sets a `series` with a count below 2
//!   or no `lastObservedTime` is 422 Invalid.
//!
//! - Leases (`coordination.k8s.io/v1`, [`leases`]): get, list, watch, create, update, patch,
//!   delete, refused as the API server refuses them (see [`leases`]);
//! - label selectors are parsed and matched with their keys (`=`, `==`, `!=`, `in`, `notin`,
//!   exists, `!key`), a malformed one answered 400.
//!
//! The rules that say what the real server refuses live in one place, `prepuller::apirules`
//! (compiled with the `test-util` feature; `fleet::fake` follows them too), each citing the
//! kube-apiserver source it follows. Over TLS ([`tls`]) the agent's requests are also
//! authorized with the RBAC of `deploy/` (403 with the real message, logged).
//!
//! Every request is logged with its client (the TLS server's per-client token, else the user
//! agent), so tests can count writes per node. [`FakeApi::set_down`] makes it unreachable. `tls` serves the same API over TLS with a
//! bearer token, for the acceptance tests' separate process (`examples/fake_apiserver.rs`).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use futures::StreamExt;
use prepuller::apirules::Refusal;
use prepuller::apirules::selector::Selector;
use serde_json::{Value, json};
use tokio::sync::broadcast;

pub mod leases;
pub mod tls;

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
    pub status: u16,
    /// Who asked: [`CLIENT_HEADER`] (set by the TLS server from the token), else the user agent.
    pub client: String,
    /// Why it was refused, when it was (the Status message: a 403's names what RBAC lacks).
    pub message: String,
}

/// Set on a request by the TLS server when its token names a client (`<token>.<client>`).
pub const CLIENT_HEADER: &str = "x-fake-api-client";

impl Request {
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }

    /// As the control listener's `GET /requests` lists it (what `testkit::forbidden` reads).
    pub fn json(&self) -> Value {
        json!({
            "method": self.method, "path": self.path, "query": self.query,
            "contentType": self.content_type, "body": self.body, "status": self.status,
            "client": self.client, "message": self.message,
        })
    }
}

/// How often a watch that asked for bookmarks gets one (the real server: about a minute).
pub const BOOKMARK_EVERY: Duration = Duration::from_secs(60);
/// The real server's default for a watch without `timeoutSeconds` is 30 to 60 minutes.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

#[derive(Default)]
struct Inner {
    rv: u64,
    nodes: BTreeMap<String, Value>,
    /// Leases by "namespace/name".
    leases: BTreeMap<String, Value>,
    /// While true every request is refused (see [`FakeApi::set_down`]).
    down: bool,
    /// Node and Lease changes in order, `(resourceVersion, type, object)`, from `compacted` on.
    history: Vec<(u64, &'static str, Value)>,
    /// A watch from a resourceVersion below this is answered 410.
    compacted: u64,
    /// The longest a watch lasts, whatever it asks; `None`: as asked.
    watch_timeout: Option<Duration>,
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
            .route(
                "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
                get(leases::list_or_watch).post(leases::create),
            )
            .route(
                "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}",
                get(leases::get)
                    .put(leases::update)
                    .patch(leases::patch)
                    .delete(leases::delete),
            )
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                refuse_when_down,
            ))
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
        let type_ = if inner.nodes.contains_key(&name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        inner.nodes.insert(name, node.clone());
        record(&mut inner, &self.changes, type_, node);
    }

    /// Watches end after `d` at most (the real server ends them after its request timeout).
    pub fn set_watch_timeout(&self, d: Duration) {
        self.inner.lock().unwrap().watch_timeout = Some(d);
    }

    /// Changes elsewhere in the cluster move the watch window past every version seen so far
    /// (as etcd's compaction and the watch cache's window do), and every open watch ends: a
    /// watcher resuming from where it was gets 410 Gone; a bookmark sent later is current.
    pub fn compact(&self) {
        let mut inner = self.inner.lock().unwrap();
        inner.history.clear();
        inner.rv += 1;
        inner.compacted = inner.rv;
        let _ = self.changes.send(Value::Null); // ends the open watches
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

    /// Down: every request is answered 503 and the open watches end (the TLS server also
    /// closes new connections unanswered); up again: state and resourceVersions as they were.
    pub fn set_down(&self, down: bool) {
        self.inner.lock().unwrap().down = down;
        if down {
            let _ = self.changes.send(Value::Null);
        }
    }

    pub fn is_down(&self) -> bool {
        self.inner.lock().unwrap().down
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
            client: client_of(headers),
            message: String::new(),
        });
    }

    /// Logs a request refused before any handler ran (401, the RBAC check's 403).
    fn log_refused(&self, method: &Method, uri: &Uri, headers: &HeaderMap, e: &Refusal) {
        self.log(method, uri, headers, &Value::Null, e.code);
        if let Some(last) = self.inner.lock().unwrap().requests.last_mut() {
            last.message.clone_from(&e.message);
        }
    }
}

fn client_of(headers: &HeaderMap) -> String {
    headers
        .get(CLIENT_HEADER)
        .or_else(|| headers.get("user-agent"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

async fn refuse_when_down(
    State(api): State<FakeApi>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if api.is_down() {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the fake API server is down".into(),
        );
    }
    next.run(req).await
}

/// Records a Node change and sends it to the watchers (under the lock, so that a watch that
/// starts reads the history and subscribes atomically).
fn record(inner: &mut Inner, changes: &broadcast::Sender<Value>, type_: &'static str, node: Value) {
    inner.history.push((inner.rv, type_, node.clone()));
    let _ = changes.send(json!({"type": type_, "object": node}));
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

/// The request's `labelSelector`, parsed as the API server does (`prepuller::apirules`:
/// labels/selector.go); a malformed one is answered 400.
fn label_selector(q: &BTreeMap<String, String>) -> Result<Selector, Refusal> {
    Selector::parse(q.get("labelSelector").map_or("", String::as_str))
}

/// The API server's answer for a refusal of `prepuller::apirules`.
fn refused(e: &Refusal) -> Response {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, axum::Json(e.status())).into_response()
}

async fn list_or_watch(
    State(api): State<FakeApi>,
    Query(q): Query<BTreeMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let is_watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    let labels = match label_selector(&q) {
        Ok(l) => l,
        Err(e) => {
            api.log(&method, &uri, &headers, &Value::Null, 400);
            return refused(&e);
        }
    };
    if !is_watch {
        api.log(&method, &uri, &headers, &Value::Null, 200);
    }
    let name = q
        .get("fieldSelector")
        .and_then(|f| f.strip_prefix("metadata.name="))
        .map(str::to_string);
    let selected = move |n: &Value| {
        name.as_ref()
            .is_none_or(|name| n["metadata"]["name"] == name.as_str())
            && labels.matches_json(&n["metadata"]["labels"])
    };
    if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) {
        return watch(api, &q, &uri, &headers, "Node", selected);
    }
    let inner = api.inner.lock().unwrap();
    let items: Vec<Value> = inner
        .nodes
        .values()
        .filter(|n| selected(n))
        .cloned()
        .collect();
    axum::Json(json!({
        "kind": "NodeList", "apiVersion": "v1",
        "metadata": {"resourceVersion": inner.rv.to_string()},
        "items": items,
    }))
    .into_response()
}

/// A watch of Nodes; logged with status 410 when it is answered with the Expired error.
fn watch(
    api: FakeApi,
    q: &BTreeMap<String, String>,
    uri: &Uri,
    headers: &HeaderMap,
    kind: &'static str,
    selected: impl Fn(&Value) -> bool + Send + 'static,
) -> Response {
    let selected = move |o: &Value| o["kind"] == kind && selected(o);
    let asked = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_WATCH_TIMEOUT);
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let since = q.get("resourceVersion").map(String::as_str).unwrap_or("");
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let line = |v: Value| Bytes::from(v.to_string() + "\n");
    let (first, mut changes, timeout, expired) = {
        let mut inner = api.inner.lock().unwrap();
        let timeout = inner.watch_timeout.map_or(asked, |cap| asked.min(cap));
        let changes = api.changes.subscribe();
        // The server's resourceVersions are numbers; clients must not assume so.
        let first: Vec<Value> = match since {
            "" | "0" => if kind == "Lease" {
                &inner.leases
            } else {
                &inner.nodes
            }
            .values()
            .map(|n| json!({"type": "ADDED", "object": n}))
            .collect(),
            rv => match rv.parse::<u64>() {
                Ok(rv) if rv >= inner.compacted => inner
                    .history
                    .iter()
                    .filter(|(v, _, _)| *v > rv)
                    .map(|(_, t, n)| json!({"type": t, "object": n}))
                    .collect(),
                _ => {
                    let message = format!("too old resource version: {rv} ({})", inner.compacted);
                    vec![json!({"type": "ERROR", "object": {
                        "kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "message": message, "reason": "Expired", "code": 410,
                    }})]
                }
            },
        };
        let expired = first.first().is_some_and(|e| e["type"] == "ERROR");
        inner.requests.push(Request {
            method: "GET".into(),
            path: uri.path().to_string(),
            query: uri.query().unwrap_or("").to_string(),
            content_type: String::new(),
            body: Value::Null,
            status: if expired { 410 } else { 200 },
            client: client_of(headers),
            message: String::new(),
        });
        (first, changes, timeout, expired)
    };
    let inner = api.inner.clone();
    tokio::spawn(async move {
        for e in first {
            let keep = e["type"] == "ERROR" || selected(&e["object"]);
            if keep && tx.send(line(e)).await.is_err() {
                return;
            }
        }
        if expired {
            return;
        }
        let bookmark = |inner: &Arc<Mutex<Inner>>| {
            let rv = inner.lock().unwrap().rv;
            line(json!({"type": "BOOKMARK", "object": {
                "kind": kind, "apiVersion": "v1",
                "metadata": {"resourceVersion": rv.to_string()},
            }}))
        };
        let end = tokio::time::Instant::now() + timeout;
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + BOOKMARK_EVERY, BOOKMARK_EVERY);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(end) => {
                    if bookmarks {
                        let _ = tx.send(bookmark(&inner)).await;
                    }
                    return;
                }
                _ = tick.tick(), if bookmarks => {
                    if tx.send(bookmark(&inner)).await.is_err() {
                        return;
                    }
                }
                _ = tx.closed() => return,
                change = changes.recv() => match change {
                    Ok(Value::Null) | Err(broadcast::error::RecvError::Closed) => return,
                    Ok(e) => {
                        if selected(&e["object"]) && tx.send(line(e)).await.is_err() {
                            return;
                        }
                    }
                    // A watcher that falls this far behind is ended, as the real one is.
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                },
            }
        }
    });
    let body = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(body))
        .unwrap()
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
    let before = node.clone();
    // The status subresource changes only status; the main resource everything but status.
    let mut effective = patch.clone();
    if let Some(m) = effective["metadata"].as_object_mut() {
        m.remove("resourceVersion"); // a precondition, checked above
    }
    if let Some(o) = effective.as_object_mut() {
        if subresource_status {
            o.retain(|k, _| k == "status");
        } else {
            o.remove("status");
        }
    }
    merge(&mut node, &effective, strategic, "");
    // The merged Node is validated as the registry validates an update (apirules::node).
    if let Err(e) = prepuller::apirules::node::validate(&node) {
        return refused(&e);
    }
    if node == before {
        // A patch that changes nothing: no new resourceVersion, no watch event.
        return axum::Json(node).into_response();
    }
    inner.rv += 1;
    node["metadata"]["resourceVersion"] = inner.rv.to_string().into();
    inner.nodes.insert(name.to_string(), node.clone());
    record(&mut inner, &api.changes, "MODIFIED", node.clone());
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

/// `Event.events.k8s.io "NAME" is invalid: ...`, 422, as the API server words it.
fn invalid_event(name: &str, errors: Vec<(&str, String)>) -> Response {
    let causes: Vec<Value> = errors
        .iter()
        .map(|(field, message)| json!({"reason": "FieldValueInvalid", "message": message, "field": field}))
        .collect();
    let summary: Vec<String> = errors.iter().map(|(f, m)| format!("{f}: {m}")).collect();
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        axum::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("Event.events.k8s.io \"{name}\" is invalid: {}", summary.join(", ")),
            "reason": "Invalid", "code": 422,
            "details": {"name": name, "group": "events.k8s.io", "kind": "Event", "causes": causes},
        })),
    )
        .into_response()
}

/// The checks of `ValidateEventCreate` that an events.k8s.io/v1 client can get wrong.
fn validate_event(e: &Value) -> Vec<(&'static str, String)> {
    let mut errors = Vec::new();
    for field in [
        "eventTime",
        "reportingController",
        "reportingInstance",
        "action",
        "reason",
    ] {
        if e[field].as_str().is_none_or(str::is_empty) {
            errors.push((field, "Required value".to_string()));
        }
    }
    if !matches!(e["type"].as_str(), Some("Normal" | "Warning")) {
        errors.push((
            "type",
            format!("Invalid value: \"\": has invalid value: {}", e["type"]),
        ));
    }
    if e["note"].as_str().is_some_and(|n| n.len() > 1024) {
        errors.push((
            "note",
            "Invalid value: \"\": can have at most 1024 characters".into(),
        ));
    }
    errors.extend(validate_series(e));
    errors
}

fn validate_series(e: &Value) -> Vec<(&'static str, String)> {
    let mut errors = Vec::new();
    if e["series"].is_object() {
        if e["series"]["count"].as_i64().is_none_or(|c| c < 2) {
            errors.push((
                "series.count",
                "Invalid value: \"\": should be at least 2".into(),
            ));
        }
        if e["series"]["lastObservedTime"].is_null() {
            errors.push(("series.lastObservedTime", "Required value".into()));
        }
    }
    errors
}

/// Fields an update must not change (`ValidateEventUpdate`, in events.k8s.io/v1 names).
const IMMUTABLE_EVENT_FIELDS: &[&str] = &[
    "regarding",
    "related",
    "reason",
    "note",
    "type",
    "action",
    "eventTime",
    "reportingController",
    "reportingInstance",
    "deprecatedSource",
    "deprecatedFirstTimestamp",
    "deprecatedLastTimestamp",
    "deprecatedCount",
];

async fn create_event(
    State(api): State<FakeApi>,
    UrlPath(ns): UrlPath<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    axum::Json(mut body): axum::Json<Value>,
) -> Response {
    let name = body["metadata"]["name"].as_str().unwrap_or("").to_string();
    body["metadata"]["namespace"] = ns.into();
    let errors = validate_event(&body);
    let r = {
        let mut inner = api.inner.lock().unwrap();
        match inner.events.entry(name.clone()) {
            std::collections::btree_map::Entry::Occupied(_) => status(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("events.events.k8s.io \"{name}\" already exists"),
            ),
            _ if !errors.is_empty() => invalid_event(&name, errors),
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(body.clone());
                (StatusCode::CREATED, axum::Json(body.clone())).into_response()
            }
        }
    };
    api.log(&method, &uri, &headers, &body, r.status().as_u16());
    r
}

async fn patch_event(
    State(api): State<FakeApi>,
    UrlPath((_ns, name)): UrlPath<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let r = {
        let mut inner = api.inner.lock().unwrap();
        match inner.events.get_mut(&name) {
            None => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("events.events.k8s.io \"{name}\" not found"),
            ),
            Some(event) => {
                let mut updated = event.clone();
                merge(&mut updated, &body, false, "");
                let mut errors: Vec<(&str, String)> = IMMUTABLE_EVENT_FIELDS
                    .iter()
                    .filter(|f| updated[**f] != event[**f])
                    .map(|f| {
                        (
                            *f,
                            format!("Invalid value: {}: field is immutable", updated[*f]),
                        )
                    })
                    .collect();
                if updated["series"] != event["series"] {
                    errors.extend(validate_series(&updated));
                }
                if errors.is_empty() {
                    *event = updated.clone();
                    axum::Json(updated).into_response()
                } else {
                    invalid_event(&name, errors)
                }
            }
        }
    };
    api.log(&method, &uri, &headers, &body, r.status().as_u16());
    r
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
