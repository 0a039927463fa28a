//! The declared image list: a YAML file of images and pull settings.
//!
//! Every error names the file, line, column and field, so that an operator can fix a
//! ConfigMap without guessing. Entries are validated while they are read, so a bad
//! reference is reported at its own line.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_saphyr::{SnippetMode, Spanned};

use crate::credentials::CredentialSource;
use crate::node::selector::{Labels, NodeSelector};
use crate::node::settings::{NodeSettings, RawNodeSettings};
use crate::reference::ImageRef;

pub const DEFAULT_PARALLELISM: usize = 3;
pub const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(10 * 60);
pub const DEFAULT_RESYNC_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// The kubelet's own image back-off runs from 10s to 300s; operators know these numbers.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(10);
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// When the runtime is asked to pull an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PullPolicy {
    /// Only check that the image is present; never pull.
    Never,
    /// Pull when the image is not present (the kubelet's default for pinned tags).
    IfNotPresent,
    /// Pull even when present (the kubelet's default for `:latest`).
    Always,
}

impl fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PullPolicy::Never => "Never",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Always => "Always",
        })
    }
}

/// One image to keep present, after normalization and defaulting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// As written in the config (a reference, or coordinates joined into one).
    pub declared: String,
    pub reference: ImageRef,
    /// Readiness waits for required images only.
    pub required: bool,
    pub policy: PullPolicy,
    /// File and line of the entry, for messages about it.
    pub file: PathBuf,
    pub line: usize,
    /// How often an `Always` image is pulled again by the agent.
    pub refresh_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffSettings {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for BackoffSettings {
    fn default() -> Self {
        BackoffSettings {
            initial: DEFAULT_BACKOFF_INITIAL,
            max: DEFAULT_BACKOFF_MAX,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where the config was read from, for messages.
    pub source: PathBuf,
    pub parallelism: usize,
    pub per_registry_parallelism: usize,
    pub pull_timeout: Duration,
    pub backoff: BackoffSettings,
    /// How often the agent checks that every image is still present.
    pub resync_interval: Duration,
    /// Deduplicated by normalized reference, in declaration order.
    pub images: Vec<ImageSpec>,
    /// Entries that were merged into an earlier one, as human-readable notes.
    pub merged: Vec<String>,
    /// Where pull credentials come from, in the order declared (files in name order).
    pub credentials: Vec<CredentialSource>,
    /// Pull anonymously when every matching credential was refused (default: report instead).
    pub anonymous_fallback: bool,
    /// What the agent writes on its Node (`nodeReadiness`).
    pub node: NodeSettings,
    /// Files whose `nodeSelector` does not select this node: their images are not pulled here.
    pub skipped_sets: Vec<SkippedSet>,
}

/// An image set (file) left out because of its `nodeSelector`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedSet {
    pub file: PathBuf,
    pub selector: String,
    pub images: usize,
    /// The node's labels were not known (no cluster), rather than not matching.
    pub labels_unknown: bool,
}

impl fmt::Display for SkippedSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = if self.labels_unknown {
            "this node's labels are unknown (no cluster)"
        } else {
            "this node does not match"
        };
        write!(
            f,
            "{} ({} images) is for nodes matching {}: skipped, {why}",
            self.file.display(),
            self.images,
            self.selector
        )
    }
}

/// A config that could not be read or is invalid. Boxed: it travels through every `?`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.headline())]
pub struct ConfigError(Box<ConfigErrorDetails>);

#[derive(Debug, Clone)]
pub struct ConfigErrorDetails {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Path of the offending field, e.g. `images[2].tag`.
    pub field: Option<String>,
    pub message: String,
    /// The offending lines with a marker, for people.
    pub snippet: Option<String>,
}

impl std::ops::Deref for ConfigError {
    type Target = ConfigErrorDetails;
    fn deref(&self) -> &ConfigErrorDetails {
        &self.0
    }
}

impl From<ConfigErrorDetails> for ConfigError {
    fn from(d: ConfigErrorDetails) -> Self {
        ConfigError(Box::new(d))
    }
}

impl ConfigError {
    fn whole_file(file: &Path, message: String) -> Self {
        ConfigErrorDetails {
            file: file.to_path_buf(),
            line: None,
            column: None,
            field: None,
            message,
            snippet: None,
        }
        .into()
    }

    /// One line: `file:line:column: field `x`: message`.
    pub fn headline(&self) -> String {
        let mut s = self.file.display().to_string();
        if let Some(line) = self.line {
            s.push_str(&format!(":{line}"));
            if let Some(col) = self.column {
                s.push_str(&format!(":{col}"));
            }
        }
        s.push_str(": ");
        if let Some(field) = &self.field {
            s.push_str(&format!("field `{field}`: "));
        }
        s.push_str(&self.message);
        s
    }

    /// The headline followed by the snippet, for a terminal.
    pub fn render(&self) -> String {
        match &self.snippet {
            Some(snippet) => format!("{}\n{snippet}", self.headline()),
            None => self.headline(),
        }
    }
}

