//! The HTTP outlet: probes (`/livez`, `/readyz`), the status as JSON (`/status`) and the
//! Prometheus metrics (`/metrics`). Every handler reads a snapshot of the [`StatusHub`].

mod listener;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub use listener::{
    HEADER_READ_TIMEOUT, MAX_CONNECTIONS, MAX_HEAD_BYTES, MAX_HEADERS, bind, serve,
};

use super::metrics::{self, Metrics};
use super::{AgentStatus, StatusHub};

/// Missing images named in a `/readyz` answer; probes log the body, keep it short.
const MAX_NAMED: usize = 10;

#[derive(Clone)]
struct AppState {
    hub: Arc<StatusHub>,
    metrics: Arc<Metrics>,
}

pub fn router(hub: Arc<StatusHub>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics_handler))
        .with_state(AppState { hub, metrics })
}

/// How long a runtime that had answered may stay silent before `/livez` fails.
pub const RUNTIME_LOST_LIVENESS: Duration = Duration::from_secs(5 * 60);

/// Answering is the liveness signal, with one exception. The runtime socket is a hostPath
/// mount of a file: when containerd or CRI-O restarts and re-creates its socket, the mount
/// keeps the old, dead one, and only a container restart mounts the new one. So a runtime that
/// answered and then stayed silent for `RUNTIME_LOST_LIVENESS` fails the probe. A runtime that
/// never answered (still starting) does not: the kubelet would then restart us for nothing.
async fn livez(State(s): State<AppState>) -> (StatusCode, String) {
    let lost = s
        .hub
        .snapshot_runtime()
        .lost_at
        .and_then(|t| t.elapsed().ok())
        .filter(|d| *d >= RUNTIME_LOST_LIVENESS);
    match lost {
        Some(d) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the container runtime has not answered for {}s; a restart re-mounts its socket (it may have been re-created)",
                d.as_secs()
            ),
        ),
        None => (StatusCode::OK, "ok".into()),
    }
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, String) {
    let snap = s.hub.snapshot();
    if snap.ready {
        let (present, total) = snap.required_counts();
        (
            StatusCode::OK,
            format!("ready: {present}/{total} required images present"),
        )
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, not_ready_reason(&snap))
    }
}

/// Why the node is not ready, in the order `ready` is decided: the first failing condition.
fn not_ready_reason(s: &AgentStatus) -> String {
    if s.shutting_down {
        "not ready: shutting down".to_owned()
    } else if !s.runtime.reachable {
        let mut m = format!("not ready: runtime unreachable at {}", s.runtime.endpoint);
        if let Some(e) = &s.runtime.last_error {
            let _ = write!(m, ": {e}");
        }
        m
    } else if s.config.generation == 0 {
        let mut m = "not ready: no config applied yet".to_owned();
        if let Some(e) = &s.config.last_error {
            let _ = write!(m, " (last error: {e})");
        }
        m
    } else {
        let missing = s.missing_required();
        let (_, total) = s.required_counts();
        if missing.is_empty() {
            // Cannot happen while the hub computes `ready` from these same conditions.
            "not ready".to_owned()
        } else {
            let mut m = format!(
                "missing {}/{total} required images: {}",
                missing.len(),
                missing[..missing.len().min(MAX_NAMED)].join(", ")
            );
            if missing.len() > MAX_NAMED {
                let _ = write!(m, " … and {} more", missing.len() - MAX_NAMED);
            }
            m
        }
    }
}

