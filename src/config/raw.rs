//! The YAML of one config file as serde reads it, before defaults and merging.
//!
//! Entries are validated while they are read, so a bad reference or setting is reported at
//! its own line, with its field path.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_saphyr::Spanned;

use super::credentials::SourceEntry;
use super::disk_guard::RawDiskGuard;
use super::fleet::RawFleet;
use super::image_registry::{FileImage, ImageRegistry, RegistryMirror};
use super::node_selector::NodeSelector;
use super::node_settings::RawNodeSettings;
use super::{DEFAULT_REFRESH_INTERVAL, ImageSpec, PullPolicy, duration};
use crate::reference::{ImageRef, ReferenceError, written_repository};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawConfig {
    // Not `#[serde(flatten)]`ed from RawSettings: flatten loses line numbers and field paths.
    pub parallelism: Option<usize>,
    pub per_registry_parallelism: Option<usize>,
    #[serde(default, deserialize_with = "duration::option")]
    pub pull_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration::option")]
    pub resync_interval: Option<Duration>,
    pub backoff: Option<RawBackoff>,
    pub node_readiness: Option<RawNodeSettings>,
    pub disk_guard: Option<RawDiskGuard>,
    pub fleet: Option<RawFleet>,
    /// This file's images are only for the nodes it selects.
    pub node_selector: Option<NodeSelector>,
    pub images: Vec<Spanned<ImageEntry>>,
    #[serde(default)]
    pub credentials: Vec<SourceEntry>,
    pub anonymous_fallback: Option<bool>,
    /// This file's images are pulled from there (see `image_registry`).
    pub image_registry: Option<ImageRegistry>,
    pub global: Option<RawGlobal>,
    /// Refused, with a pointer to `imageRegistry`.
    #[serde(default, rename = "registryMirror")]
    pub _registry_mirror: Option<RegistryMirror>,
}

/// `global:`, spelled as Helm charts spell it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawGlobal {
    /// Every file's images are pulled from there, unless a file or an entry says otherwise.
    pub image_registry: Option<ImageRegistry>,
    #[serde(default, rename = "registryMirror")]
    pub _registry_mirror: Option<RegistryMirror>,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackoff {
    #[serde(default, deserialize_with = "duration::option")]
    pub initial: Option<Duration>,
    #[serde(default, deserialize_with = "duration::option")]
    pub max: Option<Duration>,
}

/// One entry of `images:`, either a plain reference or a map.
pub(super) struct ImageEntry {
    declared: String,
    reference: ImageRef,
    required: Option<bool>,
    policy: Option<PullPolicy>,
    refresh_interval: Option<Duration>,
    /// The entry's own `imageRegistry`, when it moved the reference.
    image_registry: Option<String>,
    /// No registry named in coordinates and no own `imageRegistry`: the file's or the global
    /// one applies.
    follows_scope: bool,
}

impl ImageEntry {
    pub fn into_spec(self, file: &Path, line: usize) -> FileImage {
        // The kubelet defaults `:latest` (and no tag) to Always, anything else to IfNotPresent.
        let default_policy = if self.reference.is_latest() {
            PullPolicy::Always
        } else {
            PullPolicy::IfNotPresent
        };
        let spec = ImageSpec {
            declared: self.declared,
            reference: self.reference,
            image_registry: self.image_registry,
            required: self.required.unwrap_or(true),
            policy: self.policy.unwrap_or(default_policy),
            file: file.to_path_buf(),
            line,
            refresh_interval: self.refresh_interval.unwrap_or(DEFAULT_REFRESH_INTERVAL),
        };
        FileImage {
            spec,
            follows_scope: self.follows_scope,
        }
    }
}

/// What is wrong with one map entry of `images:`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageEntryError {
    #[error("use either `image` or `registry`/`repository`/`tag`/`digest`, not both")]
    ImageAndRepository,
    #[error("an entry needs `image` (a reference) or `repository`")]
    NoImage,
    #[error(
        "`registry`, `tag` and `digest` go with `repository`; with `image`, write them into the reference"
    )]
    PartsWithImage,
    #[error(
        "use either `registry` (where the image is) or `imageRegistry` (where to pull it from \
         instead), not both"
    )]
    RegistryAndImageRegistry,
    #[error("`imageRegistry` {registry} makes {source}")]
    ImageRegistry {
        registry: String,
        source: ReferenceError,
    },
    #[error(transparent)]
    Reference(#[from] ReferenceError),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawImageEntry {
    image: Option<String>,
    registry: Option<String>,
    repository: Option<String>,
    /// `versionTag`: a Redis Enterprise `*ImageSpec` pasted as it is.
    #[serde(alias = "versionTag")]
    tag: Option<String>,
    digest: Option<String>,
    required: Option<bool>,
    #[serde(alias = "imagePullPolicy")]
    pull_policy: Option<PullPolicy>,
    #[serde(default, deserialize_with = "duration::option")]
    refresh_interval: Option<Duration>,
    image_registry: Option<ImageRegistry>,
    #[serde(default, rename = "registryMirror")]
    _registry_mirror: Option<RegistryMirror>,
}

impl RawImageEntry {
    fn into_entry(self) -> Result<ImageEntry, ImageEntryError> {
        if self.registry.is_some() && self.image_registry.is_some() {
            return Err(ImageEntryError::RegistryAndImageRegistry);
        }
        // Coordinates that name their registry (in `registry`, or at the start of
        // `repository`: the REC form) keep it, as a chart's per-component `registry` does.
        let names_registry = self.registry.is_some()
            || self
                .repository
                .as_deref()
                .is_some_and(|r| written_repository(r) != r);
        let follows_scope = !names_registry && self.image_registry.is_none();
        let (declared, reference) = match (self.image, self.repository) {
            (Some(_), Some(_)) => return Err(ImageEntryError::ImageAndRepository),
            (None, None) => return Err(ImageEntryError::NoImage),
            (Some(image), None) => {
                if self.registry.is_some() || self.tag.is_some() || self.digest.is_some() {
                    return Err(ImageEntryError::PartsWithImage);
                }
                let reference = ImageRef::parse(&image)?;
                (image, reference)
            }
            (None, Some(repository)) => {
                let reference = ImageRef::from_parts(
                    self.registry.as_deref(),
                    &repository,
                    self.tag.as_deref(),
                    self.digest.as_deref(),
                )?;
                (
                    declared_from_parts(&self.registry, &repository, &self.tag, &self.digest),
                    reference,
                )
            }
        };
        let (reference, image_registry) = match &self.image_registry {
            None => (reference, None),
            Some(registry) => match registry.rewrite(&declared, &reference) {
                Ok(None) => (reference, None),
                Ok(Some(moved)) => (moved, Some(registry.to_string())),
                Err(source) => {
                    return Err(ImageEntryError::ImageRegistry {
                        registry: registry.to_string(),
                        source,
                    });
                }
            },
        };
        Ok(ImageEntry {
            declared,
            reference,
            required: self.required,
            policy: self.pull_policy,
            refresh_interval: self.refresh_interval,
            image_registry,
            follows_scope,
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
                    image_registry: None,
                    follows_scope: true,
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