impl Config {
    /// Reads and validates a config file, or every `*.yaml`/`*.yml` file of a directory (a
    /// mounted ConfigMap: each key is an image set, and the sets are merged).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::from_sources(path, &Config::read_sources(path)?)
    }

    /// The texts [`Config::load`] would parse, so a caller can skip parsing when nothing changed.
    pub fn read_sources(path: &Path) -> Result<Vec<(PathBuf, String)>, ConfigError> {
        if path.is_dir() {
            config_files(path)?
                .into_iter()
                .map(|file| {
                    let text = read(&file)?;
                    Ok((file, text))
                })
                .collect()
        } else {
            Ok(vec![(path.to_path_buf(), read(path)?)])
        }
    }

    /// Validates texts read by [`Config::read_sources`] from `path`.
    pub fn from_sources(path: &Path, sources: &[(PathBuf, String)]) -> Result<Config, ConfigError> {
        Config::from_sources_for_node(path, sources, None)
    }

    /// Like [`Config::from_sources`], keeping only the image sets whose `nodeSelector` selects a
    /// node with `labels`. Unknown labels (`None`) select only the sets without a selector.
    pub fn from_sources_for_node(
        path: &Path,
        sources: &[(PathBuf, String)],
        labels: Option<&Labels>,
    ) -> Result<Config, ConfigError> {
        let parts = sources
            .iter()
            .map(|(file, text)| parse_file(text, file))
            .collect::<Result<Vec<_>, _>>()?;
        Config::combine(path, parts, labels)
    }

    /// Parses the text of one config file; `source` names it in errors.
    pub fn parse(text: &str, source: &Path) -> Result<Config, ConfigError> {
        let parts = parse_file(text, source)?;
        Config::combine(source, vec![parts], None)
    }

    /// Merges parsed files: images are unioned (the stricter settings win for an image in two
    /// files); a setting may be given in several files only with the same value.
    ///
    /// Settings apply on every node whatever the file's `nodeSelector` (so every node accepts
    /// or rejects a config alike); the selector only decides whether the file's images do.
    fn combine(
        source: &Path,
        files: Vec<FileParts>,
        labels: Option<&Labels>,
    ) -> Result<Config, ConfigError> {
        let mut settings = RawSettings::default();
        let mut setting_files: std::collections::HashMap<&'static str, PathBuf> =
            Default::default();
        for file in &files {
            settings.absorb(&file.settings, &file.path, &mut setting_files)?;
        }
        // Like settings, credential sources apply whichever files select this node.
        let mut credentials: Vec<CredentialSource> = Vec::new();
        for source in files.iter().flat_map(|f| &f.credentials) {
            if !credentials.contains(source) {
                credentials.push(source.clone());
            }
        }
        let mut skipped = Vec::new();
        let files = files.into_iter().filter(|f| {
            let Some(selector) = &f.selector else {
                return true;
            };
            let selected = labels.is_some_and(|l| selector.matches(l));
            if !selected {
                skipped.push(SkippedSet {
                    file: f.path.clone(),
                    selector: selector.to_string(),
                    images: f.images.len(),
                    labels_unknown: labels.is_none(),
                });
            }
            selected
        });
        let mut images: Vec<ImageSpec> = Vec::new();
        let mut position: std::collections::HashMap<ImageRef, usize> = Default::default();
        let mut merged = Vec::new();
        for spec in files.flat_map(|f| f.images) {
            match position.get(&spec.reference).map(|&n| &mut images[n]) {
                Some(first) => {
                    merged.push(format!(
                        "{} ({}:{}) is the same image as {}:{}: pulled once",
                        spec.declared,
                        spec.file.display(),
                        spec.line,
                        first.file.display(),
                        first.line
                    ));
                    merge_into(first, &spec);
                }
                None => {
                    position.insert(spec.reference.clone(), images.len());
                    images.push(spec);
                }
            }
        }
        let mut config = settings.validate(source, &setting_files, images, merged)?;
        config.credentials = credentials;
        config.skipped_sets = skipped;
        Ok(config)
    }

    pub fn required_count(&self) -> usize {
        self.images.iter().filter(|i| i.required).count()
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::whole_file(path, format!("cannot read the config file: {e}")))
}

/// The config files of a directory, sorted. Hidden entries are skipped: the kubelet keeps a
/// ConfigMap's real files under `..data` and links each key at the top level.
fn config_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        ConfigError::whole_file(dir, format!("cannot read the config directory: {e}"))
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.')
                && (name.ends_with(".yaml") || name.ends_with(".yml"))
                && p.is_file()
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ConfigError::whole_file(
            dir,
            "no *.yaml or *.yml files in the config directory".into(),
        ));
    }
    Ok(files)
}

/// One file, parsed but not yet merged with the others.
struct FileParts {
    path: PathBuf,
    settings: RawSettings,
    credentials: Vec<CredentialSource>,
    images: Vec<ImageSpec>,
    selector: Option<NodeSelector>,
}

fn parse_file(text: &str, source: &Path) -> Result<FileParts, ConfigError> {
    let mut field = None;
    let raw: RawConfig = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            // `Spanned` entries show up as a `.value` field; users wrote no such key.
            let path = e.path().to_string().replace("].value", "]");
            if path != "." {
                field = Some(path);
            }
            e.into_inner()
        })
    })
    .map_err(|e| yaml_error(e, field, source))?;
    Ok(FileParts {
        path: source.to_path_buf(),
        settings: RawSettings {
            parallelism: raw.parallelism,
            per_registry_parallelism: raw.per_registry_parallelism,
            pull_timeout: raw.pull_timeout,
            resync_interval: raw.resync_interval,
            backoff: raw.backoff,
            anonymous_fallback: raw.anonymous_fallback,
            node_readiness: raw.node_readiness,
        },
        credentials: raw.credentials.into_iter().map(|c| c.0).collect(),
        selector: raw.node_selector,
        images: raw
            .images
            .into_iter()
            .map(|entry| {
                let line = entry.referenced.line() as usize;
                entry.value.into_spec(source, line)
            })
            .collect(),
    })
}

