//! `coordination.k8s.io/v1` Leases, namespaced, refused as kube-apiserver refuses them (the
//! rules, with the source each follows, are `prepuller::apirules::lease`, shared with
//! `fleet::fake`): an invalid Lease (`leaseDurationSeconds` <= 0, `leaseTransitions` < 0, a bad
//! name or label) is 422 Invalid; a create of an existing name is 409 AlreadyExists; an update
//! (PUT) without `metadata.resourceVersion` is 422 Invalid ("must be specified for an update":
//! the Lease strategy does not allow unconditional updates), with a stale one 409 Conflict, and
//! to a name that does not exist creates it (`AllowCreateOnUpdate`); a merge patch is
//! unconditional unless it carries a resourceVersion. Every change gets a new resourceVersion
//! and goes to watchers (ADDED, MODIFIED, DELETED), in the same history and with the same 410
//! and bookmark behaviour as Nodes; label selectors are parsed with their keys.

use std::collections::BTreeMap;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use prepuller::apirules::lease::{self as rules, Put};

use super::{FakeApi, label_selector, merge, record, refused, status, watch};

fn key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

fn not_found(name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("leases.coordination.k8s.io \"{name}\" not found"),
    )
}

fn conflict(name: &str) -> Response {
    status(
        StatusCode::CONFLICT,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
        ),
    )
}

impl FakeApi {
    /// Every Lease, in "namespace/name" order.
    pub fn leases(&self) -> Vec<Value> {
        self.inner
            .lock()
            .unwrap()
            .leases
            .values()
            .cloned()
            .collect()
    }

    /// Requests that changed something (not GET), by client.
    pub fn writes_by_client(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for r in self.requests().iter().filter(|r| r.is_write()) {
            *counts.entry(r.client.clone()).or_default() += 1;
        }
        counts
    }
}

pub(super) async fn list_or_watch(
    State(api): State<FakeApi>,
    UrlPath(ns): UrlPath<String>,
    Query(q): Query<BTreeMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let labels = match label_selector(&q) {
        Ok(l) => l,
        Err(e) => {
            api.log(&method, &uri, &headers, &Value::Null, 400);
            return refused(&e);
        }
    };
    let name = q
        .get("fieldSelector")
        .and_then(|f| f.strip_prefix("metadata.name="))
        .map(str::to_string);
    let selected = move |l: &Value| {
        l["metadata"]["namespace"] == ns.as_str()
            && name
                .as_ref()
                .is_none_or(|n| l["metadata"]["name"] == n.as_str())
            && labels.matches_json(&l["metadata"]["labels"])
    };
    if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) {
        return watch(api, &q, &uri, &headers, "Lease", selected);
    }
    api.log(&method, &uri, &headers, &Value::Null, 200);
    let inner = api.inner.lock().unwrap();
    let items: Vec<Value> = inner
        .leases
        .values()
        .filter(|l| selected(l))
        .cloned()
        .collect();
    axum::Json(json!({
        "kind": "LeaseList", "apiVersion": "coordination.k8s.io/v1",
        "metadata": {"resourceVersion": inner.rv.to_string()},
        "items": items,
    }))
    .into_response()
}

pub(super) async fn get(
    State(api): State<FakeApi>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let lease = api
        .inner
        .lock()
        .unwrap()
        .leases
        .get(&key(&ns, &name))
        .cloned();
    let r = match lease {
        Some(l) => axum::Json(l).into_response(),
        None => not_found(&name),
    };
    api.log(&method, &uri, &headers, &Value::Null, r.status().as_u16());
    r
}

pub(super) async fn create(
    State(api): State<FakeApi>,
    UrlPath(ns): UrlPath<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let name = body["metadata"]["name"].as_str().unwrap_or("").to_string();
    let r = create_named(&api, &ns, &name, &body);
    api.log(&method, &uri, &headers, &body, r.status().as_u16());
    r
}

