//! The credential sources as declared under `credentials:` in the config.

use std::fmt;
use std::path::PathBuf;

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
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSource::DockerConfig(p) => write!(f, "dockerConfig {}", p.display()),
            CredentialSource::DockerConfigDir(p) => write!(f, "dockerConfigDir {}", p.display()),
            CredentialSource::Secret { namespace, name } => write!(f, "secret {namespace}/{name}"),
            CredentialSource::NodeDefaults { .. } => f.write_str("nodeDefaults"),
        }
    }
}