fn yaml_error(e: serde_saphyr::Error, field: Option<String>, source: &Path) -> ConfigError {
    let location = e.location();
    let name = source.display().to_string();
    let plain = e
        .without_snippet()
        .render_with_options(serde_saphyr::render_options! { snippets: SnippetMode::Off });
    let snippet = e.render_with_options(serde_saphyr::render_options! { source_name: Some(&name) });
    ConfigErrorDetails {
        file: source.to_path_buf(),
        line: location.map(|l| l.line() as usize),
        column: location.map(|l| l.column() as usize),
        field,
        message: strip_location(&plain),
        snippet: (snippet != plain).then_some(snippet),
    }
    .into()
}

/// serde-saphyr puts "line L column C: " (or " at line L column C") into its plain messages;
/// we print the location ourselves, in the `file:line:col` form editors understand.
fn strip_location(message: &str) -> String {
    let mut m = message.trim().trim_start_matches("error: ").to_string();
    if let Some(rest) = m.strip_prefix("line ")
        && let Some(idx) = rest.find(": ")
    {
        m = rest[idx + 2..].to_string();
    }
    if let Some(idx) = m.rfind(" at line ") {
        m.truncate(idx);
    }
    m
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    // Not `#[serde(flatten)]`ed from RawSettings: flatten loses line numbers and field paths.
    parallelism: Option<usize>,
    per_registry_parallelism: Option<usize>,
    #[serde(default, deserialize_with = "duration::option")]
    pull_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration::option")]
    resync_interval: Option<Duration>,
    backoff: Option<RawBackoff>,
    node_readiness: Option<RawNodeSettings>,
    /// This file's images are only for the nodes it selects.
    node_selector: Option<NodeSelector>,
    images: Vec<Spanned<ImageEntry>>,
    #[serde(default)]
    credentials: Vec<SourceEntry>,
    anonymous_fallback: Option<bool>,
}

/// One entry of `credentials:`: exactly one source key.
#[derive(Deserialize)]
#[serde(try_from = "RawSource")]
struct SourceEntry(CredentialSource);

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSource {
    docker_config: Option<PathBuf>,
    docker_config_dir: Option<PathBuf>,
    secret: Option<RawSecretRef>,
    node_defaults: Option<bool>,
    kubelet_root_dir: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecretRef {
    namespace: String,
    name: String,
}

/// The kubelet's default `--root-dir`.
pub const DEFAULT_KUBELET_ROOT_DIR: &str = "/var/lib/kubelet";

impl TryFrom<RawSource> for SourceEntry {
    type Error = String;

    fn try_from(r: RawSource) -> Result<Self, String> {
        let keys = [
            r.docker_config.is_some(),
            r.docker_config_dir.is_some(),
            r.secret.is_some(),
            r.node_defaults.is_some(),
        ];
        let expected = "one of dockerConfig, dockerConfigDir, secret, nodeDefaults";
        if keys.iter().filter(|k| **k).count() != 1 {
            return Err(format!("a credentials entry needs exactly {expected}"));
        }
        if r.kubelet_root_dir.is_some() && r.node_defaults.is_none() {
            return Err("kubeletRootDir goes with nodeDefaults: true".into());
        }
        let nonempty = |what: &str, p: PathBuf| {
            if p.as_os_str().is_empty() {
                Err(format!("{what} is empty"))
            } else {
                Ok(p)
            }
        };
        let source = if let Some(p) = r.docker_config {
            CredentialSource::DockerConfig(nonempty("dockerConfig", p)?)
        } else if let Some(p) = r.docker_config_dir {
            CredentialSource::DockerConfigDir(nonempty("dockerConfigDir", p)?)
        } else if let Some(s) = r.secret {
            let valid = |v: &str| {
                !v.is_empty()
                    && v.len() <= 253
                    && v.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                    })
            };
            if !valid(&s.namespace) || !valid(&s.name) {
                return Err(format!(
                    "secret {}/{} is not a valid Kubernetes namespace/name (lowercase letters, digits, '-', '.')",
                    s.namespace, s.name
                ));
            }
            CredentialSource::Secret {
                namespace: s.namespace,
                name: s.name,
            }
        } else if r.node_defaults == Some(true) {
            CredentialSource::NodeDefaults {
                kubelet_root_dir: r
                    .kubelet_root_dir
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_KUBELET_ROOT_DIR)),
            }
        } else {
            return Err("nodeDefaults: false declares no source; remove the entry".into());
        };
        Ok(SourceEntry(source))
    }
}

