//! `credentials:` in the config: where pull credentials come from (never the credentials).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::duration;

/// The kubelet's default `--root-dir`.
pub const DEFAULT_KUBELET_ROOT_DIR: &str = "/var/lib/kubelet";

/// How long one run of a credential-provider plugin may take: the kubelet's fixed 1 minute.
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Where credentials come from, as declared under `credentials:` in the config.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CredentialSource {
    /// A docker `config.json` (`{"auths": …}`) or a legacy `.dockercfg` file.
    DockerConfig(PathBuf),
    /// Every `.dockerconfigjson` / `.dockercfg` below a directory of mounted pull secrets.
    DockerConfigDir(PathBuf),
    /// A `kubernetes.io/dockerconfigjson` or `kubernetes.io/dockercfg` secret, read by name.
    Secret { namespace: String, name: String },
    /// The kubelet's own search: `<root-dir>/config.json`, `$HOME/.docker/config.json`,
    /// `/.docker/config.json`, then `.dockercfg` in `<root-dir>`, `$HOME`, `/`.
    NodeDefaults { kubelet_root_dir: PathBuf },
    /// The kubelet's exec credential-provider plugins: its `CredentialProviderConfig` file
    /// (`--image-credential-provider-config`) and its plugin directory (`--image-credential-provider-bin-dir`).
    KubeletCredentialProviders {
        config: PathBuf,
        bin_dir: PathBuf,
        /// How long one plugin run may take before it is killed.
        timeout: Duration,
    },
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSource::DockerConfig(p) => write!(f, "dockerConfig {}", p.display()),
            CredentialSource::DockerConfigDir(p) => write!(f, "dockerConfigDir {}", p.display()),
            CredentialSource::Secret { namespace, name } => write!(f, "secret {namespace}/{name}"),
            CredentialSource::NodeDefaults { .. } => f.write_str("nodeDefaults"),
            CredentialSource::KubeletCredentialProviders { config, .. } => {
                write!(f, "kubeletCredentialProviders {}", config.display())
            }
        }
    }
}

/// What is wrong with one entry of `credentials:`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error(
        "a credentials entry needs exactly one of dockerConfig, dockerConfigDir, secret, nodeDefaults, kubeletCredentialProviders"
    )]
    NotExactlyOne,
    #[error("kubeletRootDir goes with nodeDefaults: true")]
    RootDirWithoutNodeDefaults,
    #[error("{0} is empty")]
    EmptyPath(&'static str),
    #[error(
        "secret {namespace}/{name} is not a valid Kubernetes namespace/name (lowercase letters, digits, '-', '.')"
    )]
    InvalidSecretName { namespace: String, name: String },
    #[error("nodeDefaults: false declares no source; remove the entry")]
    NoSource,
    #[error("kubeletCredentialProviders.timeout must be more than 0s")]
    ZeroTimeout,
}

/// One entry of `credentials:`: exactly one source key.
#[derive(Deserialize)]
#[serde(try_from = "RawSource")]
pub(super) struct SourceEntry(pub(super) CredentialSource);

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSource {
    docker_config: Option<PathBuf>,
    docker_config_dir: Option<PathBuf>,
    secret: Option<RawSecretRef>,
    node_defaults: Option<bool>,
    kubelet_root_dir: Option<PathBuf>,
    kubelet_credential_providers: Option<RawProviders>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawProviders {
    config: PathBuf,
    bin_dir: PathBuf,
    #[serde(default, deserialize_with = "duration::option")]
    timeout: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecretRef {
    namespace: String,
    name: String,
}

impl TryFrom<RawSource> for SourceEntry {
    type Error = SourceError;

    fn try_from(r: RawSource) -> Result<Self, SourceError> {
        let keys = [
            r.docker_config.is_some(),
            r.docker_config_dir.is_some(),
            r.secret.is_some(),
            r.node_defaults.is_some(),
            r.kubelet_credential_providers.is_some(),
        ];
        if keys.iter().filter(|k| **k).count() != 1 {
            return Err(SourceError::NotExactlyOne);
        }
        if r.kubelet_root_dir.is_some() && r.node_defaults.is_none() {
            return Err(SourceError::RootDirWithoutNodeDefaults);
        }
        let nonempty = |what: &'static str, p: PathBuf| {
            if p.as_os_str().is_empty() {
                Err(SourceError::EmptyPath(what))
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
                return Err(SourceError::InvalidSecretName {
                    namespace: s.namespace,
                    name: s.name,
                });
            }
            CredentialSource::Secret {
                namespace: s.namespace,
                name: s.name,
            }
        } else if let Some(p) = r.kubelet_credential_providers {
            let timeout = p.timeout.unwrap_or(DEFAULT_PLUGIN_TIMEOUT);
            if timeout.is_zero() {
                return Err(SourceError::ZeroTimeout);
            }
            CredentialSource::KubeletCredentialProviders {
                config: nonempty("kubeletCredentialProviders.config", p.config)?,
                bin_dir: nonempty("kubeletCredentialProviders.binDir", p.bin_dir)?,
                timeout,
            }
        } else if r.node_defaults == Some(true) {
            CredentialSource::NodeDefaults {
                kubelet_root_dir: r
                    .kubelet_root_dir
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_KUBELET_ROOT_DIR)),
            }
        } else {
            return Err(SourceError::NoSource);
        };
        Ok(SourceEntry(source))
    }
}
