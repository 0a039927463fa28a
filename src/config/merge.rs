//! Merging the files of a config directory into one [`Config`], and validating the result.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::credentials::CredentialSource;
use super::disk_guard::RawDiskGuard;
use super::error::ConfigError;
use super::fleet::RawFleet;
use super::image_registry::{ImageRegistry, Scope};
use super::load::FileParts;
use super::node_selector::Labels;
use super::node_settings::RawNodeSettings;
use super::raw::RawBackoff;
use super::{
    BackoffSettings, Config, DEFAULT_PARALLELISM, DEFAULT_PULL_TIMEOUT, DEFAULT_RESYNC_INTERVAL,
    ImageSpec, SkippedSet,
};
use crate::reference::ImageRef;

/// Which file set each setting first, for messages about it.
type SettingFiles = HashMap<&'static str, PathBuf>;

/// Merges parsed files: images are unioned (the stricter settings win for an image in two
/// files); a setting may be given in several files only with the same value.
///
/// Settings apply on every node whatever the file's `nodeSelector` (so every node accepts
/// or rejects a config alike); the selector only decides whether the file's images do.
pub(super) fn combine(
    source: &Path,
    files: Vec<FileParts>,
    labels: Option<&Labels>,
) -> Result<Config, ConfigError> {
    let mut settings = RawSettings::default();
    let mut setting_files = SettingFiles::default();
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
    // Each file's entries move below its `imageRegistry`, else the global one.
    let global = settings.global_image_registry.clone();
    let mut specs = Vec::new();
    for f in files {
        let scope = match (&f.image_registry, &global) {
            (Some(registry), _) => Some(Scope {
                registry,
                key: "imageRegistry",
            }),
            (None, Some(registry)) => Some(Scope {
                registry,
                key: "global.imageRegistry",
            }),
            (None, None) => None,
        };
        for (n, image) in f.images.into_iter().enumerate() {
            specs.push(image.into_spec(scope.as_ref(), n)?);
        }
    }
    let mut images: Vec<ImageSpec> = Vec::new();
    let mut position: HashMap<ImageRef, usize> = HashMap::new();
    let mut merged = Vec::new();
    for spec in specs {
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

/// The settings of one file, or of all files once merged.
#[derive(Default, Clone, PartialEq)]
pub(super) struct RawSettings {
    pub parallelism: Option<usize>,
    pub per_registry_parallelism: Option<usize>,
    pub pull_timeout: Option<Duration>,
    pub resync_interval: Option<Duration>,
    pub backoff: Option<RawBackoff>,
    pub anonymous_fallback: Option<bool>,
    pub node_readiness: Option<RawNodeSettings>,
    /// `global.imageRegistry`: one value for every file of a directory.
    pub global_image_registry: Option<ImageRegistry>,
    pub disk_guard: Option<RawDiskGuard>,
    pub fleet: Option<RawFleet>,
}

/// Takes `theirs` into `mine` unless both are set and differ.
fn absorb_one<T: Clone + PartialEq>(
    name: &'static str,
    mine: &mut Option<T>,
    theirs: &Option<T>,
    file: &Path,
    files: &mut SettingFiles,
) -> Result<(), ConfigError> {
    let Some(value) = theirs else { return Ok(()) };
    match mine {
        Some(existing) if existing != value => Err(ConfigError::setting(
            file,
            Some(name),
            format!(
                "also set, to a different value, in {}; set it in one file only",
                files[name].display()
            ),
        )),
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
        files: &mut SettingFiles,
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
        )?;
        absorb_one(
            "global.imageRegistry",
            &mut self.global_image_registry,
            &other.global_image_registry,
            file,
            files,
        )?;
        absorb_one(
            "diskGuard",
            &mut self.disk_guard,
            &other.disk_guard,
            file,
            files,
        )?;
        absorb_one("fleet", &mut self.fleet, &other.fleet, file, files)
    }

    fn validate(
        self,
        source: &Path,
        files: &SettingFiles,
        images: Vec<ImageSpec>,
        merged: Vec<String>,
    ) -> Result<Config, ConfigError> {
        let invalid = |field: &'static str, full: &str, message: String| -> ConfigError {
            let file = files.get(field).map_or(source, PathBuf::as_path);
            ConfigError::setting(file, Some(full), message)
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
            disk_guard: RawDiskGuard::effective(self.disk_guard.as_ref()),
            fleet: RawFleet::effective(self.fleet.as_ref()),
            skipped_sets: Vec::new(),
        })
    }
}

/// Two declarations of one image: the stricter one wins, so neither author is surprised.
fn merge_into(first: &mut ImageSpec, other: &ImageSpec) {
    first.required |= other.required;
    first.policy = first.policy.max(other.policy);
    first.refresh_interval = first.refresh_interval.min(other.refresh_interval);
}
