//! The container runtime, over CRI `runtime.v1`: what prepuller needs from it (the [`Runtime`]
//! trait and its types), the real client over a unix socket ([`CriRuntime`]), what its errors
//! mean ([`ErrorKind`], one table with a hint per kind), and (in `fake`, for tests and benches
//! only) an in-memory runtime.
//!
//! The lowest layer: it depends on image references only.

use std::future::Future;
use std::time::Duration;

use serde::Serialize;

use crate::reference::ImageRef;

mod auth;
mod cri;
mod endpoint;
mod error;
#[cfg(any(test, feature = "test-util"))]
pub mod fake;
mod progress;

pub use auth::RegistryAuth;
pub use cri::CriRuntime;
pub use endpoint::{
    DEFAULT_ENDPOINTS, EndpointError, discover_endpoint, discover_endpoint_in, socket_path,
};
pub(crate) use error::PERMANENT;
pub use error::{ErrorKind, KindInfo, RuntimeError};
pub use progress::{ContentProgress, Ingest, ManifestBlobs, ProgressError};

/// An image as the runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageInfo {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub size_bytes: u64,
}

impl ImageInfo {
    /// Whether this image is what `reference` names: by digest when one is pinned, else by tag.
    pub fn matches(&self, reference: &ImageRef) -> bool {
        match reference.digest() {
            Some(digest) => {
                let want = format!("{}@{digest}", reference.name());
                self.repo_digests.contains(&want)
            }
            None => {
                let want = reference.pull_ref();
                self.repo_tags.contains(&want)
            }
        }
    }

    /// The repo digest of this image for `reference`'s repository, if the runtime knows it.
    pub fn repo_digest_for(&self, reference: &ImageRef) -> Option<&str> {
        let prefix = format!("{}@", reference.name());
        self.repo_digests
            .iter()
            .find_map(|d| d.strip_prefix(&prefix))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeVersion {
    pub runtime_name: String,
    pub runtime_version: String,
    pub runtime_api_version: String,
}

impl std::fmt::Display for RuntimeVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} (CRI {})",
            self.runtime_name, self.runtime_version, self.runtime_api_version
        )
    }
}

/// The image filesystem as the runtime reports it (CRI `ImageFsInfo`): where it is mounted
/// (a path on the host) and how much of it the images take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageFs {
    pub mountpoint: String,
    pub used_bytes: u64,
}

/// Size and free space of a filesystem, as `statvfs` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    pub capacity_bytes: u64,
    /// Free for unprivileged writers (`f_bavail`): what the kubelet's GC counts as available.
    pub available_bytes: u64,
}

/// `statvfs` on `path`.
pub fn statvfs_space(path: &std::path::Path) -> std::io::Result<FsSpace> {
    let s = rustix::fs::statvfs(path)?;
    Ok(FsSpace {
        capacity_bytes: s.f_blocks.saturating_mul(s.f_frsize),
        available_bytes: s.f_bavail.saturating_mul(s.f_frsize),
    })
}

/// What prepuller needs from a container runtime; pull progress where it can tell
/// ([`ContentProgress`]: containerd's content service; others say it is unsupported).
pub trait Runtime: ContentProgress + Send + Sync + 'static {
    fn version(&self) -> impl Future<Output = Result<RuntimeVersion, RuntimeError>> + Send;
    /// Every image the runtime has (one call, however many images are declared).
    fn list_images(&self) -> impl Future<Output = Result<Vec<ImageInfo>, RuntimeError>> + Send;
    /// One image, or `None` when the runtime does not have it.
    fn image_status(
        &self,
        image: &str,
    ) -> impl Future<Output = Result<Option<ImageInfo>, RuntimeError>> + Send;
    /// Pulls `image` within `timeout`, sending `auth` to the registry when given; returns the
    /// runtime's image id.
    fn pull_image(
        &self,
        image: &str,
        auth: Option<&RegistryAuth>,
        timeout: Duration,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;
    /// The filesystem the runtime keeps its images on; `None` when it reports none.
    fn image_fs_info(&self) -> impl Future<Output = Result<Option<ImageFs>, RuntimeError>> + Send;
    /// Size and free space of the filesystem holding `path` (a path this process can see).
    fn filesystem_space(&self, path: &std::path::Path) -> std::io::Result<FsSpace> {
        statvfs_space(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_matches_by_tag_or_digest() {
        let d = format!("sha256:{}", "a".repeat(64));
        let info = ImageInfo {
            id: "sha256:1".into(),
            repo_tags: vec!["docker.io/library/nginx:1.25".into()],
            repo_digests: vec![format!("docker.io/library/nginx@{d}")],
            size_bytes: 10,
        };
        assert!(info.matches(&ImageRef::parse("nginx:1.25").unwrap()));
        assert!(!info.matches(&ImageRef::parse("nginx:1.26").unwrap()));
        assert!(info.matches(&ImageRef::parse(&format!("nginx@{d}")).unwrap()));
        assert!(info.matches(&ImageRef::parse(&format!("nginx:9@{d}")).unwrap()));
        assert!(!info.matches(&ImageRef::parse(&format!("other@{d}")).unwrap()));
        assert_eq!(
            info.repo_digest_for(&ImageRef::parse("nginx:x").unwrap()),
            Some(d.as_str())
        );
    }
}
