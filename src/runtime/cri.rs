//! The real runtime: a CRI `runtime.v1` client over the runtime's unix socket.

use std::future::Future;
use std::time::Duration;

use k8s_cri::v1 as cri;
use secrecy::ExposeSecret;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use super::progress::ContentClientOnSocket;
use super::{
    ContentProgress, EndpointError, ImageFs, ImageInfo, Ingest, ManifestBlobs, ProgressError,
    RegistryAuth, Runtime, RuntimeError, RuntimeVersion, socket_path,
};

/// Deadline for the cheap calls (version, list, status); pulls have their own.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A CRI runtime over a unix socket. The channel reconnects by itself, so a restarted
/// runtime is picked up on the next call.
#[derive(Clone)]
pub struct CriRuntime {
    endpoint: String,
    images: cri::image_service_client::ImageServiceClient<Channel>,
    runtime: cri::runtime_service_client::RuntimeServiceClient<Channel>,
    /// containerd's native content service on the same socket (pull progress).
    content: ContentClientOnSocket,
}

impl std::fmt::Debug for CriRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriRuntime")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl CriRuntime {
    /// A client for `endpoint` (`unix:///path`). Connects lazily: a socket that is missing now
    /// shows up as `RuntimeUnavailable` on the first call, not here.
    pub fn new(endpoint: &str) -> Result<CriRuntime, EndpointError> {
        let path = socket_path(endpoint)?;
        // tonic connects to `unix://` endpoints itself, and reconnects after a failed call.
        // It sets no connect timeout on them, and needs none: connecting to a unix socket
        // does not wait (a missing file, nobody listening, a full backlog fail at once), and
        // every call is bounded by its own deadline (`bounded`).
        let channel = Endpoint::from_shared(format!("unix://{}", path.display()))
            .map_err(|_| EndpointError::Invalid(endpoint.to_string()))?
            .connect_lazy();
        Ok(CriRuntime {
            endpoint: endpoint.to_string(),
            images: cri::image_service_client::ImageServiceClient::new(channel.clone())
                .max_decoding_message_size(64 * 1024 * 1024),
            runtime: cri::runtime_service_client::RuntimeServiceClient::new(channel.clone()),
            content: ContentClientOnSocket::new(channel),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Names the socket in connection failures, which tonic reports without it.
    fn unreachable(&self, e: RuntimeError) -> RuntimeError {
        if e.code == Code::Unavailable && !e.message.contains("failed to pull") {
            RuntimeError::new(
                Code::Unavailable,
                format!(
                    "cannot reach the runtime at {}: {}",
                    self.endpoint, e.message
                ),
            )
        } else if e.code == Code::Unimplemented {
            RuntimeError::new(
                Code::Unimplemented,
                format!(
                    "the runtime at {} does not serve CRI runtime.v1 (containerd 1.6+, CRI-O 1.23+ do): {}",
                    self.endpoint, e.message
                ),
            )
        } else {
            e
        }
    }
}

fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(timeout);
    r
}

fn image_spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

impl From<&RegistryAuth> for cri::AuthConfig {
    /// CRI says "not set" with an empty string.
    fn from(a: &RegistryAuth) -> Self {
        let secret = |t: &Option<secrecy::SecretString>| {
            t.as_ref()
                .map(|t| t.expose_secret().to_string())
                .unwrap_or_default()
        };
        cri::AuthConfig {
            username: a.username.clone(),
            password: a.password.expose_secret().to_string(),
            identity_token: secret(&a.identity_token),
            registry_token: secret(&a.registry_token),
            ..Default::default()
        }
    }
}

impl From<cri::Image> for ImageInfo {
    fn from(i: cri::Image) -> Self {
        ImageInfo {
            id: i.id,
            repo_tags: i.repo_tags,
            repo_digests: i.repo_digests,
            size_bytes: i.size,
        }
    }
}

/// Bounds a call locally too: a hung socket must not outlive the deadline the server was given.
async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, RuntimeError> {
    match tokio::time::timeout(timeout + Duration::from_secs(1), call).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(status)) => Err(status.into()),
        Err(_) => Err(RuntimeError::new(
            Code::DeadlineExceeded,
            format!("no answer within {}", humantime::format_duration(timeout)),
        )),
    }
}