/// The settings of one file, or of all files once merged.
#[derive(Default, Clone, PartialEq)]
struct RawSettings {
    parallelism: Option<usize>,
    per_registry_parallelism: Option<usize>,
    pull_timeout: Option<Duration>,
    resync_interval: Option<Duration>,
    backoff: Option<RawBackoff>,
    anonymous_fallback: Option<bool>,
    node_readiness: Option<RawNodeSettings>,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawBackoff {
    #[serde(default, deserialize_with = "duration::option")]
    initial: Option<Duration>,
    #[serde(default, deserialize_with = "duration::option")]
    max: Option<Duration>,
}

/// Takes `theirs` into `mine` unless both are set and differ.
fn absorb_one<T: Clone + PartialEq>(
    name: &'static str,
    mine: &mut Option<T>,
    theirs: &Option<T>,
    file: &Path,
    files: &mut std::collections::HashMap<&'static str, PathBuf>,
) -> Result<(), ConfigError> {
    let Some(value) = theirs else { return Ok(()) };
    match mine {
        Some(existing) if existing != value => Err(ConfigErrorDetails {
            file: file.to_path_buf(),
            line: None,
            column: None,
            field: Some(name.to_string()),
            message: format!(
                "also set, to a different value, in {}; set it in one file only",
                files[name].display()
            ),
            snippet: None,
        }
        .into()),
        _ => {
            *mine = Some(value.clone());
            files.entry(name).or_insert_with(|| file.to_path_buf());
            Ok(())
        }
    }
}

impl RawSettings {
    fn absorb(
        &mut self,
        other: &RawSettings,
        file: &Path,
        files: &mut std::collections::HashMap<&'static str, PathBuf>,
    ) -> Result<(), ConfigError> {
        absorb_one(
            "parallelism",
            &mut self.parallelism,
            &other.parallelism,
            file,
            files,
        )?;
        absorb_one(
            "perRegistryParallelism",
            &mut self.per_registry_parallelism,
            &other.per_registry_parallelism,
            file,
            files,
        )?;
        absorb_one(
            "pullTimeout",
            &mut self.pull_timeout,
            &other.pull_timeout,
            file,
            files,
        )?;
        absorb_one(
            "resyncInterval",
            &mut self.resync_interval,
            &other.resync_interval,
            file,
            files,
        )?;
        absorb_one("backoff", &mut self.backoff, &other.backoff, file, files)?;
        absorb_one(
            "anonymousFallback",
            &mut self.anonymous_fallback,
            &other.anonymous_fallback,
            file,
            files,
        )?;
        absorb_one(
            "nodeReadiness",
            &mut self.node_readiness,
            &other.node_readiness,
            file,
            files,
        )
    }

    fn validate(
        self,
        source: &Path,
        files: &std::collections::HashMap<&'static str, PathBuf>,
        images: Vec<ImageSpec>,
        merged: Vec<String>,
    ) -> Result<Config, ConfigError> {
        let invalid = |field: &'static str, full: &str, message: String| -> ConfigError {
            ConfigErrorDetails {
                file: files
                    .get(field)
                    .cloned()
                    .unwrap_or_else(|| source.to_path_buf()),
                line: None,
                column: None,
                field: Some(full.to_string()),
                message,
                snippet: None,
            }
            .into()
        };
        let parallelism = self.parallelism.unwrap_or(DEFAULT_PARALLELISM);
        if parallelism == 0 {
            return Err(invalid(
                "parallelism",
                "parallelism",
                "must be at least 1".into(),
            ));
        }
        let per_registry_parallelism = self.per_registry_parallelism.unwrap_or(parallelism);
        if per_registry_parallelism == 0 {
            return Err(invalid(
                "perRegistryParallelism",
                "perRegistryParallelism",
                "must be at least 1".into(),
            ));
        }
        let pull_timeout = self.pull_timeout.unwrap_or(DEFAULT_PULL_TIMEOUT);
        if pull_timeout.is_zero() {
            return Err(invalid(
                "pullTimeout",
                "pullTimeout",
                "must be longer than 0s".into(),
            ));
        }
        let resync_interval = self.resync_interval.unwrap_or(DEFAULT_RESYNC_INTERVAL);
        if resync_interval < Duration::from_secs(1) {
            return Err(invalid(
                "resyncInterval",
                "resyncInterval",
                "must be at least 1s".into(),
            ));
        }
        let defaults = BackoffSettings::default();
        let backoff = BackoffSettings {
            initial: self
                .backoff
                .and_then(|b| b.initial)
                .unwrap_or(defaults.initial),
            max: self.backoff.and_then(|b| b.max).unwrap_or(defaults.max),
        };
        if backoff.initial.is_zero() {
            return Err(invalid(
                "backoff",
                "backoff.initial",
                "must be longer than 0s".into(),
            ));
        }
        if backoff.max < backoff.initial {
            return Err(invalid(
                "backoff",
                "backoff.max",
                format!(
                    "{} is shorter than backoff.initial ({})",
                    humantime::format_duration(backoff.max),
                    humantime::format_duration(backoff.initial)
                ),
            ));
        }
        Ok(Config {
            source: source.to_path_buf(),
            parallelism,
            per_registry_parallelism,
            pull_timeout,
            backoff,
            resync_interval,
            images,
            merged,
            credentials: Vec::new(),
            anonymous_fallback: self.anonymous_fallback.unwrap_or(false),
            node: RawNodeSettings::effective(self.node_readiness.as_ref()),
            skipped_sets: Vec::new(),
        })
    }
}

/// Two declarations of one image: the stricter one wins, so neither author is surprised.
pub fn merge_into(first: &mut ImageSpec, other: &ImageSpec) {
    first.required |= other.required;
    first.policy = first.policy.max(other.policy);
    first.refresh_interval = first.refresh_interval.min(other.refresh_interval);
}

/// One entry of `images:`, either a plain reference or a map.
struct ImageEntry {
    declared: String,
    reference: ImageRef,
    required: Option<bool>,
    policy: Option<PullPolicy>,
    refresh_interval: Option<Duration>,
}

