//! `prepuller images`: the image list from the manifests an operator already has.
//!
//! Reads Kubernetes manifests (multi-document YAML or JSON: workloads, `List`s, Redis Enterprise
//! `RedisEnterpriseCluster`s, cass-operator `ImageConfig`s, `image` fields of other kinds) and
//! Helm values files (merged as Helm merges them, image mappings nested anywhere), and renders
//! an image-list config that [`crate::config::Config`] accepts. Documents are read as untyped
//! [`serde_json::Value`]s rather than k8s-openapi types: rendered charts and `kubectl get` output
//! are often partial (no selector, no container name), and only the image fields matter here.
//!
//! `documents` splits a text into documents, `workloads`, `values` and `imageconfig` find the
//! images, `render` merges what was found into the config text.

mod documents;
mod imageconfig;
mod render;
mod values;
mod workloads;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::PullPolicy;
use crate::reference::ImageRef;

pub use render::render;

/// One text to read: a file, or standard input.
#[derive(Debug, Clone)]
pub struct Input {
    /// How messages name it: the file's path, or `stdin`.
    pub name: String,
    pub text: String,
}

impl Input {
    /// The inputs of one `-f`/`--values` argument: a file, every `*.yaml`/`*.yml`/`*.json` file
    /// of a directory (in name order, not recursive, as `kubectl apply -f dir/`), or `-` for
    /// standard input (given as `stdin`).
    pub fn read(
        path: &Path,
        stdin: impl FnOnce() -> std::io::Result<String>,
    ) -> Result<Vec<Input>, ManifestError> {
        if path == Path::new("-") {
            let text = stdin().map_err(|e| ManifestError::read("stdin", &e))?;
            return Ok(vec![Input {
                name: "stdin".into(),
                text,
            }]);
        }
        if path.is_dir() {
            let entries = std::fs::read_dir(path)
                .map_err(|e| ManifestError::read(&path.display().to_string(), &e))?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    !name.starts_with('.')
                        && [".yaml", ".yml", ".json"]
                            .iter()
                            .any(|ext| name.ends_with(ext))
                        && p.is_file()
                })
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(ManifestError::whole(
                    &path.display().to_string(),
                    "no *.yaml, *.yml or *.json files in this directory".into(),
                ));
            }
            return files.iter().map(|f| Input::read_file(f)).collect();
        }
        Ok(vec![Input::read_file(path)?])
    }

    fn read_file(path: &Path) -> Result<Input, ManifestError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError::read(&name, &e))?;
        Ok(Input { name, text })
    }
}

/// Input that cannot be used: which file, which document, which field, and why. Boxed: it
/// travels through every `?`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.headline())]
pub struct ManifestError(Box<ManifestErrorDetails>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestErrorDetails {
    pub file: String,
    /// 1-based, counting the documents that are not empty.
    pub document: Option<usize>,
    /// The line the document starts on (or, for a syntax error, the error's line).
    pub line: Option<usize>,
    /// The object, e.g. `Deployment shop/web`.
    pub object: Option<String>,
    /// Path of the offending field, e.g. `spec.template.spec.containers[0].image`.
    pub field: Option<String>,
    pub message: String,
}

impl std::ops::Deref for ManifestError {
    type Target = ManifestErrorDetails;
    fn deref(&self) -> &ManifestErrorDetails {
        &self.0
    }
}

impl From<ManifestErrorDetails> for ManifestError {
    fn from(d: ManifestErrorDetails) -> Self {
        ManifestError(Box::new(d))
    }
}

impl ManifestError {
    fn whole(file: &str, message: String) -> Self {
        ManifestError::at(file, None, None, message)
    }

    fn at(file: &str, document: Option<usize>, line: Option<usize>, message: String) -> Self {
        ManifestErrorDetails {
            file: file.to_string(),
            document,
            line,
            object: None,
            field: None,
            message,
        }
        .into()
    }

    fn read(file: &str, e: &std::io::Error) -> Self {
        ManifestError::whole(file, format!("cannot read: {e}"))
    }

    /// `file:line: document N (Kind ns/name): field `x`: message`.
    pub fn headline(&self) -> String {
        let mut s = self.file.clone();
        if let Some(line) = self.line {
            s.push_str(&format!(":{line}"));
        }
        s.push_str(": ");
        if let Some(doc) = self.document {
            s.push_str(&format!("document {doc}"));
            if let Some(object) = &self.object {
                s.push_str(&format!(" ({object})"));
            }
            s.push_str(": ");
        }
        if let Some(field) = &self.field {
            s.push_str(&format!("field `{field}`: "));
        }
        s.push_str(&self.message);
        s
    }
}

/// Where in the input a document is, for messages.
#[derive(Debug, Clone)]
struct Place<'a> {
    file: &'a str,
    document: usize,
    line: Option<usize>,
}

impl Place<'_> {
    fn error(
        &self,
        object: Option<&str>,
        field: &str,
        message: impl Into<String>,
    ) -> ManifestError {
        ManifestErrorDetails {
            file: self.file.to_string(),
            document: Some(self.document),
            line: self.line,
            object: object.map(str::to_string),
            field: (!field.is_empty()).then(|| field.to_string()),
            message: message.into(),
        }
        .into()
    }

    fn note(&self, what: &str, message: impl fmt::Display) -> String {
        format!(
            "{}: document {}: {what}: {message}",
            self.file, self.document
        )
    }
}

/// A pull secret that workloads name, to be declared as a `secret:` credential source.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PullSecret {
    /// `None` when the manifest does not say (e.g. `helm template` output, a values file).
    pub namespace: Option<String>,
    pub name: String,
}

