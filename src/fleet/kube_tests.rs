//! `KubeLeases` on kube's client over a `tower-test` mock: the requests it makes (paths, label
//! selector, the resourceVersion precondition) and how answers are classified.

use std::time::Duration;

use axum::http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock;

use super::*;

type MockHandle = mock::Handle<Request<Body>, Response<Body>>;

fn api() -> (KubeLeases, MockHandle) {
    let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "prepuller");
    (KubeLeases::new(client, "prepuller"), handle)
}

fn respond(send: mock::SendResponse<Response<Body>>, code: StatusCode, body: Value) {
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
}

fn status(code: u16, reason: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "message": reason,
           "reason": reason, "code": code})
}

fn lease(rv: &str, holder: Option<&str>) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(slot_name("r.example", 0)),
            namespace: Some("prepuller".into()),
            resource_version: Some(rv.into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: holder.map(Into::into),
            ..LeaseSpec::default()
        }),
    }
}

#[tokio::test]
async fn a_replace_is_a_put_with_the_resource_version_and_a_409_is_a_conflict() {
    let (api, mut handle) = api();
    let call = tokio::spawn(async move { api.replace(&lease("7", Some("node-a"))).await });
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.method(), Method::PUT);
    assert_eq!(
        req.uri().path(),
        format!(
            "/apis/coordination.k8s.io/v1/namespaces/prepuller/leases/{}",
            slot_name("r.example", 0)
        )
    );
    let body = req.into_body().collect_bytes().await.unwrap();
    let sent: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(sent["metadata"]["resourceVersion"], "7");
    assert_eq!(sent["spec"]["holderIdentity"], "node-a");
    respond(send, StatusCode::CONFLICT, status(409, "Conflict"));
    assert_eq!(call.await.unwrap(), Err(ApiError::Conflict));
}

#[tokio::test]
async fn a_list_selects_the_registrys_leases_and_a_403_says_what_rbac_lacks() {
    let (api, mut handle) = api();
    let call = tokio::spawn(async move { api.list(&registry_selector("r.example")).await });
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.method(), Method::GET);
    let query = req.uri().query().unwrap_or_default().to_string();
    assert!(
        query.contains(&format!(
            "labelSelector=prepuller.dev%2Ffleet%3Dslot%2Cprepuller.dev%2Fregistry%3D{}",
            registry_key("r.example")
        )),
        "{query}"
    );
    respond(send, StatusCode::FORBIDDEN, status(403, "Forbidden"));
    let e = call.await.unwrap().unwrap_err();
    assert!(
        matches!(e, ApiError::Forbidden { verb: "list", .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("lacks `list` on `leases`"), "{e}");
}

/// An API server that takes the request and never answers (a partition; kube's own client also
/// retries 503s for a while): the call fails after 10 s, so a waiting node counts it towards
/// `onUnavailable` instead of waiting through the outage.
#[tokio::test(start_paused = true)]
async fn a_call_that_gets_no_answer_fails_after_10s() {
    let (api, mut handle) = api();
    let call = tokio::spawn(async move { api.list("prepuller.dev/fleet=slot").await });
    let (_req, _never_answered) = handle.next_request().await.unwrap();
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(!call.is_finished());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let err = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("still waiting for an answer after 70 s")
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, ApiError::Unavailable { verb: "list", .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("no answer within 10s"), "{err}");
}
