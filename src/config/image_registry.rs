//! `imageRegistry`: pull a list's images from another registry (a private mirror) under the
//! names it has there, as Helm charts' `global.imageRegistry`, cass-operator's `imageRegistry`
//! and Redis Enterprise's private repository prefix spell it.
//!
//! The value is `host[:port][/path]`. An image moves to `<value>/<repository as written>`,
//! tag and digest kept: the registry it was declared with is replaced, `library/` is neither
//! added nor removed (Helm joins `{{registry}}/{{repository}}` as text; cass-operator strips
//! the registry and prefixes its own), and an image already below the value stays as it is.
//! The entry's own `imageRegistry` wins over the file's, which wins over `global.imageRegistry`;
//! coordinates that name their registry (`registry:`, or the REC form's `repository:`) keep it.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use super::ImageSpec;
use super::error::ConfigError;
use crate::reference::{ImageRef, ReferenceError, RegistryPath, written_repository};

/// A valid `imageRegistry` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRegistry(RegistryPath);

impl ImageRegistry {
    pub fn parse(s: &str) -> Result<ImageRegistry, ReferenceError> {
        RegistryPath::parse(s).map(ImageRegistry)
    }

    /// Where the image declared as `declared` (its text) and parsed as `reference` is pulled
    /// from under this registry; `None` when it already lives below it.
    pub fn rewrite(
        &self,
        declared: &str,
        reference: &ImageRef,
    ) -> Result<Option<ImageRef>, ReferenceError> {
        if self.0.holds(reference) {
            return Ok(None);
        }
        self.0
            .image(
                written_repository(declared),
                reference.tag(),
                reference.digest(),
            )
            .map(Some)
    }
}

impl fmt::Display for ImageRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for ImageRegistry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ImageRegistry::parse(&s).map_err(|e| {
            de::Error::custom(format!(
                "invalid imageRegistry {s:?}: {}; write host[:port][/path], e.g. \
                 registry.example.com or gcr.io/yourproject",
                e.reason
            ))
        })
    }
}

/// `registryMirror`, a key other tools use: refused, saying what prepuller has instead. An
/// alias would mislead: a mirror keeps the public names, `imageRegistry` changes them.
pub(super) struct RegistryMirror;

pub(super) const REGISTRY_MIRROR: &str = "prepuller has no `registryMirror`: `imageRegistry: \
     <host>[/<path>]` pulls images from that registry under their names there (use it when \
     your pods name the mirror too); for a mirror that keeps the public names, configure the \
     container runtime (containerd: certs.d/docker.io/hosts.toml), see the README";

impl<'de> Deserialize<'de> for RegistryMirror {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(de::Error::custom(REGISTRY_MIRROR))
    }
}

/// One entry of a file, before the file's or the global `imageRegistry` applies.
pub(super) struct FileImage {
    pub spec: ImageSpec,
    /// The entry's coordinates name no registry and it has no `imageRegistry` of its own.
    pub follows_scope: bool,
}

/// Where a file's entries are pulled from, when they follow an `imageRegistry`.
pub(super) struct Scope<'a> {
    pub registry: &'a ImageRegistry,
    /// `imageRegistry` (the file's) or `global.imageRegistry`, for messages.
    pub key: &'static str,
}

impl FileImage {
    /// The entry, moved below `scope` when it follows it. `index` is its place in `images:`.
    pub fn into_spec(
        self,
        scope: Option<&Scope<'_>>,
        index: usize,
    ) -> Result<ImageSpec, ConfigError> {
        let mut spec = self.spec;
        let Some(scope) = scope.filter(|_| self.follows_scope) else {
            return Ok(spec);
        };
        match scope.registry.rewrite(&spec.declared, &spec.reference) {
            Ok(None) => {}
            Ok(Some(moved)) => {
                spec.reference = moved;
                spec.image_registry = Some(scope.registry.to_string());
            }
            Err(e) => {
                return Err(error_at(
                    &spec.file,
                    spec.line,
                    index,
                    format!("{} {} makes {e}", scope.key, scope.registry),
                ));
            }
        }
        Ok(spec)
    }
}

