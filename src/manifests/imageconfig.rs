//! cass-operator's `ImageConfig` (`config.k8ssandra.io`), a file of its own (given with
//! `--values` or `-f`, or inside a ConfigMap as the operator's chart renders it):
//!
//! - v1beta1: `images` of strings (`system-logger: "k8ssandra/system-logger:latest"`, or per
//!   server version under `cassandra`/`dse`/`hcd`), `imageRegistry` put before each,
//!   `imageNamespace` replacing each one's namespace, `imagePullPolicy`, `imagePullSecret`;
//! - v1beta2: `images` of `{registry?, repository?, name, tag, pullPolicy?}` (or strings), joined
//!   `registry/repository/name:tag`, `defaults.registry`/`namespace`/`pullPolicy`/`pullSecrets`.
//!
//! The server images (v1beta1 `defaults`, v1beta2 `types`: `repository` + `suffix`) take each
//! CassandraDatacenter's `serverVersion` as their tag, which this file does not say: a note
//! names them.

use serde_json::{Map, Value};

use super::{Found, ManifestError, Place, PullSecret, UseSpec, join, kind_of, policy_field};
use crate::config::PullPolicy;

const GROUP: &str = "config.k8ssandra.io/";

pub(super) fn is_image_config(v: &Value) -> bool {
    v.get("kind").and_then(Value::as_str) == Some("ImageConfig")
        && v.get("apiVersion")
            .and_then(Value::as_str)
            .is_some_and(|a| a.starts_with(GROUP))
}

