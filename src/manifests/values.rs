//! The images of Helm values files (`--values`), merged first as Helm merges them, then read by
//! the shape of each mapping, at any depth, composed as the chart's template composes it:
//!
//! - `{registry?, repository, tag?, digest?, sha?}`: the charts' image helper
//!   (`common.images.image`): `registry/repository:tag`, a `digest` replacing the tag,
//!   `global.imageRegistry` replacing the registry; kube-prometheus-stack's `sha` keeps the tag
//!   (`repository:tag@sha256:sha`). Redis Enterprise's `versionTag`/`digestHash` are read alike.
//! - `{registry?, image, tag?, digest?}` (ingress-nginx): `registry/image:tag@digest`, the registry
//!   from `global.image.registry` when the block has none; `chroot: true` adds `-chroot`.
//! - `{registry?, repository, name, tag}` under `images`/`types`/`defaults` or beside a
//!   `defaults.registry` (K8ssandra's image config): `registry/repository/name:tag`.
//! - `image: {name, tag?, digest?}` with `imageRegistry`/`imageNamespace` above it
//!   (cert-manager ≥ 1.20): `imageRegistry/imageNamespace/name:tag`.
//!
//! An image without its tag is not listed (the chart, the cluster or the operator fills it in):
//! a note names it and says which. A block under `enabled: false` is listed as a comment.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::{Found, ImageUse, ManifestError, Place, PullSecret, UseSpec, join, policy_field};

/// One document of a values file, kept until every file is read and merged.
#[derive(Debug)]
pub(super) struct ValuesDoc {
    pub file: String,
    pub document: usize,
    pub line: Option<usize>,
    pub value: Value,
}

impl ValuesDoc {
    fn place(&self) -> Place<'_> {
        Place {
            file: &self.file,
            document: self.document,
            line: self.line,
        }
    }
}

/// Images whose tag charts set to the cluster's Kubernetes version (`.Capabilities.KubeVersion`).
const KUBE_VERSIONED: &[&str] = &[
    "kubectl",
    "kube-proxy",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "cluster-autoscaler",
];

/// cass-operator's server types: their image's tag is each datacenter's `serverVersion`.
const SERVER_TYPES: &[&str] = &["cassandra", "dse", "hcd"];

/// Helm's merge of several `--values` files (`mergeMaps` in helm's pkg/cli/values/options.go):
/// mappings merged key by key, a later file's value winning, lists and scalars replaced whole.
pub(super) fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(bv @ Value::Object(_)) if v.is_object() => merge(bv, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// The names (and aliases) of the subcharts a `Chart.yaml` beside the values file declares:
/// their blocks' tagless images take the subchart's appVersion, not the chart's.
pub(super) fn subcharts_beside(values_file: &str) -> BTreeSet<String> {
    let path = std::path::Path::new(values_file);
    let Some(dir) = path.parent() else {
        return BTreeSet::new();
    };
    let Ok(text) = std::fs::read_to_string(dir.join("Chart.yaml")) else {
        return BTreeSet::new();
    };
    let Ok(chart) = serde_saphyr::from_str::<Value>(&text) else {
        return BTreeSet::new();
    };
    chart
        .get("dependencies")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| d.get("alias").or_else(|| d.get("name")))
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// What the blocks above a mapping set for it.
#[derive(Clone, Default)]
struct Context {
    /// The block that says `enabled: false`, if any.
    disabled: Option<String>,
    /// `defaults.registry` of an enclosing block (K8ssandra's image config).
    defaults_registry: Option<String>,
    /// `imageRegistry` / `imageNamespace` of an enclosing block (cert-manager).
    image_registry: Option<String>,
    image_namespace: Option<String>,
}

struct Composer<'a> {
    found: &'a mut Found,
    docs: &'a [ValuesDoc],
    /// `global.imageRegistry` (bitnami's convention).
    global_registry: Option<String>,
    /// `global.image.registry` (ingress-nginx's).
    global_image_registry: Option<String>,
}

