//! The images of one Kubernetes object: the pod template of a workload (with the images its
//! containers' arguments name), every item of a `List`, the image specs of a Redis Enterprise
//! cluster, a cass-operator `ImageConfig` (or a ConfigMap holding one), and the `image` fields of
//! any other kind (a `Prometheus`' `spec.image`).

use serde_json::{Map, Value};

use super::{
    Found, ManifestError, Place, PullSecret, UseSpec, imageconfig, join, kind_of, policy_field,
};
use crate::reference::ImageRef;

/// Where each workload kind keeps its pod spec.
const POD_SPECS: &[(&str, &[&str])] = &[
    ("Pod", &["spec"]),
    ("PodTemplate", &["template", "spec"]),
    ("Deployment", &["spec", "template", "spec"]),
    ("StatefulSet", &["spec", "template", "spec"]),
    ("DaemonSet", &["spec", "template", "spec"]),
    ("ReplicaSet", &["spec", "template", "spec"]),
    ("ReplicationController", &["spec", "template", "spec"]),
    ("Job", &["spec", "template", "spec"]),
    (
        "CronJob",
        &["spec", "jobTemplate", "spec", "template", "spec"],
    ),
];

/// The Redis Enterprise operator's cluster resource.
const REC_KIND: &str = "RedisEnterpriseCluster";
const REC_GROUP: &str = "app.redislabs.com/";

/// The image specs every cluster has, and the image each defaults to.
const REC_IMAGE_SPECS: &[(&str, &str)] = &[
    ("redisEnterpriseImageSpec", "redislabs/redis"),
    ("bootstrapperImageSpec", "redislabs/operator"),
    (
        "redisEnterpriseServicesRiggerImageSpec",
        "redislabs/k8s-controller",
    ),
];

/// Reads one object (`path` is its field path inside the document: empty, or `items[3]`).
pub(super) fn object(
    found: &mut Found,
    place: &Place,
    value: &Value,
    path: &str,
) -> Result<(), ManifestError> {
    let Value::Object(obj) = value else {
        return Err(place.error(
            None,
            path,
            format!(
                "expected a Kubernetes object (a mapping with `kind`), found {}",
                kind_of(value)
            ),
        ));
    };
    let kind = match obj.get("kind") {
        Some(Value::String(k)) => k.as_str(),
        Some(other) => {
            return Err(place.error(
                None,
                &join(path, "kind"),
                format!("expected a string, found {}", kind_of(other)),
            ));
        }
        None => {
            return Err(place.error(
                None,
                &join(path, "kind"),
                "missing: not a Kubernetes object (a Helm values file goes with --values)",
            ));
        }
    };
    let namespace = meta_str(obj, "namespace");
    let name = meta_str(obj, "name");
    let object_name = match (&namespace, &name) {
        (Some(ns), Some(n)) => format!("{kind} {ns}/{n}"),
        (None, Some(n)) => format!("{kind} {n}"),
        _ => kind.to_string(),
    };

    if kind.ends_with("List") && obj.contains_key("items") {
        let items_path = join(path, "items");
        let items = match obj.get("items") {
            Some(Value::Array(items)) => items,
            Some(Value::Null) => return Ok(()),
            Some(other) => {
                return Err(place.error(
                    None,
                    &items_path,
                    format!("expected a list, found {}", kind_of(other)),
                ));
            }
            None => unreachable!("checked above"),
        };
        for (i, item) in items.iter().enumerate() {
            object(found, place, item, &format!("{items_path}[{i}]"))?;
        }
        return Ok(());
    }

    if let Some((_, spec_path)) = POD_SPECS.iter().find(|(k, _)| *k == kind) {
        let mut field = path.to_string();
        let mut spec = value;
        for key in *spec_path {
            field = join(&field, key);
            spec = match spec.get(key) {
                Some(v) => v,
                // A template without a spec declares no image.
                None => {
                    *found.objects.entry(kind.to_string()).or_default() += 1;
                    return Ok(());
                }
            };
        }
        pod_spec(
            found,
            place,
            &object_name,
            namespace.as_deref(),
            spec,
            &field,
        )?;
        *found.objects.entry(kind.to_string()).or_default() += 1;
        return Ok(());
    }

    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if kind == REC_KIND && api_version.starts_with(REC_GROUP) {
        redis_enterprise_cluster(found, place, &object_name, namespace.as_deref(), obj, path)?;
        *found.objects.entry(kind.to_string()).or_default() += 1;
        return Ok(());
    }

    if imageconfig::is_image_config(value) {
        imageconfig::read(found, place, Some(&object_name), &object_name, value, path)?;
        *found.objects.entry(kind.to_string()).or_default() += 1;
        return Ok(());
    }

    if kind == "ConfigMap" && config_map_image_configs(found, place, &object_name, obj, path)? {
        *found.objects.entry(kind.to_string()).or_default() += 1;
        return Ok(());
    }

    // Any other kind (an operator's resource): its `image` fields that hold a reference. Not
    // the free-form data of ConfigMaps and Secrets, nor a CRD's schema.
    if !["ConfigMap", "Secret", "CustomResourceDefinition"].contains(&kind)
        && image_fields(found, place, &object_name, value, path)?
    {
        *found.objects.entry(kind.to_string()).or_default() += 1;
        return Ok(());
    }

    if kind == "ServiceAccount" {
        // Its pods pull with these too (the admission plugin adds them to each pod).
        let field = join(path, "imagePullSecrets");
        let list = obj.get("imagePullSecrets");
        secrets(
            found,
            place,
            &object_name,
            namespace.as_deref(),
            list,
            &field,
        )?;
    }
    *found.skipped.entry(kind.to_string()).or_default() += 1;
    Ok(())
}

