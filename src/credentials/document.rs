//! What reading a source yields: docker config documents, each named for messages, and the
//! problems met on the way.

use std::io;
use std::sync::Arc;

use super::docker_config::DockerConfigError;
use super::provider_plugin::PluginError;
use super::secret::SecretError;

/// One docker config as read: no Debug, the bytes are secrets.
#[derive(Clone, Hash)]
pub(super) struct Document {
    /// For messages: `dockerConfig /path`, `dockerConfigDir /dir (regcred/.dockerconfigjson)`,
    /// `secret redis/regcred`, `nodeDefaults /path`.
    pub name: String,
    pub bytes: Vec<u8>,
}

/// What one source yielded.
#[derive(Clone, Default)]
pub(super) struct SourceRead {
    pub documents: Vec<Document>,
    pub problems: Vec<Problem>,
}

/// A source, or one document of it, that gave no credentials; `<what>: <why>`, never with the
/// content.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what}: {kind}")]
pub struct Problem {
    /// The source or document, named as in [`super::Credential::source`].
    pub what: String,
    pub kind: ProblemKind,
}

impl Problem {
    pub(super) fn new(what: impl ToString, kind: impl Into<ProblemKind>) -> Self {
        Problem {
            what: what.to_string(),
            kind: kind.into(),
        }
    }
}

/// Why a source gave no credentials.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProblemKind {
    /// A declared file, or one found in a directory (shared: the read is cached).
    #[error("cannot read it: {0}")]
    Unreadable(Arc<io::Error>),
    #[error("cannot read the directory: {0}")]
    UnreadableDirectory(Arc<io::Error>),
    #[error("not found")]
    SecretNotFound,
    #[error(
        "has no .dockerconfigjson or .dockercfg key (is it a kubernetes.io/dockerconfigjson secret?)"
    )]
    NoDockerConfigKey,
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    DockerConfig(#[from] DockerConfigError),
    /// The kubelet's `CredentialProviderConfig` (the error names the file).
    #[error("{0}")]
    ProviderConfig(crate::config::ConfigError),
    /// A credential-provider plugin that gave nothing for an image.
    #[error(transparent)]
    Plugin(#[from] PluginError),
}