/// Reads the merged values of every `--values` file.
pub(super) fn compose(
    found: &mut Found,
    docs: &[ValuesDoc],
    merged: &Value,
) -> Result<(), ManifestError> {
    let mut c = Composer {
        found,
        docs,
        global_registry: None,
        global_image_registry: None,
    };
    c.global_registry = c.global_string(merged, &["global", "imageRegistry"])?;
    c.global_image_registry = c.global_string(merged, &["global", "image", "registry"])?;
    c.walk(merged, &mut Vec::new(), &Context::default())
}

/// A scalar written as text (`tag: 7` and `tag: "7"` alike), if set.
fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `enabled: false` (or `"false"`, as `--set` writes it).
fn is_false(v: Option<&Value>) -> bool {
    matches!(v, Some(Value::Bool(false))) || matches!(v, Some(Value::String(s)) if s == "false")
}

fn path_of(segs: &[String]) -> String {
    let mut path = String::new();
    for s in segs {
        if s.starts_with('[') {
            path.push_str(s);
        } else {
            path = join(&path, s);
        }
    }
    path
}

/// `registry/rest`, without doubled slashes.
fn prefixed(registry: Option<&str>, rest: &str) -> String {
    match registry {
        Some(r) => format!("{}/{rest}", r.trim_end_matches('/')),
        None => rest.to_string(),
    }
}

/// Whether the first component of a repository is a registry host (as the kubelet decides).
fn has_registry(repository: &str) -> bool {
    match repository.split_once('/') {
        Some((first, _)) => first.contains(['.', ':']) || first == "localhost",
        None => false,
    }
}