fn error_at(file: &Path, line: usize, index: usize, message: String) -> ConfigError {
    ConfigError::at_line(file, line, &format!("images[{index}]"), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved(registry: &str, declared: &str) -> String {
        let reference = ImageRef::parse(declared).unwrap();
        match ImageRegistry::parse(registry)
            .unwrap()
            .rewrite(declared, &reference)
            .unwrap()
        {
            Some(r) => r.to_string(),
            None => format!("unchanged {reference}"),
        }
    }

    #[test]
    fn the_registry_is_replaced_and_the_repository_kept_as_written() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let cases = [
            // Helm's global.imageRegistry: the host replaced.
            (
                "registry.example.com",
                "bitnami/redis:7.2",
                "registry.example.com/bitnami/redis:7.2",
            ),
            (
                "registry.example.com",
                "docker.io/bitnami/redis:7.2",
                "registry.example.com/bitnami/redis:7.2",
            ),
            (
                "registry.example.com",
                "quay.io/prometheus/node-exporter:v1",
                "registry.example.com/prometheus/node-exporter:v1",
            ),
            // Redis's private repository: a host and a path in front.
            (
                "gcr.io/yourproject",
                "redislabs/redis:7.2.4-64",
                "gcr.io/yourproject/redislabs/redis:7.2.4-64",
            ),
            (
                "gcr.io/yourproject",
                "redislabs/operator:7.2.4-7",
                "gcr.io/yourproject/redislabs/operator:7.2.4-7",
            ),
            // Docker Hub official images: `library/` only where it was written.
            (
                "registry.example.com",
                "nginx:1.25",
                "registry.example.com/nginx:1.25",
            ),
            (
                "registry.example.com",
                "library/nginx:1.25",
                "registry.example.com/library/nginx:1.25",
            ),
            (
                "registry.example.com",
                "docker.io/library/nginx:1.25",
                "registry.example.com/library/nginx:1.25",
            ),
            (
                "registry.example.com:5000/hub",
                "nginx",
                "registry.example.com:5000/hub/nginx:latest",
            ),
            // Tags and digests are kept.
            (
                "registry.example.com",
                &format!("nginx:1.25@{d}"),
                &format!("registry.example.com/nginx@{d}"),
            ),
            // Already below it: left alone, so a mirrored name is not prefixed twice.
            (
                "gcr.io/yourproject",
                "gcr.io/yourproject/redislabs/redis:1",
                "unchanged gcr.io/yourproject/redislabs/redis:1",
            ),
            (
                "registry.example.com",
                "registry.example.com/team/app:1",
                "unchanged registry.example.com/team/app:1",
            ),
            (
                "docker.io",
                "nginx:1",
                "unchanged docker.io/library/nginx:1",
            ),
            // Another project on the same host is moved.
            (
                "gcr.io/yourproject",
                "gcr.io/other/app:1",
                "gcr.io/yourproject/other/app:1",
            ),
        ];
        for (registry, declared, want) in cases {
            assert_eq!(moved(registry, declared), want, "{registry} + {declared}");
        }
    }

    #[test]
    fn bad_values_say_what_to_write() {
        for (value, reason) in [
            ("myregistry", "would be read as a docker hub namespace"),
            ("https://registry.example.com", "must not have a scheme"),
            ("gcr.io/yourproject/", "empty component"),
            ("gcr.io/Project", "must be lowercase"),
            ("gcr.io/p:v1", "must not contain a tag or digest"),
        ] {
            let e = serde_saphyr::from_str::<ImageRegistry>(value)
                .err()
                .unwrap_or_else(|| panic!("{value} accepted"))
                .to_string();
            assert!(e.contains(reason), "{value}: {e}");
            assert!(e.contains("write host[:port][/path]"), "{value}: {e}");
        }
    }
}

