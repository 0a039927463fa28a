//! `coordination.k8s.io/v1` Leases: what the API server accepts on create and update.
//!
//! - pkg/registry/coordination/lease/strategy.go: `AllowCreateOnUpdate() == true` (a PUT to a
//!   name that does not exist creates it), `AllowUnconditionalUpdate() == false` (a PUT must
//!   carry `metadata.resourceVersion`), `Validate`/`ValidateUpdate` call the validation below.
//! - pkg/apis/coordination/validation/validation.go `ValidateLease`/`ValidateLeaseSpec`:
//!   `metadata.name` a DNS subdomain, `leaseDurationSeconds > 0`, `leaseTransitions >= 0`,
//!   `preferredHolder` only with a `strategy`, `strategy` a known or qualified name; and
//!   (apimachinery/pkg/api/validation/objectmeta.go `ValidateObjectMeta`) valid label keys and
//!   values.
//! - staging/src/k8s.io/apiserver/pkg/registry/generic/registry/store.go `Store.Update`: no
//!   resourceVersion with `AllowUnconditionalUpdate() == false` is 422 Invalid
//!   ("metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"), a
//!   resourceVersion other than the stored one is 409 Conflict (`OptimisticLockErrorMsg`);
//!   `Store.Create` of a name that exists is 409 AlreadyExists.

use serde_json::Value;

use super::Refusal;
use super::selector::{is_dns_subdomain, is_label_value, is_qualified_name};

/// store.go `OptimisticLockErrorMsg`.
pub const OPTIMISTIC_LOCK: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

/// What a PUT of a Lease does, once its preconditions hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// The name does not exist: created (strategy.go `AllowCreateOnUpdate`).
    Create,
    Update,
}

/// store.go `Store.Update`'s preconditions for a Lease named `name` whose stored
/// resourceVersion is `stored` (`None`: there is none), given the body's `given`.
pub fn update_precondition(
    name: &str,
    stored: Option<&str>,
    given: Option<&str>,
) -> Result<Put, Refusal> {
    let Some(stored) = stored else {
        return Ok(Put::Create);
    };
    // The versioner reads "" (and no field) as 0.
    match given.filter(|rv| !rv.is_empty() && *rv != "0") {
        None => Err(Refusal {
            code: 422,
            reason: "Invalid",
            // qualifiedKind is GroupKind{Group: the resource's group, Kind: the resource}.
            message: format!(
                "leases.coordination.k8s.io \"{name}\" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
            ),
        }),
        Some(rv) if rv != stored => Err(conflict(name)),
        Some(_) => Ok(Put::Update),
    }
}

/// 409 Conflict on `name` (store.go, `apierrors.NewConflict`).
pub fn conflict(name: &str) -> Refusal {
    Refusal {
        code: 409,
        reason: "Conflict",
        message: format!(
            "Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": {OPTIMISTIC_LOCK}"
        ),
    }
}

/// store.go `Store.Create` of a name that exists (`apierrors.NewAlreadyExists`).
pub fn already_exists(name: &str) -> Refusal {
    Refusal {
        code: 409,
        reason: "AlreadyExists",
        message: format!("leases.coordination.k8s.io \"{name}\" already exists"),
    }
}

/// 404 (`apierrors.NewNotFound`).
pub fn not_found(name: &str) -> Refusal {
    Refusal {
        code: 404,
        reason: "NotFound",
        message: format!("leases.coordination.k8s.io \"{name}\" not found"),
    }
}

/// validation.go `ValidateLease` (and `ValidateObjectMeta`'s name and label checks) of a Lease
/// as JSON; 422 Invalid with every error, as `apierrors.NewInvalid` words it.
pub fn validate(lease: &Value) -> Result<(), Refusal> {
    let mut errors: Vec<String> = Vec::new();
    let name = lease["metadata"]["name"].as_str().unwrap_or("");
    if name.is_empty() {
        errors.push("metadata.name: Required value: name or generateName is required".into());
    } else if !is_dns_subdomain(name) {
        errors.push(format!(
            "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        ));
    }
    if let Some(labels) = lease["metadata"]["labels"].as_object() {
        for (k, v) in labels {
            if !is_qualified_name(k) {
                errors.push(format!("metadata.labels: Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.'"));
            }
            match v.as_str() {
                Some(v) if is_label_value(v) => {}
                _ => errors.push(format!(
                    "metadata.labels: Invalid value: {v}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
                )),
            }
        }
    }
    let spec = &lease["spec"];
    if let Some(d) = spec["leaseDurationSeconds"].as_i64()
        && d <= 0
    {
        errors.push(format!(
            "spec.leaseDurationSeconds: Invalid value: {d}: must be greater than 0"
        ));
    }
    if let Some(t) = spec["leaseTransitions"].as_i64()
        && t < 0
    {
        errors.push(format!(
            "spec.leaseTransitions: Invalid value: {t}: must be greater than or equal to 0"
        ));
    }
    let strategy = spec["strategy"].as_str().filter(|s| !s.is_empty());
    if let Some(s) = strategy {
        // validLeaseStrategies, or a qualified name with a prefix.
        let ok = s == "OldestEmulationVersion" || (s.contains('/') && is_qualified_name(s));
        if !ok {
            errors.push(format!(
                "spec.strategy.strategy: Unsupported value: {s:?}: supported values: \"OldestEmulationVersion\""
            ));
        }
    }
    if spec["preferredHolder"]
        .as_str()
        .is_some_and(|h| !h.is_empty())
        && strategy.is_none()
    {
        errors.push(
            "spec.preferredHolder: Forbidden: may only be specified if `strategy` is defined"
                .into(),
        );
    }
    Refusal::invalid("Lease.coordination.k8s.io", name, &errors).map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_update_needs_the_current_resource_version() {
        let e = update_precondition("slot-0", Some("5"), None).unwrap_err();
        assert_eq!(e.code, 422);
        assert!(
            e.message.ends_with(
                "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
            ),
            "{e}"
        );
        assert_eq!(
            update_precondition("slot-0", Some("5"), Some(""))
                .unwrap_err()
                .code,
            422
        );
        assert_eq!(
            update_precondition("slot-0", Some("5"), Some("4"))
                .unwrap_err()
                .code,
            409
        );
        assert_eq!(
            update_precondition("slot-0", Some("5"), Some("5")),
            Ok(Put::Update)
        );
        assert_eq!(
            update_precondition("slot-0", None, Some("4")),
            Ok(Put::Create)
        );
    }

    #[test]
    fn lease_specs_are_validated() {
        let ok = json!({"metadata": {"name": "prepuller-ab-0", "labels": {"prepuller.dev/fleet": "slot"}},
                        "spec": {"leaseDurationSeconds": 10, "leaseTransitions": 0}});
        assert_eq!(validate(&ok), Ok(()));
        for bad in [
            json!({"metadata": {"name": "x"}, "spec": {"leaseDurationSeconds": 0}}),
            json!({"metadata": {"name": "x"}, "spec": {"leaseTransitions": -1}}),
            json!({"metadata": {"name": "x"}, "spec": {"preferredHolder": "a"}}),
            json!({"metadata": {"name": "x"}, "spec": {"strategy": "Newest"}}),
            json!({"metadata": {"name": "Upper"}, "spec": {}}),
            json!({"metadata": {}, "spec": {}}),
            json!({"metadata": {"name": "x", "labels": {"k": "-bad"}}, "spec": {}}),
        ] {
            let e = validate(&bad).unwrap_err();
            assert_eq!((e.code, e.reason), (422, "Invalid"), "{bad}");
        }
    }
}