fn meta_str(obj: &Map<String, Value>, key: &str) -> Option<String> {
    obj.get("metadata")?.get(key)?.as_str().map(str::to_string)
}

/// The containers, init containers and ephemeral containers of a pod spec, and its pull secrets.
fn pod_spec(
    found: &mut Found,
    place: &Place,
    object: &str,
    namespace: Option<&str>,
    spec: &Value,
    path: &str,
) -> Result<(), ManifestError> {
    let Value::Object(spec) = spec else {
        return Err(place.error(
            Some(object),
            path,
            format!("expected a mapping, found {}", kind_of(spec)),
        ));
    };
    for (list, ephemeral) in [
        ("initContainers", false),
        ("containers", false),
        ("ephemeralContainers", true),
    ] {
        let list_path = join(path, list);
        let containers = match spec.get(list) {
            None | Some(Value::Null) => continue,
            Some(Value::Array(c)) => c,
            Some(other) => {
                return Err(place.error(
                    Some(object),
                    &list_path,
                    format!("expected a list, found {}", kind_of(other)),
                ));
            }
        };
        for (i, c) in containers.iter().enumerate() {
            let c_path = format!("{list_path}[{i}]");
            let Value::Object(c) = c else {
                return Err(place.error(
                    Some(object),
                    &c_path,
                    format!("expected a container (a mapping), found {}", kind_of(c)),
                ));
            };
            let image_path = join(&c_path, "image");
            let written = match c.get("image") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => {
                    return Err(place.error(
                        Some(object),
                        &image_path,
                        format!("expected a string, found {}", kind_of(other)),
                    ));
                }
                None => {
                    return Err(place.error(
                        Some(object),
                        &image_path,
                        "missing: every container needs an image",
                    ));
                }
            };
            let policy = policy_field(place, Some(object), c, "imagePullPolicy", &c_path)?;
            argument_images(found, place, object, c, &c_path)?;
            found.add_use(
                place,
                &image_path,
                Some(object),
                UseSpec {
                    written,
                    policy,
                    ephemeral,
                    origin: object.to_string(),
                },
            )?;
        }
    }
    secrets(
        found,
        place,
        object,
        namespace,
        spec.get("imagePullSecrets"),
        &join(path, "imagePullSecrets"),
    )
}

