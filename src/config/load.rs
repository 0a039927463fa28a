//! Reading config files: one file, or every `*.yaml`/`*.yml` of a directory (a mounted
//! ConfigMap), each parsed into its parts before they are merged.

use std::path::{Path, PathBuf};

use super::credentials::CredentialSource;
use super::error::{ConfigError, TopLevel};
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
    if is_blank(text) {
        return Err(ConfigError::not_a_mapping(source, None, TopLevel::Empty));
    }
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
    .map_err(|e| yaml_error(e, field, text, source))?;
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

/// Nothing but blank lines, comments and document markers.
fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---" || l == "..."
    })
}

/// What the YAML reader said, made specific: a top level that is not a mapping says what the
/// file should hold; an indentation mistake names the key on the line it was found at (the
/// reader's field path ends in `?` there: the key it was reading when the syntax broke).
fn yaml_error(
    e: serde_saphyr::Error,
    field: Option<String>,
    text: &str,
    source: &Path,
) -> ConfigError {
    let line = e.location().map(|l| l.line() as usize);
    if field.is_none() {
        let top = if serde_saphyr::from_str::<Vec<serde::de::IgnoredAny>>(text).is_ok() {
            Some(TopLevel::List)
        } else if serde_saphyr::from_str::<String>(text).is_ok() {
            Some(TopLevel::Value)
        } else {
            None
        };
        if let Some(top) = top {
            return ConfigError::not_a_mapping(source, line.map(|_| 1), top);
        }
    }
    let indentation = INDENTATION_ERRORS.iter().any(|m| e.to_string().contains(m));
    let key = line.and_then(|l| key_on_line(text, l));
    let field = field.map(|f| match f.strip_suffix(".?") {
        Some(parent) => match key {
            Some(key) => format!("{parent}.{key}"),
            None => parent.to_string(),
        },
        None => f,
    });
    let error = ConfigError::yaml(e, field, source);
    match key {
        Some(key) if indentation => error.with_hint(&format!("check the indentation of `{key}`")),
        _ => error,
    }
}

/// The YAML reader's words for a line indented where no key or entry can be.
const INDENTATION_ERRORS: &[&str] = &[
    "mapping values are not allowed",
    "did not find expected key",
    "did not find expected '-' indicator",
];

/// The key a line of YAML sets (`  - tag: 1` sets `tag`), if it sets one.
fn key_on_line(text: &str, line: usize) -> Option<&str> {
    let l = text.lines().nth(line.checked_sub(1)?)?.trim_start();
    let l = l.strip_prefix("- ").unwrap_or(l).trim_start();
    let (key, _) = l.split_once(':')?;
    let key = key.trim_end();
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    plain.then_some(key)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    fn error(text: &str) -> crate::config::ConfigError {
        Config::parse(text, Path::new("images.yaml")).unwrap_err()
    }

    /// Not "unexpected end of input" / "expected mapping start": what the file should hold.
    #[test]
    fn a_file_that_is_not_a_mapping_says_it_needs_an_images_list() {
        for text in ["", "\n# nothing yet\n", "---\n"] {
            let e = error(text);
            assert_eq!(
                e.headline(),
                "images.yaml: the file is empty; it needs an `images:` list, \
                 e.g. `images: [nginx:1.25]`",
                "{text:?}"
            );
        }
        let e = error("- nginx:1.25\n- redis:7\n");
        assert!(
            e.headline().starts_with(
                "images.yaml:1:1: the top level is a list; the file needs an `images:` list"
            ),
            "{}",
            e.render()
        );
        let e = error("nginx:1.25\n");
        assert!(
            e.message
                .starts_with("the top level is a single value; the file needs an `images:` list"),
            "{}",
            e.render()
        );
        // The reader's own words are not repeated in a snippet under it.
        assert!(!e.render().contains("mapping start"), "{}", e.render());
    }

    /// The reader's path ends in `?` where the syntax broke; the key on that line is named.
    #[test]
    fn an_indentation_error_names_the_key() {
        let e = error("images:\n  - repository: nginx\n     tag: \"1.25\"\n");
        assert_eq!(e.field.as_deref(), Some("images[0].tag"), "{}", e.render());
        assert_eq!(e.line, Some(3));
        assert!(
            e.message.ends_with("(check the indentation of `tag`)"),
            "{}",
            e.message
        );
        let e = error("images:\n  - repository: a\n    tag: \"1\"\n      required: false\n");
        assert_eq!(
            e.field.as_deref(),
            Some("images[0].required"),
            "{}",
            e.render()
        );
        let e = error("images:\n  - repository: nginx\n   tag: \"1.25\"\n");
        assert_eq!(e.field.as_deref(), Some("images"), "{}", e.render());
        assert!(
            e.message.ends_with("(check the indentation of `tag`)"),
            "{}",
            e.message
        );
        for e in [
            error("images:\n  - repository: nginx\n     tag: \"1.25\"\n"),
            error("images:\n- nam: x\n"),
        ] {
            assert!(!e.render().contains('?'), "{}", e.render());
        }
    }

    /// The headline says the message; the code frame under it points at it, and does not
    /// start with another `error:` line repeating it.
    #[test]
    fn the_message_is_rendered_once() {
        let e = error("images:\n- nam: x\n");
        let rendered = e.render();
        assert_eq!(
            rendered.matches("unknown field `nam`").count(),
            1,
            "{rendered}"
        );
        assert_eq!(rendered.matches("error").count(), 0, "{rendered}");
        assert!(rendered.contains(" --> images.yaml:2:3"), "{rendered}");
        assert!(rendered.ends_with("\n  |   ^"), "{rendered}");
    }
}
