//! The images of a Helm values file or a K8ssandra overrides file: every mapping, at any depth,
//! with `repository` and `tag` or `digest` (and optionally `registry`, `pullPolicy`), joined the
//! way the charts' image helper (`common.images.image`) joins them.

use serde_json::{Map, Value};

use super::{Found, ManifestError, Place, PullSecret, UseSpec, join, kind_of, policy_field};

pub(super) fn file(found: &mut Found, place: &Place, root: &Value) -> Result<(), ManifestError> {
    let Value::Object(_) = root else {
        return Err(place.error(
            None,
            "",
            format!(
                "expected a values file (a mapping), found {}",
                kind_of(root)
            ),
        ));
    };
    // Helm's convention: `global.imageRegistry` replaces every image's registry. As in the
    // charts' helper (`default .registry .global.imageRegistry`), it wins over a per-image one.
    let global = match root.get("global").and_then(|g| g.get("imageRegistry")) {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) if r.is_empty() => None,
        Some(Value::String(r)) => Some(r.trim_end_matches('/').to_string()),
        Some(other) => {
            return Err(place.error(
                None,
                "global.imageRegistry",
                format!("expected a string, found {}", kind_of(other)),
            ));
        }
    };
    walk(found, place, global.as_deref(), root, "")
}

fn walk(
    found: &mut Found,
    place: &Place,
    global: Option<&str>,
    v: &Value,
    path: &str,
) -> Result<(), ManifestError> {
    match v {
        Value::Object(map) => {
            if map.contains_key("repository") {
                image(found, place, global, map, path)?;
            }
            for (key, child) in map {
                let child_path = join(path, key);
                if key == "pullSecrets" || key == "imagePullSecrets" {
                    secrets(found, place, child, &child_path)?;
                } else {
                    walk(found, place, global, child, &child_path)?;
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(found, place, global, item, &format!("{path}[{i}]"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A scalar written as text (`tag: 7` and `tag: "7"` alike), if set.
fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn image(
    found: &mut Found,
    place: &Place,
    global: Option<&str>,
    map: &Map<String, Value>,
    path: &str,
) -> Result<(), ManifestError> {
    // `repository` of something else (a git repository URL, a Helm repo) is not an image.
    let Some(Value::String(repository)) = map.get("repository") else {
        return Ok(());
    };
    if repository.is_empty() || repository.contains("://") {
        return Ok(());
    }
    let name = if path.is_empty() { "(top level)" } else { path };
    let (tag, digest) = (text(map.get("tag")), text(map.get("digest")));
    let termination = match (&digest, &tag) {
        // As the charts' helper: a digest replaces the tag.
        (Some(d), _) => format!("@{d}"),
        (None, Some(t)) => format!(":{t}"),
        (None, None) => {
            found.notes.push(place.note(
                name,
                format_args!("`repository: {repository}` without `tag` or `digest` (the chart fills in its appVersion): not listed"),
            ));
            return Ok(());
        }
    };
    let registry = global
        .map(str::to_string)
        .or_else(|| text(map.get("registry")));
    let written = match registry {
        Some(r) => format!("{}/{repository}{termination}", r.trim_end_matches('/')),
        None => format!("{repository}{termination}"),
    };
    let policy_key = if map.contains_key("pullPolicy") {
        "pullPolicy"
    } else {
        "imagePullPolicy"
    };
    let policy = policy_field(place, None, map, policy_key, path)?;
    found.add_use(
        place,
        &join(path, "repository"),
        None,
        UseSpec {
            written,
            policy,
            ephemeral: false,
            // The file's name only: the same comment wherever the file is checked out.
            origin: format!("{} {name}", file_name(place.file)),
        },
    )
}

/// `pullSecrets: [regcred]` or `[{name: regcred}]`: the namespace is the release's, which a
/// values file does not say.
fn secrets(found: &mut Found, place: &Place, v: &Value, path: &str) -> Result<(), ManifestError> {
    let Value::Array(items) = v else {
        return Ok(());
    };
    for item in items {
        let name = match item {
            Value::String(s) => Some(s.clone()),
            Value::Object(_) => item.get("name").and_then(Value::as_str).map(str::to_string),
            _ => None,
        };
        match name {
            Some(name) if !name.is_empty() => {
                found.secrets.insert(PullSecret {
                    namespace: None,
                    name,
                });
            }
            _ => {
                found
                    .notes
                    .push(place.note(path, "a pull secret without a name: ignored"));
            }
        }
    }
    Ok(())
}

fn file_name(path: &str) -> &str {
    std::path::Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(path)
}