/// `[{name: regcred}]`, as `imagePullSecrets` of a pod spec and `pullSecrets` of a REC.
fn secrets(
    found: &mut Found,
    place: &Place,
    object: &str,
    namespace: Option<&str>,
    list: Option<&Value>,
    path: &str,
) -> Result<(), ManifestError> {
    let list = match list {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(l)) => l,
        Some(other) => {
            return Err(place.error(
                Some(object),
                path,
                format!("expected a list, found {}", kind_of(other)),
            ));
        }
    };
    for (i, s) in list.iter().enumerate() {
        match s.get("name") {
            Some(Value::String(name)) if !name.is_empty() => {
                found.secrets.insert(PullSecret {
                    namespace: namespace.map(str::to_string),
                    name: name.clone(),
                });
            }
            _ => {
                return Err(place.error(
                    Some(object),
                    &format!("{path}[{i}].name"),
                    "expected the secret's name (a string)",
                ));
            }
        }
    }
    Ok(())
}

/// A `RedisEnterpriseCluster`: its `*ImageSpec`s (`redisEnterpriseImageSpec`,
/// `redisEnterpriseServicesRiggerImageSpec`, `bootstrapperImageSpec`, and any other image spec
/// below `spec`, such as the call-home client's), each `{repository, versionTag, imagePullPolicy}`,
/// and its `pullSecrets`.
fn redis_enterprise_cluster(
    found: &mut Found,
    place: &Place,
    object: &str,
    namespace: Option<&str>,
    obj: &Map<String, Value>,
    path: &str,
) -> Result<(), ManifestError> {
    let spec_path = join(path, "spec");
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    // Without its image spec the operator runs its default image at its own release's tag,
    // which the manifest does not say: name what is left out.
    let unset: Vec<&str> = REC_IMAGE_SPECS
        .iter()
        .filter(|(key, _)| spec.get(key).is_none())
        .map(|(_, image)| *image)
        .collect();
    if !unset.is_empty() {
        found.notes.push(place.note(
            object,
            format_args!(
                "no image spec for {}: the operator's defaults, at the tag of its release, are not listed",
                unset.join(", ")
            ),
        ));
    }
    image_specs(found, place, object, spec, &spec_path)?;
    secrets(
        found,
        place,
        object,
        namespace,
        spec.get("pullSecrets"),
        &join(&spec_path, "pullSecrets"),
    )
}

fn image_specs(
    found: &mut Found,
    place: &Place,
    object: &str,
    v: &Value,
    path: &str,
) -> Result<(), ManifestError> {
    let Value::Object(map) = v else {
        return Ok(());
    };
    for (key, child) in map {
        let child_path = join(path, key);
        if key.ends_with("ImageSpec") || key == "imageSpec" {
            image_spec(found, place, object, child, &child_path)?;
        } else {
            image_specs(found, place, object, child, &child_path)?;
        }
    }
    Ok(())
}