/// A create (POST, or a PUT to a name that does not exist) of `body` as `ns/name`.
fn create_named(api: &FakeApi, ns: &str, name: &str, body: &Value) -> Response {
    // Validation (strategy.go `Validate`) comes before the store's AlreadyExists.
    if let Err(e) = rules::validate(body) {
        return refused(&e);
    }
    let mut inner = api.inner.lock().unwrap();
    if inner.leases.contains_key(&key(ns, name)) {
        return refused(&rules::already_exists(name));
    }
    inner.rv += 1;
    let mut lease = body.clone();
    lease["apiVersion"] = "coordination.k8s.io/v1".into();
    lease["kind"] = "Lease".into();
    let m = &mut lease["metadata"];
    m["namespace"] = ns.into();
    m["resourceVersion"] = inner.rv.to_string().into();
    m["uid"] = format!("uid-lease-{ns}-{name}-{}", inner.rv).into();
    m["creationTimestamp"] = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .into();
    inner.leases.insert(key(ns, name), lease.clone());
    record(&mut inner, &api.changes, "ADDED", lease.clone());
    (StatusCode::CREATED, axum::Json(lease)).into_response()
}

/// Replaces (PUT) or merge-patches (PATCH) a Lease, with the resourceVersion precondition.
fn change(api: &FakeApi, ns: &str, name: &str, body: &Value, replace: bool) -> Response {
    let mut inner = api.inner.lock().unwrap();
    let given = body["metadata"]["resourceVersion"].as_str();
    let stored = inner.leases.get(&key(ns, name)).cloned();
    let current = match (replace, stored) {
        (true, stored) => {
            let stored_rv = stored
                .as_ref()
                .map(|l| l["metadata"]["resourceVersion"].as_str().unwrap_or(""));
            match rules::update_precondition(name, stored_rv, given) {
                Err(e) => return refused(&e),
                Ok(Put::Create) => {
                    drop(inner);
                    return create_named(api, ns, name, body);
                }
                Ok(Put::Update) => stored.unwrap(),
            }
        }
        (false, None) => return not_found(name),
        (false, Some(current)) => {
            // A patch is unconditional unless it carries a resourceVersion.
            if given.is_some_and(|rv| current["metadata"]["resourceVersion"].as_str() != Some(rv)) {
                return conflict(name);
            }
            current
        }
    };
    let mut lease = if replace {
        body.clone()
    } else {
        let mut l = current.clone();
        merge(&mut l, body, false, "");
        l
    };
    lease["apiVersion"] = "coordination.k8s.io/v1".into();
    lease["kind"] = "Lease".into();
    for field in ["namespace", "name", "uid", "creationTimestamp"] {
        lease["metadata"][field] = current["metadata"][field].clone();
    }
    lease["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
    if let Err(e) = rules::validate(&lease) {
        return refused(&e);
    }
    if lease == current {
        return axum::Json(current).into_response();
    }
    inner.rv += 1;
    lease["metadata"]["resourceVersion"] = inner.rv.to_string().into();
    inner.leases.insert(key(ns, name), lease.clone());
    record(&mut inner, &api.changes, "MODIFIED", lease.clone());
    axum::Json(lease).into_response()
}

pub(super) async fn update(
    State(api): State<FakeApi>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let r = change(&api, &ns, &name, &body, true);
    api.log(&method, &uri, &headers, &body, r.status().as_u16());
    r
}

pub(super) async fn patch(
    State(api): State<FakeApi>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let r = if ct == "application/merge-patch+json" {
        change(&api, &ns, &name, &body, false)
    } else {
        status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the fake API implements only merge patches of Leases, not {ct}"),
        )
    };
    api.log(&method, &uri, &headers, &body, r.status().as_u16());
    r
}

pub(super) async fn delete(
    State(api): State<FakeApi>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let r = {
        let mut inner = api.inner.lock().unwrap();
        match inner.leases.remove(&key(&ns, &name)) {
            None => not_found(&name),
            Some(mut lease) => {
                inner.rv += 1;
                lease["metadata"]["resourceVersion"] = inner.rv.to_string().into();
                record(&mut inner, &api.changes, "DELETED", lease.clone());
                axum::Json(lease).into_response()
            }
        }
    };
    api.log(&method, &uri, &headers, &Value::Null, r.status().as_u16());
    r
}
