//! The declared image list: a YAML file of images and pull settings.
//!
//! Every error names the file, line, column and field, so that an operator can fix a
//! ConfigMap without guessing. Entries are validated while they are read, so a bad
//! reference is reported at its own line.
//!
//! Data flows one way: `load` reads the files, `raw` is their YAML as serde sees it, `merge`
//! unions the files of a directory and validates the settings. Only image
//! references come from elsewhere ([`crate::reference`]); nothing here knows the runtime,
//! the credentials' content or the cluster.

mod credentials;
mod disk_guard;
pub mod duration;
mod error;
mod fleet;
mod image_registry;
mod load;
mod merge;
mod node_selector;
mod node_settings;
mod raw;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::reference::ImageRef;

pub use credentials::{
    CredentialSource, DEFAULT_KUBELET_ROOT_DIR, DEFAULT_PLUGIN_TIMEOUT, SourceError,
};
pub use disk_guard::{
    DEFAULT_HIGH_THRESHOLD_PERCENT, DEFAULT_LOW_THRESHOLD_PERCENT, DEFAULT_MARGIN_PERCENT,
    DiskGuardError, DiskGuardSettings,
};
pub use duration::DurationError;
pub use error::{ConfigError, ConfigErrorDetails};
pub use fleet::{
    DEFAULT_LEASE_DURATION, FleetError, FleetSettings, MAX_CONCURRENT_NODES, OnUnavailable,
};
pub use image_registry::ImageRegistry;
pub use node_selector::{Labels, NameError, NodeSelector, Operator, Requirement, SelectorError};
pub use node_settings::{
    DEFAULT_LABEL, DEFAULT_STARTUP_TAINT, DEFAULT_TAINT_TIMEOUT, NodeSettings, NodeSettingsError,
};
pub use raw::ImageEntryError;

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
    /// What is pulled and kept present (after any `imageRegistry`).
    pub reference: ImageRef,
    /// The `imageRegistry` (the entry's, the file's or the global one) that moved the image
    /// from `declared` to `reference`; `None` when it is pulled as declared.
    pub image_registry: Option<String>,
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
    /// When the image filesystem is too full to pull (`diskGuard`).
    pub disk_guard: DiskGuardSettings,
    /// The cluster-wide pull budget (`fleet`); `None`: each node pulls on its own.
    pub fleet: Option<FleetSettings>,
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

impl Config {
    /// Reads and validates a config file, or every `*.yaml`/`*.yml` file of a directory (a
    /// mounted ConfigMap: each key is an image set, and the sets are merged).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::from_sources(path, &Config::read_sources(path)?)
    }

    /// The texts [`Config::load`] would parse, so a caller can skip parsing when nothing changed.
    pub fn read_sources(path: &Path) -> Result<Vec<(PathBuf, String)>, ConfigError> {
        load::read_sources(path)
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
            .map(|(file, text)| load::parse_file(text, file))
            .collect::<Result<Vec<_>, _>>()?;
        merge::combine(path, parts, labels)
    }

    /// Parses the text of one config file; `source` names it in errors.
    pub fn parse(text: &str, source: &Path) -> Result<Config, ConfigError> {
        let parts = load::parse_file(text, source)?;
        merge::combine(source, vec![parts], None)
    }

    pub fn required_count(&self) -> usize {
        self.images.iter().filter(|i| i.required).count()
    }
}

#[cfg(test)]
mod tests;