#[cfg(test)]
mod config_tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError, PullPolicy};

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("images.yaml"))
    }

    /// (declared, pulled, imageRegistry that moved it) of every image.
    fn pulled(c: &Config) -> Vec<(String, String, Option<String>)> {
        c.images
            .iter()
            .map(|i| {
                (
                    i.declared.clone(),
                    i.reference.to_string(),
                    i.image_registry.clone(),
                )
            })
            .collect()
    }

    fn row(declared: &str, pulled: &str, by: Option<&str>) -> (String, String, Option<String>) {
        (declared.into(), pulled.into(), by.map(str::to_string))
    }

    #[test]
    fn entry_wins_over_file_wins_over_global_and_an_own_registry_is_kept() {
        let c = parse(
            r#"
global: {imageRegistry: global.example.com}
imageRegistry: registry.example.com
images:
  - bitnami/redis:7.2
  - nginx:1.25
  - registry: myregistry.example.com
    repository: myrepo/cass-management-api
    tag: 3.11.10-v0.1.26
  - image: redislabs/redis:7.2.4-64
    imageRegistry: gcr.io/yourproject
  - registry.example.com/team/app:1
"#,
        )
        .unwrap();
        assert_eq!(
            pulled(&c),
            vec![
                row(
                    "bitnami/redis:7.2",
                    "registry.example.com/bitnami/redis:7.2",
                    Some("registry.example.com")
                ),
                row(
                    "nginx:1.25",
                    "registry.example.com/nginx:1.25",
                    Some("registry.example.com")
                ),
                row(
                    "myregistry.example.com/myrepo/cass-management-api:3.11.10-v0.1.26",
                    "myregistry.example.com/myrepo/cass-management-api:3.11.10-v0.1.26",
                    None
                ),
                row(
                    "redislabs/redis:7.2.4-64",
                    "gcr.io/yourproject/redislabs/redis:7.2.4-64",
                    Some("gcr.io/yourproject")
                ),
                row(
                    "registry.example.com/team/app:1",
                    "registry.example.com/team/app:1",
                    None
                ),
            ]
        );
        // The policy still comes from the tag, as declared.
        assert_eq!(c.images[0].policy, PullPolicy::IfNotPresent);
    }

    #[test]
    fn rec_image_specs_paste_as_entries() {
        // spec.redisEnterpriseImageSpec of a RedisEnterpriseCluster, as Redis documents it.
        let c = parse(
            r#"
images:
  - imagePullPolicy: IfNotPresent
    repository: gcr.io/yourproject/redislabs/redis
    versionTag: 7.2.4-64
  - registry: gcr.io/yourproject
    repository: redislabs/operator
    tag: 7.2.4-7
  - repository: registry.example.com:5000/redislabs/k8s-controller
    tag: 7.2.4-7
imageRegistry: mirror.example.com   # coordinates that name their registry keep it
"#,
        )
        .unwrap();
        let refs: Vec<_> = c.images.iter().map(|i| i.reference.to_string()).collect();
        assert_eq!(
            refs,
            [
                "gcr.io/yourproject/redislabs/redis:7.2.4-64",
                "gcr.io/yourproject/redislabs/operator:7.2.4-7",
                "registry.example.com:5000/redislabs/k8s-controller:7.2.4-7",
            ]
        );
        assert!(c.images.iter().all(|i| i.image_registry.is_none()));
    }

    #[test]
    fn the_global_value_applies_to_every_file_without_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write(
            "a.yaml",
            "global:\n  imageRegistry: mirror.example.com/hub\nimages: [nginx:1.25]\n",
        );
        write(
            "b.yaml",
            "imageRegistry: gcr.io/yourproject\nimages: [redislabs/redis:7.2.4-64]\n",
        );
        write("c.yaml", "images: [busybox:1.36]\n");
        let c = Config::load(dir.path()).unwrap();
        let refs: Vec<_> = c.images.iter().map(|i| i.reference.to_string()).collect();
        assert_eq!(
            refs,
            [
                "mirror.example.com/hub/nginx:1.25",
                "gcr.io/yourproject/redislabs/redis:7.2.4-64",
                "mirror.example.com/hub/busybox:1.36",
            ]
        );
        // Like every setting of a directory, one global value.
        write(
            "c.yaml",
            "global: {imageRegistry: other.example.com}\nimages: [busybox:1.36]\n",
        );
        let e = Config::load(dir.path()).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("global.imageRegistry"));
        assert!(e.file.ends_with("c.yaml"), "{}", e.headline());
        assert!(e.message.contains("a.yaml"), "{}", e.headline());
    }

    #[test]
    fn two_names_for_one_pulled_image_are_pulled_once() {
        let c = parse(
            "imageRegistry: registry.example.com\nimages:\n  - nginx:1.25\n  - image: registry.example.com/nginx:1.25\n    required: false\n",
        )
        .unwrap();
        assert_eq!(c.images.len(), 1);
        assert_eq!(c.merged.len(), 1, "{:?}", c.merged);
        assert!(c.merged[0].starts_with("registry.example.com/nginx:1.25 (images.yaml:4)"));
    }

    #[test]
    fn errors_name_the_line_the_field_and_what_to_do() {
        let cases = [
            (
                "images:\n  - registry: gcr.io\n    repository: app\n    imageRegistry: registry.example.com\n",
                "images.yaml:2:5: field `images[0]`: use either `registry` (where the image is) or `imageRegistry` (where to pull it from instead), not both",
            ),
            (
                "imageRegistry: myregistry\nimages: [nginx]\n",
                "images.yaml:1:16: field `imageRegistry`: invalid imageRegistry \"myregistry\": registry \"myregistry\" would be read as a docker hub namespace; a registry needs a '.', a ':port', or to be localhost; write host[:port][/path], e.g. registry.example.com or gcr.io/yourproject",
            ),
            (
                "images:\n  - repository: registry.example.com:5000\n    tag: v1\n",
                "images.yaml:2:5: field `images[0]`: invalid image reference \"registry.example.com:5000:v1\": repository \"registry.example.com:5000\" is a registry with a port and no repository path",
            ),
            (
                "images:\n  - registry: quay.io\n    repository: localhost:5000/app\n",
                "images.yaml:2:5: field `images[0]`: invalid image reference \"quay.io/localhost:5000/app\": repository starts with registry \"localhost:5000\" (a registry with a port) and `registry` is set too; name the registry in one place",
            ),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.headline(), want, "{text}");
        }
        // A move that makes an invalid reference is reported at the entry's line.
        let long = "a".repeat(245);
        let e = parse(&format!(
            "imageRegistry: gcr.io/yourproject\nimages:\n  - x:1\n  - {long}:1\n"
        ))
        .unwrap_err();
        assert_eq!(e.line, Some(4), "{}", e.headline());
        assert_eq!(e.field.as_deref(), Some("images[1]"));
        assert!(
            e.message
                .starts_with("imageRegistry gcr.io/yourproject makes invalid image reference"),
            "{}",
            e.headline()
        );
    }

    #[test]
    fn registry_mirror_points_to_image_registry() {
        for (text, field) in [
            (
                "registryMirror: mirror.example.com\nimages: [nginx]\n",
                "registryMirror",
            ),
            (
                "global: {registryMirror: mirror.example.com}\nimages: [nginx]\n",
                "global.registryMirror",
            ),
            (
                "images:\n  - image: nginx\n    registryMirror: mirror.example.com\n",
                "images[0].registryMirror",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{}", e.headline());
            assert!(e.line.is_some(), "{}", e.headline());
            assert!(
                e.message
                    .contains("prepuller has no `registryMirror`: `imageRegistry:"),
                "{}",
                e.headline()
            );
            assert!(
                e.message.contains("certs.d/docker.io/hosts.toml"),
                "{}",
                e.headline()
            );
        }
    }
}
