//! The stateful fake Kubernetes API (`tests/fake_api`) as its own process, over TLS: what the
//! acceptance tests (`tests/acceptance.rs`) run the shipped binary against.
//!
//!   cargo run --example fake_apiserver -- --dir DIR [--rbac FILE]
//!
//! Serves the API on `https://127.0.0.1:<free port>` and writes `DIR/kubeconfig` (the CA as
//! `certificate-authority-data`, the agent's bearer token) and `DIR/kubeconfig-operator` (the
//! operator's). With `--rbac FILE` (manifests, e.g. `kubectl kustomize deploy/`), every request
//! of the agent's tokens is authorized by their Roles and bindings as the ServiceAccount
//! `prepuller:prepuller` (a denial: 403 with the real message, in the log and on stderr); the
//! operator's token is not checked. A plain-HTTP control listener on another free loopback
//! port seeds and reads the state:
//!
//!   PUT /nodes              body: a Node (JSON), added or replaced
//!   PUT /secrets            body: a Secret (JSON)
//!   GET /nodes/{name}       the stored Node
//!   GET /events             the stored Events
//!   GET /requests           the request log: [{method, path, query, contentType, body, status,
//!                           client}]
//!   GET /leases             the stored Leases
//!   POST /kubeconfigs/{c}   writes DIR/kubeconfig-{c}, whose token names client `c` in the log;
//!                           answers {"kubeconfig": path}
//!   POST /down, POST /up    the API refuses everything (503, new connections closed) / serves
//!                           again, state kept: an API server outage
//!   POST /compact           history compacted: open watches end, and one resuming from an
//!                           older resourceVersion gets 410 Expired (as after etcd's compaction)
//!   POST /watch-timeout/{s} every watch ends after `s` seconds at most, whatever it asked
//!
//! Once both listen it prints one JSON line on stdout, `{"server", "control", "kubeconfig",
//! "operatorKubeconfig"}`, and serves until killed.

#[path = "../tests/fake_api/mod.rs"]
mod fake_api;

use std::path::PathBuf;
use std::process::ExitCode;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use fake_api::FakeApi;
use fake_api::tls::TlsFakeApi;
use serde_json::{Value, json};

const USAGE: &str = "usage: fake_apiserver --dir DIR [--rbac FILE]";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, rbac) = match args.as_slice() {
        [flag, dir] if flag == "--dir" => (PathBuf::from(dir), None),
        [flag, dir, rbac, file] if flag == "--dir" && rbac == "--rbac" => {
            let rules = std::fs::read_to_string(file)
                .map_err(|e| e.to_string())
                .and_then(|text| prepuller::apirules::rbac::Rbac::from_yaml(&text));
            match rules {
                Ok(r) => (PathBuf::from(dir), Some(r)),
                Err(e) => {
                    eprintln!("fake_apiserver: --rbac {file}: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        [flag] if flag == "-h" || flag == "--help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("fake_apiserver: cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let (api_listener, control_listener) = match (
        tokio::net::TcpListener::bind("127.0.0.1:0").await,
        tokio::net::TcpListener::bind("127.0.0.1:0").await,
    ) {
        (Ok(a), Ok(c)) => (a, c),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("fake_apiserver: cannot listen on 127.0.0.1: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tls = TlsFakeApi::serve_with(api_listener, rbac);
    let kubeconfig = tls.kubeconfig(&dir);
    let operator_kubeconfig = tls.operator_kubeconfig(&dir);
    let control = format!("http://{}", control_listener.local_addr().unwrap());

    let router = Router::new()
        .route("/nodes", put(put_node))
        .route("/secrets", put(put_secret))
        .route("/nodes/{name}", get(node))
        .route("/events", get(events))
        .route("/requests", get(requests))
        .route("/leases", get(leases))
        .route("/down", post(down))
        .route("/up", post(up))
        .route("/compact", post(compact))
        .route("/watch-timeout/{seconds}", post(watch_timeout))
        .with_state(tls.api.clone());
    let tls = std::sync::Arc::new(tls);
    let kubeconfigs = Router::new()
        .route("/kubeconfigs/{client}", post(kubeconfig_for))
        .with_state((tls.clone(), dir.clone()));
    let router = router.merge(kubeconfigs);
    println!(
        "{}",
        json!({
            "server": tls.api.url, "control": control, "kubeconfig": kubeconfig,
            "operatorKubeconfig": operator_kubeconfig,
        })
    );
    if let Err(e) = axum::serve(control_listener, router).await {
        eprintln!("fake_apiserver: control listener failed: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

async fn put_node(State(api): State<FakeApi>, axum::Json(node): axum::Json<Value>) -> Response {
    if !node["metadata"]["name"].is_string() {
        return (StatusCode::BAD_REQUEST, "a Node needs metadata.name\n").into_response();
    }
    api.put_node(node);
    StatusCode::NO_CONTENT.into_response()
}

async fn put_secret(State(api): State<FakeApi>, axum::Json(secret): axum::Json<Value>) -> Response {
    if !secret["metadata"]["name"].is_string() || !secret["metadata"]["namespace"].is_string() {
        return (
            StatusCode::BAD_REQUEST,
            "a Secret needs metadata.namespace and metadata.name\n",
        )
            .into_response();
    }
    api.put_secret(secret);
    StatusCode::NO_CONTENT.into_response()
}

async fn node(State(api): State<FakeApi>, Path(name): Path<String>) -> Response {
    // FakeApi::node panics on an unknown name; the control surface answers 404 instead.
    match api
        .nodes()
        .into_iter()
        .find(|n| n["metadata"]["name"] == name.as_str())
    {
        Some(n) => axum::Json(n).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no node {name}\n")).into_response(),
    }
}

async fn events(State(api): State<FakeApi>) -> Response {
    axum::Json(api.events()).into_response()
}

async fn requests(State(api): State<FakeApi>) -> Response {
    let log: Vec<Value> = api.requests().iter().map(|r| r.json()).collect();
    axum::Json(log).into_response()
}

async fn leases(State(api): State<FakeApi>) -> Response {
    axum::Json(api.leases()).into_response()
}

async fn down(State(api): State<FakeApi>) -> Response {
    api.set_down(true);
    StatusCode::NO_CONTENT.into_response()
}

async fn up(State(api): State<FakeApi>) -> Response {
    api.set_down(false);
    StatusCode::NO_CONTENT.into_response()
}

async fn compact(State(api): State<FakeApi>) -> Response {
    api.compact();
    StatusCode::NO_CONTENT.into_response()
}

async fn watch_timeout(State(api): State<FakeApi>, Path(seconds): Path<u64>) -> Response {
    api.set_watch_timeout(std::time::Duration::from_secs(seconds));
    StatusCode::NO_CONTENT.into_response()
}

async fn kubeconfig_for(
    State((tls, dir)): State<(std::sync::Arc<TlsFakeApi>, PathBuf)>,
    Path(client): Path<String>,
) -> Response {
    if client.is_empty()
        || !client
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return (StatusCode::BAD_REQUEST, "a client is [A-Za-z0-9-]+\n").into_response();
    }
    let path = tls.kubeconfig_for(&dir, &client);
    axum::Json(json!({"kubeconfig": path})).into_response()
}