/// What applies to every image of the file.
struct Defaults {
    registry: Option<String>,
    /// `Some("")` removes the namespace.
    namespace: Option<String>,
    policy: Option<PullPolicy>,
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads one `ImageConfig`. `object` names it in errors (e.g. `ConfigMap ns/name`); `origin` is
/// the comments' prefix; `path` is its field path in the document. `string` and `image_v2` take
/// the whole comment.
pub(super) fn read(
    found: &mut Found,
    place: &Place,
    object: Option<&str>,
    origin: &str,
    doc: &Value,
    path: &str,
) -> Result<(), ManifestError> {
    let v2 = doc
        .get("apiVersion")
        .and_then(Value::as_str)
        .is_some_and(|a| a.ends_with("/v1beta2"));
    let empty = Map::new();
    let defaults_map = doc
        .get("defaults")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let defaults = if v2 {
        Defaults {
            registry: text(defaults_map.get("registry")),
            namespace: defaults_map
                .get("namespace")
                .and_then(Value::as_str)
                .map(str::to_string),
            policy: policy_field(
                place,
                object,
                defaults_map,
                "pullPolicy",
                &join(path, "defaults"),
            )?,
        }
    } else {
        let top = doc.as_object().unwrap_or(&empty);
        Defaults {
            registry: text(doc.get("imageRegistry")),
            namespace: doc
                .get("imageNamespace")
                .and_then(Value::as_str)
                .map(str::to_string),
            policy: policy_field(place, object, top, "imagePullPolicy", path)?,
        }
    };
    // The pull secrets the operator gives the pods; their namespace is the datacenter's.
    let secret_names: Vec<String> = if v2 {
        defaults_map
            .get("pullSecrets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    } else {
        doc.get("imagePullSecret")
            .and_then(|s| s.get("name"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .into_iter()
            .collect()
    };
    for name in secret_names.into_iter().filter(|n| !n.is_empty()) {
        found.secrets.insert(PullSecret {
            namespace: None,
            name,
        });
    }

    // The comment: `origin` and the field's path inside the ImageConfig.
    let origin_of = |field: &str| {
        let inside = field.strip_prefix(path).unwrap_or(field);
        format!("{origin} {}", inside.trim_start_matches('.'))
    };
    let images_path = join(path, "images");
    match doc.get("images") {
        None | Some(Value::Null) => {}
        Some(Value::Object(images)) => {
            for (component, v) in images {
                let field = join(&images_path, component);
                match v {
                    Value::Object(m) if m.contains_key("name") => {
                        image_v2(
                            found,
                            place,
                            object,
                            &origin_of(&field),
                            &defaults,
                            m,
                            &field,
                        )?;
                    }
                    // Per server version: `cassandra: {"4.0.0": "k8ssandra/cassandra-ubi:latest"}`.
                    Value::Object(versions) => {
                        for (version, v) in versions {
                            let field = join(&field, version);
                            let origin = origin_of(&field);
                            string(found, place, object, &origin, &defaults, v, &field)?;
                        }
                    }
                    _ => string(
                        found,
                        place,
                        object,
                        &origin_of(&field),
                        &defaults,
                        v,
                        &field,
                    )?,
                }
            }
        }
        Some(other) => {
            return Err(place.error(
                object,
                &images_path,
                format!("expected a mapping, found {}", kind_of(other)),
            ));
        }
    }

    // The server images: their tag is the datacenter's serverVersion.
    let (server, key) = if v2 {
        (doc.get("types"), "types")
    } else {
        (doc.get("defaults"), "defaults")
    };
    if let Some(Value::Object(types)) = server {
        for (kind, t) in types {
            let Some(repository) = text(t.get("repository")) else {
                continue;
            };
            let repository = match text(t.get("name")) {
                Some(name) => format!("{repository}/{name}"),
                None => repository,
            };
            let registry = text(t.get("registry")).or_else(|| defaults.registry.clone());
            let base = with_registry(
                registry.as_deref(),
                &with_namespace(&repository, defaults.namespace.as_deref()),
            );
            let suffix = text(t.get("suffix")).unwrap_or_default();
            found.notes.push(place.note(
                &join(&join(path, key), kind),
                format_args!(
                    "{base}:<serverVersion>{suffix}: cass-operator tags it with each CassandraDatacenter's serverVersion, which this file does not say: not listed"
                ),
            ));
        }
    }
    Ok(())
}

/// `registry/` before the whole reference, as cass-operator does (a registry already in the
/// reference stays, after it).
fn with_registry(registry: Option<&str>, reference: &str) -> String {
    match registry {
        Some(r) => format!("{}/{reference}", r.trim_end_matches('/')),
        None => reference.to_string(),
    }
}

/// The namespace (the path before the image's name, after any registry host) replaced.
fn with_namespace(reference: &str, namespace: Option<&str>) -> String {
    let Some(ns) = namespace else {
        return reference.to_string();
    };
    let (before, name) = match reference.rsplit_once('/') {
        Some((before, name)) => (before, name),
        None => ("", reference),
    };
    let host = before
        .split_once('/')
        .map(|(first, _)| first)
        .or(Some(before))
        .filter(|first| first.contains(['.', ':']) || *first == "localhost");
    let ns = ns.trim_matches('/');
    [host.unwrap_or(""), ns, name]
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/")
}

fn string(
    found: &mut Found,
    place: &Place,
    object: Option<&str>,
    origin: &str,
    defaults: &Defaults,
    v: &Value,
    field: &str,
) -> Result<(), ManifestError> {
    let Value::String(s) = v else {
        return Err(place.error(
            object,
            field,
            format!("expected an image (a string), found {}", kind_of(v)),
        ));
    };
    if s.is_empty() {
        return Ok(());
    }
    let written = with_registry(
        defaults.registry.as_deref(),
        &with_namespace(s, defaults.namespace.as_deref()),
    );
    found.add_use(
        place,
        field,
        object,
        UseSpec {
            written,
            policy: defaults.policy,
            ephemeral: false,
            origin: origin.to_string(),
        },
    )
}

fn image_v2(
    found: &mut Found,
    place: &Place,
    object: Option<&str>,
    origin: &str,
    defaults: &Defaults,
    m: &Map<String, Value>,
    field: &str,
) -> Result<(), ManifestError> {
    let Some(name) = text(m.get("name")) else {
        return Ok(());
    };
    let repository = match text(m.get("repository")) {
        Some(r) => format!("{r}/{name}"),
        None => name,
    };
    let registry = text(m.get("registry")).or_else(|| defaults.registry.clone());
    let base = with_registry(
        registry.as_deref(),
        &with_namespace(&repository, defaults.namespace.as_deref()),
    );
    let Some(tag) = text(m.get("tag")) else {
        found.notes.push(place.note(
            field,
            format_args!(
                "{base} has no tag here (cass-operator fills in its default tag): not listed"
            ),
        ));
        return Ok(());
    };
    let policy = policy_field(place, object, m, "pullPolicy", field)?.or(defaults.policy);
    found.add_use(
        place,
        &join(field, "name"),
        object,
        UseSpec {
            written: format!("{base}:{tag}"),
            policy,
            ephemeral: false,
            origin: origin.to_string(),
        },
    )
}