impl ImageEntry {
    fn into_spec(self, file: &Path, line: usize) -> ImageSpec {
        // The kubelet defaults `:latest` (and no tag) to Always, anything else to IfNotPresent.
        let default_policy = if self.reference.is_latest() {
            PullPolicy::Always
        } else {
            PullPolicy::IfNotPresent
        };
        ImageSpec {
            declared: self.declared,
            reference: self.reference,
            required: self.required.unwrap_or(true),
            policy: self.policy.unwrap_or(default_policy),
            file: file.to_path_buf(),
            line,
            refresh_interval: self.refresh_interval.unwrap_or(DEFAULT_REFRESH_INTERVAL),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawImageEntry {
    image: Option<String>,
    registry: Option<String>,
    repository: Option<String>,
    tag: Option<String>,
    digest: Option<String>,
    required: Option<bool>,
    pull_policy: Option<PullPolicy>,
    #[serde(default, deserialize_with = "duration::option")]
    refresh_interval: Option<Duration>,
}

impl RawImageEntry {
    fn into_entry(self) -> Result<ImageEntry, String> {
        let (declared, reference) = match (self.image, self.repository) {
            (Some(_), Some(_)) => {
                return Err(
                    "use either `image` or `registry`/`repository`/`tag`/`digest`, not both".into(),
                );
            }
            (None, None) => {
                return Err("an entry needs `image` (a reference) or `repository`".into());
            }
            (Some(image), None) => {
                if self.registry.is_some() || self.tag.is_some() || self.digest.is_some() {
                    return Err(
                        "`registry`, `tag` and `digest` go with `repository`; with `image`, write them into the reference".into(),
                    );
                }
                let reference = ImageRef::parse(&image).map_err(|e| e.to_string())?;
                (image, reference)
            }
            (None, Some(repository)) => {
                let reference = ImageRef::from_parts(
                    self.registry.as_deref(),
                    &repository,
                    self.tag.as_deref(),
                    self.digest.as_deref(),
                )
                .map_err(|e| e.to_string())?;
                (
                    declared_from_parts(&self.registry, &repository, &self.tag, &self.digest),
                    reference,
                )
            }
        };
        Ok(ImageEntry {
            declared,
            reference,
            required: self.required,
            policy: self.pull_policy,
            refresh_interval: self.refresh_interval,
        })
    }
}

fn declared_from_parts(
    registry: &Option<String>,
    repository: &str,
    tag: &Option<String>,
    digest: &Option<String>,
) -> String {
    let mut s = String::new();
    if let Some(r) = registry {
        s.push_str(r);
        s.push('/');
    }
    s.push_str(repository);
    if let Some(t) = tag {
        s.push(':');
        s.push_str(t);
    }
    if let Some(d) = digest {
        s.push('@');
        s.push_str(d);
    }
    s
}

impl<'de> Deserialize<'de> for ImageEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Hand-written rather than `untagged`, which would hide the real error of a bad map.
        struct EntryVisitor;
        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = ImageEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an image reference or a map with `image` or `repository`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ImageEntry, E> {
                let reference = ImageRef::parse(v).map_err(E::custom)?;
                Ok(ImageEntry {
                    declared: v.to_string(),
                    reference,
                    required: None,
                    policy: None,
                    refresh_interval: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ImageEntry, A::Error> {
                let raw = RawImageEntry::deserialize(de::value::MapAccessDeserializer::new(map))?;
                raw.into_entry().map_err(de::Error::custom)
            }
        }
        deserializer.deserialize_any(EntryVisitor)
    }
}

pub mod duration {
    //! Durations written as `30s`, `10m`, `1h30m`.
    use super::*;

    pub fn parse(s: &str) -> Result<Duration, String> {
        humantime::parse_duration(s.trim())
            .map_err(|e| format!("invalid duration {s:?} ({e}); write e.g. 30s, 10m or 1h"))
    }

    pub fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map(Some).map_err(de::Error::custom)
    }
}

/// What `prepuller check` prints: every entry as it will be pulled.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    pub source: PathBuf,
    pub parallelism: usize,
    pub per_registry_parallelism: usize,
    pub pull_timeout_seconds: u64,
    pub images: Vec<CheckedImage>,
    pub merged: Vec<String>,
    /// Credential sources, as `dockerConfig /path`, `secret ns/name`, … (never their content).
    pub credentials: Vec<String>,
    pub anonymous_fallback: bool,
    /// Image sets with a `nodeSelector`, not listed in `images`: only for the nodes they select.
    pub node_specific_sets: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckedImage {
    pub line: usize,
    pub image: String,
    pub normalized: String,
    pub required: bool,
    pub policy: PullPolicy,
}

impl From<&Config> for CheckReport {
    fn from(c: &Config) -> Self {
        CheckReport {
            source: c.source.clone(),
            parallelism: c.parallelism,
            per_registry_parallelism: c.per_registry_parallelism,
            pull_timeout_seconds: c.pull_timeout.as_secs(),
            images: c
                .images
                .iter()
                .map(|i| CheckedImage {
                    line: i.line,
                    image: i.declared.clone(),
                    normalized: i.reference.to_string(),
                    required: i.required,
                    policy: i.policy,
                })
                .collect(),
            merged: c.merged.clone(),
            credentials: c.credentials.iter().map(ToString::to_string).collect(),
            anonymous_fallback: c.anonymous_fallback,
            node_specific_sets: c
                .skipped_sets
                .iter()
                .map(|s| {
                    format!(
                        "{} ({} images): only for nodes matching {}",
                        s.file.display(),
                        s.images,
                        s.selector
                    )
                })
                .collect(),
        }
    }
}

impl CheckReport {
    pub fn table(&self) -> String {
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
        t.set_header(["LINE", "NORMALIZED", "POLICY", "REQUIRED"]);
        for i in &self.images {
            t.add_row([
                i.line.to_string(),
                i.normalized.clone(),
                i.policy.to_string(),
                if i.required { "yes" } else { "no" }.to_string(),
            ]);
        }
        let mut s = format!("{}\n", t);
        for m in &self.merged {
            s.push_str(&format!("note: {m}\n"));
        }
        if !self.credentials.is_empty() {
            s.push_str(&format!(
                "credential sources: {}{}\n",
                self.credentials.join(", "),
                if self.anonymous_fallback {
                    "; then anonymous (anonymousFallback)"
                } else {
                    ""
                }
            ));
        }
        for m in &self.node_specific_sets {
            s.push_str(&format!("note: {m}\n"));
        }
        s.push_str(&format!(
            "{}: valid, {} images ({} required), parallelism {} ({} per registry)\n",
            self.source.display(),
            self.images.len(),
            self.images.iter().filter(|i| i.required).count(),
            self.parallelism,
            self.per_registry_parallelism
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("images.yaml"))
    }

    #[test]
    fn full_example_from_the_docs() {
        let c = parse(
            r#"
parallelism: 4
perRegistryParallelism: 2
pullTimeout: 10m
backoff: {initial: 10s, max: 5m}
images:
  - redislabs/redis:7.2.4-64
  - image: registry.example.com/redislabs/operator:7.2.4-7
    required: false
  - registry: myregistry.example.com
    repository: myrepo/cass-management-api
    tag: 3.11.10-v0.1.26
    pullPolicy: Always
  - busybox
"#,
        )
        .unwrap();
        assert_eq!(c.parallelism, 4);
        assert_eq!(c.per_registry_parallelism, 2);
        assert_eq!(c.pull_timeout, Duration::from_secs(600));
        assert_eq!(c.backoff.max, Duration::from_secs(300));
        let got: Vec<_> = c
            .images
            .iter()
            .map(|i| (i.reference.to_string(), i.required, i.policy, i.line))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "docker.io/redislabs/redis:7.2.4-64".to_string(),
                    true,
                    PullPolicy::IfNotPresent,
                    7
                ),
                (
                    "registry.example.com/redislabs/operator:7.2.4-7".to_string(),
                    false,
                    PullPolicy::IfNotPresent,
                    8
                ),
                (
                    "myregistry.example.com/myrepo/cass-management-api:3.11.10-v0.1.26".to_string(),
                    true,
                    PullPolicy::Always,
                    10
                ),
                (
                    "docker.io/library/busybox:latest".to_string(),
                    true,
                    PullPolicy::Always,
                    14
                ),
            ]
        );
    }

