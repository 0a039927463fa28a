//! What kube-apiserver refuses, in one place, for the fakes the tests run against (the fake API
//! of `tests/fake_api` and `examples/fake_apiserver`, and the in-memory Lease API of
//! `fleet::fake`): a fake that accepts what the real server refuses hides bugs that a cluster
//! then finds. Each rule cites the kube-apiserver source it follows. Compiled only for this
//! crate's tests and with the `test-util` feature: never shipped.
//!
//! - [`selector`]: label selectors, parsed and matched with their keys (`=`, `==`, `!=`, `in`,
//!   `notin`, exists, `!key`), as `labels.Parse` does;
//! - [`lease`]: Lease validation and the update preconditions of the generic registry store
//!   (resourceVersion required on update: 422; stale: 409; create of an existing name: 409);
//! - [`node`]: a Node as the agent patches it (labels, annotations, taints: `ValidateNode`);
//! - [`rbac`]: the RBAC authorizer over Roles, ClusterRoles and bindings (as `kubectl
//!   kustomize deploy/` renders them), with the request attributes read from the URL as the
//!   apiserver's `RequestInfoFactory` reads them, and its 403 message.

pub mod lease;
pub mod node;
pub mod rbac;
pub mod selector;

/// How the API server refuses a request: the HTTP status, the Status `reason`, its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct Refusal {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    /// 422 Invalid listing every error, as `apierrors.NewInvalid` words it: `<Kind.group>
    /// "<name>" is invalid: <error>`, the errors in brackets when there are several. `None`
    /// when there is none.
    pub fn invalid(kind: &str, name: &str, errors: &[String]) -> Option<Refusal> {
        let listed = match errors {
            [] => return None,
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        Some(Refusal {
            code: 422,
            reason: "Invalid",
            message: format!("{kind} \"{name}\" is invalid: {listed}"),
        })
    }

    /// The `Status` object the server answers with.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        })
    }
}