impl Runtime for CriRuntime {
    async fn version(&self) -> Result<RuntimeVersion, RuntimeError> {
        let mut client = self.runtime.clone();
        let r = bounded(
            CALL_TIMEOUT,
            client.version(request(
                cri::VersionRequest {
                    version: "v1".into(),
                },
                CALL_TIMEOUT,
            )),
        )
        .await
        .map_err(|e| self.unreachable(e))?;
        Ok(RuntimeVersion {
            runtime_name: r.runtime_name,
            runtime_version: r.runtime_version,
            runtime_api_version: r.runtime_api_version,
        })
    }

    async fn list_images(&self) -> Result<Vec<ImageInfo>, RuntimeError> {
        let mut client = self.images.clone();
        let r = bounded(
            CALL_TIMEOUT,
            client.list_images(request(
                cri::ListImagesRequest { filter: None },
                CALL_TIMEOUT,
            )),
        )
        .await
        .map_err(|e| self.unreachable(e))?;
        Ok(r.images.into_iter().map(ImageInfo::from).collect())
    }

    async fn image_status(&self, image: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        let mut client = self.images.clone();
        let r = bounded(
            CALL_TIMEOUT,
            client.image_status(request(
                cri::ImageStatusRequest {
                    image: image_spec(image),
                    verbose: false,
                },
                CALL_TIMEOUT,
            )),
        )
        .await
        .map_err(|e| self.unreachable(e))?;
        Ok(r.image.map(ImageInfo::from))
    }

    async fn pull_image(
        &self,
        image: &str,
        auth: Option<&RegistryAuth>,
        timeout: Duration,
    ) -> Result<String, RuntimeError> {
        let mut client = self.images.clone();
        let r = bounded(
            timeout,
            client.pull_image(request(
                cri::PullImageRequest {
                    image: image_spec(image),
                    auth: auth.map(cri::AuthConfig::from),
                    sandbox_config: None,
                },
                timeout,
            )),
        )
        .await
        .map_err(|e| self.unreachable(e))?;
        Ok(r.image_ref)
    }

    async fn image_fs_info(&self) -> Result<Option<ImageFs>, RuntimeError> {
        let mut client = self.images.clone();
        let r = bounded(
            CALL_TIMEOUT,
            client.image_fs_info(request(cri::ImageFsInfoRequest {}, CALL_TIMEOUT)),
        )
        .await
        .map_err(|e| self.unreachable(e))?;
        // One image filesystem on every runtime prepuller knows; the first is the kubelet's.
        Ok(r.image_filesystems.into_iter().next().map(|f| ImageFs {
            mountpoint: f.fs_id.map(|i| i.mountpoint).unwrap_or_default(),
            used_bytes: f.used_bytes.map_or(0, |u| u.value),
        }))
    }
}

impl ContentProgress for CriRuntime {
    async fn ingests(&self) -> Result<Vec<Ingest>, ProgressError> {
        self.content.ingests().await
    }

    async fn manifests(
        &self,
        host: &str,
        repository: &str,
        since: std::time::SystemTime,
    ) -> Result<Vec<ManifestBlobs>, ProgressError> {
        self.content.manifests(host, repository, since).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No socket: the client is made (lazily), and the first call says which socket it could
    /// not reach, as a runtime that is not answering.
    #[tokio::test]
    async fn a_missing_socket_is_unavailable_on_the_first_call() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = format!("unix://{}", dir.path().join("missing.sock").display());
        let rt = CriRuntime::new(&endpoint).unwrap();
        let e = rt.version().await.unwrap_err();
        assert_eq!(e.kind(), super::super::ErrorKind::RuntimeUnavailable, "{e}");
        assert!(
            e.message
                .starts_with(&format!("cannot reach the runtime at {endpoint}: ")),
            "{e}"
        );
        assert!(e.message.contains("No such file or directory"), "{e}");
    }

    #[tokio::test]
    async fn only_unix_endpoints_make_a_client() {
        assert!(CriRuntime::new("tcp://127.0.0.1:1").is_err());
        assert!(CriRuntime::new("/run/x.sock").is_ok_and(|r| r.endpoint() == "/run/x.sock"));
    }
}