    #[test]
    fn defaults_follow_the_kubelet() {
        let c = parse("images: [nginx:1.25]").unwrap();
        assert_eq!(c.parallelism, 3);
        assert_eq!(c.per_registry_parallelism, 3);
        assert_eq!(c.backoff, BackoffSettings::default());
        assert_eq!(c.images[0].policy, PullPolicy::IfNotPresent);
        assert!(c.images[0].required);
    }

    #[test]
    fn duplicates_are_merged_with_the_strictest_settings() {
        let c = parse(
            "images:\n  - image: nginx:1.25\n    required: false\n  - docker.io/library/nginx:1.25\n  - image: index.docker.io/library/nginx:1.25\n    pullPolicy: Always\n",
        )
        .unwrap();
        assert_eq!(c.images.len(), 1);
        assert!(c.images[0].required);
        assert_eq!(c.images[0].policy, PullPolicy::Always);
        assert_eq!(c.merged.len(), 2);
        assert!(c.merged[0].contains("images.yaml:4"), "{:?}", c.merged);
    }

    #[test]
    fn unknown_key_names_file_line_and_field() {
        let e = parse("images:\n  - image: nginx:1.25\n    requird: true\n").unwrap_err();
        assert_eq!((e.line, e.column), (Some(3), Some(5)));
        assert_eq!(e.field.as_deref(), Some("images[0].requird"));
        assert!(
            e.message.contains("unknown field `requird`"),
            "{}",
            e.message
        );
        assert!(
            e.headline()
                .starts_with("images.yaml:3:5: field `images[0].requird`: "),
            "{}",
            e.headline()
        );
    }

    #[test]
    fn bad_reference_is_reported_at_its_line() {
        let e = parse("images:\n  - nginx:1.25\n  - Nginx:1.25\n").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert_eq!(e.field.as_deref(), Some("images[1]"));
        assert!(e.message.contains("must be lowercase"), "{}", e.message);
    }