async fn status(State(s): State<AppState>) -> Response {
    // Pretty: the main reader is a person with curl.
    match serde_json::to_string_pretty(&s.hub.snapshot()) {
        Ok(mut body) => {
            body.push('\n');
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    let body = s.metrics.render();
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::ImageState;
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use tower::ServiceExt;

    use crate::status::test_image as image;

    fn setup() -> (Arc<StatusHub>, Router) {
        let hub = Arc::new(StatusHub::new(
            Some("node-a".into()),
            "/etc/prepuller/images.yaml".into(),
            "unix:///run/containerd/containerd.sock".into(),
        ));
        let app = router(hub.clone(), Arc::new(Metrics::new(hub.clone())));
        (hub, app)
    }

    async fn get(app: &Router, path: &str) -> (StatusCode, Option<String>, String) {
        let resp = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let code = resp.status();
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        (code, ctype, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn livez_answers() {
        let (_, app) = setup();
        let (code, _, body) = get(&app, "/livez").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body, "ok");
        assert_eq!(get(&app, "/nope").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn livez_fails_only_when_a_runtime_that_answered_stays_silent() {
        // The README's figure, pinned: the checks below are relative to it.
        assert_eq!(
            RUNTIME_LOST_LIVENESS,
            std::time::Duration::from_secs(5 * 60)
        );
        let (hub, app) = setup();
        hub.update(|s| s.runtime.reachable = false);
        assert_eq!(
            get(&app, "/livez").await.0,
            StatusCode::OK,
            "never answered yet"
        );
        let lost = std::time::SystemTime::now() - RUNTIME_LOST_LIVENESS / 2;
        hub.update(|s| s.runtime.lost_at = Some(lost));
        assert_eq!(
            get(&app, "/livez").await.0,
            StatusCode::OK,
            "a short outage"
        );
        let lost = std::time::SystemTime::now() - RUNTIME_LOST_LIVENESS;
        hub.update(|s| s.runtime.lost_at = Some(lost));
        let (code, _, body) = get(&app, "/livez").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("re-mounts its socket"), "{body}");
    }

    #[tokio::test]
    async fn readyz_follows_the_status() {
        let (hub, app) = setup();

        hub.update(|s| s.runtime.last_error = Some("connection refused".into()));
        let (code, _, body) = get(&app, "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("runtime unreachable"), "{body}");
        assert!(body.contains("connection refused"), "{body}");

        hub.update(|s| {
            s.runtime.reachable = true;
            s.runtime.last_error = None;
        });
        let (code, _, body) = get(&app, "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("no config applied yet"), "{body}");

        hub.update(|s| {
            s.config.generation = 1;
            s.images = vec![
                image("docker.io/library/a:1", true, ImageState::Present),
                image("docker.io/library/b:1", true, ImageState::Pulling),
                image("docker.io/library/c:1", true, ImageState::Failed),
                image("docker.io/library/d:1", false, ImageState::Failed),
            ];
        });
        let (code, _, body) = get(&app, "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body.trim_end(),
            "missing 2/3 required images: docker.io/library/b:1, docker.io/library/c:1"
        );

        hub.update(|s| {
            for i in &mut s.images[..3] {
                i.state = ImageState::Present;
            }
        });
        let (code, _, body) = get(&app, "/readyz").await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(body.trim_end(), "ready: 3/3 required images present");

        hub.begin_shutdown();
        let (code, _, body) = get(&app, "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("shutting down"), "{body}");
    }

    #[tokio::test]
    async fn readyz_names_at_most_ten_missing_images() {
        let (hub, app) = setup();
        hub.update(|s| {
            s.runtime.reachable = true;
            s.config.generation = 1;
            s.images = (0..13)
                .map(|n| image(&format!("img{n:02}"), true, ImageState::Waiting))
                .collect();
        });
        let (code, _, body) = get(&app, "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.starts_with("missing 13/13 required images: img00, "),
            "{body}"
        );
        assert!(body.contains("img09 … and 3 more"), "{body}");
        assert!(!body.contains("img10"), "{body}");
    }

    #[tokio::test]
    async fn status_is_camel_case_json() {
        let (hub, app) = setup();
        hub.update(|s| {
            s.runtime.reachable = true;
            s.config.generation = 2;
            let mut i = image("docker.io/library/a:1", true, ImageState::BackingOff);
            i.last_error = Some("429 Too Many Requests".into());
            i.last_error_class = Some(crate::status::ErrorClass::Transient);
            i.next_retry_at = Some("2030-01-01T00:00:00Z".into());
            s.images = vec![i];
        });
        let (code, ctype, body) = get(&app, "/status").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(ctype.as_deref(), Some("application/json"));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["ready"], false);
        assert_eq!(v["node"], "node-a");
        assert_eq!(v["shuttingDown"], false);
        assert_eq!(v["config"]["generation"], 2);
        assert_eq!(v["config"]["source"], "/etc/prepuller/images.yaml");
        assert_eq!(v["runtime"]["reachable"], true);
        let img = &v["images"][0];
        assert_eq!(img["state"], "BackingOff");
        assert_eq!(img["lastErrorClass"], "transient");
        assert_eq!(img["nextRetryAt"], "2030-01-01T00:00:00Z");
        assert!(img.get("last_error").is_none(), "{img}");
    }

    #[tokio::test]
    async fn metrics_are_openmetrics_text() {
        let hub = Arc::new(StatusHub::new(None, "c.yaml".into(), "unix:///x".into()));
        let metrics = Arc::new(Metrics::new(hub.clone()));
        let app = router(hub.clone(), metrics.clone());
        metrics.observe_pull_failure("not_found", crate::status::ErrorClass::Permanent);
        hub.update(|s| {
            s.runtime.reachable = true;
            s.config.generation = 1;
            s.images = vec![image("a", true, ImageState::Present)];
        });

        let (code, ctype, body) = get(&app, "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(ctype.as_deref(), Some(metrics::CONTENT_TYPE));
        for family in [
            "prepuller_pull_duration_seconds",
            "prepuller_pulls",
            "prepuller_pull_failures",
            "prepuller_pulled_bytes",
            "prepuller_images",
            "prepuller_node_ready",
            "prepuller_runtime_up",
            "prepuller_config_reloads",
            "prepuller_config_generation",
        ] {
            assert!(
                body.contains(&format!("# TYPE {family} ")),
                "{family}: {body}"
            );
        }
        assert!(
            body.lines().any(|l| l == "prepuller_node_ready 1"),
            "{body}"
        );
        assert!(body.contains("prepuller_pull_failures_total{"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
    }
}