fn image_spec(
    found: &mut Found,
    place: &Place,
    object: &str,
    v: &Value,
    path: &str,
) -> Result<(), ManifestError> {
    let Value::Object(spec) = v else {
        return Err(place.error(
            Some(object),
            path,
            format!("expected a mapping, found {}", kind_of(v)),
        ));
    };
    let repository = match spec.get("repository") {
        Some(Value::String(r)) if !r.is_empty() => r,
        None => {
            found.notes.push(place.note(
                object,
                format_args!(
                    "`{path}` has no `repository`: the operator's default image is used, not listed"
                ),
            ));
            return Ok(());
        }
        Some(other) => {
            return Err(place.error(
                Some(object),
                &join(path, "repository"),
                format!(
                    "expected a repository (a non-empty string), found {}",
                    kind_of(other)
                ),
            ));
        }
    };
    let digest = spec
        .get("digestHash")
        .and_then(Value::as_str)
        .filter(|d| !d.is_empty());
    let tag = match spec.get("versionTag") {
        Some(Value::String(t)) if !t.is_empty() => Some(t.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let written = match (digest, tag) {
        (Some(d), _) => format!("{repository}@{d}"),
        (None, Some(t)) => format!("{repository}:{t}"),
        (None, None) => {
            found.notes.push(place.note(
                object,
                format_args!("`{path}` has no `versionTag`: the operator picks the tag of its own release; add `versionTag` to list {repository}"),
            ));
            return Ok(());
        }
    };
    let policy = policy_field(place, Some(object), spec, "imagePullPolicy", path)?;
    found.add_use(
        place,
        &join(path, "repository"),
        Some(object),
        UseSpec {
            written,
            policy,
            ephemeral: false,
            origin: object.to_string(),
        },
    )
}

/// A ConfigMap's data entries that are cass-operator `ImageConfig`s (as the operator's chart
/// renders `image_config.yaml`). Whether there was one.
fn config_map_image_configs(
    found: &mut Found,
    place: &Place,
    object: &str,
    obj: &Map<String, Value>,
    path: &str,
) -> Result<bool, ManifestError> {
    let Some(Value::Object(data)) = obj.get("data") else {
        return Ok(false);
    };
    let mut any = false;
    for (key, text) in data {
        let Value::String(text) = text else { continue };
        if !text.contains("ImageConfig") {
            continue;
        }
        let Ok(doc) = serde_saphyr::from_str::<Value>(text) else {
            continue;
        };
        if imageconfig::is_image_config(&doc) {
            let field = format!("{}[{key}]", join(path, "data"));
            let origin = format!("{object} {key}:");
            imageconfig::read(found, place, Some(object), &origin, &doc, &field)?;
            any = true;
        }
    }
    Ok(any)
}

/// Whether a field's name says it holds an image: `image`, `baseImage`, `configReloaderImage`.
fn image_key(key: &str) -> bool {
    key == "image" || key.ends_with("Image")
}

/// The `image` fields, at any depth below the object's metadata, whose string parses as a
/// reference: how operators' resources (a `Prometheus`, an `Alertmanager`) name the image they
/// run. Whether there was one.
fn image_fields(
    found: &mut Found,
    place: &Place,
    object: &str,
    value: &Value,
    path: &str,
) -> Result<bool, ManifestError> {
    fn walk(
        found: &mut Found,
        place: &Place,
        object: &str,
        v: &Value,
        path: &str,
        top: bool,
    ) -> Result<bool, ManifestError> {
        let mut any = false;
        match v {
            Value::Object(map) => {
                for (key, child) in map {
                    if top && (key == "metadata" || key == "status") {
                        continue;
                    }
                    let child_path = join(path, key);
                    match child {
                        Value::String(s) if image_key(key) && !s.is_empty() => {
                            if ImageRef::parse(s).is_ok() {
                                found.add_use(
                                    place,
                                    &child_path,
                                    Some(object),
                                    UseSpec {
                                        written: s.clone(),
                                        policy: None,
                                        ephemeral: false,
                                        origin: format!("{object} {child_path}"),
                                    },
                                )?;
                                any = true;
                            }
                        }
                        _ => any |= walk(found, place, object, child, &child_path, false)?,
                    }
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    any |= walk(found, place, object, item, &format!("{path}[{i}]"), false)?;
                }
            }
            _ => {}
        }
        Ok(any)
    }
    walk(found, place, object, value, path, true)
}

/// `--prometheus-config-reloader=quay.io/prometheus-operator/prometheus-config-reloader:v0.80.0`:
/// a container argument whose flag names an image (the flag says `image`, or is the image's
/// own name) and whose value is a reference with a tag or digest: the operator runs that image.
fn argument_images(
    found: &mut Found,
    place: &Place,
    object: &str,
    c: &Map<String, Value>,
    c_path: &str,
) -> Result<(), ManifestError> {
    for list in ["command", "args"] {
        let Some(Value::Array(items)) = c.get(list) else {
            continue;
        };
        for (i, item) in items.iter().enumerate() {
            let Value::String(arg) = item else { continue };
            let Some((flag, value)) = arg.split_once('=') else {
                continue;
            };
            // Only flags (`--name=` or `-name=`), not `KEY=value` words.
            if !flag.starts_with('-') {
                continue;
            }
            let flag = flag.trim_start_matches('-');
            let Ok(reference) = ImageRef::parse(value) else {
                continue;
            };
            let pinned =
                value.contains('@') || value.rsplit('/').next().is_some_and(|n| n.contains(':'));
            let name = reference.path().rsplit('/').next().unwrap_or("");
            if !pinned || !(flag.to_ascii_lowercase().contains("image") || name == flag) {
                continue;
            }
            let field = format!("{}[{i}]", join(c_path, list));
            found.add_use(
                place,
                &field,
                Some(object),
                UseSpec {
                    written: value.to_string(),
                    policy: None,
                    ephemeral: false,
                    origin: format!("{object} (argument --{flag})"),
                },
            )?;
        }
    }
    Ok(())
}