    #[test]
    fn bad_duration_names_the_field() {
        let e = parse("pullTimeout: ten minutes\nimages: []\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("pullTimeout"));
        assert_eq!(e.line, Some(1));
        assert!(e.message.contains("invalid duration"), "{}", e.message);
    }

    #[test]
    fn bad_values_are_rejected() {
        for (text, field, needle) in [
            ("parallelism: 0\nimages: []", "parallelism", "at least 1"),
            ("parallelism: -2\nimages: []", "parallelism", ""),
            (
                "backoff: {initial: 1m, max: 10s}\nimages: []",
                "backoff.max",
                "shorter than",
            ),
            (
                "images:\n  - image: a:1\n    pullPolicy: Sometimes\n",
                "images[0].pullPolicy",
                "Sometimes",
            ),
            (
                "images:\n  - image: a:1\n    repository: b\n",
                "images[0]",
                "either",
            ),
            (
                "images:\n  - required: true\n",
                "images[0]",
                "needs `image`",
            ),
            (
                "images:\n  - image: a:1\n    tag: \"2\"\n",
                "images[0]",
                "go with `repository`",
            ),
            (
                "images:\n  - repository: Myrepo\n",
                "images[0]",
                "lowercase",
            ),
            ("images:\n  - 42\n", "images[0]", "image reference"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{text}: {}", e.render());
            assert!(e.message.contains(needle), "{text}: {}", e.message);
        }
    }

    #[test]
    fn credential_sources() {
        let c = parse(
            "credentials:\n  - dockerConfig: /var/lib/kubelet/config.json\n  - dockerConfigDir: /etc/prepuller/pull-secrets\n  - secret: {namespace: redis, name: regcred}\n  - nodeDefaults: true\n  - nodeDefaults: true\n    kubeletRootDir: /host/kubelet\nanonymousFallback: true\nimages: []\n",
        )
        .unwrap();
        assert_eq!(
            c.credentials,
            [
                CredentialSource::DockerConfig("/var/lib/kubelet/config.json".into()),
                CredentialSource::DockerConfigDir("/etc/prepuller/pull-secrets".into()),
                CredentialSource::Secret {
                    namespace: "redis".into(),
                    name: "regcred".into()
                },
                CredentialSource::NodeDefaults {
                    kubelet_root_dir: DEFAULT_KUBELET_ROOT_DIR.into()
                },
                CredentialSource::NodeDefaults {
                    kubelet_root_dir: "/host/kubelet".into()
                },
            ]
        );
        assert!(c.anonymous_fallback);
        assert!(!parse("images: []").unwrap().anonymous_fallback);
    }

    #[test]
    fn bad_credential_entries_name_the_entry() {
        for (text, needle) in [
            (
                "credentials:\n  - dockerConfig: /a\n    secret: {namespace: a, name: b}\nimages: []",
                "exactly one of",
            ),
            ("credentials:\n  - {}\nimages: []", "exactly one of"),
            (
                "credentials:\n  - dockerconfig: /a\nimages: []",
                "unknown field",
            ),
            (
                "credentials:\n  - secret: {namespace: Redis, name: regcred}\nimages: []",
                "not a valid Kubernetes",
            ),
            (
                "credentials:\n  - secret: {name: regcred}\nimages: []",
                "namespace",
            ),
            (
                "credentials:\n  - dockerConfig: /a\n    kubeletRootDir: /b\nimages: []",
                "goes with nodeDefaults",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(
                e.field
                    .as_deref()
                    .is_some_and(|f| f.starts_with("credentials[0]")),
                "{text}: {}",
                e.render()
            );
            assert!(e.line.is_some_and(|l| l >= 2), "{text}: {}", e.render());
            assert!(e.message.contains(needle), "{text}: {}", e.message);
        }
    }

    #[test]
    fn missing_images_and_broken_yaml_are_errors() {
        let e = parse("parallelism: 2\n").unwrap_err();
        assert!(e.message.contains("images"), "{}", e.render());
        let e = parse("images: [\n").unwrap_err();
        assert!(e.line.is_some(), "{}", e.render());
    }

    #[test]
    fn missing_file_names_it() {
        let e = Config::load(Path::new("/nonexistent/prepuller.yaml")).unwrap_err();
        assert!(
            e.headline()
                .starts_with("/nonexistent/prepuller.yaml: cannot read"),
            "{}",
            e.headline()
        );
    }

    /// The layout the kubelet gives a mounted ConfigMap: real files under a timestamped
    /// directory, `..data` pointing at it, and one top-level link per key.
    fn configmap_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("..2026_11_23_12_00_00.000000001");
        std::fs::create_dir(&real).unwrap();
        for (name, text) in files {
            std::fs::write(real.join(name), text).unwrap();
        }
        std::os::unix::fs::symlink(real.file_name().unwrap(), dir.path().join("..data")).unwrap();
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.path().join(name)).unwrap();
        }
        dir
    }

