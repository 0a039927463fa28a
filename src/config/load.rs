//! Reading config files: one file, or every `*.yaml`/`*.yml` of a directory (a mounted
//! ConfigMap), each parsed into its parts before they are merged.

use std::path::{Path, PathBuf};

use super::credentials::CredentialSource;
use super::error::ConfigError;
use super::image_registry::{FileImage, ImageRegistry};
use super::merge::RawSettings;
use super::node_selector::NodeSelector;
use super::raw::RawConfig;

/// The texts of the config file, or of each config file of a directory, in name order.
pub(super) fn read_sources(path: &Path) -> Result<Vec<(PathBuf, String)>, ConfigError> {
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
pub(super) struct FileParts {
    pub path: PathBuf,
    pub settings: RawSettings,
    pub credentials: Vec<CredentialSource>,
    pub images: Vec<FileImage>,
    pub selector: Option<NodeSelector>,
    /// The file's `imageRegistry`, for its images only.
    pub image_registry: Option<ImageRegistry>,
}

/// Parses the text of one config file; `source` names it in errors.
pub(super) fn parse_file(text: &str, source: &Path) -> Result<FileParts, ConfigError> {
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
    .map_err(|e| ConfigError::yaml(e, field, source))?;
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
            global_image_registry: raw.global.and_then(|g| g.image_registry),
            disk_guard: raw.disk_guard,
            fleet: raw.fleet,
        },
        image_registry: raw.image_registry,
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
