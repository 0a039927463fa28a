//! What kube-apiserver refuses in a Node the agent writes (its label, annotations and startup
//! taint through `PATCH nodes/{name}`), checked on the Node as it would be after the patch, as
//! the registry validates the merged object: `pkg/registry/core/node/strategy.go`
//! `ValidateUpdate` → `pkg/apis/core/validation/validation.go` `ValidateNodeUpdate` →
//! `ValidateNode` (`ValidateObjectMeta`: labels and annotations; `validateNodeTaints`).

use std::collections::BTreeSet;

use serde_json::Value;

use super::Refusal;
use super::selector::{is_label_value, is_qualified_name};

/// apimachinery/pkg/api/validation/objectmeta.go `TotalAnnotationSizeLimitB`: keys and values
/// of all annotations together.
const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

/// validation.go `validateTaintEffect`: the effects a Node's taint may have.
const TAINT_EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// `ValidateNode`'s checks of a patched Node (JSON); 422 Invalid with every error, worded as
/// `apierrors.NewInvalid` words them.
pub fn validate(node: &Value) -> Result<(), Refusal> {
    let mut errors = Vec::new();
    let meta = &node["metadata"];
    // objectmeta.go `ValidateObjectMetaAccessor` → metav1validation.ValidateLabels.
    for (k, v) in meta["labels"].as_object().into_iter().flatten() {
        if !is_qualified_name(k) {
            errors.push(format!("metadata.labels: Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
        }
        if !v.as_str().is_some_and(is_label_value) {
            errors.push(format!("metadata.labels: Invalid value: {v}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
        }
    }
    // objectmeta.go `ValidateAnnotations`: qualified keys, and the total size.
    let mut total = 0;
    for (k, v) in meta["annotations"].as_object().into_iter().flatten() {
        if !is_qualified_name(&k.to_lowercase()) {
            errors.push(format!(
                "metadata.annotations: Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.'"
            ));
        }
        total += k.len() + v.as_str().map_or(0, str::len);
    }
    if total > ANNOTATIONS_MAX_BYTES {
        errors.push(format!(
            "metadata.annotations: Too long: may not be more than {ANNOTATIONS_MAX_BYTES} bytes"
        ));
    }
    // validation.go `validateNodeTaints`: key a qualified name, value a label value, effect one
    // of three (required), unique by (key, effect).
    let mut seen = BTreeSet::new();
    for (i, t) in node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let key = t["key"].as_str().unwrap_or("");
        if !is_qualified_name(key) {
            errors.push(format!(
                "spec.taints[{i}].key: Invalid value: {key:?}: name part must be non-empty"
            ));
        }
        let value = t["value"].as_str().unwrap_or("");
        if !is_label_value(value) {
            errors.push(format!(
                "spec.taints[{i}].value: Invalid value: {value:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.'"
            ));
        }
        let effect = t["effect"].as_str().unwrap_or("");
        if effect.is_empty() {
            errors.push(format!("spec.taints[{i}].effect: Required value"));
        } else if !TAINT_EFFECTS.contains(&effect) {
            errors.push(format!(
                "spec.taints[{i}].effect: Unsupported value: {effect:?}: supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\""
            ));
        }
        if !seen.insert((key.to_string(), effect.to_string())) {
            errors.push(format!(
                "spec.taints[{i}]: Duplicate value: {t}: taints must be unique by key and effect pair"
            ));
        }
    }
    let name = meta["name"].as_str().unwrap_or("");
    Refusal::invalid("Node", name, &errors).map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn what_the_agent_writes_passes_and_what_the_server_refuses_is_refused() {
        let taint = |key: &str, effect: &str| json!({"key": key, "effect": effect});
        let ok = json!({
            "metadata": {"name": "n1",
                "labels": {"prepuller.dev/images-ready": "true", "kubernetes.io/os": "linux"},
                "annotations": {"prepuller.dev/boot": "2026-12-07T00:00:00Z"}},
            "spec": {"taints": [
                taint("startup-taint.cluster-autoscaler.kubernetes.io/prepuller", "NoSchedule"),
                taint("startup-taint.cluster-autoscaler.kubernetes.io/prepuller", "NoExecute"),
            ]},
        });
        assert_eq!(validate(&ok), Ok(()));
        let refused = |mutate: &dyn Fn(&mut Value)| {
            let mut n = ok.clone();
            mutate(&mut n);
            let e = validate(&n).unwrap_err();
            assert_eq!((e.code, e.reason), (422, "Invalid"), "{n}");
            e.message
        };
        let m = refused(&|n| {
            let dup = n["spec"]["taints"][0].clone();
            n["spec"]["taints"].as_array_mut().unwrap().push(dup);
        });
        assert!(
            m.contains("taints must be unique by key and effect pair"),
            "{m}"
        );
        refused(&|n| n["spec"]["taints"][0]["effect"] = "NoRun".into());
        refused(&|n| n["spec"]["taints"][0]["effect"] = Value::Null);
        refused(&|n| n["spec"]["taints"][0]["key"] = "bad key".into());
        refused(&|n| n["spec"]["taints"][0]["value"] = "-x".into());
        refused(&|n| n["metadata"]["labels"]["prepuller.dev/images-ready"] = "not ok".into());
        refused(&|n| n["metadata"]["labels"]["a/b/c"] = "x".into());
        refused(&|n| n["metadata"]["annotations"]["big"] = "x".repeat(256 * 1024).into());
    }
}