/// One place an image is used.
#[derive(Debug, Clone)]
struct ImageUse {
    /// As the manifest writes it (coordinates joined).
    written: String,
    reference: ImageRef,
    /// The workload's `imagePullPolicy`, when set.
    policy: Option<PullPolicy>,
    /// Only ephemeral (debug) containers use it.
    ephemeral: bool,
    /// E.g. `Deployment shop/web`, `values.yaml: cassandra.image`.
    origin: String,
}

/// Everything found in the inputs, before merging.
#[derive(Debug, Default)]
pub struct Found {
    uses: Vec<ImageUse>,
    pub secrets: BTreeSet<PullSecret>,
    /// Objects whose images were read, by kind.
    pub objects: BTreeMap<String, usize>,
    pub values_files: usize,
    /// Objects of other kinds, by kind: they declare no images prepuller knows how to read.
    pub skipped: BTreeMap<String, usize>,
    /// What was left out and why (to stderr).
    pub notes: Vec<String>,
    /// The arguments as given (`-f chart/`, `--values v.yaml`), for the header.
    pub inputs: Vec<String>,
    /// List the images of blocks under `enabled: false` too (`--include-disabled`).
    pub include_disabled: bool,
    /// Images of blocks under `enabled: false`: written as comments.
    disabled: Vec<ImageUse>,
    /// The values files' documents, read when all are merged ([`Found::compose_values`]).
    values_docs: Vec<values::ValuesDoc>,
    /// Subcharts named by a `Chart.yaml` beside a values file.
    subcharts: BTreeSet<String>,
}

impl Found {
    /// Reads manifests (`-f`): every Kubernetes object of every document.
    pub fn add_manifests(&mut self, input: &Input) -> Result<(), ManifestError> {
        for doc in documents::split(input)? {
            let place = Place {
                file: &input.name,
                document: doc.index,
                line: doc.line,
            };
            workloads::object(self, &place, &doc.value, "")?;
        }
        Ok(())
    }

    /// Reads a Helm values / overrides file (`--values`). Its images are found once every file
    /// is read, by [`Found::compose_values`], as Helm merges the files before rendering. A
    /// cass-operator `ImageConfig` is read on its own, not merged.
    pub fn add_values(&mut self, input: &Input) -> Result<(), ManifestError> {
        for doc in documents::split(input)? {
            let place = Place {
                file: &input.name,
                document: doc.index,
                line: doc.line,
            };
            if imageconfig::is_image_config(&doc.value) {
                let origin = values::file_name(&input.name).to_string();
                imageconfig::read(self, &place, None, &origin, &doc.value, "")?;
                continue;
            }
            if !doc.value.is_object() {
                return Err(place.error(
                    None,
                    "",
                    format!(
                        "expected a values file (a mapping), found {}",
                        kind_of(&doc.value)
                    ),
                ));
            }
            self.values_docs.push(values::ValuesDoc {
                file: input.name.clone(),
                document: doc.index,
                line: doc.line,
                value: doc.value,
            });
        }
        self.subcharts.extend(values::subcharts_beside(&input.name));
        self.values_files += 1;
        Ok(())
    }

    /// Merges the values files read so far (maps key by key, later files winning, lists
    /// replaced, as `helm -f a.yaml -f b.yaml`) and reads the images of the result.
    pub fn compose_values(&mut self) -> Result<(), ManifestError> {
        let docs = std::mem::take(&mut self.values_docs);
        if docs.is_empty() {
            return Ok(());
        }
        let mut merged = serde_json::Value::Object(serde_json::Map::new());
        for d in &docs {
            values::merge(&mut merged, &d.value);
        }
        values::compose(self, &docs, &merged)
    }

    /// The images left out because their block is disabled, as (image, where), sorted.
    pub fn disabled(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .disabled
            .iter()
            .map(|u| (u.written.clone(), u.origin.clone()))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// How many distinct images (after normalization) were found.
    pub fn image_count(&self) -> usize {
        self.uses
            .iter()
            .map(|u| u.reference.to_string())
            .collect::<BTreeSet<_>>()
            .len()
    }

    fn add_use(
        &mut self,
        place: &Place,
        field: &str,
        object: Option<&str>,
        u: UseSpec,
    ) -> Result<(), ManifestError> {
        let reference =
            ImageRef::parse(&u.written).map_err(|e| place.error(object, field, e.to_string()))?;
        self.uses.push(ImageUse {
            written: u.written,
            reference,
            policy: u.policy,
            ephemeral: u.ephemeral,
            origin: u.origin,
        });
        Ok(())
    }
}

/// An image use before its reference is parsed.
struct UseSpec {
    written: String,
    policy: Option<PullPolicy>,
    ephemeral: bool,
    origin: String,
}

/// The pull policy at `map[key]` (`path` is that field's path), as Kubernetes spells it; unset
/// or empty is `None`.
fn policy_field(
    place: &Place,
    object: Option<&str>,
    map: &serde_json::Map<String, serde_json::Value>,
    key: &str,
    path: &str,
) -> Result<Option<PullPolicy>, ManifestError> {
    let s = match map.get(key) {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::String(s)) if s.is_empty() => return Ok(None),
        Some(serde_json::Value::String(s)) => s,
        Some(other) => {
            let message = format!("expected a string, found {}", kind_of(other));
            return Err(place.error(object, &join(path, key), message));
        }
    };
    match s.as_str() {
        "Always" => Ok(Some(PullPolicy::Always)),
        "IfNotPresent" => Ok(Some(PullPolicy::IfNotPresent)),
        "Never" => Ok(Some(PullPolicy::Never)),
        _ => Err(place.error(
            object,
            &join(path, key),
            format!("unknown pull policy {s:?}, expected one of Always, IfNotPresent, Never"),
        )),
    }
}

/// `a.b[2].c`: appends a key to a field path.
fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A YAML/JSON value's type, for messages.
fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests;