    #[test]
    fn a_configmap_directory_merges_its_image_sets() {
        let dir = configmap_dir(&[
            (
                "base.yaml",
                "parallelism: 2\nresyncInterval: 30s\nimages:\n  - nginx:1.25\n  - image: redis:7\n    required: false\n",
            ),
            (
                "team.yml",
                "images:\n  - image: docker.io/library/redis:7\n    pullPolicy: Always\n    refreshInterval: 10m\n  - busybox:1.36\n",
            ),
            ("notes.txt", "not a config"),
        ]);
        let c = Config::load(dir.path()).unwrap();
        assert_eq!(c.parallelism, 2);
        assert_eq!(c.resync_interval, Duration::from_secs(30));
        let got: Vec<_> = c
            .images
            .iter()
            .map(|i| (i.reference.to_string(), i.required, i.policy))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "docker.io/library/nginx:1.25".into(),
                    true,
                    PullPolicy::IfNotPresent
                ),
                ("docker.io/library/redis:7".into(), true, PullPolicy::Always),
                (
                    "docker.io/library/busybox:1.36".into(),
                    true,
                    PullPolicy::IfNotPresent
                ),
            ]
        );
        assert_eq!(c.images[1].refresh_interval, Duration::from_secs(600));
        assert_eq!(c.images[0].refresh_interval, DEFAULT_REFRESH_INTERVAL);
        assert_eq!(c.merged.len(), 1);
    }

    #[test]
    fn a_setting_given_twice_differently_names_both_files() {
        let dir = configmap_dir(&[
            ("a.yaml", "parallelism: 2\nimages: [nginx:1.25]\n"),
            ("b.yaml", "parallelism: 5\nimages: [redis:7]\n"),
        ]);
        let e = Config::load(dir.path()).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("parallelism"));
        assert!(e.file.ends_with("b.yaml"), "{}", e.headline());
        assert!(e.message.contains("a.yaml"), "{}", e.headline());
        // The same value twice is fine.
        let dir = configmap_dir(&[
            ("a.yaml", "parallelism: 2\nimages: [nginx:1.25]\n"),
            ("b.yaml", "parallelism: 2\nimages: [redis:7]\n"),
        ]);
        assert_eq!(Config::load(dir.path()).unwrap().images.len(), 2);
    }

    #[test]
    fn an_error_in_one_file_of_a_directory_names_that_file() {
        let dir = configmap_dir(&[
            ("a.yaml", "images: [nginx:1.25]\n"),
            ("b.yaml", "images:\n  - Redis:7\n"),
        ]);
        let e = Config::load(dir.path()).unwrap_err();
        assert!(e.file.ends_with("b.yaml"), "{}", e.headline());
        assert_eq!(e.line, Some(2));
        let empty = tempfile::tempdir().unwrap();
        let e = Config::load(empty.path()).unwrap_err();
        assert!(e.message.contains("no *.yaml"), "{}", e.headline());
    }

    #[test]
    fn node_readiness_defaults_and_switches() {
        let c = parse("images: [nginx:1.25]").unwrap();
        assert_eq!(c.node, NodeSettings::default());
        assert_eq!(c.node.label.as_deref(), Some("prepuller.dev/ready"));
        assert_eq!(
            c.node.startup_taint.as_deref(),
            Some("startup-taint.cluster-autoscaler.kubernetes.io/prepuller")
        );
        assert_eq!(c.node.taint_timeout, Duration::from_secs(900));
        let c = parse(
            "nodeReadiness:\n  label: \"\"\n  startupTaint: readiness.k8s.io/images\n  taintTimeout: 5m\n  events: false\nimages: [nginx:1.25]",
        )
        .unwrap();
        assert_eq!(c.node.label, None, "an empty label turns it off");
        assert_eq!(
            c.node.startup_taint.as_deref(),
            Some("readiness.k8s.io/images")
        );
        assert_eq!(c.node.taint_timeout, Duration::from_secs(300));
        assert!(!c.node.events);
    }

    #[test]
    fn bad_node_settings_name_file_line_and_field() {
        let e = parse("nodeReadiness:\n  label: \"Bad Label\"\nimages: []\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("nodeReadiness"), "{}", e.render());
        assert_eq!(e.line, Some(2), "{}", e.render());
        assert!(e.message.contains("label \"Bad Label\""), "{}", e.render());
        let e = parse("nodeReadiness:\n  taintTimout: 5m\nimages: []\n").unwrap_err();
        assert!(e.message.contains("taintTimout"), "{}", e.render());
        let e = parse(
            "nodeSelector:\n  matchExpressions:\n    - {key: pool, operator: In}\nimages: []\n",
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("nodeSelector"), "{}", e.render());
        assert!(e.line.is_some_and(|l| l >= 2), "{}", e.render());
        assert!(
            e.message.contains("needs at least one value"),
            "{}",
            e.render()
        );
    }

    #[test]
    fn a_file_whose_node_selector_does_not_select_this_node_contributes_no_images() {
        let dir = configmap_dir(&[
            ("base.yaml", "images: [nginx:1.25]\n"),
            (
                "gpu.yaml",
                "nodeSelector:\n  matchLabels: {pool: gpu}\nparallelism: 2\nimages: [cuda:12, nginx:1.25]\n",
            ),
        ]);
        let sources = Config::read_sources(dir.path()).unwrap();
        let refs = |c: &Config| -> Vec<String> {
            c.images.iter().map(|i| i.reference.to_string()).collect()
        };
        let labels = |v: &str| Labels::from([("pool".to_string(), v.to_string())]);
        let gpu =
            Config::from_sources_for_node(dir.path(), &sources, Some(&labels("gpu"))).unwrap();
        assert_eq!(
            refs(&gpu),
            ["docker.io/library/nginx:1.25", "docker.io/library/cuda:12"]
        );
        assert!(gpu.skipped_sets.is_empty());
        let cpu =
            Config::from_sources_for_node(dir.path(), &sources, Some(&labels("cpu"))).unwrap();
        assert_eq!(refs(&cpu), ["docker.io/library/nginx:1.25"]);
        assert_eq!(cpu.parallelism, 2, "settings apply on every node");
        assert_eq!(cpu.skipped_sets.len(), 1);
        let note = cpu.skipped_sets[0].to_string();
        assert!(
            note.contains("gpu.yaml (2 images) is for nodes matching pool=gpu"),
            "{note}"
        );
        // Without labels (no cluster) only the sets without a selector apply.
        let unknown = Config::from_sources(dir.path(), &sources).unwrap();
        assert_eq!(refs(&unknown), ["docker.io/library/nginx:1.25"]);
        assert!(unknown.skipped_sets[0].labels_unknown);
        let check = CheckReport::from(&unknown).table();
        assert!(
            check.contains("only for nodes matching pool=gpu"),
            "{check}"
        );
    }
}