impl<'a> Composer<'a> {
    /// The last document that sets `segs` (or its nearest ancestor): where a merged value came
    /// from, for messages and comments.
    fn owner(&self, segs: &[String]) -> &'a ValuesDoc {
        let docs: &'a [ValuesDoc] = self.docs;
        for depth in (0..=segs.len()).rev() {
            for doc in docs.iter().rev() {
                if lookup(&doc.value, &segs[..depth]).is_some() {
                    return doc;
                }
            }
        }
        docs.last().expect("compose is called with documents")
    }

    fn global_string(&self, root: &Value, keys: &[&str]) -> Result<Option<String>, ManifestError> {
        let segs: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        match lookup(root, &segs) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(r)) if r.is_empty() => Ok(None),
            Some(Value::String(r)) => Ok(Some(r.trim_end_matches('/').to_string())),
            Some(other) => Err(self.owner(&segs).place().error(
                None,
                &keys.join("."),
                format!("expected a string, found {}", super::kind_of(other)),
            )),
        }
    }

    fn walk(
        &mut self,
        v: &Value,
        segs: &mut Vec<String>,
        ctx: &Context,
    ) -> Result<(), ManifestError> {
        match v {
            Value::Object(map) => {
                let mut ctx = ctx.clone();
                if ctx.disabled.is_none() && is_false(map.get("enabled")) {
                    ctx.disabled = Some(display(&path_of(segs)));
                }
                if let Some(r) = map.get("defaults").and_then(|d| text(d.get("registry"))) {
                    ctx.defaults_registry = Some(r);
                }
                if let Some(r) = text(map.get("imageRegistry")) {
                    ctx.image_registry = Some(r);
                }
                if let Some(n) = text(map.get("imageNamespace")) {
                    ctx.image_namespace = Some(n);
                }
                self.image(map, segs, &ctx)?;
                for (key, child) in map {
                    segs.push(key.clone());
                    if key == "pullSecrets" || key == "imagePullSecrets" {
                        let place = self.owner(segs).place();
                        let path = path_of(segs);
                        secrets(self.found, &place, child, &path);
                    } else {
                        self.walk(child, segs, &ctx)?;
                    }
                    segs.pop();
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    segs.push(format!("[{i}]"));
                    self.walk(item, segs, ctx)?;
                    segs.pop();
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The image a mapping declares, by its shape; nothing when it declares none.
    fn image(
        &mut self,
        map: &Map<String, Value>,
        segs: &[String],
        ctx: &Context,
    ) -> Result<(), ManifestError> {
        let key = segs.last().map(String::as_str).unwrap_or("");
        let parent = segs.len().checked_sub(2).map(|i| segs[i].as_str());
        // `repository` of something else (a git repository URL, a Helm repo) is not an image.
        let nonempty = |k: &str| match map.get(k) {
            Some(Value::String(s)) if !s.is_empty() && !s.contains("://") => Some(s.clone()),
            _ => None,
        };
        let (repository, image, name) =
            (nonempty("repository"), nonempty("image"), nonempty("name"));
        let registry = text(map.get("registry"));
        let tag = text(map.get("tag")).or_else(|| text(map.get("versionTag")));
        let digest = text(map.get("digest")).or_else(|| text(map.get("digestHash")));
        let sha = text(map.get("sha"));

        let k8ssandra_block = ctx.defaults_registry.is_some()
            || matches!(parent, Some("images" | "types" | "defaults"));
        let (base, termination) =
            if let (Some(repository), Some(name), true) = (&repository, &name, k8ssandra_block) {
                // K8ssandra: registry/repository/name:tag, the registry from `defaults.registry`.
                let registry = registry.or_else(|| ctx.defaults_registry.clone());
                let base = prefixed(registry.as_deref(), &format!("{repository}/{name}"));
                (base, tag_then_digest(&tag, &digest))
            } else if let (Some(repository), true) = (&repository, image.is_some()) {
                // ingress-nginx: a `repository` beside `image` is the whole name, registry included.
                (repository.clone(), tag_then_digest(&tag, &digest))
            } else if let Some(repository) = &repository {
                let registry = self.global_registry.clone().or(registry);
                let base = prefixed(registry.as_deref(), repository);
                let termination = match (&sha, &digest, &tag) {
                    // kube-prometheus-stack: `repository:tag@sha256:sha`, the tag kept.
                    (Some(sha), _, _) => {
                        let sha = sha.strip_prefix("sha256:").unwrap_or(sha);
                        let tag = tag.as_ref().map(|t| format!(":{t}")).unwrap_or_default();
                        Some(format!("{tag}@sha256:{sha}"))
                    }
                    // As the charts' helper: a digest replaces the tag.
                    (None, Some(d), _) => Some(format!("@{d}")),
                    (None, None, Some(t)) => Some(format!(":{t}")),
                    (None, None, None) => None,
                };
                (base, termination)
            } else if let Some(image) = image.filter(|_| {
                ["tag", "digest", "registry"]
                    .iter()
                    .any(|k| map.contains_key(*k))
            }) {
                // ingress-nginx: registry/image:tag@digest (the digest beside the tag), the block's
                // registry or else `global.image.registry`.
                let chroot = matches!(map.get("chroot"), Some(Value::Bool(true)));
                let (image, digest) = if chroot {
                    (format!("{image}-chroot"), text(map.get("digestChroot")))
                } else {
                    (image, digest)
                };
                let registry = registry.or_else(|| {
                    self.global_image_registry
                        .clone()
                        .filter(|_| !has_registry(&image))
                });
                (
                    prefixed(registry.as_deref(), &image),
                    tag_then_digest(&tag, &digest),
                )
            } else if let Some(name) = name.filter(|_| {
                (key == "image" || key.ends_with("Image"))
                    && (tag.is_some()
                        || digest.is_some()
                        || ctx.image_registry.is_some()
                        || ctx.image_namespace.is_some())
            }) {
                // cert-manager: imageRegistry/imageNamespace/name:tag, a digest replacing the tag.
                let registry = registry.or_else(|| ctx.image_registry.clone());
                let rest = match &ctx.image_namespace {
                    Some(ns) => format!("{}/{name}", ns.trim_matches('/')),
                    None => name,
                };
                let termination = match (&digest, &tag) {
                    (Some(d), _) => Some(format!("@{d}")),
                    (None, Some(t)) => Some(format!(":{t}")),
                    (None, None) => None,
                };
                (prefixed(registry.as_deref(), &rest), termination)
            } else {
                return Ok(());
            };

        let path = display(&path_of(segs));
        let doc = self.owner(segs);
        let place = doc.place();
        let file = file_name(&doc.file).to_string();
        let Some(termination) = termination else {
            let reason = self.missing_tag_reason(map, segs, &base);
            let disabled = match &ctx.disabled {
                Some(block) => format!("; `{block}` is disabled in these values"),
                None => String::new(),
            };
            self.found.notes.push(place.note(
                &path,
                format_args!("{base} has no tag or digest here ({reason}): not listed{disabled}"),
            ));
            return Ok(());
        };
        let policy_key = if map.contains_key("pullPolicy") {
            "pullPolicy"
        } else {
            "imagePullPolicy"
        };
        let policy = policy_field(&place, None, map, policy_key, &path_of(segs))?;
        // The field that names the image, for an error about the reference.
        let name_key = ["repository", "image", "name"]
            .into_iter()
            .find(|k| {
                map.get(*k)
                    .is_some_and(|v| v.as_str().is_some_and(|s| !s.is_empty()))
            })
            .unwrap_or("repository");
        let field = join(&path_of(segs), name_key);
        let written = format!("{base}{termination}");
        let include = self.found.include_disabled;
        let origin = match &ctx.disabled {
            None => format!("{file} {path}"),
            Some(block) if include => {
                format!("{file} {path} (`{block}` is disabled in these values)")
            }
            Some(_) => format!("{file} {path}: disabled in these values"),
        };
        let spec = UseSpec {
            written,
            policy,
            ephemeral: false,
            origin,
        };
        if ctx.disabled.is_some() && !include {
            let reference = super::ImageRef::parse(&spec.written)
                .map_err(|e| place.error(None, &field, e.to_string()))?;
            self.found.disabled.push(ImageUse {
                written: spec.written,
                reference,
                policy: spec.policy,
                ephemeral: false,
                origin: spec.origin,
            });
            return Ok(());
        }
        self.found.add_use(&place, &field, None, spec)
    }

    /// Why a tagless image's tag is not in the values: who fills it in.
    fn missing_tag_reason(&self, map: &Map<String, Value>, segs: &[String], base: &str) -> String {
        let key = segs.last().map(String::as_str).unwrap_or("");
        let parent = segs.len().checked_sub(2).map(|i| segs[i].as_str());
        let last = base.rsplit('/').next().unwrap_or(base);
        if KUBE_VERSIONED.contains(&last) {
            return "the chart fills in the cluster's Kubernetes version".into();
        }
        if SERVER_TYPES.contains(&key) && matches!(parent, Some("defaults" | "types")) {
            let suffix = text(map.get("suffix")).unwrap_or_default();
            return format!(
                "cass-operator tags it with each CassandraDatacenter's serverVersion: {base}:<serverVersion>{suffix}"
            );
        }
        if parent == Some("images") {
            return "the operator fills in its default tag".into();
        }
        // Below the first key: a subchart's values, when the Chart.yaml beside names it so.
        if let Some(first) = segs.first().filter(|f| self.found.subcharts.contains(*f)) {
            return format!("the subchart `{first}` fills in its appVersion");
        }
        "the chart fills in its appVersion".into()
    }
}

/// `:tag@digest`, either part when set; `None` without both.
fn tag_then_digest(tag: &Option<String>, digest: &Option<String>) -> Option<String> {
    if tag.is_none() && digest.is_none() {
        return None;
    }
    let mut s = String::new();
    if let Some(t) = tag {
        s.push(':');
        s.push_str(t);
    }
    if let Some(d) = digest {
        s.push('@');
        s.push_str(d);
    }
    Some(s)
}

fn display(path: &str) -> String {
    if path.is_empty() {
        "(top level)".into()
    } else {
        path.to_string()
    }
}

/// The value at `segs` (`[3]` for a list index).
fn lookup<'v>(v: &'v Value, segs: &[String]) -> Option<&'v Value> {
    let mut v = v;
    for s in segs {
        v = match s.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            Some(i) => v.get(i.parse::<usize>().ok()?)?,
            None => v.get(s)?,
        };
    }
    Some(v)
}

/// `pullSecrets: [regcred]` or `[{name: regcred}]`: the namespace is the release's, which a
/// values file does not say.
pub(super) fn secrets(found: &mut Found, place: &Place, v: &Value, path: &str) {
    let Value::Array(items) = v else {
        return;
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
}

pub(super) fn file_name(path: &str) -> &str {
    std::path::Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(path)
}
